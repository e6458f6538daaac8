//! Jig protocol v1 vocabulary: command and response codes, slots, error codes, capability
//! flags, the parts of GEN_CSR and COMMIT payloads, and the digests. The messages themselves
//! are in `command.rs` and `response.rs`; framing is in `codec.rs`.
//!
//! Writing an identity: PUTs fill the board's staging area (the new slot values back to
//! back), COMMIT names the slots the staged bytes go to with their lengths and carries one
//! digest over them ([`commit_digest`]); the board answers with the same digest computed from
//! its flash after the commit, which is the read-back verification.

use std::fmt;

/// The protocol version this code speaks (HELLO carries it both ways).
pub(crate) const PROTOCOL_VERSION: u8 = 1;

/// Command codes (station → board).
pub(crate) mod cmd {
    pub(crate) const HELLO: u8 = 0x01;
    pub(crate) const GEN_CSR: u8 = 0x02;
    pub(crate) const PUT: u8 = 0x03;
    pub(crate) const COMMIT: u8 = 0x04;
    pub(crate) const HASH: u8 = 0x05;
    pub(crate) const READ: u8 = 0x06;
    pub(crate) const ERASE: u8 = 0x07;
    pub(crate) const RESET: u8 = 0x08;
}

/// Response codes (board → station): `command | 0x80` acknowledges, `NAK` refuses.
pub(crate) mod rsp {
    pub(crate) const HELLO_ACK: u8 = 0x81;
    pub(crate) const CSR: u8 = 0x82;
    pub(crate) const PUT_ACK: u8 = 0x83;
    pub(crate) const COMMIT_ACK: u8 = 0x84;
    pub(crate) const HASH_ACK: u8 = 0x85;
    pub(crate) const READ_ACK: u8 = 0x86;
    pub(crate) const ERASE_ACK: u8 = 0x87;
    pub(crate) const RESET_ACK: u8 = 0x88;
    pub(crate) const NAK: u8 = 0xFF;
}

/// Human name of a command code, for logs and errors.
pub(crate) fn command_name(code: u8) -> &'static str {
    match code {
        cmd::HELLO => "HELLO",
        cmd::GEN_CSR => "GEN_CSR",
        cmd::PUT => "PUT",
        cmd::COMMIT => "COMMIT",
        cmd::HASH => "HASH",
        cmd::READ => "READ",
        cmd::ERASE => "ERASE",
        cmd::RESET => "RESET",
        _ => "unknown command",
    }
}

/// SHA-256 digest length.
pub(crate) const SHA256_LEN: usize = 32;
/// Length of the digest COMMIT and COMMIT_ACK carry ([`commit_digest`]): the first 128 bits
/// of a SHA-256. It guards against frames lost or garbled on a local serial cable (each frame
/// also has a CRC-32) and against a flash that does not hold what was written, where 2⁻¹²⁸ is
/// as good as 2⁻²⁵⁶; the 16 bytes it saves in each direction are on every write's critical
/// path (1.7 % of the line for a typical identity). HASH keeps the full SHA-256.
pub const DIGEST_LEN: usize = 16;
/// Bytes a board's staging area holds: every slot's capacity, back to back.
pub(crate) const STAGING_CAPACITY: usize = 4096 * 3 + 8192 + 128;
/// Slots one HASH may name.
pub(crate) const MAX_HASH_SLOTS: usize = 5;
/// Longest NAK text a board sends (longer text is truncated by the encoder).
pub(crate) const MAX_NAK_TEXT: usize = 64;

/// A persistent storage slot on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// Device certificate, PEM. Capacity 4096 bytes.
    Certificate = 1,
    /// Device private key, PEM (PKCS#8 or SEC1). Capacity 4096 bytes. Never readable.
    PrivateKey = 2,
    /// Root CA certificate(s), PEM. Capacity 4096 bytes.
    RootCa = 3,
    /// Device configuration (JSON, firmware-defined). Capacity 8192 bytes.
    DeviceConfig = 4,
    /// AWS IoT thing name, UTF-8. Capacity 128 bytes.
    ThingName = 5,
}

impl Slot {
    pub(crate) const ALL: [Slot; 5] = [
        Slot::Certificate,
        Slot::PrivateKey,
        Slot::RootCa,
        Slot::DeviceConfig,
        Slot::ThingName,
    ];

    pub(crate) fn from_u8(v: u8) -> Option<Slot> {
        Slot::ALL.into_iter().find(|s| *s as u8 == v)
    }

    /// The largest content the slot holds, in bytes.
    pub(crate) const fn capacity(self) -> usize {
        match self {
            Slot::Certificate | Slot::PrivateKey | Slot::RootCa => 4096,
            Slot::DeviceConfig => 8192,
            Slot::ThingName => 128,
        }
    }

