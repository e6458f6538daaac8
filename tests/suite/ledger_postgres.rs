//! The PostgreSQL ledger through the real CLI: two stations with ids of their own run lines on
//! one shared ledger at the same time, a third with a running station's id is refused (naming
//! it) until that station is gone, even by SIGKILL, and `station ledger export` reads every
//! station's devices; a load test journals to the shared ledger too, and its cleanup plan takes
//! its own devices from there (`ledger.json` in its report folder). Needs the server `STATION_TEST_POSTGRES` names (`scripts/postgres.sh`
//! starts one); passes without running when none is named, fails then under
//! `STATION_REQUIRE_POSTGRES=1` (the library's `postgres_ledger_tests_need_station_test_postgres`
//! says on stderr that these tests did not run).

use std::path::{Path, PathBuf};
use std::process::Child;

use crate::common::cli::{StationConfig, ledger, station, wait_for};

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
        client(&self.url)
            .query_opt(sql, &[])
            .ok()
            .flatten()
            .map_or(0, |r| r.get(0))
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
    StationConfig::embedded(dir)
        .set_str("station.id", id)
        .set_str("station.ledger", &schema.url)
        .set_str(
            "station.ledger_key",
            dir.join(format!("{id}.key")).display().to_string(),
        )
        .set_str("jigs.serial_prefix", prefix)
        .write()
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
