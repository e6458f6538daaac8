//! The station side of one jig: `JigLink` sends jig-protocol commands over a serial port
//! (blocking; one OS thread per port), matches answers by sequence number, retransmits on
//! timeout or corruption, and keeps frames in flight windowed against the board's RX buffer.
//!
//! Writing an identity is one pipelined stream: the slot values back to back as PUTs into
//! the board's staging area, and COMMIT right behind the last PUT without waiting for any
//! acknowledgement. COMMIT carries one digest over the slots; the board answers with the
//! digest it reads back from its flash after committing, which is the verification. A PUT
//! lost on the line makes the board refuse the COMMIT (staged data incomplete or different);
//! the link then resends what the board did not acknowledge and commits again.
//!
//! Nothing here logs or reports slot contents: logs name commands, slots, sequence numbers
//! and lengths only.
//!
//! # Layout
//!
//! - this file: [`JigLink`] and its commands (HELLO, GEN_CSR, HASH, READ, ERASE, RESET), what
//!   they return, and how the board's refusals become [`JigError`]s.
//! - `write`: the identity write (`write_identity`, `write_and_verify`): the staging image,
//!   the PUT chunk size, and the blocking loop that runs the pipelined write.
//! - `state`: the retransmission rules as state machines without I/O: one command's
//!   exchange and the pipelined write (selective repeat), unit-tested without a port.
//! - `window`: the pipelined write's send window against the board's RX buffer, no I/O.
//! - `io`: the blocking I/O: frames written in batches, answers read by a deadline, and the
//!   loop that runs one command's exchange.
//! - `port`: port settings, the byte transport, port listing.
//! - `pem`: PEM armour for a CSR the board returns as DER.

use std::collections::BTreeSet;
use std::time::Duration;

use self::state::{Failure, PUT_HEADER};
use self::write::chunk_size;
use crate::error::JigError;
use crate::wire::codec::{self, FrameAssembler};
use crate::wire::protocol::{
    self, Capabilities, CsrFormat, CsrSubject, ErrorCode, KEY_TYPE_P256, MAX_HASH_SLOTS,
    PROTOCOL_VERSION, SHA256_LEN, Slot, SlotHash, SubjectAttrs, attr,
};
use crate::wire::{Command, HelloAck, Response};

mod io;
mod pem;
mod port;
mod state;
mod window;
mod write;

pub use self::port::{
    DataBits, FlowControl, Parity, PortInfo, PortSettings, StopBits, Transport, line_time,
    list_ports, open_port,
};

/// What a board says about itself in HELLO.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BoardInfo {
    pub protocol_version: u8,
    pub serial: String,
    pub hw_rev: String,
    pub fw_version: String,
    pub mac: [u8; 6],
    pub capabilities: u8,
    /// Largest PUT/READ chunk the board takes.
    pub max_chunk: u16,
    /// Board RX buffer in bytes: bound on unacknowledged wire bytes.
    pub rx_buffer: u16,
    /// The committed thing name, when an identity is committed.
    pub thing_name: Option<String>,
}

impl From<HelloAck<'_>> for BoardInfo {
    fn from(h: HelloAck<'_>) -> BoardInfo {
        BoardInfo {
            protocol_version: h.version,
            serial: h.serial.into_owned(),
            hw_rev: h.hw_rev.into_owned(),
            fw_version: h.fw_version.into_owned(),
            mac: h.mac,
            capabilities: h.capabilities.0,
            max_chunk: h.max_chunk,
            rx_buffer: h.rx_buffer,
            thing_name: (!h.thing_name.is_empty()).then(|| h.thing_name.into_owned()),
        }
    }
}

impl BoardInfo {
    pub(crate) fn can_gen_csr(&self) -> bool {
        Capabilities(self.capabilities).has(Capabilities::GEN_CSR)
    }
    /// Certificate, private key and thing name are all committed.
    pub fn has_identity(&self) -> bool {
        Capabilities(self.capabilities).has(Capabilities::IDENTITY)
    }
    pub fn has_staged_key(&self) -> bool {
        Capabilities(self.capabilities).has(Capabilities::STAGED_KEY)
    }
    /// `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Content for one slot.
#[derive(Clone, Copy)]
pub struct SlotWrite<'a> {
    pub slot: Slot,
    pub data: &'a [u8],
}

