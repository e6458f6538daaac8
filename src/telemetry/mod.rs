//! Telemetry: every stage reports [`Event`]s on one bounded channel; a single aggregator task
//! turns them into latency histograms, counters and a [`Snapshot`] published on a watch
//! channel. Consumers (the headless [`progress`] printer now, the dashboard later) read
//! snapshots; none of them can steer the pipeline.
//!
//! Besides events, two live readings are shared without events, because they change on every
//! call: the MQTT sessions' state ([`SessionGauges`]) and the rate controller's targets (the
//! engine's [`Limits`], attached once). The aggregator reads both when it publishes.
//!
//! A load test in steps names its current step ([`Event::Step`], shown by the dashboard) and
//! cuts the stream with [`Telemetry::totals`]: the running totals after every event sent
//! before the cut, which it diffs into one step's figures.
//!
//! - [`summary`]: the end-of-run `summary.json` built from the aggregate.
//! - [`progress`]: the headless progress printer.
//! - [`report`]: the report folder's other files (`.hgrm`, plots, `failures.csv`) and
//!   `station report`.
//! - [`metrics`]: Prometheus metrics, rendered from the latest snapshot at scrape time.
//! - [`http`]: the `/metrics` HTTP endpoint serving them.

pub mod http;
pub mod metrics;
pub mod progress;
pub mod report;
pub mod summary;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;

use crate::fleet::ApiKind;
use crate::provision::FailureCode;
use crate::provision::rate::Limits;
use tokio::sync::{mpsc, watch};

/// The timed stages of a device's provisioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Waiting for key material (a ready key from the pool).
    Keygen,
    /// `CreateCertificateFromCsr` round trip (including retries).
    CreateCertificate,
    /// `RegisterThing` round trip (including retries).
    RegisterThing,
    /// Writing, committing and verifying the credentials on the board.
    JigWrite,
    /// From the board's HELLO to its verified identity.
    EndToEnd,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Keygen,
        Stage::CreateCertificate,
        Stage::RegisterThing,
        Stage::JigWrite,
        Stage::EndToEnd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Keygen => "keygen",
            Stage::CreateCertificate => "create_certificate",
            Stage::RegisterThing => "register_thing",
            Stage::JigWrite => "jig_write",
            Stage::EndToEnd => "end_to_end",
        }
    }
}

impl FailureCode {
    /// The stage a device failed in, for reports: an API's stage, the jig write, key
    /// generation, or `None` for failures outside the timed stages (the post-provision check,
    /// a board that already holds an identity, a template parameter the board lacks).
    pub fn stage(&self) -> Option<Stage> {
        let api_stage = |api: &ApiKind| match api {
            ApiKind::RegisterThing => Stage::RegisterThing,
            ApiKind::CreateCertificateFromCsr | ApiKind::CreateKeysAndCertificate => {
                Stage::CreateCertificate
            }
        };
        match self {
            FailureCode::Rejected { api, .. }
            | FailureCode::GaveUp(api)
            | FailureCode::Deadline(api) => Some(api_stage(api)),
            FailureCode::NoThingName => Some(Stage::RegisterThing),
            FailureCode::CertificateRounds | FailureCode::NeedsNewKey => {
                Some(Stage::CreateCertificate)
            }
            FailureCode::KeyGeneration | FailureCode::BoardCsr => Some(Stage::Keygen),
            FailureCode::Jig(_) => Some(Stage::JigWrite),
            FailureCode::MissingBoardValue(_)
            | FailureCode::PostCheckTls
            | FailureCode::PostCheckConnect
            | FailureCode::AlreadyProvisioned
            | FailureCode::HeldElsewhere => None,
        }
    }
}

/// How one API request ended, as counted per API and result (a bounded set of values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiResult {
    /// The accepted topic answered (and the reply was usable).
    Accepted,
    /// The accepted topic answered with a reply the station could not use.
    Unusable,
    /// The rejected topic answered with this AWS `errorCode` (`Throttling`, `InvalidCSR`, …).
    Rejected { status: u16, error_code: String },
    /// No answer within the request timeout.
    Timeout,
    /// The connection closed or could not be made.
    ConnectionLost,
    /// The broker refused the PUBLISH (MQTT 5 PUBACK reason).
    PublishRefused,
}

