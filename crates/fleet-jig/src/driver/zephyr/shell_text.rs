//! The Zephyr TLS-credentials shell as text, without I/O: its credential types and their
//! names, the digest it prints, and parsers for the lines the `zephyr-cred` driver reads
//! back (`cred list` CSV lines, `Stored …`, `Added …`, `hwinfo devid`). The emulated shell
//! (`sim/zephyr`) prints with the same names and the same digest, so both sides share them.
//!
//! Facts from `subsys/net/lib/tls_credentials/tls_credentials_shell.c` (Zephyr main) and
//! `tls_credentials_digest_raw.c`: type keywords are case-insensitive with synonyms; messages
//! name a type by the first synonym of its group (`CA_CERT`), `cred list` by the last (`CA`);
//! a `cred list` line is `<sectag>,<TYPE>,<digest>,<status>`, the digest being the base64
//! (standard alphabet, padded) of SHA-256 over the bytes stored — with `bint`/`strt` those
//! include the NUL the shell appends.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::wire::protocol::Slot;

/// A TLS credential type, as the shell names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum CredType {
    Ca,
    Serv,
    Pk,
    PkPsa,
    Psk,
    PskId,
}

/// Every keyword the shell accepts, in its table order (case-insensitive).
const KEYWORDS: [(&str, CredType); 16] = [
    ("CA_CERT", CredType::Ca),
    ("CA", CredType::Ca),
    ("SERVER_CERT", CredType::Serv),
    ("CLIENT_CERT", CredType::Serv),
    ("SELF_CERT", CredType::Serv),
    ("SELF", CredType::Serv),
    ("CLIENT", CredType::Serv),
    ("SERV", CredType::Serv),
    ("PRIVATE_KEY", CredType::Pk),
    ("PK", CredType::Pk),
    ("PRIVATE_KEY_PSA", CredType::PkPsa),
    ("PK_PSA", CredType::PkPsa),
    ("PRE_SHARED_KEY", CredType::Psk),
    ("PSK", CredType::Psk),
    ("PRE_SHARED_KEY_ID", CredType::PskId),
    ("PSK_ID", CredType::PskId),
];

impl CredType {
    /// The type named by `keyword` (any synonym, any case).
    pub(crate) fn parse(keyword: &str) -> Option<CredType> {
        KEYWORDS
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(keyword))
            .map(|(_, t)| *t)
    }

    /// The name in messages (`Added TLS credential of type CA_CERT, …`): its first synonym.
    pub(crate) fn name(self) -> &'static str {
        KEYWORDS
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("INVALID", |(k, _)| k)
    }

    /// The name in `cred list` lines: its last synonym.
    pub(crate) fn compact(self) -> &'static str {
        KEYWORDS
            .iter()
            .rev()
            .find(|(_, t)| *t == self)
            .map_or("INV", |(k, _)| k)
    }

    /// Where the station's items go: root CA → `CA`, device certificate → `SERV`, private
    /// key → `PK`. The device configuration and thing name have no credential type.
    pub(crate) fn of_slot(slot: Slot) -> Option<CredType> {
        match slot {
            Slot::RootCa => Some(CredType::Ca),
            Slot::Certificate => Some(CredType::Serv),
            Slot::PrivateKey => Some(CredType::Pk),
            _ => None,
        }
    }
}

/// The digest `cred list` prints for a credential stored as `stored` bytes.
pub(crate) fn digest_of_stored(stored: &[u8]) -> String {
    STANDARD.encode(ring::digest::digest(&ring::digest::SHA256, stored))
}

/// The digest `cred list` prints for `item` written with `cred add … bint` (or `strt`): the
/// item's bytes and the NUL the shell appends.
pub(crate) fn digest_of_item(item: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(item);
    ctx.update(&[0]);
    STANDARD.encode(ctx.finish())
}

/// Base64 as `cred buf` takes it (standard alphabet, padded).
pub(crate) fn encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Base64 as the shell's `base64_decode` reads it; `None` if it is not valid base64.
pub(crate) fn decode(text: &[u8]) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

/// One `cred list` line: `<sectag>,<TYPE>,<digest>,<status>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListEntry {
    pub(crate) sectag: u32,
    pub(crate) cred_type: CredType,
    /// `None` when the board could not compute one (the field reads `ERROR`: no
    /// `PSA_WANT_ALG_SHA_256` or `BASE64` in its build, or a backend without digests).
    pub(crate) digest: Option<String>,
    pub(crate) status: i32,
}

/// Parses a `cred list` line; `None` for any other line (the `N credentials found.` footer).
pub(crate) fn parse_list_line(line: &str) -> Option<ListEntry> {
    let mut f = line.trim().split(',');
    let (tag, ty, digest, status) = (f.next()?, f.next()?, f.next()?, f.next()?);
    if f.next().is_some() {
        return None;
    }
    // The shell prints the tag with %d: tags above i32::MAX come out negative.
    let sectag = tag
        .parse::<u32>()
        .ok()
        .or_else(|| tag.parse::<i32>().ok().map(|t| t as u32))?;
    let cred_type = CredType::parse(ty)?;
    let status = status.parse::<i32>().ok()?;
    let digest = (status == 0 && digest != "ERROR" && digest != "N/A").then(|| digest.to_string());
    Some(ListEntry {
        sectag,
        cred_type,
        digest,
        status,
    })
}

