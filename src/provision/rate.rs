//! Rate control shared by every session: one token bucket per API (and one for CONNECTs), and
//! AIMD adaptation of the API rates to what the account actually sustains.
//!
//! - A bucket refills at `rate` tokens per second up to `burst`; a call waits for a token.
//! - On a throttled (429) reply the rate drops to 70% of what was actually getting through
//!   (multiplicative decrease), at most once per second so a burst of 429s from many
//!   sessions counts as one signal. A bucket with no configured rate starts limiting then.
//! - Every second without a throttle the rate grows by `increase` (additive increase: 5% of
//!   the configured rate, or 3% of the rate found), up to the configured ceiling; with no
//!   ceiling, up to twice the achieved rate. The gentle climb keeps the time spent above the
//!   quota, and so the share of throttled requests, small.
//! - An *open* limiter ([`RateLimiter::open`], [`Limits::open_loop`]) neither paces nor adapts:
//!   the load-test modes that measure an account's quotas offer their load as scheduled, and a
//!   throttled request is not retried (the device fails as throttled), so the throttles they
//!   count are the ones the offered rate caused.
//! - A *shared* limiter ([`RateLimiter::shared`], [`Limits::shared`]) takes its tokens from
//!   the account quota all stations share in PostgreSQL (`provision.shared_quota`; see
//!   [`super::shared_quota`]): the rate and its adaptation live there, and the limiter paces
//!   the calls from the tokens granted.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::shared_quota::SharedBucket;
use crate::token_bucket::TokenBucket;

/// Multiplicative decrease on a throttle.
const DECREASE: f64 = 0.7;

/// One token bucket with AIMD adaptation.
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<State>,
    /// The shared account quota's bucket, when the rate lives in PostgreSQL.
    shared: Option<SharedBucket>,
}

#[derive(Debug)]
struct State {
    /// The bucket at the current rate; `None` = unlimited.
    bucket: Option<TokenBucket>,
    /// Configured ceiling; `None` = none.
    ceiling: Option<f64>,
    burst: f64,
    last_decrease: Option<Instant>,
    last_increase: Instant,
    increase: f64,
    floor: f64,
    /// Recent completions, for the achieved rate.
    window_start: Instant,
    window_count: u64,
    achieved: f64,
    /// False for an open limiter: no adaptation, throttled requests are not retried.
    adaptive: bool,
}

impl RateLimiter {
    /// `tps = 0` means no configured limit (adaptation still kicks in on throttling).
    pub fn new(tps: f64, burst: f64) -> RateLimiter {
        let now = Instant::now();
        let ceiling = (tps > 0.0).then_some(tps);
        let burst = if burst > 0.0 { burst } else { tps.max(1.0) };
        RateLimiter {
            state: Mutex::new(State {
                bucket: ceiling.map(|c| TokenBucket::new(c, burst, now)),
                ceiling,
                burst,
                last_decrease: None,
                last_increase: now,
                increase: ceiling.map_or(1.0, |c| (c * 0.05).max(0.5)),
                floor: 0.5,
                window_start: now,
                window_count: 0,
                achieved: 0.0,
                adaptive: true,
            }),
            shared: None,
        }
    }

    /// A limiter that takes its tokens, rate and adaptation from the shared account quota.
    pub fn shared(bucket: SharedBucket) -> RateLimiter {
        RateLimiter {
            shared: Some(bucket),
            ..RateLimiter::new(0.0, 0.0)
        }
    }

    /// The shared account quota's bucket, if this limiter takes its tokens there.
    pub fn shared_bucket(&self) -> Option<&SharedBucket> {
        self.shared.as_ref()
    }

    /// A limiter that never paces nor adapts (the load-test modes that measure quotas).
    pub fn open() -> RateLimiter {
        let l = RateLimiter::new(0.0, 0.0);
        l.lock().adaptive = false;
        l
    }

    /// Whether a throttled request is sent again (false for an [`open`](Self::open) limiter:
    /// the device fails as throttled, so the offered load stays what was scheduled).
    pub fn retries_throttled(&self) -> bool {
        self.lock().adaptive
    }

