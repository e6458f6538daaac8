//! The `zephyr-cred` driver: [`JigDriver`] over a Zephyr board's UART shell and its
//! TLS-credentials commands (`CONFIG_TLS_CREDENTIALS_SHELL`), as Zephyr's
//! `scripts/utils/tls_creds_installer.py` drives them, for boards that run standard Zephyr
//! firmware rather than our jig protocol. `docs/jig-drivers.md` has the exchange.
//!
//! - identity: a configurable shell command ([`ZephyrOptions::identity_command`], default
//!   `hwinfo devid`, whose `ID: 0x…` is the device id; any other command's first output line
//!   is taken as the id), and `kernel version` for the firmware version.
//! - what the board holds: `cred list <sectag>`, each line's digest (base64 SHA-256 of the
//!   stored bytes, the NUL included) against the station's.
//! - write, per item: `cred del` where the type exists (`cred add` never overwrites), then the
//!   item into the credential buffer — raw with `cred buf load` … Ctrl-C where the shell has
//!   it (stored `strt`), else `cred buf clear` and base64 chunks of
//!   [`ZephyrOptions::chunk`] characters, one `cred buf <chunk>` at a time, each echo and
//!   `Stored <n> bytes.` checked (stored `bint`) — then `cred add <tag> <TYPE> DEFAULT
//!   bint|strt` and its `length` checked. Lock-step: the shell's 64-byte RX ring overflows
//!   when lines are sent ahead.
//! - verify: `cred list <sectag>` again, every item's digest compared.
//! - a board-made key: the cred shell has no key generation ([`JigError::NoGenCsr`]).
//!
//! The device configuration and the thing name have no place in the credential store; they
//! are not written (see [`DriverKind::writes`](super::DriverKind::writes)).
//!
//! # Layout
//!
//! - this file: [`ZephyrCred`] and [`ZephyrOptions`].
//! - `shell_text`: the shell's vocabulary and the parsers of its answers, shared with the
//!   emulated shell (`sim/zephyr`).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serialport::SerialPort;

use super::{BoardIdentity, DriverKind, DriverWrite, JigDriver};
use crate::error::JigError;
use crate::link::{PortSettings, SlotWrite, line_time, open_port};
use crate::wire::protocol::{CsrSubject, Slot};

pub(crate) mod shell_text;

use shell_text::{
    CredType, ListEntry, digest_of_item, encode, parse_added, parse_identity, parse_list_line,
    parse_stored, strip_vt100,
};

/// The security tag Zephyr's `tls_creds_installer.py` writes to by default.
pub const ZEPHYR_DEFAULT_SEC_TAG: u32 = 16_842_753;

/// The shell's default prompt (`CONFIG_SHELL_PROMPT_UART`).
pub const ZEPHYR_DEFAULT_PROMPT: &str = "uart:~$ ";

/// Per-port options of the `zephyr-cred` driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZephyrOptions {
    /// The security tag the credentials go to.
    pub sec_tag: u32,
    /// Write the root CA (`CA`); `false` when the firmware provides it.
    pub write_root_ca: bool,
    /// The shell command whose output names the board (default `hwinfo devid`).
    pub identity_command: String,
    /// Base64 characters per `cred buf` line: a multiple of 4, and the whole line
    /// (`cred buf ` + chunk) shorter than the shell's command buffer (256 by default).
    pub chunk: usize,
    /// Use `cred buf load` (raw PEM, fewer bytes) where the shell has it.
    pub buf_load: bool,
    /// The shell's prompt.
    pub prompt: String,
}

impl Default for ZephyrOptions {
    fn default() -> ZephyrOptions {
        ZephyrOptions {
            sec_tag: ZEPHYR_DEFAULT_SEC_TAG,
            write_root_ca: true,
            identity_command: "hwinfo devid".into(),
            chunk: 48,
            buf_load: true,
            prompt: ZEPHYR_DEFAULT_PROMPT.into(),
        }
    }
}

/// Longest `chunk` that keeps `cred buf <chunk>` within the default 256-byte command buffer.
pub const ZEPHYR_MAX_CHUNK: usize = 244;

/// What a command printed, echo aside.
struct Answer {
    /// The output lines between the echo and the prompt, colours stripped.
    lines: Vec<String>,
}

impl Answer {
    fn has(&self, text: &str) -> bool {
        self.lines.iter().any(|l| l.contains(text))
    }

