//! The SQLite ledger's schema: one numbered migration per version, applied in order when the
//! writer opens a ledger, all in one transaction with the new version (`PRAGMA user_version`).
//! A version newer than this code knows, or one it cannot upgrade, is refused.
//!
//! Version 2 is the first version a ledger records; the unversioned ledger of the versions
//! before it (`user_version` 0 with tables) has no migration and is refused (its error reads
//! version 0, not a ledger), as since version 2 came. A schema change appends a migration: its number is the version it makes, its SQL
//! takes a ledger of the version before it there; the released ledger of the version before
//! it is a fixture (`fixtures/ledger/`) that `tests/suite/ledger_fixture.rs` opens and upgrades.

use std::path::Path;

use rusqlite::Connection;

use crate::ledger::LedgerError;

/// One step of the schema: the SQL that brings a ledger at the version before it to `version`.
/// (The PostgreSQL store numbers its migrations the same way and plans them with [`plan`].)
pub(in crate::ledger) struct Migration {
    pub(in crate::ledger) version: i64,
    pub(in crate::ledger) sql: &'static str,
}

/// Every migration, oldest first. The first creates the ledger in an empty file.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 2,
    sql: V2_CREATE,
}];

/// The version this code reads and writes: the last migration's.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The ledger as released in version 2 (the text is kept as written then: SQLite stores it,
/// and a ledger made now has the same schema as one made then).
const V2_CREATE: &str = "
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

/// Indexes that change nothing stored: made each time the writer opens a ledger, after its
/// migrations, rather than by a migration of their own. A ledger an older release made gets
/// them at its next run, and a reader of any version needs nothing (readers never write).
/// `orphans_serial`: a registration updates the orphans of its serial and an orphan is
/// recorded once per serial; without it both scan every orphan of a factory's ledger.
const INDEXES: &str = "CREATE INDEX IF NOT EXISTS orphans_serial ON orphans(serial);";

/// Makes the [`INDEXES`] a ledger lacks.
pub(super) fn ensure_indexes(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(INDEXES)
}

/// The schema version of a ledger file: `None` when it holds no ledger tables at all.
pub(super) fn version(c: &Connection) -> rusqlite::Result<Option<i64>> {
    let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let has_devices: bool = c.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'devices'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0;
    Ok(has_devices.then_some(version))
}

fn refused(path: &Path, found: Option<i64>, need: i64) -> LedgerError {
    LedgerError::Schema {
        path: path.to_path_buf(),
        found: found.unwrap_or(0),
        need,
    }
}

/// A ledger this code reads as it is: at [`SCHEMA_VERSION`] (a reader never migrates).
pub(super) fn check_current(path: &Path, found: Option<i64>) -> Result<(), LedgerError> {
    match found {
        Some(SCHEMA_VERSION) => Ok(()),
        other => Err(refused(path, other, SCHEMA_VERSION)),
    }
}

/// The migrations a ledger at `found` (`None`: an empty file) needs, in order: none when it
/// is current. Refused when it is newer than this code or at a version no migration starts
/// from.
pub(super) fn pending(
    path: &Path,
    found: Option<i64>,
) -> Result<&'static [Migration], LedgerError> {
    plan(MIGRATIONS, path, found)
}

/// The migrations of `migrations` a ledger at `found` needs (see [`pending`]).
pub(in crate::ledger) fn plan<'a>(
    migrations: &'a [Migration],
    path: &Path,
    found: Option<i64>,
) -> Result<&'a [Migration], LedgerError> {
    let start = match found {
        None => 0,
        Some(v) => match migrations.iter().position(|m| m.version == v) {
            Some(i) => i + 1,
            None => {
                let need = migrations.last().map_or(0, |m| m.version);
                return Err(refused(path, found, need));
            }
        },
    };
    Ok(&migrations[start..])
}

