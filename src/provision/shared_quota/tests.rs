//! Tests of the shared account quota against the server `STATION_TEST_POSTGRES` names (each
//! in a scratch ledger schema of its own; without a server they pass without running, and
//! `ledger::tests::postgres_ledger_tests_need_station_test_postgres` says so): the GCRA and
//! AIMD arithmetic of the row, a station that stopped taking tokens (killed) dropping out of
//! the others' share a second after its last grant, two stations sharing one rate, a throttle
//! at one lowering the other's rate, the database going away and coming back. A database
//! that cannot be reached at start is tested without a server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::*;
use crate::ledger::tests::{Scratch, with_server};
use crate::provision::rate::RateLimiter;

const API: &str = "register_thing";

/// A scratch ledger schema, migrated by a first station, and its URL.
fn ledger() -> Option<(Scratch, String)> {
    let s = Scratch::postgres()?;
    drop(s.open("owner").unwrap());
    let url = s.url.clone().unwrap();
    Some((s, url))
}

/// [`SharedQuota::start`] off the test's runtime (it blocks while it connects).
async fn start(
    url: &str,
    station: &str,
    quotas: &[(&'static str, f64)],
) -> Result<Arc<SharedQuota>, LedgerError> {
    let (url, station, quotas) = (url.to_string(), station.to_string(), quotas.to_vec());
    tokio::task::spawn_blocking(move || SharedQuota::start(&url, &station, &quotas))
        .await
        .unwrap()
}

/// One column of an API's row.
fn column<T>(url: &str, api: &str, name: &str) -> T
where
    T: for<'a> postgres::types::FromSql<'a> + Send,
{
    with_server(url, |c| {
        c.query_one(
            &format!("SELECT {name} FROM quota_buckets WHERE api = $1"),
            &[&api],
        )
        .unwrap()
        .get(0)
    })
}

#[test]
fn grants_tile_the_time_line_at_the_rate_and_aimd_lives_in_the_row() {
    let Some((_s, url)) = ledger() else { return };
    let mut store = QuotaStore::connect(&url, "st-a").unwrap();
    assert_eq!(store.seed(API, 20.0).unwrap().previous, None);

    // An idle bucket: ~100 ms of tokens at once, one every 1/rate.
    let g1 = store.grant(API, BATCH).unwrap();
    assert_eq!(g1.tokens, 2);
    assert_eq!(g1.delay, Duration::ZERO);
    assert_eq!(g1.interval, Duration::from_millis(50));
    assert_eq!((g1.rate, g1.stations), (20.0, 1));
    // The next grant (of any station) starts where that one ends: no overlap, no burst.
    let g2 = store.grant(API, BATCH).unwrap();
    assert!(
        (g2.start_s - (g1.start_s + 0.1)).abs() < 1e-6,
        "{g1:?} {g2:?}"
    );
    assert!(g2.delay > Duration::ZERO && g2.delay <= Duration::from_millis(100));
    let tat: f64 = column(&url, API, "tat");
    assert!((tat - (g2.start_s + 0.1)).abs() < 1e-6);
    assert_eq!(column::<i64>(&url, API, "grants"), 2);
    assert_eq!(column::<i64>(&url, API, "tokens"), 4);
    // The batch follows the rate: 100 ms at 1000/s is 100 tokens in one round trip.
    store.seed("create_certificate", 1000.0).unwrap();
    let big = store.grant("create_certificate", BATCH).unwrap();
    assert_eq!((big.tokens, big.interval), (100, Duration::from_millis(1)));
    // A second station taking tokens: each batch is a station's share of the 100 ms, paced
    // over the 100 ms (so each station needs to keep up with its share only).
    let mut other = QuotaStore::connect(&url, "st-b").unwrap();
    let shared = other.grant("create_certificate", BATCH).unwrap();
    assert_eq!(
        (shared.tokens, shared.interval, shared.stations),
        (50, Duration::from_millis(2), 2)
    );
    assert!((shared.start_s - (big.start_s + 0.1)).abs() < 1e-6);
    let again = store.grant("create_certificate", BATCH).unwrap();
    assert_eq!((again.tokens, again.stations), (50, 2));
    assert!((again.start_s - (shared.start_s + 0.05)).abs() < 1e-6);

    // A throttle cuts the rate to 70 %, once a second across all reports.
    let t = store.throttled(API).unwrap();
    assert_eq!((t.rate, t.decreased), (14.0, true));
    let t = store.throttled(API).unwrap();
    assert_eq!((t.rate, t.decreased), (14.0, false));
    assert_eq!(column::<i64>(&url, API, "throttles"), 2);
    assert_eq!(column::<i64>(&url, API, "decreases"), 1);
    // Each whole second without a throttle adds 5 % of the quota (1/s here), up to it.
    // (The last increase and decrease put `seconds` back on the server's clock.)
    let ago = |seconds: f64| {
        with_server(&url, |c| {
            c.execute(
                "UPDATE quota_buckets SET
                     last_increase = extract(epoch FROM clock_timestamp())::float8 - $2::float8,
                     last_decrease = extract(epoch FROM clock_timestamp())::float8 - $2::float8
                 WHERE api = $1",
                &[&API, &seconds],
            )
            .unwrap()
        })
    };
    assert_eq!(
        store.grant(API, BATCH).unwrap().rate,
        14.0,
        "within the second"
    );
    ago(3.5);
    assert_eq!(store.grant(API, BATCH).unwrap().rate, 17.0);
    assert_eq!(
        store.grant(API, BATCH).unwrap().rate,
        17.0,
        "the half second left counts towards the next increase"
    );
    ago(60.0);
    assert_eq!(
        store.grant(API, BATCH).unwrap().rate,
        20.0,
        "capped at the quota"
    );
    // Never below the floor (0.5/s).
    for _ in 0..20 {
        ago(1.0);
        assert!(store.throttled(API).unwrap().decreased);
    }
    assert_eq!(column::<f64>(&url, API, "rate"), 0.5);

    // Another station with the same quota keeps the row's state; a new quota restarts it.
    assert_eq!(
        other.seed(API, 20.0).unwrap().previous,
        Some((20.0, "st-a".to_string()))
    );
    assert_eq!(column::<f64>(&url, API, "rate"), 0.5);
    other.seed(API, 30.0).unwrap();
    assert_eq!(column::<f64>(&url, API, "rate"), 30.0);
    assert_eq!(column::<String>(&url, API, "set_by"), "st-b");
}

#[test]
fn a_station_that_took_no_tokens_for_a_second_no_longer_divides_the_batch() {
    let Some((_s, url)) = ledger() else { return };
    let mut stations: Vec<QuotaStore> = ["st-a", "st-b", "st-c"]
        .iter()
        .map(|id| QuotaStore::connect(&url, id).unwrap())
        .collect();
    stations[0].seed(API, 60.0).unwrap();
    // 100 ms at 60/s is 6 tokens, divided among the stations taking them.
    let mut share = |i: usize| {
        let g = stations[i].grant(API, BATCH).unwrap();
        (g.tokens, g.stations)
    };
    assert_eq!([share(0), share(1), share(2)], [(6, 1), (3, 2), (2, 3)]);
    assert_eq!(share(0), (2, 3));
    // st-c dies (SIGKILL: nothing tells the database). Its row stays, its time stops; a
    // second after its last grant it no longer counts, and the two others share the batch.
    with_server(&url, |c| {
        c.execute(
            "UPDATE quota_takers SET at = at - 1 WHERE api = $1 AND station = 'st-c'",
            &[&API],
        )
        .unwrap()
    });
    assert_eq!([share(0), share(1)], [(3, 2), (3, 2)]);
    let rows: i64 = with_server(&url, |c| {
        c.query_one("SELECT count(*) FROM quota_takers WHERE api = $1", &[&API])
            .unwrap()
            .get(0)
    });
    assert_eq!(rows, 3, "the dead station's row stays");
    // Started again, it counts again.
    assert_eq!(share(2), (2, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stations_on_one_database_share_one_rate() {
    let Some((_s, url)) = ledger() else { return };
    let rate = 40.0;
    let a = RateLimiter::shared(
        start(&url, "st-a", &[(API, rate)])
            .await
            .unwrap()
            .bucket(API, rate),
    );
    let b = RateLimiter::shared(
        start(&url, "st-b", &[(API, rate)])
            .await
            .unwrap()
            .bucket(API, rate),
    );
    let (a, b) = (Arc::new(a), Arc::new(b));
    let per_station = 30;
    let t0 = Instant::now();
    let mut calls = JoinSet::new();
    for limiter in [a.clone(), b.clone()] {
        // Eight sessions a station, as a line has.
        for _ in 0..8 {
            let limiter = limiter.clone();
            calls.spawn(async move {
                for _ in 0..per_station / 6 {
                    limiter.acquire().await;
                }
            });
        }
    }
    calls.join_all().await;
    let elapsed = t0.elapsed();
    let total = 2 * 8 * (per_station / 6);
    // Together at 40/s: the first batch (4 tokens) at once, the others one every 25 ms.
    // Each station alone at 40/s would take half as long.
    let least = Duration::from_secs_f64((total - 4) as f64 / rate);
    assert!(
        elapsed >= least.mul_f64(0.95),
        "{total} tokens in {elapsed:?}, less than {least:?}"
    );
    // Both stations took tokens from the one row, in ~100 ms batches.
    let tokens: i64 = column(&url, API, "tokens");
    let grants: i64 = column(&url, API, "grants");
    assert!(tokens >= total as i64, "{tokens}");
    assert!(grants * 4 >= tokens && grants < tokens, "{grants} {tokens}");
    assert_eq!(a.rate(), Some(rate));
    assert_eq!(b.rate(), Some(rate));
}

#[tokio::test]
async fn a_throttle_at_one_station_lowers_the_rate_of_the_other() {
    let Some((_s, url)) = ledger() else { return };
    let a = start(&url, "st-a", &[(API, 20.0)])
        .await
        .unwrap()
        .bucket(API, 20.0);
    let b = start(&url, "st-b", &[(API, 20.0)])
        .await
        .unwrap()
        .bucket(API, 20.0);
    b.acquire().await;
    assert_eq!(b.rate(), 20.0);
    let t = a.report_throttle().await.unwrap();
    assert_eq!((t.rate, t.decreased), (14.0, true));
    // b's next grant brings the shared rate.
    for _ in 0..3 {
        b.acquire().await;
    }
    assert_eq!(b.rate(), 14.0);
    // b's own throttle within the second is the same signal: no second cut.
    let t = b.report_throttle().await.unwrap();
    assert_eq!((t.rate, t.decreased), (14.0, false));
    // And the engine's report, not waited for, reaches the row too (before a's next one,
    // which waits: one connection, in order).
    let a = RateLimiter::shared(a);
    a.on_throttle();
    let reported = a.shared_bucket().unwrap().report_throttle().await.unwrap();
    assert_eq!((reported.rate, reported.decreased), (14.0, false));
    assert_eq!(column::<i64>(&url, API, "throttles"), 4);
}

/// A TCP forwarder to the test server, that the test takes down and brings back.
struct Forwarder {
    port: u16,
    target: (String, u16),
    tasks: JoinSet<()>,
}

impl Forwarder {
    async fn start(target: (String, u16)) -> Forwarder {
        let mut f = Forwarder {
            port: 0,
            target,
            tasks: JoinSet::new(),
        };
        f.up().await;
        f
    }

    async fn up(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.port = listener.local_addr().unwrap().port();
        let target = self.target.clone();
        self.tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (mut inbound, _) = listener.accept().await.unwrap();
                let target = target.clone();
                conns.spawn(async move {
                    let mut out = TcpStream::connect((target.0.as_str(), target.1))
                        .await
                        .unwrap();
                    let _ = copy_bidirectional(&mut inbound, &mut out).await;
                });
            }
        });
    }

    /// Closes the listener and every connection through it.
    async fn down(&mut self) {
        self.tasks.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_database_calls_wait_and_say_so_then_continue() {
    let Some((_s, url)) = ledger() else { return };
    // The server on TCP (scripts/postgres.sh listens on 127.0.0.1 too), through a forwarder.
    let config: postgres::Config = url.parse().unwrap();
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let mut fwd = Forwarder::start((host, port)).await;
    let options = url.split_once("options=").unwrap().1;
    let through = format!(
        "postgres://{}@127.0.0.1:{}/{}?sslmode=disable&options={options}",
        config.get_user().unwrap_or("postgres"),
        fwd.port,
        config.get_dbname().unwrap_or("postgres"),
    );
    let limiter = Arc::new(RateLimiter::shared(
        start(&through, "st-a", &[(API, 50.0)])
            .await
            .unwrap()
            .bucket(API, 50.0),
    ));
    limiter.acquire().await;
    let bucket = limiter.shared_bucket().unwrap();
    let mut outage = bucket.outage();
    assert!(outage.borrow().is_none());

    fwd.down().await;
    // More tokens than one grant holds: the calls need the database.
    let calls = {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                limiter.acquire().await;
            }
        })
    };
    let said = tokio::time::timeout(Duration::from_secs(60), outage.wait_for(Option::is_some))
        .await
        .expect("the outage is reported")
        .unwrap()
        .clone()
        .unwrap();
    assert!(said.contains("127.0.0.1"), "{said}");
    assert!(!calls.is_finished(), "no token, no call");

    fwd.up().await;
    tokio::time::timeout(Duration::from_secs(60), calls)
        .await
        .expect("the calls continue once the database answers")
        .unwrap();
    assert!(outage.borrow_and_update().is_none());
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_at_start_is_a_clear_error() {
    // A port nothing listens on (bound, then let go).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://station:s3cret@127.0.0.1:{port}/fleet?sslmode=disable");
    let err = start(&url, "st-a", &[(API, 10.0)]).await.unwrap_err();
    let LedgerError::Postgres { ledger, reason } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        ledger,
        &format!("postgres://station:***@127.0.0.1:{port}/fleet?sslmode=disable")
    );
    assert!(!reason.contains("s3cret") && !reason.is_empty(), "{reason}");
    let shown = format!("{:?}", miette::Report::new(err));
    assert!(shown.contains("station::ledger::postgres"), "{shown}");
}
