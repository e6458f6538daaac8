//! The endpoint goes away while the line runs: three outages of up to 2 s, with connections
//! cut and new ones refused. Devices wait for the endpoint instead of spending their
//! attempts on it; every device ends provisioned, and the report counts the outages.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::cli::{StationConfig, count};
use crate::common::{OutageProxy, TestEmulator};
use fleet_station::config::Config;
use fleet_station::ledger::{DeviceState, Ledger};
use fleet_station::shutdown::Shutdown;
use fleet_station::station::{self, RunOptions};

const BOARDS: usize = 60;

fn config(dir: &Path, emu: &TestEmulator, port: u16) -> Config {
    let p = emu.emulator.paths();
    let text = StationConfig::embedded(dir)
        .set_str("station.id", "outage")
        .set_str("endpoint.endpoint", "localhost")
        .set("endpoint.port", &port.to_string())
        .set_str("endpoint.claim_cert", p.claim_cert.display().to_string())
        .set_str("endpoint.claim_key", p.claim_key.display().to_string())
        .set_str("endpoint.root_ca", p.ca_cert.display().to_string())
        .set("provision.sessions", "8")
        .set("provision.request_timeout_s", "5")
        .set("provision.max_attempts", "3")
        .set("jigs.count", "4")
        .set("jigs.boards", &BOARDS.to_string())
        .set("jigs.baud", "115200")
        .text();
    Config::parse(&text, Path::new("outage.toml")).unwrap()
}

/// Devices the ledger shows verified (read-only: the station is writing).
fn verified(ledger: &Path) -> usize {
    count(
        ledger,
        "SELECT count(*) FROM devices WHERE state = 'verified'",
    )
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