    /// Index 0..5, for arrays indexed by slot.
    pub(crate) const fn index(self) -> usize {
        self as usize - 1
    }

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Slot::Certificate => "certificate",
            Slot::PrivateKey => "private_key",
            Slot::RootCa => "root_ca",
            Slot::DeviceConfig => "device_config",
            Slot::ThingName => "thing_name",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// NAK error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0x01: the frame's CRC did not match; retransmit it.
    BadCrc,
    /// 0x02: the frame decoded but its payload is malformed for its command.
    BadFrame,
    /// 0x03: the command code is not known.
    UnknownCommand,
    /// 0x04: the slot number is not one of 1..=5.
    BadSlot,
    /// 0x05: offset/length outside the slot's capacity or content, or a READ longer than
    /// `max_chunk`.
    OutOfRange,
    /// 0x06: COMMIT: the staged bytes do not have the announced digest (a PUT was lost or
    /// garbled); detail 0.
    HashMismatch,
    /// 0x07: the board cannot take the command now; retransmit later.
    Busy,
    /// 0x08: the board refuses to commit (policy, e.g. write-protected); detail = slot or 0.
    CommitRefused,
    /// 0x09: the slot may not be read (the private key is never readable).
    AccessDenied,
    /// 0x0A: COMMIT names a slot with nothing staged (e.g. a board-generated key without a
    /// prior GEN_CSR).
    NothingStaged,
    /// 0x0B: a requested option (key type, CSR format) is not supported.
    Unsupported,
    /// 0x0C: the board failed to write its flash; the previous content is intact.
    FlashError,
    /// 0x0D: the board has (re)booted since the last HELLO: staged data is gone. Send HELLO.
    NeedHello,
    /// 0x0E: the station's protocol version is not supported.
    Version,
    /// 0x0F: COMMIT names more staged bytes than the staging area holds (a PUT was lost);
    /// detail = the first slot whose bytes are missing. Resend the missing PUTs, commit again.
    Incomplete,
    /// Any other code (from a newer board).
    Other(u8),
}

impl ErrorCode {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            ErrorCode::BadCrc => 0x01,
            ErrorCode::BadFrame => 0x02,
            ErrorCode::UnknownCommand => 0x03,
            ErrorCode::BadSlot => 0x04,
            ErrorCode::OutOfRange => 0x05,
            ErrorCode::HashMismatch => 0x06,
            ErrorCode::Busy => 0x07,
            ErrorCode::CommitRefused => 0x08,
            ErrorCode::AccessDenied => 0x09,
            ErrorCode::NothingStaged => 0x0A,
            ErrorCode::Unsupported => 0x0B,
            ErrorCode::FlashError => 0x0C,
            ErrorCode::NeedHello => 0x0D,
            ErrorCode::Version => 0x0E,
            ErrorCode::Incomplete => 0x0F,
            ErrorCode::Other(v) => v,
        }
    }

    pub(crate) fn from_u8(v: u8) -> ErrorCode {
        match v {
            0x01 => ErrorCode::BadCrc,
            0x02 => ErrorCode::BadFrame,
            0x03 => ErrorCode::UnknownCommand,
            0x04 => ErrorCode::BadSlot,
            0x05 => ErrorCode::OutOfRange,
            0x06 => ErrorCode::HashMismatch,
            0x07 => ErrorCode::Busy,
            0x08 => ErrorCode::CommitRefused,
            0x09 => ErrorCode::AccessDenied,
            0x0A => ErrorCode::NothingStaged,
            0x0B => ErrorCode::Unsupported,
            0x0C => ErrorCode::FlashError,
            0x0D => ErrorCode::NeedHello,
            0x0E => ErrorCode::Version,
            0x0F => ErrorCode::Incomplete,
            other => ErrorCode::Other(other),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            ErrorCode::BadCrc => "BAD_CRC",
            ErrorCode::BadFrame => "BAD_FRAME",
            ErrorCode::UnknownCommand => "UNKNOWN_COMMAND",
            ErrorCode::BadSlot => "BAD_SLOT",
            ErrorCode::OutOfRange => "OUT_OF_RANGE",
            ErrorCode::HashMismatch => "HASH_MISMATCH",
            ErrorCode::Busy => "BUSY",
            ErrorCode::CommitRefused => "COMMIT_REFUSED",
            ErrorCode::AccessDenied => "ACCESS_DENIED",
            ErrorCode::NothingStaged => "NOTHING_STAGED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::FlashError => "FLASH_ERROR",
            ErrorCode::NeedHello => "NEED_HELLO",
            ErrorCode::Version => "VERSION",
            ErrorCode::Incomplete => "INCOMPLETE",
            ErrorCode::Other(_) => "UNKNOWN_ERROR",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Other(v) => write!(f, "error {v:#04x}"),
            known => f.write_str(known.name()),
        }
    }
}

