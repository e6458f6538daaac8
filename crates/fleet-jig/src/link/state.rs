//! The link's retransmission rules as state machines without I/O, kept apart from the
//! blocking loops that move the bytes (as rumqttc keeps `state.rs` apart from
//! `eventloop.rs`). What the link observed goes in — an answer, a frame that arrived corrupt,
//! a wait that ran out ([`Input`]) — and what to send comes out ([`Transmit`], or a step to
//! take). The caller passes `now`: nothing here reads a clock or touches a port, so every
//! rule is tested with made-up instants.
//!
//! - [`Exchange`]: one command, one answer (HELLO, GEN_CSR, HASH, READ, ERASE, RESET),
//!   stop-and-wait; `io.rs` runs it.
//! - [`PipelinedWrite`]: the identity write, selective repeat: PUTs streamed within the
//!   board's RX buffer ([`PutWindow`]) and COMMIT right behind the last one; `write.rs` runs
//!   it.
//!
//! The repair rules (`docs/jig-protocol.md`, section 3, and "Pipelined write"):
//!
//! | what happened                                   | what the machines do                      |
//! |-------------------------------------------------|-------------------------------------------|
//! | no answer by a frame's deadline (timeout)       | resend every frame whose deadline passed  |
//! | an answer that fails CRC/COBS (corrupt frame)   | resend the oldest frame in flight (the board replays its answer) |
//! | NAK BAD_CRC                                     | resend the frame it names; the oldest in flight if its seq is not ours |
//! | NAK BUSY                                        | resend after 10 ms × tries                |
//! | an answer to a frame sent after an unanswered one (lost frame) | resend the unanswered one now |
//! | an answer to nothing in flight (late ack)       | count it, ignore it                       |
//! | NAK INCOMPLETE / HASH_MISMATCH to COMMIT        | resend the unacknowledged PUTs (all, if every one was acknowledged), then a new COMMIT; at most `retries + 1` COMMITs |
//! | NAK NEED_HELLO                                  | stop: the board rebooted                  |
//! | any other NAK                                   | stop: the pipelined write fails; an exchange returns the NAK to its caller |
//! | a frame already sent `retries + 1` times        | stop: [`Failure::GaveUp`], garbled or timed out |

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::port::{PortSettings, line_time};
use super::window::PutWindow;
use crate::wire::Response;
use crate::wire::codec;
use crate::wire::protocol::{DIGEST_LEN, ErrorCode};

/// Bytes of a PUT payload before its data: the staging offset.
pub(crate) const PUT_HEADER: usize = 4;
/// Wire size of a PUT_ACK and of a COMMIT_ACK, for deadline estimates.
const ACK_WIRE: usize = codec::wire_len_for_payload(6);
const COMMIT_ACK_WIRE: usize = codec::wire_len_for_payload(5 + DIGEST_LEN);
/// The COMMIT's place in the send window (PUTs use their chunk index).
const COMMIT_FRAME: usize = usize::MAX;
/// How long to wait after NAK BUSY, per send of the frame so far.
const BUSY_BACKOFF: Duration = Duration::from_millis(10);
/// Line time an exchange budgets for its answer (a READ_ACK of a 1 KiB chunk; larger
/// answers only occur with boards that announce a larger `max_chunk`).
const ANSWER_BUDGET: usize = if codec::MAX_WIRE < 1024 {
    codec::MAX_WIRE
} else {
    1024
};

/// The link's timing: baud rate, answer timeouts and how often a frame may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub(crate) baud: u32,
    /// Wait for an answer beyond the line time of what is in flight.
    pub(crate) timeout: Duration,
    /// The same for GEN_CSR, COMMIT and ERASE.
    pub(crate) long_timeout: Duration,
    /// Sends of one frame before giving up (`retries + 1`).
    pub(crate) max_tries: u32,
}

impl Timing {
    pub(crate) fn of(settings: &PortSettings) -> Timing {
        Timing {
            baud: settings.baud,
            timeout: settings.timeout,
            long_timeout: settings.long_timeout,
            max_tries: settings.retries + 1,
        }
    }

    fn wait(&self, slow: bool) -> Duration {
        if slow {
            self.long_timeout
        } else {
            self.timeout
        }
    }
}

/// What the link observed on the port.
#[derive(Debug)]
pub(crate) enum Input {
    /// The wait for an answer ran out.
    Timeout,
    /// A frame arrived that failed its CRC, COBS or length check.
    Corrupt,
    /// An answer, decoded.
    Reply { seq: u16, reply: Response<'static> },
}

/// Why a machine stopped without the answer it waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// `command` was sent `tries` times without a usable answer. `garbled` counts the
    /// answers that arrived corrupt and the NAK BAD_CRCs meanwhile: any means the line
    /// garbles frames, none means the board does not answer.
    GaveUp {
        command: &'static str,
        tries: u32,
        garbled: u64,
    },
    /// NAK NEED_HELLO: the board rebooted, its staged data is gone.
    Rebooted,
    /// The board refused `command` and a retransmission will not change its mind.
    Nak {
        command: &'static str,
        code: ErrorCode,
        detail: u8,
        text: String,
    },
    /// An answer that does not fit what was sent.
    Protocol {
        command: &'static str,
        detail: String,
    },
}

