//! Fault injection for load tests and the station's reliability tests: everything off by
//! default, settable in `[emulator.faults]` and changeable while the emulator runs.
//!
//! - `drop_after_messages`: close a connection after it has sent this many API requests
//!   (the request is not answered).
//! - `delay_ms` (+ `delay_jitter_ms`): answer every API request this much later.
//! - `error_500_fraction`: reject this fraction of requests with 500 `InternalFailure`.
//! - `throttle_burst_every` / `throttle_burst_len`: after every N requests, throttle the
//!   next M with 429, as a burst of quota pressure would.
//! - `foreign_certificate_fraction`: answer this fraction of `CreateCertificateFromCsr`
//!   requests with a certificate for another key (a stale or foreign reply).
//! - `seed`: makes the fractions reproducible.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;

/// The `[emulator.faults]` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    #[serde(default)]
    pub drop_after_messages: Option<u64>,
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default)]
    pub delay_jitter_ms: u64,
    #[serde(default)]
    pub error_500_fraction: f64,
    #[serde(default)]
    pub throttle_burst_every: Option<u64>,
    #[serde(default)]
    pub throttle_burst_len: u64,
    #[serde(default)]
    pub foreign_certificate_fraction: f64,
    #[serde(default)]
    pub seed: Option<u64>,
}

impl FaultConfig {
    /// Checks the values; returns `(key, problem)` on error.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, f) in [
            ("error_500_fraction", self.error_500_fraction),
            (
                "foreign_certificate_fraction",
                self.foreign_certificate_fraction,
            ),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return Err((
                    format!("emulator.faults.{key}"),
                    format!("is {f}; it must be between 0 and 1"),
                ));
            }
        }
        if self.throttle_burst_every == Some(0) || self.drop_after_messages == Some(0) {
            return Err(("emulator.faults".into(), "counts must be at least 1".into()));
        }
        Ok(())
    }
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    pub delay: Duration,
    pub error_500: bool,
    pub throttle: bool,
    pub foreign_certificate: bool,
}

/// The running fault plan.
#[derive(Debug, Default)]
pub struct Faults {
    config: Mutex<FaultConfig>,
    rng: Mutex<Option<fastrand::Rng>>,
    requests: AtomicU64,
}

impl Faults {
    pub fn new(config: FaultConfig) -> Faults {
        let f = Faults::default();
        f.set(config);
        f
    }

    /// Replaces the fault configuration (counters restart).
    pub fn set(&self, config: FaultConfig) {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = Some(
            config
                .seed
                .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
        );
        self.requests.store(0, Ordering::SeqCst);
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    pub fn config(&self) -> FaultConfig {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many API requests a connection may send before it is dropped.
    pub fn drop_after(&self) -> Option<u64> {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drop_after_messages
    }

    /// Decides the faults for the next request.
    pub fn decide(&self, is_csr: bool) -> Decision {
        let c = self
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if c == FaultConfig::default() {
            return Decision::default();
        }
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let rng = guard.get_or_insert_with(fastrand::Rng::new);
        let throttle = c
            .throttle_burst_every
            .is_some_and(|every| n % (every + c.throttle_burst_len) >= every);
        Decision {
            delay: Duration::from_millis(c.delay_ms + rng.u64(0..=c.delay_jitter_ms)),
            throttle,
            error_500: !throttle && rng.f64() < c.error_500_fraction,
            foreign_certificate: is_csr && rng.f64() < c.foreign_certificate_fraction,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default() {
        let f = Faults::default();
        for _ in 0..100 {
            assert_eq!(f.decide(true), Decision::default());
        }
        assert_eq!(f.drop_after(), None);
    }

    #[test]
    fn throttle_bursts_follow_the_pattern() {
        let f = Faults::new(FaultConfig {
            throttle_burst_every: Some(3),
            throttle_burst_len: 2,
            ..FaultConfig::default()
        });
        let pattern: Vec<bool> = (0..10).map(|_| f.decide(false).throttle).collect();
        assert_eq!(
            pattern,
            [
                false, false, false, true, true, false, false, false, true, true
            ]
        );
    }

    #[test]
    fn fractions_are_reproducible_with_a_seed() {
        let cfg = FaultConfig {
            error_500_fraction: 0.3,
            seed: Some(7),
            ..FaultConfig::default()
        };
        let a: Vec<bool> = {
            let f = Faults::new(cfg.clone());
            (0..200).map(|_| f.decide(false).error_500).collect()
        };
        let b: Vec<bool> = {
            let f = Faults::new(cfg);
            (0..200).map(|_| f.decide(false).error_500).collect()
        };
        assert_eq!(a, b);
        let hits = a.iter().filter(|x| **x).count();
        assert!((30..=90).contains(&hits), "{hits}");
    }

    #[test]
    fn bad_fractions_are_named() {
        let bad = FaultConfig {
            error_500_fraction: 1.5,
            ..FaultConfig::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().0,
            "emulator.faults.error_500_fraction"
        );
    }
}
