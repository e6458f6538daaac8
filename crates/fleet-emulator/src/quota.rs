//! Account-wide API quotas: one token bucket per fleet-provisioning API, shared by every
//! connection, as AWS's per-account TPS quotas are (docs/aws-fleet-provisioning.md §5.1). A request
//! over quota is rejected with 429 before any work is done.
//!
//! Profiles: `unlimited` (the default, for tests and benches) and `aws`, which mirrors the figures
//! docs/aws-fleet-provisioning.md §5.1 gives: RegisterThing 10 TPS and CreateCertificateFromCsr 15
//! TPS (the 2019 control-plane limits, D-LIM19) and CreateKeysAndCertificate 10 TPS (INFERRED: AWS
//! publishes no figure). Per-API values override the profile.

use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;

use super::config::InvalidSetting;
use super::errors::Rejection;
use crate::fleet::Api;
use crate::token_bucket::TokenBucket;

/// A quota: requests per second, and how many may come at once (default: one second's worth).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Quota {
    Tps(f64),
    Full { tps: f64, burst: Option<f64> },
}

impl Quota {
    fn tps(self) -> f64 {
        match self {
            Quota::Tps(t) | Quota::Full { tps: t, .. } => t,
        }
    }
    fn burst(self) -> f64 {
        match self {
            Quota::Tps(t) => t,
            Quota::Full { tps, burst } => burst.unwrap_or(tps),
        }
    }
}

/// The `[emulator.quotas]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// `unlimited` (default) or `aws`.
    #[serde(default)]
    pub profile: Option<String>,
    /// TPS (0 = unlimited), or `{ tps, burst }`.
    #[serde(default)]
    pub create_keys_and_certificate: Option<Quota>,
    #[serde(default)]
    pub create_certificate_from_csr: Option<Quota>,
    #[serde(default)]
    pub register_thing: Option<Quota>,
}

impl QuotaConfig {
    /// Checks the profile name and the values.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if let Some(p) = &self.profile
            && p != "unlimited"
            && p != "aws"
        {
            return Err(InvalidSetting::QuotaProfile(p.clone()));
        }
        for (api, q) in [
            (
                "create_keys_and_certificate",
                self.create_keys_and_certificate,
            ),
            (
                "create_certificate_from_csr",
                self.create_certificate_from_csr,
            ),
            ("register_thing", self.register_thing),
        ] {
            if let Some(q) = q
                && !(q.tps().is_finite()
                    && q.tps() >= 0.0
                    && q.burst().is_finite()
                    && q.burst() >= 0.0)
            {
                return Err(InvalidSetting::Quota { api });
            }
        }
        Ok(())
    }

    fn effective(&self) -> [Option<Quota>; 3] {
        let aws = self.profile.as_deref() == Some("aws");
        let pick = |own: Option<Quota>, aws_tps: f64| own.or(aws.then_some(Quota::Tps(aws_tps)));
        [
            pick(self.create_keys_and_certificate, 10.0),
            pick(self.create_certificate_from_csr, 15.0),
            pick(self.register_thing, 10.0),
        ]
    }
}

/// The running quotas.
#[derive(Debug)]
pub(crate) struct Quotas {
    buckets: [Mutex<Option<TokenBucket>>; 3],
}

fn index(api: &Api) -> usize {
    match api {
        Api::CreateKeysAndCertificate => 0,
        Api::CreateCertificateFromCsr => 1,
        Api::RegisterThing { .. } => 2,
    }
}

impl Quotas {
    pub(crate) fn new(cfg: &QuotaConfig) -> Quotas {
        let now = Instant::now();
        let bucket = |q: Option<Quota>| {
            Mutex::new(
                q.filter(|q| q.tps() > 0.0)
                    .map(|q| TokenBucket::new(q.tps(), q.burst(), now)),
            )
        };
        let [a, b, c] = cfg.effective();
        Quotas {
            buckets: [bucket(a), bucket(b), bucket(c)],
        }
    }

    /// Takes one request's worth of quota, or rejects it with 429.
    pub(crate) fn admit(&self, api: &Api) -> Result<(), Rejection> {
        let mut b = self.buckets[index(api)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match b.as_mut() {
            Some(bucket) => bucket
                .try_take(Instant::now())
                .map_err(|_| Rejection::Throttled(api.name())),
            None => Ok(()),
        }
    }

    /// Current TPS per API (`None`: unlimited), in the order CreateKeys, CSR, RegisterThing.
    #[cfg(test)]
    pub(crate) fn rates(&self) -> [Option<f64>; 3] {
        let r = |i: usize| {
            self.buckets[i]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(TokenBucket::rate)
        };
        [r(0), r(1), r(2)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_by_default_and_aws_profile_figures() {
        let q = Quotas::new(&QuotaConfig::default());
        assert_eq!(q.rates(), [None, None, None]);
        for _ in 0..10_000 {
            assert!(q.admit(&Api::CreateCertificateFromCsr).is_ok());
        }
        let aws = Quotas::new(&QuotaConfig {
            profile: Some("aws".into()),
            register_thing: Some(Quota::Tps(3.0)),
            ..QuotaConfig::default()
        });
        assert_eq!(aws.rates(), [Some(10.0), Some(15.0), Some(3.0)]);
    }

    #[test]
    fn over_quota_is_429() {
        let q = Quotas::new(&QuotaConfig {
            register_thing: Some(Quota::Full {
                tps: 5.0,
                burst: Some(2.0),
            }),
            ..QuotaConfig::default()
        });
        let api = Api::RegisterThing {
            template: "T".into(),
        };
        assert!(q.admit(&api).is_ok());
        assert!(q.admit(&api).is_ok());
        let e = q.admit(&api).unwrap_err();
        assert_eq!(e.to_response().status_code, 429);
        // Other APIs have their own bucket.
        assert!(q.admit(&Api::CreateCertificateFromCsr).is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        let bad = QuotaConfig {
            register_thing: Some(Quota::Tps(-1.0)),
            ..QuotaConfig::default()
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.key(), "emulator.quotas.register_thing");
        assert_eq!(
            e.problem(),
            "must be a non-negative number of requests per second"
        );
        let bad = QuotaConfig {
            profile: Some("fast".into()),
            ..QuotaConfig::default()
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.key(), "emulator.quotas.profile");
        assert_eq!(e.problem(), r#""fast" is not "unlimited" or "aws""#);
    }
}
