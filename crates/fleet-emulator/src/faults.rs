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
//! - `storage_delay_ms`: every registry commit takes this much longer, as on a slow disk.
//!   Replies that follow a registry change wait for its commit, so they come this much later
//!   too, and a kill in that window finds changes that are neither on disk nor acknowledged.
//! - `register_thing_delay_ms`: answer `RegisterThing` requests this much later, on top of
//!   `delay_ms` (the request is processed after the delay, like `delay_ms`), so a test can
//!   kill a station while its `RegisterThing` is in flight.
//! - `duplicate_reply_after_ms`: publish every accepted `RegisterThing` reply once more on
//!   the same connection this long after the first (QoS 1 is at-least-once: a late
//!   duplicate). Rejected replies and the certificate APIs are not duplicated.
//! - `seed`: makes the fractions reproducible.
//!
//! `storage_delay_ms`, `register_thing_delay_ms` and `duplicate_reply_after_ms` are at most
//! [`MAX_DELAY_MS`]; a larger value is a configuration error naming the key.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;

use super::config::InvalidSetting;
use crate::fleet::Api;

/// The longest delay any fault may add (ten minutes): beyond that a test is hung, not slow.
pub const MAX_DELAY_MS: u64 = 600_000;

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
    pub storage_delay_ms: u64,
    #[serde(default)]
    pub register_thing_delay_ms: u64,
    #[serde(default)]
    pub duplicate_reply_after_ms: Option<u64>,
    #[serde(default)]
    pub seed: Option<u64>,
}

impl FaultConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        for (key, value) in [
            ("error_500_fraction", self.error_500_fraction),
            (
                "foreign_certificate_fraction",
                self.foreign_certificate_fraction,
            ),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(InvalidSetting::FaultFraction { key, value });
            }
        }
        if self.throttle_burst_every == Some(0) || self.drop_after_messages == Some(0) {
            return Err(InvalidSetting::FaultCount);
        }
        for (key, ms) in [
            ("storage_delay_ms", Some(self.storage_delay_ms)),
            (
                "register_thing_delay_ms",
                Some(self.register_thing_delay_ms),
            ),
            ("duplicate_reply_after_ms", self.duplicate_reply_after_ms),
        ] {
            if let Some(ms) = ms.filter(|ms| *ms > MAX_DELAY_MS) {
                return Err(InvalidSetting::FaultDelay { key, ms });
            }
        }
        Ok(())
    }
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Decision {
    pub delay: Duration,
    pub error_500: bool,
    pub throttle: bool,
    pub foreign_certificate: bool,
    /// Publish an accepted reply once more this long after the first (RegisterThing only).
    pub duplicate_after: Option<Duration>,
}

/// The running fault plan.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    config: Mutex<FaultConfig>,
    rng: Mutex<Option<fastrand::Rng>>,
    requests: AtomicU64,
}

impl Faults {
    pub(crate) fn new(config: FaultConfig) -> Faults {
        let f = Faults::default();
        f.set(config);
        f
    }

    /// Replaces the fault configuration (counters restart).
    pub(crate) fn set(&self, config: FaultConfig) {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = Some(
            config
                .seed
                .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
        );
        self.requests.store(0, Ordering::SeqCst);
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// How many API requests a connection may send before it is dropped.
    pub(crate) fn drop_after(&self) -> Option<u64> {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drop_after_messages
    }

    /// Decides the faults for the next request to `api`.
    pub(crate) fn decide(&self, api: &Api) -> Decision {
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
        let register = matches!(api, Api::RegisterThing { .. });
        let extra = if register {
            c.register_thing_delay_ms
        } else {
            0
        };
        Decision {
            delay: Duration::from_millis(
                c.delay_ms
                    .saturating_add(rng.u64(0..=c.delay_jitter_ms))
                    .saturating_add(extra),
            ),
            throttle,
            error_500: !throttle && rng.f64() < c.error_500_fraction,
            foreign_certificate: matches!(api, Api::CreateCertificateFromCsr)
                && rng.f64() < c.foreign_certificate_fraction,
            duplicate_after: c
                .duplicate_reply_after_ms
                .filter(|_| register)
                .map(Duration::from_millis),
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
            assert_eq!(
                f.decide(&Api::CreateCertificateFromCsr),
                Decision::default()
            );
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
        let pattern: Vec<bool> = (0..10)
            .map(|_| f.decide(&Api::CreateKeysAndCertificate).throttle)
            .collect();
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
            (0..200)
                .map(|_| f.decide(&Api::CreateKeysAndCertificate).error_500)
                .collect()
        };
        let b: Vec<bool> = {
            let f = Faults::new(cfg);
            (0..200)
                .map(|_| f.decide(&Api::CreateKeysAndCertificate).error_500)
                .collect()
        };
        assert_eq!(a, b);
        let hits = a.iter().filter(|x| **x).count();
        assert!((30..=90).contains(&hits), "{hits}");
    }

    fn register() -> Api {
        Api::RegisterThing {
            template: "T".into(),
        }
    }

    #[test]
    fn the_register_delay_and_the_duplicate_apply_to_register_thing_only() {
        let f = Faults::new(FaultConfig {
            delay_ms: 10,
            register_thing_delay_ms: 200,
            duplicate_reply_after_ms: Some(50),
            ..FaultConfig::default()
        });
        let r = f.decide(&register());
        assert_eq!(r.delay, Duration::from_millis(210));
        assert_eq!(r.duplicate_after, Some(Duration::from_millis(50)));
        for api in [Api::CreateCertificateFromCsr, Api::CreateKeysAndCertificate] {
            let d = f.decide(&api);
            assert_eq!(d.delay, Duration::from_millis(10), "{api:?}");
            assert_eq!(d.duplicate_after, None, "{api:?}");
        }
        f.set(FaultConfig::default());
        assert_eq!(f.decide(&register()), Decision::default());
    }

    #[test]
    fn delays_over_ten_minutes_are_refused_by_name() {
        for (cfg, key) in [
            (
                FaultConfig {
                    storage_delay_ms: MAX_DELAY_MS + 1,
                    ..FaultConfig::default()
                },
                "emulator.faults.storage_delay_ms",
            ),
            (
                FaultConfig {
                    register_thing_delay_ms: u64::MAX,
                    ..FaultConfig::default()
                },
                "emulator.faults.register_thing_delay_ms",
            ),
            (
                FaultConfig {
                    duplicate_reply_after_ms: Some(MAX_DELAY_MS + 1),
                    ..FaultConfig::default()
                },
                "emulator.faults.duplicate_reply_after_ms",
            ),
        ] {
            let e = cfg.validate().unwrap_err();
            assert_eq!(e.key(), key);
            assert!(e.problem().contains("at most 600000"), "{e}");
        }
        let ok = FaultConfig {
            storage_delay_ms: MAX_DELAY_MS,
            duplicate_reply_after_ms: Some(0),
            ..FaultConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn bad_fractions_are_named() {
        let bad = FaultConfig {
            error_500_fraction: 1.5,
            ..FaultConfig::default()
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.key(), "emulator.faults.error_500_fraction");
        assert_eq!(e.problem(), "is 1.5; it must be between 0 and 1");
        let zero = FaultConfig {
            drop_after_messages: Some(0),
            ..FaultConfig::default()
        };
        assert_eq!(zero.validate(), Err(InvalidSetting::FaultCount));
        assert_eq!(zero.validate().unwrap_err().key(), "emulator.faults");
    }
}
