//! The provisioning engine: a pool of MQTT sessions that turn a board's identity request into
//! a certificate and a registered thing.
//!
//! - [`tls`]: the claim identity as a rustls client config.
//! - [`session`]: one MQTT connection, subscribed, with at most one outstanding request.
//! - [`flow`]: the per-device certificate → `RegisterThing` flow and its resume.
//! - `call`: one API call with its retries: what each failure means (wait, slow down, stop
//!   the line, fail), lost answers, and the grace a sent request gets at a stop.
//! - [`down`]: why a connection failed (outage, throttle, or configuration), from rumqttc's
//!   errors and the server's reason codes.
//! - [`health`]: what every session shares about the line: the first-device probe, outages,
//!   and the errors that stop the line ([`health::LineError`]).
//! - [`failure`]: [`FailureCode`], why a device failed, as a type.
//! - [`check`]: `station check` — handshake, CONNACK, SUBACKs and requests that create
//!   nothing; nothing provisioned.
//! - [`rate`]: token buckets per API shared by all sessions, adapting to throttling (AIMD).
//! - [`shared_quota`]: the account quota all stations share in PostgreSQL
//!   (`provision.shared_quota`), taken in batches, paced here.
//!
//! [`Provisioner::start`] runs one task per session; each takes the next [`DeviceJob`] from a
//! shared bounded queue, runs the flow on its session and answers the job's reply channel.
//! Sessions are reused from device to device and rebuilt (paced to one CONNECT per second per
//! client id) when they fail. A device ends provisioned, failed (its own problem), or
//! interrupted (the station stopped, or the line stopped for a problem no retry can fix; the
//! ledger keeps its state so it resumes).

mod call;
pub mod check;
pub mod down;
pub mod failure;
pub mod flow;
pub mod health;
pub mod rate;
pub mod session;
pub mod shared_quota;
pub mod tls;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::fleet::payloads::Secret;
use crate::fleet::{Api, ApiKind, Format, MqttVersion};
use crate::halt::Halt;
use crate::keys::KeyPool;
use crate::ledger::{KeySource, Ledger, Resume};
use crate::telemetry::{GaugeHold, SessionGauges, Telemetry};

pub use self::failure::FailureCode;
use self::health::LineHealth;
use self::rate::{Limits, RateLimiter};
use self::session::{Session, SessionConfig, SessionError};
use self::shared_quota::SharedQuota;

/// What the board (or a synthetic device) tells the station about itself.
#[derive(Debug, Clone, Default)]
pub struct BoardIdentity {
    pub serial: String,
    pub mac: Option<String>,
    pub hw_rev: Option<String>,
    /// Name of the jig the board sits on.
    pub jig: String,
}

/// The credentials a provisioned board receives.
pub struct Credentials {
    pub certificate_id: String,
    pub certificate_pem: String,
    /// The private key to write (`None` when the board made it and keeps it).
    pub private_key: Option<Secret>,
    pub key_source: KeySource,
    pub thing_name: String,
    pub device_configuration: BTreeMap<String, String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("certificate_id", &self.certificate_id)
            .field("thing_name", &self.thing_name)
            .finish_non_exhaustive()
    }
}

/// Why a device could not be provisioned: a stable [`FailureCode`] (counted in reports) and
/// a message that says which exchange failed and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeviceFailure {
    pub code: FailureCode,
    pub message: String,
}

impl DeviceFailure {
    pub fn new(code: FailureCode, message: impl Into<String>) -> DeviceFailure {
        DeviceFailure {
            code,
            message: message.into(),
        }
    }
}

/// Why a device did not get its identity in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotProvisioned {
    /// The device failed; the ledger records why.
    Failed(DeviceFailure),
    /// The station stopped (Ctrl-C, or the line stopped for a problem no retry can fix)
    /// while the device was in flight. Not a failure: the ledger keeps the device's state and
    /// it resumes where it stopped.
    Interrupted,
}

impl fmt::Display for NotProvisioned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotProvisioned::Failed(failure) => write!(f, "{}: {}", failure.code, failure.message),
            NotProvisioned::Interrupted => f.write_str("interrupted: the station stopped"),
        }
    }
}

impl From<DeviceFailure> for NotProvisioned {
    fn from(f: DeviceFailure) -> Self {
        NotProvisioned::Failed(f)
    }
}

