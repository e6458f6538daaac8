//! Line-rate emulation for the virtual board. A pty moves bytes at memory speed; a UART moves
//! one byte per 10 bit times. [`Line`] models one direction of the serial line exactly: bytes
//! handed to it (written by the station, or queued by the board) are stamped with the time
//! their last bit arrives at the other end — one byte time after the previous byte, or one
//! byte time after they were handed over, whichever is later — and are released only when
//! that time has passed. Nothing crosses faster than the baud rate, and nothing waits longer
//! than the line needs: the board's driver sleeps exactly until the next stamp it cares about.
//!
//! No I/O and no clock reads here: callers pass `now`, so the model is tested with made-up
//! instants.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

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

/// One direction of a serial line at a fixed baud rate (0 = unpaced: bytes arrive at once).
#[derive(Debug)]
pub struct Line {
    baud: u32,
    bursts: VecDeque<Burst>,
    /// When the last byte queued so far has crossed (the line is busy until then).
    free_at: Option<Instant>,
}

impl Line {
    pub fn new(baud: u32) -> Line {
        Line {
            baud,
            bursts: VecDeque::new(),
            free_at: None,
        }
    }

    pub fn is_paced(&self) -> bool {
        self.baud > 0
    }

    /// Line time of `n` bytes, rounded up to the nanosecond (never shorter than the line
    /// needs).
    pub fn time_of(&self, n: usize) -> Duration {
        time_of(n, self.baud)
    }

    /// Bytes one millisecond of line carries (at least 1; `usize::MAX` unpaced).
    pub fn bytes_per_ms(&self) -> usize {
        if self.baud == 0 {
            return usize::MAX;
        }
        (u128::from(self.baud) / BITS_PER_BYTE / 1000).max(1) as usize
    }

    /// Queues `data`, handed to the line at `at` (written by the sender, or read off the pty).
    pub fn push(&mut self, data: &[u8], at: Instant) {
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
    pub fn len(&self) -> usize {
        self.bursts.iter().map(|b| b.bytes.len() - b.head).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bursts.is_empty()
    }

    /// When the next byte is through.
    pub fn next_due(&self) -> Option<Instant> {
        let b = self.bursts.front()?;
        Some(self.due(b, b.head))
    }

    /// When the `k`-th byte from the front (0-based) is through.
    pub fn due_at(&self, mut k: usize) -> Option<Instant> {
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
    pub fn next_due_of(&self, byte: u8) -> Option<Instant> {
        self.bursts.iter().find_map(|b| {
            b.bytes[b.head..]
                .iter()
                .position(|&x| x == byte)
                .map(|i| self.due(b, b.head + i))
        })
    }

    /// The bytes at the front that are through at `now` (only from the first burst; call
    /// again after [`consume`](Self::consume) for the next one).
    pub fn ready(&self, now: Instant) -> &[u8] {
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
    pub fn consume(&mut self, n: usize) {
        if let Some(b) = self.bursts.front_mut() {
            b.head = (b.head + n).min(b.bytes.len());
            if b.head == b.bytes.len() {
                self.bursts.pop_front();
            }
        }
    }

    /// Forgets everything queued (a line that went dead).
    pub fn clear(&mut self) {
        self.bursts.clear();
        self.free_at = None;
    }

    fn due(&self, b: &Burst, index: usize) -> Instant {
        b.start + time_of(index + 1, self.baud)
    }
}

/// Time `n` bytes take at `baud` (10 bits each), rounded up to the nanosecond; zero unpaced.
pub fn time_of(n: usize, baud: u32) -> Duration {
    if baud == 0 {
        return Duration::ZERO;
    }
    let ns = (n as u128 * BITS_PER_BYTE * 1_000_000_000).div_ceil(u128::from(baud));
    Duration::from_nanos(ns.min(u128::from(u64::MAX)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn bytes_arrive_one_byte_time_apart_from_when_they_were_written() {
        let mut line = Line::new(100_000); // 100 µs per byte
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
        let mut line = Line::new(100_000);
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
            let mut line = Line::new(baud);
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
        let mut line = Line::new(0);
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
        assert_eq!(Line::new(115_200).bytes_per_ms(), 11);
    }
}
