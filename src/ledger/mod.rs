//! The ledger: a SQLite journal of every device the station touches.
//!
//! - `devices`: one row per board serial — jig, state, key source, certificate id and PEM,
//!   thing name, device configuration, times, and while the device is unfinished what it
//!   takes to resume it (the ownership token, the sealed private key).
//! - `events`: one row per state change (the audit trail).
//! - `orphans`: certificates AWS issued that will never reach a board, with what to do.
//!
//! Every change is durable (WAL, `synchronous = FULL`) before the call that records it
//! returns, so the step after it never runs ahead of the journal. One writer thread commits
//! whatever changes are waiting in one transaction (group commit), so many devices share one
//! disk sync.
//!
//! Orphans are recorded here, in one place: whenever a device's certificate is abandoned
//! (the device fails, or a new certificate replaces one that can no longer be registered),
//! the old certificate moves to `orphans`. A certificate is therefore either on a verified
//! board or in the orphan list.
//!
//! - [`seal`]: encryption of station-made private keys kept for resuming.
//! - [`export`]: the audit trail as CSV/JSON and the orphan report.

pub mod export;
pub mod seal;
mod shim;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use self::seal::Sealer;
use crate::fleet::payloads::Secret;

/// Where a device stands. Stored as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceState {
    /// The board was seen on a jig and a provisioning attempt started.
    Started,
    /// Key material was reserved (station key sealed here, or the board's CSR's key noted).
    KeyReserved,
    /// AWS issued a certificate (id, PEM, token and its expiry recorded).
    CertificateIssued,
    /// RegisterThing accepted: the thing exists and the certificate is active.
    Registered,
    /// Credentials written and committed on the board.
    Written,
    /// Read-back matched: the board holds its identity.
    Verified,
    /// Gave up; `reason` says why.
    Failed,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Started => "started",
            DeviceState::KeyReserved => "key_reserved",
            DeviceState::CertificateIssued => "certificate_issued",
            DeviceState::Registered => "registered",
            DeviceState::Written => "written",
            DeviceState::Verified => "verified",
            DeviceState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeviceState> {
        Some(match s {
            "started" => DeviceState::Started,
            "key_reserved" => DeviceState::KeyReserved,
            "certificate_issued" => DeviceState::CertificateIssued,
            "registered" => DeviceState::Registered,
            "written" => DeviceState::Written,
            "verified" => DeviceState::Verified,
            "failed" => DeviceState::Failed,
            _ => return None,
        })
    }

    /// Verified and Failed are final.
    pub fn is_final(self) -> bool {
        matches!(self, DeviceState::Verified | DeviceState::Failed)
    }
}

/// Where a device's private key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Made by the station's key pool.
    Pool,
    /// Made on the board (GEN_CSR); it never leaves the board.
    Device,
    /// Made by AWS (CreateKeysAndCertificate); it crosses the network.
    Aws,
}

impl KeySource {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::Pool => "pool",
            KeySource::Device => "device",
            KeySource::Aws => "aws",
        }
    }

    pub fn parse(s: &str) -> Option<KeySource> {
        match s {
            "pool" => Some(KeySource::Pool),
            "device" => Some(KeySource::Device),
            "aws" => Some(KeySource::Aws),
            _ => None,
        }
    }
}

/// A state change to record.
#[derive(Clone)]
pub enum Transition {
    /// The key is chosen; a station-made key is sealed in the ledger until its board has it.
    KeyReserved {
        source: KeySource,
        /// SHA-256 (hex) of the public key's SubjectPublicKeyInfo, when known.
        public_key_sha256: Option<String>,
        private_key: Option<Secret>,
    },
    CertificateIssued {
        certificate_id: String,
        certificate_pem: String,
        token: Secret,
        token_expires_ms: u64,
        /// CreateKeysAndCertificate: the private key AWS returned.
        private_key: Option<Secret>,
        public_key_sha256: Option<String>,
    },
    Registered {
        thing_name: String,
        device_configuration: BTreeMap<String, String>,
    },
    Written,
    Verified,
    /// The device's current certificate can no longer be registered (its token expired or
    /// was refused); it becomes an orphan and the device goes back to `key_reserved`.
    CertificateAbandoned {
        reason: String,
        /// What AWS may hold: `Pending` only when no RegisterThing can have used the token.
        status: OrphanStatus,
    },
    Failed {
        reason: String,
    },
}