/// Whether an input is a NAK BAD_CRC: the board could not read one of our frames.
fn is_nak_bad_crc(input: &Input) -> bool {
    matches!(
        input,
        Input::Reply {
            reply: Response::Nak {
                code: ErrorCode::BadCrc,
                ..
            },
            ..
        }
    )
}

// ---- one command, one answer ----

/// What to do after an [`Exchange`] took an input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ExchangeStep {
    /// Send the command again now.
    Resend,
    /// Send the command again after this pause (NAK BUSY).
    Backoff(Duration),
    /// An answer to some earlier command (a late duplicate): dropped; keep waiting until the
    /// same deadline.
    Stray,
    /// The answer. NAKs other than BAD_CRC, BUSY and NEED_HELLO are answers too: what they
    /// mean depends on the command.
    Done(Response<'static>),
}

/// One command and its answer, stop-and-wait: the command goes out, the link waits for the
/// answer with its sequence number, and sends the command again (byte-identical) when the
/// answer does not come or comes garbled.
#[derive(Debug)]
pub(crate) struct Exchange {
    seq: u16,
    command: &'static str,
    /// The command is HELLO: NEED_HELLO is then an answer, not a reboot.
    hello: bool,
    /// Wait for the answer after the line time.
    wait: Duration,
    /// Line time of the command and its answer.
    line: Duration,
    max_tries: u32,
    tries: u32,
    garbled: u64,
    deadline: Option<Instant>,
}

impl Exchange {
    /// `command` (its name), sent as `wire_len` bytes with `seq`; `slow` for the commands
    /// that write flash or make a key.
    pub(crate) fn new(
        seq: u16,
        command: &'static str,
        wire_len: usize,
        slow: bool,
        timing: Timing,
    ) -> Exchange {
        Exchange {
            seq,
            command,
            hello: command == "HELLO",
            wait: timing.wait(slow),
            line: line_time(wire_len + ANSWER_BUDGET, timing.baud),
            max_tries: timing.max_tries,
            tries: 0,
            garbled: 0,
            deadline: None,
        }
    }

    /// Starts a send of the command: how many sends came before it (0: the first, else a
    /// retransmission), or [`Failure::GaveUp`] when it has been sent `retries + 1` times.
    pub(crate) fn start_try(&mut self) -> Result<u32, Failure> {
        if self.tries == self.max_tries {
            return Err(Failure::GaveUp {
                command: self.command,
                tries: self.tries,
                garbled: self.garbled,
            });
        }
        self.tries += 1;
        Ok(self.tries - 1)
    }

    /// The command is on the line at `now`: its answer is due by [`deadline`](Self::deadline).
    pub(crate) fn sent(&mut self, now: Instant) {
        self.deadline = Some(now + self.wait + self.line);
    }

    /// When to stop waiting for the answer to the last send.
    pub(crate) fn deadline(&self, now: Instant) -> Instant {
        self.deadline.unwrap_or(now)
    }

    pub(crate) fn handle(&mut self, input: Input) -> Result<ExchangeStep, Failure> {
        if is_nak_bad_crc(&input) {
            // The board could not read our frame (its seq may be garbled too).
            self.garbled += 1;
            return Ok(ExchangeStep::Resend);
        }
        match input {
            Input::Timeout => Ok(ExchangeStep::Resend),
            // Most likely our answer, garbled: ask again (the board replays it).
            Input::Corrupt => {
                self.garbled += 1;
                Ok(ExchangeStep::Resend)
            }
            Input::Reply { seq, .. } if seq != self.seq => Ok(ExchangeStep::Stray),
            Input::Reply {
                reply:
                    Response::Nak {
                        code: ErrorCode::Busy,
                        ..
                    },
                ..
            } => Ok(ExchangeStep::Backoff(BUSY_BACKOFF * self.tries)),
            Input::Reply {
                reply:
                    Response::Nak {
                        code: ErrorCode::NeedHello,
                        ..
                    },
                ..
            } if !self.hello => Err(Failure::Rebooted),
            Input::Reply { reply, .. } => Ok(ExchangeStep::Done(reply)),
        }
    }
}

// ---- the pipelined write ----

/// A frame of the pipelined write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteFrame {
    /// The PUT of chunk `n` (its place in the staging image is `chunks[n]`).
    Put(usize),
    Commit,
}

/// A frame to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transmit {
    pub(crate) seq: u16,
    pub(crate) frame: WriteFrame,
    /// Times the frame was sent before (0: the first send).
    pub(crate) tries: u32,
}

impl Transmit {
    pub(crate) fn is_retransmission(&self) -> bool {
        self.tries > 0
    }

    pub(crate) fn command(&self) -> &'static str {
        match self.frame {
            WriteFrame::Put(_) => "PUT",
            WriteFrame::Commit => "COMMIT",
        }
    }
}

