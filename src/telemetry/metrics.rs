//! Prometheus metrics, rendered from the latest [`Snapshot`] at scrape time.
//!
//! Nothing here is updated by the pipeline: [`Metrics`] holds a receiver of the aggregator's
//! watch channel and, when `/metrics` is scraped ([`super::http`]), turns the newest snapshot
//! into metric families (a `prometheus` [`Collector`] of constant metrics) and encodes them in
//! the text format. The snapshot's counts are cumulative over the run, so the counters never
//! go down; the stage histograms are derived from the HDR histograms (cumulative counts at
//! fixed bounds, 1 ms … 60 s).
//!
//! Labels have bounded values: API codes, result codes, failure codes, stage names, and the
//! configured jig names. Never a serial number or a thing name. [`ALL`] lists every metric;
//! README's "Metrics" section documents each (a test keeps the two in step).

use std::time::Duration;

use hdrhistogram::Histogram;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::sync::watch;

use super::{Snapshot, Stage};

/// One metric: its name, type, label names and help text.
#[derive(Debug)]
pub struct Spec {
    pub name: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn spec(
    name: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
    help: &'static str,
) -> Spec {
    Spec {
        name,
        kind,
        labels,
        help,
    }
}

use MetricType::{COUNTER, GAUGE, HISTOGRAM};

pub const DEVICES: Spec = spec(
    "fleet_station_devices_total",
    COUNTER,
    &["outcome"],
    "Devices that ended, by outcome (provisioned, failed, interrupted).",
);
pub const FAILURES: Spec = spec(
    "fleet_station_device_failures_total",
    COUNTER,
    &["reason"],
    "Failed devices by failure code (e.g. register_thing:InvalidParameters, jig:timeout).",
);
pub const API_REQUESTS: Spec = spec(
    "fleet_station_api_requests_total",
    COUNTER,
    &["api", "result"],
    "Fleet-provisioning API requests by API and result (accepted, an AWS errorCode, timeout, connection_lost, ...); every try counts.",
);
pub const RETRIES: Spec = spec(
    "fleet_station_retries_total",
    COUNTER,
    &["api"],
    "Calls retried, by API (and jig_write for whole credential writes).",
);
pub const THROTTLES: Spec = spec(
    "fleet_station_throttles_total",
    COUNTER,
    &["api"],
    "Requests the endpoint throttled, by API.",
);
pub const JIG_BOARDS: Spec = spec(
    "fleet_station_jig_boards_written_total",
    COUNTER,
    &["jig"],
    "Boards whose credentials were written, committed and verified, by jig.",
);
pub const JIG_FAILED: Spec = spec(
    "fleet_station_jig_boards_failed_total",
    COUNTER,
    &["jig"],
    "Boards whose write or verify failed twice, by jig.",
);
pub const JIG_BYTES: Spec = spec(
    "fleet_station_jig_payload_bytes_total",
    COUNTER,
    &["jig"],
    "Payload (credential slot) bytes written to verified boards, by jig.",
);
pub const JIG_SKIPPED: Spec = spec(
    "fleet_station_jig_skipped_bytes_total",
    COUNTER,
    &["jig"],
    "Slot bytes left out of writes because the board already held them, by jig.",
);
pub const JIG_RETRIES: Spec = spec(
    "fleet_station_jig_retries_total",
    COUNTER,
    &["jig"],
    "Frames sent again and whole writes repeated, by jig.",
);
pub const OUTAGES: Spec = spec(
    "fleet_station_endpoint_outages_total",
    COUNTER,
    &[],
    "Times the endpoint became unreachable (devices waited for it).",
);
pub const IN_FLIGHT: Spec = spec(
    "fleet_station_devices_in_flight",
    GAUGE,
    &[],
    "Devices started and not yet ended.",
);
pub const KEY_STOCK: Spec = spec(
    "fleet_station_key_stock",
    GAUGE,
    &[],
    "Ready key pairs in the key pool.",
);
pub const KEY_CAPACITY: Spec = spec(
    "fleet_station_key_stock_capacity",
    GAUGE,
    &[],
    "Key pairs the key pool keeps in stock when it can.",
);
pub const SESSIONS_CONNECTED: Spec = spec(
    "fleet_station_sessions_connected",
    GAUGE,
    &[],
    "MQTT sessions with a live connection.",
);
pub const SESSIONS_BUSY: Spec = spec(
    "fleet_station_sessions_busy",
    GAUGE,
    &[],
    "MQTT sessions working on a device.",
);
pub const SESSIONS_POOL: Spec = spec(
    "fleet_station_sessions_pool_size",
    GAUGE,
    &[],
    "MQTT sessions in the pool.",
);
pub const JIGS_CONNECTED: Spec = spec(
    "fleet_station_jigs_connected",
    GAUGE,
    &[],
    "Jigs whose port is open.",
);
pub const RATE_TARGET: Spec = spec(
    "fleet_station_rate_target_requests_per_second",
    GAUGE,
    &["api"],
    "The rate controller's current target per API (absent when the API is unlimited).",
);
pub const RATE_ACTUAL: Spec = spec(
    "fleet_station_rate_actual_requests_per_second",
    GAUGE,
    &["api"],
    "Requests per second answered over the last seconds, per API.",
);
pub const ENDPOINT_REACHABLE: Spec = spec(
    "fleet_station_endpoint_reachable",
    GAUGE,
    &[],
    "1 while the endpoint can be reached, 0 while devices wait for it.",
);
pub const STAGE_DURATION: Spec = spec(
    "fleet_station_stage_duration_seconds",
    HISTOGRAM,
    &["stage"],
    "Latency of each stage of a device (keygen, create_certificate, register_thing, jig_write, end_to_end).",
);

/// The station's identity as an info metric (the Prometheus convention: a gauge of 1 whose
/// labels are joined onto other series in queries), so stations sharing a ledger are told apart
/// on a dashboard: `fleet_station_devices_total * on(instance) group_left(station)
/// fleet_station_info`.
pub const INFO: Spec = spec(
    "fleet_station_info",
    GAUGE,
    &["station", "version"],
    "The station's id (station.id) and fleet-station version; always 1.",
);

/// Every metric `/metrics` may show.
pub const ALL: &[&Spec] = &[
    &INFO,
    &DEVICES,
    &FAILURES,
    &API_REQUESTS,
    &RETRIES,
    &THROTTLES,
    &JIG_BOARDS,
    &JIG_FAILED,
    &JIG_BYTES,
    &JIG_SKIPPED,
    &JIG_RETRIES,
    &OUTAGES,
    &IN_FLIGHT,
    &KEY_STOCK,
    &KEY_CAPACITY,
    &SESSIONS_CONNECTED,
    &SESSIONS_BUSY,
    &SESSIONS_POOL,
    &JIGS_CONNECTED,
    &RATE_TARGET,
    &RATE_ACTUAL,
    &ENDPOINT_REACHABLE,
    &STAGE_DURATION,
];

/// Upper bounds of the stage histograms' buckets, in seconds (`+Inf` is added).
pub const BUCKETS_S: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family being filled.
struct Family<'s> {
    spec: &'s Spec,
    family: MetricFamily,
}

