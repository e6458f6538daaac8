//! The emulated nRF91 modem behind its AT host, as a state machine without I/O: one command
//! line in, the bytes of its answer out. It behaves as Nordic documents (reference §2):
//!
//! - echo of the command line while `ATE1` (the default), `ATE0` turns it off;
//! - answers `\r\n<line>\r\n` then `\r\nOK\r\n`, `\r\nERROR\r\n` or `\r\n+CME ERROR: <n>\r\n`;
//! - `AT+CGSN` (IMEI), `AT+CGMR` (modem firmware), `AT+CFUN?`, `AT+CFUN=<n>`;
//! - `AT%CMNG` write (0), list (1), read (2), delete (3): write and delete only while the
//!   modem is not activated (`+CME ERROR: 518`), a write where the item exists is refused
//!   (519), delete of a missing item 513, read of a private key 514; the list carries the
//!   SHA-256 of exactly the stored bytes as 64 uppercase hex digits in quotes;
//! - `AT%KEYGEN=<tag>,2,0[,"<attributes>"]`: a P-256 key stored as type 2 (refused where
//!   one exists), answered `%KEYGEN: "<base64url CSR DER>.<base64url token>"`.
//!
//! The modem starts activated (`+CFUN: 1`: the application brings LTE up at boot), so a
//! writer must take it offline first.

use std::collections::BTreeMap;

use base64::Engine as _;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use crate::driver::cmng_type;
use crate::sim::faults::{FaultConfig, RxFault};
use crate::wire::protocol::sha256;

/// Faults only a modem has (all off by default). The faults every virtual board has (a
/// command line lost, a reboot at a given line, a weak flash cell) are the virtual jigs'
/// [`FaultConfig`], counted in command lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModemFaults {
    /// The `n`th `AT%CMNG` write of a board reboots the modem before it stores the item
    /// (once a board); 0: never.
    pub reboot_at_write: u32,
    /// `AT%CMNG=3` answers `+CME ERROR: 514` (no access).
    pub refuse_delete: bool,
    /// `AT+CFUN=4` answers `OK` but the application switches the modem back on at once.
    pub stays_online: bool,
}

/// One emulated modem: its identity and what its firmware holds before it is provisioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModemSpec {
    /// 15 digits.
    pub imei: String,
    /// What `AT+CGMR` answers.
    pub fw_version: String,
    /// Credentials in the store before provisioning: (sec_tag, type, content).
    pub stored: Vec<(u32, u8, Vec<u8>)>,
}

/// What a command line did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Bytes to send back (echo included).
    Answer(Vec<u8>),
    /// The line was lost: nothing comes back.
    Lost,
    /// The modem rebooted while handling it: nothing comes back, and it ignores the line
    /// while it boots.
    Rebooted,
}

/// The modem's state.
pub(crate) struct Modem {
    pub(crate) spec: ModemSpec,
    pub(crate) store: BTreeMap<(u32, u8), Vec<u8>>,
    pub(crate) cfun: u8,
    echo: bool,
    pub(crate) faults: ModemFaults,
    /// `FaultConfig::flip_bit_in`: every write of this `%CMNG` type is stored with one bit
    /// flipped.
    flip_type: Option<u8>,
    writes: u32,
    rebooted: bool,
}

fn is_active(cfun: u8) -> bool {
    !matches!(cfun, 0 | 4)
}

impl Modem {
    pub(crate) fn new(spec: ModemSpec, faults: ModemFaults, common: &FaultConfig) -> Modem {
        let store = spec
            .stored
            .iter()
            .map(|(t, ty, c)| ((*t, *ty), c.clone()))
            .collect();
        Modem {
            spec,
            store,
            cfun: 1,
            echo: true,
            faults,
            flip_type: common.flip_bit_in.and_then(cmng_type),
            writes: 0,
            rebooted: false,
        }
    }

    /// After a reboot: the application brings the modem up again; the store is kept (every
    /// item is in NVM once its command answered).
    pub(crate) fn boot(&mut self) {
        self.cfun = 1;
        self.echo = true;
    }

