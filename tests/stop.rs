//! Stopping the station is not failing its devices. Ctrl-C (SIGINT) or SIGTERM interrupts
//! the devices in flight: they keep their ledger state (no certificate is orphaned) and
//! resume on the next run; the exit code is 130. A load test's synthetic devices never
//! resume: they are counted as interrupted, not failed. A ledger that refuses a write ends
//! the run with that error (exit 2) instead of silently stopping a jig and hanging.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fixtures;
use fleet_station::emulator::registry::Registry;
use fleet_station::ledger::{DeviceState, Ledger};

fn station() -> Command {
    Command::new(env!("CARGO_BIN_EXE_station"))
}

/// A station with the embedded emulator, RegisterThing paced to `register_tps` per second.
fn config(dir: &Path, register_tps: u32) -> PathBuf {
    let path = dir.join("station.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[station]
id = "stop"
ledger = "{d}/ledger.db"
report_dir = "{d}/reports"
[provision]
sessions = 16
register_thing_tps = {register_tps}
[parameters]
ThingName = "{{serial}}"
SerialNumber = "{{serial}}"
DeviceLocation = "Seattle"
[jigs]
count = 16
baud = 0
stamp_serials = false
flash_dir = "{d}/boards"
[emulator]
state_dir = "{d}/emulator"
templates = "{t}"
"#,
            d = dir.display(),
            t = fixtures().join("templates").display()
        ),
    )
    .unwrap();
    path
}

/// Counts rows matching `sql` in a SQLite file, read-only (the station may be writing).
fn count(db: &Path, sql: &str) -> usize {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .ok()
        .and_then(|c| c.query_row(sql, [], |r| r.get::<_, i64>(0)).ok())
        .unwrap_or(0) as usize
}

/// Waits (bounded) until `ready` holds while `child` runs.
fn wait_for(child: &mut Child, what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the station ended before {what}"
        );
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to a child process we own.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// The child's exit within 60 s, with its output.
fn finish(child: Child) -> std::process::Output {
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("the station did not exit within 60 s of being stopped (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn ctrl_c_keeps_the_devices_in_flight_and_the_next_run_resumes_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2);
    let ledger = dir.path().join("ledger.db");
    let mut child = station()
        .args(["run", "--boards", "40", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Devices queue for RegisterThing behind the 2/s limit, holding their certificates.
    wait_for(&mut child, "devices waiting with certificates", || {
        count(
            &ledger,
            "SELECT count(*) FROM devices WHERE state = 'certificate_issued'",
        ) >= 8
    });
    signal(&child, libc::SIGINT);
    let out = finish(child);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(130), "{all}");
    assert!(all.contains("resume where they stopped"), "{all}");
    {
        let l = Ledger::open(&ledger, "check").unwrap();
        let devices = l.devices().unwrap();
        assert!(
            devices.iter().all(|d| d.state != DeviceState::Failed),
            "a stop is not a failure: {devices:?}"
        );
        assert!(
            l.orphans().unwrap().is_empty(),
            "{:?}",
            l.orphans().unwrap()
        );
        assert!(
            l.unfinished().unwrap().len() >= 8,
            "the devices in flight kept their state"
        );
    }

    // The next run finishes them with the certificates they hold.
    let out = station()
        .args(["run", "--boards", "40", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let l = Ledger::open(&ledger, "check").unwrap();
    assert_eq!(l.devices().unwrap().len(), 40);
    assert!(
        l.devices()
            .unwrap()
            .iter()
            .all(|d| d.state == DeviceState::Verified)
    );
    assert!(l.orphans().unwrap().is_empty());
    let registry = Registry::open(&dir.path().join("emulator/registry.db")).unwrap();
    assert_eq!(
        registry.read(|s| s.certificates.values().filter(|c| !c.claim).count()),
        40,
        "one certificate per board"
    );
}

#[test]
fn sigterm_stops_a_load_test_with_its_devices_interrupted_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2);
    let report = dir.path().join("lt");
    let ledger = report.join("ledger.db");
    let mut child = station()
        .args(["loadtest", "--devices", "60", "--config"])
        .arg(&cfg)
        .arg("--report-dir")
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&mut child, "devices waiting with certificates", || {
        count(
            &ledger,
            "SELECT count(*) FROM devices WHERE state = 'certificate_issued'",
        ) >= 8
    });
    signal(&child, libc::SIGTERM);
    let out = finish(child);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(130), "{all}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("summary.json")).unwrap()).unwrap();
    let d = &summary["devices"];
    let n = |k: &str| d[k].as_u64().unwrap();
    assert_eq!(n("failed"), 0, "{summary}");
    assert!(n("interrupted") >= 8, "{summary}");
    // Every device journaled is accounted for.
    assert_eq!(
        n("provisioned") + n("interrupted"),
        count(&ledger, "SELECT count(*) FROM devices") as u64,
        "{summary}"
    );
    // An interrupted device that held a certificate has it listed for cleanup.
    let view = fleet_station::ledger::view::LedgerView::open(&ledger).unwrap();
    let orphans = view.orphans().unwrap();
    let mut with_certificate = 0;
    for d in view.devices().unwrap() {
        if d.state != DeviceState::Interrupted {
            continue;
        }
        let events = view.events(d.id).unwrap();
        if events.iter().any(|e| e.0 == "certificate_issued") {
            with_certificate += 1;
            assert!(
                orphans
                    .iter()
                    .any(|o| o.serial == d.serial && o.certificate_id.is_some()),
                "{} was interrupted with a certificate that is not listed",
                d.serial
            );
        }
    }
    assert!(
        with_certificate >= 1,
        "no interrupted device held a certificate"
    );
}

/// Holds SQLite's write lock on `db` until released, as another writer would.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(db: &Path) -> WriteLock {
        let c = rusqlite::Connection::open(db).unwrap();
        c.execute_batch("BEGIN EXCLUSIVE").unwrap();
        WriteLock(c)
    }

    fn release(self) {
        self.0.execute_batch("ROLLBACK").unwrap();
    }
}

#[test]
fn a_ledger_that_refuses_writes_ends_the_run_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 5);
    let ledger = dir.path().join("ledger.db");
    let mut child = station()
        .args(["run", "--boards", "60", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&mut child, "the first verified board", || {
        count(
            &ledger,
            "SELECT count(*) FROM devices WHERE state = 'verified'",
        ) >= 1
    });
    let lock = WriteLock::take(&ledger);
    let out = finish(child);
    lock.release();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("station::ledger"),
        "the ledger's error is shown: {all}"
    );
}

#[test]
fn a_load_test_whose_ledger_refuses_a_device_stops_and_its_totals_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 5);
    let report = dir.path().join("lt");
    let ledger = report.join("ledger.db");
    let mut child = station()
        .args(["loadtest", "--devices", "200", "--config"])
        .arg(&cfg)
        .arg("--report-dir")
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&mut child, "the first provisioned device", || {
        count(
            &ledger,
            "SELECT count(*) FROM devices WHERE state = 'registered'",
        ) >= 1
    });
    let lock = WriteLock::take(&ledger);
    let out = finish(child);
    lock.release();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("station::ledger"), "{all}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("summary.json")).unwrap()).unwrap();
    let d = &summary["devices"];
    let n = |k: &str| d[k].as_u64().unwrap();
    let started = count(&ledger, "SELECT count(*) FROM devices") as u64;
    assert_eq!(
        n("provisioned") + n("failed") + n("interrupted"),
        started,
        "every device journaled is accounted for: {summary}"
    );
}
