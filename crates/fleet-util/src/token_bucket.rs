//! A token bucket: `rate` tokens per second up to `burst`. Shared plumbing: the station's
//! rate limiter and the emulator's account quotas both use it (each side its own buckets).

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate` must be positive.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        let burst = burst.max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            refilled: now,
        }
    }

    /// `rate` per second, holding at most one second's worth.
    pub fn per_second(rate: u32, now: Instant) -> TokenBucket {
        let r = f64::from(rate.max(1));
        TokenBucket::new(r, r, now)
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Changes the rate (and burst), keeping the tokens already there (capped to the burst).
    pub fn set_rate(&mut self, rate: f64, burst: f64, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.burst = burst.max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
    }

    /// Takes a token now, or says how long until one is there.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// Takes a token if there is one now.
    pub fn take(&mut self, now: Instant) -> bool {
        self.try_take(now).is_ok()
    }

    /// True when the bucket has refilled completely (its state carries no information).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }

    /// Drops the saved-up tokens to at most one (after a throttle, no burst).
    pub fn drain_to_one(&mut self) {
        self.tokens = self.tokens.min(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_paces() {
        let now = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, now);
        for _ in 0..3 {
            assert!(b.try_take(now).is_ok());
        }
        let wait = b.try_take(now).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(b.try_take(now + Duration::from_millis(101)).is_ok());
    }

    #[test]
    fn changing_the_rate_keeps_tokens_within_the_new_burst() {
        let now = Instant::now();
        let mut b = TokenBucket::new(100.0, 100.0, now);
        b.set_rate(5.0, 5.0, now);
        for _ in 0..5 {
            assert!(b.try_take(now).is_ok());
        }
        assert!(b.try_take(now).is_err());
    }
}
