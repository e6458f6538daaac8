//! The broker's limits (docs/aws-fleet-provisioning.md §5.2) in one place: the [`BrokerLimits`] the
//! broker enforces, the two profiles they start from (`unlimited` for tests and benches, `aws` with
//! AWS IoT Core's published figures), the per-limit overrides read from `[emulator.broker_limits]`,
//! and the two rate limiters (publishes per connection, CONNECTs per client id).
//!
//! Quotas (rates and counts) are off in `unlimited`; protocol behaviour that AWS documents as
//! part of MQTT handling (128 KB payload, keep-alive clamping to 30–1200 s, topic aliases) is
//! the same in both profiles.

use crate::token_bucket::TokenBucket;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// AWS's payload limit: "The payload for every publish request is limited to 128 KB".
pub(crate) const AWS_MAX_PAYLOAD: usize = 128 * 1024;

/// Room a packet may take beyond its payload (fixed header, topic, packet id, MQTT 5
/// properties) before the broker refuses to buffer it. A PUBLISH whose payload is within the
/// payload limit but whose packet is larger than `max_payload_bytes + PACKET_OVERHEAD` is
/// treated as too large.
pub(crate) const PACKET_OVERHEAD: usize = 16 * 1024;

/// Which figures the limits start from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerProfile {
    /// No quotas (rates and counts); protocol limits as AWS. The default, for tests and benches.
    #[default]
    Unlimited,
    /// AWS IoT Core's message-broker quotas (docs/aws-fleet-provisioning.md §5.2).
    Aws,
}

/// The limits the broker enforces. `None` means "no limit".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BrokerLimits {
    /// Largest PUBLISH payload (and CONNECT will payload). AWS: 128 KB. A larger PUBLISH
    /// closes a 3.1.1 connection and gets DISCONNECT 0x95 on MQTT 5; a larger will payload
    /// refuses the CONNECT (MQTT 5: CONNACK 0x95).
    pub max_payload_bytes: usize,
    /// Inbound PUBLISH packets per second per connection, and separately outbound ones
    /// (AWS: 100, "inbound and outbound"; excess is discarded). Token bucket with a burst of
    /// one second's worth. An inbound excess is dropped: on 3.1.1 without PUBACK, on MQTT 5
    /// with PUBACK 0x97 (QoS 1). An outbound excess (including API replies) is not sent.
    pub publishes_per_second: Option<u32>,
    /// Subscriptions per connection (AWS: 50; "excess may be rejected and the connection
    /// closed"). 3.1.1: the SUBACK fails (0x80) the filters over the limit, then the broker
    /// closes the connection. MQTT 5: SUBACK 0x97 for those filters; the connection stays.
    pub max_subscriptions: Option<usize>,
    /// Topic filters per SUBSCRIBE packet (AWS: 8). Over it, 3.1.1 closes the connection;
    /// MQTT 5 answers SUBACK 0x97 for every filter and subscribes none.
    pub max_filters_per_subscribe: Option<usize>,
    /// CONNECT packets per second per client id (AWS: 1). An excess CONNECT is refused:
    /// 3.1.1 closes the socket without CONNACK, MQTT 5 gets CONNACK 0x9F; the connection
    /// that holds the client id is untouched (AWS lifecycle reason `THROTTLED`).
    pub connects_per_second_per_client_id: Option<u32>,
    /// Smallest keep-alive granted (AWS: 30 s; a smaller non-zero request gets this).
    pub keep_alive_min_s: u16,
    /// Largest keep-alive granted, also used for a request of 0 (AWS: 1200 s).
    pub keep_alive_max_s: u16,
    /// Longest client id in bytes (AWS: 128). Longer: CONNACK 0x02 / 0x85.
    pub max_client_id_bytes: Option<usize>,
    /// Longest topic name or filter in bytes (AWS: 256), not counting a Basic Ingest
    /// `$aws/rules/<rule>/` prefix (nor `$share/<group>/` on a filter).
    pub max_topic_bytes: Option<usize>,
    /// Most `/` in a topic name or filter (AWS: 7), with the same prefixes not counted.
    pub max_topic_slashes: Option<usize>,
    /// MQTT 5 Topic Alias Maximum the broker accepts from clients (0 turns aliases off).
    /// AWS supports topic aliases; the value is configurable because the exact figure was not
    /// found in AWS's documents (8 chosen).
    pub topic_alias_maximum: u16,
    /// MQTT 5 Receive Maximum advertised in CONNACK (AWS: 100 in-flight QoS 1 per client).
    pub receive_maximum: Option<u16>,
    /// Time allowed for the TLS handshake and the CONNECT packet, in milliseconds.
    pub connect_timeout_ms: u64,
}