/// HELLO_ACK capability flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities(pub u8);

impl Capabilities {
    /// The board can make a key pair and a CSR itself (GEN_CSR).
    pub(crate) const GEN_CSR: u8 = 0x01;
    /// An identity is committed: certificate, private key and thing name are all live.
    pub(crate) const IDENTITY: u8 = 0x02;
    /// A board-generated key is staged (GEN_CSR done, not yet committed).
    pub(crate) const STAGED_KEY: u8 = 0x04;

    pub(crate) fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }
}

/// What is asked to go into a CSR's subject. Empty fields are left out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CsrSubject {
    pub common_name: String,
    pub organization: String,
    pub organizational_unit: String,
    pub country: String,
    pub serial_number: String,
}

/// Subject attribute identifiers used in GEN_CSR.
pub(crate) mod attr {
    pub(crate) const COMMON_NAME: u8 = 1;
    pub(crate) const ORGANIZATION: u8 = 2;
    pub(crate) const ORGANIZATIONAL_UNIT: u8 = 3;
    pub(crate) const COUNTRY: u8 = 4;
    pub(crate) const SERIAL_NUMBER: u8 = 5;
}

/// Key types for GEN_CSR.
pub(crate) const KEY_TYPE_P256: u8 = 1;

/// CSR encodings for GEN_CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrFormat {
    Der = 0,
    Pem = 1,
}

impl CsrFormat {
    pub(crate) fn from_u8(v: u8) -> Option<CsrFormat> {
        match v {
            0 => Some(CsrFormat::Der),
            1 => Some(CsrFormat::Pem),
            _ => None,
        }
    }
}

/// Where COMMIT takes a slot's new content from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitSource {
    /// The next `len` bytes of the staging area (staged entries take consecutive bytes, in
    /// the order COMMIT lists them, from offset 0).
    Staged,
    /// The key the board generated in GEN_CSR (private-key slot only; `len` is zero).
    BoardKey,
}

/// One slot in a COMMIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitEntry {
    pub slot: Slot,
    pub source: CommitSource,
    /// Bytes this slot takes from the staging area (0 for a board key).
    pub len: u16,
}

/// Length and SHA-256 of one live slot (a HASH_ACK entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotHash {
    pub slot: Slot,
    pub len: u32,
    pub sha256: [u8; SHA256_LEN],
}

/// Subject attributes as carried in a GEN_CSR (borrowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectAttrs<'a> {
    pub attrs: Vec<(u8, &'a str)>,
}

/// SHA-256 of `data` (ring).
pub(crate) fn sha256(data: &[u8]) -> [u8; SHA256_LEN] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; SHA256_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// The COMMIT digest: the first [`DIGEST_LEN`] bytes of the SHA-256 over
/// `slot:u8 ‖ len:u32le ‖ content` of each staged slot, in the order COMMIT lists them. A
/// board-generated key is not part of it (the station never sees it).
pub fn commit_digest<'a>(slots: impl IntoIterator<Item = (Slot, &'a [u8])>) -> [u8; DIGEST_LEN] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (slot, data) in slots {
        ctx.update(&[slot as u8]);
        ctx.update(&(data.len() as u32).to_le_bytes());
        ctx.update(data);
    }
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(&ctx.finish().as_ref()[..DIGEST_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_digest_covers_slot_length_and_content_in_order() {
        let a = commit_digest([(Slot::Certificate, &b"ab"[..]), (Slot::ThingName, b"c")]);
        // Same bytes moved across the slot boundary: a different digest.
        let b = commit_digest([(Slot::Certificate, &b"a"[..]), (Slot::ThingName, b"bc")]);
        // Same content, other order: a different digest.
        let c = commit_digest([(Slot::ThingName, &b"c"[..]), (Slot::Certificate, b"ab")]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        let mut manual = vec![1u8, 2, 0, 0, 0];
        manual.extend_from_slice(b"ab");
        manual.extend_from_slice(&[5, 1, 0, 0, 0]);
        manual.extend_from_slice(b"c");
        assert_eq!(a[..], sha256(&manual)[..DIGEST_LEN]);
        assert_eq!(commit_digest([])[..], sha256(b"")[..DIGEST_LEN]);
    }

    #[test]
    fn error_codes_and_slots_map_both_ways() {
        for v in 0..=255u8 {
            assert_eq!(ErrorCode::from_u8(v).to_u8(), v);
            if let Some(s) = Slot::from_u8(v) {
                assert_eq!(s as u8, v);
            }
        }
        assert_eq!(Slot::from_u8(0), None);
        assert_eq!(Slot::from_u8(6), None);
    }
}
