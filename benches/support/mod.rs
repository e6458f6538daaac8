//! Shared by the `end_to_end` and `ceiling` benches: one `station loadtest` run in this
//! process, as the CLI does it — the embedded emulator on a free port (real TCP, real TLS),
//! the key pool, the session pool and the ledger — with every file (emulator state, ledger,
//! report folder) in a fresh temporary directory, so each run starts from an empty registry.

// Each bench that includes this module uses a part of it.
#![allow(dead_code)]

/// The `station` binary's allocator, so that the benches measure what ships.
#[global_allocator]
static ALLOCATOR: fleet_station::allocator::Allocator = fleet_station::allocator::Allocator;

use std::path::Path;
use std::time::{Duration, Instant};

use fleet_station::config::Config;
use fleet_station::shutdown::Shutdown;
use fleet_station::station::loadtest::{self, LoadtestOptions};
use fleet_station::telemetry::summary::Summary;

/// What one load test gave.
pub struct LoadtestRun {
    /// The run's summary.json, as `station loadtest` writes it.
    pub summary: Summary,
    /// Wall time of the whole call: emulator start, key pool, sessions, devices, report.
    pub wall: Duration,
}

/// The configuration of `station.toml` with every path in `dir` and the given session count.
pub fn config(dir: &Path, sessions: usize) -> Config {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = format!(
        r#"
[station]
id = "bench"
ledger = '{dir}/state/ledger.db'
report_dir = '{dir}/reports'

[provision]
template_name = "FleetTemplate"
sessions = {sessions}

[parameters]
ThingName = "{{serial}}"
SerialNumber = "{{serial}}"
DeviceLocation = "Seattle"

[emulator]
listen = "127.0.0.1:0"
state_dir = '{dir}/state/emulator'
templates = '{templates}'
"#,
        dir = dir.display(),
        templates = root.join("fixtures/templates").display(),
    );
    Config::parse(&text, &dir.join("station.toml")).expect("the bench configuration is valid")
}

/// Runs `station loadtest --devices N --sessions M` in this process on `rt`, from a fresh state.
/// Panics unless every device was provisioned: a figure of a failed run would mean nothing.
pub fn loadtest(rt: &tokio::runtime::Runtime, devices: usize, sessions: usize) -> LoadtestRun {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), sessions);
    let opts = LoadtestOptions {
        devices,
        sessions: Some(sessions),
        report_dir: Some(dir.path().join("report")),
        keep_emulator_state: false,
        progress: false,
        control: None,
    };
    let started = Instant::now();
    let report = rt
        .block_on(loadtest::loadtest(&cfg, &opts, Shutdown::new()))
        .unwrap_or_else(|e| panic!("loadtest failed: {e}"));
    let wall = started.elapsed();
    let d = &report.summary.devices;
    assert!(
        d.provisioned as usize == devices && d.failed == 0,
        "loadtest of {devices} devices provisioned {} and failed {}",
        d.provisioned,
        d.failed
    );
    LoadtestRun {
        summary: report.summary,
        wall,
    }
}

/// The runtime `station` builds (multi-threaded, one worker per core).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
