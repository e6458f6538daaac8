//! The identity write: PUTs streamed back to back within the board's RX buffer, COMMIT right
//! behind the last one, lost or garbled frames sent again, and COMMIT's answer carrying the
//! digest the board read back from its flash.

use super::*;

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
    /// COMMIT's answer. Frames lost or garbled on the line are sent again (same `seq`: the
    /// board replays answers it already gave). When the board refuses the COMMIT because
    /// staged data is missing or differs, the PUTs it did not acknowledge are sent again —
    /// all of them if it acknowledged every one — and a new COMMIT follows them.
    fn stream_and_commit(
        &mut self,
        image: &[u8],
        chunks: &[(usize, usize)],
        commit: &Command<'_>,
        budget: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Committed, JigError> {
        let put = |c: usize| {
            let (off, len) = chunks[c];
            Command::Put {
                offset: off as u32,
                data: &image[off..off + len],
            }
        };
        let slots_committed = match commit {
            Command::Commit { entries, .. } => entries.len(),
            _ => 0,
        };
        let total = image.len();
        let crc_before = self.stats.crc_errors + self.stats.naks_crc;
        self.encode(commit, 0)?;
        let commit_wire = self.wire.len();

        let mut window = PutWindow::new(budget);
        let mut queue: VecDeque<usize> = (0..chunks.len()).collect();
        // Acknowledged since it was last (re)queued / counted for progress.
        let mut acked = vec![false; chunks.len()];
        let mut counted = vec![false; chunks.len()];
        let mut done = 0;
        let mut commit_seq: Option<u16> = None;
        let mut rounds = 1;
        loop {
            // Fill the window: the PUTs, then the COMMIT right behind the last one.
            while let Some(&c) = queue.front() {
                let wire_len = codec::wire_len_for_payload(PUT_HEADER + chunks[c].1);
                if !window.can_send(wire_len) {
                    break;
                }
                queue.pop_front();
                let seq = self.next_seq();
                self.encode(&put(c), seq)?;
                self.stage_wire(false);
                let deadline = self.frame_deadline(&window, wire_len, false);
                window.sent(seq, c, wire_len, deadline);
            }
            if queue.is_empty() && commit_seq.is_none() && window.can_send(commit_wire) {
                let seq = self.next_seq();
                self.encode(commit, seq)?;
                self.stage_wire(false);
                let deadline = self.frame_deadline(&window, commit_wire, true);
                window.sent(seq, COMMIT_FRAME, commit_wire, deadline);
                commit_seq = Some(seq);
            }
            self.flush("PUT")?;

            let deadline = window
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + self.settings.timeout);
            let mut resend: Vec<u16> = Vec::new();
            match self.recv(deadline)? {
                None => {
                    self.stats.timeouts += 1;
                    resend = window.expired(Instant::now());
                }
                // Most likely the answer to the oldest frame in flight, garbled: send that
                // frame again and the board replays its answer.
                Some(Incoming::Corrupt) => resend.extend(window.oldest()),
                Some(Incoming::Reply { seq, reply }) => match reply {
                    Response::PutAck { offset, len }
                        if window.get(seq).is_some_and(|f| f.chunk != COMMIT_FRAME) =>
                    {
                        let Some((f, skipped)) = window.ack(seq) else {
                            continue;
                        };
                        let (off, clen) = chunks[f.chunk];
                        if offset as usize != off || len as usize != clen {
                            return Err(self.protocol_error(
                                "PUT",
                                format!(
                                    "PUT_ACK for seq {seq} acknowledges {len} bytes at {offset}, \
                                     sent {clen} at {off}"
                                ),
                            ));
                        }
                        acked[f.chunk] = true;
                        if !counted[f.chunk] {
                            counted[f.chunk] = true;
                            done += clen;
                            progress(done, total);
                        }
                        // The board answers in order: frames sent before this one and still
                        // unanswered were lost (or their answers were).
                        resend = skipped;
                    }
                    Response::CommitAck {
                        count,
                        generation,
                        digest,
                    } if Some(seq) == commit_seq => {
                        if count as usize != slots_committed {
                            return Err(self.protocol_error(
                                "COMMIT",
                                format!(
                                    "board committed {count} slots, {slots_committed} were asked"
                                ),
                            ));
                        }
                        if done < total {
                            progress(total, total);
                        }
                        return Ok(Committed {
                            generation,
                            digest,
                            rounds,
                        });
                    }
                    Response::Nak {
                        code: code @ (ErrorCode::Incomplete | ErrorCode::HashMismatch),
                        detail,
                        text,
                        ..
                    } if Some(seq) == commit_seq => {
                        let skipped = window.ack(seq).map(|(_, s)| s).unwrap_or_default();
                        commit_seq = None;
                        if rounds >= self.max_tries() {
                            return Err(self.nak_error("COMMIT", code, detail, &text));
                        }
                        rounds += 1;
                        tracing::debug!(port = %self.port, %code, rounds,
                            "staged data incomplete or different at COMMIT; resending");
                        if acked.iter().all(|a| *a) {
                            // Every PUT was acknowledged, yet the staging area differs: stage
                            // everything again.
                            acked.iter_mut().for_each(|a| *a = false);
                            queue = (0..chunks.len()).collect();
                        } else {
                            resend = skipped;
                        }
                    }
                    Response::Nak {
                        code: ErrorCode::BadCrc,
                        ..
                    } => {
                        // The board could not read one of our frames (its seq may be garbled).
                        self.stats.naks_crc += 1;
                        if window.contains(seq) {
                            resend.push(seq);
                        } else {
                            resend.extend(window.oldest());
                        }
                    }
                    Response::Nak {
                        code: ErrorCode::Busy,
                        ..
                    } if window.contains(seq) => {
                        let tries = window.get(seq).map_or(1, |f| f.tries);
                        window.postpone(seq, Instant::now() + Duration::from_millis(10) * tries);
                    }
                    Response::Nak {
                        code: ErrorCode::NeedHello,
                        ..
                    } => return Err(self.rebooted()),
                    Response::Nak {
                        code, detail, text, ..
                    } if Some(seq) == commit_seq => {
                        return Err(self.nak_error("COMMIT", code, detail, &text));
                    }
                    Response::Nak {
                        code, detail, text, ..
                    } if window.contains(seq) => {
                        return Err(self.nak_error("PUT", code, detail, &text));
                    }
                    _ => self.stats.stray_frames += 1,
                },
            }
            let mut seen = HashSet::new();
            for seq in resend {
                if !seen.insert(seq) {
                    continue;
                }
                let Some(f) = window.get(seq).copied() else {
                    continue;
                };
                let is_commit = f.chunk == COMMIT_FRAME;
                let command = if is_commit { "COMMIT" } else { "PUT" };
                if f.tries >= self.max_tries() {
                    let garbled = self.stats.crc_errors + self.stats.naks_crc - crc_before;
                    return Err(if garbled > 0 {
                        JigError::Garbled {
                            port: self.port.clone(),
                            command,
                            tries: f.tries,
                            crc_errors: garbled,
                        }
                    } else {
                        JigError::Timeout {
                            port: self.port.clone(),
                            command,
                            tries: f.tries,
                        }
                    });
                }
                tracing::debug!(port = %self.port, command, seq, tries = f.tries, "retransmitting");
                if is_commit {
                    self.encode(commit, seq)?;
                } else {
                    self.encode(&put(f.chunk), seq)?;
                }
                self.stage_wire(true);
                let deadline = self.frame_deadline(&window, 0, is_commit);
                window.resent(seq, deadline);
            }
            self.flush(if commit_seq.is_some() {
                "COMMIT"
            } else {
                "PUT"
            })?;
        }
    }

    /// When the answer to a frame of `extra` wire bytes, sent now behind `window`'s frames,
    /// is due: the line time of everything ahead of it and of the answers, plus the board's
    /// time (longer for COMMIT, which writes flash).
    fn frame_deadline(&self, window: &PutWindow, extra: usize, commit: bool) -> Instant {
        let answers = ACK_WIRE * (window.len() + 1) + if commit { COMMIT_ACK_WIRE } else { 0 };
        let bytes = window.bytes_in_flight() + extra + answers;
        let wait = if commit {
            self.settings.long_timeout
        } else {
            self.settings.timeout
        };
        Instant::now() + wait + self.settings.line_time(bytes)
    }
}