impl<'s> Family<'s> {
    fn new(spec: &'s Spec) -> Family<'s> {
        let mut family = MetricFamily::default();
        family.set_name(spec.name.to_string());
        family.set_help(spec.help.to_string());
        family.set_field_type(spec.kind);
        Family { spec, family }
    }

    fn metric(&mut self, labels: &[&str]) -> &mut proto::Metric {
        debug_assert_eq!(labels.len(), self.spec.labels.len(), "{}", self.spec.name);
        let mut m = proto::Metric::default();
        m.set_label(
            self.spec
                .labels
                .iter()
                .zip(labels)
                .map(|(name, value)| {
                    let mut l = proto::LabelPair::default();
                    l.set_name(name.to_string());
                    l.set_value(value.to_string());
                    l
                })
                .collect(),
        );
        let metrics = self.family.mut_metric();
        metrics.push(m);
        metrics.last_mut().expect("just pushed")
    }

    fn counter(&mut self, labels: &[&str], value: u64) -> &mut Self {
        let mut c = proto::Counter::default();
        c.set_value(value as f64);
        self.metric(labels).set_counter(c);
        self
    }

    fn gauge(&mut self, labels: &[&str], value: f64) -> &mut Self {
        let mut g = proto::Gauge::default();
        g.set_value(value);
        self.metric(labels).set_gauge(g);
        self
    }

    fn histogram(&mut self, labels: &[&str], h: &Histogram<u64>) -> &mut Self {
        let (buckets, sum_us) = buckets(h);
        let mut p = proto::Histogram::default();
        p.set_sample_count(h.len());
        p.set_sample_sum(sum_us as f64 / 1e6);
        p.set_bucket(
            BUCKETS_S
                .iter()
                .zip(buckets)
                .map(|(bound, count)| {
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(*bound);
                    b.set_cumulative_count(count);
                    b
                })
                .collect(),
        );
        self.metric(labels).set_histogram(p);
        self
    }
}

/// Cumulative counts at [`BUCKETS_S`] and the sum (µs) of a histogram of microseconds, in one
/// pass over its recorded values. A value counts in a bucket when the lowest value of its HDR
/// bucket is within the bound (exact below 2 ms, within 0.1 % above).
fn buckets(h: &Histogram<u64>) -> (Vec<u64>, u128) {
    let bounds: Vec<u64> = BUCKETS_S
        .iter()
        .map(|s| Duration::from_secs_f64(*s).as_micros() as u64)
        .collect();
    let mut counts = vec![0u64; bounds.len()];
    let mut sum: u128 = 0;
    for v in h.iter_recorded() {
        let value = v.value_iterated_to();
        let n = v.count_at_value();
        sum += u128::from(h.median_equivalent(value)) * u128::from(n);
        let low = h.lowest_equivalent(value);
        if let Some(first) = bounds.iter().position(|b| low <= *b) {
            counts[first] += n;
        }
    }
    let mut running = 0;
    for c in &mut counts {
        running += *c;
        *c = running;
    }
    (counts, sum)
}

/// The metric families of one snapshot (empty families included; the registry drops them).
pub fn families(s: &Snapshot) -> Vec<MetricFamily> {
    let mut out = Vec::with_capacity(ALL.len());
    let mut push = |f: &mut Family| out.push(std::mem::take(&mut f.family));

    let mut f = Family::new(&DEVICES);
    f.counter(&["provisioned"], s.provisioned)
        .counter(&["failed"], s.failed)
        .counter(&["interrupted"], s.interrupted);
    push(&mut f);

    let mut f = Family::new(&FAILURES);
    for (reason, n) in &s.failures {
        f.counter(&[reason], *n);
    }
    push(&mut f);

    let mut f = Family::new(&API_REQUESTS);
    for ((api, result), n) in &s.api_results {
        f.counter(&[api, result], *n);
    }
    push(&mut f);

    for (spec, map) in [
        (&RETRIES, &s.retries_by_api),
        (&THROTTLES, &s.throttled_by_api),
    ] {
        let mut f = Family::new(spec);
        for (api, n) in map {
            f.counter(&[api], *n);
        }
        push(&mut f);
    }

    for (spec, value) in [
        (&JIG_BOARDS, (|j| j.boards) as fn(&super::JigTotals) -> u64),
        (&JIG_FAILED, |j| j.failed_boards),
        (&JIG_BYTES, |j| j.payload_bytes),
        (&JIG_SKIPPED, |j| j.skipped_bytes),
        (&JIG_RETRIES, |j| j.retries),
    ] {
        let mut f = Family::new(spec);
        for (name, j) in &s.jigs {
            f.counter(&[name], value(j));
        }
        push(&mut f);
    }

    let mut f = Family::new(&OUTAGES);
    f.counter(&[], s.outages);
    push(&mut f);

    let (connected, busy, pool) = s.sessions;
    for (spec, value) in [
        (&IN_FLIGHT, s.in_flight() as f64),
        (&KEY_STOCK, s.key_stock.0 as f64),
        (&KEY_CAPACITY, s.key_stock.1 as f64),
        (&SESSIONS_CONNECTED, connected as f64),
        (&SESSIONS_BUSY, busy as f64),
        (&SESSIONS_POOL, pool as f64),
        (
            &JIGS_CONNECTED,
            s.jigs.values().filter(|j| j.connected).count() as f64,
        ),
        (
            &ENDPOINT_REACHABLE,
            if s.endpoint_down.is_none() { 1.0 } else { 0.0 },
        ),
    ] {
        let mut f = Family::new(spec);
        f.gauge(&[], value);
        push(&mut f);
    }

    let mut target = Family::new(&RATE_TARGET);
    let mut actual = Family::new(&RATE_ACTUAL);
    for r in &s.rates {
        if let Some(t) = r.target {
            target.gauge(&[r.api.code()], t);
        }
        actual.gauge(&[r.api.code()], r.actual);
    }
    push(&mut target);
    push(&mut actual);

    let mut f = Family::new(&STAGE_DURATION);
    for stage in Stage::ALL {
        if let Some(h) = s.histograms.get(&stage) {
            f.histogram(&[stage.name()], h);
        }
    }
    push(&mut f);
    out
}

/// A `prometheus` collector of the latest snapshot's metrics.
struct SnapshotCollector {
    snapshots: watch::Receiver<Snapshot>,
    descs: Vec<Desc>,
    /// `station.id`, for [`INFO`].
    station: String,
}

impl Collector for SnapshotCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // A copy, so the aggregator's next publish never waits for the rendering.
        let snapshot = self.snapshots.borrow().clone();
        let mut out = families(&snapshot);
        let mut info = Family::new(&INFO);
        info.gauge(&[&self.station, env!("CARGO_PKG_VERSION")], 1.0);
        out.push(info.family);
        out
    }
}

