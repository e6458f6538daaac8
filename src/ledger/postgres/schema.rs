//! The PostgreSQL ledger's schema and the locks that let stations share it.
//!
//! One numbered SQL file per version (`migrations/NNNN.sql`: version 2, the first, has the SQLite
//! ledger's version-2 tables; version 3 adds the serial leases and each orphan's station, which
//! a file ledger of one station does not need; version 4 the shared quota's tables), and a
//! version table, `ledger_schema`, with one
//! row. A station migrates at start inside one transaction that first takes a database-wide
//! advisory lock ([`MIGRATION_LOCK`]): stations starting together wait for each other there,
//! and the first migrates while the others then find the schema current. A schema newer than
//! this code knows, or one it has no migration from, is refused and left as found.
//!
//! The per-station lock: a session-level advisory lock on a key derived from the schema and the
//! station id ([`station_lock_key`]), held by the writer's connection as long as the station runs. The
//! server drops it when that connection ends (also when the station is killed), so a crashed
//! station never blocks its own restart; a second station with the same id is refused, naming
//! the first (its row in `stations`); stations with other ids share the ledger.

use std::path::Path;

use postgres::{Client, Transaction};

use super::connect::describe;
use crate::ledger::LedgerError;
use crate::ledger::sqlite::schema::{Migration, plan};

/// Every migration, oldest first. The first creates the ledger in an empty database/schema.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 2,
        sql: include_str!("migrations/0002.sql"),
    },
    Migration {
        version: 3,
        sql: include_str!("migrations/0003.sql"),
    },
    Migration {
        version: 4,
        sql: include_str!("migrations/0004.sql"),
    },
];

/// The version this code reads and writes: the last migration's.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The advisory lock key every station takes, for the length of its migration transaction.
const MIGRATION_LOCK: i64 = 0x666c_6565_745f_6d67; // "fleet_mg"

/// The advisory lock key of station `id` on the ledger in schema `schema`: 64 bits of SHA-256
/// over a prefix, the schema and the id, so two ids share a key with negligible probability,
/// no other program's keys are hit by chance, and ledgers in two schemas of one database
/// (advisory locks are per database) do not lock each other's stations.
pub(super) fn station_lock_key(schema: &str, id: &str) -> i64 {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("fleet-station ledger {schema:?} station {id}").as_bytes(),
    );
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    i64::from_be_bytes(first)
}

/// The schema version of the database the connection sees (its `search_path`): `None` when
/// it holds no ledger tables at all, `Some(0)` for tables without a version (not a ledger).
pub(super) fn version(tx: &mut Transaction<'_>) -> Result<Option<i64>, postgres::Error> {
    let row = tx.query_one(
        "SELECT to_regclass('ledger_schema') IS NOT NULL, to_regclass('devices') IS NOT NULL",
        &[],
    )?;
    let (versioned, devices): (bool, bool) = (row.try_get(0)?, row.try_get(1)?);
    if versioned {
        let v: Option<i64> = tx
            .query_opt("SELECT max(version) FROM ledger_schema", &[])?
            .map(|r| r.try_get(0))
            .transpose()?
            .flatten();
        return Ok(Some(v.unwrap_or(0)));
    }
    Ok(devices.then_some(0))
}

/// A ledger this code reads as it is: at [`SCHEMA_VERSION`] (a reader never migrates).
pub(super) fn check_current(ledger: &str, found: Option<i64>) -> Result<(), LedgerError> {
    match found {
        Some(SCHEMA_VERSION) => Ok(()),
        None => Err(LedgerError::NotFound {
            path: ledger.into(),
        }),
        Some(v) => Err(LedgerError::Schema {
            path: ledger.into(),
            found: v,
            need: SCHEMA_VERSION,
        }),
    }
}

/// Brings the ledger to [`SCHEMA_VERSION`] under the migration lock, in one transaction, or
/// refuses it. `before` runs in that transaction with the version found, before any
/// migration (the key file is checked against the sealed rows as they are).
pub(super) fn migrate<T>(
    client: &mut Client,
    ledger: &str,
    before: impl FnOnce(&mut Transaction<'_>, Option<i64>) -> Result<T, LedgerError>,
) -> Result<T, LedgerError> {
    let pg = |e: postgres::Error| LedgerError::Postgres {
        ledger: ledger.to_string(),
        reason: describe(&e),
    };
    let mut tx = client.transaction().map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg)?;
    let found = version(&mut tx).map_err(pg)?;
    let steps = plan(MIGRATIONS, Path::new(ledger), found)?;
    let value = before(&mut tx, found)?;
    let Some(last) = steps.last() else {
        // Current: nothing to write (the transaction ends, and with it the lock).
        return Ok(value);
    };
    if found.is_none() {
        tx.batch_execute(
            "CREATE TABLE ledger_schema (version BIGINT NOT NULL);
             INSERT INTO ledger_schema (version) VALUES (0);",
        )
        .map_err(pg)?;
    }
    for step in steps {
        tx.batch_execute(step.sql).map_err(pg)?;
    }
    tx.execute("UPDATE ledger_schema SET version = $1", &[&last.version])
        .map_err(pg)?;
    tx.commit().map_err(pg)?;
    Ok(value)
}