    /// Handles one command line (`raw`: its bytes up to and including the terminator) with
    /// the fault the jig's plan chose for it: a dropped or corrupted line is lost (the AT
    /// host never sees a whole command: no echo, no answer), a reboot happens before the
    /// command runs. Unplug and NAK faults are the jig protocol's and do not apply.
    pub(crate) fn handle(&mut self, raw: &[u8], fault: RxFault) -> Outcome {
        match fault {
            RxFault::Drop | RxFault::Corrupt => return Outcome::Lost,
            RxFault::Reboot => {
                self.boot();
                return Outcome::Rebooted;
            }
            RxFault::None | RxFault::Unplug | RxFault::Nak(_) => {}
        }
        let line = String::from_utf8_lossy(raw);
        let line = line.trim_end_matches(['\r', '\n']);
        let mut out = Vec::new();
        if self.echo {
            out.extend_from_slice(raw);
        }
        let (info, result) = match self.command(line) {
            Ok(Some(info)) => (info, Ok(())),
            Ok(None) => return Outcome::Rebooted,
            Err(e) => (Vec::new(), Err(e)),
        };
        for l in info {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(l.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        match result {
            Ok(()) => out.extend_from_slice(b"\r\nOK\r\n"),
            Err(None) => out.extend_from_slice(b"\r\nERROR\r\n"),
            Err(Some(code)) => {
                out.extend_from_slice(format!("\r\n+CME ERROR: {code}\r\n").as_bytes())
            }
        }
        Outcome::Answer(out)
    }

    /// `Ok(Some(lines))`: OK with those information lines; `Ok(None)`: rebooted;
    /// `Err(None)`: ERROR; `Err(Some(n))`: +CME ERROR: n.
    fn command(&mut self, line: &str) -> Result<Option<Vec<String>>, Option<u32>> {
        let upper_head: String = line
            .chars()
            .take_while(|c| *c != '=' && *c != '?')
            .collect::<String>()
            .to_ascii_uppercase();
        let args = line.get(upper_head.len()..).unwrap_or("");
        match (upper_head.as_str(), args) {
            ("AT", "") => Ok(Some(vec![])),
            ("ATE0", "") | ("ATE1", "") => {
                self.echo = upper_head == "ATE1";
                Ok(Some(vec![]))
            }
            ("AT+CGSN", "") => Ok(Some(vec![self.spec.imei.clone()])),
            ("AT+CGMR", "") => Ok(Some(vec![self.spec.fw_version.clone()])),
            ("AT+CFUN", "?") => Ok(Some(vec![format!("+CFUN: {}", self.cfun)])),
            ("AT+CFUN", a) if a.starts_with('=') => {
                let mode: u8 = a[1..].trim().parse().map_err(|_| None)?;
                if !matches!(mode, 0 | 1 | 2 | 4 | 20 | 21 | 30 | 31 | 40 | 41 | 44) {
                    return Err(None);
                }
                self.cfun = if mode == 4 && self.faults.stays_online {
                    1
                } else {
                    mode
                };
                Ok(Some(vec![]))
            }
            ("AT%CMNG", a) if a.starts_with('=') => self.cmng(&a[1..]),
            ("AT%KEYGEN", a) if a.starts_with('=') => self.keygen(&a[1..]).map(Some),
            _ => Err(None),
        }
    }

    fn cmng(&mut self, args: &str) -> Result<Option<Vec<String>>, Option<u32>> {
        let (fields, content) = split_args(args).ok_or(None)?;
        let num = |i: usize| -> Result<Option<u64>, Option<u32>> {
            match fields.get(i) {
                None => Ok(None),
                Some(f) => f.trim().parse::<u64>().map(Some).map_err(|_| None),
            }
        };
        let op = num(0)?.ok_or(None)?;
        let tag = num(1)?;
        let ty = num(2)?;
        if tag.is_some_and(|t| t > 2_147_483_667) || ty.is_some_and(|t| t > 11) {
            return Err(None);
        }
        let (tag, ty) = (tag.map(|t| t as u32), ty.map(|t| t as u8));
        match op {
            0 => {
                let (Some(tag), Some(ty), Some(content)) = (tag, ty, content) else {
                    return Err(None);
                };
                if content.is_empty() {
                    return Err(None);
                }
                if is_active(self.cfun) {
                    return Err(Some(518));
                }
                if self.store.contains_key(&(tag, ty)) {
                    return Err(Some(519));
                }
                self.writes += 1;
                if self.faults.reboot_at_write > 0
                    && !self.rebooted
                    && self.writes == self.faults.reboot_at_write
                {
                    self.rebooted = true;
                    self.boot();
                    return Ok(None);
                }
                let mut bytes = content.into_bytes();
                if self.flip_type == Some(ty)
                    && let Some(last) = bytes.last_mut()
                {
                    *last ^= 0x01;
                }
                self.store.insert((tag, ty), bytes);
                Ok(Some(vec![]))
            }
            1 => Ok(Some(
                self.store
                    .iter()
                    .filter(|((t, y), _)| tag.is_none_or(|q| q == *t) && ty.is_none_or(|q| q == *y))
                    .map(|((t, y), c)| {
                        format!("%CMNG: {t},{y},\"{}\"", hex::encode_upper(sha256(c)))
                    })
                    .collect(),
            )),
            2 => {
                let (Some(tag), Some(ty)) = (tag, ty) else {
                    return Err(None);
                };
                if ty == 2 {
                    return Err(Some(514));
                }
                let c = self.store.get(&(tag, ty)).ok_or(Some(513))?;
                Ok(Some(vec![format!(
                    "%CMNG: {tag},{ty},\"{}\",\"{}\"",
                    hex::encode_upper(sha256(c)),
                    String::from_utf8_lossy(c)
                )]))
            }
            3 => {
                let (Some(tag), Some(ty)) = (tag, ty) else {
                    return Err(None);
                };
                if is_active(self.cfun) {
                    return Err(Some(518));
                }
                if self.faults.refuse_delete {
                    return Err(Some(514));
                }
                self.store.remove(&(tag, ty)).ok_or(Some(513))?;
                Ok(Some(vec![]))
            }
            _ => Err(None),
        }
    }

    fn keygen(&mut self, args: &str) -> Result<Vec<String>, Option<u32>> {
        let (fields, attrs) = split_args(args).ok_or(None)?;
        let num = |i: usize| fields.get(i).and_then(|f| f.trim().parse::<u64>().ok());
        let (Some(tag), Some(2), Some(0)) = (num(0), num(1), num(2)) else {
            return Err(None);
        };
        let tag = u32::try_from(tag).map_err(|_| None)?;
        if is_active(self.cfun) {
            return Err(Some(518));
        }
        if self.store.contains_key(&(tag, 2)) {
            return Err(Some(519));
        }
        let mut dn = DistinguishedName::new();
        for pair in attrs
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').ok_or(None)?;
            let t = match k.trim() {
                "CN" => DnType::CommonName,
                "O" => DnType::OrganizationName,
                "OU" => DnType::OrganizationalUnitName,
                "C" => DnType::CountryName,
                "L" => DnType::LocalityName,
                "ST" => DnType::StateOrProvinceName,
                _ => return Err(None),
            };
            dn.push(t, v.trim());
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|_| None)?;
        let csr = params.serialize_request(&key).map_err(|_| None)?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let der = csr.der().to_vec();
        // Not emulated: the COSE_Sign1 attestation after the dot is the CSR's SHA-256,
        // unsigned (the station does not check it).
        let token = b64.encode(sha256(&der));
        self.store
            .insert((tag, 2), key.serialize_pem().into_bytes());
        Ok(vec![format!("%KEYGEN: \"{}.{token}\"", b64.encode(&der))])
    }
}

/// Splits `a,b,c,"quoted"` into the unquoted fields and the first quoted string.
fn split_args(args: &str) -> Option<(Vec<&str>, Option<String>)> {
    match args.find('"') {
        None => Some((args.split(',').collect(), None)),
        Some(q) => {
            let head = args[..q].trim_end_matches(',');
            let rest = &args[q + 1..];
            let end = rest.find('"')?;
            let fields = if head.is_empty() {
                Vec::new()
            } else {
                head.split(',').collect()
            };
            Some((fields, Some(rest[..end].to_string())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modem() -> Modem {
        Modem::new(
            ModemSpec {
                imei: "352656100000017".into(),
                fw_version: "mfw_nrf9160_1.3.5".into(),
                stored: vec![],
            },
            ModemFaults::default(),
            &FaultConfig::default(),
        )
    }

    fn answer(m: &mut Modem, line: &str) -> String {
        match m.handle(format!("{line}\r").as_bytes(), RxFault::None) {
            Outcome::Answer(b) => String::from_utf8(b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn writes_need_the_modem_offline_and_are_never_overwritten() {
        let mut m = modem();
        assert_eq!(
            answer(&mut m, "AT+CFUN?"),
            "AT+CFUN?\r\r\n+CFUN: 1\r\n\r\nOK\r\n"
        );
        assert!(answer(&mut m, "AT%CMNG=0,7,1,\"PEM\n\"").ends_with("\r\n+CME ERROR: 518\r\n"));
        assert!(answer(&mut m, "ATE0").ends_with("OK\r\n"));
        assert_eq!(answer(&mut m, "AT+CFUN=4"), "\r\nOK\r\n");
        assert_eq!(answer(&mut m, "AT%CMNG=0,7,1,\"PEM\n\""), "\r\nOK\r\n");
        assert_eq!(
            answer(&mut m, "AT%CMNG=0,7,1,\"PEM2\n\""),
            "\r\n+CME ERROR: 519\r\n"
        );
        let sha = hex::encode_upper(sha256(b"PEM\n"));
        assert_eq!(
            answer(&mut m, "AT%CMNG=1,7"),
            format!("\r\n%CMNG: 7,1,\"{sha}\"\r\n\r\nOK\r\n")
        );
        assert_eq!(answer(&mut m, "AT%CMNG=3,7,1"), "\r\nOK\r\n");
        assert_eq!(answer(&mut m, "AT%CMNG=3,7,1"), "\r\n+CME ERROR: 513\r\n");
        assert_eq!(answer(&mut m, "AT%CMNG=0,7,1,\"\""), "\r\nERROR\r\n");
        assert_eq!(answer(&mut m, "AT%BOGUS"), "\r\nERROR\r\n");
    }

    #[test]
    fn keygen_stores_a_key_that_cannot_be_read_and_returns_a_der_csr() {
        let mut m = modem();
        answer(&mut m, "ATE0");
        answer(&mut m, "AT+CFUN=4");
        let a = answer(&mut m, "AT%KEYGEN=9,2,0,\"CN=352656100000017,OU=st-1\"");
        let value = a.split('"').nth(1).unwrap();
        let der = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value.split('.').next().unwrap())
            .unwrap();
        assert_eq!(der[0], 0x30);
        assert!(m.store.contains_key(&(9, 2)));
        assert_eq!(answer(&mut m, "AT%CMNG=2,9,2"), "\r\n+CME ERROR: 514\r\n");
        assert_eq!(answer(&mut m, "AT%KEYGEN=9,2,0"), "\r\n+CME ERROR: 519\r\n");
    }

    #[test]
    fn faults_lose_lines_and_reboot_mid_write() {
        let mut m = modem();
        assert!(matches!(
            m.handle(b"AT\r", RxFault::None),
            Outcome::Answer(_)
        ));
        assert_eq!(m.handle(b"AT\r", RxFault::Drop), Outcome::Lost);
        assert_eq!(m.handle(b"AT\r", RxFault::Corrupt), Outcome::Lost);
        m.faults = ModemFaults {
            reboot_at_write: 1,
            ..ModemFaults::default()
        };
        answer(&mut m, "AT+CFUN=4");
        assert_eq!(
            m.handle(b"AT%CMNG=0,1,0,\"X\"\r", RxFault::None),
            Outcome::Rebooted
        );
        assert!(m.store.is_empty());
        assert_eq!(m.cfun, 1, "a rebooted modem comes back activated");
        // Once a board: the write after the reboot is stored.
        answer(&mut m, "AT+CFUN=4");
        assert_eq!(
            answer(&mut m, "AT%CMNG=0,1,0,\"X\""),
            "AT%CMNG=0,1,0,\"X\"\r\r\nOK\r\n"
        );
        // A reboot the jig's plan chose, before any command.
        assert_eq!(m.handle(b"AT+CFUN=4\r", RxFault::Reboot), Outcome::Rebooted);
        assert_eq!(m.cfun, 1);
    }

    #[test]
    fn a_weak_flash_cell_changes_what_the_digest_shows() {
        let mut m = Modem::new(
            ModemSpec {
                imei: "352656100000017".into(),
                fw_version: "mfw_nrf9160_1.3.5".into(),
                stored: vec![],
            },
            ModemFaults::default(),
            &FaultConfig {
                flip_bit_in: Some(crate::Slot::Certificate),
                ..FaultConfig::default()
            },
        );
        answer(&mut m, "ATE0");
        answer(&mut m, "AT+CFUN=4");
        answer(&mut m, "AT%CMNG=0,7,0,\"CA\n\"");
        answer(&mut m, "AT%CMNG=0,7,1,\"CERT\n\"");
        let listed = answer(&mut m, "AT%CMNG=1,7");
        assert!(listed.contains(&hex::encode_upper(sha256(b"CA\n"))));
        assert!(!listed.contains(&hex::encode_upper(sha256(b"CERT\n"))));
    }

    #[test]
    fn refused_delete_and_a_modem_that_stays_online() {
        let mut m = modem();
        m.faults.stays_online = true;
        answer(&mut m, "ATE0");
        assert_eq!(answer(&mut m, "AT+CFUN=4"), "\r\nOK\r\n");
        assert_eq!(answer(&mut m, "AT+CFUN?"), "\r\n+CFUN: 1\r\n\r\nOK\r\n");
        assert_eq!(answer(&mut m, "AT%CMNG=3,7,1"), "\r\n+CME ERROR: 518\r\n");
        m.faults.stays_online = false;
        m.faults.refuse_delete = true;
        answer(&mut m, "AT+CFUN=4");
        assert_eq!(answer(&mut m, "AT%CMNG=3,7,1"), "\r\n+CME ERROR: 514\r\n");
    }
}
