//! The ledger: a SQLite journal of every device the station touches.
//!
//! One row per board serial in `devices` (serial, jig, state, certificate id, thing name,
//! times) and one row per state change in `events` (the audit trail). Every change is durable
//! (WAL, `synchronous = FULL`) before the call that records it returns, so the step after it
//! never runs ahead of the journal. A single writer thread commits whatever changes are
//! waiting in one transaction (group commit), so many devices share one disk sync.
//!
//! The ownership token is kept (it lets a restarted station finish a registration within the
//! token's hour); private keys are never written here.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

/// Where a device stands. Stored as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceState {
    /// The board was seen on a jig and a provisioning attempt started.
    Started,
    /// Key material was reserved for the board (station key or board CSR).
    KeyReserved,
    /// AWS issued a certificate (id, token and expiry recorded).
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
}

/// A state change to record.
#[derive(Clone)]
pub enum Transition {
    KeyReserved,
    CertificateIssued {
        certificate_id: String,
        token: String,
        token_expires_ms: u64,
    },
    Registered {
        thing_name: String,
    },
    Written,
    Verified,
    Failed {
        reason: String,
    },
}

impl std::fmt::Debug for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never in a log line.
        match self {
            Transition::CertificateIssued { certificate_id, .. } => f
                .debug_struct("CertificateIssued")
                .field("certificate_id", certificate_id)
                .finish_non_exhaustive(),
            Transition::Registered { thing_name } => f
                .debug_struct("Registered")
                .field("thing_name", thing_name)
                .finish(),
            Transition::Failed { reason } => {
                f.debug_struct("Failed").field("reason", reason).finish()
            }
            other => f.write_str(other.state().as_str()),
        }
    }
}

impl Transition {
    pub fn state(&self) -> DeviceState {
        match self {
            Transition::KeyReserved => DeviceState::KeyReserved,
            Transition::CertificateIssued { .. } => DeviceState::CertificateIssued,
            Transition::Registered { .. } => DeviceState::Registered,
            Transition::Written => DeviceState::Written,
            Transition::Verified => DeviceState::Verified,
            Transition::Failed { .. } => DeviceState::Failed,
        }
    }
}

/// A device row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub id: i64,
    pub serial: String,
    pub jig: String,
    pub station: String,
    pub state: DeviceState,
    pub certificate_id: Option<String>,
    pub thing_name: Option<String>,
    pub reason: Option<String>,
    pub attempts: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
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
    #[error("cannot create the ledger directory {path}: {source}")]
    #[diagnostic(
        code(station::ledger::io),
        help("set station.ledger to a path in a writable directory")
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
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
    _writer: std::sync::Arc<WriterGuard>,
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

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    serial TEXT NOT NULL UNIQUE,
    jig TEXT NOT NULL,
    station TEXT NOT NULL,
    state TEXT NOT NULL,
    certificate_id TEXT,
    token TEXT,
    token_expires_ms INTEGER,
    thing_name TEXT,
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
";