    /// The first line that reads as an error, for messages.
    fn text(&self) -> String {
        let t = self
            .lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" / ");
        if t.is_empty() { "no answer".into() } else { t }
    }
}

/// A Zephyr board's shell on a serial port.
pub struct ZephyrCred {
    port: Box<dyn SerialPort>,
    name: String,
    settings: PortSettings,
    options: ZephyrOptions,
    /// Bytes read and not yet taken by an exchange.
    pending: Vec<u8>,
    retransmissions: u64,
    /// The board's shell has `cred buf load` (until it shows it has not).
    buf_load: bool,
    /// The board said it keeps credentials in RAM only.
    volatile: bool,
}

impl ZephyrCred {
    /// Opens the port at `path`.
    pub fn open(
        path: &str,
        settings: &PortSettings,
        options: ZephyrOptions,
    ) -> Result<ZephyrCred, JigError> {
        let mut port = open_port(path, settings)?;
        let io = |source| JigError::Io {
            port: path.to_string(),
            source,
        };
        port.set_timeout(Duration::from_millis(5))
            .map_err(|e| io(std::io::Error::from(e)))?;
        Ok(ZephyrCred {
            port,
            name: path.to_string(),
            settings: settings.clone(),
            buf_load: options.buf_load,
            options,
            pending: Vec::new(),
            retransmissions: 0,
            volatile: false,
        })
    }

    /// Whether the board on the jig said (when a credential was added) that it keeps
    /// credentials in RAM only (`CONFIG_TLS_CREDENTIALS_BACKEND_VOLATILE`).
    pub fn volatile_store(&self) -> bool {
        self.volatile
    }

    fn io(&self, source: std::io::Error) -> JigError {
        JigError::Io {
            port: self.name.clone(),
            source,
        }
    }

    /// Reads what has arrived (up to the port's short timeout) into `pending`.
    fn read_some(&mut self) -> Result<usize, JigError> {
        let mut buf = [0u8; 1024];
        match self.port.read(&mut buf) {
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(self.io(e)),
        }
    }

    /// Drops what arrived before this exchange; a boot banner among it means the board
    /// rebooted since the last one.
    fn drain_stale(&mut self) -> Result<(), JigError> {
        // Only what is there now: waiting for a quiet line would cost every exchange a read
        // timeout (late stale bytes are told apart by the echo the answer starts with).
        while self.port.bytes_to_read().is_ok_and(|n| n > 0) {
            if self.read_some()? == 0 {
                break;
            }
        }
        let stale = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        if stale.contains("*** Booting Zephyr OS") {
            return Err(JigError::BoardRebooted {
                port: self.name.clone(),
            });
        }
        Ok(())
    }

    /// After a failed write: waits until the line has been quiet for the answer timeout (at
    /// most the long timeout), so what the board still prints — e.g. the rest of a raw
    /// credential it took as commands once its buffer was full — does not reach the next
    /// exchange; then Ctrl-C, which ends a `cred buf load` still open and drops a
    /// half-received command line (sent once the board is quiet, so its RX ring has room).
    fn settle(&mut self) {
        self.wait_quiet();
        let _ = self.port.write_all(&[0x03]);
        self.wait_quiet();
    }

    fn wait_quiet(&mut self) {
        let end = Instant::now() + self.settings.long_timeout;
        let mut quiet_since = Instant::now();
        while Instant::now() < end && quiet_since.elapsed() < self.settings.timeout {
            match self.read_some() {
                Ok(0) => {}
                Ok(_) => quiet_since = Instant::now(),
                Err(_) => break,
            }
        }
        self.pending.clear();
    }

