//! Tests of the PostgreSQL store itself, against the server `STATION_TEST_POSTGRES` names
//! (each in a schema of its own; they pass without running when none is named, see
//! `ledger/tests`): stations sharing one ledger and refused only for the same id, migrating
//! once when they start together, refusing a newer schema, each station's key file, a
//! failing change failing only itself, a reader that cannot write, the privileges the README
//! lists, TLS with the server verified (`STATION_TEST_POSTGRES_TLS`). (The journal's behaviour
//! is tested on both stores in `ledger/tests/`.)

use super::PgRecords;
use super::schema::SCHEMA_VERSION;
use crate::ledger::backend::Records;
use crate::ledger::tests::registered;
use crate::ledger::tests::{
    BatchGate, Scratch, assert_only_the_failing_change_failed, issued, key_reserved, with_server,
};
use crate::ledger::{
    DeviceState, Ledger, LedgerError, LedgerLocation, LedgerView, OrphanStatus, Transition,
};

fn schema_versions(s: &Scratch) -> Vec<i64> {
    with_server(s.url.as_deref().unwrap(), |c| {
        c.query("SELECT version FROM ledger_schema", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    })
}

#[tokio::test]
async fn stations_share_the_ledger_and_only_a_second_one_with_the_same_id_is_refused() {
    let Some(s) = Scratch::postgres() else { return };
    let first = s.open("st-a").unwrap();
    let clone = first.clone();
    drop(first);
    // A clone keeps the station's lock.
    let err = s.open("st-a").err().expect("refused");
    let LedgerError::StationInUse {
        ledger,
        station,
        holder,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(station, "st-a");
    assert!(ledger.starts_with("postgres"), "{ledger}");
    assert!(holder.starts_with("station st-a, pid "), "{holder}");
    assert!(
        holder.contains(&format!("pid {}", std::process::id())),
        "{holder}"
    );
    let help = miette::Diagnostic::help(&err).unwrap().to_string();
    assert!(help.contains("give this one an id of its own"), "{help}");
    let shown = format!("{:?}", miette::Report::new(err));
    assert!(shown.contains("station::ledger::station_in_use"), "{shown}");

    // Another station writes the same ledger at the same time; each sees the other's boards.
    let other = s.open("st-b").unwrap();
    let a = clone.begin("SN-A", "j").await.unwrap().id;
    let b = other.begin("SN-B", "j").await.unwrap().id;
    clone.record(a, key_reserved()).await.unwrap();
    other.record(b, key_reserved()).await.unwrap();
    let stations: Vec<(String, String)> = other
        .devices()
        .unwrap()
        .into_iter()
        .map(|d| (d.serial, d.station))
        .collect();
    assert_eq!(
        stations,
        [
            ("SN-A".into(), "st-a".into()),
            ("SN-B".into(), "st-b".into())
        ]
    );
    // A board both stations begin at once gets one row, and one station: the other is
    // refused, naming the station that holds it.
    let (x, y) = tokio::join!(clone.begin("SN-BOTH", "j"), other.begin("SN-BOTH", "j"));
    let (won, lost, holder) = match (x, y) {
        (Ok(b), Err(e)) => (b, e, "st-a"),
        (Err(e), Ok(b)) => (b, e, "st-b"),
        other => panic!("{other:?}"),
    };
    assert!(
        matches!(&lost, LedgerError::HeldElsewhere { station, .. } if station == holder),
        "{lost:?}"
    );
    assert_eq!(clone.device("SN-BOTH").unwrap().unwrap().id, won.id);
    assert_eq!(clone.device("SN-BOTH").unwrap().unwrap().attempts, 1);

    // When the last clone is gone the id is free again.
    drop(clone);
    let again = s.open("st-a").unwrap();
    assert_eq!(again.devices().unwrap().len(), 3);
}

#[test]
fn stations_starting_together_migrate_once() {
    let Some(s) = Scratch::postgres() else { return };
    let opened: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let s = &s;
                scope.spawn(move || s.open(&format!("st-{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &opened {
        assert!(o.is_ok(), "{:?}", o.as_ref().err());
    }
    assert_eq!(schema_versions(&s), [SCHEMA_VERSION]);
    let ledger = opened.into_iter().next().unwrap().unwrap();
    let id = ledger.begin_blocking("SN-1", "j").unwrap().id;
    ledger.record_blocking(id, key_reserved()).unwrap();
}

#[tokio::test]
async fn a_newer_schema_or_a_database_that_is_no_ledger_is_refused_and_left_as_found() {
    let Some(s) = Scratch::postgres() else { return };
    // Nothing there yet: a reader finds no ledger (and creates none).
    let err = s.view().expect_err("no ledger");
    assert!(matches!(err, LedgerError::NotFound { .. }), "{err:?}");
    drop(s.open("st").unwrap());
    s.execute("UPDATE ledger_schema SET version = 99");
    let err = s.open("st").err().expect("refused");
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
    let shown = format!("{:?}", miette::Report::new(err));
    assert!(shown.contains("schema version 99"), "{shown}");
    let err = s.view().expect_err("refused");
    assert!(
        matches!(err, LedgerError::Schema { found: 99, .. }),
        "{err:?}"
    );
    assert_eq!(schema_versions(&s), [99], "left as found");

    // Tables that are not a ledger's (no version table) are not taken over either.
    let Some(other) = Scratch::postgres() else {
        return;
    };
    other.execute("CREATE TABLE devices (x INTEGER)");
    let err = other.open("st").err().expect("refused");
    assert!(
        matches!(err, LedgerError::Schema { found: 0, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn each_station_answers_for_the_keys_it_sealed() {
    let Some(s) = Scratch::postgres() else { return };
    let a = s.open("st-a").unwrap();
    let id = a.begin("SN-1", "j").await.unwrap().id;
    a.record(id, key_reserved()).await.unwrap();
    a.record(id, issued("c-1")).await.unwrap();
    drop(a);
    // Station B has a key file of its own and no sealed rows: it starts.
    let b = s.open("st-b").unwrap();
    assert!(s.key("st-b").exists());
    assert_ne!(
        std::fs::read(s.key("st-b")).unwrap(),
        std::fs::read(s.key("st-a")).unwrap()
    );
    drop(b);
    // Station A without its key file is refused: its unfinished device needs it.
    let saved = std::fs::read(s.key("st-a")).unwrap();
    std::fs::remove_file(s.key("st-a")).unwrap();
    let err = s.open("st-a").err().expect("refused");
    assert!(
        matches!(err, LedgerError::KeyMissing { sealed: 1, .. }),
        "{err:?}"
    );
    std::fs::write(s.key("st-a"), &saved).unwrap();
    // The board moved to station B: it resumes there, but B's key does not open A's sealed
    // private key, so the resume point has none (the engine then abandons the certificate).
    let b = s.open("st-b").unwrap();
    let r = b
        .begin("SN-1", "j2")
        .await
        .unwrap()
        .resume
        .expect("resumes");
    assert_eq!(r.state, DeviceState::CertificateIssued);
    assert!(r.private_key.is_none());
    assert_eq!(r.token.unwrap().expose(), "token-secret-value");
    assert_eq!(b.device("SN-1").unwrap().unwrap().station, "st-b");
}

#[test]
fn a_failing_change_fails_only_itself_and_the_reader_cannot_write() {
    let Some(s) = Scratch::postgres() else { return };
    let ledger = s.open("st").unwrap();
    let id = ledger.begin_blocking("SN-1", "j").unwrap().id;
    // Submitted together, so they share the writer's transaction.
    let (bad, good) = std::thread::scope(|scope| {
        let bad = scope.spawn(|| ledger.record_blocking(4242, Transition::Written));
        let good = scope.spawn(|| ledger.record_blocking(id, key_reserved()));
        (bad.join().unwrap(), good.join().unwrap())
    });
    assert!(matches!(bad, Err(LedgerError::Write { .. })), "{bad:?}");
    good.unwrap();
    assert_eq!(
        ledger.device("SN-1").unwrap().unwrap().state,
        DeviceState::KeyReserved
    );
    // The view's session is read-only: the server refuses a write on it.
    let reader = PgRecords::open(s.url.as_deref().unwrap()).unwrap();
    let err = reader
        .call(|c| c.batch_execute("DELETE FROM devices"))
        .expect_err("refused");
    assert!(format!("{err}").contains("read-only"), "{err}");
    assert_eq!(reader.devices().unwrap().len(), 1);
}

/// The writer's batch holding a failing change: the failing one answers its error, the others
/// are committed once (after the batch ran again with savepoints; PostgreSQL aborts the
/// whole transaction at the first error, so the first run is rolled back).
#[test]
fn a_batch_with_a_failing_change_commits_the_rest_of_it_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    let Some(s) = Scratch::postgres() else { return };
    let url = s.url.clone().unwrap();
    let (journal, _records) =
        super::open(&url, &s.key("st"), "st", Duration::from_secs(60)).unwrap();
    let writer = &journal.writer;
    let (gate, hold) = BatchGate::hold();
    let first = writer.submit(move |_| {
        hold();
        Ok(())
    });
    gate.held();
    let insert = |id: &'static str| {
        move |tx: &mut super::journal::Tx<'_, '_>| {
            tx.tx
                .execute(
                    "INSERT INTO stations (id, holder) VALUES ($1, 'test')",
                    &[&id],
                )
                .map_err(Into::into)
        }
    };
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let before = writer.submit(move |tx| {
        counted.fetch_add(1, Ordering::SeqCst);
        insert("batch-before")(tx)
    });
    let failing = writer.submit(|tx| tx.tx.execute("SELECT 1 / 0", &[]).map_err(Into::into));
    let after = writer.submit(insert("batch-after"));
    gate.release();

    first.wait_blocking().unwrap();
    assert_only_the_failing_change_failed(
        before.wait_blocking(),
        failing.wait_blocking(),
        after.wait_blocking(),
        "division by zero",
        runs.load(Ordering::SeqCst),
    );
    let ids: Vec<String> = with_server(&url, |c| {
        c.query(
            "SELECT id FROM stations WHERE id LIKE 'batch-%' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    });
    assert_eq!(ids, ["batch-after", "batch-before"]);
}

#[tokio::test]
async fn the_privileges_the_readme_lists_are_enough() {
    let Some(s) = Scratch::postgres() else { return };
    // The schema's owner creates the ledger (the first start).
    drop(s.open("owner").unwrap());
    let schema = s.schema().unwrap();
    let role = format!("{schema}_station");
    // README, "A shared PostgreSQL ledger": exactly these grants.
    s.execute(&format!(
        "CREATE ROLE {role} LOGIN;
         GRANT USAGE ON SCHEMA {schema} TO {role};
         GRANT SELECT, INSERT, UPDATE ON {schema}.devices, {schema}.events, {schema}.orphans, {schema}.stations, {schema}.quota_buckets, {schema}.quota_takers TO {role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.leases TO {role};
         GRANT SELECT ON {schema}.ledger_schema TO {role};
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role};"
    ));
    let url = format!("{}&user={role}", s.url.as_deref().unwrap());
    let at = LedgerLocation::Postgres {
        url: url.clone(),
        key_file: s.key("line"),
    };
    {
        let ledger = Ledger::open_at(&at, "line").unwrap();
        let id = ledger.begin("SN-P", "j").await.unwrap().id;
        ledger.record(id, key_reserved()).await.unwrap();
        ledger.record(id, issued("c-1")).await.unwrap();
        ledger
            .record(
                id,
                Transition::CertificateAbandoned {
                    reason: "token expired".into(),
                    status: crate::ledger::OrphanStatus::Pending,
                },
            )
            .await
            .unwrap();
        ledger.record(id, key_reserved()).await.unwrap();
        ledger.record(id, issued("c-2")).await.unwrap();
        ledger.record(id, registered("thing-p")).await.unwrap();
        ledger.record(id, Transition::Written).await.unwrap();
        ledger.record(id, Transition::Verified).await.unwrap();
        ledger.note(id, "checked", "by hand").await.unwrap();
        assert_eq!(ledger.orphans().unwrap().len(), 1);
        let view = LedgerView::open_at(&at).unwrap();
        assert_eq!(
            view.device("SN-P").unwrap().unwrap().state,
            DeviceState::Verified
        );
    }
    // The shared quota (provision.shared_quota): its rows made, tokens taken, a throttle.
    let quota_url = url.clone();
    let quota = tokio::task::spawn_blocking(move || {
        crate::provision::shared_quota::SharedQuota::start(
            &quota_url,
            "line",
            &[("register_thing", 10.0), ("create_certificate", 15.0)],
        )
    })
    .await
    .unwrap()
    .unwrap();
    let bucket = quota.bucket("register_thing", 10.0);
    // (Without its privileges the call would wait for tokens that never come.)
    tokio::time::timeout(std::time::Duration::from_secs(60), bucket.acquire())
        .await
        .expect("a token");
    assert!(bucket.report_throttle().await.unwrap().decreased);
    // And no more: it cannot create tables (a migration needs the owner).
    let denied = with_server(&url, |c| {
        c.batch_execute(&format!("CREATE TABLE {schema}.x (y INT)"))
    });
    assert!(denied.is_err());
    drop(s);
    let base = std::env::var(crate::ledger::tests::TEST_POSTGRES).unwrap();
    with_server(&base, |c| {
        c.batch_execute(&format!("DROP ROLE {role}")).unwrap()
    });
}

#[tokio::test]
async fn over_tls_the_server_is_verified_against_sslrootcert() {
    // scripts/postgres.sh also serves TLS on loopback, with a certificate from a CA of its own.
    let url = match std::env::var("STATION_TEST_POSTGRES_TLS") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                crate::ledger::tests::test_server().is_none(),
                "STATION_TEST_POSTGRES is set but STATION_TEST_POSTGRES_TLS is not: run the tests through scripts/postgres.sh"
            );
            return;
        }
    };
    let schema = format!(
        "ledger_tls_{}_{:08x}",
        std::process::id(),
        fastrand::u32(..)
    );
    with_server(&url, |c| {
        c.batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap()
    });
    let ledger_url = format!("{url}&options=-c%20search_path%3D{schema}");
    let dir = tempfile::tempdir().unwrap();
    let at = LedgerLocation::Postgres {
        url: ledger_url.clone(),
        key_file: dir.path().join("k"),
    };
    {
        let ledger = Ledger::open_at(&at, "st").unwrap();
        let id = ledger.begin("SN-TLS", "j").await.unwrap().id;
        ledger.record(id, key_reserved()).await.unwrap();
        assert_eq!(
            ledger.device("SN-TLS").unwrap().unwrap().state,
            DeviceState::KeyReserved
        );
    }
    let ssl: bool = with_server(&ledger_url, |c| {
        c.query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0)
    });
    assert!(ssl, "the session is encrypted");
    // Without the CA file the server's certificate is checked against the system's roots,
    // which do not know the test CA: refused, not connected unverified.
    let without_ca = {
        let (base, query) = ledger_url.split_once('?').unwrap();
        let kept: Vec<&str> = query
            .split('&')
            .filter(|kv| !kv.starts_with("sslrootcert="))
            .collect();
        format!("{base}?{}", kept.join("&"))
    };
    let err = Ledger::open_at(
        &LedgerLocation::Postgres {
            url: without_ca,
            key_file: dir.path().join("k"),
        },
        "st2",
    )
    .err()
    .expect("refused");
    let LedgerError::Postgres { reason, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        reason.contains("TLS") || reason.contains("certificate"),
        "{reason}"
    );
    with_server(&url, |c| {
        c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .unwrap()
    });
}

/// The serials station `station` holds a lease on, sorted.
fn leases_of(s: &Scratch, station: &str) -> Vec<String> {
    with_server(s.url.as_deref().unwrap(), |c| {
        c.query(
            "SELECT serial FROM leases WHERE station = $1 ORDER BY serial",
            &[&station],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    })
}

#[tokio::test]
async fn a_serial_another_station_holds_is_refused_naming_it_and_a_verified_one_everywhere() {
    let Some(s) = Scratch::postgres() else { return };
    let a = s.open("st-a").unwrap();
    let b = s.open("st-b").unwrap();
    let id = a.begin("SN-1", "j").await.unwrap().id;
    a.record(id, key_reserved()).await.unwrap();
    assert_eq!(leases_of(&s, "st-a"), ["SN-1"]);

    // B sees the same serial while A works on it: refused, naming A, nothing recorded.
    let err = b.begin("SN-1", "j2").await.expect_err("held by st-a");
    let LedgerError::HeldElsewhere {
        serial,
        station,
        expires_in_s,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!((serial.as_str(), station.as_str()), ("SN-1", "st-a"));
    assert!((1..=60).contains(expires_in_s), "{expires_in_s}");
    let shown = format!("{:?}", miette::Report::new(err));
    assert!(
        shown.contains("station::ledger::held_by_station"),
        "{shown}"
    );
    assert!(shown.contains("held by station st-a"), "{shown}");
    assert!(shown.contains("take the board off this jig"), "{shown}");
    let row = a.device("SN-1").unwrap().unwrap();
    assert_eq!((row.station.as_str(), row.attempts), ("st-a", 1));
    assert!(leases_of(&s, "st-b").is_empty());

    // A finishes it: the lease goes with the verification, and no station provisions it again.
    a.record(id, issued("c-1")).await.unwrap();
    a.record(id, registered("thing-1")).await.unwrap();
    a.record(id, Transition::Written).await.unwrap();
    a.record(id, Transition::Verified).await.unwrap();
    assert!(leases_of(&s, "st-a").is_empty());
    for station in [&b, &a] {
        let err = station.begin("SN-1", "j").await.expect_err("verified");
        assert!(
            matches!(&err, LedgerError::AlreadyProvisioned { thing, .. } if thing == "thing-1"),
            "{err:?}"
        );
    }
    assert!(leases_of(&s, "st-a").is_empty() && leases_of(&s, "st-b").is_empty());

    // A failed device lets its lease go: the board may be tried again at another station.
    let id = a.begin("SN-2", "j").await.unwrap().id;
    a.record(
        id,
        Transition::Failed {
            reason: "jig:timeout".into(),
        },
    )
    .await
    .unwrap();
    assert!(leases_of(&s, "st-a").is_empty());
    let again = b.begin("SN-2", "j2").await.unwrap();
    assert_eq!(again.id, id);
    assert_eq!(leases_of(&s, "st-b"), ["SN-2"]);

    // A station that stops cleanly lets go of what it still holds.
    drop(b);
    assert!(leases_of(&s, "st-b").is_empty());
    a.begin("SN-2", "j").await.unwrap();

    // One that was killed left its leases behind; restarted under its id, it lets them go
    // (it would otherwise renew them for boards it is not working on).
    s.execute(
        "INSERT INTO leases (serial, station, taken_at, expires_at)
         VALUES ('SN-3', 'st-b', now(), now() + interval '1 hour')",
    );
    let b = s.open("st-b").unwrap();
    assert!(leases_of(&s, "st-b").is_empty());
    b.begin("SN-3", "j").await.unwrap();
    assert_eq!(leases_of(&s, "st-b"), ["SN-3"]);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_dead_stations_certificate_is_its_orphan() {
    let Some(s) = Scratch::postgres() else { return };
    let a = s.open("st-a").unwrap();
    let id = a.begin("SN-1", "j").await.unwrap().id;
    a.record(id, key_reserved()).await.unwrap();
    a.record(id, issued("c-1")).await.unwrap();
    let b = s.open("st-b").unwrap();
    assert!(matches!(
        b.begin("SN-1", "j2").await,
        Err(LedgerError::HeldElsewhere { .. })
    ));
    // A stops renewing (it hung, or died without closing its connection): its lease runs
    // out. (The CLI test kills a station and waits for the real expiry.)
    s.execute("UPDATE leases SET expires_at = now() - interval '1 second' WHERE station = 'st-a'");
    let r = b
        .begin("SN-1", "j2")
        .await
        .unwrap()
        .resume
        .expect("resumes at st-b");
    assert_eq!(r.state, DeviceState::CertificateIssued);
    // A's key file sealed the private key: B cannot open it.
    assert!(r.private_key.is_none());
    assert_eq!(leases_of(&s, "st-b"), ["SN-1"]);

    // A comes back to life: its changes to the board B took over are refused.
    let err = a
        .record(id, registered("thing-a"))
        .await
        .expect_err("lease lost");
    let LedgerError::LeaseLost { serial, holder, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!((serial.as_str(), holder.as_str()), ("SN-1", "st-b"));
    let shown = format!("{:?}", miette::Report::new(err));
    assert!(shown.contains("station::ledger::lease_lost"), "{shown}");
    assert_eq!(
        a.device("SN-1").unwrap().unwrap().state,
        DeviceState::CertificateIssued
    );

    // B abandons the certificate it cannot use: the orphan is A's.
    b.record(
        id,
        Transition::CertificateAbandoned {
            reason: "the private key for this certificate cannot be recovered".into(),
            status: OrphanStatus::Unknown,
        },
    )
    .await
    .unwrap();
    let orphans = b.orphans().unwrap();
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0].certificate_id.as_deref(), Some("c-1"));
    assert_eq!(orphans[0].station, "st-a");
    // B provisions the board afresh; its own certificate is B's.
    b.record(id, key_reserved()).await.unwrap();
    b.record(id, issued("c-2")).await.unwrap();
    b.record(
        id,
        Transition::Failed {
            reason: "jig:timeout".into(),
        },
    )
    .await
    .unwrap();
    let stations: Vec<(Option<String>, String)> = b
        .orphans()
        .unwrap()
        .into_iter()
        .map(|o| (o.certificate_id, o.station))
        .collect();
    assert_eq!(
        stations,
        [
            (Some("c-1".into()), "st-a".into()),
            (Some("c-2".into()), "st-b".into())
        ]
    );
}

/// Waits (up to a minute, else fails with `never`) until `n` server processes wait for a lock
/// that backend `pid` holds.
fn wait_until_blocked_by(url: &str, pid: i32, n: i64, never: &str) {
    let mut watch = super::connect_for_tests(url);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let waiting: i64 = watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                &[&pid],
            )
            .unwrap()
            .get(0);
        if waiting == n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{never}");
        std::thread::yield_now();
    }
}

/// README's deadlock: two stations each hold boards, and in one group commit each records a
/// change to a board it holds and begins a board the other holds. Before leases, each
/// transaction locked its own rows, then waited for the other's (the server broke the
/// deadlock after `deadlock_timeout` by failing a change). Now the claim runs before the
/// transaction and the held boards are refused without touching their rows; and boards both
/// stations begin at once, in opposite orders, go one to each station, never to both and
/// never to an error.
///
/// To put the crossing changes into one group commit of each station, both writers are first
/// held in a change to a gate device whose row this test has locked; the crossing changes queue
/// meanwhile; the test lets go, and each writer takes all of them in its next batch.
#[test]
fn two_stations_crossing_over_each_others_boards_in_one_group_commit_never_deadlock() {
    let Some(s) = Scratch::postgres() else { return };
    let url = s.url.clone().unwrap();
    let a = s.open("st-a").unwrap();
    let b = s.open("st-b").unwrap();
    const N: usize = 40;
    let xs: Vec<String> = (0..N).map(|i| format!("SN-X{i:03}")).collect();
    let ys: Vec<String> = (0..N).map(|i| format!("SN-Y{i:03}")).collect();
    let zs: Vec<String> = (0..N).map(|i| format!("SN-Z{i:03}")).collect();
    let x_ids: Vec<i64> = xs
        .iter()
        .map(|x| a.begin_blocking(x, "j").unwrap().id)
        .collect();
    let y_ids: Vec<i64> = ys
        .iter()
        .map(|y| b.begin_blocking(y, "j").unwrap().id)
        .collect();
    let gate_a = a.begin_blocking("SN-GATE-A", "j").unwrap().id;
    let gate_b = b.begin_blocking("SN-GATE-B", "j").unwrap().id;

    // Hold both writers at their gate.
    let mut gate = super::connect_for_tests(&url);
    let mut locked = gate.transaction().unwrap();
    locked
        .batch_execute("SELECT 1 FROM devices WHERE serial LIKE 'SN-GATE-%' FOR UPDATE")
        .unwrap();
    let gate_pid: i32 = locked
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let held_a = a.journal.record(gate_a, Transition::Written);
    let held_b = b.journal.record(gate_b, Transition::Written);
    wait_until_blocked_by(&url, gate_pid, 2, "the writers never reached the gate");
    // A changes X_i and begins Y_i, B changes Y_i and begins X_i; and both begin every Z, in
    // opposite orders.
    let (mut a_records, mut a_begins, mut b_records, mut b_begins) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..N {
        a_records.push(a.journal.record(x_ids[i], key_reserved()));
        a_begins.push(a.journal.begin(&ys[i], "j"));
        b_records.push(b.journal.record(y_ids[i], key_reserved()));
        b_begins.push(b.journal.begin(&xs[i], "j"));
    }
    let at_a: Vec<_> = zs.iter().map(|z| a.journal.begin(z, "j")).collect();
    let mut at_b: Vec<_> = zs.iter().rev().map(|z| b.journal.begin(z, "j")).collect();
    at_b.reverse();
    locked.commit().unwrap();
    held_a.wait_blocking().unwrap();
    held_b.wait_blocking().unwrap();

    for p in a_records.into_iter().chain(b_records) {
        p.wait_blocking()
            .expect("a change to a board its station holds");
    }
    for (p, holder) in a_begins
        .into_iter()
        .map(|p| (p, "st-b"))
        .chain(b_begins.into_iter().map(|p| (p, "st-a")))
    {
        match p.wait_blocking() {
            Ok(crate::ledger::Began::Held { station, .. }) => assert_eq!(station, holder),
            other => panic!("{other:?}"),
        }
    }
    let mut won = std::collections::BTreeMap::<String, Vec<&str>>::new();
    for ((z, pa), pb) in zs.iter().zip(at_a).zip(at_b) {
        for (p, station) in [(pa, "st-a"), (pb, "st-b")] {
            match p.wait_blocking() {
                Ok(crate::ledger::Began::Fresh(_)) => {
                    won.entry(z.clone()).or_default().push(station)
                }
                Ok(crate::ledger::Began::Held { .. }) => {}
                other => panic!("{z} at {station}: {other:?}"),
            }
        }
    }
    assert_eq!(won.len(), N, "{won:?}");
    assert!(won.values().all(|w| w.len() == 1), "{won:?}");
    let mut held: Vec<String> = leases_of(&s, "st-a");
    held.extend(leases_of(&s, "st-b"));
    assert_eq!(held.len(), 3 * N + 2);
}

/// The deadlock two lines on 300 shared serials met (2026-12-04): a group commit lets go of
/// its station's leases in the order its changes came. Station A holds U and V; its open
/// group commit has let go of V; station B claims both and waits for V's row; then A's
/// commit lets go of U. When a claim locked U (a live lease of A, not taken) while it waited,
/// A's commit waited for B and B for A, and the server failed one of them. A claim locks no
/// lease it does not take: A's commit goes through, and B gets both once A has let them go.
#[test]
fn a_claim_locks_no_lease_it_does_not_take_so_a_group_commit_letting_go_never_waits_for_it() {
    use super::lease::{Claim, Leases};
    let Some(s) = Scratch::postgres() else { return };
    let url = s.url.clone().unwrap();
    let _migrated = s.open("st-setup").unwrap();
    let lease = std::time::Duration::from_secs(60);
    let (u, v) = ("SN-U".to_string(), "SN-V".to_string());
    let both = vec![u.clone(), v.clone()];

    let mut a = super::connect_for_tests(&url);
    let a_leases = Leases::prepare(&mut a, "st-a", lease).unwrap();
    let claimed = a_leases.claim(&mut a, &both).unwrap();
    assert!(claimed.values().all(|c| *c == Claim::Ours), "{claimed:?}");

    let mut commit = a.transaction().unwrap();
    let let_go = "DELETE FROM leases WHERE serial = $1 AND station = 'st-a'";
    assert_eq!(commit.execute(let_go, &[&v]).unwrap(), 1);
    let a_pid: i32 = commit
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);

    let b_url = url.clone();
    let b_both = both.clone();
    let b = std::thread::spawn(move || {
        let mut b = super::connect_for_tests(&b_url);
        let b_leases = Leases::prepare(&mut b, "st-b", lease).unwrap();
        b_leases.claim(&mut b, &b_both)
    });
    // B's claim waits for A's commit (V's row).
    wait_until_blocked_by(
        &url,
        a_pid,
        1,
        "station B's claim never waited for A's commit",
    );
    // A's commit lets go of U too, without waiting for B, and commits.
    assert_eq!(commit.execute(let_go, &[&u]).unwrap(), 1);
    commit.commit().unwrap();

    let claimed = b.join().unwrap().expect("B's claim");
    assert_eq!(claimed.get(&u), Some(&Claim::Ours), "{claimed:?}");
    assert_eq!(claimed.get(&v), Some(&Claim::Ours), "{claimed:?}");
    assert_eq!(leases_of(&s, "st-b"), both);
    assert!(leases_of(&s, "st-a").is_empty());
}