/// What COMMIT's answer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Committed {
    pub(crate) generation: u32,
    /// The digest the board read back from its flash after committing.
    pub(crate) digest: [u8; DIGEST_LEN],
    /// COMMITs sent (1, plus one per repair round).
    pub(crate) rounds: u32,
}

/// What to do after a [`PipelinedWrite`] took an input (beyond the frames it now wants to
/// resend, from [`PipelinedWrite::poll_resend`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WriteStep {
    /// Nothing to report.
    Continue,
    /// An answer to nothing in flight (a late duplicate): dropped.
    Stray,
    /// A PUT was acknowledged for the first time: this many staged bytes are acknowledged.
    Progress(usize),
    /// The board refused the COMMIT because its staged data is incomplete or differs
    /// (`code`); the missing PUTs and a new COMMIT (round `rounds`) follow.
    Repair { code: ErrorCode, rounds: u32 },
    /// COMMIT's answer: the write is done.
    Committed(Committed),
}

/// The identity write as selective repeat: every PUT of the staging image, then the
/// COMMIT, each in flight until answered, within the board's RX buffer.
#[derive(Debug)]
pub(crate) struct PipelinedWrite {
    /// (offset, length) of each PUT's data in the staging image.
    chunks: Vec<(usize, usize)>,
    /// Slots the COMMIT names (its answer must say as many).
    slots: usize,
    /// Wire size of the COMMIT frame.
    commit_wire: usize,
    timing: Timing,
    window: PutWindow,
    /// PUTs not sent yet (or to stage again), in order.
    queue: VecDeque<usize>,
    /// Acknowledged since it was last (re)queued.
    acked: Vec<bool>,
    /// Counted for progress (once per chunk, whatever is resent).
    counted: Vec<bool>,
    done: usize,
    commit_seq: Option<u16>,
    rounds: u32,
    /// Frames the last input calls for, to resend now.
    resend: VecDeque<u16>,
    resend_seen: HashSet<u16>,
    garbled: u64,
}

impl PipelinedWrite {
    /// A write of `chunks` (offset and length of each PUT's data in the staging image) and a COMMIT of `slots` slots taking `commit_wire` bytes on the wire,
    /// keeping at most `budget` wire bytes (the board's RX buffer) unanswered.
    pub(crate) fn new(
        chunks: Vec<(usize, usize)>,
        slots: usize,
        commit_wire: usize,
        budget: usize,
        timing: Timing,
    ) -> PipelinedWrite {
        let n = chunks.len();
        PipelinedWrite {
            chunks,
            slots,
            commit_wire,
            timing,
            window: PutWindow::new(budget),
            queue: (0..n).collect(),
            acked: vec![false; n],
            counted: vec![false; n],
            done: 0,
            commit_seq: None,
            rounds: 1,
            resend: VecDeque::new(),
            resend_seen: HashSet::new(),
            garbled: 0,
        }
    }

    /// The next frame sent for the first time, if the window has room: the PUTs in order,
    /// then the COMMIT right behind the last one. It takes the sequence number after `seq`.
    pub(crate) fn poll_new(&mut self, seq: &mut u16, now: Instant) -> Option<Transmit> {
        if let Some(&c) = self.queue.front() {
            let wire_len = codec::wire_len_for_payload(PUT_HEADER + self.chunks[c].1);
            if !self.window.can_send(wire_len) {
                return None;
            }
            self.queue.pop_front();
            *seq = seq.wrapping_add(1);
            let deadline = self.deadline_for(wire_len, false, now);
            self.window.sent(*seq, c, wire_len, deadline);
            return Some(Transmit {
                seq: *seq,
                frame: WriteFrame::Put(c),
                tries: 0,
            });
        }
        if self.commit_seq.is_some() || !self.window.can_send(self.commit_wire) {
            return None;
        }
        *seq = seq.wrapping_add(1);
        let deadline = self.deadline_for(self.commit_wire, true, now);
        self.window
            .sent(*seq, COMMIT_FRAME, self.commit_wire, deadline);
        self.commit_seq = Some(*seq);
        Some(Transmit {
            seq: *seq,
            frame: WriteFrame::Commit,
            tries: 0,
        })
    }

    /// The next frame the last input calls for sending again (same `seq`: the board replays
    /// answers it already gave), or [`Failure::GaveUp`] if that frame was sent `retries + 1`
    /// times already.
    pub(crate) fn poll_resend(&mut self, now: Instant) -> Result<Option<Transmit>, Failure> {
        while let Some(seq) = self.resend.pop_front() {
            if !self.resend_seen.insert(seq) {
                continue;
            }
            let Some(f) = self.window.get(seq).copied() else {
                continue;
            };
            let frame = if f.chunk == COMMIT_FRAME {
                WriteFrame::Commit
            } else {
                WriteFrame::Put(f.chunk)
            };
            let transmit = Transmit {
                seq,
                frame,
                tries: f.tries,
            };
            if f.tries >= self.timing.max_tries {
                return Err(Failure::GaveUp {
                    command: transmit.command(),
                    tries: f.tries,
                    garbled: self.garbled,
                });
            }
            let deadline = self.deadline_for(0, frame == WriteFrame::Commit, now);
            self.window.resent(seq, deadline);
            return Ok(Some(transmit));
        }
        Ok(None)
    }

