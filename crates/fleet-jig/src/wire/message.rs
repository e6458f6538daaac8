//! What every jig-protocol message shares, written once: the [`Message`] trait (a code and a
//! payload layout; framing and parsing are provided), the bounds-checked payload reader the
//! layouts parse with, and [`PayloadError`].
//!
//! All integers are little-endian. A `str8` is a `u8` length followed by that many UTF-8
//! bytes.

use super::codec::{self, CodecError, Frame};
use super::protocol::{ErrorCode, Slot};

/// A jig-protocol message, a [`Command`](super::Command) or a
/// [`Response`](super::Response): its frame code and its payload layout. Encoding a message
/// into a frame and decoding one from a frame are provided, the same for both directions.
pub trait Message<'a>: Sized {
    /// The frame code (`cmd::…` or `rsp::…`).
    fn code(&self) -> u8;

    /// Writes the payload: the fixed part into `head` (cleared first); returns the bulk part
    /// (PUT or READ data, a CSR) to be framed after it without copying.
    fn write_payload<'s>(&'s self, head: &mut Vec<u8>) -> &'s [u8];

    /// Parses the payload of a frame with `code`. [`decode`](Self::decode) checks that
    /// nothing is left over.
    fn read_payload(code: u8, payload: &mut PayloadReader<'a>) -> Result<Self, PayloadError>;

    /// Encodes the whole frame onto `out`, using `head` as scratch. Returns wire bytes added.
    fn encode(&self, seq: u16, head: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<usize, CodecError> {
        let tail = self.write_payload(head);
        codec::encode_frame(self.code(), seq, head, tail, out)
    }

    /// Parses a message from a decoded frame; slices borrow the frame.
    fn decode(frame: &Frame<'a>) -> Result<Self, PayloadError> {
        let mut payload = PayloadReader::new(frame.payload);
        let message = Self::read_payload(frame.code, &mut payload)?;
        payload.end()?;
        Ok(message)
    }
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
    pub(crate) fn nak_code(&self) -> ErrorCode {
        match self {
            PayloadError::UnknownCode(_) => ErrorCode::UnknownCommand,
            PayloadError::BadSlot(_) => ErrorCode::BadSlot,
            PayloadError::Invalid(_) => ErrorCode::Unsupported,
            _ => ErrorCode::BadFrame,
        }
    }
}

/// A bounds-checked little-endian reader over a payload. Only the messages of this module
/// read with it.
#[derive(Debug)]
pub struct PayloadReader<'a> {
    buf: &'a [u8],
}

impl<'a> PayloadReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        PayloadReader { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], PayloadError> {
        if self.buf.len() < n {
            return Err(PayloadError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, PayloadError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, PayloadError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, PayloadError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], PayloadError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn slot(&mut self) -> Result<Slot, PayloadError> {
        let v = self.u8()?;
        Slot::from_u8(v).ok_or(PayloadError::BadSlot(v))
    }

    pub(crate) fn str8(&mut self) -> Result<&'a str, PayloadError> {
        let n = self.u8()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| PayloadError::NotUtf8)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn remaining(&self) -> usize {
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

/// Appends a `str8`, truncated at a char boundary to fit the `u8` length.
pub(crate) fn put_str8(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Helpers for the wire's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::wire::codec::FrameAssembler;

    /// The one frame `wire` holds (delimiter included), as (code, seq, payload).
    pub(crate) fn decode_one(wire: &[u8]) -> (u8, u16, Vec<u8>) {
        let mut asm = FrameAssembler::new();
        let (used, ev) = asm.push(wire);
        assert_eq!(used, wire.len());
        let f = ev.expect("a frame").expect("valid");
        (f.code, f.seq, f.payload.to_vec())
    }

    /// A decoded frame carrying `payload` (its CRC is not looked at by the parsers).
    pub(crate) fn frame_of(code: u8, seq: u16, payload: &[u8]) -> Frame<'_> {
        Frame {
            code,
            seq,
            payload,
            crc: 0,
        }
    }
}