impl BrokerLimits {
    /// The `unlimited` profile: no quotas; 128 KB payload and AWS's keep-alive clamping.
    pub(crate) fn unlimited() -> BrokerLimits {
        BrokerLimits {
            max_payload_bytes: AWS_MAX_PAYLOAD,
            publishes_per_second: None,
            max_subscriptions: None,
            max_filters_per_subscribe: None,
            connects_per_second_per_client_id: None,
            keep_alive_min_s: 30,
            keep_alive_max_s: 1200,
            max_client_id_bytes: None,
            max_topic_bytes: None,
            max_topic_slashes: None,
            topic_alias_maximum: 8,
            receive_maximum: None,
            connect_timeout_ms: 10_000,
        }
    }

    /// The `aws` profile: the figures of docs/aws-fleet-provisioning.md §5.2.
    pub(crate) fn aws() -> BrokerLimits {
        BrokerLimits {
            publishes_per_second: Some(100),
            max_subscriptions: Some(50),
            max_filters_per_subscribe: Some(8),
            connects_per_second_per_client_id: Some(1),
            max_client_id_bytes: Some(128),
            max_topic_bytes: Some(256),
            max_topic_slashes: Some(7),
            receive_maximum: Some(100),
            ..BrokerLimits::unlimited()
        }
    }

    /// The limits of `profile` with `overrides` applied.
    pub(crate) fn resolve(
        profile: BrokerProfile,
        overrides: &BrokerLimitOverrides,
    ) -> BrokerLimits {
        let mut l = match profile {
            BrokerProfile::Unlimited => BrokerLimits::unlimited(),
            BrokerProfile::Aws => BrokerLimits::aws(),
        };
        let o = overrides;
        if let Some(v) = o.max_payload_bytes {
            l.max_payload_bytes = v;
        }
        set_opt(&mut l.publishes_per_second, o.publishes_per_second);
        set_opt(&mut l.max_subscriptions, o.max_subscriptions);
        set_opt(
            &mut l.max_filters_per_subscribe,
            o.max_filters_per_subscribe,
        );
        set_opt(
            &mut l.connects_per_second_per_client_id,
            o.connects_per_second_per_client_id,
        );
        if let Some(v) = o.keep_alive_min_s {
            l.keep_alive_min_s = v;
        }
        if let Some(v) = o.keep_alive_max_s {
            l.keep_alive_max_s = v;
        }
        set_opt(&mut l.max_client_id_bytes, o.max_client_id_bytes);
        set_opt(&mut l.max_topic_bytes, o.max_topic_bytes);
        set_opt(&mut l.max_topic_slashes, o.max_topic_slashes);
        if let Some(v) = o.topic_alias_maximum {
            l.topic_alias_maximum = v;
        }
        set_opt(&mut l.receive_maximum, o.receive_maximum);
        if let Some(v) = o.connect_timeout_ms {
            l.connect_timeout_ms = v;
        }
        l
    }

    /// Keep-alive as AWS applies it: 0 or above the maximum → the maximum; below the
    /// minimum → the minimum.
    pub(crate) fn effective_keep_alive(&self, requested_s: u16) -> u16 {
        let (min, max) = (self.keep_alive_min_s, self.keep_alive_max_s);
        match requested_s {
            0 => max,
            s if s > max => max,
            s if s < min => min,
            s => s,
        }
    }

