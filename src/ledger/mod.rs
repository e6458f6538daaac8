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
//! disk sync. It takes SQLite's write lock when the transaction begins (`BEGIN IMMEDIATE`) and
//! every connection waits for a busy lock, so a reader or another program touching the file
//! delays a commit instead of failing it.
//!
//! One station writes a ledger at a time: [`Ledger::open`] takes `<ledger>.lock` ([`lock`])
//! and refuses to start while another process holds it. Reading needs no lock:
//! [`LedgerView`] opens the file read-only and writes nothing, so `station ledger export`
//! and `station ledger orphans` run safely beside a running station.
//!
//! Station-made private keys of unfinished devices are sealed under `<ledger>.key`
//! ([`seal`]). That file is part of the ledger: [`Ledger::open`] refuses to start when it is
//! missing or is not the key the sealed rows were made with, instead of making a new key and
//! silently losing the devices that need the old one.
//!
//! Orphans are recorded here, in one place: whenever a device's certificate is abandoned
//! (the device fails or is interrupted, or a new certificate replaces one that can no longer
//! be registered), the old certificate moves to `orphans`; so does a certificate request whose
//! answer was lost ([`Ledger::note_lost_request`]). A certificate is therefore either on a
//! verified board or in the orphan list, and each is listed once.
//!
//! - [`view`]: read-only access ([`LedgerView`]), also what [`Ledger`] reads through.
//! - `writer`: the group-commit writer thread; `orphans`: how an orphan is recorded (once);
//!   `error`: [`LedgerError`].
//! - [`lock`]: the one-writer lock.
//! - [`seal`]: encryption of station-made private keys kept for resuming.
//! - [`export`]: the audit trail as CSV/JSON.
//! - [`cleanup`]: what to run on AWS to remove the orphans, as steps and as a bash script.

pub mod cleanup;
mod error;
pub mod export;
pub mod lock;
mod orphans;
pub mod seal;
pub mod view;
mod writer;

pub use self::error::LedgerError;
use self::orphans::{insert_orphan, orphan_current};
use self::writer::{Job, Op, WriterGuard, writer_loop};
pub use crate::keys::KeySource;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use self::lock::LedgerLock;
use self::seal::Sealer;
pub use self::view::LedgerView;
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
    /// The run stopped before the device finished (a load test interrupted); `reason` says
    /// why. Like `Failed`, the next run starts it over.
    Interrupted,
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
            DeviceState::Interrupted => "interrupted",
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
            "interrupted" => DeviceState::Interrupted,
            _ => return None,
        })
    }

    /// Verified, Failed and Interrupted are final (for this attempt: a failed or
    /// interrupted board placed again starts over).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeviceState::Verified | DeviceState::Failed | DeviceState::Interrupted
        )
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
    /// The device's current certificate (or its unanswered certificate request) can no
    /// longer be used: its token expired or was refused, or the station stopped while the
    /// request was in flight. The certificate — or, with no certificate yet, the key whose
    /// request may have been answered — becomes an orphan, and the device goes back to
    /// `started` holding no key material: the next attempt reserves a fresh key, so one
    /// in-flight key is never recorded twice.
    ///
    /// An `Active` orphan may be recorded before the thing's name is known (RegisterThing
    /// refused a token an earlier, lost attempt had used); the device's next `Registered`
    /// names the thing, and the ledger fills it into that orphan.
    CertificateAbandoned {
        reason: String,
        /// What AWS may hold: `Pending` only when no RegisterThing can have used the token.
        status: OrphanStatus,
    },
    /// The key reserved for a certificate request is given back before any request was
    /// sent (the station stopped while the device waited for its turn): nothing can have
    /// been issued for it, so nothing is orphaned, and the device is back at `started`.
    KeyReleased {
        reason: String,
    },
    Failed {
        reason: String,
    },
    /// The run stopped before the device finished (a load test interrupted). Its current
    /// certificate becomes an orphan as with `Failed`.
    Interrupted {
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
            Transition::Failed { reason }
            | Transition::Interrupted { reason }
            | Transition::KeyReleased { reason } => f
                .debug_struct(self.state().as_str())
                .field("reason", reason)
                .finish(),
            Transition::CertificateAbandoned { reason, status } => f
                .debug_struct("certificate_abandoned")
                .field("reason", reason)
                .field("status", status)
                .finish(),
            other => f.write_str(other.state().as_str()),
        }
    }
}