impl ApiResult {
    /// The result as a label: `accepted`, the AWS errorCode, `timeout`, ….
    pub fn label(&self) -> &str {
        match self {
            ApiResult::Accepted => "accepted",
            ApiResult::Unusable => "unusable_reply",
            ApiResult::Rejected { error_code, .. } => error_code,
            ApiResult::Timeout => "timeout",
            ApiResult::ConnectionLost => "connection_lost",
            ApiResult::PublishRefused => "publish_refused",
        }
    }
}

/// Something that happened in the pipeline.
#[derive(Debug, Clone)]
pub enum Event {
    DeviceStarted {
        serial: String,
        jig: String,
    },
    StageTime {
        stage: Stage,
        elapsed: Duration,
    },
    DeviceProvisioned {
        serial: String,
    },
    DeviceFailed {
        serial: String,
        reason: FailureCode,
    },
    /// The station stopped while the device was in flight; it keeps its state and resumes.
    DeviceInterrupted {
        serial: String,
    },
    /// The operator sent a failed device round again (`r`): it no longer counts as failed
    /// (nor as started) until it starts again; the failure log keeps its failure.
    Requeued {
        serial: String,
    },
    /// The endpoint cannot be reached: devices wait for it.
    EndpointUnreachable {
        reason: String,
    },
    /// The endpoint is reachable again after `after`.
    EndpointReachable {
        after: Duration,
    },
    /// Another connection took over one of the station's client ids.
    SessionTakenOver {
        client_id: String,
    },
    /// A call is retried: `api` is an API's code (`register_thing`, …) or `jig_write`.
    Retry {
        api: &'static str,
    },
    /// An API answered 429 or the connection was closed at a request (AWS's throttle).
    Throttled {
        api: ApiKind,
    },
    /// One API request ended (every try counts, retries included).
    ApiCall {
        api: ApiKind,
        result: ApiResult,
        /// The board the request was for (to count its attempts; never a metric label).
        serial: String,
    },
    KeyStock {
        level: usize,
        capacity: usize,
    },
    /// A board's credentials were written, committed and verified.
    JigWrite {
        jig: String,
        /// Slot bytes written (the payload).
        payload_bytes: u64,
        /// Slot bytes left out because the board already held them (`jigs.skip_held`).
        skipped_bytes: u64,
        /// From the question of what the board holds (or the first PUT) to the verified
        /// read-back.
        elapsed: Duration,
        /// The port's line rate (0 = unpaced virtual line).
        baud: u32,
        /// Frames sent again (CRC errors, timeouts) and whole-write retries.
        retries: u64,
    },
    /// A board failed at the jig (write or verify failed twice).
    JigFailed {
        jig: String,
    },
    /// The credentials write on a jig progressed: `done` of `total` payload bytes are on
    /// the board. Sent a few times per write, not per frame.
    JigProgress {
        jig: String,
        done: u64,
        total: u64,
    },
    /// A jig's port went away or came back.
    JigConnection {
        jig: String,
        connected: bool,
    },
    /// A load test's step began (`label`: its rate and place, for the operator's surface).
    Step {
        label: String,
    },
    /// Asks for the running totals as they are after every event sent before this one
    /// ([`Telemetry::totals`]: a load test cuts its steps with them).
    Mark(TotalsReply),
}

/// The running totals a load test diffs to get one step's figures.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// API requests by (API code, result label).
    pub api_results: BTreeMap<(&'static str, String), u64>,
    /// Throttles by API code.
    pub throttled_by_api: BTreeMap<&'static str, u64>,
    /// The per-API stages' latency histograms (microseconds).
    pub histograms: BTreeMap<Stage, Histogram<u64>>,
}

/// Where the aggregator sends the [`Totals`] of an [`Event::Mark`].
#[derive(Clone)]
pub struct TotalsReply(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Totals>>>>);

impl std::fmt::Debug for TotalsReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotalsReply")
    }
}

/// What one jig did in a run.
#[derive(Debug, Clone, Default)]
pub struct JigTotals {
    pub boards: u64,
    pub payload_bytes: u64,
    /// Slot bytes the boards already held, left out of their writes.
    pub skipped_bytes: u64,
    pub write_time: Duration,
    /// Σ baud/10 × write time: the bytes the line could have carried meanwhile.
    pub capacity_bytes: f64,
    pub retries: u64,
    pub failed_boards: u64,
    pub disconnects: u64,
    pub connected: bool,
    /// The board on the jig now (from its start to its end).
    pub current: Option<String>,
    /// The current write: payload bytes on the board, of the write's total.
    pub progress: Option<(u64, u64)>,
    /// How the last board on this jig ended.
    pub last: Option<JigOutcome>,
}

