//! Stopping the station is not failing its devices. Ctrl-C (SIGINT) or SIGTERM interrupts
//! the devices in flight: they keep their ledger state (no certificate is orphaned) and
//! resume on the next run; the exit code is 130. A load test's synthetic devices never
//! resume: they are counted as interrupted, not failed. A ledger that refuses a write ends
//! the run with that error (exit 2) instead of silently stopping a jig and hanging.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::cli::{StationConfig, count, station, wait_for};
use fleet_station::ledger::{DeviceState, Ledger};

/// A station with the embedded emulator, RegisterThing paced to `register_tps` per second.
fn config(dir: &Path, register_tps: u32) -> PathBuf {
    StationConfig::embedded(dir)
        .set_str("station.id", "stop")
        .set("provision.sessions", "16")
        .set("provision.register_thing_tps", &register_tps.to_string())
        .set("jigs.count", "16")
        .set("jigs.stamp_serials", "false")
        .write()
}

/// `station ARGS --config CFG` with its output captured.
fn spawn(args: &[&str], cfg: &Path) -> Child {
    station()
        .args(args)
        .arg("--config")
        .arg(cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A load test of `devices` with its report (and ledger) in `report`.
fn spawn_loadtest(devices: usize, cfg: &Path, report: &Path) -> Child {
    let n = devices.to_string();
    let r = report.display().to_string();
    spawn(&["loadtest", "--devices", &n, "--report-dir", &r], cfg)
}

/// A load test's device counts from its summary.json.
fn devices(report: &Path) -> (u64, u64, u64) {
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("summary.json")).unwrap()).unwrap();
    let n = |k: &str| summary["devices"][k].as_u64().unwrap();
    (n("provisioned"), n("failed"), n("interrupted"))
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
    let mut child = spawn(&["run", "--boards", "40"], &cfg);
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
    assert_eq!(
        crate::common::issued_certificates_in(&dir.path().join("emulator")),
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
    let mut child = spawn_loadtest(60, &cfg, &report);
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
    let (provisioned, failed, interrupted) = devices(&report);
    assert_eq!(failed, 0);
    assert!(interrupted >= 8, "{interrupted} interrupted");
    // Every device journaled is accounted for.
    assert_eq!(
        provisioned + interrupted,
        count(&ledger, "SELECT count(*) FROM devices") as u64
    );
    // An interrupted device that held a certificate has it listed for cleanup.
    let view = fleet_station::ledger::LedgerView::open(&ledger).unwrap();
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
    let mut child = spawn(&["run", "--boards", "60"], &cfg);
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
    let mut child = spawn_loadtest(200, &cfg, &report);
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
    let (provisioned, failed, interrupted) = devices(&report);
    let started = count(&ledger, "SELECT count(*) FROM devices") as u64;
    assert_eq!(
        provisioned + failed + interrupted,
        started,
        "every device journaled is accounted for"
    );
}