impl Transition {
    pub fn state(&self) -> DeviceState {
        match self {
            Transition::KeyReserved { .. } => DeviceState::KeyReserved,
            Transition::CertificateAbandoned { .. } | Transition::KeyReleased { .. } => {
                DeviceState::Started
            }
            Transition::CertificateIssued { .. } => DeviceState::CertificateIssued,
            Transition::Registered { .. } => DeviceState::Registered,
            Transition::Written => DeviceState::Written,
            Transition::Verified => DeviceState::Verified,
            Transition::Failed { .. } => DeviceState::Failed,
            Transition::Interrupted { .. } => DeviceState::Interrupted,
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

/// A handle to the ledger, the one writer of its file. Cloneable; all clones share the writer
/// thread and the ledger lock, which is released when the last clone is dropped. Reads go
/// through [`LedgerView`], which it dereferences to.
#[derive(Clone)]
pub struct Ledger {
    tx: Sender<Op>,
    view: LedgerView,
    station: String,
    sealer: Arc<Sealer>,
    _writer: Arc<WriterGuard>,
}

impl std::ops::Deref for Ledger {
    type Target = LedgerView;

    fn deref(&self) -> &LedgerView {
        &self.view
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

/// The ledger's key: the existing key file, checked against a sealed row; a new one only for
/// a ledger without sealed keys.
fn open_sealer(conn: &Connection, path: &Path, has_tables: bool) -> Result<Sealer, LedgerError> {
    let key = seal::key_path(path);
    let sql = |source| LedgerError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let io = |source| LedgerError::Io {
        path: key.clone(),
        source,
    };
    let (sealed, sample): (i64, Option<(String, Vec<u8>)>) = if has_tables {
        let count = conn
            .query_row(
                "SELECT count(*) FROM devices WHERE sealed_key IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .map_err(sql)?;
        let sample = conn
            .query_row(
                "SELECT serial, sealed_key FROM devices WHERE sealed_key IS NOT NULL LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql)?;
        (count, sample)
    } else {
        (0, None)
    };
    match Sealer::load(&key).map_err(io)? {
        Some(sealer) => {
            if let Some((serial, blob)) = sample
                && sealer.open(&serial, &blob).is_none()
            {
                return Err(LedgerError::KeyMismatch {
                    path: path.to_path_buf(),
                    key,
                    serial,
                    sealed,
                });
            }
            Ok(sealer)
        }
        None if sealed > 0 => Err(LedgerError::KeyMissing {
            path: path.to_path_buf(),
            key,
            sealed,
        }),
        None => Sealer::create_new(&key).map_err(io),
    }
}

impl Ledger {
    /// Opens (or creates) the ledger file and its key file (`<ledger>.key`), as the one
    /// writer of the ledger.
    ///
    /// Refused when another process has the ledger open ([`LedgerError::InUse`]), when the
    /// ledger holds sealed keys and the key file is missing ([`LedgerError::KeyMissing`]) or
    /// is not theirs ([`LedgerError::KeyMismatch`]), and for a schema this version does not
    /// know. A key file is created only for a ledger without sealed keys.
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
        // First of all: nothing else may touch the ledger while another station writes it.
        let lock = LedgerLock::acquire(path, station)?;
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(view::BUSY_TIMEOUT).map_err(sql)?;
        // The ledger holds ownership tokens: owner-only, like key files. SQLite gives its
        // -wal and -shm files the database file's mode.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(sql)?;
        let version = view::schema_version(&conn).map_err(sql)?;
        if let Some(found) = version.filter(|v| *v != SCHEMA_VERSION) {
            return Err(LedgerError::Schema {
                path: path.to_path_buf(),
                found,
                need: SCHEMA_VERSION,
            });
        }
        let sealer = open_sealer(&conn, path, version.is_some())?;
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
            view: LedgerView::trusted(path),
            station: station.to_string(),
            sealer: Arc::new(sealer),
            _writer: Arc::new(WriterGuard {
                handle: std::sync::Mutex::new(Some(handle)),
                stop_tx: std::sync::Mutex::new(Some(tx)),
                _lock: lock,
            }),
        })
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
            Ok(Err(reason)) => Err(LedgerError::Write {
                path: self.path().to_path_buf(),
                reason,
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
                Some((id, state))
                    if state == DeviceState::Failed.as_str()
                        || state == DeviceState::Interrupted.as_str() =>
                {
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
        let c = self.view.reader()?;
        let sql = self.view.sql_err();
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
                    // An earlier certificate of this device that a lost RegisterThing made
                    // active was recorded before the thing's name was known: it is this thing.
                    tx.prepare_cached(
                        "UPDATE orphans SET thing_name = ?2
                         WHERE serial = ?1 AND status = 'active' AND thing_name IS NULL",
                    )?
                    .execute(params![serial, thing_name])?;
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
                    // Back to the start with no key: the next attempt reserves a fresh one, so
                    // this key is never recorded as in flight again.
                    tx.prepare_cached(
                        "UPDATE devices SET state = ?2, key_source = NULL, public_key_sha256 = NULL,
                         sealed_key = NULL, updated_ms = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id, state, now])?;
                    Some(format!(
                        "certificate abandoned ({}): {reason}",
                        status.as_str()
                    ))
                }
                Transition::KeyReleased { reason } => {
                    // Only a key no certificate came for: a device holding one keeps it.
                    let released = tx
                        .prepare_cached(
                            "UPDATE devices SET state = ?2, key_source = NULL, public_key_sha256 = NULL,
                             sealed_key = NULL, updated_ms = ?3
                             WHERE id = ?1 AND state = 'key_reserved' AND certificate_id IS NULL",
                        )?
                        .execute(params![id, state, now])?;
                    if released == 0 {
                        return Ok(id);
                    }
                    Some(format!("key released: {reason}"))
                }
                Transition::Failed { reason } | Transition::Interrupted { reason } => {
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

    /// Records that a CreateCertificateFromCsr request was sent and its answer lost (a
    /// timeout, or the connection closed after the publish), before the engine retries with
    /// the same key: AWS may have issued a certificate the station never saw. It is listed as
    /// a `pending` orphan with no certificate id and the device's current public key (once
    /// per key); the device's state is unchanged. Nothing is recorded when the device has no
    /// public key on record.
    pub async fn note_lost_request(&self, id: i64, reason: &str) -> Result<(), LedgerError> {
        let reason = reason.to_string();
        let rx = self.submit(Box::new(move |tx| {
            let now = now_ms();
            let row: Option<(String, Option<String>)> = tx
                .prepare_cached("SELECT serial, public_key_sha256 FROM devices WHERE id = ?1")?
                .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((serial, Some(pk))) = row {
                insert_orphan(
                    tx,
                    None,
                    Some(&pk),
                    &serial,
                    OrphanStatus::Pending.as_str(),
                    None,
                    &reason,
                    now,
                )?;
                event(tx, id, "request_lost", Some(&reason), now)?;
            }
            Ok(id)
        }))?;
        self.map_ack(rx.await).map(|_| ())
    }
}

#[cfg(test)]
mod tests;