impl JigTotals {
    /// Payload bytes per byte the line could have carried while writing (0 when unpaced).
    pub fn efficiency(&self) -> f64 {
        if self.capacity_bytes > 0.0 {
            self.payload_bytes as f64 / self.capacity_bytes
        } else {
            0.0
        }
    }
}

/// How a jig's last board ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JigOutcome {
    Provisioned { serial: String },
    Failed { serial: String, reason: String },
    Interrupted { serial: String },
}

/// One failed device, for the dashboard's list and `failures.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRecord {
    pub serial: String,
    /// The stage it failed in (`Stage::name`), or `other`.
    pub stage: &'static str,
    /// The failure code (`register_thing:InvalidParameters`, `jig:timeout`, …).
    pub reason: String,
    /// API requests sent for the device in this run (retries included).
    pub attempts: u32,
    /// Since the start of the run.
    pub at: Duration,
    /// Wall-clock time of the failure.
    pub wall: SystemTime,
}

/// Devices that ended in one second of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Second {
    pub provisioned: u32,
    pub failed: u32,
}

/// The MQTT sessions' state, kept by the engine (no events: it changes on every call).
#[derive(Debug, Default)]
pub struct SessionGauges {
    /// Sessions in the pool.
    pub total: AtomicUsize,
    /// Sessions with a live connection.
    pub connected: AtomicUsize,
    /// Sessions working on a device.
    pub busy: AtomicUsize,
}

/// Holds one count of a gauge (`connected` or `busy`) and gives it back when dropped.
#[derive(Debug)]
pub struct GaugeHold {
    gauges: Arc<SessionGauges>,
    busy: bool,
}

impl GaugeHold {
    fn counter(&self) -> &AtomicUsize {
        if self.busy {
            &self.gauges.busy
        } else {
            &self.gauges.connected
        }
    }
}

impl Drop for GaugeHold {
    fn drop(&mut self) {
        self.counter().fetch_sub(1, Ordering::Relaxed);
    }
}

impl SessionGauges {
    /// Counts a connected session until the hold is dropped.
    pub fn connected(self: &Arc<Self>) -> GaugeHold {
        self.hold(false)
    }

    /// Counts a busy session until the hold is dropped.
    pub fn busy(self: &Arc<Self>) -> GaugeHold {
        self.hold(true)
    }

    fn hold(self: &Arc<Self>, busy: bool) -> GaugeHold {
        let h = GaugeHold {
            gauges: self.clone(),
            busy,
        };
        h.counter().fetch_add(1, Ordering::Relaxed);
        h
    }
}

/// One API's rate control, as the dashboard and `/metrics` show it.
#[derive(Debug, Clone, PartialEq)]
pub struct RateRow {
    pub api: ApiKind,
    /// The rate controller's current target (requests/s); `None` = unlimited.
    pub target: Option<f64>,
    /// Requests answered per second over the last seconds.
    pub actual: f64,
    /// Time since the last throttle of this API.
    pub last_throttle: Option<Duration>,
}

/// One stage's figures so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageRow {
    pub stage: Stage,
    pub count: u64,
    pub p50: Duration,
    pub p99: Duration,
}

/// What the telemetry handles share besides the event channel.
#[derive(Debug, Default)]
struct Shared {
    sessions: Arc<SessionGauges>,
    limits: OnceLock<Arc<Limits>>,
}

/// A cheap, cloneable handle for emitting events.
#[derive(Clone)]
pub struct Telemetry {
    tx: mpsc::Sender<Event>,
    shared: Arc<Shared>,
}

impl Telemetry {
    /// The sessions' gauges, for the engine to keep.
    pub fn session_gauges(&self) -> Arc<SessionGauges> {
        self.shared.sessions.clone()
    }

    /// Lets the aggregator read the engine's rate limiters (the first call wins).
    pub fn attach_limits(&self, limits: Arc<Limits>) {
        let _ = self.shared.limits.set(limits);
    }