impl std::fmt::Debug for SlotWrite<'_> {
    // Never print the content (it may be a private key).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotWrite")
            .field("slot", &self.slot)
            .field("len", &self.data.len())
            .finish()
    }
}

/// What `write_identity` / `write_and_verify` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WriteReport {
    /// Slot bytes written (each once, retransmissions excluded).
    pub bytes: usize,
    /// Slots committed, with their lengths.
    pub slots: Vec<(Slot, usize)>,
    /// The board's generated key (GEN_CSR) was committed with the slots.
    pub board_key_committed: bool,
    /// The board's flash generation after the commit.
    pub generation: u32,
    /// The digest the board read back from its flash after committing equals the digest of
    /// what was sent: the identity on the board is verified.
    pub verified: bool,
    /// COMMITs sent: 1, plus one for each time the board found staged data missing or
    /// different and the link repaired it.
    pub commit_rounds: u32,
    pub frames_sent: u64,
    pub wire_bytes_written: u64,
    pub retransmissions: u64,
    /// From the first PUT on the line to COMMIT's answer (the verified read-back).
    pub elapsed: Duration,
}

/// Counters of one link since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Payload bytes in frames sent (PUT data and command fields), retransmissions included.
    pub payload_bytes_written: u64,
    /// Bytes written to the port (COBS and delimiters included).
    pub wire_bytes_written: u64,
    pub wire_bytes_read: u64,
    /// Received frames dropped for a bad CRC, bad COBS or bad length.
    pub crc_errors: u64,
    /// NAK BAD_CRC answers (the board dropped one of our frames).
    pub naks_crc: u64,
    /// Waits for an answer that ran out.
    pub timeouts: u64,
    pub retransmissions: u64,
    /// Valid frames that answered nothing outstanding (late duplicates).
    pub stray_frames: u64,
}

/// Largest data in one PUT or READ the station uses (payload minus the PUT header).
const MAX_CHUNK: usize = codec::MAX_PAYLOAD - PUT_HEADER;

/// The station's connection to one jig.
pub struct JigLink {
    io: Box<dyn Transport>,
    port: String,
    settings: PortSettings,
    head: Vec<u8>,
    /// Payload length of the frame in `wire`.
    payload_len: usize,
    wire: Vec<u8>,
    /// Frames to write to the port in one go.
    batch: Vec<u8>,
    asm: FrameAssembler,
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    seq: u16,
    board: Option<BoardInfo>,
    /// GEN_CSR succeeded on this link and its key is not committed yet.
    board_key_staged: bool,
    stats: LinkStats,
}

impl std::fmt::Debug for JigLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JigLink")
            .field("port", &self.port)
            .field("board", &self.board.as_ref().map(|b| &b.serial))
            .field("stats", &self.stats)
            .finish()
    }
}

impl JigLink {
    /// Opens the serial port at `path` (a USB adapter or a virtual jig's pty).
    pub fn open(path: &str, settings: &PortSettings) -> Result<JigLink, JigError> {
        let port = open_port(path, settings)?;
        Ok(JigLink::from_transport(Box::new(port), path, settings))
    }

