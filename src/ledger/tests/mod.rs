//! Unit tests of the ledger through [`Ledger`] and [`LedgerView`], and the helpers every
//! ledger test shares (here, in `sqlite/tests.rs` and `postgres/tests.rs`): transitions as
//! the engine records them, a scratch ledger on either store ([`Scratch`]), summaries of what
//! was recorded, and the raw store.
//!
//! The tests of `journal` and `key_file` run on both stores ([`on_both_stores!`]): each test
//! is a function of a [`Scratch`], and runs as `<test>::sqlite` and `<test>::postgres`. The
//! PostgreSQL runs need a server: `STATION_TEST_POSTGRES` names it (a URL; each test makes a
//! schema of its own there and drops it after), and `scripts/postgres.sh` starts a throw-away
//! one and sets it. Without it they pass without running, and
//! `postgres_ledger_tests_need_station_test_postgres` says so on stderr; with
//! `STATION_REQUIRE_POSTGRES=1` (as `.ci/run` sets) a missing server fails them instead.
//!
//! - `journal`: states, the audit trail, resume points, orphans (each listed once).
//! - `key_file`: the key file a ledger's sealed keys need.

/// Runs each named test function (`async fn NAME(s: Scratch)`, or `fn` after `sync`) on both
/// stores, as the tests `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both_stores {
    (async $($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::ledger::tests::Scratch;

            #[tokio::test]
            async fn sqlite() {
                super::$name(Scratch::sqlite()).await
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(s) = Scratch::postgres() {
                    super::$name(s).await
                }
            }
        }
    )*};
    (sync $($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::ledger::tests::Scratch;

            #[test]
            fn sqlite() {
                super::$name(Scratch::sqlite())
            }

            #[test]
            fn postgres() {
                if let Some(s) = Scratch::postgres() {
                    super::$name(s)
                }
            }
        }
    )*};
}

mod journal;
mod key_file;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rusqlite::{Connection, OpenFlags, params};

use super::{KeySource, Ledger, LedgerError, LedgerLocation, LedgerView, OrphanStatus, Transition};
use crate::fleet::payloads::Secret;

/// The variable naming the PostgreSQL server the tests use.
pub(crate) const TEST_POSTGRES: &str = "STATION_TEST_POSTGRES";
/// The variable that makes a missing server a failure instead of a skip.
pub(crate) const REQUIRE_POSTGRES: &str = "STATION_REQUIRE_POSTGRES";

/// The server the PostgreSQL tests use, if one is named. Panics when none is and one is
/// required.
pub(crate) fn test_server() -> Option<String> {
    match std::env::var(TEST_POSTGRES) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var(REQUIRE_POSTGRES).as_deref() != Ok("1"),
                "{REQUIRE_POSTGRES}=1 but {TEST_POSTGRES} names no PostgreSQL server: run the tests through scripts/postgres.sh"
            );
            None
        }
    }
}

/// The one place that says the PostgreSQL tests did not run (straight to stderr, past the
/// test harness's capture, so `cargo test` shows it); with a server, checks that it answers.
#[test]
fn postgres_ledger_tests_need_station_test_postgres() {
    match test_server() {
        None => {
            let _ = writeln!(
                std::io::stderr(),
                "\nNOTE: the PostgreSQL ledger tests did not run ({TEST_POSTGRES} is not set); \
                 `bash scripts/postgres.sh cargo test` runs them against a throw-away server\n"
            );
        }
        Some(url) => {
            let one: i32 = with_server(&url, |c| c.query_one("SELECT 1", &[]).unwrap().get(0));
            assert_eq!(one, 1);
        }
    }
}

/// Runs `f` with a connection to `url` on a thread of its own (the synchronous client must
/// not run inside a test's async runtime).
pub(crate) fn with_server<T: Send>(
    url: &str,
    f: impl FnOnce(&mut postgres::Client) -> T + Send,
) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut c = super::postgres::connect_for_tests(url);
                f(&mut c)
            })
            .join()
            .expect("the test's database work does not panic")
    })
}