    /// Emits from async code (waits if the aggregator is behind: back-pressure, not loss).
    pub async fn emit(&self, e: Event) {
        let _ = self.tx.send(e).await;
    }

    /// The running totals after every event emitted before this call (None if the
    /// aggregator has ended).
    pub async fn totals(&self) -> Option<Totals> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply = TotalsReply(Arc::new(std::sync::Mutex::new(Some(tx))));
        self.emit(Event::Mark(reply)).await;
        rx.await.ok()
    }

    /// Emits from a plain thread.
    pub fn emit_blocking(&self, e: Event) {
        let _ = self.tx.blocking_send(e);
    }
}

/// How many recent failures a snapshot carries.
pub const RECENT_FAILURES: usize = 20;
/// How many seconds of throughput a snapshot carries.
pub const RECENT_SECONDS: usize = 300;
/// The window of an API's actual rate, in whole seconds.
const RATE_WINDOW_S: u64 = 5;

/// What consumers see, refreshed a few times a second.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub elapsed: Duration,
    /// Time from the start to the last finished device (the throughput denominator).
    pub busy: Duration,
    pub started: u64,
    pub provisioned: u64,
    pub failed: u64,
    pub interrupted: u64,
    /// Failed devices the operator sent round again.
    pub requeued: u64,
    pub retries: u64,
    pub throttled: u64,
    /// Why the endpoint cannot be reached, and since when (devices are paused).
    pub endpoint_down: Option<(String, Duration)>,
    /// Times the endpoint became unreachable.
    pub outages: u64,
    pub key_stock: (usize, usize),
    pub jig_bytes: u64,
    /// Jigs whose port is currently gone.
    pub jigs_disconnected: usize,
    /// Median end-to-end latency so far.
    pub p50_end_to_end: Duration,
    /// Each stage's count, p50 and p99 so far.
    pub stages: Vec<StageRow>,
    /// The stages' latency histograms (microseconds), shared until the next publish.
    pub histograms: Arc<BTreeMap<Stage, Histogram<u64>>>,
    /// Failed devices by failure code.
    pub failures: BTreeMap<String, u64>,
    /// API requests by (API code, result label).
    pub api_results: BTreeMap<(&'static str, String), u64>,
    /// Retries by API code (and `jig_write`).
    pub retries_by_api: BTreeMap<&'static str, u64>,
    /// Throttles by API code.
    pub throttled_by_api: BTreeMap<&'static str, u64>,
    /// MQTT sessions: (connected, busy, in the pool).
    pub sessions: (usize, usize, usize),
    /// The rate controller per API in use.
    pub rates: Vec<RateRow>,
    /// Every jig seen, by name.
    pub jigs: BTreeMap<String, JigTotals>,
    /// The latest failures, oldest first (at most [`RECENT_FAILURES`]).
    pub recent_failures: Vec<FailureRecord>,
    /// Devices ended per second over the last [`RECENT_SECONDS`] seconds, oldest first; the
    /// last entry is the current second.
    pub seconds: Vec<Second>,
    /// A load test's current step (its rate and place), if it runs in steps.
    pub step: Option<String>,
}

impl Snapshot {
    pub fn in_flight(&self) -> u64 {
        self.started
            .saturating_sub(self.provisioned + self.failed + self.interrupted)
    }
}

