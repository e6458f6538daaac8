//! The UART model of the virtual jig, exact and without I/O. A pty moves bytes at memory
//! speed; a UART moves one byte per 10 bit times.
//!
//! - [`Timeline`] is one direction of the serial line: bytes handed to it (written by the
//!   station, or queued by the board) are stamped with the time their last bit arrives at the
//!   other end — one byte time after the previous byte, or one byte time after they were
//!   handed over, whichever is later — and are released only when that time has passed.
//!   Nothing crosses faster than the baud rate, and nothing waits longer than the line needs.
//! - [`Uart`] is the board's UART: a timeline each way, and the board's bounded RX buffer.
//!   A free board sees a frame when its delimiter has arrived; bytes that arrive while the
//!   board is busy wait in the RX buffer, and what does not fit is lost, as on a real UART.
//!   [`Uart::rx_due`] and [`Uart::tx_due`] say when the board thread must next wake: exactly
//!   when the next byte it cares about is through, never on a coarser tick.
//!
//! No clock reads here: callers pass `now`, so the model is tested with made-up instants.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::codec::{self, CodecError, DELIMITER, FrameAssembler};

/// Bits per byte on an 8N1 line (start + 8 data + stop).
const BITS_PER_BYTE: u128 = 10;

/// One burst of bytes that follow each other on the line without a gap.
#[derive(Debug)]
struct Burst {
    /// When the line started carrying `bytes[0]`.
    start: Instant,
    bytes: Vec<u8>,
    /// Bytes already released from the front.
    head: usize,
}

/// One direction of the serial line at a fixed baud rate (0 = unpaced: bytes arrive at once).
#[derive(Debug)]
pub(crate) struct Timeline {
    baud: u32,
    bursts: VecDeque<Burst>,
    /// When the last byte queued so far has crossed (the line is busy until then).
    free_at: Option<Instant>,
}

impl Timeline {
    pub(crate) fn new(baud: u32) -> Timeline {
        Timeline {
            baud,
            bursts: VecDeque::new(),
            free_at: None,
        }
    }

    pub(crate) fn is_paced(&self) -> bool {
        self.baud > 0
    }

    /// Bytes one millisecond of line carries (at least 1; `usize::MAX` unpaced).
    pub(crate) fn bytes_per_ms(&self) -> usize {
        if self.baud == 0 {
            return usize::MAX;
        }
        (u128::from(self.baud) / BITS_PER_BYTE / 1000).max(1) as usize
    }

    /// Queues `data`, handed to the line at `at` (written by the sender, or read off the pty).
    pub(crate) fn push(&mut self, data: &[u8], at: Instant) {
        if data.is_empty() {
            return;
        }
        let start = match self.free_at {
            Some(free) if free > at => free,
            _ => at,
        };
        let contiguous = self.free_at == Some(start) && start > at;
        match self.bursts.back_mut() {
            // Still sending the previous burst: these bytes follow it without a gap.
            Some(last) if contiguous && self.baud > 0 => last.bytes.extend_from_slice(data),
            _ => self.bursts.push_back(Burst {
                start,
                bytes: data.to_vec(),
                head: 0,
            }),
        }
        let last = self
            .bursts
            .back()
            .map_or(start, |b| b.start + time_of(b.bytes.len(), self.baud));
        self.free_at = Some(last);
    }

    /// Bytes queued and not yet released.
    pub(crate) fn len(&self) -> usize {
        self.bursts.iter().map(|b| b.bytes.len() - b.head).sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bursts.is_empty()
    }