/// A scratch ledger on one store: a temporary directory (the SQLite file and the key files),
/// and on PostgreSQL a schema of the test's own, dropped when the scratch is.
pub(crate) struct Scratch {
    pub dir: tempfile::TempDir,
    /// The SQLite ledger's path (unused on PostgreSQL).
    pub path: PathBuf,
    /// The URL of the test's schema on PostgreSQL.
    pub url: Option<String>,
    server: Option<(String, String)>,
}

impl Scratch {
    pub(crate) fn sqlite() -> Scratch {
        let (dir, path) = scratch();
        Scratch {
            dir,
            path,
            url: None,
            server: None,
        }
    }

    /// A fresh schema on the test server; `None` when no server is named.
    pub(crate) fn postgres() -> Option<Scratch> {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = test_server()?;
        let schema = format!(
            "ledger_test_{}_{}_{:08x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        );
        with_server(&base, |c| {
            c.batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap()
        });
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let (dir, path) = scratch();
        Some(Scratch {
            dir,
            path,
            url: Some(url),
            server: Some((base, schema)),
        })
    }

    /// Where the ledger is, for station `station` (on PostgreSQL each station has its key
    /// file).
    pub(crate) fn location(&self, station: &str) -> LedgerLocation {
        match &self.url {
            None => LedgerLocation::File(self.path.clone()),
            Some(url) => LedgerLocation::Postgres {
                url: url.clone(),
                key_file: self.key(station),
            },
        }
    }

    /// The key file of station `station`: `<ledger>.key` beside a file ledger, the station's
    /// own on PostgreSQL.
    pub(crate) fn key(&self, station: &str) -> PathBuf {
        match &self.url {
            None => super::seal::key_path(&self.path),
            Some(_) => self.dir.path().join(format!("ledger-{station}.key")),
        }
    }

    /// The test's schema on PostgreSQL.
    pub(crate) fn schema(&self) -> Option<&str> {
        self.server.as_ref().map(|(_, schema)| schema.as_str())
    }

    pub(crate) fn open(&self, station: &str) -> Result<Ledger, LedgerError> {
        Ledger::open_at(&self.location(station), station)
    }

    pub(crate) fn view(&self) -> Result<LedgerView, LedgerError> {
        LedgerView::open_at(&self.location("-"))
    }

    /// Runs `sql` on the store directly, as another program could.
    pub(crate) fn execute(&self, sql: &str) {
        match &self.url {
            None => {
                Connection::open(&self.path)
                    .unwrap()
                    .execute_batch(sql)
                    .unwrap();
            }
            Some(url) => with_server(url, |c| c.batch_execute(sql).unwrap()),
        }
    }

    /// Raw columns the public rows do not show: token, sealed key, public key sha256.
    pub(crate) fn secrets_of(
        &self,
        serial: &str,
    ) -> (Option<String>, Option<Vec<u8>>, Option<String>) {
        match &self.url {
            None => secrets_of(&self.path, serial),
            Some(url) => with_server(url, |c| {
                let r = c
                    .query_one(
                        "SELECT token, sealed_key, public_key_sha256 FROM devices WHERE serial = $1",
                        &[&serial],
                    )
                    .unwrap();
                (r.get(0), r.get(1), r.get(2))
            }),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some((base, schema)) = &self.server {
            with_server(base, |c| {
                let _ = c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
            });
        }
    }
}

/// A temporary directory with the path of a ledger in it (not created yet).
/// Holds a ledger's writer thread inside a change, so that the changes submitted meanwhile
/// share its next batch: submit a change that calls [`BatchGate::hold`]'s closure, wait with
/// [`BatchGate::held`], submit the batch, then [`BatchGate::release`].
pub(crate) struct BatchGate {
    started: crossbeam_channel::Receiver<()>,
    go: crossbeam_channel::Sender<()>,
}

impl BatchGate {
    /// The gate, and what the holding change runs: it says it started, then waits.
    pub(crate) fn hold() -> (BatchGate, impl Fn() + Send + 'static) {
        let (started_tx, started) = crossbeam_channel::bounded::<()>(1);
        let (go, go_rx) = crossbeam_channel::bounded::<()>(1);
        let hold = move || {
            let _ = started_tx.send(());
            let _ = go_rx.recv();
        };
        (BatchGate { started, go }, hold)
    }

    /// Waits until the writer is inside the holding change.
    pub(crate) fn held(&self) {
        self.started.recv().unwrap();
    }

    pub(crate) fn release(&self) {
        self.go.send(()).unwrap();
    }
}

/// The answers of a batch `[before, failing, after]` whose middle change failed: it alone
/// failed (its error naming `reason`), the others were stored once, and `before` ran
/// `runs_of_before` times (2: the batch ran whole, failed, and ran again with savepoints).
pub(crate) fn assert_only_the_failing_change_failed<T: PartialEq + From<u8> + std::fmt::Debug>(
    before: Result<T, LedgerError>,
    failing: Result<T, LedgerError>,
    after: Result<T, LedgerError>,
    reason: &str,
    runs_of_before: usize,
) {
    assert_eq!(before.unwrap(), T::from(1));
    let err = failing.expect_err("the failing change");
    assert!(
        matches!(&err, LedgerError::Write { reason: r, .. } if r.contains(reason)),
        "{err:?}"
    );
    assert_eq!(after.unwrap(), T::from(1));
    assert_eq!(
        runs_of_before, 2,
        "the batch ran whole, failed, and ran again with savepoints"
    );
}

pub(crate) fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    (dir, path)
}

pub(crate) fn issued(cert: &str) -> Transition {
    Transition::CertificateIssued {
        certificate_id: cert.into(),
        certificate_pem: "-----BEGIN CERTIFICATE-----".into(),
        token: Secret::new("token-secret-value"),
        token_expires_ms: 5,
        private_key: None,
        public_key_sha256: None,
    }
}

pub(crate) fn key_reserved() -> Transition {
    key_reserved_with("ab")
}

/// A pool key whose public key's sha256 is `pk` repeated.
pub(crate) fn key_reserved_with(pk: &str) -> Transition {
    Transition::KeyReserved {
        source: KeySource::Pool,
        public_key_sha256: Some(pk.repeat(32)),
        private_key: Some(Secret::new("-----BEGIN PRIVATE KEY-----PLAINTEXT-KEY")),
    }
}

pub(crate) fn abandoned(status: OrphanStatus) -> Transition {
    Transition::CertificateAbandoned {
        reason: "the station stopped while its certificate request was in flight".into(),
        status,
    }
}

pub(crate) fn registered(thing: &str) -> Transition {
    let mut config = BTreeMap::new();
    config.insert("LocationUrl".to_string(), "https://example.aws".to_string());
    Transition::Registered {
        thing_name: thing.into(),
        device_configuration: config,
    }
}

/// (certificate id, status, serial, public key sha256, thing) of every orphan.
pub(crate) type OrphanSummary = (
    Option<String>,
    String,
    String,
    Option<String>,
    Option<String>,
);

pub(crate) fn orphan_summary(ledger: &LedgerView) -> Vec<OrphanSummary> {
    ledger
        .orphans()
        .unwrap()
        .into_iter()
        .map(|o| {
            (
                o.certificate_id,
                o.status,
                o.serial,
                o.public_key_sha256,
                o.thing_name,
            )
        })
        .collect()
}

/// What device `id`'s audit trail says happened, oldest first.
pub(crate) fn event_names(ledger: &LedgerView, id: i64) -> Vec<String> {
    ledger
        .events(id)
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect()
}

/// A read-only connection to the ledger file itself.
pub(crate) fn raw(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

/// Raw columns the public rows do not show: token, sealed key, public key sha256.
pub(crate) fn secrets_of(
    path: &Path,
    serial: &str,
) -> (Option<String>, Option<Vec<u8>>, Option<String>) {
    raw(path)
        .query_row(
            "SELECT token, sealed_key, public_key_sha256 FROM devices WHERE serial = ?1",
            params![serial],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}