/// The station's metrics registry, reading the aggregator's snapshots.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// The metrics of station `station` (`station.id`).
    pub fn new(snapshots: watch::Receiver<Snapshot>, station: &str) -> Metrics {
        let descs = ALL
            .iter()
            .map(|s| {
                Desc::new(
                    s.name.to_string(),
                    s.help.to_string(),
                    s.labels.iter().map(|l| l.to_string()).collect(),
                    Default::default(),
                )
                .expect("the metric names and labels are valid (unit-tested)")
            })
            .collect();
        let registry = Registry::new();
        registry
            .register(Box::new(SnapshotCollector {
                snapshots,
                descs,
                station: station.to_string(),
            }))
            .expect("one collector in a new registry");
        Metrics { registry }
    }

    /// The text exposition of the latest snapshot.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the registry drops empty families; writing to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::fleet::ApiKind;
    use crate::provision::FailureCode;
    use crate::provision::rate::Limits;
    use crate::telemetry::{Aggregate, ApiResult, Event, Shared};

    /// Samples of a text exposition: `name{labels}` → value.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_string(), value.parse().unwrap())
            })
            .collect()
    }

    fn render(s: Snapshot) -> String {
        let (_tx, rx) = watch::channel(s);
        Metrics::new(rx, "station-1").render()
    }

    fn started(serial: &str, jig: &str) -> Event {
        Event::DeviceStarted {
            serial: serial.into(),
            jig: jig.into(),
        }
    }

    fn call(serial: &str, api: ApiKind, result: ApiResult) -> Event {
        Event::ApiCall {
            api,
            result,
            serial: serial.into(),
        }
    }

    /// A run so far: SN-1 provisioned on jig-a, SN-2 failed on jig-b, SN-3 in flight on
    /// jig-a; a throttle, retries, stage times; the endpoint down; sessions busy.
    fn populated() -> (Aggregate, (usize, usize), Shared) {
        let mut agg = Aggregate::new();
        let mut stock = (0, 0);
        let events = vec![
            Event::JigConnection {
                jig: "jig-a".into(),
                connected: true,
            },
            Event::JigConnection {
                jig: "jig-b".into(),
                connected: true,
            },
            Event::KeyStock {
                level: 40,
                capacity: 64,
            },
            started("SN-1", "jig-a"),
            started("SN-2", "jig-b"),
            call(
                "SN-1",
                ApiKind::CreateCertificateFromCsr,
                ApiResult::Accepted,
            ),
            call(
                "SN-1",
                ApiKind::RegisterThing,
                ApiResult::Rejected {
                    status: 429,
                    error_code: "Throttling".into(),
                },
            ),
            Event::Throttled {
                api: ApiKind::RegisterThing,
            },
            Event::Retry {
                api: "register_thing",
            },
            call("SN-1", ApiKind::RegisterThing, ApiResult::Accepted),
            Event::StageTime {
                stage: Stage::RegisterThing,
                elapsed: Duration::from_micros(700),
            },
            Event::StageTime {
                stage: Stage::RegisterThing,
                elapsed: Duration::from_millis(20),
            },
            Event::StageTime {
                stage: Stage::RegisterThing,
                elapsed: Duration::from_secs(90),
            },
            Event::JigWrite {
                jig: "jig-a".into(),
                payload_bytes: 2000,
                skipped_bytes: 1200,
                elapsed: Duration::from_millis(30),
                baud: 921_600,
                retries: 2,
            },
            Event::DeviceProvisioned {
                serial: "SN-1".into(),
            },
            call(
                "SN-2",
                ApiKind::CreateCertificateFromCsr,
                ApiResult::Accepted,
            ),
            call(
                "SN-2",
                ApiKind::RegisterThing,
                ApiResult::Rejected {
                    status: 400,
                    error_code: "InvalidParameters".into(),
                },
            ),
            Event::DeviceFailed {
                serial: "SN-2".into(),
                reason: FailureCode::Rejected {
                    api: ApiKind::RegisterThing,
                    error_code: "InvalidParameters".into(),
                },
            },
            started("SN-3", "jig-a"),
            Event::EndpointUnreachable {
                reason: "connection refused".into(),
            },
        ];
        for e in events {
            agg.apply(e, &mut stock);
        }
        let shared = Shared::default();
        shared.sessions.total.store(16, Ordering::Relaxed);
        shared.sessions.connected.store(15, Ordering::Relaxed);
        shared.sessions.busy.store(3, Ordering::Relaxed);
        let limits = Limits::new(0.0, 0.0, 25.0, 100.0);
        let _ = shared.limits.set(Arc::new(limits));
        (agg, stock, shared)
    }

    #[test]
    fn renders_every_figure_of_a_populated_snapshot_with_bounded_labels() {
        let (agg, stock, shared) = populated();
        let text = render(agg.snapshot(stock, &shared));
        let s = samples(&text);
        let v = |k: &str| *s.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
        assert_eq!(
            v(r#"fleet_station_devices_total{outcome="provisioned"}"#),
            1.0
        );
        assert_eq!(v(r#"fleet_station_devices_total{outcome="failed"}"#), 1.0);
        assert_eq!(
            v(r#"fleet_station_devices_total{outcome="interrupted"}"#),
            0.0
        );
        assert_eq!(
            v(r#"fleet_station_device_failures_total{reason="register_thing:InvalidParameters"}"#),
            1.0
        );
        assert_eq!(
            v(r#"fleet_station_api_requests_total{api="register_thing",result="Throttling"}"#),
            1.0
        );
        assert_eq!(
            v(r#"fleet_station_api_requests_total{api="register_thing",result="accepted"}"#),
            1.0
        );
        assert_eq!(
            v(r#"fleet_station_api_requests_total{api="create_certificate",result="accepted"}"#),
            2.0
        );
        assert_eq!(
            v(r#"fleet_station_retries_total{api="register_thing"}"#),
            1.0
        );
        assert_eq!(
            v(r#"fleet_station_throttles_total{api="register_thing"}"#),
            1.0
        );
        assert_eq!(
            v(r#"fleet_station_jig_boards_written_total{jig="jig-a"}"#),
            1.0
        );
        assert_eq!(
            v(r#"fleet_station_jig_boards_written_total{jig="jig-b"}"#),
            0.0
        );
        assert_eq!(
            v(r#"fleet_station_jig_payload_bytes_total{jig="jig-a"}"#),
            2000.0
        );
        assert_eq!(
            v(r#"fleet_station_jig_skipped_bytes_total{jig="jig-a"}"#),
            1200.0
        );
        assert_eq!(v(r#"fleet_station_jig_retries_total{jig="jig-a"}"#), 2.0);
        assert_eq!(
            v(r#"fleet_station_jig_boards_failed_total{jig="jig-a"}"#),
            0.0
        );
        assert_eq!(v("fleet_station_endpoint_outages_total"), 1.0);
        // Gauges.
        assert_eq!(v("fleet_station_devices_in_flight"), 1.0);
        assert_eq!(v("fleet_station_key_stock"), 40.0);
        assert_eq!(v("fleet_station_key_stock_capacity"), 64.0);
        assert_eq!(v("fleet_station_sessions_connected"), 15.0);
        assert_eq!(v("fleet_station_sessions_busy"), 3.0);
        assert_eq!(v("fleet_station_sessions_pool_size"), 16.0);
        assert_eq!(v("fleet_station_jigs_connected"), 2.0);
        assert_eq!(v("fleet_station_endpoint_reachable"), 0.0);
        // RegisterThing is limited to 25/s; CreateCertificateFromCsr is unlimited: its
        // target is absent, its actual rate is shown.
        assert_eq!(
            v(r#"fleet_station_rate_target_requests_per_second{api="register_thing"}"#),
            25.0
        );
        assert!(!text.contains(r#"rate_target_requests_per_second{api="create_certificate"}"#));
        assert!(s.contains_key(
            r#"fleet_station_rate_actual_requests_per_second{api="create_certificate"}"#
        ));
        // The histogram: 0.7 ms, 20 ms and 90 s, in seconds, cumulative, +Inf = count.
        let b = |le: &str| {
            v(&format!(
                r#"fleet_station_stage_duration_seconds_bucket{{stage="register_thing",le="{le}"}}"#
            ))
        };
        assert_eq!(b("0.001"), 1.0);
        assert_eq!(b("0.01"), 1.0);
        assert_eq!(b("0.025"), 2.0);
        assert_eq!(b("60"), 2.0);
        assert_eq!(b("+Inf"), 3.0);
        assert_eq!(
            v(r#"fleet_station_stage_duration_seconds_count{stage="register_thing"}"#),
            3.0
        );
        let sum = v(r#"fleet_station_stage_duration_seconds_sum{stage="register_thing"}"#);
        assert!((sum - 90.0207).abs() < 0.1, "{sum}");
        // Every stage has its histogram, empty ones included.
        for stage in Stage::ALL {
            assert!(
                s.contains_key(&format!(
                    r#"fleet_station_stage_duration_seconds_count{{stage="{}"}}"#,
                    stage.name()
                )),
                "{}",
                stage.name()
            );
        }
        // Types and help, and no serial number anywhere.
        assert!(text.contains("# TYPE fleet_station_devices_total counter"));
        assert!(text.contains("# TYPE fleet_station_key_stock gauge"));
        assert!(text.contains("# TYPE fleet_station_stage_duration_seconds histogram"));
        assert!(text.contains("# HELP fleet_station_devices_in_flight "));
        assert!(!text.contains("SN-"), "{text}");
    }

    #[test]
    fn counters_are_cumulative_across_scrapes() {
        let (mut agg, mut stock, shared) = populated();
        let (tx, rx) = watch::channel(agg.snapshot(stock, &shared));
        let metrics = Metrics::new(rx, "station-1");
        let before = samples(&metrics.render());
        // More happens: SN-3 ends; a jig write fails; a new failure code appears.
        for e in [
            Event::JigFailed {
                jig: "jig-a".into(),
            },
            Event::DeviceFailed {
                serial: "SN-3".into(),
                reason: FailureCode::Jig(crate::jig::JigFailure::Timeout),
            },
            Event::StageTime {
                stage: Stage::RegisterThing,
                elapsed: Duration::from_millis(3),
            },
            Event::EndpointReachable {
                after: Duration::from_secs(2),
            },
        ] {
            agg.apply(e, &mut stock);
        }
        tx.send(agg.snapshot(stock, &shared)).unwrap();
        let text = metrics.render();
        let after = samples(&text);
        // The collector reads the latest snapshot at scrape time.
        assert_eq!(
            after[r#"fleet_station_devices_total{outcome="failed"}"#],
            2.0
        );
        assert_eq!(after["fleet_station_endpoint_reachable"], 1.0);
        assert_eq!(after["fleet_station_devices_in_flight"], 0.0);
        assert_eq!(
            after[r#"fleet_station_device_failures_total{reason="jig:timeout"}"#],
            1.0
        );
        // No counter series went down or went away.
        let counter = |k: &str| {
            k.contains("_total")
                || k.contains("_bucket")
                || k.contains("_count")
                || k.contains("_sum")
        };
        for (k, v) in before.iter().filter(|(k, _)| counter(k)) {
            let now = after.get(k).unwrap_or_else(|| panic!("{k} went away"));
            assert!(now >= v, "{k} went down: {v} → {now}");
        }
        assert_eq!(
            after[r#"fleet_station_stage_duration_seconds_bucket{stage="register_thing",le="0.005"}"#],
            2.0
        );
    }

    #[test]
    fn an_empty_snapshot_renders_zeroes_not_errors() {
        let text = render(Snapshot::default());
        let s = samples(&text);
        assert_eq!(
            s[r#"fleet_station_devices_total{outcome="provisioned"}"#],
            0.0
        );
        assert_eq!(s["fleet_station_endpoint_reachable"], 1.0);
        assert!(!text.contains("fleet_station_device_failures_total"));
    }

    #[test]
    fn the_readme_documents_every_metric() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## Metrics")
            .nth(1)
            .expect("README has a Metrics section");
        for spec in ALL {
            assert!(
                section.contains(&format!("`{}`", spec.name)),
                "README's Metrics section does not list {}",
                spec.name
            );
            for label in spec.labels {
                assert!(section.contains(&format!("`{label}`")), "{label}");
            }
        }
    }

    #[test]
    fn the_grafana_dashboard_plots_only_metrics_the_station_exports() {
        let dashboard = include_str!("../../docs/grafana-dashboard.json");
        let json: serde_json::Value = serde_json::from_str(dashboard).unwrap();
        let mut named = 0;
        for panel in json["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for (i, _) in expr.match_indices("fleet_station_") {
                    let name: String = expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let base = name.strip_suffix("_bucket").unwrap_or(&name);
                    assert!(
                        ALL.iter().any(|m| m.name == base),
                        "{base} in docs/grafana-dashboard.json is not exported"
                    );
                    named += 1;
                }
            }
        }
        assert!(named >= ALL.len(), "{named}");
    }
}