impl std::fmt::Debug for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens and keys never reach a log line.
        match self {
            Transition::CertificateIssued { certificate_id, .. } => f
                .debug_struct("CertificateIssued")
                .field("certificate_id", certificate_id)
                .finish_non_exhaustive(),
            Transition::Registered { thing_name, .. } => f
                .debug_struct("Registered")
                .field("thing_name", thing_name)
                .finish_non_exhaustive(),
            Transition::Failed { reason } | Transition::CertificateAbandoned { reason, .. } => f
                .debug_struct(self.state().as_str())
                .field("reason", reason)
                .finish(),
            other => f.write_str(other.state().as_str()),
        }
    }
}

impl Transition {
    pub fn state(&self) -> DeviceState {
        match self {
            Transition::KeyReserved { .. } | Transition::CertificateAbandoned { .. } => {
                DeviceState::KeyReserved
            }
            Transition::CertificateIssued { .. } => DeviceState::CertificateIssued,
            Transition::Registered { .. } => DeviceState::Registered,
            Transition::Written => DeviceState::Written,
            Transition::Verified => DeviceState::Verified,
            Transition::Failed { .. } => DeviceState::Failed,
        }
    }
}

/// A device row (without secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub id: i64,
    pub serial: String,
    pub jig: String,
    pub station: String,
    pub state: DeviceState,
    pub key_source: Option<String>,
    pub certificate_id: Option<String>,
    pub thing_name: Option<String>,
    pub reason: Option<String>,
    pub attempts: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// What AWS may hold for an orphaned certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanStatus {
    /// Never registered: `PENDING_ACTIVATION`, deleted by AWS when its token expires.
    Pending,
    /// Registered: `ACTIVE` and attached to a thing; deactivate and delete it.
    Active,
    /// Either (a request or a registration was in flight when the answer was lost).
    Unknown,
}

impl OrphanStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrphanStatus::Pending => "pending",
            OrphanStatus::Active => "active",
            OrphanStatus::Unknown => "unknown",
        }
    }
}

/// A certificate that will never reach a board.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Orphan {
    /// `None` when the request was in flight at a crash and its answer never arrived: AWS
    /// may have issued a certificate the station never learned the id of.
    pub certificate_id: Option<String>,
    pub public_key_sha256: Option<String>,
    pub serial: String,
    /// `pending` (never registered: AWS deletes it when its token expires), `active`
    /// (registered and attached to a thing: deactivate and delete it), `unknown`.
    pub status: String,
    pub thing_name: Option<String>,
    pub reason: String,
    pub recorded_ms: i64,
}

/// What a restarted station needs to finish a device where it stopped.
pub struct Resume {
    pub state: DeviceState,
    pub key_source: Option<KeySource>,
    /// The station-made or AWS-made private key (unsealed), if the ledger holds it.
    pub private_key: Option<Secret>,
    pub public_key_sha256: Option<String>,
    pub certificate_id: Option<String>,
    pub certificate_pem: Option<String>,
    pub token: Option<Secret>,
    pub token_expires_ms: Option<i64>,
    pub thing_name: Option<String>,
    pub device_configuration: BTreeMap<String, String>,
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("state", &self.state)
            .field("certificate_id", &self.certificate_id)
            .field("thing_name", &self.thing_name)
            .finish_non_exhaustive()
    }
}

/// A device the station is working on now.
#[derive(Debug)]
pub struct Begun {
    pub id: i64,
    /// Set when the device was left unfinished by an earlier run.
    pub resume: Option<Resume>,
}

