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
use crate::ledger::tests::{Scratch, issued, key_reserved, with_server};
use crate::ledger::{DeviceState, Ledger, LedgerError, LedgerLocation, LedgerView, Transition};

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
    // A board both stations begin at once gets one row.
    let (x, y) = tokio::join!(clone.begin("SN-BOTH", "j"), other.begin("SN-BOTH", "j"));
    assert_eq!(x.unwrap().id, y.unwrap().id);
    assert_eq!(clone.device("SN-BOTH").unwrap().unwrap().attempts, 2);

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
