//! The board side of jig protocol v1 as a state machine without I/O: it takes decoded
//! frames and appends encoded answers. Holds the committed slots (`Flash`, persisted on
//! COMMIT/ERASE), the staging area and board-generated key (RAM only, lost on reboot), the
//! session flag (HELLO seen since boot) and the replay cache that makes retransmissions safe.
//! COMMIT answers with the digest of what it reads back from flash after committing.
//!
//! The virtual jig (`virtual_jig/`) drives it over a pty; tests can drive it directly.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};
use zeroize::Zeroizing;

use super::flash::{Flash, Spare};
use crate::error::JigError;
use crate::wire::codec::Frame;
use crate::wire::protocol::{
    Capabilities, CommitEntry, CommitSource, CsrFormat, DIGEST_LEN, ErrorCode, KEY_TYPE_P256,
    PROTOCOL_VERSION, STAGING_CAPACITY, Slot, SlotHash, SubjectAttrs, attr, cmd, commit_digest,
    sha256,
};
use crate::wire::{Command, HelloAck, Message, Response};

/// Identity of a physical board, as the jig's queue hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardSpec {
    pub serial: String,
    pub hw_rev: String,
    pub fw_version: String,
    pub mac: [u8; 6],
    /// The board can make its own key and CSR (GEN_CSR).
    pub can_gen_csr: bool,
    /// Slots the board's firmware image carries before it is ever provisioned (a root CA
    /// baked in): a blank board (no flash file yet) starts with them live.
    pub firmware_slots: Vec<(Slot, Vec<u8>)>,
}

impl BoardSpec {
    pub fn new(serial: &str) -> BoardSpec {
        BoardSpec {
            serial: serial.to_string(),
            hw_rev: "A".to_string(),
            fw_version: "1.0.0".to_string(),
            mac: [0x02, 0, 0, 0, 0, 1],
            can_gen_csr: true,
            firmware_slots: Vec::new(),
        }
    }
}

/// Limits a board announces in HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoardParams {
    /// Largest PUT data / READ length.
    pub max_chunk: u16,
    /// RX buffer in bytes.
    pub rx_buffer: u16,
}

impl Default for BoardParams {
    /// The largest chunk a PUT frame can carry (payload 4096 minus the 4-byte offset), and a
    /// 4 KiB RX buffer.
    fn default() -> Self {
        BoardParams {
            max_chunk: (crate::wire::codec::MAX_PAYLOAD - 4) as u16,
            rx_buffer: 4096,
        }
    }
}

/// What the driver must do after a frame was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Send the answer (if any) and go on.
    Continue,
    /// Send the answer, then reboot (RESET).
    Reboot,
    /// Power was lost in the middle of a flash write: nothing was sent, the board is dead.
    PowerCut,
}

/// Board-level fault switches (the line-level ones live in the jig).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct BoardFaults {
    /// Answer every COMMIT with COMMIT_REFUSED.
    pub refuse_commit: bool,
    /// Lose power half-way through the next COMMIT's flash write.
    pub power_cut_in_commit: bool,
    /// A weak flash cell: COMMIT stores this slot with one bit flipped, so what it reads
    /// back differs from what it was sent.
    pub flip_bit_in: Option<Slot>,
}

struct Cached {
    seq: u16,
    code: u8,
    crc: u32,
    wire: Vec<u8>,
}

/// Responses kept for replay; more than a window of PUTs can hold.
const REPLAY_DEPTH: usize = 32;