/// Ledger failures. A ledger that cannot write stops the line: nothing may run ahead of it.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    #[diagnostic(
        code(station::ledger::sqlite),
        help("check that the disk holding station.ledger is writable and not full")
    )]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot use {path}: {source}")]
    #[diagnostic(
        code(station::ledger::io),
        help("set station.ledger to a path in a writable directory")
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ledger {path} was written by an older fleet-station (schema {found}, need {need})")]
    #[diagnostic(
        code(station::ledger::schema),
        help(
            "export it with the old version if you need it, then move it aside: a new ledger is created"
        )
    )]
    Schema {
        path: PathBuf,
        found: i64,
        need: i64,
    },
    #[error("ledger writer has stopped")]
    #[diagnostic(
        code(station::ledger::stopped),
        help("an earlier ledger error stopped the writer; see the message before this one")
    )]
    Stopped,
    #[error("board {serial} is already provisioned and verified (thing {thing})")]
    #[diagnostic(
        code(station::ledger::already_provisioned),
        help(
            "take the board off the jig: it holds its identity already; a second one would orphan the first"
        )
    )]
    AlreadyProvisioned { serial: String, thing: String },
}

type Job = Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> Result<i64, rusqlite::Error> + Send>;

struct Op {
    job: Job,
    ack: oneshot::Sender<Result<i64, String>>,
}

/// A handle to the ledger. Cloneable; all clones share the writer thread.
#[derive(Clone)]
pub struct Ledger {
    tx: Sender<Op>,
    path: PathBuf,
    station: String,
    sealer: Arc<Sealer>,
    _writer: Arc<WriterGuard>,
}