/// Everything the aggregator learned; returned when the event channel closes.
pub struct Aggregate {
    pub started_at: Instant,
    /// When the last device finished (provisioned or failed); the run's throughput is
    /// measured up to here, not up to the teardown.
    pub last_done_at: Option<Instant>,
    pub finished_at: Instant,
    pub histograms: BTreeMap<Stage, Histogram<u64>>,
    pub started: u64,
    pub provisioned: u64,
    pub failed: u64,
    pub interrupted: u64,
    /// Failed devices the operator sent round again.
    pub requeued: u64,
    pub retries: u64,
    pub throttled: u64,
    pub failures: BTreeMap<String, u64>,
    /// Endpoint outages: how many, and their total length.
    pub outages: u64,
    pub outage_time: Duration,
    /// Since when, and why, the endpoint is unreachable now.
    pub down: Option<(Instant, String)>,
    /// Client ids another connection took over.
    pub takeovers: u64,
    pub jig_bytes: u64,
    pub jigs: BTreeMap<String, JigTotals>,
    /// API requests by (API code, result label).
    pub api_results: BTreeMap<(&'static str, String), u64>,
    pub retries_by_api: BTreeMap<&'static str, u64>,
    pub throttled_by_api: BTreeMap<&'static str, u64>,
    /// Every failed device of the run, in order.
    pub failure_log: Vec<FailureRecord>,
    /// Devices ended in each second of the run.
    pub seconds: Vec<Second>,
    /// A load test's current step.
    pub step: Option<String>,
    last_throttle: BTreeMap<&'static str, Instant>,
    /// Requests answered per API in the last seconds: (second of the run, count).
    api_seconds: BTreeMap<&'static str, VecDeque<(u64, u32)>>,
    /// API requests per device in flight, by serial.
    attempts: HashMap<String, u32>,
    /// The jig of each device in flight, by serial.
    jig_of: HashMap<String, String>,
}

impl Aggregate {
    fn new() -> Aggregate {
        let histograms = Stage::ALL
            .iter()
            .map(|s| {
                // Microseconds, up to one hour, 3 significant figures.
                let h = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
                (*s, h)
            })
            .collect();
        let now = Instant::now();
        Aggregate {
            started_at: now,
            last_done_at: None,
            finished_at: now,
            histograms,
            started: 0,
            provisioned: 0,
            failed: 0,
            interrupted: 0,
            requeued: 0,
            retries: 0,
            throttled: 0,
            failures: BTreeMap::new(),
            outages: 0,
            outage_time: Duration::ZERO,
            down: None,
            takeovers: 0,
            jig_bytes: 0,
            jigs: BTreeMap::new(),
            api_results: BTreeMap::new(),
            retries_by_api: BTreeMap::new(),
            throttled_by_api: BTreeMap::new(),
            failure_log: Vec::new(),
            seconds: Vec::new(),
            step: None,
            last_throttle: BTreeMap::new(),
            api_seconds: BTreeMap::new(),
            attempts: HashMap::new(),
            jig_of: HashMap::new(),
        }
    }

    /// The second of the run `now` falls in.
    fn second_of(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started_at).as_secs()
    }

    /// The bucket of the current second.
    fn this_second(&mut self, now: Instant) -> &mut Second {
        let i = self.second_of(now) as usize;
        if self.seconds.len() <= i {
            self.seconds.resize(i + 1, Second::default());
        }
        &mut self.seconds[i]
    }

    /// A device in flight ended: forget its jig and attempts; mark its jig's last board.
    fn device_ended(&mut self, serial: &str, outcome: impl FnOnce(String) -> JigOutcome) -> u32 {
        let attempts = self.attempts.remove(serial).unwrap_or(0);
        if let Some(jig) = self.jig_of.remove(serial)
            && let Some(j) = self.jigs.get_mut(&jig)
        {
            j.current = None;
            j.progress = None;
            j.last = Some(outcome(serial.to_string()));
        }
        attempts
    }