/// Where the device's key comes from, for this job.
#[derive(Debug, Clone)]
pub enum KeyPlan {
    /// A key from the station's pool.
    Pool,
    /// The board made its key; this is its CSR (PEM).
    Device { csr_pem: String },
    /// AWS makes the key (CreateKeysAndCertificate).
    Aws,
    /// The board already holds its committed key (a resumed board): no new certificate may
    /// be requested for it.
    Committed,
}

/// One device to provision.
pub struct DeviceJob {
    /// Ledger id of the device (from `Ledger::begin`).
    pub device_id: i64,
    pub board: BoardIdentity,
    pub key: KeyPlan,
    /// Where an earlier run left this device, if it did.
    pub resume: Option<Resume>,
    pub reply: oneshot::Sender<Result<Credentials, NotProvisioned>>,
}

/// Engine settings.
#[derive(Clone)]
pub struct EngineConfig {
    pub host: String,
    pub port: u16,
    pub tls: Arc<rustls::ClientConfig>,
    pub station_id: String,
    pub sessions: usize,
    pub template: String,
    pub format: Format,
    pub request_timeout: Duration,
    pub max_attempts: u32,
    /// Template parameters (literals and `{placeholders}`).
    pub parameters: BTreeMap<String, String>,
    /// Rate limiters shared by all sessions.
    pub limits: Arc<Limits>,
    /// A device not done within this fails.
    pub device_deadline: Duration,
    pub mqtt_version: MqttVersion,
    /// Connect once with each new identity (station- or AWS-made keys).
    pub post_provision_check: bool,
    /// Trust anchors of the endpoint (for the post-provision check).
    pub roots: rustls::RootCertStore,
    /// Whether devices get AWS-made keys (CreateKeysAndCertificate) rather than CSRs; the
    /// sessions subscribe to that API's replies only (a claim policy may allow just one).
    pub aws_keys: bool,
}

impl Limits {
    /// Limiters from per-API quotas (0 = none until throttled) and a CONNECT rate.
    pub fn new(
        create_certificate: f64,
        create_keys: f64,
        register_thing: f64,
        connects: f64,
    ) -> Limits {
        Limits {
            create_certificate: RateLimiter::new(create_certificate, 0.0),
            create_keys: RateLimiter::new(create_keys, 0.0),
            register_thing: RateLimiter::new(register_thing, 0.0),
            connect: RateLimiter::new(connects, connects),
        }
    }

    /// Limiters that take their tokens from the account quota all stations share (`quota`,
    /// one bucket per API whose quota is configured: an API with none is not called on a
    /// line that shares its quota, as the configuration requires it), and a CONNECT rate of
    /// the station's own.
    pub fn shared(
        quota: &Arc<SharedQuota>,
        create_certificate: f64,
        create_keys: f64,
        register_thing: f64,
        connects: f64,
    ) -> Limits {
        let limiter = |api: ApiKind, tps: f64| {
            if tps > 0.0 {
                RateLimiter::shared(quota.bucket(api.code(), tps))
            } else {
                RateLimiter::new(0.0, 0.0)
            }
        };
        Limits {
            create_certificate: limiter(ApiKind::CreateCertificateFromCsr, create_certificate),
            create_keys: limiter(ApiKind::CreateKeysAndCertificate, create_keys),
            register_thing: limiter(ApiKind::RegisterThing, register_thing),
            connect: RateLimiter::new(connects, connects),
        }
    }

    /// Open limiters for every API and for CONNECTs: the load-test modes that measure an
    /// account's quotas offer their load unpaced and count the throttles (see [`rate`]).
    pub fn open_loop() -> Limits {
        Limits {
            create_certificate: RateLimiter::open(),
            create_keys: RateLimiter::open(),
            register_thing: RateLimiter::open(),
            connect: RateLimiter::open(),
        }
    }
}

/// The running engine.
pub struct Provisioner {
    jobs: mpsc::Sender<DeviceJob>,
    tasks: Vec<JoinHandle<()>>,
}