struct WriterGuard {
    handle: std::sync::Mutex<Option<JoinHandle<()>>>,
    stop_tx: std::sync::Mutex<Option<Sender<Op>>>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.stop_tx.lock().expect("ledger lock").take();
        if let Some(h) = self.handle.lock().expect("ledger lock").take() {
            let _ = h.join();
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const SCHEMA_VERSION: i64 = 2;

/// Marks a `begin` result whose device resumes (row ids stay far below it).
const RESUMED: i64 = 1 << 48;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    serial TEXT NOT NULL UNIQUE,
    jig TEXT NOT NULL,
    station TEXT NOT NULL,
    state TEXT NOT NULL,
    key_source TEXT,
    public_key_sha256 TEXT,
    sealed_key BLOB,
    certificate_id TEXT,
    certificate_pem TEXT,
    token TEXT,
    token_expires_ms INTEGER,
    thing_name TEXT,
    device_configuration TEXT,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    device_id INTEGER NOT NULL REFERENCES devices(id),
    state TEXT NOT NULL,
    detail TEXT,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_device ON events(device_id);
CREATE TABLE IF NOT EXISTS orphans (
    id INTEGER PRIMARY KEY,
    certificate_id TEXT,
    public_key_sha256 TEXT,
    serial TEXT NOT NULL,
    status TEXT NOT NULL,
    thing_name TEXT,
    reason TEXT NOT NULL,
    recorded_ms INTEGER NOT NULL
);
";

fn event(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    state: &str,
    detail: Option<&str>,
    now: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO events (device_id, state, detail, at_ms) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![id, state, detail, now])?;
    Ok(())
}

/// Moves device `id`'s current certificate (if any) into `orphans` and clears it. With
/// `only_issued`, a certificate request still unanswered is not counted (its answer is what
/// is being recorded).
fn orphan_current(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    reason: &str,
    now: i64,
    only_issued: bool,
    status: Option<OrphanStatus>,
) -> rusqlite::Result<()> {
    type Row = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let row: Option<Row> = tx
        .prepare_cached(
            "SELECT serial, state, certificate_id, public_key_sha256, thing_name FROM devices WHERE id = ?1",
        )?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .optional()?;
    let Some((serial, state, cert, pk, thing)) = row else {
        return Ok(());
    };
    let state = DeviceState::parse(&state).unwrap_or(DeviceState::Failed);
    let by_state = match state {
        DeviceState::CertificateIssued => OrphanStatus::Pending,
        DeviceState::Registered | DeviceState::Written => OrphanStatus::Active,
        // A request may have been in flight: AWS may hold a pending certificate for this key.
        DeviceState::KeyReserved => OrphanStatus::Unknown,
        _ => return Ok(()),
    };
    // A registered certificate is active whatever the caller believed.
    let status = match (by_state, status) {
        (OrphanStatus::Active, _) => "active",
        (_, Some(s)) if cert.is_some() => s.as_str(),
        (s, _) => s.as_str(),
    };
    if cert.is_none() && (only_issued || pk.is_none()) {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO orphans (certificate_id, public_key_sha256, serial, status, thing_name, reason, recorded_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![cert, pk, serial, status, if status == "active" { thing } else { None }, reason, now])?;
    tx.prepare_cached(
        "UPDATE devices SET certificate_id = NULL, certificate_pem = NULL, token = NULL,
         token_expires_ms = NULL, thing_name = NULL, device_configuration = NULL WHERE id = ?1",
    )?
    .execute(params![id])?;
    Ok(())
}

impl Ledger {
    /// Opens (or creates) the ledger file and its key file (`<ledger>.key`).
    pub fn open(path: &Path, station: &str) -> Result<Ledger, LedgerError> {
        let sql = |source| LedgerError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let io = |source| LedgerError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let sealer = Sealer::load_or_create(&seal::key_path(path)).map_err(io)?;
        let conn = Connection::open(path).map_err(sql)?;
        // The ledger holds ownership tokens: owner-only, like key files. SQLite gives its
        // -wal and -shm files the database file's mode.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(sql)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        let has_devices: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'devices'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sql)?
            > 0;
        if has_devices && version != SCHEMA_VERSION {
            return Err(LedgerError::Schema {
                path: path.to_path_buf(),
                found: version,
                need: SCHEMA_VERSION,
            });
        }
        conn.execute_batch(SCHEMA).map_err(sql)?;
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .map_err(sql)?;
        let (tx, rx) = crossbeam_channel::bounded::<Op>(16_384);
        let handle = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .expect("spawn ledger writer");
        Ok(Ledger {
            tx: tx.clone(),
            path: path.to_path_buf(),
            station: station.to_string(),
            sealer: Arc::new(sealer),
            _writer: Arc::new(WriterGuard {
                handle: std::sync::Mutex::new(Some(handle)),
                stop_tx: std::sync::Mutex::new(Some(tx)),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn submit(&self, job: Job) -> Result<oneshot::Receiver<Result<i64, String>>, LedgerError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Op { job, ack })
            .map_err(|_| LedgerError::Stopped)?;
        Ok(rx)
    }

    fn map_ack(
        &self,
        r: Result<Result<i64, String>, oneshot::error::RecvError>,
    ) -> Result<i64, LedgerError> {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(msg)) => Err(LedgerError::Sqlite {
                path: self.path.clone(),
                source: rusqlite::Error::ToSqlConversionFailure(msg.into()),
            }),
            Err(_) => Err(LedgerError::Stopped),
        }
    }

    /// Returns the row id: negated when the board is already verified, with [`RESUMED`] set
    /// when an earlier run left it unfinished.
    fn begin_job(&self, serial: &str, jig: &str) -> Job {
        let (serial, jig, station) = (serial.to_string(), jig.to_string(), self.station.clone());
        Box::new(move |tx| {
            let now = now_ms();
            let existing: Option<(i64, String)> = tx
                .prepare_cached("SELECT id, state FROM devices WHERE serial = ?1")?
                .query_row(params![serial], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let id = match existing {
                Some((id, state)) if state == DeviceState::Verified.as_str() => return Ok(-id),
                Some((id, state)) if state == DeviceState::Failed.as_str() => {
                    tx.prepare_cached(
                        "UPDATE devices SET jig = ?2, station = ?3, state = 'started', reason = NULL,
                         key_source = NULL, public_key_sha256 = NULL, sealed_key = NULL,
                         attempts = attempts + 1, updated_ms = ?4 WHERE id = ?1",
                    )?
                    .execute(params![id, jig, station, now])?;
                    event(tx, id, "started", Some(&format!("jig={jig}")), now)?;
                    id
                }
                Some((id, state)) => {
                    // Unfinished by an earlier run: keep its state so it resumes there.
                    tx.prepare_cached(
                        "UPDATE devices SET jig = ?2, station = ?3, attempts = attempts + 1,
                         updated_ms = ?4 WHERE id = ?1",
                    )?
                    .execute(params![id, jig, station, now])?;
                    event(
                        tx,
                        id,
                        "resumed",
                        Some(&format!("jig={jig} from={state}")),
                        now,
                    )?;
                    id | RESUMED
                }
                None => {
                    tx.prepare_cached(
                        "INSERT INTO devices (serial, jig, station, state, created_ms, updated_ms)
                         VALUES (?1, ?2, ?3, 'started', ?4, ?4)",
                    )?
                    .execute(params![serial, jig, station, now])?;
                    let id = tx.last_insert_rowid();
                    event(tx, id, "started", Some(&format!("jig={jig}")), now)?;
                    id
                }
            };
            Ok(id)
        })
    }

    /// Records that a board is being provisioned. A board left unfinished by an earlier run
    /// resumes where it stopped ([`Begun::resume`]); a verified board is refused: it must not
    /// get a second identity.
    pub async fn begin(&self, serial: &str, jig: &str) -> Result<Begun, LedgerError> {
        let rx = self.submit(self.begin_job(serial, jig))?;
        let id = self.map_ack(rx.await)?;
        self.finish_begin(serial, id)
    }

    /// [`begin`](Self::begin) for plain threads.
    pub fn begin_blocking(&self, serial: &str, jig: &str) -> Result<Begun, LedgerError> {
        let rx = self.submit(self.begin_job(serial, jig))?;
        let id = self.map_ack(rx.blocking_recv())?;
        self.finish_begin(serial, id)
    }

    fn finish_begin(&self, serial: &str, id: i64) -> Result<Begun, LedgerError> {
        if id > 0 && id & RESUMED != 0 {
            // Only an unfinished device needs its resume point read back.
            let id = id & !RESUMED;
            return Ok(Begun {
                id,
                resume: self.resume_point(id)?,
            });
        }
        if id < 0 {
            let thing = self
                .device(serial)?
                .and_then(|d| d.thing_name)
                .unwrap_or_default();
            return Err(LedgerError::AlreadyProvisioned {
                serial: serial.to_string(),
                thing,
            });
        }
        Ok(Begun { id, resume: None })
    }

    /// The resume point of an unfinished device (`None` for a fresh start).
    fn resume_point(&self, id: i64) -> Result<Option<Resume>, LedgerError> {
        let c = self.reader()?;
        let sql = |source| LedgerError::Sqlite {
            path: self.path.clone(),
            source,
        };
        type Row = (
            String,
            String,
            Option<String>,
            Option<Vec<u8>>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<String>,
        );
        let row: Option<Row> = c
            .query_row(
                "SELECT serial, state, key_source, sealed_key, public_key_sha256, certificate_id,
                 certificate_pem, token, token_expires_ms, thing_name, device_configuration
                 FROM devices WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                    ))
                },
            )
            .optional()
            .map_err(sql)?;
        let Some((
            serial,
            state,
            source,
            sealed,
            pk,
            cert_id,
            cert_pem,
            token,
            expires,
            thing,
            config,
        )) = row
        else {
            return Ok(None);
        };
        let state = DeviceState::parse(&state).unwrap_or(DeviceState::Failed);
        if state == DeviceState::Started || state.is_final() {
            return Ok(None);
        }
        let private_key = sealed
            .and_then(|s| self.sealer.open(&serial, &s))
            .and_then(|k: Zeroizing<Vec<u8>>| String::from_utf8(k.to_vec()).ok())
            .map(Secret::new);
        Ok(Some(Resume {
            state,
            key_source: source.as_deref().and_then(KeySource::parse),
            private_key,
            public_key_sha256: pk,
            certificate_id: cert_id,
            certificate_pem: cert_pem,
            token: token.map(Secret::new),
            token_expires_ms: expires,
            thing_name: thing,
            device_configuration: config
                .and_then(|c| serde_json::from_str(&c).ok())
                .unwrap_or_default(),
        }))
    }

    fn transition_job(&self, id: i64, t: Transition) -> Job {
        let sealer = self.sealer.clone();
        Box::new(move |tx| {
            let now = now_ms();
            let state = t.state().as_str();
            let serial: String = tx
                .prepare_cached("SELECT serial FROM devices WHERE id = ?1")?
                .query_row(params![id], |r| r.get(0))?;
            let detail: Option<String> = match &t {
                Transition::KeyReserved {
                    source,
                    public_key_sha256,
                    private_key,
                } => {
                    let sealed = private_key
                        .as_ref()
                        .map(|k| sealer.seal(&serial, k.expose().as_bytes()));
                    tx.prepare_cached(
                        "UPDATE devices SET state = ?2, key_source = ?3, public_key_sha256 = ?4,
                         sealed_key = ?5, updated_ms = ?6 WHERE id = ?1",
                    )?
                    .execute(params![
                        id,
                        state,
                        source.as_str(),
                        public_key_sha256,
                        sealed,
                        now
                    ])?;
                    Some(format!("source={}", source.as_str()))
                }
                Transition::CertificateIssued {
                    certificate_id,
                    certificate_pem,
                    token,
                    token_expires_ms,
                    private_key,
                    public_key_sha256,
                } => {
                    // A certificate this device held before is abandoned now.
                    orphan_current(tx, id, "replaced by a new certificate", now, true, None)?;
                    tx.prepare_cached(
                        "UPDATE devices SET state = ?2, certificate_id = ?3, certificate_pem = ?4,
                         token = ?5, token_expires_ms = ?6, updated_ms = ?7 WHERE id = ?1",
                    )?
                    .execute(params![
                        id,
                        state,
                        certificate_id,
                        certificate_pem,
                        token.expose(),
                        *token_expires_ms as i64,
                        now
                    ])?;
                    if let Some(k) = private_key {
                        tx.prepare_cached("UPDATE devices SET sealed_key = ?2 WHERE id = ?1")?
                            .execute(params![id, sealer.seal(&serial, k.expose().as_bytes())])?;
                    }
                    if let Some(pk) = public_key_sha256 {
                        tx.prepare_cached(
                            "UPDATE devices SET public_key_sha256 = ?2 WHERE id = ?1",
                        )?
                        .execute(params![id, pk])?;
                    }
                    Some(format!("certificate_id={certificate_id}"))
                }
                Transition::Registered {
                    thing_name,
                    device_configuration,
                } => {
                    tx.prepare_cached(
                        "UPDATE devices SET state = ?2, thing_name = ?3, device_configuration = ?4,
                         updated_ms = ?5 WHERE id = ?1",
                    )?
                    .execute(params![
                        id,
                        state,
                        thing_name,
                        serde_json::to_string(device_configuration).expect("string map"),
                        now
                    ])?;
                    Some(format!("thing_name={thing_name}"))
                }
                Transition::Written => {
                    tx.prepare_cached(
                        "UPDATE devices SET state = ?2, updated_ms = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id, state, now])?;
                    None
                }
                Transition::Verified => {
                    // The token and the sealed key have done their job; drop them.
                    tx.prepare_cached(
                        "UPDATE devices SET state = ?2, token = NULL, sealed_key = NULL,
                         reason = NULL, updated_ms = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id, state, now])?;
                    None
                }
                Transition::CertificateAbandoned { reason, status } => {
                    orphan_current(tx, id, reason, now, false, Some(*status))?;
                    tx.prepare_cached(
                        "UPDATE devices SET state = ?2, updated_ms = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id, state, now])?;
                    Some(reason.clone())
                }
                Transition::Failed { reason } => {
                    orphan_current(tx, id, reason, now, false, None)?;
                    tx.prepare_cached(
                        "UPDATE devices SET state = ?2, reason = ?3, token = NULL, sealed_key = NULL,
                         updated_ms = ?4 WHERE id = ?1",
                    )?
                    .execute(params![id, state, reason, now])?;
                    Some(reason.clone())
                }
            };
            event(tx, id, state, detail.as_deref(), now)?;
            Ok(id)
        })
    }

    /// Records a state change; returns once it is durable.
    pub async fn record(&self, id: i64, t: Transition) -> Result<(), LedgerError> {
        let rx = self.submit(self.transition_job(id, t))?;
        self.map_ack(rx.await).map(|_| ())
    }

    /// [`record`](Self::record) for plain threads (the jig writers).
    pub fn record_blocking(&self, id: i64, t: Transition) -> Result<(), LedgerError> {
        let rx = self.submit(self.transition_job(id, t))?;
        self.map_ack(rx.blocking_recv()).map(|_| ())
    }

    /// Adds an audit-trail entry without changing the device's state.
    pub async fn note(&self, id: i64, what: &str, detail: &str) -> Result<(), LedgerError> {
        let (what, detail) = (what.to_string(), detail.to_string());
        let rx = self.submit(Box::new(move |tx| {
            event(tx, id, &what, Some(&detail), now_ms())?;
            Ok(id)
        }))?;
        self.map_ack(rx.await).map(|_| ())
    }

    fn reader(&self) -> Result<Connection, LedgerError> {
        Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
            |source| LedgerError::Sqlite {
                path: self.path.clone(),
                source,
            },
        )
    }

    fn sql_err(&self) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
        |source| LedgerError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// One device by serial.
    pub fn device(&self, serial: &str) -> Result<Option<DeviceRow>, LedgerError> {
        let c = self.reader()?;
        c.query_row(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE serial = ?1"),
            params![serial],
            device_row,
        )
        .optional()
        .map_err(self.sql_err())
    }

    /// Every device, in the order they were first seen.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, LedgerError> {
        let c = self.reader()?;
        let mut stmt = c
            .prepare(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id"))
            .map_err(self.sql_err())?;
        let rows = stmt.query_map([], device_row).map_err(self.sql_err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.sql_err())
    }

    /// Devices an earlier run left unfinished.
    pub fn unfinished(&self) -> Result<Vec<DeviceRow>, LedgerError> {
        Ok(self
            .devices()?
            .into_iter()
            .filter(|d| !d.state.is_final() && d.state != DeviceState::Started)
            .collect())
    }

    /// The audit trail of one device: (state, detail, time).
    pub fn events(&self, id: i64) -> Result<Vec<(String, Option<String>, i64)>, LedgerError> {
        let c = self.reader()?;
        let mut stmt = c
            .prepare("SELECT state, detail, at_ms FROM events WHERE device_id = ?1 ORDER BY id")
            .map_err(self.sql_err())?;
        let rows = stmt
            .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.sql_err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.sql_err())
    }

