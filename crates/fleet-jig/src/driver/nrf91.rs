//! The `nrf91-at` driver: a Nordic nRF91 modem's credential store through AT commands on the
//! application's AT host (`CONFIG_AT_HOST_LIBRARY`) or the Serial Modem application, driven
//! as Nordic's nRF Cloud Utils and `nrfcredstore` drive it
//! (`/work/shared/reference/board-credential-protocols.md` §2):
//!
//! - identity: `AT+CGSN` (the IMEI, the board's serial) and `AT+CGMR` (modem firmware);
//! - `AT+CFUN?` remembers the functional mode, `AT+CFUN=4` takes the modem offline ("write
//!   and delete … allowed only when the modem is not activated"; otherwise `+CME ERROR: 518`),
//!   and the remembered mode is restored afterwards, on success and on failure;
//! - `AT%CMNG=1,<tag>` lists the tag's items with the SHA-256 the modem computes over the
//!   stored bytes (what is held: skip);
//! - an item that exists is deleted first (`AT%CMNG=3,<tag>,<type>`: the modem refuses to
//!   overwrite, `+CME ERROR: 519`), then written with `AT%CMNG=0,<tag>,<type>,"<PEM>"`, one
//!   line, the PEM's own newlines inside the quotes;
//! - the write is verified by listing the tag again: every item's SHA-256 must equal the one
//!   the station computes over exactly the bytes it sent between the quotes;
//! - `keys.source = "device"`: `AT%CMNG=3,<tag>,2` then `AT%KEYGEN=<tag>,2,0,"<subject>"`,
//!   whose answer is `%KEYGEN: "<base64url CSR DER>.<base64url COSE_Sign1>"`.
//!
//! The AT host answers one command at a time (it stops reading while a command runs), so
//! the driver sends a line and waits for its final result (`OK`, `ERROR`, `+CME ERROR: <n>`)
//! before the next. Echo (the command's own bytes coming back first) is stripped.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::{BoardIdentity, DriverKind, DriverWrite, JigDriver};
use crate::error::JigError;
use crate::link::{PortSettings, SlotWrite, open_port};
use crate::wire::protocol::{CsrSubject, Slot, sha256};

/// nRF Cloud Utils' default security tag (0x01010001).
pub const NRF91_DEFAULT_SEC_TAG: u32 = 16_842_753;

/// How long a command that writes to the modem's NVM may take before it counts as lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// How many times `AT` is tried before the jig counts as empty.
const PROBE_TRIES: u32 = 2;

/// Options of an `nrf91-at` port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nrf91Options {
    /// The security tag the credentials go to (0 to 2147483647).
    pub sec_tag: u32,
    /// Write the root CA (type 0); `false` leaves it to the firmware (or another tag).
    pub write_root_ca: bool,
}

impl Default for Nrf91Options {
    fn default() -> Nrf91Options {
        Nrf91Options {
            sec_tag: NRF91_DEFAULT_SEC_TAG,
            write_root_ca: true,
        }
    }
}

/// `%CMNG` credential type of an item.
pub(crate) fn cmng_type(slot: Slot) -> Option<u8> {
    match slot {
        Slot::RootCa => Some(0),
        Slot::Certificate => Some(1),
        Slot::PrivateKey => Some(2),
        _ => None,
    }
}

/// How an AT command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Final {
    Ok,
    Error,
    Cme(u32),
}

/// The meaning of a `%CMNG` / `+CFUN` CME error code (Nordic AT reference, §2.1).
fn cme_meaning(code: u32) -> &'static str {
    match code {
        513 => "not found",
        514 => "no access",
        515 => "memory full",
        518 => "not allowed in active state",
        519 => "already exists",
        527 => "invalid certificate content",
        528 => "power-off warning active",
        _ => "see Nordic's AT command reference",
    }
}

/// The station's AT connection to one nRF91 modem.
pub struct Nrf91At {
    io: Box<dyn serialport::SerialPort>,
    port: String,
    options: Nrf91Options,
    timeout: Duration,
    buf: Vec<u8>,
    retransmissions: u64,
    /// The serial (IMEI) of the board identified last.
    serial: Option<String>,
}

impl std::fmt::Debug for Nrf91At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nrf91At")
            .field("port", &self.port)
            .field("serial", &self.serial)
            .finish()
    }
}