impl Ledger {
    /// Opens (or creates) the ledger file.
    pub fn open(path: &Path, station: &str) -> Result<Ledger, LedgerError> {
        let sql = |source| LedgerError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| LedgerError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(sql)?;
        // The ledger holds ownership tokens: owner-only, like key files. SQLite gives its
        // -wal and -shm files the database file's mode.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| LedgerError::Io {
                    path: path.to_path_buf(),
                    source,
                },
            )?;
        }
        conn.execute_batch(SCHEMA).map_err(sql)?;
        let (tx, rx) = crossbeam_channel::bounded::<Op>(16_384);
        let handle = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .expect("spawn ledger writer");
        Ok(Ledger {
            tx: tx.clone(),
            path: path.to_path_buf(),
            station: station.to_string(),
            _writer: std::sync::Arc::new(WriterGuard {
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
                Some((id, _)) => {
                    tx.prepare_cached(
                        "UPDATE devices SET jig = ?2, station = ?3, state = 'started', reason = NULL,
                         attempts = attempts + 1, updated_ms = ?4 WHERE id = ?1",
                    )?
                    .execute(params![id, jig, station, now])?;
                    id
                }
                None => {
                    tx.prepare_cached(
                        "INSERT INTO devices (serial, jig, station, state, created_ms, updated_ms)
                         VALUES (?1, ?2, ?3, 'started', ?4, ?4)",
                    )?
                    .execute(params![serial, jig, station, now])?;
                    tx.last_insert_rowid()
                }
            };
            tx.prepare_cached(
                "INSERT INTO events (device_id, state, detail, at_ms) VALUES (?1, 'started', ?2, ?3)",
            )?
            .execute(params![id, format!("jig={jig}"), now])?;
            Ok(id)
        })
    }

    /// Records that a board is being provisioned; returns its device id. A board whose serial
    /// is already verified is refused: it must not get a second identity.
    pub async fn begin(&self, serial: &str, jig: &str) -> Result<i64, LedgerError> {
        let rx = self.submit(self.begin_job(serial, jig))?;
        let id = self.map_ack(rx.await)?;
        self.check_begin(serial, id)
    }

    /// [`begin`](Self::begin) for plain threads.
    pub fn begin_blocking(&self, serial: &str, jig: &str) -> Result<i64, LedgerError> {
        let rx = self.submit(self.begin_job(serial, jig))?;
        let id = self.map_ack(rx.blocking_recv())?;
        self.check_begin(serial, id)
    }

    fn check_begin(&self, serial: &str, id: i64) -> Result<i64, LedgerError> {
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
        Ok(id)
    }

    fn transition_job(id: i64, t: Transition) -> Job {
        Box::new(move |tx| {
            let now = now_ms();
            let state = t.state().as_str();
            let detail = match &t {
                Transition::CertificateIssued {
                    certificate_id,
                    token,
                    token_expires_ms,
                } => {
                    tx.prepare_cached(
                        "UPDATE devices SET state = ?2, certificate_id = ?3, token = ?4,
                         token_expires_ms = ?5, updated_ms = ?6 WHERE id = ?1",
                    )?
                    .execute(params![
                        id,
                        state,
                        certificate_id,
                        token,
                        *token_expires_ms as i64,
                        now
                    ])?;
                    Some(format!("certificate_id={certificate_id}"))
                }
                Transition::Registered { thing_name } => {
                    tx.prepare_cached(
                        "UPDATE devices SET state = ?2, thing_name = ?3, updated_ms = ?4 WHERE id = ?1",
                    )?
                    .execute(params![id, state, thing_name, now])?;
                    Some(format!("thing_name={thing_name}"))
                }
                Transition::Failed { reason } => {
                    tx.prepare_cached(
                        "UPDATE devices SET state = ?2, reason = ?3, updated_ms = ?4 WHERE id = ?1",
                    )?
                    .execute(params![id, state, reason, now])?;
                    Some(reason.clone())
                }
                Transition::Verified => {
                    // The token has done its job; drop it.
                    tx.prepare_cached(
                        "UPDATE devices SET state = ?2, token = NULL, updated_ms = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id, state, now])?;
                    None
                }
                Transition::KeyReserved | Transition::Written => {
                    tx.prepare_cached(
                        "UPDATE devices SET state = ?2, updated_ms = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id, state, now])?;
                    None
                }
            };
            tx.prepare_cached(
                "INSERT INTO events (device_id, state, detail, at_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![id, state, detail, now])?;
            Ok(id)
        })
    }

    /// Records a state change; returns once it is durable.
    pub async fn record(&self, id: i64, t: Transition) -> Result<(), LedgerError> {
        let rx = self.submit(Self::transition_job(id, t))?;
        self.map_ack(rx.await).map(|_| ())
    }

    /// [`record`](Self::record) for plain threads (the jig writers).
    pub fn record_blocking(&self, id: i64, t: Transition) -> Result<(), LedgerError> {
        let rx = self.submit(Self::transition_job(id, t))?;
        self.map_ack(rx.blocking_recv()).map(|_| ())
    }

    fn reader(&self) -> Result<Connection, LedgerError> {
        let c = Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| LedgerError::Sqlite {
                path: self.path.clone(),
                source,
            })?;
        Ok(c)
    }

    /// One device by serial.
    pub fn device(&self, serial: &str) -> Result<Option<DeviceRow>, LedgerError> {
        let c = self.reader()?;
        let sql = |source| LedgerError::Sqlite {
            path: self.path.clone(),
            source,
        };
        c.query_row(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE serial = ?1"),
            params![serial],
            device_row,
        )
        .optional()
        .map_err(sql)
    }

    /// Every device, in the order they were first seen.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, LedgerError> {
        let c = self.reader()?;
        let sql = |source| LedgerError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let mut stmt = c
            .prepare(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id"))
            .map_err(sql)?;
        let rows = stmt.query_map([], device_row).map_err(sql)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sql)
    }

    /// The audit trail of one device: (state, detail, time).
    pub fn events(&self, id: i64) -> Result<Vec<(String, Option<String>, i64)>, LedgerError> {
        let c = self.reader()?;
        let sql = |source| LedgerError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let mut stmt = c
            .prepare("SELECT state, detail, at_ms FROM events WHERE device_id = ?1 ORDER BY id")
            .map_err(sql)?;
        let rows = stmt
            .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sql)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sql)
    }
}

