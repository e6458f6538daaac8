//! Jig protocol v1 messages: command and response codes, slots, error codes, and the byte
//! layout of every payload (encode and decode). Framing lives in `codec.rs`.
//!
//! All integers are little-endian. A `str8` is a `u8` length followed by that many UTF-8
//! bytes. Decoding borrows from the frame, so parsing a PUT copies no data.
//!
//! Writing an identity: PUTs fill the board's staging area (the new slot values back to
//! back), COMMIT names the slots the staged bytes go to with their lengths and carries one
//! digest over them ([`commit_digest`]); the board answers with the same digest computed from
//! its flash after the commit, which is the read-back verification.

use std::fmt;

use super::codec::{self, CodecError, Frame};

/// The protocol version this code speaks (HELLO carries it both ways).
pub const PROTOCOL_VERSION: u8 = 1;

/// Command codes (station → board).
pub mod cmd {
    pub const HELLO: u8 = 0x01;
    pub const GEN_CSR: u8 = 0x02;
    pub const PUT: u8 = 0x03;
    pub const COMMIT: u8 = 0x04;
    pub const HASH: u8 = 0x05;
    pub const READ: u8 = 0x06;
    pub const ERASE: u8 = 0x07;
    pub const RESET: u8 = 0x08;
}

/// Response codes (board → station): `command | 0x80` acknowledges, `NAK` refuses.
pub mod rsp {
    pub const HELLO_ACK: u8 = 0x81;
    pub const CSR: u8 = 0x82;
    pub const PUT_ACK: u8 = 0x83;
    pub const COMMIT_ACK: u8 = 0x84;
    pub const HASH_ACK: u8 = 0x85;
    pub const READ_ACK: u8 = 0x86;
    pub const ERASE_ACK: u8 = 0x87;
    pub const RESET_ACK: u8 = 0x88;
    pub const NAK: u8 = 0xFF;
}