    /// Sends `bytes` and reads until the prompt that ends the answer: with `echo` (the
    /// command line, which the shell echoes), the first prompt after that echo and its line
    /// break — anything before the echo is stale (a prompt's colour reset, output of an
    /// earlier command) — and without (raw input it does not echo), the first prompt. A line
    /// that brings back no sign of itself (lost on the wire) is sent again, up to `retries`
    /// times.
    fn exchange(
        &mut self,
        bytes: &[u8],
        echo: Option<&str>,
        label: &'static str,
        slow: bool,
    ) -> Result<Answer, JigError> {
        self.drain_stale()?;
        let wait = if slow {
            self.settings.long_timeout
        } else {
            self.settings.timeout
        };
        // The command and its echo, and a few hundred bytes of answer, on the line.
        let budget = wait + line_time(2 * bytes.len() + 400, self.settings.baud);
        let echo_nl = echo.map(|e| format!("{e}\r\n"));
        let mut tries = 0;
        loop {
            tries += 1;
            self.port.write_all(bytes).map_err(|e| self.io(e))?;
            self.port.flush().map_err(|e| self.io(e))?;
            let deadline = Instant::now() + budget;
            let text = loop {
                self.read_some()?;
                let text = strip_vt100(&String::from_utf8_lossy(&self.pending));
                if text.contains("*** Booting Zephyr OS") {
                    self.pending.clear();
                    return Err(JigError::BoardRebooted {
                        port: self.name.clone(),
                    });
                }
                let start = match &echo_nl {
                    Some(e) => text.find(e.as_str()),
                    None => Some(0),
                };
                if let Some(start) = start
                    && let Some(end) = text[start..].find(self.options.prompt.as_str())
                {
                    self.pending.clear();
                    return self.answer(&text[..start], &text[start..start + end], echo, label);
                }
                if Instant::now() >= deadline {
                    break text;
                }
            };
            self.pending.clear();
            let lost = |detail: &str| JigError::ShellLineLost {
                port: self.name.clone(),
                command: label.to_string(),
                detail: detail.to_string(),
            };
            if text.contains("RX ring buffer full.") {
                return Err(lost("the board's shell logged `RX ring buffer full.`"));
            }
            // The shell started echoing the line: it got (some of) it, garbled.
            if let Some(e) = echo
                && text.contains(&e[..e.len().min(8)])
            {
                return Err(lost("the shell's echo differs from the line sent"));
            }
            let nothing = echo.is_some() || text.trim().is_empty();
            if !nothing || tries > self.settings.retries {
                return Err(JigError::Timeout {
                    port: self.name.clone(),
                    command: label,
                    tries,
                });
            }
            // No sign of the line: it never reached the shell. Send it again.
            self.retransmissions += 1;
        }
    }

    /// The answer's output lines: `body` runs from the echo (if any) to the prompt; `before`
    /// is what came ahead of it.
    fn answer(
        &self,
        before: &str,
        body: &str,
        echo: Option<&str>,
        label: &'static str,
    ) -> Result<Answer, JigError> {
        let mut lines: Vec<String> = body
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        // The prompt follows a line break; the last piece is empty.
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        if echo.is_some() && !lines.is_empty() {
            lines.remove(0);
        }
        if before.contains("RX ring buffer full.")
            || lines.iter().any(|l| l.contains("RX ring buffer full."))
        {
            return Err(JigError::ShellLineLost {
                port: self.name.clone(),
                command: label.to_string(),
                detail: "the board's shell logged `RX ring buffer full.`".into(),
            });
        }
        Ok(Answer { lines })
    }

    /// Runs shell command `cmd`.
    fn command(&mut self, cmd: &str, label: &'static str, slow: bool) -> Result<Answer, JigError> {
        let mut line = Vec::with_capacity(cmd.len() + 1);
        line.extend_from_slice(cmd.as_bytes());
        line.push(b'\r');
        self.exchange(&line, Some(cmd), label, slow)
    }

    fn refused(&self, command: &str, answer: &Answer) -> JigError {
        JigError::ShellRefused {
            port: self.name.clone(),
            command: command.to_string(),
            text: answer.text(),
        }
    }

    /// `cred list <sectag>`: what the board holds under the port's tag.
    fn list(&mut self) -> Result<Vec<ListEntry>, JigError> {
        let cmd = format!("cred list {}", self.options.sec_tag);
        let answer = self.command(&cmd, "cred list", false)?;
        if !answer.has("credentials found.") {
            return Err(self.refused(&cmd, &answer));
        }
        Ok(answer
            .lines
            .iter()
            .filter_map(|l| parse_list_line(l))
            .filter(|e| e.sectag == self.options.sec_tag)
            .collect())
    }

    /// The items this port writes, with their credential types.
    fn typed<'a>(&self, items: &'a [SlotWrite<'a>]) -> Vec<(Slot, CredType, &'a [u8])> {
        items
            .iter()
            .filter(|i| i.slot != Slot::RootCa || self.options.write_root_ca)
            .filter_map(|i| CredType::of_slot(i.slot).map(|t| (i.slot, t, i.data)))
            .collect()
    }

