//! The PostgreSQL ledger through the real CLI: two stations with ids of their own run lines on
//! one shared ledger at the same time, a third with a running station's id is refused (naming
//! it) until that station is gone, even by SIGKILL, and `station ledger export` reads every
//! station's devices; a load test journals to the shared ledger too, and its cleanup plan takes
//! its own devices from there (`ledger.json` in its report folder).
//!
//! One serial, one station (serial leases): two stations whose lines place the same 300 serials
//! at the same moment, against one `station emulate`, provision each exactly once (one
//! certificate each), the other saying which station holds it; three stations, one killed
//! with SIGKILL mid-run: the other two finish their lines, the dead one's leases expire after
//! `station.lease_s`, its unfinished devices are listed with their states, and a station that
//! takes its boards over lists the certificates sealed at the dead one as its orphans.
//!
//! The shared quota (`provision.shared_quota`): three stations on one account quota, one
//! killed with SIGKILL mid-run: it drops out of the stations the others share the quota with
//! (`quota_takers`) a second after its last grant, and the other two finish their lines with no
//! failed device and next to no throttles.
//!
//! Needs the server `STATION_TEST_POSTGRES` names (`scripts/postgres.sh`
//! starts one); passes without running when none is named, fails then under
//! `STATION_REQUIRE_POSTGRES=1` (the library's `postgres_ledger_tests_need_station_test_postgres`
//! says on stderr that these tests did not run).

use std::path::{Path, PathBuf};
use std::process::Child;

use crate::common::StandaloneEmulator;
use crate::common::cli::{StationConfig, ledger, station, succeeded, wait_for};

/// A schema of the test's own on the test server, dropped when the test ends.
struct Schema {
    base: String,
    name: String,
    url: String,
    /// The password in `url`: the server's, or one added that a trust-authenticated test
    /// server ignores. No message may show it.
    password: String,
}

impl Schema {
    fn new() -> Option<Schema> {
        let base = match std::env::var("STATION_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                assert!(
                    std::env::var("STATION_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "STATION_REQUIRE_POSTGRES=1 but STATION_TEST_POSTGRES names no server"
                );
                return None;
            }
        };
        let name = format!(
            "ledger_cli_{}_{:08x}",
            std::process::id(),
            fastrand::u32(..)
        );
        client(&base)
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let mut url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
        let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
        let password = match authority.rsplit_once('@') {
            Some((userinfo, _)) => match userinfo.split_once(':') {
                Some((_, password)) => password.to_string(),
                None => {
                    url = format!("{scheme}://{}", rest.replacen('@', ":s3cret-pw@", 1));
                    "s3cret-pw".to_string()
                }
            },
            None => String::new(),
        };
        Some(Schema {
            base,
            name,
            url,
            password,
        })
    }

    fn count(&self, sql: &str) -> i64 {
        self.value(sql).unwrap_or(0)
    }

    /// The first column of the first row `sql` returns (`None`: no row, or an error, e.g.
    /// while the tables do not exist yet).
    fn value<T: postgres::types::FromSqlOwned>(&self, sql: &str) -> Option<T> {
        client(&self.url)
            .query_opt(sql, &[])
            .ok()
            .flatten()
            .and_then(|r| r.try_get(0).ok())
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = client(&self.base).batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name));
    }
}

fn client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap()
}

/// A station configuration in `dir` on the shared ledger: its id, its own boards (serials
/// `<prefix>-…`), its own embedded emulator.
fn write_config(dir: &Path, schema: &Schema, id: &str, prefix: &str) -> PathBuf {
    on_shared_ledger(StationConfig::embedded(dir), dir, schema, id, prefix).write()
}

/// `config` as station `id` on the shared ledger, its key file in `dir`, its boards' serials
/// `<prefix>-…`.
fn on_shared_ledger(
    config: StationConfig,
    dir: &Path,
    schema: &Schema,
    id: &str,
    prefix: &str,
) -> StationConfig {
    config
        .set_str("station.id", id)
        .set_str("station.ledger", &schema.url)
        .set_str(
            "station.ledger_key",
            dir.join(format!("{id}.key")).display().to_string(),
        )
        .set_str("jigs.serial_prefix", prefix)
}