    fn apply(&mut self, e: Event, key_stock: &mut (usize, usize)) {
        let now = Instant::now();
        match e {
            Event::DeviceStarted { serial, jig } => {
                self.started += 1;
                let j = self.jigs.entry(jig.clone()).or_default();
                j.current = Some(serial.clone());
                j.progress = None;
                self.jig_of.insert(serial, jig);
            }
            Event::StageTime { stage, elapsed } => {
                let us = (elapsed.as_micros() as u64).clamp(1, 3_600_000_000);
                if let Some(h) = self.histograms.get_mut(&stage) {
                    let _ = h.record(us);
                }
            }
            Event::DeviceProvisioned { serial } => {
                self.provisioned += 1;
                self.last_done_at = Some(now);
                self.this_second(now).provisioned += 1;
                self.device_ended(&serial, |serial| JigOutcome::Provisioned { serial });
            }
            Event::DeviceFailed { serial, reason } => {
                self.failed += 1;
                self.last_done_at = Some(now);
                self.this_second(now).failed += 1;
                let text = reason.to_string();
                *self.failures.entry(text.clone()).or_default() += 1;
                let attempts = self.device_ended(&serial, |serial| JigOutcome::Failed {
                    serial,
                    reason: text.clone(),
                });
                self.failure_log.push(FailureRecord {
                    serial,
                    stage: reason.stage().map_or("other", Stage::name),
                    reason: text,
                    attempts,
                    at: now.saturating_duration_since(self.started_at),
                    wall: SystemTime::now(),
                });
            }
            Event::DeviceInterrupted { serial } => {
                self.interrupted += 1;
                self.device_ended(&serial, |serial| JigOutcome::Interrupted { serial });
            }
            Event::Requeued { serial } => {
                // Only a device whose failure is on record is taken back.
                if let Some(f) = self.failure_log.iter().rev().find(|f| f.serial == serial) {
                    if let Some(n) = self.failures.get_mut(&f.reason) {
                        *n -= 1;
                        if *n == 0 {
                            self.failures.remove(&f.reason);
                        }
                    }
                    self.failed = self.failed.saturating_sub(1);
                    self.started = self.started.saturating_sub(1);
                    self.requeued += 1;
                }
            }
            Event::EndpointUnreachable { reason } => {
                if self.down.is_none() {
                    self.outages += 1;
                    self.down = Some((now, reason));
                }
            }
            Event::EndpointReachable { after } => {
                self.down = None;
                self.outage_time += after;
            }
            Event::SessionTakenOver { .. } => self.takeovers += 1,
            Event::Retry { api } => {
                self.retries += 1;
                *self.retries_by_api.entry(api).or_default() += 1;
            }
            Event::Throttled { api } => {
                self.throttled += 1;
                *self.throttled_by_api.entry(api.code()).or_default() += 1;
                self.last_throttle.insert(api.code(), now);
            }
            Event::ApiCall {
                api,
                result,
                serial,
            } => {
                *self
                    .api_results
                    .entry((api.code(), result.label().to_string()))
                    .or_default() += 1;
                *self.attempts.entry(serial).or_default() += 1;
                let second = self.second_of(now);
                let window = self.api_seconds.entry(api.code()).or_default();
                match window.back_mut() {
                    Some((s, n)) if *s == second => *n += 1,
                    _ => window.push_back((second, 1)),
                }
                while window
                    .front()
                    .is_some_and(|(s, _)| *s + RATE_WINDOW_S < second)
                {
                    window.pop_front();
                }
            }
            Event::KeyStock { level, capacity } => *key_stock = (level, capacity),
            Event::JigWrite {
                jig,
                payload_bytes,
                skipped_bytes,
                elapsed,
                baud,
                retries,
            } => {
                self.jig_bytes += payload_bytes;
                let j = self.jigs.entry(jig).or_default();
                j.boards += 1;
                j.payload_bytes += payload_bytes;
                j.skipped_bytes += skipped_bytes;
                j.write_time += elapsed;
                j.capacity_bytes += f64::from(baud) / 10.0 * elapsed.as_secs_f64();
                j.retries += retries;
                j.progress = Some((payload_bytes, payload_bytes));
            }
            Event::JigFailed { jig } => self.jigs.entry(jig).or_default().failed_boards += 1,
            Event::JigProgress { jig, done, total } => {
                self.jigs.entry(jig).or_default().progress = Some((done, total));
            }
            Event::JigConnection { jig, connected } => {
                let j = self.jigs.entry(jig).or_default();
                if j.connected && !connected {
                    j.disconnects += 1;
                }
                j.connected = connected;
            }
            Event::Step { label } => self.step = Some(label),
            Event::Mark(TotalsReply(reply)) => {
                let reply = reply.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(reply) = reply {
                    let _ = reply.send(Totals {
                        api_results: self.api_results.clone(),
                        throttled_by_api: self.throttled_by_api.clone(),
                        histograms: self
                            .histograms
                            .iter()
                            .filter(|(s, _)| {
                                matches!(s, Stage::CreateCertificate | Stage::RegisterThing)
                            })
                            .map(|(s, h)| (*s, h.clone()))
                            .collect(),
                    });
                }
            }
        }
    }

    /// Requests per second of `api` answered over the last whole seconds.
    fn actual_rate(&self, api: &'static str, now: Instant) -> f64 {
        let second = self.second_of(now);
        // Whole seconds before the current one, at most RATE_WINDOW_S, at least 1.
        let span = second.clamp(1, RATE_WINDOW_S);
        let n: u32 = self.api_seconds.get(api).map_or(0, |w| {
            w.iter()
                .filter(|(s, _)| *s < second && *s + span >= second)
                .map(|(_, n)| n)
                .sum()
        });
        f64::from(n) / span as f64
    }

