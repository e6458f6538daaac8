//! Tests of the SQLite store itself: the files (owner-only, secrets sealed), waiting for
//! SQLite's locks instead of failing, the one-writer lock, a reader that writes nothing, and
//! the schema versions it refuses. (The journal's behaviour is tested in `ledger/tests/`.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rusqlite::Connection;

use super::lock::lock_path;
use super::read::SqliteRecords;
use super::schema::SCHEMA_VERSION;
use crate::ledger::seal::key_path;
use crate::ledger::tests::{issued, key_reserved, raw, scratch};
use crate::ledger::{DeviceState, Ledger, LedgerError, LedgerView, Transition};

fn user_version(path: &Path) -> i64 {
    raw(path)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_ledger_files_are_owner_only_and_hold_no_private_key_in_clear() {
    let (dir, path) = scratch();
    {
        let ledger = Ledger::open(&path, "st").unwrap();
        let id = ledger.begin("SN-1", "j").await.unwrap().id;
        ledger.record(id, key_reserved()).await.unwrap();
        ledger.record(id, issued("c")).await.unwrap();
        for f in ["l.db", "l.db-wal", "l.db.key", "l.db.lock"] {
            assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
        }
        // The station dies here, the key sealed for resuming.
    }
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend(std::fs::read(dir.path().join("l.db-wal")).unwrap_or_default());
    assert!(!bytes.windows(13).any(|w| w == b"PLAINTEXT-KEY"));
}

#[test]
fn a_write_waits_while_another_connection_holds_the_write_lock() {
    let (_dir, path) = scratch();
    let ledger = Ledger::open(&path, "st").unwrap();
    let id = ledger.begin_blocking("SN-W", "j").unwrap().id;
    // Another program (an sqlite3 shell, say) holds the write lock with a change pending.
    let other = Connection::open(&path).unwrap();
    other
        .execute_batch(
            "BEGIN IMMEDIATE; INSERT INTO events (device_id, state, at_ms) VALUES (1, 'other', 0);",
        )
        .unwrap();
    let l = ledger.clone();
    let write = std::thread::spawn(move || l.record_blocking(id, key_reserved()));
    // It holds the lock for a while (the scenario, not a synchronisation: the write succeeds
    // however long it takes the writer thread to reach the lock).
    std::thread::sleep(std::time::Duration::from_millis(200));
    other.execute_batch("COMMIT").unwrap();
    write
        .join()
        .unwrap()
        .expect("the write waited for the lock");
    assert_eq!(
        ledger.device("SN-W").unwrap().unwrap().state,
        DeviceState::KeyReserved
    );
    // The line goes on.
    ledger.record_blocking(id, issued("c")).unwrap();
}

#[tokio::test]
async fn a_reader_holding_a_snapshot_does_not_stop_the_writer() {
    let (_dir, path) = scratch();
    let ledger = Ledger::open(&path, "st").unwrap();
    let id = ledger.begin("SN-1", "j").await.unwrap().id;
    let reader = SqliteRecords::open(&path).unwrap().reader().unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let count = |c: &Connection| -> i64 {
        c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap()
    };
    let before = count(&reader);
    ledger.record(id, key_reserved()).await.unwrap();
    ledger.begin("SN-2", "j").await.unwrap();
    // The reader keeps its snapshot; the writer commits past it.
    assert_eq!(count(&reader), before);
    reader.execute_batch("COMMIT").unwrap();
    assert_eq!(count(&reader), before + 2);
    ledger.record(id, issued("c")).await.unwrap();
}

#[test]
fn a_second_station_on_one_ledger_is_refused_naming_the_first() {
    let (_dir, path) = scratch();
    let first = Ledger::open(&path, "st-first").unwrap();
    let clone = first.clone();
    drop(first);
    // A clone keeps the lock.
    let err = Ledger::open(&path, "st-second").err().expect("refused");
    let LedgerError::InUse { path: p, holder } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(p, &path);
    assert!(holder.contains("station st-first"), "{holder}");
    assert!(
        holder.contains(&format!("pid {}", std::process::id())),
        "{holder}"
    );
    assert!(
        holder.contains("host ") && holder.contains("since "),
        "{holder}"
    );
    let shown = format!("{:?}", miette::Report::new(err));
    assert!(shown.contains("station::ledger::in_use"), "{shown}");
    assert!(shown.contains("stop the other station"), "{shown}");
    // Reading is not writing: a view opens beside the writer.
    assert_eq!(LedgerView::open(&path).unwrap().devices().unwrap().len(), 0);

    // When the last clone is gone the lock is free again; the lock file stays, owner-only.
    drop(clone);
    let again = Ledger::open(&path, "st-second").unwrap();
    let lock = lock_path(&path);
    assert_eq!(mode(&lock), 0o600);
    assert!(
        std::fs::read_to_string(&lock)
            .unwrap()
            .starts_with("station st-second, pid ")
    );
    drop(again);
    assert!(lock.exists(), "the lock file is never deleted");
}

#[test]
fn writer_failures_are_reported_as_such() {
    let (_dir, path) = scratch();
    let ledger = Ledger::open(&path, "st").unwrap();
    let err = ledger
        .record_blocking(4242, Transition::Written)
        .expect_err("no such device");
    assert!(matches!(err, LedgerError::Write { .. }), "{err:?}");
}

/// Every file of `dir`: name, a digest of its bytes, length, mtime.
fn snapshot(dir: &Path) -> Vec<(String, String, u64, std::time::SystemTime)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes)),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn the_view_reads_without_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    let id = {
        let ledger = Ledger::open(&path, "st").unwrap();
        let id = ledger.begin("SN-V", "j").await.unwrap().id;
        ledger.record(id, key_reserved()).await.unwrap();
        ledger.record(id, issued("c-v")).await.unwrap();
        ledger
            .record(id, Transition::Failed { reason: "r".into() })
            .await
            .unwrap();
        id
    };
    // The view needs neither the key file nor the lock file.
    std::fs::remove_file(key_path(&path)).unwrap();
    std::fs::remove_file(lock_path(&path)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = snapshot(dir.path());

    let view = LedgerView::open(&path).unwrap();
    assert_eq!(view.devices().unwrap().len(), 1);
    assert_eq!(
        view.device("SN-V").unwrap().unwrap().state,
        DeviceState::Failed
    );
    assert!(view.unfinished().unwrap().is_empty());
    assert_eq!(view.events(id).unwrap().len(), 4);
    assert_eq!(view.orphans().unwrap().len(), 1);
    drop(view);

    // SQLite's own companions of a WAL database may appear (a reader needs the shared-memory
    // index, and an empty log); the ledger, its key and its lock are as they were.
    let after: Vec<_> = snapshot(dir.path())
        .into_iter()
        .filter(|f| f.0 != "l.db-shm" && !(f.0 == "l.db-wal" && f.2 == 0))
        .collect();
    assert_eq!(after, before, "no file was created, changed or touched");
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    assert_eq!(mode(&path), 0o640, "no chmod");
}

