//! Station → board commands: [`Command`] and the byte layout of each one's payload (the
//! layouts are specified in `docs/jig-protocol.md`). Decoding borrows from the frame, so
//! parsing a PUT copies no data.

use super::message::{Message, PayloadError, PayloadReader, put_str8};
use super::protocol::{
    CommitEntry, CommitSource, CsrFormat, DIGEST_LEN, MAX_HASH_SLOTS, Slot, SubjectAttrs, cmd,
};

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
    /// Makes the listed slots live; `digest` is
    /// [`commit_digest`](super::protocol::commit_digest) over the staged entries.
    Commit {
        entries: Vec<CommitEntry>,
        digest: [u8; DIGEST_LEN],
    },
    /// Length and SHA-256 of 1 to 5 live slots.
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

impl<'a> Message<'a> for Command<'a> {
    fn code(&self) -> u8 {
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

    fn write_payload<'s>(&'s self, head: &mut Vec<u8>) -> &'s [u8] {
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

    fn read_payload(code: u8, r: &mut PayloadReader<'a>) -> Result<Command<'a>, PayloadError> {
        Ok(match code {
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::testing::{decode_one, frame_of};
    use crate::wire::protocol::{KEY_TYPE_P256, attr};

    fn all_commands() -> Vec<Command<'static>> {
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
    }
}
