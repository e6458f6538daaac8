//! Jig protocol v1 framing: frame body layout, CRC-32, COBS encoding and a streaming
//! frame assembler. Knows nothing about what a payload means (that is `protocol.rs`).
//!
//! Wire format of one frame (see `docs/jig-protocol.md`):
//!
//! ```text
//! wire  = COBS(body) 0x00
//! body  = code:u8  seq:u16le  payload:0..=MAX_PAYLOAD bytes  crc:u32le
//! crc   = CRC-32/ISO-HDLC (the zlib/Ethernet CRC-32) over code, seq and payload
//! ```
//!
//! Encoding appends to a caller-owned `Vec` and decoding works in place on the assembler's
//! buffer, so steady-state traffic allocates nothing.

use crc::{CRC_32_ISO_HDLC, Crc, Table};

/// CRC-32/ISO-HDLC (poly 0x04C11DB7 reflected, init 0xFFFFFFFF, xorout 0xFFFFFFFF,
/// check("123456789") = 0xCBF43926), table-driven with 16 lanes for speed.
pub(crate) static CRC32: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISO_HDLC);

/// Bytes before the payload: code (1) + sequence number (2).
pub(crate) const HEADER_LEN: usize = 3;
/// Bytes after the payload: the CRC-32.
pub(crate) const CRC_LEN: usize = 4;
/// Smallest valid body: header + CRC with an empty payload.
pub(crate) const MIN_BODY: usize = HEADER_LEN + CRC_LEN;
/// Largest payload any v1 frame may carry, in either direction.
pub const MAX_PAYLOAD: usize = 4096;
/// Largest body (header + payload + CRC).
pub(crate) const MAX_BODY: usize = HEADER_LEN + MAX_PAYLOAD + CRC_LEN;
/// Largest frame on the wire, delimiter included.
pub const MAX_WIRE: usize = cobs::max_encoding_length(MAX_BODY) + 1;
/// The frame delimiter.
pub(crate) const DELIMITER: u8 = 0x00;

/// Wire size (COBS + delimiter) of a frame whose body is `body_len` bytes, worst case.
pub(crate) const fn wire_len_for_body(body_len: usize) -> usize {
    cobs::max_encoding_length(body_len) + 1
}

/// Wire size, worst case, of a frame carrying `payload_len` payload bytes.
pub const fn wire_len_for_payload(payload_len: usize) -> usize {
    wire_len_for_body(HEADER_LEN + payload_len + CRC_LEN)
}

/// A frame that was decoded and whose CRC matched. The payload borrows the decoder's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub code: u8,
    pub seq: u16,
    pub payload: &'a [u8],
    /// The CRC the frame carried (it matched). Retransmissions of a frame are byte-identical,
    /// so (seq, code, crc) identifies a retransmission.
    pub crc: u32,
}

/// Why a frame could not be encoded or was dropped on receipt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("payload of {len} bytes exceeds the protocol maximum of {MAX_PAYLOAD}")]
    PayloadTooLarge { len: usize },
    #[error("frame is not valid COBS")]
    Cobs,
    #[error("frame body of {len} bytes is shorter than the {MIN_BODY}-byte minimum")]
    TooShort { len: usize },
    #[error("frame exceeds {MAX_WIRE} bytes before its delimiter")]
    TooLong,
    /// The body decoded but its CRC did not match. `code` and `seq` are as received and may
    /// themselves be corrupt; a board uses them to address its NAK-CRC.
    #[error("CRC mismatch (frame says {found:#010x}, computed {computed:#010x})")]
    BadCrc {
        code: u8,
        seq: u16,
        found: u32,
        computed: u32,
    },
}