    /// When to stop waiting for the next answer.
    pub(crate) fn deadline(&self, now: Instant) -> Instant {
        self.window
            .next_deadline()
            .unwrap_or_else(|| now + self.timing.timeout)
    }

    /// A COMMIT is in flight.
    pub(crate) fn commit_in_flight(&self) -> bool {
        self.commit_seq.is_some()
    }

    /// Staged bytes whose PUT the board acknowledged (each chunk counted once).
    pub(crate) fn acknowledged(&self) -> usize {
        self.done
    }

    /// Takes what the link observed at `now`.
    pub(crate) fn handle(&mut self, input: Input, now: Instant) -> Result<WriteStep, Failure> {
        self.resend.clear();
        self.resend_seen.clear();
        let (seq, reply) = match input {
            Input::Timeout => {
                self.resend.extend(self.window.expired(now));
                return Ok(WriteStep::Continue);
            }
            // Most likely the answer to the oldest frame in flight, garbled: send that
            // frame again and the board replays its answer.
            Input::Corrupt => {
                self.garbled += 1;
                self.resend.extend(self.window.oldest());
                return Ok(WriteStep::Continue);
            }
            Input::Reply { seq, reply } => (seq, reply),
        };
        let is_commit = Some(seq) == self.commit_seq;
        match reply {
            Response::PutAck { offset, len }
                if self
                    .window
                    .get(seq)
                    .is_some_and(|f| f.chunk != COMMIT_FRAME) =>
            {
                let Some((f, skipped)) = self.window.ack(seq) else {
                    return Ok(WriteStep::Continue);
                };
                let (off, clen) = self.chunks[f.chunk];
                if offset as usize != off || len as usize != clen {
                    return Err(Failure::Protocol {
                        command: "PUT",
                        detail: format!(
                            "PUT_ACK for seq {seq} acknowledges {len} bytes at {offset}, \
                             sent {clen} at {off}"
                        ),
                    });
                }
                self.acked[f.chunk] = true;
                // The board answers in order: frames sent before this one and still
                // unanswered were lost (or their answers were).
                self.resend.extend(skipped);
                if !self.counted[f.chunk] {
                    self.counted[f.chunk] = true;
                    self.done += clen;
                    return Ok(WriteStep::Progress(self.done));
                }
                Ok(WriteStep::Continue)
            }
            Response::CommitAck {
                count,
                generation,
                digest,
            } if is_commit => {
                if count as usize != self.slots {
                    return Err(Failure::Protocol {
                        command: "COMMIT",
                        detail: format!("board committed {count} slots, {} were asked", self.slots),
                    });
                }
                Ok(WriteStep::Committed(Committed {
                    generation,
                    digest,
                    rounds: self.rounds,
                }))
            }
            Response::Nak {
                code: code @ (ErrorCode::Incomplete | ErrorCode::HashMismatch),
                detail,
                text,
                ..
            } if is_commit => {
                let skipped = self.window.ack(seq).map(|(_, s)| s).unwrap_or_default();
                self.commit_seq = None;
                if self.rounds >= self.timing.max_tries {
                    return Err(Failure::Nak {
                        command: "COMMIT",
                        code,
                        detail,
                        text: text.into_owned(),
                    });
                }
                self.rounds += 1;
                if self.acked.iter().all(|a| *a) {
                    // Every PUT was acknowledged, yet the staging area differs: stage
                    // everything again.
                    self.acked.iter_mut().for_each(|a| *a = false);
                    self.queue = (0..self.chunks.len()).collect();
                } else {
                    self.resend.extend(skipped);
                }
                Ok(WriteStep::Repair {
                    code,
                    rounds: self.rounds,
                })
            }
            Response::Nak {
                code: ErrorCode::BadCrc,
                ..
            } => {
                // The board could not read one of our frames (its seq may be garbled).
                self.garbled += 1;
                if self.window.contains(seq) {
                    self.resend.push_back(seq);
                } else {
                    self.resend.extend(self.window.oldest());
                }
                Ok(WriteStep::Continue)
            }
            Response::Nak {
                code: ErrorCode::Busy,
                ..
            } if self.window.contains(seq) => {
                let tries = self.window.get(seq).map_or(1, |f| f.tries);
                self.window.postpone(seq, now + BUSY_BACKOFF * tries);
                Ok(WriteStep::Continue)
            }
            Response::Nak {
                code: ErrorCode::NeedHello,
                ..
            } => Err(Failure::Rebooted),
            Response::Nak {
                code, detail, text, ..
            } if is_commit || self.window.contains(seq) => Err(Failure::Nak {
                command: if is_commit { "COMMIT" } else { "PUT" },
                code,
                detail,
                text: text.into_owned(),
            }),
            _ => Ok(WriteStep::Stray),
        }
    }