impl Provisioner {
    /// Starts one task per session. Sessions connect lazily, on their first device. A
    /// problem no retry can fix is raised on `halt`, which stops the line.
    pub fn start(
        cfg: EngineConfig,
        keys: Arc<KeyPool>,
        ledger: Ledger,
        telemetry: Telemetry,
        halt: Halt,
    ) -> Provisioner {
        let (jobs, rx) = mpsc::channel::<DeviceJob>(cfg.sessions.max(1) * 2);
        let rx = Arc::new(Mutex::new(rx));
        let cfg = Arc::new(cfg);
        let health = Arc::new(LineHealth::new(cfg.max_attempts));
        telemetry.attach_limits(cfg.limits.clone());
        let gauges = telemetry.session_gauges();
        gauges
            .total
            .fetch_add(cfg.sessions.max(1), std::sync::atomic::Ordering::Relaxed);
        let tasks = (0..cfg.sessions.max(1))
            .map(|n| {
                let slot = SessionSlot::new(session_config(&cfg, n)).counted(gauges.clone());
                let ctx = flow::FlowContext {
                    cfg: cfg.clone(),
                    keys: keys.clone(),
                    ledger: ledger.clone(),
                    telemetry: telemetry.clone(),
                    halt: halt.clone(),
                    health: health.clone(),
                };
                tokio::spawn(session_task(slot, rx.clone(), ctx))
            })
            .collect();
        Provisioner { jobs, tasks }
    }

    /// The queue devices are submitted on (bounded: submitters wait when all sessions are busy).
    pub fn submitter(&self) -> mpsc::Sender<DeviceJob> {
        self.jobs.clone()
    }