    fn rates(&self, limits: Option<&Limits>, now: Instant) -> Vec<RateRow> {
        let Some(limits) = limits else {
            return Vec::new();
        };
        [
            (
                ApiKind::CreateCertificateFromCsr,
                &limits.create_certificate,
            ),
            (ApiKind::CreateKeysAndCertificate, &limits.create_keys),
            (ApiKind::RegisterThing, &limits.register_thing),
        ]
        .into_iter()
        .filter_map(|(api, limiter)| {
            let target = limiter.rate();
            let used = self.api_results.keys().any(|(a, _)| *a == api.code());
            (used || target.is_some()).then(|| RateRow {
                api,
                target,
                actual: self.actual_rate(api.code(), now),
                last_throttle: self
                    .last_throttle
                    .get(api.code())
                    .map(|t| now.saturating_duration_since(*t)),
            })
        })
        .collect()
    }

    fn snapshot(&self, key_stock: (usize, usize), shared: &Shared) -> Snapshot {
        let now = Instant::now();
        let quantile = |h: &Histogram<u64>, q: f64| Duration::from_micros(h.value_at_quantile(q));
        let seconds_now = self.second_of(now) as usize + 1;
        let mut seconds: Vec<Second> = (seconds_now.saturating_sub(RECENT_SECONDS)..seconds_now)
            .map(|i| self.seconds.get(i).copied().unwrap_or_default())
            .collect();
        seconds.shrink_to_fit();
        let g = &shared.sessions;
        Snapshot {
            elapsed: now.saturating_duration_since(self.started_at),
            busy: self
                .last_done_at
                .map_or(Duration::ZERO, |t| t.duration_since(self.started_at)),
            started: self.started,
            provisioned: self.provisioned,
            failed: self.failed,
            interrupted: self.interrupted,
            requeued: self.requeued,
            retries: self.retries,
            throttled: self.throttled,
            endpoint_down: self
                .down
                .as_ref()
                .map(|(since, why)| (why.clone(), since.elapsed())),
            outages: self.outages,
            key_stock,
            jig_bytes: self.jig_bytes,
            jigs_disconnected: self.jigs.values().filter(|j| !j.connected).count(),
            p50_end_to_end: quantile(&self.histograms[&Stage::EndToEnd], 0.5),
            stages: self
                .histograms
                .iter()
                .map(|(stage, h)| StageRow {
                    stage: *stage,
                    count: h.len(),
                    p50: quantile(h, 0.5),
                    p99: quantile(h, 0.99),
                })
                .collect(),
            histograms: Arc::new(self.histograms.clone()),
            failures: self.failures.clone(),
            api_results: self.api_results.clone(),
            retries_by_api: self.retries_by_api.clone(),
            throttled_by_api: self.throttled_by_api.clone(),
            sessions: (
                g.connected.load(Ordering::Relaxed),
                g.busy.load(Ordering::Relaxed),
                g.total.load(Ordering::Relaxed),
            ),
            rates: self.rates(shared.limits.get().map(|l| &**l), now),
            jigs: self.jigs.clone(),
            recent_failures: self.failure_log
                [self.failure_log.len().saturating_sub(RECENT_FAILURES)..]
                .to_vec(),
            seconds,
            step: self.step.clone(),
        }
    }
}

/// Starts the aggregator. It ends, returning the aggregate, when every [`Telemetry`] handle
/// has been dropped.
pub fn start() -> (
    Telemetry,
    watch::Receiver<Snapshot>,
    tokio::task::JoinHandle<Aggregate>,
) {
    let (tx, mut rx) = mpsc::channel::<Event>(65_536);
    let (snap_tx, snap_rx) = watch::channel(Snapshot::default());
    let shared = Arc::new(Shared::default());
    let reader = shared.clone();
    let task = tokio::spawn(async move {
        let mut agg = Aggregate::new();
        let mut key_stock = (0, 0);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => agg.apply(e, &mut key_stock),
                    None => break,
                },
                _ = tick.tick() => {
                    let _ = snap_tx.send(agg.snapshot(key_stock, &reader));
                }
            }
        }
        agg.finished_at = Instant::now();
        let _ = snap_tx.send(agg.snapshot(key_stock, &reader));
        agg
    });
    (Telemetry { tx, shared }, snap_rx, task)
}

#[cfg(test)]
mod tests;
