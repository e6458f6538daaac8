//! Line-rate emulation for the virtual board. A pty moves bytes at memory speed; a UART
//! moves one byte per 10 bit times. `RxPacer` decides how many received bytes have
//! "arrived" by now; `TxPacer` makes sending take the time it would on the line.

use std::time::{Duration, Instant};

fn byte_time(baud: u32) -> Option<Duration> {
    (baud > 0).then(|| super::port::line_time(1, baud))
}

/// Bytes arrive no faster than the line rate, counted from the first byte of a burst.
#[derive(Debug)]
pub struct RxPacer {
    byte_time: Option<Duration>,
    /// When the first byte of the current burst arrived.
    epoch: Option<Instant>,
    /// Bytes taken since `epoch`.
    taken: u64,
}

impl RxPacer {
    /// `baud` 0: unpaced.
    pub fn new(baud: u32) -> RxPacer {
        RxPacer {
            byte_time: byte_time(baud),
            epoch: None,
            taken: 0,
        }
    }

    pub fn is_paced(&self) -> bool {
        self.byte_time.is_some()
    }

    /// In the middle of a burst (bytes have been taken since the line was last quiet).
    pub fn in_burst(&self) -> bool {
        self.epoch.is_some()
    }

    /// How many bytes may be taken at `now` (`usize::MAX` when unpaced). The first byte of a
    /// burst is allowed at once; the rest arrive one byte time after another, however many
    /// the station has already put in the pty.
    pub fn allowance(&self, now: Instant) -> usize {
        let Some(bt) = self.byte_time else {
            return usize::MAX;
        };
        let Some(epoch) = self.epoch else {
            return 1;
        };
        let arrived =
            (now.saturating_duration_since(epoch).as_nanos() / bt.as_nanos().max(1)) as u64 + 1;
        arrived.saturating_sub(self.taken) as usize
    }

    /// Bytes worth waiting for before reading again mid-burst: about a millisecond of line
    /// time, so a paced reader does not wake up for every byte.
    pub fn batch(&self) -> usize {
        match self.byte_time {
            Some(bt) => {
                (Duration::from_millis(1).as_nanos() / bt.as_nanos().max(1)).max(1) as usize
            }
            None => 1,
        }
    }

    /// How long until `n` more bytes will have arrived.
    pub fn time_for(&self, n: usize) -> Duration {
        self.byte_time.unwrap_or(Duration::ZERO) * n as u32
    }

    pub fn took(&mut self, n: usize, now: Instant) {
        if self.byte_time.is_some() && self.epoch.is_none() {
            self.epoch = Some(now);
        }
        self.taken += n as u64;
    }

    /// The line went quiet: the next byte starts a new burst.
    pub fn idle(&mut self) {
        self.epoch = None;
        self.taken = 0;
    }
}

/// Sending `n` bytes keeps the line busy for `n` byte times.
#[derive(Debug)]
pub struct TxPacer {
    byte_time: Option<Duration>,
    /// When the line is free again.
    free_at: Instant,
}

impl TxPacer {
    pub fn new(baud: u32) -> TxPacer {
        TxPacer {
            byte_time: byte_time(baud),
            free_at: Instant::now(),
        }
    }

    /// Bytes to hand to the pty at once: about a millisecond of line time.
    pub fn chunk(&self) -> usize {
        match self.byte_time {
            Some(bt) => {
                (Duration::from_millis(1).as_nanos() / bt.as_nanos().max(1)).max(1) as usize
            }
            None => usize::MAX,
        }
    }

    /// Accounts `n` bytes just sent and returns how long to wait until they are "on the
    /// other side".
    pub fn sent(&mut self, n: usize, now: Instant) -> Duration {
        let Some(bt) = self.byte_time else {
            return Duration::ZERO;
        };
        if self.free_at < now {
            self.free_at = now;
        }
        self.free_at += bt * n as u32;
        self.free_at.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_allowance_follows_line_rate() {
        let mut p = RxPacer::new(100_000); // 100 µs per byte
        let t = Instant::now();
        assert_eq!(
            p.allowance(t),
            1,
            "idle: the first byte may come, the rest follow at line rate"
        );
        p.took(1, t);
        assert_eq!(p.allowance(t), 0);
        assert_eq!(p.allowance(t + Duration::from_micros(1000)), 10);
        p.took(10, t + Duration::from_micros(1000));
        assert_eq!(p.allowance(t + Duration::from_micros(1050)), 0);
        p.idle();
        assert_eq!(p.allowance(t), 1);
        assert_eq!(RxPacer::new(0).allowance(t), usize::MAX);
        assert_eq!(p.batch(), 10);
        assert_eq!(p.time_for(10), Duration::from_millis(1));
    }

    #[test]
    fn tx_accumulates_line_time() {
        let mut p = TxPacer::new(1_000_000); // 10 µs per byte
        let t = Instant::now();
        assert_eq!(p.chunk(), 100);
        assert_eq!(p.sent(100, t), Duration::from_micros(1000));
        assert_eq!(p.sent(100, t), Duration::from_micros(2000));
        assert_eq!(TxPacer::new(0).sent(1000, t), Duration::ZERO);
    }
}
