//! Board → station responses: [`Response`] (with [`HelloAck`]) and the byte layout of each
//! one's payload (the layouts are specified in `docs/jig-protocol.md`).

use std::borrow::Cow;

use super::message::{Message, PayloadError, PayloadReader, put_str8};
use super::protocol::{
    Capabilities, CsrFormat, DIGEST_LEN, ErrorCode, MAX_HASH_SLOTS, MAX_NAK_TEXT, Slot, SlotHash,
    rsp,
};

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
    pub serial: Cow<'a, str>,
    pub hw_rev: Cow<'a, str>,
    pub fw_version: Cow<'a, str>,
    /// Empty when no identity is committed.
    pub thing_name: Cow<'a, str>,
}

/// A board → station response. Decoding borrows from the frame; the station's link keeps an
/// owned copy past the frame's buffer (`into_owned`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    HelloAck(HelloAck<'a>),
    Csr {
        format: CsrFormat,
        csr: Cow<'a, [u8]>,
    },
    PutAck {
        offset: u32,
        len: u16,
    },
    CommitAck {
        count: u8,
        generation: u32,
        /// [`commit_digest`](super::protocol::commit_digest) over the committed staged slots,
        /// read back from flash.
        digest: [u8; DIGEST_LEN],
    },
    /// One entry per slot asked, in the order asked.
    HashAck {
        entries: Vec<SlotHash>,
    },
    ReadAck {
        slot: Slot,
        offset: u32,
        data: Cow<'a, [u8]>,
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
        text: Cow<'a, str>,
    },
}

impl<'a> Message<'a> for Response<'a> {
    fn code(&self) -> u8 {
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

    fn write_payload<'s>(&'s self, head: &mut Vec<u8>) -> &'s [u8] {
        head.clear();
        match self {
            Response::HelloAck(h) => {
                head.extend_from_slice(&[h.version, h.capabilities.0]);
                head.extend_from_slice(&h.max_chunk.to_le_bytes());
                head.extend_from_slice(&h.rx_buffer.to_le_bytes());
                head.extend_from_slice(&h.mac);
                put_str8(head, &h.serial);
                put_str8(head, &h.hw_rev);
                put_str8(head, &h.fw_version);
                put_str8(head, &h.thing_name);
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

    fn read_payload(code: u8, r: &mut PayloadReader<'a>) -> Result<Response<'a>, PayloadError> {
        Ok(match code {
            rsp::HELLO_ACK => Response::HelloAck(HelloAck {
                version: r.u8()?,
                capabilities: Capabilities(r.u8()?),
                max_chunk: r.u16()?,
                rx_buffer: r.u16()?,
                mac: r.array()?,
                serial: r.str8()?.into(),
                hw_rev: r.str8()?.into(),
                fw_version: r.str8()?.into(),
                thing_name: r.str8()?.into(),
            }),
            rsp::CSR => Response::Csr {
                format: CsrFormat::from_u8(r.u8()?).ok_or(PayloadError::Invalid("CSR format"))?,
                csr: r.rest().into(),
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
                data: r.rest().into(),
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
                    text: text.into(),
                }
            }
            other => return Err(PayloadError::UnknownCode(other)),
        })
    }
}

impl Response<'_> {
    /// The same response owning its bytes, so the frame's buffer can be reused (the
    /// station's link keeps answers this way).
    pub(crate) fn into_owned(self) -> Response<'static> {
        match self {
            Response::HelloAck(h) => Response::HelloAck(HelloAck {
                serial: Cow::Owned(h.serial.into_owned()),
                hw_rev: Cow::Owned(h.hw_rev.into_owned()),
                fw_version: Cow::Owned(h.fw_version.into_owned()),
                thing_name: Cow::Owned(h.thing_name.into_owned()),
                version: h.version,
                capabilities: h.capabilities,
                max_chunk: h.max_chunk,
                rx_buffer: h.rx_buffer,
                mac: h.mac,
            }),
            Response::Csr { format, csr } => Response::Csr {
                format,
                csr: Cow::Owned(csr.into_owned()),
            },
            Response::PutAck { offset, len } => Response::PutAck { offset, len },
            Response::CommitAck {
                count,
                generation,
                digest,
            } => Response::CommitAck {
                count,
                generation,
                digest,
            },
            Response::HashAck { entries } => Response::HashAck { entries },
            Response::ReadAck { slot, offset, data } => Response::ReadAck {
                slot,
                offset,
                data: Cow::Owned(data.into_owned()),
            },
            Response::EraseAck { count } => Response::EraseAck { count },
            Response::ResetAck => Response::ResetAck,
            Response::Nak {
                code,
                detail,
                command,
                text,
            } => Response::Nak {
                code,
                detail,
                command,
                text: Cow::Owned(text.into_owned()),
            },
        }
    }

    /// The response's name, for errors (`PUT_ACK`, `NAK`, …).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Response::HelloAck(_) => "HELLO_ACK",
            Response::Csr { .. } => "CSR",
            Response::PutAck { .. } => "PUT_ACK",
            Response::CommitAck { .. } => "COMMIT_ACK",
            Response::HashAck { .. } => "HASH_ACK",
            Response::ReadAck { .. } => "READ_ACK",
            Response::EraseAck { .. } => "ERASE_ACK",
            Response::ResetAck => "RESET_ACK",
            Response::Nak { .. } => "NAK",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::testing::{decode_one, frame_of};
    use crate::wire::protocol::cmd;

    fn all_responses() -> Vec<Response<'static>> {
        vec![
            Response::HelloAck(HelloAck {
                version: 1,
                capabilities: Capabilities(Capabilities::GEN_CSR | Capabilities::IDENTITY),
                max_chunk: 1024,
                rx_buffer: 4096,
                mac: [2, 0, 0, 0, 0, 1],
                serial: "VB-000001".into(),
                hw_rev: "C".into(),
                fw_version: "1.2.3".into(),
                thing_name: "thing-1".into(),
            }),
            Response::Csr {
                format: CsrFormat::Der,
                csr: Cow::Borrowed(&[0x30, 0x82, 0x00, 0x01]),
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
                data: Cow::Borrowed(b"abc\0"),
            },
            Response::EraseAck { count: 2 },
            Response::ResetAck,
            Response::Nak {
                code: ErrorCode::HashMismatch,
                detail: 1,
                command: cmd::COMMIT,
                text: "certificate sha256 differs".into(),
            },
            Response::Nak {
                code: ErrorCode::Other(0x42),
                detail: 0,
                command: 0x99,
                text: "".into(),
            },
        ]
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
    fn an_owned_response_equals_the_borrowed_one() {
        let (mut head, mut wire) = (Vec::new(), Vec::new());
        for r in all_responses() {
            wire.clear();
            r.encode(1, &mut head, &mut wire).unwrap();
            let (code, seq, payload) = decode_one(&wire);
            let owned: Response<'static> = {
                let frame = frame_of(code, seq, &payload);
                Response::decode(&frame).unwrap().into_owned()
            };
            drop(payload);
            assert_eq!(owned, r);
            assert_eq!(owned.code(), r.code());
        }
    }

    #[test]
    fn malformed_payloads_are_errors() {
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
    fn nak_text_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(100);
        let r = Response::Nak {
            code: ErrorCode::Busy,
            detail: 0,
            command: cmd::PUT,
            text: long.into(),
        };
        let mut head = Vec::new();
        r.write_payload(&mut head);
        assert!(head.len() <= 3 + MAX_NAK_TEXT);
        assert!(std::str::from_utf8(&head[3..]).is_ok());
    }
}
