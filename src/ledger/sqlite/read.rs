//! Reading the SQLite ledger: [`SqliteRecords`] opens a read-only connection per call
//! (`SQLITE_OPEN_READ_ONLY`), so reading writes nothing — no schema, no `user_version`, no
//! file mode, no key file, no lock. In WAL mode a reader never blocks the writer and sees the
//! last committed state; every connection still waits up to [`BUSY_TIMEOUT`] for a lock
//! SQLite needs briefly (WAL recovery) instead of failing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Params, Row, params};

use super::schema;
use crate::ledger::backend::Records;
use crate::ledger::{DeviceRow, DeviceState, LedgerError, Orphan};

/// How long any ledger connection waits for a lock held by another connection.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns [`device_row`] reads, in its order.
const DEVICE_COLUMNS: &str = "id, serial, jig, station, state, key_source, certificate_id, thing_name, reason, attempts, created_ms, updated_ms";

/// The columns [`orphan_row`] reads, in its order.
/// (A file ledger has one station: an orphan's is its device's.)
const ORPHAN_COLUMNS: &str =
    "certificate_id, public_key_sha256, serial, status, thing_name, reason, recorded_ms,
     coalesce((SELECT station FROM devices d WHERE d.serial = orphans.serial), '')";

fn device_row(r: &Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        id: r.get(0)?,
        serial: r.get(1)?,
        jig: r.get(2)?,
        station: r.get(3)?,
        state: DeviceState::stored(&r.get::<_, String>(4)?),
        key_source: r.get(5)?,
        certificate_id: r.get(6)?,
        thing_name: r.get(7)?,
        reason: r.get(8)?,
        attempts: r.get(9)?,
        created_ms: r.get(10)?,
        updated_ms: r.get(11)?,
    })
}

fn orphan_row(r: &Row<'_>) -> rusqlite::Result<Orphan> {
    Ok(Orphan {
        certificate_id: r.get(0)?,
        public_key_sha256: r.get(1)?,
        serial: r.get(2)?,
        status: r.get(3)?,
        thing_name: r.get(4)?,
        reason: r.get(5)?,
        recorded_ms: r.get(6)?,
        station: r.get(7)?,
    })
}

/// `error` as a ledger error naming the file.
pub(super) fn sql_error(path: &Path) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
    |source| LedgerError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Read access to a SQLite ledger file.
#[derive(Debug)]
pub(crate) struct SqliteRecords {
    path: PathBuf,
}

impl SqliteRecords {
    /// An existing ledger, for reading. Refuses a missing file and a schema this version does
    /// not read.
    pub(crate) fn open(path: &Path) -> Result<SqliteRecords, LedgerError> {
        let not_found = || LedgerError::NotFound {
            path: path.to_path_buf(),
        };
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(not_found()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(source) => {
                return Err(LedgerError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        let records = SqliteRecords::trusted(path);
        let found = schema::version(&records.reader()?).map_err(sql_error(path))?;
        schema::check_current(path, found)?;
        Ok(records)
    }

    /// Read access to a ledger the writer has just opened and checked.
    pub(super) fn trusted(path: &Path) -> SqliteRecords {
        SqliteRecords {
            path: path.to_path_buf(),
        }
    }

    /// A read-only connection that waits for locks instead of failing.
    pub(super) fn reader(&self) -> Result<Connection, LedgerError> {
        let sql = sql_error(&self.path);
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(&sql)?;
        c.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
        Ok(c)
    }

    /// Every row `sql` selects, mapped by `row`.
    fn rows<T>(
        &self,
        sql: &str,
        params: impl Params,
        row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, LedgerError> {
        let c = self.reader()?;
        let run =
            || -> rusqlite::Result<Vec<T>> { c.prepare(sql)?.query_map(params, row)?.collect() };
        run().map_err(sql_error(&self.path))
    }
}

impl Records for SqliteRecords {
    fn device(&self, serial: &str) -> Result<Option<DeviceRow>, LedgerError> {
        self.reader()?
            .query_row(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE serial = ?1"),
                params![serial],
                device_row,
            )
            .optional()
            .map_err(sql_error(&self.path))
    }

    fn devices(&self) -> Result<Vec<DeviceRow>, LedgerError> {
        self.rows(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id"),
            [],
            device_row,
        )
    }

    fn devices_in(&self, states: &[DeviceState]) -> Result<Vec<DeviceRow>, LedgerError> {
        self.rows(
            &format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE state IN ({}) ORDER BY id",
                state_list(states)
            ),
            [],
            device_row,
        )
    }

    fn count_in(&self, states: &[DeviceState]) -> Result<usize, LedgerError> {
        let n: i64 = self
            .reader()?
            .query_row(
                &format!(
                    "SELECT count(*) FROM devices WHERE state IN ({})",
                    state_list(states)
                ),
                [],
                |r| r.get(0),
            )
            .map_err(sql_error(&self.path))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn events(&self, id: i64) -> Result<Vec<(String, Option<String>, i64)>, LedgerError> {
        self.rows(
            "SELECT state, detail, at_ms FROM events WHERE device_id = ?1 ORDER BY id",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    fn count_by_station(
        &self,
        states: &[DeviceState],
    ) -> Result<Vec<(String, usize)>, LedgerError> {
        self.rows(
            &format!(
                "SELECT station, count(*) FROM devices WHERE state IN ({}) GROUP BY station ORDER BY station",
                state_list(states)
            ),
            [],
            |r| Ok((r.get(0)?, usize::try_from(r.get::<_, i64>(1)?).unwrap_or(0))),
        )
    }

    fn orphans(&self) -> Result<Vec<Orphan>, LedgerError> {
        self.rows(
            &format!("SELECT {ORPHAN_COLUMNS} FROM orphans ORDER BY id"),
            [],
            orphan_row,
        )
    }
}

/// `'a', 'b'` of `states` for an `IN (..)`: this code's own state names, never input.
fn state_list(states: &[DeviceState]) -> String {
    states
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}