    /// Largest packet the broker reads from a client (the MQTT 5 CONNACK Maximum Packet Size).
    pub(crate) fn max_packet_bytes(&self) -> usize {
        self.max_payload_bytes.saturating_add(PACKET_OVERHEAD)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

impl Default for BrokerLimits {
    fn default() -> Self {
        BrokerLimits::unlimited()
    }
}

/// `0` in an override of an optional limit means "no limit".
fn set_opt<T: TryFrom<u64>>(slot: &mut Option<T>, value: Option<u64>) {
    match value {
        None => {}
        Some(0) => *slot = None,
        Some(v) => *slot = T::try_from(v).ok(),
    }
}

/// `[emulator.broker_limits]`: per-limit overrides applied on top of `broker_profile`.
/// For the optional limits (rates and counts), `0` means "no limit".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawOverrides")]
pub struct BrokerLimitOverrides {
    pub max_payload_bytes: Option<usize>,
    pub publishes_per_second: Option<u64>,
    pub max_subscriptions: Option<u64>,
    pub max_filters_per_subscribe: Option<u64>,
    pub connects_per_second_per_client_id: Option<u64>,
    pub keep_alive_min_s: Option<u16>,
    pub keep_alive_max_s: Option<u16>,
    pub max_client_id_bytes: Option<u64>,
    pub max_topic_bytes: Option<u64>,
    pub max_topic_slashes: Option<u64>,
    pub topic_alias_maximum: Option<u16>,
    pub receive_maximum: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
}

/// The overrides as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverrides {
    max_payload_bytes: Option<usize>,
    publishes_per_second: Option<u64>,
    max_subscriptions: Option<u64>,
    max_filters_per_subscribe: Option<u64>,
    connects_per_second_per_client_id: Option<u64>,
    keep_alive_min_s: Option<u16>,
    keep_alive_max_s: Option<u16>,
    max_client_id_bytes: Option<u64>,
    max_topic_bytes: Option<u64>,
    max_topic_slashes: Option<u64>,
    topic_alias_maximum: Option<u16>,
    receive_maximum: Option<u64>,
    connect_timeout_ms: Option<u64>,
}

impl TryFrom<RawOverrides> for BrokerLimitOverrides {
    type Error = String;

    fn try_from(r: RawOverrides) -> Result<Self, String> {
        if r.max_payload_bytes == Some(0) {
            return Err("max_payload_bytes must be at least 1 (AWS: 131072)".into());
        }
        if r.max_payload_bytes.is_some_and(|v| v > 256 * 1024 * 1024) {
            return Err("max_payload_bytes must be at most 268435456 (the MQTT maximum)".into());
        }
        if r.keep_alive_min_s == Some(0) {
            return Err("keep_alive_min_s must be at least 1 (AWS: 30)".into());
        }
        // Both profiles clamp to 30–1200 s, so an override of one end is checked against the
        // other end's profile value.
        let (min, max) = (
            r.keep_alive_min_s.unwrap_or(30),
            r.keep_alive_max_s.unwrap_or(1200),
        );
        if min > max {
            return Err(format!(
                "keep_alive_min_s ({min}) must not exceed keep_alive_max_s ({max})"
            ));
        }
        if r.keep_alive_max_s == Some(0) {
            return Err("keep_alive_max_s must be at least 1 (AWS: 1200)".into());
        }
        if r.publishes_per_second
            .is_some_and(|v| v > u64::from(u32::MAX))
            || r.connects_per_second_per_client_id
                .is_some_and(|v| v > u64::from(u32::MAX))
        {
            return Err("rates must be at most 4294967295 per second (0 = no limit)".into());
        }
        if r.receive_maximum.is_some_and(|v| v > u64::from(u16::MAX)) {
            return Err("receive_maximum must be at most 65535 (0 = not advertised)".into());
        }
        if r.connect_timeout_ms == Some(0) {
            return Err("connect_timeout_ms must be at least 1".into());
        }
        Ok(BrokerLimitOverrides {
            max_payload_bytes: r.max_payload_bytes,
            publishes_per_second: r.publishes_per_second,
            max_subscriptions: r.max_subscriptions,
            max_filters_per_subscribe: r.max_filters_per_subscribe,
            connects_per_second_per_client_id: r.connects_per_second_per_client_id,
            keep_alive_min_s: r.keep_alive_min_s,
            keep_alive_max_s: r.keep_alive_max_s,
            max_client_id_bytes: r.max_client_id_bytes,
            max_topic_bytes: r.max_topic_bytes,
            max_topic_slashes: r.max_topic_slashes,
            topic_alias_maximum: r.topic_alias_maximum,
            receive_maximum: r.receive_maximum,
            connect_timeout_ms: r.connect_timeout_ms,
        })
    }
}

/// CONNECT rate per client id: one token bucket per client id seen recently.
pub(crate) struct ConnectRate {
    rate: u32,
    buckets: HashMap<String, TokenBucket>,
    /// Size at which full buckets are swept out.
    sweep_at: usize,
}

impl ConnectRate {
    pub(crate) fn new(rate: u32) -> ConnectRate {
        ConnectRate {
            rate,
            buckets: HashMap::new(),
            sweep_at: 1024,
        }
    }