    /// When the answer to a frame of `extra` wire bytes, sent at `now` behind the window's
    /// frames, is due: the line time of everything ahead of it and of the answers, plus the
    /// board's time (longer for COMMIT, which writes flash).
    fn deadline_for(&self, extra: usize, commit: bool, now: Instant) -> Instant {
        let answers = ACK_WIRE * (self.window.len() + 1) + if commit { COMMIT_ACK_WIRE } else { 0 };
        let bytes = self.window.bytes_in_flight() + extra + answers;
        now + self.timing.wait(commit) + line_time(bytes, self.timing.baud)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    const TIMING: Timing = Timing {
        baud: 1_000_000,
        timeout: Duration::from_millis(200),
        long_timeout: Duration::from_millis(500),
        max_tries: 4,
    };

    fn reply(seq: u16, reply: Response<'static>) -> Input {
        Input::Reply { seq, reply }
    }

    fn nak(seq: u16, code: ErrorCode) -> Input {
        reply(
            seq,
            Response::Nak {
                code,
                detail: 0,
                command: 0,
                text: Cow::Borrowed("no"),
            },
        )
    }

    // ---- the pipelined write ----

    /// A write of `n` chunks of 100 bytes and a COMMIT of 5 slots (60 wire bytes), with
    /// `budget` bytes of RX buffer, and the sequence number the link has used last.
    fn write(n: usize, budget: usize) -> (PipelinedWrite, u16) {
        let chunks = (0..n).map(|i| (i * 100, 100)).collect();
        (PipelinedWrite::new(chunks, 5, 60, budget, TIMING), 1000)
    }

    /// Everything the window lets out now.
    fn send_new(w: &mut PipelinedWrite, seq: &mut u16, now: Instant) -> Vec<Transmit> {
        std::iter::from_fn(|| w.poll_new(seq, now)).collect()
    }

    fn resends(w: &mut PipelinedWrite, now: Instant) -> Vec<(u16, WriteFrame)> {
        std::iter::from_fn(|| w.poll_resend(now).unwrap())
            .map(|t| {
                assert!(t.is_retransmission());
                (t.seq, t.frame)
            })
            .collect()
    }

    fn put_ack(seq: u16, chunk: usize) -> Input {
        reply(
            seq,
            Response::PutAck {
                offset: (chunk * 100) as u32,
                len: 100,
            },
        )
    }

    fn commit_ack(seq: u16, count: u8) -> Input {
        reply(
            seq,
            Response::CommitAck {
                count,
                generation: 7,
                digest: [3; DIGEST_LEN],
            },
        )
    }

    #[test]
    fn puts_stream_and_the_commit_goes_right_behind_them_without_waiting() {
        let (mut w, mut seq) = write(3, 4096);
        let t = Instant::now();
        let sent = send_new(&mut w, &mut seq, t);
        let frames: Vec<_> = sent.iter().map(|s| (s.seq, s.frame, s.tries)).collect();
        assert_eq!(
            frames,
            [
                (1001, WriteFrame::Put(0), 0),
                (1002, WriteFrame::Put(1), 0),
                (1003, WriteFrame::Put(2), 0),
                (1004, WriteFrame::Commit, 0),
            ]
        );
        assert_eq!(seq, 1004, "the link's counter moves on");
        assert!(w.commit_in_flight());
        for (i, s) in [1001, 1002, 1003].into_iter().enumerate() {
            let step = w.handle(put_ack(s, i), t).unwrap();
            assert_eq!(step, WriteStep::Progress((i + 1) * 100));
            assert!(resends(&mut w, t).is_empty());
        }
        assert_eq!(
            w.handle(commit_ack(1004, 5), t).unwrap(),
            WriteStep::Committed(Committed {
                generation: 7,
                digest: [3; DIGEST_LEN],
                rounds: 1
            })
        );
    }

    #[test]
    fn the_rx_buffer_holds_frames_back_until_answers_free_room() {
        let put_wire = codec::wire_len_for_payload(PUT_HEADER + 100);
        let (mut w, mut seq) = write(4, 2 * put_wire);
        let t = Instant::now();
        assert_eq!(send_new(&mut w, &mut seq, t).len(), 2, "two PUTs fit");
        w.handle(put_ack(1001, 0), t).unwrap();
        let next = send_new(&mut w, &mut seq, t);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].frame, WriteFrame::Put(2));
    }

    /// Lost frame: the board answers in order, so an answer to a later frame means the
    /// earlier one (or its answer) was lost; it is resent at once, same seq.
    #[test]
    fn a_lost_frame_is_resent_when_a_later_frame_is_answered() {
        let (mut w, mut seq) = write(3, 4096);
        let t = Instant::now();
        send_new(&mut w, &mut seq, t);
        assert_eq!(
            w.handle(put_ack(1002, 1), t).unwrap(),
            WriteStep::Progress(100)
        );
        assert_eq!(resends(&mut w, t), [(1001, WriteFrame::Put(0))]);
        // The next answer is PUT 2's: PUT 0 went out again after it, so it is not resent
        // twice.
        assert_eq!(
            w.handle(put_ack(1003, 2), t).unwrap(),
            WriteStep::Progress(200)
        );
        assert!(resends(&mut w, t).is_empty());
    }

    /// Timeout: when nothing answers, every frame whose deadline passed is resent, and only
    /// those.
    #[test]
    fn a_timeout_resends_the_frames_whose_deadline_passed() {
        let (mut w, mut seq) = write(2, 4096);
        let t = Instant::now();
        send_new(&mut w, &mut seq, t);
        assert!(w.deadline(t) > t + TIMING.timeout, "line time is added");
        // The PUTs are due; the COMMIT, with the long timeout, is not.
        let due = t + TIMING.timeout + Duration::from_millis(10);
        assert_eq!(w.handle(Input::Timeout, due).unwrap(), WriteStep::Continue);
        assert_eq!(
            resends(&mut w, due),
            [(1001, WriteFrame::Put(0)), (1002, WriteFrame::Put(1))]
        );
        // Resent, they are due again later: a timeout now resends nothing.
        assert_eq!(w.handle(Input::Timeout, due).unwrap(), WriteStep::Continue);
        assert!(resends(&mut w, due).is_empty());
        w.handle(put_ack(1001, 0), due).unwrap();
        w.handle(put_ack(1002, 1), due).unwrap();
        let commit_due = t + TIMING.long_timeout + Duration::from_millis(10);
        w.handle(Input::Timeout, commit_due).unwrap();
        assert_eq!(resends(&mut w, commit_due), [(1003, WriteFrame::Commit)]);
    }

    /// Corrupt frame: an answer that fails its check is most likely the oldest frame's; that
    /// frame is resent and the board replays its answer.
    #[test]
    fn a_corrupt_answer_resends_the_oldest_frame_in_flight() {
        let (mut w, mut seq) = write(2, 4096);
        let t = Instant::now();
        send_new(&mut w, &mut seq, t);
        w.handle(Input::Corrupt, t).unwrap();
        assert_eq!(resends(&mut w, t), [(1001, WriteFrame::Put(0))]);
        // Resent, it is now the newest: the next corrupt answer points at the next frame.
        w.handle(Input::Corrupt, t).unwrap();
        assert_eq!(resends(&mut w, t), [(1002, WriteFrame::Put(1))]);
    }

    /// NAK BAD_CRC: the board could not read a frame; the one it names is resent, or the
    /// oldest in flight when the seq it names is none of ours (garbled too).
    #[test]
    fn nak_bad_crc_resends_the_frame_it_names_or_the_oldest() {
        let (mut w, mut seq) = write(2, 4096);
        let t = Instant::now();
        send_new(&mut w, &mut seq, t);
        w.handle(nak(1002, ErrorCode::BadCrc), t).unwrap();
        assert_eq!(resends(&mut w, t), [(1002, WriteFrame::Put(1))]);
        w.handle(nak(0x5A5A, ErrorCode::BadCrc), t).unwrap();
        assert_eq!(resends(&mut w, t), [(1001, WriteFrame::Put(0))]);
    }

    /// NAK BUSY: the frame is not resent now but after 10 ms × its tries.
    #[test]
    fn nak_busy_postpones_the_frame() {
        let (mut w, mut seq) = write(1, 4096);
        let t = Instant::now();
        send_new(&mut w, &mut seq, t);
        w.handle(put_ack(1001, 0), t).unwrap();
        assert!(
            w.deadline(t) > t + TIMING.long_timeout,
            "the COMMIT is left"
        );
        w.handle(nak(1002, ErrorCode::Busy), t).unwrap();
        assert!(resends(&mut w, t).is_empty());
        assert_eq!(w.deadline(t), t + BUSY_BACKOFF);
        w.handle(Input::Timeout, t + BUSY_BACKOFF).unwrap();
        assert_eq!(
            resends(&mut w, t + BUSY_BACKOFF),
            [(1002, WriteFrame::Commit)]
        );
    }

    /// Late ack: an answer to a frame no longer in flight (a duplicate after a
    /// retransmission) is counted as stray and changes nothing.
    #[test]
    fn a_late_duplicate_answer_is_stray() {
        let (mut w, mut seq) = write(2, 4096);
        let t = Instant::now();
        send_new(&mut w, &mut seq, t);
        w.handle(put_ack(1001, 0), t).unwrap();
        assert_eq!(w.handle(put_ack(1001, 0), t).unwrap(), WriteStep::Stray);
        assert_eq!(w.handle(commit_ack(999, 5), t).unwrap(), WriteStep::Stray);
        assert_eq!(
            w.handle(nak(999, ErrorCode::Busy), t).unwrap(),
            WriteStep::Stray
        );
        assert_eq!(w.acknowledged(), 100, "counted once");
        assert!(resends(&mut w, t).is_empty());
    }

    /// NAK INCOMPLETE to COMMIT: the PUTs the board did not acknowledge go again, then a new
    /// COMMIT with a new seq.
    #[test]
    fn a_refused_commit_resends_the_unacknowledged_puts_and_commits_again() {
        let (mut w, mut seq) = write(3, 4096);
        let t = Instant::now();
        send_new(&mut w, &mut seq, t);
        // PUTs 1 and 2 were lost on the line: the board acks PUT 0, then refuses the COMMIT.
        w.handle(put_ack(1001, 0), t).unwrap();
        assert_eq!(
            w.handle(nak(1004, ErrorCode::Incomplete), t).unwrap(),
            WriteStep::Repair {
                code: ErrorCode::Incomplete,
                rounds: 2
            }
        );
        assert!(!w.commit_in_flight());
        assert_eq!(
            resends(&mut w, t),
            [(1002, WriteFrame::Put(1)), (1003, WriteFrame::Put(2))]
        );
        let again = send_new(&mut w, &mut seq, t);
        assert_eq!(
            again.iter().map(|s| (s.seq, s.frame)).collect::<Vec<_>>(),
            [(1005, WriteFrame::Commit)]
        );
        w.handle(put_ack(1002, 1), t).unwrap();
        w.handle(put_ack(1003, 2), t).unwrap();
        assert_eq!(
            w.handle(commit_ack(1005, 5), t).unwrap(),
            WriteStep::Committed(Committed {
                generation: 7,
                digest: [3; DIGEST_LEN],
                rounds: 2
            })
        );
    }

    /// NAK HASH_MISMATCH after every PUT was acknowledged: the staging area differs anyway,
    /// so all PUTs are staged again (as new frames), then a new COMMIT.
    #[test]
    fn a_digest_mismatch_after_every_put_was_acknowledged_restages_everything() {
        let (mut w, mut seq) = write(2, 4096);
        let t = Instant::now();
        send_new(&mut w, &mut seq, t);
        w.handle(put_ack(1001, 0), t).unwrap();
        w.handle(put_ack(1002, 1), t).unwrap();
        w.handle(nak(1003, ErrorCode::HashMismatch), t).unwrap();
        assert!(resends(&mut w, t).is_empty());
        let again: Vec<_> = send_new(&mut w, &mut seq, t)
            .iter()
            .map(|s| (s.seq, s.frame))
            .collect();
        assert_eq!(
            again,
            [
                (1004, WriteFrame::Put(0)),
                (1005, WriteFrame::Put(1)),
                (1006, WriteFrame::Commit)
            ]
        );
        // Progress counts each chunk once.
        assert_eq!(w.handle(put_ack(1004, 0), t).unwrap(), WriteStep::Continue);
        assert_eq!(w.acknowledged(), 200);
    }

    #[test]
    fn commit_repairs_are_bounded_by_the_try_count() {
        let (mut w, mut seq) = write(1, 4096);
        let t = Instant::now();
        for round in 1..=TIMING.max_tries {
            let sent = send_new(&mut w, &mut seq, t);
            let commit = sent.iter().find(|s| s.frame == WriteFrame::Commit).unwrap();
            if let Some(put) = sent.iter().find(|s| s.frame == WriteFrame::Put(0)) {
                w.handle(put_ack(put.seq, 0), t).unwrap();
            }
            let step = w.handle(nak(commit.seq, ErrorCode::HashMismatch), t);
            if round < TIMING.max_tries {
                assert!(matches!(step, Ok(WriteStep::Repair { .. })), "{step:?}");
            } else {
                assert_eq!(
                    step,
                    Err(Failure::Nak {
                        command: "COMMIT",
                        code: ErrorCode::HashMismatch,
                        detail: 0,
                        text: "no".into()
                    })
                );
            }
        }
    }

    /// A frame sent `retries + 1` times without an answer: the write gives up, "timed out"
    /// when nothing came back garbled, "garbled" when something did.
    #[test]
    fn a_frame_sent_too_often_gives_up_timed_out_or_garbled() {
        for garble in [false, true] {
            let (mut w, mut seq) = write(1, 4096);
            let mut t = Instant::now();
            send_new(&mut w, &mut seq, t);
            w.handle(put_ack(1001, 0), t).unwrap();
            let failure = loop {
                t = w.deadline(t);
                let input = if garble {
                    Input::Corrupt
                } else {
                    Input::Timeout
                };
                w.handle(input, t).unwrap();
                match w.poll_resend(t) {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("nothing to resend"),
                    Err(f) => break f,
                }
            };
            assert_eq!(
                failure,
                Failure::GaveUp {
                    command: "COMMIT",
                    tries: TIMING.max_tries,
                    garbled: if garble { 4 } else { 0 },
                }
            );
        }
    }

    #[test]
    fn need_hello_and_other_naks_stop_the_write() {
        let t = Instant::now();
        let (mut w, mut seq) = write(2, 4096);
        send_new(&mut w, &mut seq, t);
        assert_eq!(
            w.handle(nak(1002, ErrorCode::NeedHello), t),
            Err(Failure::Rebooted)
        );
        for (nak_seq, code, command) in [
            (1001, ErrorCode::OutOfRange, "PUT"),
            (1003, ErrorCode::CommitRefused, "COMMIT"),
        ] {
            let (mut w, mut seq) = write(2, 4096);
            send_new(&mut w, &mut seq, t);
            match w.handle(nak(nak_seq, code), t) {
                Err(Failure::Nak {
                    command: c,
                    code: got,
                    ..
                }) => assert_eq!((c, got), (command, code)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn answers_that_do_not_fit_what_was_sent_are_protocol_errors() {
        let t = Instant::now();
        let (mut w, mut seq) = write(2, 4096);
        send_new(&mut w, &mut seq, t);
        // PUT 0's ack naming PUT 1's bytes.
        assert!(matches!(
            w.handle(put_ack(1001, 1), t),
            Err(Failure::Protocol { command: "PUT", .. })
        ));
        let (mut w, mut seq) = write(1, 4096);
        send_new(&mut w, &mut seq, t);
        assert!(matches!(
            w.handle(commit_ack(1002, 4), t),
            Err(Failure::Protocol {
                command: "COMMIT",
                ..
            })
        ));
    }

    // ---- one command, one answer ----

    fn exchange() -> Exchange {
        Exchange::new(77, "HASH", 20, false, TIMING)
    }

    fn hash_ack(seq: u16) -> Input {
        reply(seq, Response::HashAck { entries: vec![] })
    }

    #[test]
    fn an_exchange_waits_for_its_answer_by_the_deadline() {
        let mut x = exchange();
        let t = Instant::now();
        assert_eq!(x.start_try(), Ok(0));
        x.sent(t);
        assert_eq!(
            x.deadline(t),
            t + TIMING.timeout + line_time(20 + ANSWER_BUDGET, TIMING.baud)
        );
        assert_eq!(
            x.handle(hash_ack(77)),
            Ok(ExchangeStep::Done(Response::HashAck { entries: vec![] }))
        );
        let mut slow = Exchange::new(1, "COMMIT", 20, true, TIMING);
        slow.start_try().unwrap();
        slow.sent(t);
        assert!(slow.deadline(t) > t + TIMING.long_timeout);
    }

    /// Timeout and lost frame: no answer by the deadline, the command goes again; after
    /// `retries + 1` sends the exchange gives up, timed out.
    #[test]
    fn an_unanswered_command_is_resent_then_times_out() {
        let mut x = exchange();
        for n in 0..TIMING.max_tries {
            assert_eq!(x.start_try(), Ok(n), "retransmission {n}");
            assert_eq!(x.handle(Input::Timeout), Ok(ExchangeStep::Resend));
        }
        assert_eq!(
            x.start_try(),
            Err(Failure::GaveUp {
                command: "HASH",
                tries: 4,
                garbled: 0
            })
        );
    }

    /// Corrupt frame and NAK BAD_CRC (whatever its seq): resend; giving up then says
    /// "garbled".
    #[test]
    fn corrupt_answers_and_nak_bad_crc_are_resent_and_reported_as_garbled() {
        let mut x = exchange();
        x.start_try().unwrap();
        assert_eq!(x.handle(Input::Corrupt), Ok(ExchangeStep::Resend));
        x.start_try().unwrap();
        assert_eq!(
            x.handle(nak(0x1234, ErrorCode::BadCrc)),
            Ok(ExchangeStep::Resend)
        );
        x.start_try().unwrap();
        x.handle(Input::Timeout).unwrap();
        x.start_try().unwrap();
        x.handle(Input::Timeout).unwrap();
        assert_eq!(
            x.start_try(),
            Err(Failure::GaveUp {
                command: "HASH",
                tries: 4,
                garbled: 2
            })
        );
    }

    /// Late ack: an answer with another seq (to an earlier command) is dropped and the
    /// exchange keeps waiting until the same deadline.
    #[test]
    fn a_late_answer_to_an_earlier_command_is_stray() {
        let mut x = exchange();
        let t = Instant::now();
        x.start_try().unwrap();
        x.sent(t);
        let due = x.deadline(t);
        assert_eq!(x.handle(hash_ack(76)), Ok(ExchangeStep::Stray));
        assert_eq!(x.deadline(t + Duration::from_millis(1)), due);
        assert!(matches!(x.handle(hash_ack(77)), Ok(ExchangeStep::Done(_))));
    }

    /// NAKs: BUSY backs off 10 ms × tries; NEED_HELLO is a reboot (except for HELLO, whose
    /// answer it is); any other NAK is the answer, for the caller to interpret.
    #[test]
    fn naks_back_off_stop_or_answer() {
        let mut x = exchange();
        x.start_try().unwrap();
        x.start_try().unwrap();
        assert_eq!(
            x.handle(nak(77, ErrorCode::Busy)),
            Ok(ExchangeStep::Backoff(Duration::from_millis(20)))
        );
        assert_eq!(
            x.handle(nak(77, ErrorCode::NeedHello)),
            Err(Failure::Rebooted)
        );
        assert!(matches!(
            x.handle(nak(77, ErrorCode::AccessDenied)),
            Ok(ExchangeStep::Done(Response::Nak {
                code: ErrorCode::AccessDenied,
                ..
            }))
        ));
        let mut hello = Exchange::new(5, "HELLO", 8, false, TIMING);
        hello.start_try().unwrap();
        assert!(matches!(
            hello.handle(nak(5, ErrorCode::NeedHello)),
            Ok(ExchangeStep::Done(_))
        ));
    }
}