#[test]
fn the_view_refuses_a_missing_ledger_and_an_unknown_schema() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.db");
    let err = LedgerView::open(&missing).err().unwrap();
    assert!(matches!(err, LedgerError::NotFound { .. }), "{err:?}");
    assert!(!missing.exists(), "nothing is created");

    let path = dir.path().join("l.db");
    drop(Ledger::open(&path, "st").unwrap());
    Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let err = LedgerView::open(&path).err().unwrap();
    assert!(
        matches!(
            err,
            LedgerError::Schema {
                found: 99,
                need: SCHEMA_VERSION,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(user_version(&path), 99, "left as found");
    // Nor does the writer take over a ledger of a newer version, or of one it has no
    // migration from (the unversioned ledger before version 2, say); both are left as found.
    for found in [99, 1, 0] {
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", found)
            .unwrap();
        let err = Ledger::open(&path, "st").err().expect("refused");
        assert!(
            matches!(err, LedgerError::Schema { found: f, need: SCHEMA_VERSION, .. } if f == found),
            "{err:?}"
        );
        assert_eq!(user_version(&path), found);
    }

    // A database that is not a ledger at all.
    let other = dir.path().join("other.db");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    assert!(matches!(
        LedgerView::open(&other),
        Err(LedgerError::Schema { found: 0, .. })
    ));
}

/// The query plan SQLite picks for `sql`, one detail line per step.
fn plan(conn: &Connection, sql: &str) -> String {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect::<Vec<_>>();
    rows.join("\n")
}

#[test]
fn orphans_are_found_by_serial_through_an_index_even_in_a_ledger_made_without_it() {
    let (_dir, path) = scratch();
    drop(Ledger::open(&path, "st").unwrap());
    // A ledger as the releases before the index made it.
    Connection::open(&path)
        .unwrap()
        .execute_batch("DROP INDEX orphans_serial")
        .unwrap();
    drop(Ledger::open(&path, "st").unwrap());
    let conn = raw(&path);
    // The statements of a registration and of recording an orphan, as the journal runs them.
    for sql in [
        "UPDATE orphans SET thing_name = 't' WHERE serial = 'SN' AND status = 'active' AND thing_name IS NULL",
        "SELECT 1 FROM orphans WHERE serial = 'SN' AND certificate_id = 'c'",
    ] {
        let p = plan(&conn, sql);
        assert!(p.contains("USING INDEX orphans_serial"), "{sql}: {p}");
    }
    assert_eq!(user_version(&path), SCHEMA_VERSION, "no new schema version");
}