/// Human name of a command code, for logs and errors.
pub fn command_name(code: u8) -> &'static str {
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
pub const SHA256_LEN: usize = 32;
/// Length of the digest COMMIT and COMMIT_ACK carry ([`commit_digest`]): the first 128 bits
/// of a SHA-256. It guards against frames lost or garbled on a local serial cable (each frame
/// also has a CRC-32) and against a flash that does not hold what was written, where 2⁻¹²⁸ is
/// as good as 2⁻²⁵⁶; the 16 bytes it saves in each direction are on every write's critical
/// path (1.7 % of the line for a typical identity). HASH keeps the full SHA-256.
pub const DIGEST_LEN: usize = 16;
/// Bytes a board's staging area holds: every slot's capacity, back to back.
pub const STAGING_CAPACITY: usize = 4096 * 3 + 8192 + 128;
/// Slots one HASH may name.
pub const MAX_HASH_SLOTS: usize = 5;
/// Longest NAK text a board sends (longer text is truncated by the encoder).
pub const MAX_NAK_TEXT: usize = 64;

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
    pub const ALL: [Slot; 5] = [
        Slot::Certificate,
        Slot::PrivateKey,
        Slot::RootCa,
        Slot::DeviceConfig,
        Slot::ThingName,
    ];

    pub fn from_u8(v: u8) -> Option<Slot> {
        Slot::ALL.into_iter().find(|s| *s as u8 == v)
    }

    /// The largest content the slot holds, in bytes.
    pub const fn capacity(self) -> usize {
        match self {
            Slot::Certificate | Slot::PrivateKey | Slot::RootCa => 4096,
            Slot::DeviceConfig => 8192,
            Slot::ThingName => 128,
        }
    }

    /// Index 0..5, for arrays indexed by slot.
    pub const fn index(self) -> usize {
        self as usize - 1
    }

    pub const fn name(self) -> &'static str {
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
    pub fn to_u8(self) -> u8 {
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

    pub fn from_u8(v: u8) -> ErrorCode {
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

    pub fn name(self) -> &'static str {
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
    pub const GEN_CSR: u8 = 0x01;
    /// An identity is committed: certificate, private key and thing name are all live.
    pub const IDENTITY: u8 = 0x02;
    /// A board-generated key is staged (GEN_CSR done, not yet committed).
    pub const STAGED_KEY: u8 = 0x04;

    pub fn has(self, flag: u8) -> bool {
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
pub mod attr {
    pub const COMMON_NAME: u8 = 1;
    pub const ORGANIZATION: u8 = 2;
    pub const ORGANIZATIONAL_UNIT: u8 = 3;
    pub const COUNTRY: u8 = 4;
    pub const SERIAL_NUMBER: u8 = 5;
}

/// Key types for GEN_CSR.
pub const KEY_TYPE_P256: u8 = 1;

/// CSR encodings for GEN_CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrFormat {
    Der = 0,
    Pem = 1,
}

impl CsrFormat {
    fn from_u8(v: u8) -> Option<CsrFormat> {
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

/// A station → board command. Slices borrow the frame (decode) or the caller (encode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Hello {
        version: u8,
    },
    GenCsr {
        key_type: u8,
        format: CsrFormat,
        subject: SubjectAttrs<'a>,
    },
    /// Writes `data` into the staging area at `offset`.
    Put {
        offset: u32,
        data: &'a [u8],
    },
    /// Makes the listed slots live; `digest` is [`commit_digest`] over the staged entries.
    Commit {
        entries: Vec<CommitEntry>,
        digest: [u8; DIGEST_LEN],
    },
    /// Length and SHA-256 of 1 to [`MAX_HASH_SLOTS`] live slots.
    Hash {
        slots: Vec<Slot>,
    },
    Read {
        slot: Slot,
        offset: u32,
        len: u16,
    },
    Erase {
        slots: Vec<Slot>,
    },
    Reset,
}

/// The HELLO_ACK payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloAck<'a> {
    pub version: u8,
    pub capabilities: Capabilities,
    /// Largest PUT data / READ length the board accepts.
    pub max_chunk: u16,
    /// Bytes the board can buffer from the line: the station keeps at most this many wire
    /// bytes of unacknowledged frames in flight.
    pub rx_buffer: u16,
    pub mac: [u8; 6],
    pub serial: &'a str,
    pub hw_rev: &'a str,
    pub fw_version: &'a str,
    /// Empty when no identity is committed.
    pub thing_name: &'a str,
}

/// A board → station response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    HelloAck(HelloAck<'a>),
    Csr {
        format: CsrFormat,
        csr: &'a [u8],
    },
    PutAck {
        offset: u32,
        len: u16,
    },
    CommitAck {
        count: u8,
        generation: u32,
        /// [`commit_digest`] over the committed staged slots, read back from flash.
        digest: [u8; DIGEST_LEN],
    },
    /// One entry per slot asked, in the order asked.
    HashAck {
        entries: Vec<SlotHash>,
    },
    ReadAck {
        slot: Slot,
        offset: u32,
        data: &'a [u8],
    },
    EraseAck {
        count: u8,
    },
    ResetAck,
    Nak {
        code: ErrorCode,
        /// The slot concerned, or 0.
        detail: u8,
        /// The command code being refused (as received).
        command: u8,
        text: &'a str,
    },
}

/// Why a payload could not be parsed (the frame itself was fine).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("unknown code {0:#04x}")]
    UnknownCode(u8),
    #[error("payload truncated")]
    Truncated,
    #[error("{0} trailing bytes after the payload")]
    Trailing(usize),
    #[error("bad slot number {0}")]
    BadSlot(u8),
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("field out of range: {0}")]
    Invalid(&'static str),
}

impl PayloadError {
    /// The NAK code a board answers this parse failure with.
    pub fn nak_code(&self) -> ErrorCode {
        match self {
            PayloadError::UnknownCode(_) => ErrorCode::UnknownCommand,
            PayloadError::BadSlot(_) => ErrorCode::BadSlot,
            PayloadError::Invalid(_) => ErrorCode::Unsupported,
            _ => ErrorCode::BadFrame,
        }
    }
}

/// A bounds-checked little-endian reader over a payload.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], PayloadError> {
        if self.buf.len() < n {
            return Err(PayloadError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, PayloadError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PayloadError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PayloadError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], PayloadError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn slot(&mut self) -> Result<Slot, PayloadError> {
        let v = self.u8()?;
        Slot::from_u8(v).ok_or(PayloadError::BadSlot(v))
    }
    fn str8(&mut self) -> Result<&'a str, PayloadError> {
        let n = self.u8()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| PayloadError::NotUtf8)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn end(self) -> Result<(), PayloadError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(PayloadError::Trailing(self.buf.len()))
        }
    }
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    // Truncate at a char boundary to fit the u8 length.
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

