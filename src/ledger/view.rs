//! The ledger read-only: what `station ledger export` and `station ledger orphans` read while
//! a station may be writing the same file.
//!
//! A [`LedgerView`] opens SQLite with `SQLITE_OPEN_READ_ONLY` and writes nothing: no schema,
//! no `user_version`, no file mode, no key file, no lock. In WAL mode a reader never blocks
//! the writer and sees the last committed state; every connection still waits up to
//! [`BUSY_TIMEOUT`] for a lock SQLite needs briefly (WAL recovery) instead of failing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{DeviceRow, DeviceState, LedgerError, Orphan, SCHEMA_VERSION};

/// How long any ledger connection waits for a lock held by another connection.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read access to a ledger. [`Ledger`](super::Ledger) dereferences to one.
#[derive(Debug, Clone)]
pub struct LedgerView {
    path: PathBuf,
}

impl LedgerView {
    /// Opens an existing ledger for reading. Refuses a missing file and a schema this version
    /// does not know.
    pub fn open(path: &Path) -> Result<LedgerView, LedgerError> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(LedgerError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LedgerError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(LedgerError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        let view = LedgerView::trusted(path);
        let c = view.reader()?;
        match schema_version(&c).map_err(view.sql_err())? {
            Some(SCHEMA_VERSION) => Ok(view),
            found => Err(LedgerError::Schema {
                path: path.to_path_buf(),
                found: found.unwrap_or(0),
                need: SCHEMA_VERSION,
            }),
        }
    }

    /// A view of a ledger [`Ledger::open`](super::Ledger::open) has just checked.
    pub(super) fn trusted(path: &Path) -> LedgerView {
        LedgerView {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A read-only connection that waits for locks instead of failing.
    pub(super) fn reader(&self) -> Result<Connection, LedgerError> {
        let c = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(self.sql_err())?;
        c.busy_timeout(BUSY_TIMEOUT).map_err(self.sql_err())?;
        Ok(c)
    }

    pub(super) fn sql_err(&self) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
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

    /// Devices an earlier run left part-way (holding a key or a certificate): they resume
    /// where they stopped when their boards are placed again. A device at `started` holds
    /// nothing and simply starts afresh, so it is not listed.
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

    /// Every orphaned certificate, in the order they were recorded.
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

/// The schema version of a ledger file: `None` when it holds no ledger tables at all.
pub(super) fn schema_version(c: &Connection) -> rusqlite::Result<Option<i64>> {
    let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let has_devices: bool = c.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'devices'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0;
    Ok(has_devices.then_some(version))
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