    /// Every orphaned certificate.
    pub fn orphans(&self) -> Result<Vec<Orphan>, LedgerError> {
        let c = self.reader()?;
        let mut stmt = c
            .prepare(
                "SELECT certificate_id, public_key_sha256, serial, status, thing_name, reason, recorded_ms
                 FROM orphans ORDER BY id",
            )
            .map_err(self.sql_err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Orphan {
                    certificate_id: r.get(0)?,
                    public_key_sha256: r.get(1)?,
                    serial: r.get(2)?,
                    status: r.get(3)?,
                    thing_name: r.get(4)?,
                    reason: r.get(5)?,
                    recorded_ms: r.get(6)?,
                })
            })
            .map_err(self.sql_err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.sql_err())
    }
}

const DEVICE_COLUMNS: &str = "id, serial, jig, station, state, key_source, certificate_id, thing_name, reason, attempts, created_ms, updated_ms";

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    let state: String = r.get(4)?;
    Ok(DeviceRow {
        id: r.get(0)?,
        serial: r.get(1)?,
        jig: r.get(2)?,
        station: r.get(3)?,
        state: DeviceState::parse(&state).unwrap_or(DeviceState::Failed),
        key_source: r.get(5)?,
        certificate_id: r.get(6)?,
        thing_name: r.get(7)?,
        reason: r.get(8)?,
        attempts: r.get(9)?,
        created_ms: r.get(10)?,
        updated_ms: r.get(11)?,
    })
}

fn writer_loop(mut conn: Connection, rx: Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // One transaction, one sync, for the whole batch. A failing job fails only itself
        // (its savepoint is rolled back); the others commit.
        let tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                for op in batch {
                    let _ = op.ack.send(Err(e.to_string()));
                }
                continue;
            }
        };
        let mut results = Vec::with_capacity(batch.len());
        for op in batch {
            let r = tx
                .execute_batch("SAVEPOINT op")
                .and_then(|_| (op.job)(&tx))
                .and_then(|v| tx.execute_batch("RELEASE op").map(|_| v));
            if r.is_err() {
                let _ = tx.execute_batch("ROLLBACK TO op; RELEASE op");
            }
            results.push((op.ack, r.map_err(|e| e.to_string())));
        }
        let committed = tx.commit();
        for (ack, r) in results {
            let r = match &committed {
                Ok(()) => r,
                Err(e) => Err(e.to_string()),
            };
            let _ = ack.send(r);
        }
    }
}

#[cfg(test)]
mod tests;