/// A running station, killed if the test ends first.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawn_run(dir: &Path, config: &Path, args: &[&str]) -> Running {
    Running(
        station()
            .args(["run", "--config"])
            .arg(config)
            .arg("--report-dir")
            .arg(dir.join("report"))
            .args(args)
            .stdout(std::fs::File::create(dir.join("run.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("run.err")).unwrap())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn stations_share_a_postgres_ledger_and_only_a_taken_station_id_is_refused() {
    let Some(schema) = Schema::new() else { return };
    let (dir_a, dir_b, dir_c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let config_a = write_config(dir_a.path(), &schema, "line-a", "A");
    let config_b = write_config(dir_b.path(), &schema, "line-b", "B");
    // A works slowly (a low line rate), so it is still working when the others start.
    let mut a = spawn_run(
        dir_a.path(),
        &config_a,
        &["--boards", "2000", "--baud", "9600"],
    );
    let holder = format!("station line-a, pid {}, host ", a.0.id());
    wait_for(&mut a.0, "station line-a's first device", || {
        schema.count("SELECT count(*) FROM devices WHERE station = 'line-a'") > 0
    });

    // Station B, another id: it runs its whole line beside A.
    let out = station()
        .args(["run", "--boards", "40", "--config"])
        .arg(&config_b)
        .arg("--report-dir")
        .arg(dir_b.path().join("report"))
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert!(
        stdout.contains("devices: 40 provisioned, 0 failed, of 40"),
        "{stdout}"
    );

    // A third station with A's id is refused, naming A.
    let config_c = write_config(dir_c.path(), &schema, "line-a", "C");
    let refused = station()
        .args(["run", "--boards", "3", "--config"])
        .arg(&config_c)
        .arg("--report-dir")
        .arg(dir_c.path().join("report"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    let words = stderr
        .split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        words.contains("station::ledger::station_in_use"),
        "{stderr}"
    );
    assert!(words.contains(&holder), "names the holder: {stderr}");
    if !schema.password.is_empty() {
        assert!(!stderr.contains(&schema.password), "{stderr}");
    }
    assert!(a.0.try_wait().unwrap().is_none(), "station line-a went on");

    // Any station's `ledger export` reads every station's devices.
    let out = ledger(&config_b, &["export", "--format", "csv"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    assert_eq!(csv.matches(",line-b,").count(), 40, "{csv}");
    assert!(csv.contains(",line-a,"), "{csv}");

    // SIGKILL: the server drops A's lock with its connection; A's id starts again.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let out = station()
        .args(["run", "--boards", "4", "--baud", "0", "--config"])
        .arg(&config_a)
        .arg("--report-dir")
        .arg(dir_a.path().join("report-again"))
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert!(
        stdout.contains("devices: 4 provisioned, 0 failed, of 4"),
        "{stdout}"
    );
}

#[test]
fn a_load_test_journals_to_the_shared_ledger_and_its_cleanup_plan_takes_only_its_devices() {
    let Some(schema) = Schema::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &schema, "lt-station", "X");
    // A line's boards are in the ledger too; they are not the load test's.
    let out = station()
        .args(["run", "--boards", "3", "--config"])
        .arg(&config)
        .arg("--report-dir")
        .arg(dir.path().join("report-run"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loadtest = |report: &Path, devices: &str| {
        let out = station()
            .args(["loadtest", "--headless", "--devices", devices, "--config"])
            .arg(&config)
            .arg("--report-dir")
            .arg(report)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let first = dir.path().join("lt-1");
    loadtest(&first, "12");
    loadtest(&dir.path().join("lt-2"), "5");
    assert_eq!(
        // A synthetic device ends at `registered` (it has no board to write).
        schema.count(
            "SELECT count(*) FROM devices WHERE serial LIKE 'LT-%' AND state = 'registered'"
        ),
        17,
        "both load tests journaled to the shared ledger"
    );
    assert!(!first.join("ledger.db").exists(), "no ledger of its own");
    let pointer = std::fs::read_to_string(first.join("ledger.json")).unwrap();
    assert!(pointer.contains("\"serials\": \"LT-"), "{pointer}");
    if !schema.password.is_empty() {
        assert!(!pointer.contains(&schema.password), "{pointer}");
    }

    let plan = |config: &Path| {
        station()
            .args(["loadtest", "--cleanup-plan"])
            .arg(&first)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap()
    };
    let out = plan(&config);
    let stdout = succeeded(&out);
    assert!(
        stdout.contains("12 certificate(s), 12 thing(s) to delete, 0 thing(s) kept"),
        "only the first load test's devices: {stdout}"
    );

    // A configuration naming another ledger is refused with the fix.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let other_config = StationConfig::embedded(&other)
        .set_str(
            "station.ledger",
            format!("{}&application_name=other", schema.url),
        )
        .write();
    let out = plan(&other_config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("station::loadtest::other_ledger"),
        "{stderr}"
    );
}

/// A station configuration in `dir` on the shared ledger with `emu` as its endpoint: its id,
/// virtual boards `<prefix>-<n>` (the same serials in every run: `jigs.stamp_serials = false`),
/// unpaced jigs.
fn shared_config(
    dir: &Path,
    schema: &Schema,
    emu: &StandaloneEmulator,
    id: &str,
    prefix: &str,
) -> StationConfig {
    on_shared_ledger(StationConfig::endpoint(dir, emu), dir, schema, id, prefix)
        .set("jigs.stamp_serials", "false")
        .set("jigs.count", "4")
        .set("jigs.baud", "0")
        .set("provision.sessions", "8")
}

/// `(provisioned, failed, of)` from a run's summary line.
fn devices_line(stdout: &str) -> (u64, u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("devices: "))
        .unwrap_or_else(|| panic!("no summary line: {stdout}"));
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    (n[0], n[1], n[n.len() - 1])
}

#[test]
fn boards_placed_at_two_stations_at_once_are_provisioned_once_and_the_other_names_the_holder() {
    let Some(schema) = Schema::new() else { return };
    let emu_dir = tempfile::tempdir().unwrap();
    let emu = StandaloneEmulator::start(emu_dir.path(), "");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config_a = shared_config(dir_a.path(), &schema, &emu, "line-a", "DUP").write();
    let config_b = shared_config(dir_b.path(), &schema, &emu, "line-b", "DUP").write();
    const BOARDS: &str = "300";
    let mut a = spawn_run(dir_a.path(), &config_a, &["--boards", BOARDS, "--headless"]);
    // B starts once A works on its first board, so the two lines meet on the same serials.
    wait_for(&mut a.0, "station line-a's first device", || {
        schema.count("SELECT count(*) FROM devices") > 0
    });
    let mut b = spawn_run(dir_b.path(), &config_b, &["--boards", BOARDS, "--headless"]);
    let (status_a, status_b) = (a.0.wait().unwrap(), b.0.wait().unwrap());
    let read = |dir: &Path, f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let (out_a, err_a) = (read(dir_a.path(), "run.out"), read(dir_a.path(), "run.err"));
    let (out_b, err_b) = (read(dir_b.path(), "run.out"), read(dir_b.path(), "run.err"));
    let ((ok_a, failed_a, of_a), (ok_b, failed_b, of_b)) =
        (devices_line(&out_a), devices_line(&out_b));
    let all = format!("A: {status_a}\n{out_a}\n{err_a}\nB: {status_b}\n{out_b}\n{err_b}");
    // B's line leaves out the boards the ledger already showed verified when it started.
    assert!(of_a == 300 && of_b <= 300, "{all}");
    // Each board provisioned by one station; the other refused it (held, or already verified).
    assert_eq!(ok_a + ok_b, 300, "{all}");
    assert_eq!(failed_a + failed_b, of_a + of_b - 300, "{all}");
    // Exit 1: some boards "failed" here (they are the other station's).
    assert_eq!(
        (status_a.code(), status_b.code()),
        (Some(1), Some(1)),
        "{all}"
    );
    let held = err_a.matches("is held by station line-b").count()
        + err_b.matches("is held by station line-a").count();
    assert!(held > 0, "no board was refused as held: {all}");
    assert_eq!(
        schema.count("SELECT count(*) FROM devices WHERE state = 'verified' AND attempts = 1"),
        300,
        "every serial verified once, at one station: {all}"
    );
    assert_eq!(schema.count("SELECT count(*) FROM devices"), 300);
    assert_eq!(schema.count("SELECT count(*) FROM orphans"), 0);
    assert_eq!(schema.count("SELECT count(*) FROM leases"), 0, "all let go");
    assert_eq!(
        schema.count("SELECT count(*) FROM devices WHERE station = 'line-a'") as u64,
        ok_a
    );
    // No second certificate for any board: the emulator issued 300.
    emu.stop();
    assert_eq!(
        crate::common::issued_certificates_in(&emu_dir.path().join("emulator")),
        300
    );
}

#[test]
fn a_killed_station_s_leases_expire_its_unfinished_devices_are_listed_and_others_go_on() {
    let Some(schema) = Schema::new() else { return };
    let emu_dir = tempfile::tempdir().unwrap();
    let emu = StandaloneEmulator::start(emu_dir.path(), "");
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let config = |i: usize, id: &str, prefix: &str, extra: &[(&str, &str)]| {
        let mut c =
            shared_config(dirs[i].path(), &schema, &emu, id, prefix).set("station.lease_s", "2");
        for (k, v) in extra {
            c = c.set(k, v);
        }
        c.write()
    };
    let config_a = config(0, "line-a", "KA", &[]);
    let config_b = config(1, "line-b", "KB", &[]);
    // C works slowly (9600 baud), so devices are in flight, keys sealed, when it is killed.
    let config_c = config(2, "line-c", "KC", &[("jigs.baud", "9600")]);
    let mut a = spawn_run(
        dirs[0].path(),
        &config_a,
        &["--boards", "120", "--headless"],
    );
    let mut b = spawn_run(
        dirs[1].path(),
        &config_b,
        &["--boards", "120", "--headless"],
    );
    let mut c = spawn_run(
        dirs[2].path(),
        &config_c,
        &["--boards", "400", "--headless"],
    );
    let in_flight_c = "SELECT count(*) FROM devices WHERE station = 'line-c' AND state IN ('key_reserved', 'certificate_issued', 'registered', 'written')";
    wait_for(&mut c.0, "station line-c's devices in flight", || {
        schema.count(in_flight_c) >= 2
            && schema.count("SELECT count(*) FROM leases WHERE station = 'line-c'") >= 2
    });
    let verified = |id: &str| {
        schema.count(&format!(
            "SELECT count(*) FROM devices WHERE station = '{id}' AND state = 'verified'"
        ))
    };
    c.0.kill().unwrap();
    c.0.wait().unwrap();
    let at_kill = (verified("line-a"), verified("line-b"));
    let live_c = "SELECT count(*) FROM leases WHERE station = 'line-c' AND expires_at > now()";
    let unfinished_c = schema.count(
        "SELECT count(*) FROM devices WHERE station = 'line-c' AND state NOT IN ('verified', 'failed', 'interrupted')",
    );
    assert!(unfinished_c >= 2, "{unfinished_c}");

    // The other two go on to the end of their lines.
    for (run, dir, id) in [(&mut a, &dirs[0], "line-a"), (&mut b, &dirs[1], "line-b")] {
        let status = run.0.wait().unwrap();
        let out = std::fs::read_to_string(dir.path().join("run.out")).unwrap();
        let err = std::fs::read_to_string(dir.path().join("run.err")).unwrap();
        assert!(status.success(), "{id}: {out}\n{err}");
        assert_eq!(devices_line(&out), (120, 0, 120), "{id}: {out}");
        // The end of the run counts the dead station's unfinished devices as its own.
        assert!(
            err.contains(&format!(
                "unfinished devices of the other stations on the shared ledger: station line-c: {unfinished_c}"
            )),
            "{id}: {err}"
        );
    }
    assert!(
        at_kill.0 < 120 && at_kill.1 < 120,
        "{at_kill:?}: they were still working"
    );

    // C's leases expire (it renews no more): wait for the server to see them run out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while schema.count(live_c) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "line-c's leases never expired"
        );
        std::thread::yield_now();
    }
    assert!(schema.count("SELECT count(*) FROM leases WHERE station = 'line-c'") >= 2);

    // `ledger export --station line-c` lists its devices with their states.
    let out = ledger(
        &config_a,
        &["export", "--format", "csv", "--station", "line-c"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert!(rows.iter().all(|r| r.contains(",line-c,")), "{csv}");
    let unfinished_rows = rows
        .iter()
        .filter(|r| {
            [
                "key_reserved",
                "certificate_issued",
                "registered",
                "written",
            ]
            .iter()
            .any(|s| r.contains(&format!(",{s},")))
        })
        .count();
    assert_eq!(unfinished_rows as i64, schema.count(in_flight_c), "{csv}");

    // Station D takes C's boards over (same serials): each resumes, but a key sealed under C's
    // key file does not open at D; those certificates are C's orphans, listed with it.
    let sealed_at_c = schema.count(
        "SELECT count(*) FROM devices WHERE station = 'line-c' AND certificate_id IS NOT NULL AND state IN ('certificate_issued', 'registered', 'written')",
    );
    let last_c: i64 = schema.count(
        "SELECT max(substring(serial from 4)::bigint) FROM devices WHERE station = 'line-c'",
    );
    let config_d = config(3, "line-d", "KC", &[]);
    let out = station()
        .args([
            "run",
            "--headless",
            "--boards",
            &last_c.to_string(),
            "--config",
        ])
        .arg(&config_d)
        .arg("--report-dir")
        .arg(dirs[3].path().join("report"))
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert_eq!(devices_line(&stdout).1, 0, "{stdout}");
    assert_eq!(
        schema
            .count("SELECT count(*) FROM devices WHERE serial LIKE 'KC-%' AND state <> 'verified'"),
        0
    );
    let out = ledger(&config_d, &["orphans", "--station", "line-c"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8(out.stdout).unwrap();
    let listed = script.matches("(station line-c)").count() as i64;
    assert_eq!(
        listed,
        schema.count("SELECT count(*) FROM orphans WHERE station = 'line-c'"),
        "{script}"
    );
    assert!(listed >= sealed_at_c.max(1), "{sealed_at_c}: {script}");
    assert!(!script.contains("(station line-d)"), "{script}");
    emu.stop();
}

/// The throttled calls from a run's summary (`elapsed: … retries: N, throttled: N`).
fn throttled_line(stdout: &str) -> u64 {
    stdout
        .lines()
        .find(|l| l.starts_with("elapsed: "))
        .and_then(|l| l.split_once("throttled: "))
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no throttled count: {stdout}"))
}

#[test]
fn a_killed_station_drops_out_of_the_shared_quota_and_the_other_two_finish_under_it() {
    let Some(schema) = Schema::new() else { return };
    let emu_dir = tempfile::tempdir().unwrap();
    // The account: RegisterThing 20/s, CreateCertificateFromCsr 30/s (burst: a second's worth).
    let emu = StandaloneEmulator::start(
        emu_dir.path(),
        "quotas = { register_thing = 20, create_certificate_from_csr = 30 }",
    );
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ids = ["line-a", "line-b", "line-c"];
    let configs: Vec<_> = (0..3)
        .map(|i| {
            shared_config(dirs[i].path(), &schema, &emu, ids[i], &format!("SQ{i}"))
                .set("provision.shared_quota", "true")
                .set("provision.register_thing_tps", "20")
                .set("provision.create_certificate_tps", "30")
                .write()
        })
        .collect();
    const BOARDS: u64 = 60;
    let boards = BOARDS.to_string();
    let mut a = spawn_run(
        dirs[0].path(),
        &configs[0],
        &["--boards", &boards, "--headless"],
    );
    let mut b = spawn_run(
        dirs[1].path(),
        &configs[1],
        &["--boards", &boards, "--headless"],
    );
    // C has more boards than it will live for.
    let mut c = spawn_run(
        dirs[2].path(),
        &configs[2],
        &["--boards", "400", "--headless"],
    );

    // Who the next grant divides the batch among: the stations that took register_thing's
    // tokens in the last second (the grant statement's own test, on the server's clock).
    let takers = || {
        schema
            .value::<String>(
                "SELECT coalesce(string_agg(station, ',' ORDER BY station), '') FROM quota_takers
                 WHERE api = 'register_thing' AND at > extract(epoch FROM clock_timestamp()) - 1",
            )
            .unwrap_or_default()
    };
    // C is killed once it takes its share: it has taken tokens, and devices are registered.
    wait_for(&mut c.0, "station line-c taking the shared tokens", || {
        takers().contains("line-c")
            && schema.count(
                "SELECT count(*) FROM devices WHERE station = 'line-c' AND state IN ('registered', 'written', 'verified')",
            ) >= 3
    });
    c.0.kill().unwrap();
    c.0.wait().unwrap();
    let killed_at: f64 = schema
        .value("SELECT extract(epoch FROM clock_timestamp())::float8")
        .unwrap();
    let c_at = "SELECT at FROM quota_takers WHERE api = 'register_thing' AND station = 'line-c'";
    let c_last: f64 = schema.value(c_at).unwrap();
    assert!(c_last < killed_at, "{c_last} {killed_at}");

    // A second after its last grant, C no longer counts: A and B share the rate two ways,
    // while they still provision.
    wait_for(&mut a.0, "line-c to drop out of the takers", || {
        takers() == "line-a,line-b"
    });
    assert!(b.0.try_wait().unwrap().is_none(), "line-b still provisions");

    // The other two finish their lines: no failed device, next to no throttles.
    let mut throttled = 0;
    let mut calls = 0;
    for (run, dir, id) in [(&mut a, &dirs[0], "line-a"), (&mut b, &dirs[1], "line-b")] {
        let status = run.0.wait().unwrap();
        let out = std::fs::read_to_string(dir.path().join("run.out")).unwrap();
        let err = std::fs::read_to_string(dir.path().join("run.err")).unwrap();
        assert!(status.success(), "{id}: {out}\n{err}");
        assert_eq!(devices_line(&out), (BOARDS, 0, BOARDS), "{id}: {out}");
        // Each device called CreateCertificateFromCsr and RegisterThing at least once; a
        // throttled call was one more.
        let t = throttled_line(&out);
        throttled += t;
        calls += 2 * BOARDS + t;
    }
    assert!(
        throttled * 100 < calls,
        "{throttled} of {calls} calls throttled"
    );
    let reported: i64 = schema
        .value("SELECT sum(throttles)::bigint FROM quota_buckets")
        .unwrap();
    assert!(
        reported as u64 * 100 < calls,
        "{reported} throttles reported to the shared bucket"
    );
    // C's row stays where the kill left it: its time no longer moves.
    assert_eq!(schema.value::<f64>(c_at), Some(c_last));
    assert_eq!(
        schema.count("SELECT count(*) FROM devices WHERE station IN ('line-a', 'line-b') AND state <> 'verified'"),
        0
    );
    emu.stop();
}