type Nak = (ErrorCode, u8, &'static str);

pub(crate) struct Board {
    spec: BoardSpec,
    params: BoardParams,
    flash: Flash,
    flash_path: PathBuf,
    /// The flash's spare file, created when the board is placed so that COMMIT, on the
    /// station's critical path, only writes and renames.
    spare: Option<Spare>,
    /// The staging area: PUT data, the new slot values back to back.
    staging: Option<Zeroizing<Vec<u8>>>,
    staged_key: Option<Zeroizing<Vec<u8>>>,
    session: bool,
    replay: VecDeque<Cached>,
    head: Vec<u8>,
    pub faults: BoardFaults,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board")
            .field("serial", &self.spec.serial)
            .field("flash", &self.flash)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Board {
    /// Powers a board up: loads its flash from `flash_dir` (or starts blank).
    pub(crate) fn new(
        spec: BoardSpec,
        params: BoardParams,
        flash_dir: &Path,
    ) -> Result<Board, JigError> {
        let flash_path = Flash::path_for(flash_dir, &spec.serial);
        // Also empties what a torn store may have left in the spare.
        let spare = Flash::prepare_spare(&flash_path).ok();
        let blank = !flash_path.exists();
        let mut flash = Flash::load_or_new(&flash_path, &spec.serial)?;
        if blank {
            for (slot, data) in &spec.firmware_slots {
                flash.set_slot(*slot, data);
            }
        }
        Ok(Board {
            spec,
            params,
            flash,
            flash_path,
            spare,
            staging: None,
            staged_key: None,
            session: false,
            replay: VecDeque::new(),
            head: Vec::with_capacity(256),
            faults: BoardFaults::default(),
        })
    }

    pub(crate) fn spec(&self) -> &BoardSpec {
        &self.spec
    }

    pub(crate) fn has_identity(&self) -> bool {
        self.flash.has_identity()
    }

    /// Reboot: RAM is lost (staged data, generated key, session, replay cache).
    pub(crate) fn reboot(&mut self) {
        self.staging = None;
        self.staged_key = None;
        self.session = false;
        self.replay.clear();
    }

    /// Appends a NAK for a frame whose CRC failed (`code`, `seq` as received).
    pub(crate) fn nak_bad_crc(&mut self, code: u8, seq: u16, out: &mut Vec<u8>) {
        self.nak(seq, code, (ErrorCode::BadCrc, 0, "bad CRC, resend"), out);
    }

    /// Appends a NAK with `error` for command `code`/`seq` (fault injection, BUSY).
    pub(crate) fn nak_with(&mut self, code: u8, seq: u16, error: ErrorCode, out: &mut Vec<u8>) {
        self.nak(seq, code, (error, 0, "injected"), out);
    }

    /// Handles one valid frame, appending the answer to `out`.
    pub(crate) fn handle(&mut self, frame: &Frame<'_>, out: &mut Vec<u8>) -> Outcome {
        if frame.code != cmd::HELLO
            && let Some(c) = self
                .replay
                .iter()
                .find(|c| c.seq == frame.seq && c.code == frame.code && c.crc == frame.crc)
        {
            // A retransmission of a command already handled: same answer, no second effect.
            out.extend_from_slice(&c.wire);
            return Outcome::Continue;
        }
        let start = out.len();
        let command = match Command::decode(frame) {
            Ok(c) => c,
            Err(e) => {
                self.nak(
                    frame.seq,
                    frame.code,
                    (e.nak_code(), 0, "malformed payload"),
                    out,
                );
                return Outcome::Continue;
            }
        };
        if !self.session && !matches!(command, Command::Hello { .. }) {
            self.nak(
                frame.seq,
                frame.code,
                (ErrorCode::NeedHello, 0, "rebooted: send HELLO"),
                out,
            );
            return Outcome::Continue;
        }
        let seq = frame.seq;
        let mut outcome = Outcome::Continue;
        let result = match command {
            Command::Hello { version } => self.hello(seq, version, out),
            Command::GenCsr {
                key_type,
                format,
                subject,
            } => self.gen_csr(seq, key_type, format, &subject, out),
            Command::Put { offset, data } => self.put(seq, offset, data, out),
            Command::Commit { entries, digest } => match self.commit(seq, &entries, &digest, out) {
                Ok(Outcome::PowerCut) => return Outcome::PowerCut,
                other => other.map(|_| ()),
            },
            Command::Hash { slots } => {
                let entries = slots
                    .iter()
                    .map(|&slot| {
                        let data = self.flash.slot(slot).unwrap_or_default();
                        SlotHash {
                            slot,
                            len: data.len() as u32,
                            sha256: sha256(data),
                        }
                    })
                    .collect();
                encode(&mut self.head, seq, &Response::HashAck { entries }, out);
                Ok(())
            }
            Command::Read { slot, offset, len } => self.read(seq, slot, offset, len, out),
            Command::Erase { slots } => self.erase(seq, &slots, out),
            Command::Reset => {
                encode(&mut self.head, seq, &Response::ResetAck, out);
                outcome = Outcome::Reboot;
                Ok(())
            }
        };
        if let Err(nak) = result {
            out.truncate(start);
            self.nak(seq, frame.code, nak, out);
        }
        if frame.code != cmd::HELLO {
            if self.replay.len() == REPLAY_DEPTH {
                self.replay.pop_front();
            }
            self.replay.push_back(Cached {
                seq,
                code: frame.code,
                crc: frame.crc,
                wire: out[start..].to_vec(),
            });
        }
        outcome
    }

    fn nak(&mut self, seq: u16, command: u8, (code, detail, text): Nak, out: &mut Vec<u8>) {
        let r = Response::Nak {
            code,
            detail,
            command,
            text: text.into(),
        };
        encode(&mut self.head, seq, &r, out);
    }

    fn hello(&mut self, seq: u16, version: u8, out: &mut Vec<u8>) -> Result<(), Nak> {
        if version == 0 {
            return Err((ErrorCode::Version, 0, "protocol v1 only"));
        }
        self.session = true;
        self.replay.clear();
        let mut caps = 0;
        if self.spec.can_gen_csr {
            caps |= Capabilities::GEN_CSR;
        }
        let identity = self.flash.has_identity();
        if identity {
            caps |= Capabilities::IDENTITY;
        }
        if self.staged_key.is_some() {
            caps |= Capabilities::STAGED_KEY;
        }
        let r = Response::HelloAck(HelloAck {
            version: PROTOCOL_VERSION,
            capabilities: Capabilities(caps),
            max_chunk: self.params.max_chunk,
            rx_buffer: self.params.rx_buffer,
            mac: self.spec.mac,
            serial: self.spec.serial.as_str().into(),
            hw_rev: self.spec.hw_rev.as_str().into(),
            fw_version: self.spec.fw_version.as_str().into(),
            thing_name: if identity {
                self.flash.thing_name().unwrap_or_default().into()
            } else {
                "".into()
            },
        });
        encode(&mut self.head, seq, &r, out);
        Ok(())
    }

    fn gen_csr(
        &mut self,
        seq: u16,
        key_type: u8,
        format: CsrFormat,
        subject: &SubjectAttrs<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Nak> {
        if !self.spec.can_gen_csr {
            return Err((ErrorCode::Unsupported, 0, "no key generation"));
        }
        if key_type != KEY_TYPE_P256 {
            return Err((ErrorCode::Unsupported, 0, "key type: P-256 only"));
        }
        let mut dn = DistinguishedName::new();
        for (id, value) in &subject.attrs {
            let printable = || {
                (*value)
                    .try_into()
                    .map(DnValue::PrintableString)
                    .unwrap_or_else(|_| DnValue::Utf8String(value.to_string()))
            };
            match *id {
                attr::COMMON_NAME => dn.push(DnType::CommonName, *value),
                attr::ORGANIZATION => dn.push(DnType::OrganizationName, *value),
                attr::ORGANIZATIONAL_UNIT => dn.push(DnType::OrganizationalUnitName, *value),
                attr::COUNTRY => dn.push(DnType::CountryName, printable()),
                attr::SERIAL_NUMBER => dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), printable()),
                _ => return Err((ErrorCode::Unsupported, 0, "unknown subject attribute")),
            }
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        let failed = (ErrorCode::Unsupported, 0, "CSR generation failed");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|_| failed)?;
        let csr = params.serialize_request(&key).map_err(|_| failed)?;
        let bytes = match format {
            CsrFormat::Pem => csr.pem().map_err(|_| failed)?.into_bytes(),
            CsrFormat::Der => csr.der().to_vec(),
        };
        // The key stays on the board, staged until COMMIT names it.
        self.staged_key = Some(Zeroizing::new(key.serialize_pem().into_bytes()));
        let r = Response::Csr {
            format,
            csr: bytes.as_slice().into(),
        };
        encode(&mut self.head, seq, &r, out);
        Ok(())
    }

    fn put(&mut self, seq: u16, offset: u32, data: &[u8], out: &mut Vec<u8>) -> Result<(), Nak> {
        let end = offset as usize + data.len();
        if data.len() > self.params.max_chunk as usize {
            return Err((ErrorCode::OutOfRange, 0, "chunk larger than max_chunk"));
        }
        if end > STAGING_CAPACITY {
            return Err((ErrorCode::OutOfRange, 0, "beyond the staging area"));
        }
        // Allocated at full capacity once, so it never reallocates (and leaves no copies).
        let buf = self
            .staging
            .get_or_insert_with(|| Zeroizing::new(Vec::with_capacity(STAGING_CAPACITY)));
        if buf.len() < end {
            buf.resize(end, 0);
        }
        buf[offset as usize..end].copy_from_slice(data);
        let r = Response::PutAck {
            offset,
            len: data.len() as u16,
        };
        encode(&mut self.head, seq, &r, out);
        Ok(())
    }

    fn commit(
        &mut self,
        seq: u16,
        entries: &[CommitEntry],
        digest: &[u8; DIGEST_LEN],
        out: &mut Vec<u8>,
    ) -> Result<Outcome, Nak> {
        if entries.is_empty() {
            return Err((ErrorCode::BadFrame, 0, "empty COMMIT"));
        }
        for (i, e) in entries.iter().enumerate() {
            let detail = e.slot as u8;
            if entries[..i].iter().any(|f| f.slot == e.slot) {
                return Err((ErrorCode::BadFrame, detail, "slot listed twice"));
            }
            match e.source {
                CommitSource::Staged if e.len as usize > e.slot.capacity() => {
                    return Err((ErrorCode::OutOfRange, detail, "longer than the slot"));
                }
                CommitSource::BoardKey if e.slot != Slot::PrivateKey => {
                    return Err((ErrorCode::BadSlot, detail, "board key goes to slot 2"));
                }
                CommitSource::BoardKey if e.len != 0 => {
                    return Err((ErrorCode::BadFrame, detail, "board key entry with a length"));
                }
                _ => {}
            }
        }
        if self.faults.refuse_commit {
            return Err((ErrorCode::CommitRefused, 0, "write-protected"));
        }
        // Where each staged entry's bytes are in the staging area.
        let staged: &[u8] = self.staging.as_deref().map_or(&[], |v| v.as_slice());
        let mut ranges = Vec::with_capacity(entries.len());
        let mut pos = 0usize;
        for e in entries {
            if e.source == CommitSource::Staged {
                let end = pos + e.len as usize;
                if end > staged.len() {
                    return Err((
                        ErrorCode::Incomplete,
                        e.slot as u8,
                        "staged data incomplete",
                    ));
                }
                ranges.push((e.slot, pos..end));
                pos = end;
            }
        }
        let sent = commit_digest(ranges.iter().map(|(s, r)| (*s, &staged[r.clone()])));
        if sent != *digest {
            return Err((ErrorCode::HashMismatch, 0, "staged data differs"));
        }
        let mut next = self.flash.clone();
        for (slot, range) in &ranges {
            let mut value = Zeroizing::new(staged[range.clone()].to_vec());
            if self.faults.flip_bit_in == Some(*slot)
                && let Some(b) = value.first_mut()
            {
                *b ^= 0x01;
            }
            next.set_slot(*slot, &value);
        }
        for e in entries {
            if e.source == CommitSource::BoardKey {
                let Some(key) = self.staged_key.as_ref() else {
                    return Err((ErrorCode::NothingStaged, e.slot as u8, "no GEN_CSR key"));
                };
                next.set_slot(Slot::PrivateKey, key);
            }
        }
        next.set_generation(self.flash.generation().wrapping_add(1));
        if self.faults.power_cut_in_commit {
            // The torn image stays in the spare file, as it would on a real flash.
            self.spare = None;
            let _ = next.store_torn(&self.flash_path);
            return Ok(Outcome::PowerCut);
        }
        let written = match self.spare.take() {
            Some(spare) => next.store_prepared(&self.flash_path, spare),
            None => Flash::prepare_spare(&self.flash_path)
                .and_then(|spare| next.store_prepared(&self.flash_path, spare)),
        };
        let Ok(written) = written else {
            return Err((ErrorCode::FlashError, 0, "flash write failed"));
        };
        // Read back what is now on flash: that is what the answer's digest vouches for.
        let stored = match next.read_back(&self.flash_path, &written) {
            Ok(f) => f,
            Err(_) => {
                self.flash = next;
                return Err((ErrorCode::FlashError, 0, "read-back after commit failed"));
            }
        };
        self.flash = stored;
        self.staging = None;
        if entries.iter().any(|e| e.slot == Slot::PrivateKey) {
            self.staged_key = None;
        }
        let digest = commit_digest(
            ranges
                .iter()
                .map(|(slot, _)| (*slot, self.flash.slot(*slot).unwrap_or_default())),
        );
        let r = Response::CommitAck {
            count: entries.len() as u8,
            generation: self.flash.generation(),
            digest,
        };
        encode(&mut self.head, seq, &r, out);
        Ok(Outcome::Continue)
    }

    fn read(
        &mut self,
        seq: u16,
        slot: Slot,
        offset: u32,
        len: u16,
        out: &mut Vec<u8>,
    ) -> Result<(), Nak> {
        if slot == Slot::PrivateKey {
            return Err((
                ErrorCode::AccessDenied,
                slot as u8,
                "private key is not readable",
            ));
        }
        let data = self.flash.slot(slot).unwrap_or_default();
        let offset_us = offset as usize;
        if offset_us > data.len() || len > self.params.max_chunk {
            return Err((ErrorCode::OutOfRange, slot as u8, "beyond slot content"));
        }
        let end = data.len().min(offset_us + len as usize);
        let r = Response::ReadAck {
            slot,
            offset,
            data: data[offset_us..end].into(),
        };
        encode(&mut self.head, seq, &r, out);
        Ok(())
    }

    fn erase(&mut self, seq: u16, slots: &[Slot], out: &mut Vec<u8>) -> Result<(), Nak> {
        if slots.is_empty() {
            return Err((ErrorCode::BadFrame, 0, "empty ERASE"));
        }
        let mut next = self.flash.clone();
        for s in slots {
            next.clear_slot(*s);
        }
        next.set_generation(self.flash.generation().wrapping_add(1));
        if next.store(&self.flash_path).is_err() {
            return Err((ErrorCode::FlashError, 0, "flash write failed"));
        }
        self.flash = next;
        self.staging = None;
        if slots.contains(&Slot::PrivateKey) {
            self.staged_key = None;
        }
        encode(
            &mut self.head,
            seq,
            &Response::EraseAck {
                count: slots.len() as u8,
            },
            out,
        );
        Ok(())
    }
}

impl Drop for Board {
    /// A board taken off the jig without committing leaves no empty spare file behind.
    fn drop(&mut self) {
        if let Some(spare) = self.spare.take() {
            spare.discard();
        }
    }
}

/// Encodes a response. Every response the board builds fits a frame (payloads are bounded
/// by `max_chunk` and slot capacities), so an encode error cannot happen; should it, the
/// board sends nothing and the station's retransmission logic takes over.
fn encode(head: &mut Vec<u8>, seq: u16, r: &Response<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    if r.encode(seq, head, out).is_err() {
        out.truncate(start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::FrameAssembler;
    use crate::wire::testing::{decode_one, frame_of};

    /// The board's answer in `out` (one frame), decoded.
    fn answer(out: &[u8]) -> Response<'static> {
        let (code, seq, payload) = decode_one(out);
        Response::decode(&frame_of(code, seq, &payload))
            .expect("a well-formed answer")
            .into_owned()
    }

    /// Sends one command to the board and decodes its answer, without I/O.
    struct Harness {
        board: Board,
        seq: u16,
        head: Vec<u8>,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        fn new() -> Harness {
            Harness::with_params(BoardParams::default())
        }

        fn with_params(params: BoardParams) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let board = Board::new(BoardSpec::new("T-1"), params, dir.path()).unwrap();
            Harness {
                board,
                seq: 0,
                head: Vec::new(),
                _dir: dir,
            }
        }

        fn send_seq(&mut self, c: &Command<'_>, seq: u16) -> (Vec<u8>, Outcome) {
            let mut wire = Vec::new();
            c.encode(seq, &mut self.head, &mut wire).unwrap();
            let mut asm = FrameAssembler::new();
            let (_, ev) = asm.push(&wire);
            let frame = ev.unwrap().unwrap();
            let mut out = Vec::new();
            let outcome = self.board.handle(&frame, &mut out);
            (out, outcome)
        }

        fn send(&mut self, c: &Command<'_>) -> (Vec<u8>, Outcome) {
            self.seq += 1;
            self.send_seq(c, self.seq)
        }

        fn code_of(out: &[u8]) -> (u8, Option<ErrorCode>) {
            let r = answer(out);
            let nak = match r {
                Response::Nak { code, .. } => Some(code),
                _ => None,
            };
            (r.code(), nak)
        }
    }

    fn entry(slot: Slot, data: &[u8]) -> CommitEntry {
        CommitEntry {
            slot,
            source: CommitSource::Staged,
            len: data.len() as u16,
        }
    }

    /// A COMMIT of `slots` staged back to back, with the right digest.
    fn commit_of(slots: &[(Slot, &[u8])]) -> Command<'static> {
        Command::Commit {
            entries: slots.iter().map(|(s, d)| entry(*s, d)).collect(),
            digest: commit_digest(slots.iter().map(|(s, d)| (*s, *d))),
        }
    }

    fn commit_ack_digest(out: &[u8]) -> [u8; DIGEST_LEN] {
        match answer(out) {
            Response::CommitAck { digest, .. } => digest,
            other => panic!("expected COMMIT_ACK, got {other:?}"),
        }
    }

    #[test]
    fn commands_before_hello_get_need_hello() {
        let mut h = Harness::new();
        let (out, _) = h.send(&Command::Hash {
            slots: vec![Slot::Certificate],
        });
        assert_eq!(Harness::code_of(&out).1, Some(ErrorCode::NeedHello));
        let (out, _) = h.send(&Command::Reset);
        assert_eq!(Harness::code_of(&out).1, Some(ErrorCode::NeedHello));
    }

    #[test]
    fn put_commit_makes_all_slots_live_or_none() {
        let mut h = Harness::new();
        h.send(&Command::Hello { version: 1 });
        let cert = b"CERTIFICATE".repeat(50);
        let name = b"thing-1";
        let image = [&cert[..], name].concat();
        // Out of order, in two pieces: the staging area is offset-addressed.
        h.send(&Command::Put {
            offset: 300,
            data: &image[300..],
        });
        h.send(&Command::Put {
            offset: 0,
            data: &image[..300],
        });
        // A wrong digest: nothing becomes live.
        let Command::Commit { entries, .. } =
            commit_of(&[(Slot::Certificate, &cert), (Slot::ThingName, name)])
        else {
            unreachable!()
        };
        let (out, _) = h.send(&Command::Commit {
            entries: entries.clone(),
            digest: [0; DIGEST_LEN],
        });
        assert_eq!(Harness::code_of(&out).1, Some(ErrorCode::HashMismatch));
        assert_eq!(h.board.flash.certificate(), None);
        assert!(!h.board.flash_path.exists());
        // Lengths that split the staged bytes differently from what the digest covers.
        let mut shifted = entries.clone();
        shifted[0].len -= 1;
        shifted[1].len += 1;
        let (out, _) = h.send(&Command::Commit {
            entries: shifted,
            digest: commit_digest([(Slot::Certificate, &cert[..]), (Slot::ThingName, name)]),
        });
        assert_eq!(Harness::code_of(&out).1, Some(ErrorCode::HashMismatch));
        // Correct: both live, file written, and the answer carries the read-back digest.
        let want = commit_digest([(Slot::Certificate, &cert[..]), (Slot::ThingName, name)]);
        let (out, _) = h.send(&commit_of(&[
            (Slot::Certificate, &cert),
            (Slot::ThingName, name),
        ]));
        assert_eq!(
            Harness::code_of(&out),
            (crate::wire::protocol::rsp::COMMIT_ACK, None)
        );
        assert_eq!(commit_ack_digest(&out), want);
        let on_disk = Flash::load(&h.board.flash_path).unwrap();
        assert_eq!(on_disk.certificate(), Some(&cert[..]));
        assert_eq!(on_disk.thing_name(), Some("thing-1"));
        assert_eq!(on_disk.generation(), 1);
    }

    #[test]
    fn a_missing_put_is_reported_as_incomplete_or_mismatch_and_a_resend_repairs_it() {
        let mut h = Harness::new();
        h.send(&Command::Hello { version: 1 });
        let cert = b"C".repeat(600);
        let key = b"K".repeat(200);
        let image = [&cert[..], &key[..]].concat();
        let commit = commit_of(&[(Slot::Certificate, &cert), (Slot::PrivateKey, &key)]);
        // The last PUT is lost: the staging area is too short.
        h.send(&Command::Put {
            offset: 0,
            data: &image[..500],
        });
        let (out, _) = h.send(&commit);
        match answer(&out) {
            Response::Nak { code, detail, .. } => {
                assert_eq!(code, ErrorCode::Incomplete);
                assert_eq!(
                    detail,
                    Slot::Certificate as u8,
                    "the first slot missing bytes"
                );
            }
            other => panic!("expected INCOMPLETE, got {other:?}"),
        }
        // A middle PUT lost (a gap reads as zeros): the digest differs.
        h.send(&Command::Put {
            offset: 700,
            data: &image[700..],
        });
        let (out, _) = h.send(&commit);
        assert_eq!(Harness::code_of(&out).1, Some(ErrorCode::HashMismatch));
        // The station resends the missing PUT and commits again (a new seq): success.
        h.send(&Command::Put {
            offset: 500,
            data: &image[500..700],
        });
        let (out, _) = h.send(&commit);
        assert_eq!(Harness::code_of(&out).1, None);
        assert_eq!(h.board.flash.certificate(), Some(&cert[..]));
        assert_eq!(h.board.flash.private_key(), Some(&key[..]));
        assert_eq!(h.board.flash.generation(), 1);
    }

    #[test]
    fn a_weak_flash_cell_shows_in_the_read_back_digest_and_in_hash() {
        let mut h = Harness::new();
        h.send(&Command::Hello { version: 1 });
        h.board.faults.flip_bit_in = Some(Slot::RootCa);
        let (cert, ca) = (b"cert".to_vec(), b"root ca".to_vec());
        h.send(&Command::Put {
            offset: 0,
            data: &[&cert[..], &ca[..]].concat(),
        });
        let (out, _) = h.send(&commit_of(&[
            (Slot::Certificate, &cert),
            (Slot::RootCa, &ca),
        ]));
        let sent = commit_digest([(Slot::Certificate, &cert[..]), (Slot::RootCa, &ca[..])]);
        assert_ne!(commit_ack_digest(&out), sent, "the read-back differs");
        // HASH names the slot that differs, in one round trip.
        let (out, _) = h.send(&Command::Hash {
            slots: vec![Slot::Certificate, Slot::RootCa],
        });
        let Response::HashAck { entries } = answer(&out) else {
            panic!("expected HASH_ACK")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(
            (entries[0].slot, entries[0].sha256),
            (Slot::Certificate, sha256(&cert))
        );
        assert_eq!(entries[1].slot, Slot::RootCa);
        assert_ne!(entries[1].sha256, sha256(&ca));
    }

    #[test]
    fn retransmitted_commit_is_replayed_not_reexecuted() {
        let mut h = Harness::new();
        h.send(&Command::Hello { version: 1 });
        h.send(&Command::Put {
            offset: 0,
            data: b"CA",
        });
        let commit = commit_of(&[(Slot::RootCa, b"CA")]);
        let (first, _) = h.send_seq(&commit, 500);
        let (again, _) = h.send_seq(&commit, 500);
        assert_eq!(first, again, "same answer");
        assert_eq!(h.board.flash.generation(), 1, "committed once");
        // A new command with a new seq is executed (and fails: staging was consumed).
        let (out, _) = h.send_seq(&commit, 501);
        assert_eq!(Harness::code_of(&out).1, Some(ErrorCode::Incomplete));
    }

    #[test]
    fn reboot_loses_staged_data_and_session() {
        let mut h = Harness::new();
        h.send(&Command::Hello { version: 1 });
        h.send(&Command::Put {
            offset: 0,
            data: b"CA",
        });
        let (_, outcome) = h.send(&Command::Reset);
        assert_eq!(outcome, Outcome::Reboot);
        h.board.reboot();
        h.send(&Command::Hello { version: 1 });
        let (out, _) = h.send(&commit_of(&[(Slot::RootCa, b"CA")]));
        assert_eq!(Harness::code_of(&out).1, Some(ErrorCode::Incomplete));
    }

    #[test]
    fn private_key_is_not_readable_and_ranges_are_checked() {
        let mut h = Harness::with_params(BoardParams {
            max_chunk: 64,
            rx_buffer: 4096,
        });
        h.send(&Command::Hello { version: 1 });
        let (out, _) = h.send(&Command::Read {
            slot: Slot::PrivateKey,
            offset: 0,
            len: 16,
        });
        assert_eq!(Harness::code_of(&out).1, Some(ErrorCode::AccessDenied));
        let (out, _) = h.send(&Command::Read {
            slot: Slot::Certificate,
            offset: 1,
            len: 16,
        });
        assert_eq!(Harness::code_of(&out).1, Some(ErrorCode::OutOfRange));
        let big = vec![1u8; 100];
        let (out, _) = h.send(&Command::Put {
            offset: (STAGING_CAPACITY - 99) as u32,
            data: &big,
        });
        assert_eq!(Harness::code_of(&out).1, Some(ErrorCode::OutOfRange));
        let (out, _) = h.send(&Command::Put {
            offset: 0,
            data: &vec![1u8; h.board.params.max_chunk as usize + 1],
        });
        assert_eq!(Harness::code_of(&out).1, Some(ErrorCode::OutOfRange));
        // A slot longer than its capacity.
        let (out, _) = h.send(&Command::Commit {
            entries: vec![CommitEntry {
                slot: Slot::ThingName,
                source: CommitSource::Staged,
                len: 129,
            }],
            digest: [0; DIGEST_LEN],
        });
        assert_eq!(Harness::code_of(&out).1, Some(ErrorCode::OutOfRange));
    }

    #[test]
    fn board_key_commits_only_after_gen_csr() {
        let mut h = Harness::new();
        h.send(&Command::Hello { version: 1 });
        let key_entry = CommitEntry {
            slot: Slot::PrivateKey,
            source: CommitSource::BoardKey,
            len: 0,
        };
        let key_only = Command::Commit {
            entries: vec![key_entry],
            digest: commit_digest([]),
        };
        let (out, _) = h.send(&key_only);
        assert_eq!(Harness::code_of(&out).1, Some(ErrorCode::NothingStaged));
        let (out, _) = h.send(&Command::GenCsr {
            key_type: KEY_TYPE_P256,
            format: CsrFormat::Der,
            subject: SubjectAttrs {
                attrs: vec![(attr::COMMON_NAME, "x"), (attr::SERIAL_NUMBER, "T-1")],
            },
        });
        assert_eq!(
            Harness::code_of(&out),
            (crate::wire::protocol::rsp::CSR, None)
        );
        let (out, _) = h.send(&key_only);
        assert_eq!(Harness::code_of(&out).1, None);
        let key = h.board.flash.private_key().unwrap();
        assert!(std::str::from_utf8(key).unwrap().contains("PRIVATE KEY"));
    }

    #[test]
    fn random_frames_never_panic_and_always_get_an_answer() {
        let mut h = Harness::new();
        h.send(&Command::Hello { version: 1 });
        let mut rng = fastrand::Rng::with_seed(3);
        let codes = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x42, 0x81, 0xFF];
        for i in 0..3000u32 {
            let code = codes[rng.usize(..codes.len())];
            if code == cmd::RESET || code == cmd::HELLO {
                continue;
            }
            let len = rng.usize(..80);
            let payload: Vec<u8> = (0..len)
                .map(|_| if rng.bool() { rng.u8(0..8) } else { rng.u8(..) })
                .collect();
            let mut wire = Vec::new();
            crate::wire::codec::encode_frame(code, i as u16, &payload, &[], &mut wire).unwrap();
            let mut asm = FrameAssembler::new();
            let (_, ev) = asm.push(&wire);
            let frame = ev.unwrap().unwrap();
            let mut out = Vec::new();
            let outcome = h.board.handle(&frame, &mut out);
            assert_ne!(outcome, Outcome::PowerCut);
            assert!(
                !out.is_empty(),
                "code {code:#x} payload {payload:?} got no answer"
            );
            // The answer itself is a valid response.
            let (code, seq, payload) = decode_one(&out);
            assert_eq!(seq, i as u16);
            Response::decode(&frame_of(code, seq, &payload)).unwrap();
        }
    }
}
