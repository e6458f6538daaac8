//! The PostgreSQL ledger: the same tables and rules as the SQLite ledger, in a database that
//! many stations share (`station.ledger = "postgres://…"`).
//!
//! - Durable before the answer, as with SQLite: one writer thread per station commits the
//!   waiting changes in one transaction (group commit), each change in a savepoint so a
//!   failing change fails only itself, and answers after COMMIT.
//! - Shared: any number of stations write the ledger at once; a second station with the same
//!   `station.id` is refused ([`LedgerError::StationInUse`]) by a per-station advisory lock
//!   the writer's connection holds (`schema`). One serial, one station: a station leases each
//!   serial it begins (`lease`), and a board whose serial another station holds is refused
//!   ([`LedgerError::HeldElsewhere`]) until that lease is let go or expires.
//! - Migrated at start, once, under a database lock, however many stations start together; a
//!   schema newer than this code is refused.
//! - Each station seals its private keys under its own key file (`station.ledger_key`), which
//!   never goes into the database; see `seal`.
//!
//! - `connect`: the URL, TLS, the password kept out of messages.
//! - `schema`: migrations (`migrations/NNNN.sql`), the version check, the locks.
//! - `writer`: the group-commit writer thread.
//! - `lease`: serial leases (claim, renew, release) and why claims run outside the group
//!   commit.
//! - `journal`: the SQL of each change.
//! - `read`: the read side.
//! - `quota`: the account quota all stations share (`provision.shared_quota`): one GCRA
//!   bucket with its AIMD state per API, taken from in batches on a connection of its own.

mod connect;
mod journal;
mod lease;
pub(crate) mod quota;
mod read;
mod schema;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::lease::Leases;

use postgres::Client;

pub(crate) use self::connect::{check_url, redact};
use self::connect::{connect, pg_error};
pub(crate) use self::read::PgRecords;
use self::writer::Writer;
use super::backend::{Journal, Pending};
use super::seal::{self, SealedKeys, Sealer};
use super::{Began, LedgerError, Transition};

/// How long a station waits for its id's lock before it is refused: a station that has just
/// stopped may still be closing its connection (the server drops the lock when it has).
const LOCK_PATIENCE: Duration = Duration::from_secs(2);

/// The PostgreSQL ledger's writes: queued to the writer thread, answered once committed.
pub(crate) struct PgJournal {
    writer: Writer,
    station: String,
    sealer: Arc<Sealer>,
}

/// Opens the ledger at `url` as station `station`'s writer: connect, take the station's lock
/// (or say who holds it), check the key file against this station's sealed rows, migrate
/// (once, under the database lock), say who holds the station id, start the writer and the
/// reader.
pub(crate) fn open(
    url: &str,
    key_file: &Path,
    station: &str,
    lease: Duration,
) -> Result<(PgJournal, PgRecords), LedgerError> {
    let ledger = redact(url);
    let (target, key_file, id) = (url.to_string(), key_file.to_path_buf(), station.to_string());
    let (writer, sealer) = Writer::start(&ledger, move || {
        let mut client = connect(&target, false)?;
        take_station_lock(&mut client, &target, &id)?;
        let ledger = redact(&target);
        let sealer = schema::migrate(&mut client, &ledger, |tx, found| {
            let sealed = match found {
                Some(_) => sealed_keys(tx, &id).map_err(pg_error(&target))?,
                None => SealedKeys::default(),
            };
            seal::open_key_file(Path::new(&ledger), &key_file, sealed)
        })?;
        client
            .execute(
                "INSERT INTO stations (id, holder) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder",
                &[&id, &holder_line(&id)],
            )
            .map_err(pg_error(&target))?;
        let leases = Leases::prepare(&mut client, &id, lease).map_err(pg_error(&target))?;
        // Leases under this id are an earlier run's (the id's lock says no other process has
        // it): let them go, or this run would renew them for boards it is not working on. A
        // board of those placed here again is claimed again.
        leases.release_all(&mut client).map_err(pg_error(&target))?;
        Ok((client, leases, sealer))
    })?;
    let journal = PgJournal {
        writer,
        station: station.to_string(),
        sealer: Arc::new(sealer),
    };
    Ok((journal, PgRecords::start(url)?))
}

/// Takes station `id`'s lock on this connection, waiting [`LOCK_PATIENCE`] for a holder that
/// is going away; refused naming the holder otherwise.
fn take_station_lock(client: &mut Client, url: &str, id: &str) -> Result<(), LedgerError> {
    let schema: String = client
        .query_one("SELECT coalesce(current_schema(), '')", &[])
        .and_then(|r| r.try_get(0))
        .map_err(pg_error(url))?;
    let key = schema::station_lock_key(&schema, id);
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .and_then(|r| r.try_get(0))
            .map_err(pg_error(url))?;
        if got {
            return Ok(());
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let holder = client
        .query_opt(
            "SELECT holder FROM stations WHERE to_regclass('stations') IS NOT NULL AND id = $1",
            &[&id],
        )
        .ok()
        .flatten()
        .and_then(|r| r.try_get::<_, String>(0).ok())
        .unwrap_or_else(|| "a station that is starting (it has not said who it is yet)".into());
    Err(LedgerError::StationInUse {
        ledger: redact(url),
        station: id.to_string(),
        holder: holder.trim_end().to_string(),
    })
}

/// How many of station `id`'s rows hold a sealed key, and one of them to check its key file
/// against. Other stations' rows are sealed under their own key files.
fn sealed_keys(
    tx: &mut postgres::Transaction<'_>,
    id: &str,
) -> Result<SealedKeys, postgres::Error> {
    let count: i64 = tx
        .query_one(
            "SELECT count(*) FROM devices WHERE station = $1 AND sealed_key IS NOT NULL",
            &[&id],
        )?
        .try_get(0)?;
    let sample = tx
        .query_opt(
            "SELECT serial, sealed_key FROM devices WHERE station = $1 AND sealed_key IS NOT NULL LIMIT 1",
            &[&id],
        )?
        .map(|r| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?)))
        .transpose()?;
    Ok(SealedKeys { count, sample })
}

/// `station ID, pid N, host H, since RFC3339`, as the SQLite lock file says it.
fn holder_line(station: &str) -> String {
    super::sqlite::holder_line(station)
}

impl Journal for PgJournal {
    fn begin(&self, serial: &str, jig: &str) -> Pending<Began> {
        let (serial, jig, station) = (serial.to_string(), jig.to_string(), self.station.clone());
        let sealer = self.sealer.clone();
        self.writer
            .submit_claiming(Some(serial.clone()), move |tx| {
                journal::begin(tx, &sealer, &serial, &jig, &station)
            })
    }

    fn record(&self, id: i64, change: Transition) -> Pending<()> {
        let (sealer, station) = (self.sealer.clone(), self.station.clone());
        self.writer
            .submit(move |tx| journal::transition(tx, &sealer, &station, id, &change))
    }

    fn release(&self, id: i64) -> Pending<()> {
        let station = self.station.clone();
        self.writer
            .submit(move |tx| journal::release_device(tx, id, &station))
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

/// A plain connection to `url` for tests (panics on failure).
#[cfg(test)]
pub(crate) fn connect_for_tests(url: &str) -> Client {
    connect(url, false).unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests;