    /// Puts `data` in the shell's credential buffer; returns the storage format to add it
    /// with.
    fn buffer(&mut self, slot: Slot, data: &[u8]) -> Result<&'static str, JigError> {
        if self.buf_load && !data.contains(&0x03) {
            let answer = self.command("cred buf load", "cred buf load", false)?;
            if answer.has("Input credential, finish with CTRL+C.") {
                let mut raw = data.to_vec();
                raw.push(0x03);
                let answer = self.exchange(&raw, None, "cred buf load", false)?;
                self.check_stored(slot, data.len(), data.len(), &answer, "cred buf load")?;
                return Ok("strt");
            }
            // An older shell took `load` as data ("Stored 4 bytes."): chunks from now on.
            tracing::debug!(port = %self.name, "the shell has no `cred buf load`; sending base64 chunks");
            self.buf_load = false;
        }
        let answer = self.command("cred buf clear", "cred buf clear", false)?;
        if !answer.has("Credential buffer cleared.") {
            return Err(self.refused("cred buf clear", &answer));
        }
        let b64 = encode(data);
        for chunk in b64.as_bytes().chunks(self.options.chunk) {
            let chunk = std::str::from_utf8(chunk).expect("base64 is ASCII");
            let answer = self.command(&format!("cred buf {chunk}"), "cred buf", false)?;
            self.check_stored(slot, chunk.len(), b64.len(), &answer, "cred buf")?;
        }
        Ok("bint")
    }

    /// Checks a `Stored <n> bytes.` answer for `sent` bytes of an item of `total` buffered
    /// characters.
    fn check_stored(
        &self,
        slot: Slot,
        sent: usize,
        total: usize,
        answer: &Answer,
        command: &'static str,
    ) -> Result<(), JigError> {
        if let Some(line) = answer
            .lines
            .iter()
            .find(|l| l.contains("Not enough room in credential buffer"))
        {
            return Err(JigError::CredBufferTooSmall {
                port: self.name.clone(),
                slot,
                needed: total,
                text: line.trim().to_string(),
            });
        }
        match answer.lines.iter().find_map(|l| parse_stored(l)) {
            Some(n) if n == sent => Ok(()),
            Some(n) => Err(JigError::ShellLineLost {
                port: self.name.clone(),
                command: command.into(),
                detail: format!("the board stored {n} bytes of the {sent} sent"),
            }),
            // Not the board's text: after raw input it may hold the item's own lines (the
            // shell runs them as commands once its buffer is full), a key's among them.
            None => Err(JigError::ShellRefused {
                port: self.name.clone(),
                command: command.to_string(),
                text: "no `Stored <n> bytes.` answer".into(),
            }),
        }
    }

    /// Writes one item: delete what is there, buffer it, add it.
    fn write_item(
        &mut self,
        slot: Slot,
        ty: CredType,
        data: &[u8],
        present: bool,
    ) -> Result<(), JigError> {
        let tag = self.options.sec_tag;
        if present {
            let cmd = format!("cred del {tag} {}", ty.compact());
            let answer = self.command(&cmd, "cred del", true)?;
            if !answer.has("Deleted TLS credential") {
                return Err(self.refused(&cmd, &answer));
            }
        }
        let format = self.buffer(slot, data)?;
        let cmd = format!("cred add {tag} {} DEFAULT {format}", ty.compact());
        let answer = self.command(&cmd, "cred add", true)?;
        if answer.has("Credential has been copied to heap") && !self.volatile {
            self.volatile = true;
            tracing::warn!(
                port = %self.name,
                "the board keeps TLS credentials in RAM only (CONFIG_TLS_CREDENTIALS_BACKEND_VOLATILE): \
                 they are gone when it reboots; build its firmware with \
                 CONFIG_TLS_CREDENTIALS_BACKEND_PROTECTED_STORAGE to keep them"
            );
        }
        match answer.lines.iter().find_map(|l| parse_added(l)) {
            Some((t, g, len)) if t == ty && g == tag && len == data.len() + 1 => Ok(()),
            Some((_, _, len)) => Err(JigError::ShellLineLost {
                port: self.name.clone(),
                command: cmd,
                detail: format!(
                    "the board added {len} bytes, the station sent {} (+1 NUL)",
                    data.len()
                ),
            }),
            None => Err(self.refused(&cmd, &answer)),
        }
    }
}

impl JigDriver for ZephyrCred {
    fn kind(&self) -> DriverKind {
        DriverKind::ZephyrCred
    }