    /// Records a CONNECT for `client_id`; false if it exceeds the rate.
    pub(crate) fn admit(&mut self, client_id: &str, now: Instant) -> bool {
        if self.buckets.len() >= self.sweep_at {
            self.buckets.retain(|_, b| !b.is_full(now));
            self.sweep_at = (self.buckets.len() * 2).max(1024);
        }
        match self.buckets.get_mut(client_id) {
            Some(b) => b.take(now),
            None => {
                let mut b = TokenBucket::per_second(self.rate, now);
                let ok = b.take(now);
                self.buckets.insert(client_id.to_string(), b);
                ok
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_clamped_like_aws() {
        let l = BrokerLimits::aws();
        assert_eq!(l.effective_keep_alive(0), 1200);
        assert_eq!(l.effective_keep_alive(5), 30);
        assert_eq!(l.effective_keep_alive(60), 60);
        assert_eq!(l.effective_keep_alive(5000), 1200);
    }

    #[test]
    fn overrides_apply_on_the_profile_and_zero_lifts_a_limit() {
        let o: BrokerLimitOverrides =
            toml::from_str("max_subscriptions = 0\npublishes_per_second = 7\nkeep_alive_min_s = 2")
                .unwrap();
        let l = BrokerLimits::resolve(BrokerProfile::Aws, &o);
        assert_eq!(l.max_subscriptions, None);
        assert_eq!(l.publishes_per_second, Some(7));
        assert_eq!(l.keep_alive_min_s, 2);
        assert_eq!(l.max_filters_per_subscribe, Some(8));
        let l = BrokerLimits::resolve(BrokerProfile::Unlimited, &BrokerLimitOverrides::default());
        assert_eq!(l, BrokerLimits::unlimited());
    }

    #[test]
    fn bad_overrides_are_refused_with_the_key() {
        let e =
            toml::from_str::<BrokerLimitOverrides>("keep_alive_min_s = 50\nkeep_alive_max_s = 40")
                .unwrap_err()
                .to_string();
        assert!(e.contains("keep_alive_min_s"), "{e}");
        assert!(toml::from_str::<BrokerLimitOverrides>("keep_alive_min_s = 2000").is_err());
        assert!(toml::from_str::<BrokerLimitOverrides>("keep_alive_max_s = 10").is_err());
        assert!(toml::from_str::<BrokerLimitOverrides>("no_such_limit = 1").is_err());
        assert!(toml::from_str::<BrokerLimitOverrides>("max_payload_bytes = 0").is_err());
    }

    #[test]
    fn the_emulator_section_reads_the_broker_keys() {
        let cfg: crate::EmulatorConfig = toml::from_str(
            r#"
            broker_profile = "aws"
            alpn_listen = "127.0.0.1:8443"
            [broker_limits]
            max_subscriptions = 10
            publishes_per_second = 0
            "#,
        )
        .unwrap();
        assert_eq!(cfg.alpn_listen.as_deref(), Some("127.0.0.1:8443"));
        let l = BrokerLimits::resolve(cfg.broker_profile, &cfg.broker_limits);
        assert_eq!(l.max_subscriptions, Some(10));
        assert_eq!(l.publishes_per_second, None);
        assert_eq!(l.max_filters_per_subscribe, Some(8));
        let d = crate::EmulatorConfig::default();
        assert_eq!(
            BrokerLimits::resolve(d.broker_profile, &d.broker_limits),
            BrokerLimits::unlimited()
        );
        assert!(d.alpn_listen.is_none());
        let e = toml::from_str::<crate::EmulatorConfig>("broker_profile = \"fast\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unlimited") && e.contains("aws"), "{e}");
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_second(10, t0);
        assert_eq!((0..20).filter(|_| b.take(t0)).count(), 10);
        assert!(!b.take(t0 + Duration::from_millis(50)));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert_eq!(
            (0..20)
                .filter(|_| b.take(t0 + Duration::from_secs(5)))
                .count(),
            10
        );
    }

    #[test]
    fn connect_rate_is_per_client_id() {
        let t0 = Instant::now();
        let mut r = ConnectRate::new(1);
        assert!(r.admit("a", t0));
        assert!(!r.admit("a", t0 + Duration::from_millis(10)));
        assert!(r.admit("b", t0 + Duration::from_millis(10)));
        assert!(r.admit("a", t0 + Duration::from_millis(1010)));
        // Buckets that have refilled are swept; the table does not grow without bound.
        for i in 0..5000u64 {
            assert!(r.admit(&format!("c{i}"), t0 + Duration::from_secs(3 + i)));
        }
        assert!(r.buckets.len() <= 2048, "{}", r.buckets.len());
    }
}
