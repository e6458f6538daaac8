//! The identity write: the staging image and COMMIT built from the slots, the PUT chunk
//! size, and the blocking loop that streams the PUTs within the board's RX buffer with COMMIT
//! right behind the last one. Which frames go out, and which again, is decided by the
//! [`PipelinedWrite`] state machine (`state.rs`); COMMIT's answer carries the digest the board
//! read back from its flash.

use std::collections::HashSet;
use std::time::Instant;

use zeroize::{Zeroize, Zeroizing};

use super::state::{
    Committed, PUT_HEADER, PipelinedWrite, Timing, Transmit, WriteFrame, WriteStep,
};
use super::{BoardInfo, JigLink, MAX_CHUNK, SlotWrite, WriteReport};
use crate::error::JigError;
use crate::wire::protocol::{self, CommitEntry, CommitSource, Slot};
use crate::wire::{Command, codec};

impl JigLink {
    /// Writes the slots and commits them, with the board-generated key when `gen_csr` made one
    /// on this link and `items` has no private key. All slots become live together or none
    /// does. Pipelined: the PUTs go out back to back within the board's RX buffer and COMMIT
    /// right behind the last one. COMMIT's answer carries the digest the board reads back from
    /// its flash; [`WriteReport::verified`] says whether it matches what was sent.
    /// `progress(done, total)` is called with slot bytes acknowledged.
    pub fn write_identity(
        &mut self,
        items: &[SlotWrite<'_>],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<WriteReport, JigError> {
        self.write(items, progress)
    }

    /// [`write_identity`](Self::write_identity) that insists on the read-back: `Ok` only when
    /// the digest the board read back after committing matches. Otherwise the board has
    /// committed something else than was sent (a flash fault): every slot's HASH is asked in
    /// one round trip and the error, [`JigError::VerifyMismatch`], names the slot that
    /// differs. The previous identity is gone then; write again.
    pub fn write_and_verify(
        &mut self,
        items: &[SlotWrite<'_>],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<WriteReport, JigError> {
        let report = self.write(items, progress)?;
        if report.verified {
            return Ok(report);
        }
        match self.verify(items) {
            Err(e) => Err(e),
            Ok(()) => Err(self.protocol_error(
                "COMMIT",
                "the digest read back after COMMIT differs from the one sent, yet every slot's \
                 HASH matches"
                    .into(),
            )),
        }
    }

    fn write(
        &mut self,
        items: &[SlotWrite<'_>],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<WriteReport, JigError> {
        validate(items)?;
        let board = self.ensure_hello()?;
        let before = self.stats;

        // The staging image: the slot values back to back, in the order COMMIT lists them.
        let total: usize = items.iter().map(|i| i.data.len()).sum();
        let mut image = Zeroizing::new(Vec::with_capacity(total));
        for item in items {
            image.extend_from_slice(item.data);
        }
        let mut entries: Vec<CommitEntry> = items
            .iter()
            .map(|i| CommitEntry {
                slot: i.slot,
                source: CommitSource::Staged,
                // validate() checked it fits the slot (≤ 8192).
                len: i.data.len() as u16,
            })
            .collect();
        let board_key = self.board_key_staged && !items.iter().any(|i| i.slot == Slot::PrivateKey);
        if board_key {
            entries.push(CommitEntry {
                slot: Slot::PrivateKey,
                source: CommitSource::BoardKey,
                len: 0,
            });
        }
        let digest = protocol::commit_digest(items.iter().map(|i| (i.slot, i.data)));
        let commit = Command::Commit { entries, digest };
        let chunk = chunk_size(&board);
        let chunks: Vec<(usize, usize)> = (0..total)
            .step_by(chunk)
            .map(|off| (off, chunk.min(total - off)))
            .collect();

        progress(0, total);
        let started = Instant::now();
        let committed =
            self.stream_and_commit(&image, &chunks, &commit, board.rx_buffer as usize, progress);
        let elapsed = started.elapsed();
        // The frames held the slot contents (a private key among them).
        self.wire.zeroize();
        self.batch.zeroize();
        let committed = committed?;
        if board_key || items.iter().any(|i| i.slot == Slot::PrivateKey) {
            self.board_key_staged = false;
        }
        let verified = committed.digest == digest;
        if verified {
            tracing::debug!(port = %self.port, slots = items.len(), bytes = total,
                generation = committed.generation, rounds = committed.rounds,
                "identity committed and verified");
        } else {
            tracing::warn!(port = %self.port, generation = committed.generation,
                "the digest the board read back after COMMIT differs from the one sent");
        }
        Ok(WriteReport {
            bytes: total,
            slots: items.iter().map(|i| (i.slot, i.data.len())).collect(),
            board_key_committed: board_key,
            generation: committed.generation,
            verified,
            commit_rounds: committed.rounds,
            frames_sent: self.stats.frames_sent - before.frames_sent,
            wire_bytes_written: self.stats.wire_bytes_written - before.wire_bytes_written,
            retransmissions: self.stats.retransmissions - before.retransmissions,
            elapsed,
        })
    }

    /// Streams `chunks` of `image` as PUTs with `commit` right behind the last one, keeping
    /// the wire bytes in flight within `budget` (the board's RX buffer), and waits for
    /// COMMIT's answer. What to send and what to send again is the [`PipelinedWrite`]'s
    /// call; this loop only writes its frames, reads the board's answers and feeds them to it.
    fn stream_and_commit(
        &mut self,
        image: &[u8],
        chunks: &[(usize, usize)],
        commit: &Command<'_>,
        budget: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Committed, JigError> {
        let slots = match commit {
            Command::Commit { entries, .. } => entries.len(),
            _ => 0,
        };
        let total = image.len();
        self.encode(commit, 0)?;
        let commit_wire = self.wire.len();
        let mut write = PipelinedWrite::new(
            chunks.to_vec(),
            slots,
            commit_wire,
            budget,
            Timing::of(&self.settings),
        );
        loop {
            // Fill the window: the PUTs, then the COMMIT right behind the last one.
            while let Some(t) = write.poll_new(&mut self.seq, Instant::now()) {
                self.encode_frame(&t, image, chunks, commit)?;
                self.stage_wire(false);
            }
            self.flush("PUT")?;

            let input = self.recv(write.deadline(Instant::now()))?;
            match write
                .handle(input, Instant::now())
                .map_err(|f| self.failure(f))?
            {
                WriteStep::Continue => {}
                WriteStep::Stray => self.stats.stray_frames += 1,
                WriteStep::Progress(done) => progress(done, total),
                WriteStep::Repair { code, rounds } => {
                    tracing::debug!(port = %self.port, %code, rounds,
                        "staged data incomplete or different at COMMIT; resending");
                }
                WriteStep::Committed(committed) => {
                    if write.acknowledged() < total {
                        progress(total, total);
                    }
                    return Ok(committed);
                }
            }
            while let Some(t) = write
                .poll_resend(Instant::now())
                .map_err(|f| self.failure(f))?
            {
                tracing::debug!(port = %self.port, command = t.command(), seq = t.seq,
                    tries = t.tries, "retransmitting");
                self.encode_frame(&t, image, chunks, commit)?;
                self.stage_wire(t.is_retransmission());
            }
            self.flush(if write.commit_in_flight() {
                "COMMIT"
            } else {
                "PUT"
            })?;
        }
    }

    /// Encodes the frame `t` names into `self.wire`: a PUT of its chunk of `image`, or
    /// `commit`.
    fn encode_frame(
        &mut self,
        t: &Transmit,
        image: &[u8],
        chunks: &[(usize, usize)],
        commit: &Command<'_>,
    ) -> Result<(), JigError> {
        match t.frame {
            WriteFrame::Put(c) => {
                let (off, len) = chunks[c];
                let put = Command::Put {
                    offset: off as u32,
                    data: &image[off..off + len],
                };
                self.encode(&put, t.seq)
            }
            WriteFrame::Commit => self.encode(commit, t.seq),
        }
    }
}

/// Rejects requests the board would refuse anyway, before anything is sent.
pub(super) fn validate(items: &[SlotWrite<'_>]) -> Result<(), JigError> {
    let mut seen = HashSet::new();
    for item in items {
        let reason = if item.data.is_empty() {
            Some("no content")
        } else if item.data.len() > item.slot.capacity() {
            Some("larger than the slot's capacity")
        } else if !seen.insert(item.slot) {
            Some("slot listed twice")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(JigError::BadRequest {
                slot: item.slot,
                len: item.data.len(),
                reason,
            });
        }
    }
    Ok(())
}

/// The PUT data size: the board's chunk limit, and small enough that two PUT frames fit in
/// its RX buffer (one being handled while the next streams in); one when two cannot.
pub(super) fn chunk_size(board: &BoardInfo) -> usize {
    let max = (board.max_chunk as usize).clamp(1, MAX_CHUNK);
    let rx = board.rx_buffer as usize;
    let half = rx / 2;
    if codec::wire_len_for_payload(PUT_HEADER + 1) <= half {
        largest_chunk(max, half)
    } else {
        largest_chunk(max, rx)
    }
}

/// The largest chunk ≤ `max` whose PUT frame takes at most `budget` wire bytes (at least 1;
/// HELLO checked that one byte fits the RX buffer).
fn largest_chunk(max: usize, budget: usize) -> usize {
    let fits = |c: usize| codec::wire_len_for_payload(PUT_HEADER + c) <= budget;
    if fits(max) {
        return max;
    }
    let (mut lo, mut hi) = (1, max);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) { lo = mid } else { hi = mid - 1 }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(max_chunk: u16, rx_buffer: u16) -> BoardInfo {
        BoardInfo {
            protocol_version: 1,
            serial: "S".into(),
            hw_rev: "A".into(),
            fw_version: "1".into(),
            mac: [0; 6],
            capabilities: 0,
            max_chunk,
            rx_buffer,
            thing_name: None,
        }
    }

    #[test]
    fn two_put_frames_fit_the_rx_buffer() {
        assert_eq!(chunk_size(&info(1024, 4096)), 1024);
        let c = chunk_size(&info(4092, 4096));
        assert!(2 * codec::wire_len_for_payload(PUT_HEADER + c) <= 4096);
        assert!(2 * codec::wire_len_for_payload(PUT_HEADER + c + 1) > 4096);
        let c = chunk_size(&info(4000, 600));
        assert!(codec::wire_len_for_payload(PUT_HEADER + c) <= 300);
        assert!(codec::wire_len_for_payload(PUT_HEADER + c + 1) > 300);
        assert_eq!(chunk_size(&info(60_000, 60_000)), MAX_CHUNK);
        // Too small for two frames of one byte: one frame, as large as fits.
        let tiny = codec::wire_len_for_payload(PUT_HEADER + 1) + 3;
        assert_eq!(chunk_size(&info(100, tiny as u16)), 4);
    }

    #[test]
    fn validation_rejects_bad_requests_without_content_in_the_error() {
        let key = b"-----BEGIN PRIVATE KEY----- secret";
        let big = vec![b'x'; Slot::ThingName.capacity() + 1];
        for items in [
            vec![SlotWrite {
                slot: Slot::Certificate,
                data: &[],
            }],
            vec![SlotWrite {
                slot: Slot::ThingName,
                data: &big,
            }],
            vec![
                SlotWrite {
                    slot: Slot::PrivateKey,
                    data: key,
                },
                SlotWrite {
                    slot: Slot::PrivateKey,
                    data: key,
                },
            ],
        ] {
            let err = validate(&items).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains("secret"));
        }
        let dbg = format!(
            "{:?}",
            SlotWrite {
                slot: Slot::PrivateKey,
                data: key
            }
        );
        assert!(!dbg.contains("secret"));
    }
}