const DEVICE_COLUMNS: &str = "id, serial, jig, station, state, certificate_id, thing_name, reason, attempts, created_ms, updated_ms";

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    let state: String = r.get(4)?;
    Ok(DeviceRow {
        id: r.get(0)?,
        serial: r.get(1)?,
        jig: r.get(2)?,
        station: r.get(3)?,
        state: DeviceState::parse(&state).unwrap_or(DeviceState::Failed),
        certificate_id: r.get(5)?,
        thing_name: r.get(6)?,
        reason: r.get(7)?,
        attempts: r.get(8)?,
        created_ms: r.get(9)?,
        updated_ms: r.get(10)?,
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
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_a_full_life_and_its_audit_trail() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.db"), "st-1").unwrap();
        let id = ledger.begin("SN-1", "jig-1").await.unwrap();
        use std::os::unix::fs::PermissionsExt;
        for f in ["l.db", "l.db-wal"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        ledger.record(id, Transition::KeyReserved).await.unwrap();
        ledger
            .record(
                id,
                Transition::CertificateIssued {
                    certificate_id: "c".repeat(64),
                    token: "tok".into(),
                    token_expires_ms: 5,
                },
            )
            .await
            .unwrap();
        ledger
            .record(
                id,
                Transition::Registered {
                    thing_name: "SN-1".into(),
                },
            )
            .await
            .unwrap();
        ledger.record(id, Transition::Written).await.unwrap();
        ledger.record(id, Transition::Verified).await.unwrap();
        let d = ledger.device("SN-1").unwrap().unwrap();
        assert_eq!(d.state, DeviceState::Verified);
        assert_eq!(d.thing_name.as_deref(), Some("SN-1"));
        assert_eq!(d.certificate_id.as_deref(), Some("c".repeat(64).as_str()));
        assert_eq!(d.station, "st-1");
        let states: Vec<String> = ledger
            .events(id)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(
            states,
            [
                "started",
                "key_reserved",
                "certificate_issued",
                "registered",
                "written",
                "verified"
            ]
        );
        // A verified board is not provisioned again.
        assert!(matches!(
            ledger.begin("SN-1", "jig-2").await,
            Err(LedgerError::AlreadyProvisioned { .. })
        ));
    }

    #[test]
    fn blocking_calls_work_from_threads_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        {
            let ledger = Ledger::open(&path, "st").unwrap();
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let l = ledger.clone();
                    std::thread::spawn(move || {
                        let id = l.begin_blocking(&format!("SN-{i}"), "j").unwrap();
                        l.record_blocking(id, Transition::Failed { reason: "r".into() })
                            .unwrap();
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
        }
        let ledger = Ledger::open(&path, "st").unwrap();
        let all = ledger.devices().unwrap();
        assert_eq!(all.len(), 8);
        assert!(all.iter().all(|d| d.state == DeviceState::Failed));
        // A failed board may be tried again: same row, one more attempt.
        let id = ledger.begin_blocking("SN-0", "j").unwrap();
        assert_eq!(ledger.device("SN-0").unwrap().unwrap().id, id);
        assert_eq!(ledger.device("SN-0").unwrap().unwrap().attempts, 2);
    }
}