    /// When the next byte is through.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let b = self.bursts.front()?;
        Some(self.due(b, b.head))
    }

    /// When the `k`-th byte from the front (0-based) is through.
    pub(crate) fn due_at(&self, mut k: usize) -> Option<Instant> {
        for b in &self.bursts {
            let left = b.bytes.len() - b.head;
            if k < left {
                return Some(self.due(b, b.head + k));
            }
            k -= left;
        }
        None
    }

    /// When the next `byte` (e.g. a frame delimiter) is through.
    pub(crate) fn next_due_of(&self, byte: u8) -> Option<Instant> {
        self.bursts.iter().find_map(|b| {
            b.bytes[b.head..]
                .iter()
                .position(|&x| x == byte)
                .map(|i| self.due(b, b.head + i))
        })
    }

    /// The bytes at the front that are through at `now` (only from the first burst; call
    /// again after [`consume`](Self::consume) for the next one).
    pub(crate) fn ready(&self, now: Instant) -> &[u8] {
        let Some(b) = self.bursts.front() else {
            return &[];
        };
        let n = if self.baud == 0 {
            if b.start <= now {
                b.bytes.len() - b.head
            } else {
                0
            }
        } else {
            // Byte i is through at start + time_of(i + 1): count those at or before `now`.
            let elapsed = now.saturating_duration_since(b.start).as_nanos();
            let through = (elapsed * u128::from(self.baud) / (BITS_PER_BYTE * 1_000_000_000))
                .min(b.bytes.len() as u128) as usize;
            // time_of rounds up; make sure the last counted byte really is due.
            let mut through = through;
            while through > b.head && self.due(b, through - 1) > now {
                through -= 1;
            }
            through.saturating_sub(b.head)
        };
        &b.bytes[b.head..b.head + n]
    }

    /// Releases `n` bytes from the front (at most the first burst's remaining bytes).
    pub(crate) fn consume(&mut self, n: usize) {
        if let Some(b) = self.bursts.front_mut() {
            b.head = (b.head + n).min(b.bytes.len());
            if b.head == b.bytes.len() {
                self.bursts.pop_front();
            }
        }
    }

    /// Forgets everything queued (a line that went dead).
    pub(crate) fn clear(&mut self) {
        self.bursts.clear();
        self.free_at = None;
    }

    fn due(&self, b: &Burst, index: usize) -> Instant {
        b.start + time_of(index + 1, self.baud)
    }
}

/// Time `n` bytes take at `baud` (10 bits each), rounded up to the nanosecond; zero unpaced.
pub(crate) fn time_of(n: usize, baud: u32) -> Duration {
    if baud == 0 {
        return Duration::ZERO;
    }
    let ns = (n as u128 * BITS_PER_BYTE * 1_000_000_000).div_ceil(u128::from(baud));
    Duration::from_nanos(ns.min(u128::from(u64::MAX)) as u64)
}

/// A frame the board took off the line, owned (the assembler's buffer is reused): code,
/// sequence number, CRC and payload, or why it was dropped.
pub(crate) type RxFrame = Result<(u8, u16, u32, Vec<u8>), CodecError>;

fn own(ev: Result<codec::Frame<'_>, CodecError>) -> RxFrame {
    ev.map(|f| (f.code, f.seq, f.crc, f.payload.to_vec()))
}

/// What came off the line for a free board: the bytes up to the next delimiter (or all that
/// are through, if none is).
#[derive(Debug)]
pub(crate) struct Received {
    /// The frame those bytes completed, if they ended one.
    pub(crate) frame: Option<RxFrame>,
    /// When the last of them arrived: a frame ending here is handled then.
    pub(crate) at: Instant,
    /// Bytes of an over-long frame that did not fit the RX buffer and were lost.
    pub(crate) overrun: u64,
}

/// The board's UART: a [`Timeline`] each way and the board's bounded RX buffer.
#[derive(Debug)]
pub(crate) struct Uart {
    /// Station → board bytes on their way.
    pub(crate) rx: Timeline,
    /// Board → station bytes on their way.
    pub(crate) tx: Timeline,
    asm: FrameAssembler,
    /// Bytes that arrived while the board was busy: its RX buffer (with the assembler's
    /// partial frame).
    held: VecDeque<u8>,
    /// The RX buffer's size in bytes.
    rx_buffer: usize,
}

impl Uart {
    pub(crate) fn new(baud: u32, rx_buffer: u16) -> Uart {
        Uart {
            rx: Timeline::new(baud),
            tx: Timeline::new(baud),
            asm: FrameAssembler::new(),
            held: VecDeque::new(),
            rx_buffer: rx_buffer as usize,
        }
    }

    /// The RX side starts empty (new board, reboot, power loss).
    pub(crate) fn reset_rx(&mut self) {
        self.asm.reset();
        self.held.clear();
    }

