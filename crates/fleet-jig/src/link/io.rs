//! The link's blocking I/O: frames encoded and written to the port in batches, bytes read
//! back and assembled into answers by a deadline, and the loop that runs one command's
//! [`Exchange`] — it only moves bytes and feeds the machine, which decides what to resend.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use super::JigLink;
use super::state::{Exchange, ExchangeStep, Input, Timing};
use crate::error::JigError;
use crate::wire::codec;
use crate::wire::protocol::{self, ErrorCode};
use crate::wire::{Command, Message, Response};

impl JigLink {
    /// One command, one answer, with retransmission. NAKs other than BAD_CRC and BUSY are
    /// returned as `Response::Nak` for the caller to interpret; NEED_HELLO becomes
    /// `BoardRebooted`.
    pub(super) fn transact(
        &mut self,
        command: &Command<'_>,
        slow: bool,
    ) -> Result<Response<'static>, JigError> {
        let name = protocol::command_name(command.code());
        let seq = self.next_seq();
        self.encode(command, seq)?;
        let mut exchange =
            Exchange::new(seq, name, self.wire.len(), slow, Timing::of(&self.settings));
        loop {
            let earlier = exchange.start_try().map_err(|f| self.failure(f))?;
            if earlier > 0 {
                tracing::debug!(port = %self.port, command = name, seq, tries = earlier, "retransmitting");
            }
            match self.send_wire(name, earlier > 0) {
                // The port would not take the frame: that try is spent.
                Err(JigError::Timeout { .. }) => continue,
                other => other?,
            }
            exchange.sent(Instant::now());
            loop {
                let input = self.recv(exchange.deadline(Instant::now()))?;
                match exchange.handle(input).map_err(|f| self.failure(f))? {
                    ExchangeStep::Stray => self.stats.stray_frames += 1,
                    ExchangeStep::Resend => break,
                    ExchangeStep::Backoff(pause) => {
                        // The board asked for time (BUSY); bounded by the try count.
                        std::thread::sleep(pause);
                        break;
                    }
                    ExchangeStep::Done(reply) => return Ok(reply),
                }
            }
        }
    }

    /// Encodes `command` with `seq` into `self.wire`.
    pub(super) fn encode(&mut self, command: &Command<'_>, seq: u16) -> Result<(), JigError> {
        self.wire.clear();
        let tail = command.write_payload(&mut self.head);
        self.payload_len = self.head.len() + tail.len();
        codec::encode_frame(command.code(), seq, &self.head, tail, &mut self.wire).map_err(
            |e| JigError::Protocol {
                port: self.port.clone(),
                command: protocol::command_name(command.code()),
                detail: format!("cannot encode: {e}"),
            },
        )?;
        Ok(())
    }

    /// Adds `self.wire` to the batch of frames to write, preceded by a lone delimiter on
    /// retransmissions so the board drops any partial frame first.
    pub(super) fn stage_wire(&mut self, retransmission: bool) {
        if retransmission {
            self.batch.push(codec::DELIMITER);
            self.stats.retransmissions += 1;
        }
        self.batch.extend_from_slice(&self.wire);
        self.stats.frames_sent += 1;
        self.stats.payload_bytes_written += self.payload_len as u64;
        self.stats.wire_bytes_written += self.wire.len() as u64 + u64::from(retransmission);
    }

    /// Writes the batch to the port in one go.
    pub(super) fn flush(&mut self, command: &'static str) -> Result<(), JigError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let result = self.io.write_all(&self.batch);
        self.batch.clear();
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                self.stats.timeouts += 1;
                Err(JigError::Timeout {
                    port: self.port.clone(),
                    command,
                    tries: 1,
                })
            }
            Err(source) => Err(JigError::Io {
                port: self.port.clone(),
                source,
            }),
        }
    }

    /// Writes `self.wire` (after a lone delimiter on a retransmission).
    fn send_wire(&mut self, command: &'static str, retransmission: bool) -> Result<(), JigError> {
        self.stage_wire(retransmission);
        self.flush(command)
    }

    /// The next thing from the board: an answer, a frame dropped as corrupt, or
    /// [`Input::Timeout`] at `deadline`. Counts what it sees in the link's stats.
    pub(super) fn recv(&mut self, deadline: Instant) -> Result<Input, JigError> {
        loop {
            while self.rx_start < self.rx_end {
                let (used, event) = self.asm.push(&self.rx[self.rx_start..self.rx_end]);
                self.rx_start += used;
                match event {
                    None => {}
                    Some(Err(e)) => {
                        self.stats.crc_errors += 1;
                        tracing::debug!(port = %self.port, error = %e, "dropped a frame");
                        return Ok(Input::Corrupt);
                    }
                    Some(Ok(frame)) => {
                        self.stats.frames_received += 1;
                        let seq = frame.seq;
                        return match Response::decode(&frame) {
                            Ok(reply) => {
                                if let Response::Nak {
                                    code: ErrorCode::BadCrc,
                                    ..
                                } = reply
                                {
                                    // The board could not read one of our frames.
                                    self.stats.naks_crc += 1;
                                }
                                Ok(Input::Reply {
                                    seq,
                                    reply: reply.into_owned(),
                                })
                            }
                            Err(e) => Err(JigError::Protocol {
                                port: self.port.clone(),
                                command: "(any)",
                                detail: format!("response code {:#04x} seq {seq}: {e}", frame.code),
                            }),
                        };
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                self.stats.timeouts += 1;
                return Ok(Input::Timeout);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.io
                .set_read_timeout(wait)
                .map_err(|source| JigError::Io {
                    port: self.port.clone(),
                    source,
                })?;
            match self.io.read(&mut self.rx) {
                Ok(0) => {
                    return Err(JigError::Io {
                        port: self.port.clone(),
                        source: io::Error::new(io::ErrorKind::UnexpectedEof, "port closed"),
                    });
                }
                Ok(n) => {
                    self.rx_start = 0;
                    self.rx_end = n;
                    self.stats.wire_bytes_read += n as u64;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(source) => {
                    return Err(JigError::Io {
                        port: self.port.clone(),
                        source,
                    });
                }
            }
        }
    }
}