    /// Runs the link over any transport (tests, or a port opened elsewhere). `name` is used in
    /// errors to tell the operator which jig.
    pub fn from_transport(io: Box<dyn Transport>, name: &str, settings: &PortSettings) -> JigLink {
        JigLink {
            io,
            port: name.to_string(),
            settings: settings.clone(),
            head: Vec::with_capacity(256),
            payload_len: 0,
            wire: Vec::with_capacity(codec::MAX_WIRE),
            batch: Vec::with_capacity(codec::MAX_WIRE),
            asm: FrameAssembler::new(),
            rx: vec![0; 4096],
            rx_start: 0,
            rx_end: 0,
            seq: fastrand::u16(..),
            board: None,
            board_key_staged: false,
            stats: LinkStats::default(),
        }
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// PUT data size this link uses with the board seen by the last HELLO.
    pub fn put_chunk(&self) -> Option<usize> {
        self.board.as_ref().map(chunk_size)
    }

    /// Greets the board. `Err(JigError::NoBoard)` when nothing answers.
    pub fn hello(&mut self) -> Result<BoardInfo, JigError> {
        let _ = self.io.discard_input();
        self.asm.reset();
        self.rx_start = 0;
        self.rx_end = 0;
        let reply = self.transact(
            &Command::Hello {
                version: PROTOCOL_VERSION,
            },
            false,
        );
        let reply = match reply {
            Err(JigError::Timeout { tries, .. }) => {
                return Err(JigError::NoBoard {
                    port: self.port.clone(),
                    tries,
                });
            }
            other => other?,
        };
        match reply {
            Response::HelloAck(hello) => {
                let info = BoardInfo::from(hello);
                if info.protocol_version != PROTOCOL_VERSION {
                    return Err(JigError::Version {
                        port: self.port.clone(),
                        found: info.protocol_version,
                        expected: PROTOCOL_VERSION,
                    });
                }
                if (info.rx_buffer as usize) < codec::wire_len_for_payload(PUT_HEADER + 1)
                    || info.max_chunk == 0
                {
                    return Err(self.protocol_error(
                        "HELLO",
                        format!(
                            "board announces rx_buffer {} and max_chunk {}: too small for one PUT",
                            info.rx_buffer, info.max_chunk
                        ),
                    ));
                }
                if self.board.as_ref().map(|b| &b.serial) != Some(&info.serial) {
                    self.board_key_staged = false;
                }
                tracing::debug!(port = %self.port, serial = %info.serial, "board said hello");
                self.board = Some(info.clone());
                Ok(info)
            }
            Response::Nak {
                code: ErrorCode::Version,
                ..
            } => Err(JigError::Version {
                port: self.port.clone(),
                found: 0,
                expected: PROTOCOL_VERSION,
            }),
            other => Err(self.unexpected("HELLO", other)),
        }
    }

    /// Has the board make a P-256 key (kept on the board, staged in its private-key slot) and
    /// a CSR for it. Returns the CSR as PEM. The next `write_identity` commits that key with
    /// the certificate unless it writes the private-key slot itself.
    pub fn gen_csr(&mut self, subject: &CsrSubject) -> Result<String, JigError> {
        let board = self.ensure_hello()?;
        if !board.can_gen_csr() {
            return Err(JigError::NoGenCsr {
                port: self.port.clone(),
            });
        }
        let attrs: Vec<(u8, &str)> = [
            (attr::COMMON_NAME, subject.common_name.as_str()),
            (attr::ORGANIZATION, subject.organization.as_str()),
            (
                attr::ORGANIZATIONAL_UNIT,
                subject.organizational_unit.as_str(),
            ),
            (attr::COUNTRY, subject.country.as_str()),
            (attr::SERIAL_NUMBER, subject.serial_number.as_str()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        let command = Command::GenCsr {
            key_type: KEY_TYPE_P256,
            format: CsrFormat::Pem,
            subject: SubjectAttrs { attrs },
        };
        match self.transact(&command, true)? {
            Response::Csr { format, csr } => {
                let pem = match format {
                    CsrFormat::Pem => String::from_utf8(csr.into_owned()).map_err(|_| {
                        self.protocol_error("GEN_CSR", "CSR PEM is not UTF-8".into())
                    })?,
                    CsrFormat::Der => pem::encode("CERTIFICATE REQUEST", &csr),
                };
                if !pem.contains("-----BEGIN CERTIFICATE REQUEST-----") {
                    return Err(self.protocol_error("GEN_CSR", "reply is not a PEM CSR".into()));
                }
                self.board_key_staged = true;
                Ok(pem)
            }
            Response::Nak {
                code, detail, text, ..
            } => Err(self.nak_error("GEN_CSR", code, detail, &text)),
            other => Err(self.unexpected("GEN_CSR", other)),
        }
    }

    /// Reads back the length and SHA-256 of each slot (HASH, up to five slots per round
    /// trip) and compares them with `items`; the error names the first slot that differs.
    pub fn verify(&mut self, items: &[SlotWrite<'_>]) -> Result<(), JigError> {
        self.ensure_hello()?;
        let slots: Vec<Slot> = items.iter().map(|i| i.slot).collect();
        let hashes = self.hashes(&slots)?;
        for (item, h) in items.iter().zip(&hashes) {
            if h.len as usize != item.data.len() || h.sha256 != protocol::sha256(item.data) {
                return Err(JigError::VerifyMismatch {
                    port: self.port.clone(),
                    slot: item.slot,
                    expected_len: item.data.len(),
                    found_len: h.len as usize,
                });
            }
        }
        Ok(())
    }

    /// Which of `items` the board already holds: the slots whose live value has the item's
    /// length and SHA-256 (HASH, five slots a round trip), in the order of `items`. Ask only
    /// about slots that can match (a root CA baked into the firmware, a configuration that
    /// did not change): each costs 37 bytes of HASH_ACK on the line. The private-key slot is
    /// never reported held (a new identity brings its key).
    pub fn held(&mut self, items: &[SlotWrite<'_>]) -> Result<Vec<Slot>, JigError> {
        let asked: Vec<&SlotWrite<'_>> = items
            .iter()
            .filter(|i| i.slot != Slot::PrivateKey)
            .collect();
        if asked.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_hello()?;
        let slots: Vec<Slot> = asked.iter().map(|i| i.slot).collect();
        let hashes = self.hashes(&slots)?;
        Ok(asked
            .iter()
            .zip(&hashes)
            .filter(|(i, h)| h.len as usize == i.data.len() && h.sha256 == protocol::sha256(i.data))
            .map(|(i, _)| i.slot)
            .collect())
    }

    /// Length and SHA-256 of a live slot.
    pub fn hash(&mut self, slot: Slot) -> Result<(u32, [u8; SHA256_LEN]), JigError> {
        match self.hashes(&[slot])?.first() {
            Some(h) => Ok((h.len, h.sha256)),
            None => Err(self.protocol_error("HASH", "empty HASH_ACK".into())),
        }
    }

    /// Length and SHA-256 of live slots, in the order asked (five per round trip).
    fn hashes(&mut self, slots: &[Slot]) -> Result<Vec<SlotHash>, JigError> {
        let mut out = Vec::with_capacity(slots.len());
        for group in slots.chunks(MAX_HASH_SLOTS) {
            let command = Command::Hash {
                slots: group.to_vec(),
            };
            match self.transact(&command, false)? {
                Response::HashAck { entries }
                    if entries.len() == group.len()
                        && entries.iter().zip(group).all(|(e, s)| e.slot == *s) =>
                {
                    out.extend(entries)
                }
                Response::HashAck { entries } => {
                    return Err(self.protocol_error(
                        "HASH",
                        format!(
                            "HASH_ACK answers slots {:?}, asked {group:?}",
                            entries.iter().map(|e| e.slot).collect::<Vec<_>>()
                        ),
                    ));
                }
                Response::Nak {
                    code, detail, text, ..
                } => return Err(self.nak_error("HASH", code, detail, &text)),
                other => return Err(self.unexpected("HASH", other)),
            }
        }
        Ok(out)
    }

    /// Reads a live slot byte for byte (READ), checked against its HASH. The private-key slot
    /// is never read: `Err(JigError::AccessDenied)`.
    pub fn read_slot(&mut self, slot: Slot) -> Result<Vec<u8>, JigError> {
        if slot == Slot::PrivateKey {
            return Err(JigError::AccessDenied {
                port: self.port.clone(),
                slot,
            });
        }
        let board = self.ensure_hello()?;
        let (len, sha) = self.hash(slot)?;
        let len = len as usize;
        let step = (board.max_chunk as usize).min(MAX_CHUNK);
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let want = step.min(len - out.len());
            let offset = out.len() as u32;
            let command = Command::Read {
                slot,
                offset,
                len: want as u16,
            };
            match self.transact(&command, false)? {
                Response::ReadAck {
                    slot: s,
                    offset: o,
                    data,
                } if s == slot && o == offset && !data.is_empty() && data.len() <= want => {
                    out.extend_from_slice(&data)
                }
                Response::Nak {
                    code, detail, text, ..
                } => return Err(self.nak_error("READ", code, detail, &text)),
                other => return Err(self.unexpected("READ", other)),
            }
        }
        if protocol::sha256(&out) != sha {
            return Err(JigError::VerifyMismatch {
                port: self.port.clone(),
                slot,
                expected_len: len,
                found_len: out.len(),
            });
        }
        Ok(out)
    }

    /// Erases live and staged content of `slots`.
    pub fn erase(&mut self, slots: &[Slot]) -> Result<(), JigError> {
        self.ensure_hello()?;
        let unique: Vec<Slot> = slots
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        match self.transact(&Command::Erase { slots: unique }, true)? {
            Response::EraseAck { .. } => {
                if slots.contains(&Slot::PrivateKey) {
                    self.board_key_staged = false;
                }
                Ok(())
            }
            Response::Nak {
                code, detail, text, ..
            } => Err(self.nak_error("ERASE", code, detail, &text)),
            other => Err(self.unexpected("ERASE", other)),
        }
    }

    /// Reboots the board. Staged data is lost; on a line jig, a board with a committed
    /// identity is then taken off and the next one placed. Send HELLO before anything else.
    pub fn reset(&mut self) -> Result<(), JigError> {
        self.ensure_hello()?;
        let result = match self.transact(&Command::Reset, false) {
            Ok(Response::ResetAck) => Ok(()),
            // The RESET_ACK was lost and our retransmission reached the rebooted board.
            Ok(Response::Nak {
                code: ErrorCode::NeedHello,
                ..
            })
            | Err(JigError::BoardRebooted { .. }) => Ok(()),
            Ok(Response::Nak {
                code, detail, text, ..
            }) => Err(self.nak_error("RESET", code, detail, &text)),
            Ok(other) => Err(self.unexpected("RESET", other)),
            Err(e) => Err(e),
        };
        self.board = None;
        self.board_key_staged = false;
        result
    }

    // ---- internals ----

    fn ensure_hello(&mut self) -> Result<BoardInfo, JigError> {
        match &self.board {
            Some(b) => Ok(b.clone()),
            None => self.hello(),
        }
    }

    fn next_seq(&mut self) -> u16 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn rebooted(&mut self) -> JigError {
        self.board = None;
        self.board_key_staged = false;
        JigError::BoardRebooted {
            port: self.port.clone(),
        }
    }

    /// The operator's error for a failed exchange or write: the one place that tells a line
    /// that garbles frames from a board that does not answer.
    fn failure(&mut self, failure: Failure) -> JigError {
        match failure {
            Failure::GaveUp {
                command,
                tries,
                garbled,
            } if garbled > 0 => JigError::Garbled {
                port: self.port.clone(),
                command,
                tries,
                crc_errors: garbled,
            },
            Failure::GaveUp { command, tries, .. } => JigError::Timeout {
                port: self.port.clone(),
                command,
                tries,
            },
            Failure::Rebooted => self.rebooted(),
            Failure::Nak {
                command,
                code,
                detail,
                text,
            } => self.nak_error(command, code, detail, &text),
            Failure::Protocol { command, detail } => self.protocol_error(command, detail),
        }
    }

    fn protocol_error(&self, command: &'static str, detail: String) -> JigError {
        JigError::Protocol {
            port: self.port.clone(),
            command,
            detail,
        }
    }

    fn unexpected(&self, command: &'static str, reply: Response<'_>) -> JigError {
        self.protocol_error(command, format!("unexpected {}", reply.name()))
    }

    fn nak_error(
        &mut self,
        command: &'static str,
        code: ErrorCode,
        detail: u8,
        text: &str,
    ) -> JigError {
        // Board-supplied: keep it short and printable.
        let text: String = text
            .chars()
            .filter(|c| !c.is_control())
            .take(protocol::MAX_NAK_TEXT)
            .collect();
        let port = self.port.clone();
        let slot = Slot::from_u8(detail);
        match code {
            ErrorCode::NeedHello => self.rebooted(),
            ErrorCode::HashMismatch | ErrorCode::Incomplete if command == "COMMIT" => {
                JigError::CommitHashMismatch {
                    port,
                    code,
                    tries: self.settings.retries + 1,
                }
            }
            ErrorCode::CommitRefused | ErrorCode::NothingStaged | ErrorCode::FlashError
                if command == "COMMIT" =>
            {
                JigError::CommitRefused {
                    port,
                    code,
                    slot_text: slot.map(|s| format!(", slot {s}")).unwrap_or_default(),
                    text,
                }
            }
            ErrorCode::AccessDenied if slot.is_some() => JigError::AccessDenied {
                port,
                slot: slot.unwrap_or(Slot::PrivateKey),
            },
            ErrorCode::Version => JigError::Version {
                port,
                found: 0,
                expected: PROTOCOL_VERSION,
            },
            _ => JigError::Nak {
                port,
                command,
                code,
                detail,
                text,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_can_move_to_its_port_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<JigLink>();
    }
}