    /// Bytes the RX buffer can still take.
    pub(crate) fn room(&self) -> usize {
        self.rx_buffer
            .saturating_sub(self.held.len() + self.asm.pending())
    }

    /// The board is busy: bytes through the line by `until` go into its RX buffer. Returns
    /// how many did not fit and were lost.
    pub(crate) fn hold(&mut self, until: Instant) -> u64 {
        let mut lost = 0;
        loop {
            let ready = self.rx.ready(until);
            if ready.is_empty() {
                return lost;
            }
            let n = ready.len();
            let keep = n.min(
                self.rx_buffer
                    .saturating_sub(self.held.len() + self.asm.pending()),
            );
            self.held.extend(&ready[..keep]);
            lost += (n - keep) as u64;
            self.rx.consume(n);
        }
    }

    /// The board is free: the bytes through by `now`, up to and including the next
    /// delimiter, go straight to the frame assembler. `None` when nothing is through.
    pub(crate) fn receive(&mut self, now: Instant) -> Option<Received> {
        let ready = self.rx.ready(now);
        if ready.is_empty() {
            return None;
        }
        let upto = ready
            .iter()
            .position(|&b| b == DELIMITER)
            .map_or(ready.len(), |p| p + 1);
        // When the last of these bytes arrived: a frame ending here is handled then.
        let at = self.rx.due_at(upto - 1).unwrap_or(now);
        let chunk = &ready[..upto];
        let ends_frame = chunk.last() == Some(&DELIMITER);
        let body = chunk.len() - usize::from(ends_frame);
        // A frame longer than the RX buffer loses its tail (the CRC then fails).
        let room = self.rx_buffer.saturating_sub(self.asm.pending());
        let keep = body.min(room);
        let mut frame = None;
        if keep > 0 {
            let (_, ev) = self.asm.push(&chunk[..keep]);
            frame = ev.map(own);
        }
        if ends_frame && frame.is_none() {
            let (_, ev) = self.asm.push(&[DELIMITER]);
            frame = ev.map(own);
        }
        self.rx.consume(upto);
        Some(Received {
            frame,
            at,
            overrun: (body - keep) as u64,
        })
    }

    /// After a busy spell: the next piece of the RX buffer (up to and including a delimiter)
    /// goes to the frame assembler. `None` when the buffer is empty; `Some(None)` when the
    /// piece completed no frame.
    pub(crate) fn drain_held(&mut self) -> Option<Option<RxFrame>> {
        if self.held.is_empty() {
            return None;
        }
        let (front, _) = self.held.as_slices();
        let upto = front
            .iter()
            .position(|&b| b == DELIMITER)
            .map_or(front.len(), |p| p + 1);
        let (used, ev) = self.asm.push(&front[..upto]);
        let frame = ev.map(own);
        self.held.drain(..used);
        Some(frame)
    }

    /// When the next frame from the station is complete: its delimiter is through.
    pub(crate) fn rx_due(&self) -> Option<Instant> {
        self.rx.next_due_of(DELIMITER)
    }