/// Appends one encoded frame (COBS body + delimiter) to `out`. The payload is given in two
/// parts (`head` then `tail`) so a PUT's data never has to be copied into a scratch buffer.
/// Returns the number of wire bytes appended.
pub(crate) fn encode_frame(
    code: u8,
    seq: u16,
    head: &[u8],
    tail: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, CodecError> {
    let payload_len = head.len() + tail.len();
    if payload_len > MAX_PAYLOAD {
        return Err(CodecError::PayloadTooLarge { len: payload_len });
    }
    let header = [code, seq as u8, (seq >> 8) as u8];
    let mut digest = CRC32.digest();
    digest.update(&header);
    digest.update(head);
    digest.update(tail);
    let crc = digest.finalize().to_le_bytes();

    let body_len = HEADER_LEN + payload_len + CRC_LEN;
    let start = out.len();
    out.resize(start + wire_len_for_body(body_len), 0);
    let mut enc = cobs::CobsEncoder::new(&mut out[start..]);
    // The destination was sized with max_encoding_length, so the pushes cannot overflow;
    // map the impossible error rather than unwrap.
    let pushed = enc
        .push(&header)
        .and_then(|()| enc.push(head))
        .and_then(|()| enc.push(tail))
        .and_then(|()| enc.push(&crc));
    if pushed.is_err() {
        out.truncate(start);
        return Err(CodecError::TooLong);
    }
    let n = enc.finalize();
    out.truncate(start + n);
    out.push(DELIMITER);
    Ok(n + 1)
}

/// Decodes one frame in place. `wire` is the COBS data of one frame, without its delimiter.
pub(crate) fn decode_frame(wire: &mut [u8]) -> Result<Frame<'_>, CodecError> {
    if wire.len() >= MAX_WIRE {
        return Err(CodecError::TooLong);
    }
    let n = cobs::decode_in_place(wire).map_err(|_| CodecError::Cobs)?;
    let body = &wire[..n];
    if n < MIN_BODY {
        return Err(CodecError::TooShort { len: n });
    }
    let (data, crc_bytes) = body.split_at(n - CRC_LEN);
    let found = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let computed = CRC32.checksum(data);
    let code = data[0];
    let seq = u16::from_le_bytes([data[1], data[2]]);
    if found != computed {
        return Err(CodecError::BadCrc {
            code,
            seq,
            found,
            computed,
        });
    }
    Ok(Frame {
        code,
        seq,
        payload: &data[HEADER_LEN..],
        crc: found,
    })
}

/// Splits a byte stream at delimiters and decodes frames, one at a time.
///
/// ```text
/// let mut rest = &buf[..n];
/// while !rest.is_empty() {
///     let (used, event) = assembler.push(rest);
///     rest = &rest[used..];
///     if let Some(result) = event { /* handle Ok(frame) or Err(dropped) */ }
/// }
/// ```
///
/// Consecutive delimiters (empty frames) are skipped silently: a sender may send a lone
/// `0x00` to resynchronise the receiver. Bytes past [`MAX_WIRE`] without a delimiter are
/// discarded up to the next delimiter and reported once as [`CodecError::TooLong`].
#[derive(Debug)]
pub struct FrameAssembler {
    buf: Vec<u8>,
    /// The previous push returned a frame that borrowed `buf`: clear it before reuse.
    consumed: bool,
    /// Too many bytes without a delimiter: drop everything up to the next one.
    discarding: bool,
}

impl Default for FrameAssembler {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameAssembler {
    pub fn new() -> FrameAssembler {
        FrameAssembler {
            buf: Vec::with_capacity(MAX_WIRE),
            consumed: false,
            discarding: false,
        }
    }

    /// Bytes of an incomplete frame currently held.
    pub(crate) fn pending(&self) -> usize {
        if self.consumed { 0 } else { self.buf.len() }
    }

    /// Forgets any partial frame (after a line break, a reboot, or a port reopen).
    pub(crate) fn reset(&mut self) {
        self.buf.clear();
        self.consumed = false;
        self.discarding = false;
    }

    /// Feeds bytes. Returns how many bytes of `data` were used and, when a delimiter was
    /// reached, the decoded frame or the reason it was dropped.
    pub fn push(&mut self, data: &[u8]) -> (usize, Option<Result<Frame<'_>, CodecError>>) {
        if self.consumed {
            self.buf.clear();
            self.consumed = false;
        }
        let Some(pos) = data.iter().position(|&b| b == DELIMITER) else {
            self.append(data);
            return (data.len(), None);
        };
        self.append(&data[..pos]);
        let used = pos + 1;
        if self.discarding {
            self.discarding = false;
            self.buf.clear();
            return (used, Some(Err(CodecError::TooLong)));
        }
        if self.buf.is_empty() {
            return (used, None);
        }
        self.consumed = true;
        (used, Some(decode_frame(&mut self.buf)))
    }