    fn identify(&mut self) -> Result<BoardIdentity, JigError> {
        self.volatile = false;
        self.buf_load = self.options.buf_load;
        // An empty line: a shell answers with its prompt. A board just placed prints its
        // boot banner first (before or while it is asked): that is no reboot mid-write.
        let mut tries = 0;
        loop {
            tries += 1;
            // Ctrl-C: the shell drops whatever half line it holds and prints its prompt.
            match self.exchange(b"\x03", None, "prompt", false) {
                Ok(_) => break,
                Err(JigError::BoardRebooted { .. }) if tries < 3 => {}
                Err(JigError::Timeout { tries, .. }) => {
                    return Err(JigError::NoBoard {
                        port: self.name.clone(),
                        tries,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        let cmd = self.options.identity_command.clone();
        let answer = self.command(&cmd, "identity command", false)?;
        if answer.has("command not found") || answer.has("Not supported") {
            return Err(self.refused(&cmd, &answer));
        }
        let serial = parse_identity(&answer.lines).ok_or_else(|| JigError::Protocol {
            port: self.name.clone(),
            command: "identity command",
            detail: format!("`{cmd}` printed no device id"),
        })?;
        let version = self.command("kernel version", "kernel version", false)?;
        let fw_version = version
            .lines
            .iter()
            .find_map(|l| l.trim().strip_prefix("Zephyr version ").map(str::to_string))
            .unwrap_or_else(|| "unknown".into());
        Ok(BoardIdentity {
            serial,
            mac: None,
            hw_rev: None,
            fw_version,
        })
    }

    fn gen_csr(&mut self, _subject: &CsrSubject) -> Result<String, JigError> {
        // The TLS-credentials shell stores credentials; it cannot make a key.
        Err(JigError::NoGenCsr {
            port: self.name.clone(),
        })
    }

    fn held(&mut self, items: &[SlotWrite<'_>]) -> Result<Vec<Slot>, JigError> {
        let typed = self.typed(items);
        if typed.is_empty() {
            return Ok(Vec::new());
        }
        let listed = self.list()?;
        Ok(typed
            .into_iter()
            .filter(|(_, ty, data)| {
                let want = digest_of_item(data);
                listed
                    .iter()
                    .any(|e| e.cred_type == *ty && e.digest.as_deref() == Some(want.as_str()))
            })
            .map(|(slot, _, _)| slot)
            .collect())
    }

    fn write_and_verify(
        &mut self,
        items: &[SlotWrite<'_>],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<DriverWrite, JigError> {
        let result = self.write_all(items, progress);
        if result.is_err() {
            self.settle();
        }
        result
    }

    fn retransmissions(&self) -> u64 {
        self.retransmissions
    }

    fn release(&mut self) -> Result<(), JigError> {
        // Nothing to send: a reboot would empty a volatile store, and a persistent one needs
        // none. The operator takes the board off.
        Ok(())
    }
}

impl ZephyrCred {
    /// [`JigDriver::write_and_verify`] until its first error.
    fn write_all(
        &mut self,
        items: &[SlotWrite<'_>],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<DriverWrite, JigError> {
        let typed = self.typed(items);
        let total: usize = typed.iter().map(|(_, _, d)| d.len()).sum();
        let listed = self.list()?;
        let mut done = 0;
        progress(0, total);
        for (slot, ty, data) in &typed {
            let present = listed.iter().any(|e| e.cred_type == *ty);
            self.write_item(*slot, *ty, data, present)?;
            done += data.len();
            progress(done, total);
        }
        // Verified only if every item's digest, computed by the board, is the station's.
        let listed = self.list()?;
        for (slot, ty, data) in &typed {
            let want = digest_of_item(data);
            match listed.iter().find(|e| e.cred_type == *ty) {
                Some(e) if e.digest.as_deref() == Some(want.as_str()) => {}
                Some(e) => {
                    return Err(JigError::DigestMismatch {
                        port: self.name.clone(),
                        slot: *slot,
                        detail: match &e.digest {
                            Some(_) => "`cred list` shows another SHA-256".into(),
                            None => format!(
                                "the board computes no digest (status {}): its firmware needs \
                                 CONFIG_PSA_WANT_ALG_SHA_256 and CONFIG_BASE64",
                                e.status
                            ),
                        },
                    });
                }
                None => {
                    return Err(JigError::DigestMismatch {
                        port: self.name.clone(),
                        slot: *slot,
                        detail: "`cred list` does not show it".into(),
                    });
                }
            }
        }
        Ok(DriverWrite { bytes: total })
    }
}