impl<'a> Command<'a> {
    pub fn code(&self) -> u8 {
        match self {
            Command::Hello { .. } => cmd::HELLO,
            Command::GenCsr { .. } => cmd::GEN_CSR,
            Command::Put { .. } => cmd::PUT,
            Command::Commit { .. } => cmd::COMMIT,
            Command::Hash { .. } => cmd::HASH,
            Command::Read { .. } => cmd::READ,
            Command::Erase { .. } => cmd::ERASE,
            Command::Reset => cmd::RESET,
        }
    }

    /// Writes the payload: the fixed part into `head` (cleared first); returns the bulk part
    /// (PUT data) to be framed after it without copying.
    pub fn write_payload(&self, head: &mut Vec<u8>) -> &'a [u8] {
        head.clear();
        match self {
            Command::Hello { version } => head.push(*version),
            Command::GenCsr {
                key_type,
                format,
                subject,
            } => {
                head.extend_from_slice(&[*key_type, *format as u8, subject.attrs.len() as u8]);
                for (id, value) in &subject.attrs {
                    head.push(*id);
                    put_str8(head, value);
                }
            }
            Command::Put { offset, data } => {
                head.extend_from_slice(&offset.to_le_bytes());
                return data;
            }
            Command::Commit { entries, digest } => {
                head.push(entries.len() as u8);
                for e in entries {
                    head.push(e.slot as u8);
                    head.push(match e.source {
                        CommitSource::Staged => 0,
                        CommitSource::BoardKey => 1,
                    });
                    head.extend_from_slice(&e.len.to_le_bytes());
                }
                head.extend_from_slice(digest);
            }
            Command::Hash { slots } => head.extend(slots.iter().map(|s| *s as u8)),
            Command::Read { slot, offset, len } => {
                head.push(*slot as u8);
                head.extend_from_slice(&offset.to_le_bytes());
                head.extend_from_slice(&len.to_le_bytes());
            }
            Command::Erase { slots } => {
                head.push(slots.len() as u8);
                head.extend(slots.iter().map(|s| *s as u8));
            }
            Command::Reset => {}
        }
        &[]
    }

    /// Encodes the whole frame onto `out`, using `head` as scratch. Returns wire bytes added.
    pub fn encode(
        &self,
        seq: u16,
        head: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<usize, CodecError> {
        let tail = self.write_payload(head);
        codec::encode_frame(self.code(), seq, head, tail, out)
    }

    /// Parses a command from a decoded frame.
    pub fn decode(frame: &Frame<'a>) -> Result<Command<'a>, PayloadError> {
        let mut r = Reader::new(frame.payload);
        let command = match frame.code {
            cmd::HELLO => Command::Hello { version: r.u8()? },
            cmd::GEN_CSR => {
                let key_type = r.u8()?;
                let format =
                    CsrFormat::from_u8(r.u8()?).ok_or(PayloadError::Invalid("CSR format"))?;
                let n = r.u8()? as usize;
                let mut attrs = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.u8()?;
                    attrs.push((id, r.str8()?));
                }
                Command::GenCsr {
                    key_type,
                    format,
                    subject: SubjectAttrs { attrs },
                }
            }
            cmd::PUT => {
                let offset = r.u32()?;
                let data = r.rest();
                if data.is_empty() {
                    return Err(PayloadError::Truncated);
                }
                Command::Put { offset, data }
            }
            cmd::COMMIT => {
                let n = r.u8()? as usize;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let slot = r.slot()?;
                    let source = match r.u8()? {
                        0 => CommitSource::Staged,
                        1 => CommitSource::BoardKey,
                        _ => return Err(PayloadError::Invalid("commit source")),
                    };
                    let len = r.u16()?;
                    entries.push(CommitEntry { slot, source, len });
                }
                Command::Commit {
                    entries,
                    digest: r.array()?,
                }
            }
            cmd::HASH => {
                let n = r.remaining();
                if n == 0 {
                    return Err(PayloadError::Truncated);
                }
                if n > MAX_HASH_SLOTS {
                    return Err(PayloadError::Trailing(n - MAX_HASH_SLOTS));
                }
                let mut slots = Vec::with_capacity(n);
                for _ in 0..n {
                    slots.push(r.slot()?);
                }
                Command::Hash { slots }
            }
            cmd::READ => Command::Read {
                slot: r.slot()?,
                offset: r.u32()?,
                len: r.u16()?,
            },
            cmd::ERASE => {
                let n = r.u8()? as usize;
                let mut slots = Vec::with_capacity(n);
                for _ in 0..n {
                    slots.push(r.slot()?);
                }
                Command::Erase { slots }
            }
            cmd::RESET => Command::Reset,
            other => return Err(PayloadError::UnknownCode(other)),
        };
        r.end()?;
        Ok(command)
    }
}