    fn append(&mut self, data: &[u8]) {
        if self.discarding {
            return;
        }
        if self.buf.len() + data.len() >= MAX_WIRE {
            self.discarding = true;
            self.buf.clear();
            return;
        }
        self.buf.extend_from_slice(data);
    }
}

/// Re-encodes `wire` (one complete frame with delimiter) with its CRC inverted: the frame
/// stays valid COBS but fails its CRC check. Used by fault injection.
pub(crate) fn corrupt_crc(wire: &[u8]) -> Vec<u8> {
    let mut raw = wire.to_vec();
    if raw.last() == Some(&DELIMITER) {
        raw.pop();
    }
    let Ok(n) = cobs::decode_in_place(&mut raw) else {
        return wire.to_vec();
    };
    raw.truncate(n);
    if let Some(last) = raw.last_mut() {
        *last = !*last;
    }
    let mut out = vec![0u8; wire_len_for_body(raw.len())];
    let n = cobs::encode(&raw, &mut out);
    out.truncate(n);
    out.push(DELIMITER);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    type Decoded = Result<(u8, u16, Vec<u8>), CodecError>;

    fn frames(stream: &[u8]) -> Vec<Decoded> {
        let mut asm = FrameAssembler::new();
        let mut out = Vec::new();
        let mut rest = stream;
        while !rest.is_empty() {
            let (used, ev) = asm.push(rest);
            if let Some(ev) = ev {
                out.push(ev.map(|f| (f.code, f.seq, f.payload.to_vec())));
            }
            rest = &rest[used..];
        }
        out
    }

    #[test]
    fn crc_variant_is_iso_hdlc() {
        assert_eq!(CRC32.checksum(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_with_zeros_and_long_runs() {
        let payload: Vec<u8> = (0..1500u32).map(|i| (i % 7) as u8).collect();
        let mut wire = Vec::new();
        let n = encode_frame(0x03, 0xBEEF, &payload[..5], &payload[5..], &mut wire).unwrap();
        assert_eq!(n, wire.len());
        assert_eq!(
            wire.iter().filter(|&&b| b == 0).count(),
            1,
            "only the delimiter"
        );
        assert_eq!(frames(&wire), vec![Ok((0x03, 0xBEEF, payload))]);
    }

    #[test]
    fn empty_payload_and_back_to_back_frames_split_anywhere() {
        let mut wire = vec![0, 0]; // leading resync delimiters are skipped
        encode_frame(0x01, 1, &[], &[], &mut wire).unwrap();
        encode_frame(0x81, 2, &[0xFF; 300], &[], &mut wire).unwrap();
        for split in 0..wire.len() {
            let mut asm = FrameAssembler::new();
            let mut got = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                let mut rest = part;
                while !rest.is_empty() {
                    let (used, ev) = asm.push(rest);
                    if let Some(Ok(f)) = ev {
                        got.push((f.code, f.seq, f.payload.len()));
                    }
                    rest = &rest[used..];
                }
            }
            assert_eq!(got, vec![(0x01, 1, 0), (0x81, 2, 300)], "split at {split}");
        }
    }

    #[test]
    fn bad_crc_is_reported_with_header() {
        let mut wire = Vec::new();
        encode_frame(0x05, 7, &[1], &[], &mut wire).unwrap();
        let bad = corrupt_crc(&wire);
        match frames(&bad).as_slice() {
            [
                Err(CodecError::BadCrc {
                    code: 5, seq: 7, ..
                }),
            ] => {}
            other => panic!("unexpected {other:?}"),
        }
        // Flipping any single bit of the body is caught (by COBS or by the CRC).
        for i in 0..wire.len() - 1 {
            for bit in 0..8 {
                let mut w = wire.clone();
                w[i] ^= 1 << bit;
                if w[i] == 0 {
                    continue; // became a delimiter: splits into pieces, checked below
                }
                let got = frames(&w);
                assert!(
                    got.iter().all(|r| r.is_err()),
                    "byte {i} bit {bit}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors_not_panics() {
        let mut wire = Vec::new();
        encode_frame(0x03, 9, &[0xAA; 40], &[], &mut wire).unwrap();
        // Drop bytes from the middle.
        let mut cut = wire.clone();
        cut.drain(10..14);
        assert!(frames(&cut).iter().all(|r| r.is_err()));
        // Too short.
        assert!(matches!(
            frames(&[0x02, 0x01, 0x00]).as_slice(),
            [Err(CodecError::TooShort { .. })]
        ));
        // COBS code pointing past the end.
        assert!(matches!(
            frames(&[0x09, 0x01, 0x02, 0x00]).as_slice(),
            [Err(CodecError::Cobs)]
        ));
        // Every byte pattern of a few lengths: never panics.
        for len in 1..5usize {
            for seed in 0..2000u32 {
                let mut g: Vec<u8> = (0..len)
                    .map(|i| (seed.wrapping_mul(2654435761).rotate_left(i as u32 * 7)) as u8)
                    .collect();
                g.push(0);
                let _ = frames(&g);
            }
        }
    }

    #[test]
    fn oversized_stream_is_dropped_then_resyncs() {
        let mut stream = vec![0x55u8; MAX_WIRE + 10];
        stream.push(0);
        encode_frame(0x01, 3, &[], &[], &mut stream).unwrap();
        let got = frames(&stream);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Err(CodecError::TooLong));
        assert_eq!(got[1], Ok((0x01, 3, vec![])));
    }

    #[test]
    fn payload_limit_is_enforced() {
        let mut out = Vec::new();
        let big = vec![1u8; MAX_PAYLOAD + 1];
        assert_eq!(
            encode_frame(1, 1, &big, &[], &mut out),
            Err(CodecError::PayloadTooLarge {
                len: MAX_PAYLOAD + 1
            })
        );
        assert!(out.is_empty());
        let max = vec![0u8; MAX_PAYLOAD];
        encode_frame(1, 1, &max, &[], &mut out).unwrap();
        assert!(out.len() <= MAX_WIRE);
        assert_eq!(frames(&out).len(), 1);
    }
}