/// Applies `steps` and records the last one's version, all in one transaction: a ledger is
/// never left between two versions.
pub(super) fn migrate(conn: &mut Connection, steps: &[Migration]) -> rusqlite::Result<()> {
    let Some(last) = steps.last() else {
        return Ok(());
    };
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for step in steps {
        tx.execute_batch(step.sql)?;
    }
    tx.pragma_update(None, "user_version", last.version)?;
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schema history of three versions, the way a later one will look.
    const HISTORY: &[Migration] = &[
        Migration {
            version: 1,
            sql: "CREATE TABLE devices (id INTEGER PRIMARY KEY, serial TEXT NOT NULL);",
        },
        Migration {
            version: 2,
            sql: "ALTER TABLE devices ADD COLUMN thing_name TEXT;",
        },
        Migration {
            version: 3,
            sql: "CREATE TABLE notes (device_id INTEGER NOT NULL, text TEXT);",
        },
    ];

    fn open_at(path: &Path) -> (Connection, Option<i64>) {
        let c = Connection::open(path).unwrap();
        let v = version(&c).unwrap();
        (c, v)
    }

    fn versions(steps: &[Migration]) -> Vec<i64> {
        steps.iter().map(|m| m.version).collect()
    }

    #[test]
    fn each_version_gets_the_migrations_after_it_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let (mut c, found) = open_at(&path);
        assert_eq!(found, None, "an empty file");
        let steps = plan(&HISTORY[..2], &path, found).unwrap();
        assert_eq!(versions(steps), [1, 2]);
        migrate(&mut c, steps).unwrap();
        c.execute(
            "INSERT INTO devices (serial, thing_name) VALUES ('SN-1', 't')",
            [],
        )
        .unwrap();
        drop(c);

        // The next version of the code brings the file from 2 to 3, keeping its rows.
        let (mut c, found) = open_at(&path);
        assert_eq!(found, Some(2));
        let steps = plan(HISTORY, &path, found).unwrap();
        assert_eq!(versions(steps), [3]);
        migrate(&mut c, steps).unwrap();
        assert_eq!(version(&c).unwrap(), Some(3));
        let serial: String = c
            .query_row("SELECT serial FROM devices", [], |r| r.get(0))
            .unwrap();
        assert_eq!(serial, "SN-1");
        assert!(plan(HISTORY, &path, Some(3)).unwrap().is_empty(), "current");
    }

    #[test]
    fn a_failing_migration_leaves_the_ledger_at_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let (mut c, _) = open_at(&path);
        migrate(&mut c, &HISTORY[..1]).unwrap();
        let broken = [
            Migration {
                version: 2,
                sql: "ALTER TABLE devices ADD COLUMN thing_name TEXT;",
            },
            Migration {
                version: 3,
                sql: "ALTER TABLE no_such_table ADD COLUMN x TEXT;",
            },
        ];
        assert!(migrate(&mut c, &broken).is_err());
        assert_eq!(version(&c).unwrap(), Some(1));
        let columns: i64 = c
            .query_row(
                "SELECT count(*) FROM pragma_table_info('devices') WHERE name = 'thing_name'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(columns, 0, "the first step was rolled back with the second");
    }

    #[test]
    fn a_newer_or_unknown_version_is_refused() {
        let path = Path::new("l.db");
        for found in [Some(4), Some(0)] {
            let err = plan(HISTORY, path, found).err().expect("refused");
            assert!(
                matches!(err, LedgerError::Schema { found: f, need: 3, .. } if Some(f) == found),
                "{err:?}"
            );
        }
        // Today's history: version 2 is current, the unversioned ledger before it is refused.
        assert_eq!(SCHEMA_VERSION, 2);
        assert!(pending(path, Some(2)).unwrap().is_empty());
        assert_eq!(versions(pending(path, None).unwrap()), [2]);
        assert!(pending(path, Some(0)).is_err());
        assert!(pending(path, Some(1)).is_err());
    }
}