impl<'a> Response<'a> {
    pub fn code(&self) -> u8 {
        match self {
            Response::HelloAck(_) => rsp::HELLO_ACK,
            Response::Csr { .. } => rsp::CSR,
            Response::PutAck { .. } => rsp::PUT_ACK,
            Response::CommitAck { .. } => rsp::COMMIT_ACK,
            Response::HashAck { .. } => rsp::HASH_ACK,
            Response::ReadAck { .. } => rsp::READ_ACK,
            Response::EraseAck { .. } => rsp::ERASE_ACK,
            Response::ResetAck => rsp::RESET_ACK,
            Response::Nak { .. } => rsp::NAK,
        }
    }

    /// Writes the payload: fixed part into `head` (cleared first), bulk part returned.
    pub fn write_payload(&self, head: &mut Vec<u8>) -> &'a [u8] {
        head.clear();
        match self {
            Response::HelloAck(h) => {
                head.extend_from_slice(&[h.version, h.capabilities.0]);
                head.extend_from_slice(&h.max_chunk.to_le_bytes());
                head.extend_from_slice(&h.rx_buffer.to_le_bytes());
                head.extend_from_slice(&h.mac);
                put_str8(head, h.serial);
                put_str8(head, h.hw_rev);
                put_str8(head, h.fw_version);
                put_str8(head, h.thing_name);
            }
            Response::Csr { format, csr } => {
                head.push(*format as u8);
                return csr;
            }
            Response::PutAck { offset, len } => {
                head.extend_from_slice(&offset.to_le_bytes());
                head.extend_from_slice(&len.to_le_bytes());
            }
            Response::CommitAck {
                count,
                generation,
                digest,
            } => {
                head.push(*count);
                head.extend_from_slice(&generation.to_le_bytes());
                head.extend_from_slice(digest);
            }
            Response::HashAck { entries } => {
                for e in entries {
                    head.push(e.slot as u8);
                    head.extend_from_slice(&e.len.to_le_bytes());
                    head.extend_from_slice(&e.sha256);
                }
            }
            Response::ReadAck { slot, offset, data } => {
                head.push(*slot as u8);
                head.extend_from_slice(&offset.to_le_bytes());
                return data;
            }
            Response::EraseAck { count } => head.push(*count),
            Response::ResetAck => {}
            Response::Nak {
                code,
                detail,
                command,
                text,
            } => {
                head.extend_from_slice(&[code.to_u8(), *detail, *command]);
                let mut end = text.len().min(MAX_NAK_TEXT);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                head.extend_from_slice(&text.as_bytes()[..end]);
            }
        }
        &[]
    }

    /// Encodes the whole frame onto `out`, using `head` as scratch. Returns wire bytes added.
    pub fn encode(
        &self,
        seq: u16,
        head: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<usize, CodecError> {
        let tail = self.write_payload(head);
        codec::encode_frame(self.code(), seq, head, tail, out)
    }

    /// Parses a response from a decoded frame.
    pub fn decode(frame: &Frame<'a>) -> Result<Response<'a>, PayloadError> {
        let mut r = Reader::new(frame.payload);
        let response = match frame.code {
            rsp::HELLO_ACK => Response::HelloAck(HelloAck {
                version: r.u8()?,
                capabilities: Capabilities(r.u8()?),
                max_chunk: r.u16()?,
                rx_buffer: r.u16()?,
                mac: r.array()?,
                serial: r.str8()?,
                hw_rev: r.str8()?,
                fw_version: r.str8()?,
                thing_name: r.str8()?,
            }),
            rsp::CSR => Response::Csr {
                format: CsrFormat::from_u8(r.u8()?).ok_or(PayloadError::Invalid("CSR format"))?,
                csr: r.rest(),
            },
            rsp::PUT_ACK => Response::PutAck {
                offset: r.u32()?,
                len: r.u16()?,
            },
            rsp::COMMIT_ACK => Response::CommitAck {
                count: r.u8()?,
                generation: r.u32()?,
                digest: r.array()?,
            },
            rsp::HASH_ACK => {
                let mut entries = Vec::with_capacity(1);
                loop {
                    entries.push(SlotHash {
                        slot: r.slot()?,
                        len: r.u32()?,
                        sha256: r.array()?,
                    });
                    if r.remaining() == 0 || entries.len() == MAX_HASH_SLOTS {
                        break;
                    }
                }
                Response::HashAck { entries }
            }
            rsp::READ_ACK => Response::ReadAck {
                slot: r.slot()?,
                offset: r.u32()?,
                data: r.rest(),
            },
            rsp::ERASE_ACK => Response::EraseAck { count: r.u8()? },
            rsp::RESET_ACK => Response::ResetAck,
            rsp::NAK => {
                let code = ErrorCode::from_u8(r.u8()?);
                let detail = r.u8()?;
                let command = r.u8()?;
                let text = std::str::from_utf8(r.rest()).map_err(|_| PayloadError::NotUtf8)?;
                Response::Nak {
                    code,
                    detail,
                    command,
                    text,
                }
            }
            other => return Err(PayloadError::UnknownCode(other)),
        };
        r.end()?;
        Ok(response)
    }
}

/// SHA-256 of `data` (ring).
pub fn sha256(data: &[u8]) -> [u8; SHA256_LEN] {
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
    use crate::jig::wire::codec::FrameAssembler;

    fn decode_one(wire: &[u8]) -> (u8, u16, Vec<u8>) {
        let mut asm = FrameAssembler::new();
        let (used, ev) = asm.push(wire);
        assert_eq!(used, wire.len());
        let f = ev.expect("a frame").expect("valid");
        (f.code, f.seq, f.payload.to_vec())
    }

    fn frame_of(code: u8, seq: u16, payload: &[u8]) -> Frame<'_> {
        Frame {
            code,
            seq,
            payload,
            crc: 0,
        }
    }

    pub(crate) fn all_commands() -> Vec<Command<'static>> {
        vec![
            Command::Hello { version: 1 },
            Command::GenCsr {
                key_type: KEY_TYPE_P256,
                format: CsrFormat::Pem,
                subject: SubjectAttrs {
                    attrs: vec![
                        (attr::COMMON_NAME, "dev-0001"),
                        (attr::ORGANIZATION, "Acme é"),
                    ],
                },
            },
            Command::Put {
                offset: 1024,
                data: b"-----BEGIN\0CERT",
            },
            Command::Commit {
                entries: vec![
                    CommitEntry {
                        slot: Slot::Certificate,
                        source: CommitSource::Staged,
                        len: 1234,
                    },
                    CommitEntry {
                        slot: Slot::PrivateKey,
                        source: CommitSource::BoardKey,
                        len: 0,
                    },
                ],
                digest: [7; DIGEST_LEN],
            },
            Command::Hash {
                slots: vec![Slot::ThingName],
            },
            Command::Hash {
                slots: Slot::ALL.to_vec(),
            },
            Command::Read {
                slot: Slot::RootCa,
                offset: 70000,
                len: 512,
            },
            Command::Erase {
                slots: vec![Slot::DeviceConfig, Slot::PrivateKey],
            },
            Command::Reset,
        ]
    }

    fn all_responses() -> Vec<Response<'static>> {
        vec![
            Response::HelloAck(HelloAck {
                version: 1,
                capabilities: Capabilities(Capabilities::GEN_CSR | Capabilities::IDENTITY),
                max_chunk: 1024,
                rx_buffer: 4096,
                mac: [2, 0, 0, 0, 0, 1],
                serial: "VB-000001",
                hw_rev: "C",
                fw_version: "1.2.3",
                thing_name: "thing-1",
            }),
            Response::Csr {
                format: CsrFormat::Der,
                csr: &[0x30, 0x82, 0x00, 0x01],
            },
            Response::PutAck {
                offset: 4096,
                len: 1024,
            },
            Response::CommitAck {
                count: 5,
                generation: 9,
                digest: [0xCD; DIGEST_LEN],
            },
            Response::HashAck {
                entries: vec![SlotHash {
                    slot: Slot::Certificate,
                    len: 1,
                    sha256: [0xAB; 32],
                }],
            },
            Response::HashAck {
                entries: Slot::ALL
                    .iter()
                    .map(|&slot| SlotHash {
                        slot,
                        len: slot as u32,
                        sha256: [slot as u8; 32],
                    })
                    .collect(),
            },
            Response::ReadAck {
                slot: Slot::Certificate,
                offset: 0,
                data: b"abc\0",
            },
            Response::EraseAck { count: 2 },
            Response::ResetAck,
            Response::Nak {
                code: ErrorCode::HashMismatch,
                detail: 1,
                command: cmd::COMMIT,
                text: "certificate sha256 differs",
            },
            Response::Nak {
                code: ErrorCode::Other(0x42),
                detail: 0,
                command: 0x99,
                text: "",
            },
        ]
    }

    #[test]
    fn every_command_round_trips() {
        let (mut head, mut wire) = (Vec::new(), Vec::new());
        for (i, c) in all_commands().into_iter().enumerate() {
            wire.clear();
            c.encode(i as u16 * 1000, &mut head, &mut wire).unwrap();
            let (code, seq, payload) = decode_one(&wire);
            assert_eq!(seq, i as u16 * 1000);
            let back = Command::decode(&frame_of(code, seq, &payload)).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn every_response_round_trips() {
        let (mut head, mut wire) = (Vec::new(), Vec::new());
        for (i, r) in all_responses().into_iter().enumerate() {
            wire.clear();
            r.encode(i as u16, &mut head, &mut wire).unwrap();
            let (code, seq, payload) = decode_one(&wire);
            let back = Response::decode(&frame_of(code, seq, &payload)).unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let cases: Vec<(u8, Vec<u8>, PayloadError)> = vec![
            (0x42, vec![], PayloadError::UnknownCode(0x42)),
            (cmd::HELLO, vec![], PayloadError::Truncated),
            (cmd::HELLO, vec![1, 2], PayloadError::Trailing(1)),
            (cmd::PUT, vec![0, 0, 0, 0], PayloadError::Truncated),
            (cmd::PUT, vec![0, 0, 0], PayloadError::Truncated),
            (cmd::HASH, vec![], PayloadError::Truncated),
            (cmd::HASH, vec![1, 9], PayloadError::BadSlot(9)),
            (
                cmd::HASH,
                vec![1, 2, 3, 4, 5, 1, 2],
                PayloadError::Trailing(2),
            ),
            (cmd::READ, vec![1, 0, 0], PayloadError::Truncated),
            (
                cmd::GEN_CSR,
                vec![1, 1, 1, 1, 2, 0xFF, 0xFE],
                PayloadError::NotUtf8,
            ),
            (
                cmd::GEN_CSR,
                vec![1, 7, 0],
                PayloadError::Invalid("CSR format"),
            ),
            (cmd::COMMIT, vec![1, 1, 0, 0], PayloadError::Truncated),
            // One entry, then a digest one byte short.
            (
                cmd::COMMIT,
                [&[1u8, 1, 0, 5, 0][..], &[0; DIGEST_LEN - 1]].concat(),
                PayloadError::Truncated,
            ),
            (
                cmd::COMMIT,
                [&[1u8, 1, 2, 5, 0][..], &[0; DIGEST_LEN]].concat(),
                PayloadError::Invalid("commit source"),
            ),
            (cmd::ERASE, vec![2, 1], PayloadError::Truncated),
        ];
        for (code, payload, want) in cases {
            let got = Command::decode(&frame_of(code, 0, &payload));
            assert_eq!(got, Err(want.clone()), "code {code:#x} payload {payload:?}");
        }
        assert_eq!(
            Response::decode(&frame_of(rsp::HASH_ACK, 0, &[1, 0, 0, 0, 0])),
            Err(PayloadError::Truncated)
        );
        // A second HASH_ACK entry cut short.
        let mut two = vec![1u8, 0, 0, 0, 0];
        two.extend_from_slice(&[0; 32]);
        two.extend_from_slice(&[2, 0, 0]);
        assert_eq!(
            Response::decode(&frame_of(rsp::HASH_ACK, 0, &two)),
            Err(PayloadError::Truncated)
        );
        assert_eq!(
            Response::decode(&frame_of(rsp::NAK, 0, &[1, 0, 1, 0xC3])),
            Err(PayloadError::NotUtf8)
        );
    }

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

    #[test]
    fn nak_text_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(100);
        let r = Response::Nak {
            code: ErrorCode::Busy,
            detail: 0,
            command: cmd::PUT,
            text: &long,
        };
        let mut head = Vec::new();
        r.write_payload(&mut head);
        assert!(head.len() <= 3 + MAX_NAK_TEXT);
        assert!(std::str::from_utf8(&head[3..]).is_ok());
    }
}