    /// Stops taking jobs and waits for the sessions to finish their current device.
    pub async fn shutdown(self) {
        drop(self.jobs);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn session_config(cfg: &EngineConfig, n: usize) -> SessionConfig {
    SessionConfig {
        host: cfg.host.clone(),
        port: cfg.port,
        client_id: format!("{}-{n}", cfg.station_id),
        tls: cfg.tls.clone(),
        format: cfg.format,
        apis: vec![
            if cfg.aws_keys {
                Api::CreateKeysAndCertificate
            } else {
                Api::CreateCertificateFromCsr
            },
            Api::RegisterThing {
                template: cfg.template.clone(),
            },
        ],
        connect_timeout: cfg.request_timeout,
        keep_alive: Duration::from_secs(60),
        mqtt_version: cfg.mqtt_version,
    }
}

async fn session_task(
    mut slot: SessionSlot,
    jobs: Arc<Mutex<mpsc::Receiver<DeviceJob>>>,
    ctx: flow::FlowContext,
) {
    loop {
        let job = {
            let mut rx = jobs.lock().await;
            tokio::select! {
                j = rx.recv() => j,
                _ = ctx.halt.shutdown().wait() => None,
            }
        };
        let Some(mut job) = job else { break };
        let busy = slot.gauges.as_ref().map(|g| g.busy());
        let result = flow::provision(&ctx, &mut slot, &mut job).await;
        drop(busy);
        let _ = job.reply.send(result);
    }
    slot.close().await;
}

/// Answers a session delivered lately, to recognize a late duplicate of one.
const REMEMBERED: usize = 16;

/// A session that is (re)built on demand, never more than one CONNECT per second.
pub struct SessionSlot {
    cfg: SessionConfig,
    session: Option<Session>,
    last_connect: Option<Instant>,
    /// Set by [`get`](Self::get) when it made a new connection.
    fresh: bool,
    /// (serial, thing name) of the last RegisterThing answers taken on this slot. Shared
    /// with the call in flight as a snapshot (copied only if one is still held on change).
    things: Arc<VecDeque<(String, String)>>,
    /// Certificate ids of the last CreateCertificate answers taken on this slot.
    certificates: Arc<VecDeque<String>>,
    /// When the endpoint last closed this slot's connection while no request was out.
    last_idle_close: Option<Instant>,
    /// The pool's session gauges, when telemetry counts them.
    gauges: Option<Arc<SessionGauges>>,
    /// Counts this slot as connected while it holds a session.
    connected: Option<GaugeHold>,
}

impl SessionSlot {
    pub fn new(cfg: SessionConfig) -> SessionSlot {
        SessionSlot {
            cfg,
            session: None,
            last_connect: None,
            fresh: false,
            things: Arc::default(),
            certificates: Arc::default(),
            last_idle_close: None,
            gauges: None,
            connected: None,
        }
    }

    /// Counts this slot in `gauges` (connected while it holds a session).
    pub fn counted(mut self, gauges: Arc<SessionGauges>) -> SessionSlot {
        self.gauges = Some(gauges);
        self
    }

    /// Whether the last [`get`](Self::get) connected anew (cleared by reading it).
    pub fn take_fresh(&mut self) -> bool {
        std::mem::take(&mut self.fresh)
    }

    /// Things this slot's sessions delivered lately, with their boards' serials.
    pub fn recent_things(&self) -> Arc<VecDeque<(String, String)>> {
        self.things.clone()
    }

    pub fn remember_thing(&mut self, serial: &str, thing: &str) {
        remember(&mut self.things, (serial.to_string(), thing.to_string()));
    }

    /// Certificate ids this slot's sessions delivered lately.
    pub fn recent_certificates(&self) -> Arc<VecDeque<String>> {
        self.certificates.clone()
    }

    pub fn remember_certificate(&mut self, id: &str) {
        remember(&mut self.certificates, id.to_string());
    }

    /// The endpoint closed this slot's connection while it was idle. True when that looks
    /// like another client taking the client id over: the second such close within a
    /// minute, with the endpoint reachable all along.
    pub fn closed_while_idle(&mut self, health: &LineHealth) -> bool {
        let now = Instant::now();
        let takeover = self.last_idle_close.is_some_and(|t| {
            now.duration_since(t) < Duration::from_secs(60) && !health.outage_since(t)
        });
        self.last_idle_close = Some(now);
        takeover
    }

    pub fn client_id(&self) -> &str {
        &self.cfg.client_id
    }

    /// The connected session, connecting first if needed: at most one CONNECT per second
    /// for this client id (AWS's limit, docs/aws-fleet-provisioning.md §5.2) and within the
    /// account-wide `connects` rate.
    pub async fn get(&mut self, connects: &RateLimiter) -> Result<&mut Session, SessionError> {
        if self.session.is_none() {
            if let Some(last) = self.last_connect {
                let wait = Duration::from_secs(1).saturating_sub(last.elapsed());
                tokio::time::sleep(wait).await;
            }
            connects.acquire().await;
            self.last_connect = Some(Instant::now());
            self.session = Some(Session::connect(&self.cfg).await?);
            self.connected = self.gauges.as_ref().map(|g| g.connected());
            self.fresh = true;
        }
        Ok(self.session.as_mut().expect("session was just set"))
    }

    /// Drops the session; the next [`get`](Self::get) connects anew.
    pub fn reset(&mut self) {
        self.session = None;
        self.connected = None;
    }

    pub async fn close(&mut self) {
        if let Some(s) = self.session.take() {
            s.close().await;
        }
        self.connected = None;
    }
}

fn remember<T: Clone>(list: &mut Arc<VecDeque<T>>, item: T) {
    let list = Arc::make_mut(list);
    if list.len() == REMEMBERED {
        list.pop_front();
    }
    list.push_back(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> SessionSlot {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        SessionSlot::new(SessionConfig {
            host: "localhost".into(),
            port: 8883,
            client_id: "st-0".into(),
            tls: Arc::new(tls),
            format: Format::Json,
            apis: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            keep_alive: Duration::from_secs(60),
            mqtt_version: MqttVersion::V311,
        })
    }

    #[test]
    fn two_idle_closes_within_a_minute_look_like_a_take_over_unless_the_endpoint_was_away() {
        let health = LineHealth::new(5);
        let mut s = slot();
        assert!(!s.closed_while_idle(&health), "one close is not a pattern");
        assert!(s.closed_while_idle(&health));
        // An outage closes idle sessions too: that is not a take-over.
        let mut s = slot();
        assert!(!s.closed_while_idle(&health));
        health.unreachable();
        health.reachable();
        assert!(!s.closed_while_idle(&health));
    }

    #[test]
    fn a_slot_remembers_only_its_latest_answers() {
        let mut s = slot();
        for i in 0..REMEMBERED + 4 {
            s.remember_thing(&format!("SN{i}"), &format!("thing-{i}"));
            s.remember_certificate(&format!("cert-{i}"));
        }
        let things = s.recent_things();
        assert_eq!(things.len(), REMEMBERED);
        assert_eq!(things[0].1, "thing-4");
        assert_eq!(
            s.recent_certificates().back().unwrap(),
            &format!("cert-{}", REMEMBERED + 3)
        );
    }
}