    /// When bytes for the station are next due: each answer as its last byte arrives, and a
    /// long one every millisecond's worth of bytes on the way. `None` when nothing is queued.
    pub(crate) fn tx_due(&self) -> Option<Instant> {
        let chunk = self.tx.bytes_per_ms().min(self.tx.len());
        let answer = self.tx.next_due_of(DELIMITER);
        let batch = self.tx.due_at(chunk.saturating_sub(1));
        match (answer, batch) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn bytes_arrive_one_byte_time_apart_from_when_they_were_written() {
        let mut line = Timeline::new(100_000); // 100 µs per byte
        let t = Instant::now();
        line.push(b"abc", t);
        assert_eq!(line.ready(t), b"");
        assert_eq!(line.ready(t + 99 * US), b"");
        assert_eq!(line.ready(t + 100 * US), b"a");
        assert_eq!(line.ready(t + 299 * US), b"ab");
        assert_eq!(line.next_due(), Some(t + 100 * US));
        assert_eq!(line.due_at(2), Some(t + 300 * US));
        line.consume(1);
        assert_eq!(line.next_due(), Some(t + 200 * US));
        assert_eq!(line.ready(t + 10_000 * US), b"bc");
        line.consume(2);
        assert!(line.is_empty());
        assert_eq!(line.next_due(), None);
    }

    #[test]
    fn a_write_while_the_line_is_busy_queues_behind_it() {
        let mut line = Timeline::new(100_000);
        let t = Instant::now();
        line.push(&[1, 2], t); // through at t+100, t+200
        line.push(&[3, 0], t + 50 * US); // the line is busy: t+300, t+400
        assert_eq!(line.len(), 4);
        assert_eq!(line.due_at(3), Some(t + 400 * US));
        assert_eq!(line.next_due_of(0), Some(t + 400 * US));
        // A write after the line went quiet starts a new burst at its own time.
        line.push(&[0], t + 1000 * US);
        assert_eq!(line.due_at(4), Some(t + 1100 * US));
        assert_eq!(line.ready(t + 5000 * US), &[1, 2, 3, 0]);
        line.consume(4);
        assert_eq!(line.ready(t + 1099 * US), b"");
        assert_eq!(line.ready(t + 1100 * US), &[0]);
    }

    #[test]
    fn never_faster_than_the_baud_rate_at_odd_rates() {
        for baud in [921_600u32, 115_200, 9_600, 1_000_000, 3] {
            let mut line = Timeline::new(baud);
            let t = Instant::now();
            let data = vec![7u8; 5000];
            line.push(&data, t);
            for k in [0usize, 1, 17, 999, 4999] {
                let due = line.due_at(k).unwrap();
                // k+1 bytes need (k+1) × 10 bits: the due time is never earlier.
                let floor_ns = (k as u128 + 1) * 10 * 1_000_000_000 / u128::from(baud);
                assert!(
                    due.duration_since(t).as_nanos() >= floor_ns,
                    "baud {baud} byte {k}"
                );
                assert_eq!(line.ready(due).len(), k + 1, "baud {baud} byte {k}");
                assert_eq!(line.ready(due - Duration::from_nanos(1)).len(), k);
            }
        }
    }

    #[test]
    fn unpaced_lines_release_at_once() {
        let mut line = Timeline::new(0);
        let t = Instant::now();
        line.push(b"xyz", t);
        assert_eq!(line.ready(t), b"xyz");
        assert_eq!(line.next_due(), Some(t));
        assert_eq!(line.bytes_per_ms(), usize::MAX);
        line.clear();
        assert!(line.is_empty());
    }

    #[test]
    fn time_of_rounds_up() {
        assert_eq!(time_of(11_520, 115_200), Duration::from_secs(1));
        assert_eq!(time_of(1, 921_600), Duration::from_nanos(10_851));
        assert_eq!(time_of(1000, 0), Duration::ZERO);
        assert_eq!(Timeline::new(115_200).bytes_per_ms(), 11);
    }

    /// One encoded frame with an empty payload: 9 bytes on the wire.
    fn small_frame(seq: u16) -> Vec<u8> {
        let mut wire = Vec::new();
        codec::encode_frame(0x05, seq, &[], &[], &mut wire).unwrap();
        wire
    }

    #[test]
    fn a_free_board_gets_each_frame_when_its_delimiter_arrives() {
        let mut uart = Uart::new(100_000, 4096); // 100 µs per byte
        let t = Instant::now();
        let (a, b) = (small_frame(1), small_frame(2));
        uart.rx.push(&[&a[..], &b[..]].concat(), t);
        let a_done = t + time_of(a.len(), 100_000);
        assert_eq!(uart.rx_due(), Some(a_done));
        // Just before the delimiter: the bytes so far go to the assembler, no frame yet.
        let early = uart.receive(a_done - Duration::from_nanos(1)).unwrap();
        assert!(early.frame.is_none());
        assert_eq!(
            uart.receive(a_done - Duration::from_nanos(1)).map(|r| r.at),
            None
        );
        // The delimiter arrives: the frame, stamped with its arrival.
        let got = uart.receive(a_done).unwrap();
        assert_eq!(got.at, a_done);
        assert_eq!(got.frame.unwrap().unwrap().1, 1);
        assert_eq!(got.overrun, 0);
        let b_done = a_done + time_of(b.len(), 100_000);
        assert_eq!(uart.rx_due(), Some(b_done));
        let got = uart.receive(b_done + Duration::from_secs(1)).unwrap();
        assert_eq!((got.at, got.frame.unwrap().unwrap().1), (b_done, 2));
        assert!(uart.receive(b_done + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn a_busy_board_buffers_what_fits_its_rx_buffer_and_loses_the_rest() {
        let mut uart = Uart::new(1_000_000, 12);
        let t = Instant::now();
        let (a, b) = (small_frame(1), small_frame(2));
        assert_eq!(a.len() + b.len(), 18);
        uart.rx.push(&[&a[..], &b[..]].concat(), t);
        // Both frames arrive while the board is busy: 12 bytes fit, 6 are lost.
        assert_eq!(uart.hold(t + Duration::from_millis(1)), 6);
        assert_eq!(uart.room(), 0);
        assert!(uart.rx.is_empty());
        // Free again: the first frame is whole, the second lost its tail.
        assert_eq!(
            uart.drain_held().map(|f| f.map(|f| f.unwrap().1)),
            Some(Some(1))
        );
        assert!(matches!(uart.drain_held(), Some(None)), "no delimiter left");
        assert!(uart.drain_held().is_none());
        assert_eq!(uart.room(), 12 - 3);
        uart.reset_rx();
        assert_eq!(uart.room(), 12);
    }

    #[test]
    fn a_frame_longer_than_the_rx_buffer_loses_its_tail_and_fails_its_check() {
        let mut uart = Uart::new(0, 8);
        let t = Instant::now();
        let mut wire = Vec::new();
        codec::encode_frame(0x03, 7, &[0xAA; 20], &[], &mut wire).unwrap();
        uart.rx.push(&wire, t);
        let got = uart.receive(t).unwrap();
        assert_eq!(got.overrun, (wire.len() - 1 - 8) as u64);
        assert!(matches!(got.frame, Some(Err(_))), "{:?}", got.frame);
    }

    /// The board thread sleeps until the UART's next due time: a small frame or answer is due
    /// exactly when its last byte is through, never rounded up to a millisecond tick, so it
    /// pays no millisecond tax on a fast line.
    #[test]
    fn a_small_frame_is_due_at_its_line_time_not_on_a_millisecond_tick() {
        let baud = 2_000_000; // 5 µs per byte
        let mut uart = Uart::new(baud, 4096);
        let t = Instant::now();
        // A HASH of one slot from the station, and its HASH_ACK from the board.
        let mut hash = Vec::new();
        codec::encode_frame(0x05, 1, &[1], &[], &mut hash).unwrap();
        let mut ack = Vec::new();
        codec::encode_frame(0x85, 1, &[1; 37], &[], &mut ack).unwrap();
        uart.rx.push(&hash, t);
        uart.tx.push(&ack, t);
        assert_eq!(uart.rx_due(), Some(t + time_of(hash.len(), baud)));
        assert_eq!(uart.tx_due(), Some(t + time_of(ack.len(), baud)));
        assert!(time_of(hash.len() + ack.len(), baud) < Duration::from_micros(300));
        // The answer is handed over whole at that instant, not a byte earlier.
        let due = t + time_of(ack.len(), baud);
        assert_eq!(
            uart.tx.ready(due - Duration::from_nanos(1)).len(),
            ack.len() - 1
        );
        assert_eq!(uart.tx.ready(due), &ack[..]);
    }

    #[test]
    fn a_long_answer_is_handed_over_every_millisecond_of_line() {
        let baud = 115_200; // 11 bytes per millisecond
        let mut uart = Uart::new(baud, 4096);
        let t = Instant::now();
        let mut answer = Vec::new();
        codec::encode_frame(0x86, 1, &[0x41; 2000], &[], &mut answer).unwrap();
        uart.tx.push(&answer, t);
        assert_eq!(uart.tx_due(), Some(t + time_of(11, baud)));
        uart.tx.consume(11);
        assert_eq!(uart.tx_due(), Some(t + time_of(22, baud)));
        // Its last millisecond's worth ends with the delimiter: due when that is through.
        uart.tx.consume(answer.len() - 11 - 5);
        assert_eq!(uart.tx_due(), Some(t + time_of(answer.len(), baud)));
        uart.tx.clear();
        assert_eq!(uart.tx_due(), None);
    }
}