impl Nrf91At {
    /// Opens the modem's AT port.
    pub fn open(
        path: &str,
        settings: &PortSettings,
        options: Nrf91Options,
    ) -> Result<Nrf91At, JigError> {
        let io = open_port(path, settings)?;
        Ok(Nrf91At {
            io,
            port: path.to_string(),
            options,
            // An AT answer comes after the modem's own work; never wait less than 300 ms.
            timeout: settings.timeout.max(Duration::from_millis(300)),
            buf: Vec::new(),
            retransmissions: 0,
            serial: None,
        })
    }

    fn io_error(&self, source: std::io::Error) -> JigError {
        JigError::Io {
            port: self.port.clone(),
            source,
        }
    }

    fn protocol(&self, command: &str, detail: String) -> JigError {
        JigError::Protocol {
            port: self.port.clone(),
            command: "AT",
            detail: format!("{}: {detail}", command_name(command)),
        }
    }

    /// Sends `command` (CR LF appended) and reads up to its final result: the information
    /// lines and how it ended. `Err(Timeout)` when no final result came within `timeout`.
    fn exchange(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<(Vec<String>, Final), JigError> {
        let _ = self.io.clear(serialport::ClearBuffer::Input);
        self.buf.clear();
        let mut line = Vec::with_capacity(command.len() + 2);
        line.extend_from_slice(command.as_bytes());
        line.extend_from_slice(b"\r\n");
        self.io.write_all(&line).map_err(|e| self.io_error(e))?;
        self.io.flush().map_err(|e| self.io_error(e))?;
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 512];
        loop {
            if let Some(done) = parse_reply(&self.buf, &line[..line.len() - 1]) {
                return Ok(done);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(JigError::Timeout {
                    port: self.port.clone(),
                    command: "AT",
                    tries: 1,
                });
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            let _ = self.io.set_timeout(wait);
            match self.io.read(&mut chunk) {
                Ok(0) => {}
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    /// `exchange` that insists on `OK`.
    fn ok(&mut self, command: &str, timeout: Duration) -> Result<Vec<String>, JigError> {
        match self.exchange(command, timeout)? {
            (lines, Final::Ok) => Ok(lines),
            (_, end) => Err(self.refused(command, &end)),
        }
    }

    fn refused(&self, command: &str, end: &Final) -> JigError {
        let code = match end {
            Final::Cme(c) => Some(*c),
            _ => None,
        };
        JigError::AtRefused {
            port: self.port.clone(),
            command: command_name(command),
            code,
            meaning: code.map_or("ERROR", cme_meaning),
        }
    }

    /// The modem's functional mode (`AT+CFUN?` → `+CFUN: <mode>`).
    fn cfun(&mut self) -> Result<u8, JigError> {
        let lines = self.ok("AT+CFUN?", self.timeout)?;
        lines
            .iter()
            .find_map(|l| l.strip_prefix("+CFUN:").and_then(|v| v.trim().parse().ok()))
            .ok_or_else(|| self.protocol("AT+CFUN?", "no +CFUN: line".into()))
    }

    /// Takes the modem offline (`AT+CFUN=4`); returns the mode to restore.
    fn offline(&mut self) -> Result<u8, JigError> {
        let mode = self.cfun()?;
        if mode != 4 {
            match self.exchange("AT+CFUN=4", WRITE_TIMEOUT)? {
                (_, Final::Ok) => {}
                (_, end) => {
                    return Err(JigError::ModemNotOffline {
                        port: self.port.clone(),
                        detail: format!("AT+CFUN=4 answered {}", final_text(&end)),
                    });
                }
            }
        }
        Ok(mode)
    }

    /// Puts the modem back in `mode` (best effort after a failure: the failure is what counts).
    fn restore(&mut self, mode: u8) -> Result<(), JigError> {
        if mode == 4 {
            return Ok(());
        }
        self.ok(&format!("AT+CFUN={mode}"), WRITE_TIMEOUT)
            .map(|_| ())
    }

    /// The items in the port's security tag: (type, SHA-256 as uppercase hex).
    fn list(&mut self) -> Result<Vec<(u8, String)>, JigError> {
        let tag = self.options.sec_tag;
        let command = format!("AT%CMNG=1,{tag}");
        let lines = self.ok(&command, self.timeout)?;
        parse_list(&lines, tag).map_err(|detail| self.protocol(&command, detail))
    }

    /// Deletes item `ty` of the port's tag (absent already: fine). The modem refuses while
    /// activated (518: not offline); any other refusal leaves the item in place.
    fn delete(&mut self, slot: Slot, ty: u8) -> Result<(), JigError> {
        let delete = format!("AT%CMNG=3,{},{ty}", self.options.sec_tag);
        match self.exchange(&delete, WRITE_TIMEOUT)? {
            (_, Final::Ok) | (_, Final::Cme(513)) => Ok(()),
            (_, end @ Final::Cme(518)) => Err(JigError::ModemNotOffline {
                port: self.port.clone(),
                detail: format!("{delete} answered {}", final_text(&end)),
            }),
            (_, end) => Err(JigError::ItemExists {
                port: self.port.clone(),
                slot,
                detail: format!("{delete} answered {}", final_text(&end)),
            }),
        }
    }

    fn write_items(
        &mut self,
        items: &[SlotWrite<'_>],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<DriverWrite, JigError> {
        let tag = self.options.sec_tag;
        let total: usize = items.iter().map(|i| i.data.len()).sum();
        let present = self.list()?;
        let mut done = 0;
        for item in items {
            let ty = cmng_type(item.slot).ok_or(JigError::BadRequest {
                slot: item.slot,
                len: item.data.len(),
                reason: "AT%CMNG has no credential type for it",
            })?;
            let text = std::str::from_utf8(item.data)
                .ok()
                .filter(|t| !t.is_empty() && !t.contains('"'))
                .ok_or(JigError::BadRequest {
                    slot: item.slot,
                    len: item.data.len(),
                    reason: "AT%CMNG takes a non-empty PEM without double quotes",
                })?;
            if present.iter().any(|(t, _)| *t == ty) {
                // The modem refuses to overwrite (519): delete first.
                self.delete(item.slot, ty)?;
            }
            let write = format!("AT%CMNG=0,{tag},{ty},\"{text}\"");
            match self.exchange(&write, WRITE_TIMEOUT)? {
                (_, Final::Ok) => {}
                (_, Final::Cme(518)) => {
                    return Err(JigError::ModemNotOffline {
                        port: self.port.clone(),
                        detail: format!(
                            "the write of slot {} answered +CME ERROR: 518 (not allowed in active state)",
                            item.slot
                        ),
                    });
                }
                (_, Final::Cme(519)) => {
                    return Err(JigError::ItemExists {
                        port: self.port.clone(),
                        slot: item.slot,
                        detail: "the write answered +CME ERROR: 519 (already exists)".into(),
                    });
                }
                (_, end) => return Err(self.refused(&write, &end)),
            }
            done += item.data.len();
            progress(done, total);
        }
        // Verification: the modem's SHA-256 of every item against the station's over exactly
        // the bytes it sent.
        let stored = self.list()?;
        for item in items {
            let ty = cmng_type(item.slot).unwrap_or(u8::MAX);
            let expected = hex::encode_upper(sha256(item.data));
            match stored.iter().find(|(t, _)| *t == ty) {
                Some((_, sha)) if *sha == expected => {}
                found => {
                    return Err(JigError::DigestMismatch {
                        port: self.port.clone(),
                        slot: item.slot,
                        detail: match found {
                            Some((_, sha)) if sha.is_empty() => {
                                "the modem lists no SHA-256 (modem firmware older than 1.3.2)"
                                    .into()
                            }
                            Some((_, sha)) => format!(
                                "the modem holds SHA-256 {sha}, the station sent {expected}"
                            ),
                            None => "the modem does not list the item after writing it".into(),
                        },
                    });
                }
            }
        }
        if !items.iter().any(|i| i.slot == Slot::PrivateKey) && !stored.iter().any(|(t, _)| *t == 2)
        {
            return Err(JigError::DigestMismatch {
                port: self.port.clone(),
                slot: Slot::PrivateKey,
                detail: format!(
                    "no private key (type 2) in security tag {tag}: neither written nor made on the modem"
                ),
            });
        }
        Ok(DriverWrite { bytes: done })
    }

    fn keygen(&mut self, subject: &CsrSubject) -> Result<String, JigError> {
        let tag = self.options.sec_tag;
        // KEYGEN fails where a key exists at the tag: delete first, as nRF Cloud Utils does.
        self.delete(Slot::PrivateKey, 2)?;
        let attrs: Vec<String> = [
            ("CN", &subject.common_name),
            ("O", &subject.organization),
            ("OU", &subject.organizational_unit),
            ("C", &subject.country),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty() && !v.contains(['"', ',']))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
        let command = format!("AT%KEYGEN={tag},2,0,\"{}\"", attrs.join(","));
        let lines = self.ok(&command, WRITE_TIMEOUT)?;
        let der = parse_keygen(&lines).map_err(|detail| self.protocol(&command, detail))?;
        Ok(pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der)))
    }
}

/// The command's name for errors and logs: never its content (a PEM, possibly a key).
fn command_name(command: &str) -> String {
    match command.find([',', '"']) {
        Some(i) if command.starts_with("AT%CMNG=0") || command.starts_with("AT%KEYGEN") => {
            let mut parts = command.splitn(4, ',');
            let head: Vec<&str> = parts.by_ref().take(3).collect();
            let _ = i;
            format!("{},…", head.join(","))
        }
        _ => command.to_string(),
    }
}

/// The items of tag `tag` in an `AT%CMNG=1` answer (`%CMNG: <tag>,<type>[,"<sha>"]`): type
/// and SHA-256 as uppercase hex (empty where the modem lists none: firmware before 1.3.2).
fn parse_list(lines: &[String], tag: u32) -> Result<Vec<(u8, String)>, String> {
    let mut out = Vec::new();
    for l in lines {
        let Some(rest) = l.strip_prefix("%CMNG:") else {
            continue;
        };
        let mut parts = rest.trim().splitn(3, ',');
        let (Some(t), Some(ty)) = (parts.next(), parts.next()) else {
            return Err(format!("unreadable line {l:?}"));
        };
        if t.trim().parse::<u32>().ok() != Some(tag) {
            continue;
        }
        let ty: u8 = ty
            .trim()
            .parse()
            .map_err(|_| format!("unreadable type in {l:?}"))?;
        let sha = parts
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"')
            .to_ascii_uppercase();
        if !sha.is_empty() && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(format!("the SHA-256 in {l:?} is not 64 hex digits"));
        }
        out.push((ty, sha));
    }
    Ok(out)
}

/// The CSR (DER) of an `AT%KEYGEN` answer: `%KEYGEN: "<base64url CSR>.<base64url COSE>"`.
fn parse_keygen(lines: &[String]) -> Result<Vec<u8>, String> {
    let value = lines
        .iter()
        .find_map(|l| l.strip_prefix("%KEYGEN:"))
        .map(|v| v.trim().trim_matches('"'))
        .ok_or("no %KEYGEN: line")?;
    let csr_part = value.split('.').next().unwrap_or("");
    let der = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(csr_part.trim_end_matches('='))
        .map_err(|e| format!("the CSR is not base64url: {e}"))?;
    if der.first() != Some(&0x30) {
        return Err("the CSR is not DER".into());
    }
    Ok(der)
}

fn final_text(end: &Final) -> String {
    match end {
        Final::Ok => "OK".into(),
        Final::Error => "ERROR".into(),
        Final::Cme(c) => format!("+CME ERROR: {c} ({})", cme_meaning(*c)),
    }
}

/// Parses what came back for a command: its echo (the command's bytes up to the CR, when
/// echo is on) is skipped, then information lines up to a final result. `None` while no
/// final result has arrived.
fn parse_reply(buf: &[u8], echo: &[u8]) -> Option<(Vec<String>, Final)> {
    let body = buf.strip_prefix(echo).unwrap_or(buf);
    let text = String::from_utf8_lossy(body);
    let mut lines = Vec::new();
    // Only complete lines (ended by CR LF) count.
    let complete = text.rfind("\r\n").map_or("", |i| &text[..i]);
    for l in complete.split("\r\n") {
        let l = l.trim_matches(['\r', '\n']);
        if l.is_empty() {
            continue;
        }
        if l == "OK" {
            return Some((lines, Final::Ok));
        }
        if l == "ERROR" {
            return Some((lines, Final::Error));
        }
        if let Some(code) = l.strip_prefix("+CME ERROR:") {
            return Some((lines, Final::Cme(code.trim().parse().unwrap_or(0))));
        }
        lines.push(l.to_string());
    }
    None
}

impl JigDriver for Nrf91At {
    fn kind(&self) -> DriverKind {
        DriverKind::Nrf91At
    }

    fn identify(&mut self) -> Result<BoardIdentity, JigError> {
        let mut answered = false;
        for _ in 0..PROBE_TRIES {
            match self.exchange("AT", self.timeout) {
                Ok(_) => {
                    answered = true;
                    break;
                }
                Err(JigError::Timeout { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if !answered {
            return Err(JigError::NoBoard {
                port: self.port.clone(),
                tries: PROBE_TRIES,
            });
        }
        let imei = self
            .ok("AT+CGSN", self.timeout)?
            .into_iter()
            .find(|l| l.len() == 15 && l.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| self.protocol("AT+CGSN", "no 15-digit IMEI".into()))?;
        let fw_version = self
            .ok("AT+CGMR", self.timeout)?
            .into_iter()
            .next()
            .unwrap_or_default();
        self.serial = Some(imei.clone());
        Ok(BoardIdentity {
            serial: imei,
            mac: None,
            hw_rev: None,
            fw_version,
        })
    }

    fn gen_csr(&mut self, subject: &CsrSubject) -> Result<String, JigError> {
        let mode = self.offline()?;
        let result = self.keygen(subject);
        let restored = self.restore(mode);
        let csr = result?;
        restored?;
        Ok(csr)
    }

    fn held(&mut self, items: &[SlotWrite<'_>]) -> Result<Vec<Slot>, JigError> {
        let asked: Vec<&SlotWrite<'_>> = items
            .iter()
            .filter(|i| i.slot != Slot::PrivateKey && cmng_type(i.slot).is_some())
            .collect();
        if asked.is_empty() {
            return Ok(Vec::new());
        }
        let stored = self.list()?;
        Ok(asked
            .iter()
            .filter(|i| {
                let ty = cmng_type(i.slot).unwrap_or(u8::MAX);
                let expected = hex::encode_upper(sha256(i.data));
                stored.iter().any(|(t, sha)| *t == ty && *sha == expected)
            })
            .map(|i| i.slot)
            .collect())
    }

    fn write_and_verify(
        &mut self,
        items: &[SlotWrite<'_>],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<DriverWrite, JigError> {
        let items: Vec<SlotWrite<'_>> = items
            .iter()
            .filter(|i| i.slot != Slot::RootCa || self.options.write_root_ca)
            .copied()
            .collect();
        let mode = self.offline()?;
        let result = self.write_items(&items, progress);
        // The functional mode comes back whatever happened (best effort after a failure).
        let restored = self.restore(mode);
        let report = result?;
        restored?;
        Ok(report)
    }

    fn retransmissions(&self) -> u64 {
        self.retransmissions
    }

    fn release(&mut self) -> Result<(), JigError> {
        // Nothing to do: every item is durable when its command answers, and the functional
        // mode is already restored.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_complete_at_its_final_result_and_echo_is_skipped() {
        let echo = b"AT+CGSN\r";
        assert_eq!(parse_reply(b"AT+CGSN\r\r\n3520", echo), None);
        assert_eq!(
            parse_reply(b"AT+CGSN\r\r\n352656100000017\r\nOK\r\n", echo),
            Some((vec!["352656100000017".to_string()], Final::Ok))
        );
        assert_eq!(
            parse_reply(b"\r\n+CME ERROR: 519\r\n", echo),
            Some((vec![], Final::Cme(519)))
        );
        assert_eq!(
            parse_reply(b"\r\nERROR\r\n", echo),
            Some((vec![], Final::Error))
        );
    }

    #[test]
    fn a_list_gives_each_item_of_the_tag_and_its_digest() {
        let sha = "2C43952EE9E000FF2ACC4E2ED0897C0A72AD5FA72C3D934E81741CBD54F05BD1";
        let lines = vec![
            format!("%CMNG: 16842753,0,\"{sha}\""),
            format!("%CMNG: 16842753,1,\"{}\"", sha.to_lowercase()),
            "%CMNG: 7,2,\"00\"".to_string(),
            "%CMNG: 16842753,2".to_string(),
        ];
        assert_eq!(
            parse_list(&lines, 16_842_753),
            Ok(vec![
                (0, sha.to_string()),
                (1, sha.to_string()),
                (2, String::new())
            ])
        );
        assert!(parse_list(&["%CMNG: 16842753,x,\"\"".into()], 16_842_753).is_err());
        assert!(parse_list(&["%CMNG: 16842753,1,\"ABC\"".into()], 16_842_753).is_err());
    }

    #[test]
    fn a_keygen_answer_gives_the_der_csr_before_the_dot() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let der = [0x30u8, 0x03, 0x02, 0x01, 0x00];
        let line = format!("%KEYGEN: \"{}.{}\"", b64.encode(der), b64.encode(b"cose"));
        assert_eq!(parse_keygen(&[line]), Ok(der.to_vec()));
        assert!(parse_keygen(&["%KEYGEN: \"!!.x\"".into()]).is_err());
        let not_der = format!("%KEYGEN: \"{}.x\"", b64.encode(b"text"));
        assert_eq!(parse_keygen(&[not_der]), Err("the CSR is not DER".into()));
        assert!(parse_keygen(&["OK".into()]).is_err());
    }

    #[test]
    fn command_names_never_carry_the_pem() {
        let name = command_name("AT%CMNG=0,16842753,2,\"-----BEGIN PRIVATE KEY-----\nMIG\n\"");
        assert_eq!(name, "AT%CMNG=0,16842753,2,…");
        assert_eq!(command_name("AT+CFUN=4"), "AT+CFUN=4");
    }
}
