//! The endpoint goes away while the line runs: three outages of up to 2 s, with connections
//! cut and new ones refused. Devices wait for the endpoint instead of spending their
//! attempts on it; every device ends provisioned, and the report counts the outages.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{OutageProxy, TestEmulator};
use fleet_station::config::Config;
use fleet_station::ledger::{DeviceState, Ledger};
use fleet_station::shutdown::Shutdown;
use fleet_station::station::{self, RunOptions};

const BOARDS: usize = 60;

fn config(dir: &Path, emu: &TestEmulator, port: u16) -> Config {
    let p = emu.emulator.paths();
    let text = format!(
        r#"
[station]
id = "outage"
ledger = "{d}/ledger.db"
report_dir = "{d}/reports"
[endpoint]
endpoint = "localhost"
port = {port}
claim_cert = "{cert}"
claim_key = "{key}"
root_ca = "{ca}"
[provision]
sessions = 8
request_timeout_s = 5
max_attempts = 3
[parameters]
ThingName = "{{serial}}"
SerialNumber = "{{serial}}"
DeviceLocation = "Seattle"
[jigs]
count = 4
boards = {BOARDS}
baud = 115200
flash_dir = "{d}/boards"
"#,
        d = dir.display(),
        cert = p.claim_cert.display(),
        key = p.claim_key.display(),
        ca = p.ca_cert.display(),
    );
    Config::parse(&text, Path::new("outage.toml")).unwrap()
}

/// Devices the ledger shows verified (read-only: the station is writing).
fn verified(ledger: &Path) -> usize {
    rusqlite::Connection::open_with_flags(ledger, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .ok()
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM devices WHERE state = 'verified'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .ok()
        })
        .unwrap_or(0) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_outages_of_up_to_two_seconds_fail_no_device() {
    let emu = TestEmulator::start().await;
    let proxy = OutageProxy::start(emu.port()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &emu, proxy.port);
    let ledger_path = cfg.station.ledger.clone();
    let run = tokio::spawn({
        let cfg = cfg.clone();
        let report_dir = dir.path().join("report");
        async move {
            station::run(
                &cfg,
                &RunOptions {
                    report_dir: Some(report_dir),
                    ..RunOptions::default()
                },
                Shutdown::new(),
            )
            .await
            .unwrap()
        }
    });
    // Each outage starts once the line has made some progress since the last one.
    for (after, away) in [(8, 500), (22, 1200), (38, 2000)] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while verified(&ledger_path) < after {
            assert!(Instant::now() < deadline, "the line stalled before {after}");
            assert!(!run.is_finished(), "the line finished before the outages");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(away)).await;
        proxy.restore();
    }
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the line finished")
        .unwrap();
    let s = &report.summary;
    assert_eq!(
        (s.devices.provisioned, s.devices.failed),
        (BOARDS as u64, 0),
        "{:?}",
        s.failures
    );
    assert_eq!(report.exit_code(), 0);
    assert!(
        s.endpoint.outages >= 3,
        "the outages were seen: {:?}",
        s.endpoint
    );
    let ledger = Ledger::open(&ledger_path, "check").unwrap();
    assert!(
        ledger
            .devices()
            .unwrap()
            .iter()
            .all(|d| d.state == DeviceState::Verified)
    );
    eprintln!(
        "outages: {} seen, {:.1} s unreachable; throttled {}, retries {}; orphans {}",
        s.endpoint.outages,
        s.endpoint.unreachable_s,
        s.throttled,
        s.retries,
        ledger.orphans().unwrap().len()
    );
}
