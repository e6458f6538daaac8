//! The provisioning engine: a pool of MQTT sessions that turn a board's identity request into
//! a certificate and a registered thing.
//!
//! - [`tls`]: the claim identity as a rustls client config.
//! - [`session`]: one MQTT connection, subscribed, with at most one outstanding request.
//! - [`flow`]: the per-device certificate → `RegisterThing` flow with retries and resume.
//! - [`check`]: `station check` — handshake, CONNACK and SUBACKs, nothing provisioned.
//! - [`rate`]: token buckets per API shared by all sessions, adapting to throttling (AIMD).
//!
//! [`Provisioner::start`] runs one task per session; each takes the next [`DeviceJob`] from a
//! shared bounded queue, runs the flow on its session and answers the job's reply channel.
//! Sessions are reused from device to device and rebuilt (paced to one CONNECT per second per
//! client id) when they fail.

pub mod check;
pub mod flow;
pub mod rate;
pub mod session;
pub mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::fleet::payloads::Secret;
use crate::fleet::{Api, Format};
use crate::keys::KeyPool;
use crate::ledger::{KeySource, Ledger, Resume};
use crate::shutdown::Shutdown;
use crate::telemetry::Telemetry;

use self::rate::{Limits, RateLimiter};
use self::session::{Session, SessionConfig, SessionError};

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

/// Why a device could not be provisioned: a short stable `code` (counted in reports) and a
/// message that says which exchange failed and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeviceFailure {
    pub code: String,
    pub message: String,
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
    pub reply: oneshot::Sender<Result<Credentials, DeviceFailure>>,
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
    /// 3 (MQTT 3.1.1) or 5.
    pub mqtt_version: u8,
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
            create_certificate: RateLimiter::new(
                "CreateCertificateFromCsr",
                create_certificate,
                0.0,
            ),
            create_keys: RateLimiter::new("CreateKeysAndCertificate", create_keys, 0.0),
            register_thing: RateLimiter::new("RegisterThing", register_thing, 0.0),
            connect: RateLimiter::new("CONNECT", connects, connects),
        }
    }
}

/// The running engine.
pub struct Provisioner {
    jobs: mpsc::Sender<DeviceJob>,
    tasks: Vec<JoinHandle<()>>,
}

impl Provisioner {
    /// Starts one task per session. Sessions connect lazily, on their first device.
    pub fn start(
        cfg: EngineConfig,
        keys: Arc<KeyPool>,
        ledger: Ledger,
        telemetry: Telemetry,
        shutdown: Shutdown,
    ) -> Provisioner {
        let (jobs, rx) = mpsc::channel::<DeviceJob>(cfg.sessions.max(1) * 2);
        let rx = Arc::new(Mutex::new(rx));
        let cfg = Arc::new(cfg);
        let tasks = (0..cfg.sessions.max(1))
            .map(|n| {
                let slot = SessionSlot::new(session_config(&cfg, n));
                let ctx = flow::FlowContext {
                    cfg: cfg.clone(),
                    keys: keys.clone(),
                    ledger: ledger.clone(),
                    telemetry: telemetry.clone(),
                    shutdown: shutdown.clone(),
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
                _ = ctx.shutdown.wait() => None,
            }
        };
        let Some(mut job) = job else { break };
        let result = flow::provision(&ctx, &mut slot, &mut job).await;
        let _ = job.reply.send(result);
    }
    slot.close().await;
}

/// A session that is (re)built on demand, never more than one CONNECT per second.
pub struct SessionSlot {
    cfg: SessionConfig,
    session: Option<Session>,
    last_connect: Option<Instant>,
}

impl SessionSlot {
    pub fn new(cfg: SessionConfig) -> SessionSlot {
        SessionSlot {
            cfg,
            session: None,
            last_connect: None,
        }
    }

    pub fn client_id(&self) -> &str {
        &self.cfg.client_id
    }

    /// The connected session, connecting first if needed: at most one CONNECT per second
    /// for this client id (AWS's limit, reference §5.2) and within the account-wide
    /// `connects` rate.
    pub async fn get(&mut self, connects: &RateLimiter) -> Result<&mut Session, SessionError> {
        if self.session.is_none() {
            if let Some(last) = self.last_connect {
                let wait = Duration::from_secs(1).saturating_sub(last.elapsed());
                tokio::time::sleep(wait).await;
            }
            connects.acquire().await;
            self.last_connect = Some(Instant::now());
            self.session = Some(Session::connect(&self.cfg).await?);
        }
        Ok(self.session.as_mut().expect("session was just set"))
    }

    /// Drops the session; the next [`get`](Self::get) connects anew.
    pub fn reset(&mut self) {
        self.session = None;
    }

    pub async fn close(&mut self) {
        if let Some(s) = self.session.take() {
            s.close().await;
        }
    }
}