    /// Current rate (tokens/s), `None` if unlimited.
    pub fn rate(&self) -> Option<f64> {
        if let Some(shared) = &self.shared {
            return Some(shared.rate());
        }
        self.lock().bucket.as_ref().map(TokenBucket::rate)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a token now, or says how long to wait for one.
    fn try_take(&self, now: Instant) -> Result<(), Duration> {
        match self.lock().bucket.as_mut() {
            Some(b) => b.try_take(now),
            None => Ok(()),
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        if let Some(shared) = &self.shared {
            return shared.acquire().await;
        }
        loop {
            match self.try_take(Instant::now()) {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// A call succeeded: count it, and grow the rate once a second.
    pub fn on_success(&self) {
        if self.shared.is_some() {
            // The shared rate grows in the database, as the seconds without a throttle pass.
            return;
        }
        self.on_success_at(Instant::now());
    }

    fn on_success_at(&self, now: Instant) {
        let mut s = self.lock();
        s.window_count += 1;
        let window = now.saturating_duration_since(s.window_start).as_secs_f64();
        if window >= 1.0 {
            s.achieved = s.window_count as f64 / window;
            s.window_start = now;
            s.window_count = 0;
        }
        if let Some(rate) = s.bucket.as_ref().map(TokenBucket::rate)
            && now.saturating_duration_since(s.last_increase) >= Duration::from_secs(1)
        {
            let cap = match s.ceiling {
                Some(c) => c,
                None => (s.achieved * 2.0).max(rate + s.increase),
            };
            let (next, burst) = ((rate + s.increase).min(cap), s.burst);
            if let Some(b) = s.bucket.as_mut() {
                b.set_rate(next, burst, now);
            }
            s.last_increase = now;
        }
    }

    /// A call was throttled: cut the rate to 70 % of what got through (once per second).
    pub fn on_throttle(&self) {
        if let Some(shared) = &self.shared {
            return shared.on_throttle();
        }
        self.on_throttle_at(Instant::now());
    }

    fn on_throttle_at(&self, now: Instant) {
        let mut s = self.lock();
        if !s.adaptive {
            return;
        }
        if s.last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        let window = now
            .saturating_duration_since(s.window_start)
            .as_secs_f64()
            .max(0.001);
        let achieved = s.achieved.max(s.window_count as f64 / window);
        let current = s
            .bucket
            .as_ref()
            .map_or(achieved.max(2.0 * s.floor), TokenBucket::rate);
        // What got through, if measured, is a better estimate of the quota than the rate
        // that was just refused.
        let base = if achieved > s.floor {
            current.min(achieved)
        } else {
            current
        };
        let next = (base * DECREASE).max(s.floor);
        if s.bucket.is_none() {
            s.increase = (next * 0.03).max(0.1);
            s.burst = next.max(1.0);
        }
        let burst = s.burst;
        let bucket = s
            .bucket
            .get_or_insert_with(|| TokenBucket::new(next, burst, now));
        bucket.set_rate(next, burst, now);
        bucket.drain_to_one();
        s.last_decrease = Some(now);
        s.last_increase = now;
    }
}

/// The limiters of one engine.
#[derive(Debug)]
pub struct Limits {
    pub create_certificate: RateLimiter,
    pub create_keys: RateLimiter,
    pub register_thing: RateLimiter,
    /// Account-wide CONNECTs per second across all sessions.
    pub connect: RateLimiter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_paces() {
        let l = RateLimiter::new(10.0, 3.0);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(l.try_take(now).is_ok());
        }
        let wait = l.try_take(now).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // 100 ms later one token is back.
        assert!(l.try_take(now + Duration::from_millis(101)).is_ok());
    }

    #[test]
    fn unlimited_never_waits() {
        let l = RateLimiter::new(0.0, 0.0);
        let now = Instant::now();
        for _ in 0..10_000 {
            assert!(l.try_take(now).is_ok());
        }
        assert_eq!(l.rate(), None);
    }

    #[test]
    fn throttling_cuts_the_rate_once_per_second() {
        let l = RateLimiter::new(10.0, 10.0);
        l.on_throttle();
        assert_eq!(l.rate(), Some(7.0));
        // A burst of 429s from many sessions is one signal.
        l.on_throttle();
        l.on_throttle();
        assert_eq!(l.rate(), Some(7.0));
    }

    #[test]
    fn the_rate_grows_back_additively_up_to_the_ceiling() {
        let l = RateLimiter::new(10.0, 10.0);
        let t0 = Instant::now();
        l.on_throttle_at(t0);
        assert_eq!(l.rate(), Some(7.0));
        l.on_success_at(t0 + Duration::from_millis(500));
        assert_eq!(l.rate(), Some(7.0), "no increase within the second");
        l.on_success_at(t0 + Duration::from_millis(1100));
        assert_eq!(l.rate(), Some(7.5));
        let mut t = t0 + Duration::from_millis(1100);
        for _ in 0..100 {
            t += Duration::from_millis(1001);
            l.on_success_at(t);
        }
        assert_eq!(l.rate(), Some(10.0), "capped at the configured rate");
    }

    #[test]
    fn an_open_limiter_neither_paces_nor_adapts() {
        let l = RateLimiter::open();
        for _ in 0..100 {
            l.on_throttle();
            assert!(l.try_take(Instant::now()).is_ok());
        }
        assert_eq!(l.rate(), None);
        assert!(!l.retries_throttled());
        assert!(RateLimiter::new(0.0, 0.0).retries_throttled());
    }

    #[test]
    fn an_unlimited_bucket_starts_limiting_on_throttle() {
        let l = RateLimiter::new(0.0, 0.0);
        for _ in 0..100 {
            l.on_success();
        }
        l.on_throttle();
        let r = l.rate().expect("now limited");
        assert!(r > 0.0);
    }
}