/// `Stored <n> bytes.` → n. The line may start with the tail of a colour code whose start
/// went with the previous answer (an answer to raw input has no echo to start from).
pub(crate) fn parse_stored(line: &str) -> Option<usize> {
    let at = line.find("Stored ")?;
    line[at..]
        .trim()
        .strip_prefix("Stored ")?
        .strip_suffix(" bytes.")?
        .parse()
        .ok()
}

/// `Added TLS credential of type <NAME>, sectag <n>, and length <len> bytes.` → (type,
/// sectag, len).
pub(crate) fn parse_added(line: &str) -> Option<(CredType, u32, usize)> {
    let rest = line.trim().strip_prefix("Added TLS credential of type ")?;
    let (name, rest) = rest.split_once(", sectag ")?;
    let (tag, rest) = rest.split_once(", and length ")?;
    let len = rest.strip_suffix(" bytes.")?;
    Some((
        CredType::parse(name)?,
        tag.parse::<i64>().ok()? as u32,
        len.parse().ok()?,
    ))
}

/// The device id in `hwinfo devid` output (`ID: 0x<hex>`, lowercase); any other identity
/// command: its first non-empty line, trimmed.
pub(crate) fn parse_identity(lines: &[String]) -> Option<String> {
    if let Some(hex) = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("ID: 0x").map(str::to_string))
    {
        return (!hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| hex.to_ascii_lowercase());
    }
    lines
        .iter()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Removes VT100 escape sequences (the shell colours errors, warnings and its prompt when
/// `CONFIG_SHELL_VT100_COLORS` is on) from `text`.
pub(crate) fn strip_vt100(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // ESC [ params final-byte (0x40..=0x7e); a lone ESC x is dropped with x.
        if chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('\x40'..='\x7e').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_follow_the_shell_table() {
        assert_eq!(CredType::parse("client_cert"), Some(CredType::Serv));
        assert_eq!(CredType::parse("PK"), Some(CredType::Pk));
        assert_eq!(CredType::parse("cert"), None);
        assert_eq!(
            (CredType::Serv.name(), CredType::Serv.compact()),
            ("SERVER_CERT", "SERV")
        );
        assert_eq!(
            (CredType::Ca.name(), CredType::Ca.compact()),
            ("CA_CERT", "CA")
        );
        assert_eq!(CredType::PkPsa.compact(), "PK_PSA");
        assert_eq!(CredType::of_slot(Slot::ThingName), None);
    }

    /// The reference's value for Amazon Root CA 1 is not reproduced here (no copy of it in the
    /// repository); the digest is checked on a value computed independently instead:
    /// SHA-256("abc\0") in base64.
    #[test]
    fn the_item_digest_covers_the_appended_nul() {
        let d = digest_of_item(b"abc");
        assert_eq!(d, digest_of_stored(b"abc\0"));
        assert_ne!(d, digest_of_stored(b"abc"));
        assert_eq!(d.len(), 44);
        assert!(d.ends_with('='));
    }

    #[test]
    fn list_lines_parse_with_their_digest_or_its_absence() {
        let e = parse_list_line("16842753,SERV,rulTIOcI1tf5AIcNWQjGWSQ+XPUlOZbw5GPW8Q/GgMA=,0")
            .unwrap();
        assert_eq!(
            (e.sectag, e.cred_type, e.status),
            (16842753, CredType::Serv, 0)
        );
        assert_eq!(
            e.digest.as_deref(),
            Some("rulTIOcI1tf5AIcNWQjGWSQ+XPUlOZbw5GPW8Q/GgMA=")
        );
        let e = parse_list_line("7,PK,ERROR,-134").unwrap();
        assert_eq!((e.digest, e.status), (None, -134));
        assert_eq!(parse_list_line("3 credentials found."), None);
        assert_eq!(parse_list_line("-1,CA,x,0").unwrap().sectag, u32::MAX);
    }

    #[test]
    fn confirmations_parse() {
        assert_eq!(parse_stored("Stored 48 bytes."), Some(48));
        assert_eq!(parse_stored("Stored 4 bytes"), None);
        assert_eq!(parse_stored("0mStored 91 bytes."), Some(91));
        assert_eq!(
            parse_added(
                "Added TLS credential of type PRIVATE_KEY, sectag 16842753, and length 242 bytes."
            ),
            Some((CredType::Pk, 16842753, 242))
        );
        assert_eq!(parse_added("Failed to add TLS credential"), None);
    }

    #[test]
    fn identity_is_the_hwinfo_id_or_the_first_line() {
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_identity(&lines(&["Length: 8", "ID: 0x0A1b2c3d4e5f6071"])).as_deref(),
            Some("0a1b2c3d4e5f6071")
        );
        assert_eq!(parse_identity(&lines(&["ID: 0xzz"])), None);
        assert_eq!(
            parse_identity(&lines(&["", "  SN-42 "])).as_deref(),
            Some("SN-42")
        );
        assert_eq!(parse_identity(&lines(&[])), None);
    }

    #[test]
    fn vt100_colours_are_stripped() {
        assert_eq!(strip_vt100("\x1b[1;32muart:~$ \x1b[m"), "uart:~$ ");
        assert_eq!(strip_vt100("\x1b[1;31merr\x1b[0m\r\n"), "err\r\n");
    }
}
