//! The SQLite ledger: one file (WAL, `synchronous = FULL`) beside its lock file
//! (`<ledger>.lock`) and key file (`<ledger>.key`).
//!
//! Every change is durable before its answer comes, so the step after it never runs ahead of
//! the journal. One writer thread commits whatever changes are waiting in one transaction
//! (group commit), so many devices share one disk sync. It takes SQLite's write lock when the
//! transaction begins (`BEGIN IMMEDIATE`) and every connection waits for a busy lock, so a
//! reader or another program touching the file delays a commit instead of failing it.
//!
//! - `schema`: the tables, one numbered migration per version, the version check.
//! - `writer`: the group-commit writer thread.
//! - `journal`: the SQL of each change (begin and resume points, transitions, notes).
//! - `orphans`: how an orphan is recorded (once).
//! - `read`: read-only connections and the queries behind [`Records`](super::backend::Records).
//! - `lock`: the one-writer lock.

mod journal;
mod lock;
mod orphans;
mod read;
pub(super) mod schema;
mod writer;

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};

use self::lock::LedgerLock;
pub(super) use self::lock::holder_line;
pub(crate) use self::read::SqliteRecords;
use self::read::{BUSY_TIMEOUT, sql_error};
use self::writer::Writer;
use super::backend::{Journal, Pending};
use super::seal::{self, SealedKeys, Sealer};
use super::{Began, LedgerError, Transition};

/// The SQLite ledger's writes: queued to the writer thread, answered once committed.
pub(crate) struct SqliteJournal {
    writer: Writer,
    station: String,
    sealer: Arc<Sealer>,
}

/// Opens (or creates) the ledger file as its one writer: the lock first, then the file
/// (owner-only), its schema (migrated to this version, or refused), the key file, and the
/// writer thread.
pub(crate) fn open(
    path: &Path,
    station: &str,
) -> Result<(SqliteJournal, SqliteRecords), LedgerError> {
    let sql = sql_error(path);
    let io = |source| LedgerError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // First of all: nothing else may touch the ledger while another station writes it.
    let lock = LedgerLock::acquire(path, station)?;
    let mut conn = Connection::open(path).map_err(&sql)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&sql)?;
    // The ledger holds ownership tokens: owner-only, like key files. SQLite gives its -wal
    // and -shm files the database file's mode.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        .map_err(&sql)?;
    let found = schema::version(&conn).map_err(&sql)?;
    let steps = schema::pending(path, found)?;
    // The key file is checked before any migration, against the sealed rows as they are
    // (`devices.serial` and `devices.sealed_key` exist since the first version).
    let sealed = match found {
        Some(_) => sealed_keys(&conn).map_err(&sql)?,
        None => SealedKeys::default(),
    };
    let sealer = seal::open_key_file(path, &seal::key_path(path), sealed)?;
    schema::migrate(&mut conn, steps).map_err(&sql)?;
    schema::ensure_indexes(&conn).map_err(&sql)?;
    let journal = SqliteJournal {
        writer: Writer::start(conn, path, lock),
        station: station.to_string(),
        sealer: Arc::new(sealer),
    };
    Ok((journal, SqliteRecords::trusted(path)))
}

/// How many rows hold a sealed key, and one of them to check the key file against.
fn sealed_keys(conn: &Connection) -> rusqlite::Result<SealedKeys> {
    let count = conn.query_row(
        "SELECT count(*) FROM devices WHERE sealed_key IS NOT NULL",
        [],
        |r| r.get(0),
    )?;
    let sample = conn
        .query_row(
            "SELECT serial, sealed_key FROM devices WHERE sealed_key IS NOT NULL LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(SealedKeys { count, sample })
}

impl Journal for SqliteJournal {
    fn begin(&self, serial: &str, jig: &str) -> Pending<Began> {
        let (serial, jig, station) = (serial.to_string(), jig.to_string(), self.station.clone());
        let sealer = self.sealer.clone();
        self.writer
            .submit(move |tx| journal::begin(tx, &sealer, &serial, &jig, &station))
    }

    fn record(&self, id: i64, change: Transition) -> Pending<()> {
        let sealer = self.sealer.clone();
        self.writer
            .submit(move |tx| journal::transition(tx, &sealer, id, &change))
    }

    fn note(&self, id: i64, what: &str, detail: &str) -> Pending<()> {
        let (what, detail) = (what.to_string(), detail.to_string());
        self.writer
            .submit(move |tx| journal::event(tx, id, &what, Some(&detail), super::now_ms()))
    }

    fn note_lost_request(&self, id: i64, reason: &str) -> Pending<()> {
        let reason = reason.to_string();
        self.writer
            .submit(move |tx| journal::lost_request(tx, id, &reason))
    }
}

#[cfg(test)]
mod tests;
