//! Reading the PostgreSQL ledger: [`PgRecords`] keeps one read-only session
//! (`SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY`: the server refuses any write on
//! it) on a thread of its own, and each read is a statement of its own there, which sees the
//! last committed state. Reads from many threads take turns on that one connection. Like the
//! writer, the connection lives on its thread because the synchronous client must not be used
//! from inside the station's async runtime.

use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use postgres::types::ToSql;
use postgres::{Client, Row};

use super::connect::{connect, pg_error};
use super::schema;
use crate::ledger::backend::Records;
use crate::ledger::{DeviceRow, DeviceState, LedgerError, Orphan};

/// The columns [`device_row`] reads, in its order.
const DEVICE_COLUMNS: &str = "id, serial, jig, station, state, key_source, certificate_id, thing_name, reason, attempts, created_ms, updated_ms";

/// The columns [`orphan_row`] reads, in its order.
const ORPHAN_COLUMNS: &str = "certificate_id, public_key_sha256, serial, status, thing_name, reason, recorded_ms, coalesce(station, '')";

fn device_row(r: &Row) -> Result<DeviceRow, postgres::Error> {
    Ok(DeviceRow {
        id: r.try_get(0)?,
        serial: r.try_get(1)?,
        jig: r.try_get(2)?,
        station: r.try_get(3)?,
        state: DeviceState::stored(&r.try_get::<_, String>(4)?),
        key_source: r.try_get(5)?,
        certificate_id: r.try_get(6)?,
        thing_name: r.try_get(7)?,
        reason: r.try_get(8)?,
        attempts: r.try_get(9)?,
        created_ms: r.try_get(10)?,
        updated_ms: r.try_get(11)?,
    })
}

fn orphan_row(r: &Row) -> Result<Orphan, postgres::Error> {
    Ok(Orphan {
        certificate_id: r.try_get(0)?,
        public_key_sha256: r.try_get(1)?,
        serial: r.try_get(2)?,
        status: r.try_get(3)?,
        thing_name: r.try_get(4)?,
        reason: r.try_get(5)?,
        recorded_ms: r.try_get(6)?,
        station: r.try_get(7)?,
    })
}

/// A read, run on the reader's thread.
type ReadJob = Box<dyn FnOnce(&mut Client) + Send>;

/// Read access to a PostgreSQL ledger.
pub(crate) struct PgRecords {
    jobs: Option<Sender<ReadJob>>,
    thread: Option<JoinHandle<()>>,
    url: String,
    ledger: String,
}

impl std::fmt::Debug for PgRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgRecords")
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

impl PgRecords {
    /// An existing ledger, for reading. Refuses a database without a ledger
    /// ([`LedgerError::NotFound`]) and a schema this version does not read.
    pub(crate) fn open(url: &str) -> Result<PgRecords, LedgerError> {
        let records = PgRecords::start(url)?;
        let ledger = records.ledger.clone();
        let found = records.call(|c| {
            let mut tx = c.transaction()?;
            schema::version(&mut tx)
        })?;
        schema::check_current(&ledger, found)?;
        Ok(records)
    }

    /// Read access to a ledger the writer has just opened and checked.
    pub(super) fn start(url: &str) -> Result<PgRecords, LedgerError> {
        let (jobs, rx) = crossbeam_channel::unbounded::<ReadJob>();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let target = url.to_string();
        let ledger = super::redact(url);
        let thread = std::thread::Builder::new()
            .name("ledger-reader".into())
            .spawn(move || match connect(&target, true) {
                Ok(mut client) => {
                    let _ = ready_tx.send(Ok(()));
                    while let Ok(job) = rx.recv() {
                        job(&mut client);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| LedgerError::Postgres {
                ledger: ledger.clone(),
                reason: format!("cannot start the ledger reader thread: {e}"),
            })?;
        let records = PgRecords {
            jobs: Some(jobs),
            thread: Some(thread),
            url: url.to_string(),
            ledger,
        };
        ready_rx.recv().unwrap_or(Err(LedgerError::Stopped))?;
        Ok(records)
    }

    /// Runs `read` on the reader's connection and waits for its answer.
    pub(super) fn call<T: Send + 'static>(
        &self,
        read: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job: ReadJob = Box::new(move |c| {
            let _ = tx.send(read(c));
        });
        let jobs = self.jobs.as_ref().ok_or(LedgerError::Stopped)?;
        jobs.send(job).map_err(|_| LedgerError::Stopped)?;
        rx.recv()
            .map_err(|_| LedgerError::Stopped)?
            .map_err(pg_error(&self.url))
    }

    /// Every row `sql` selects with `params`, mapped by `row`.
    fn rows<T: Send + 'static>(
        &self,
        sql: String,
        params: Vec<Box<dyn ToSql + Sync + Send>>,
        row: fn(&Row) -> Result<T, postgres::Error>,
    ) -> Result<Vec<T>, LedgerError> {
        self.call(move |c| {
            let params: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            c.query(&sql, &params)?.iter().map(row).collect()
        })
    }
}

impl Drop for PgRecords {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Records for PgRecords {
    fn device(&self, serial: &str) -> Result<Option<DeviceRow>, LedgerError> {
        let rows = self.rows(
            format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE serial = $1"),
            vec![Box::new(serial.to_string())],
            device_row,
        )?;
        Ok(rows.into_iter().next())
    }

    fn devices(&self) -> Result<Vec<DeviceRow>, LedgerError> {
        self.rows(
            format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id"),
            vec![],
            device_row,
        )
    }

    fn devices_in(&self, states: &[DeviceState]) -> Result<Vec<DeviceRow>, LedgerError> {
        self.rows(
            format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE state = ANY($1) ORDER BY id"),
            vec![Box::new(state_names(states))],
            device_row,
        )
    }

    fn count_in(&self, states: &[DeviceState]) -> Result<usize, LedgerError> {
        let n = self.rows(
            "SELECT count(*) FROM devices WHERE state = ANY($1)".to_string(),
            vec![Box::new(state_names(states))],
            |r| r.try_get::<_, i64>(0),
        )?;
        Ok(usize::try_from(n.first().copied().unwrap_or(0)).unwrap_or(0))
    }

    fn count_by_station(
        &self,
        states: &[DeviceState],
    ) -> Result<Vec<(String, usize)>, LedgerError> {
        self.rows(
            "SELECT station, count(*) FROM devices WHERE state = ANY($1) GROUP BY station ORDER BY station"
                .to_string(),
            vec![Box::new(state_names(states))],
            |r| {
                Ok((
                    r.try_get(0)?,
                    usize::try_from(r.try_get::<_, i64>(1)?).unwrap_or(0),
                ))
            },
        )
    }

    fn events(&self, id: i64) -> Result<Vec<(String, Option<String>, i64)>, LedgerError> {
        self.rows(
            "SELECT state, detail, at_ms FROM events WHERE device_id = $1 ORDER BY id".to_string(),
            vec![Box::new(id)],
            |r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
        )
    }

    fn orphans(&self) -> Result<Vec<Orphan>, LedgerError> {
        self.rows(
            format!("SELECT {ORPHAN_COLUMNS} FROM orphans ORDER BY id"),
            vec![],
            orphan_row,
        )
    }
}

/// The stored names of `states`, for `= ANY($1)`.
fn state_names(states: &[DeviceState]) -> Vec<String> {
    states.iter().map(|s| s.as_str().to_string()).collect()
}
