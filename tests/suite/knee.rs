//! `station loadtest`'s open-loop modes: `--find-knee` through the CLI against the embedded
//! emulator's quotas finds the quota's rate and names the API whose quota bit; an emulator
//! stall shows in the open loop's p99 (latency from the scheduled start); Ctrl-C during a
//! ramp exits 130 with the steps done in steps.csv and loadtest.json.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::TestEmulator;
use crate::common::cli::{StationConfig, count, station, succeeded, wait_for};
use fleet_station::config::Config;
use fleet_station::emulator::faults::FaultConfig;
use fleet_station::shutdown::Shutdown;
use fleet_station::station::loadtest::LoadtestOptions;
use fleet_station::station::open_loop::{self, OpenLoop, Plan};

/// The embedded emulator with these quotas (TOML values by API), all state in `dir`.
fn quota_config(dir: &Path, quotas: &[(&str, &str)]) -> std::path::PathBuf {
    let mut cfg = StationConfig::embedded(dir).set("provision.sessions", "8");
    for (api, q) in quotas {
        cfg = cfg.set(&format!("emulator.quotas.{api}"), q);
    }
    cfg.write()
}

/// `station loadtest --find-knee` with short steps (the quotas' burst is small, so a 3 s
/// step with a 1 s warm-up is honest); loadtest.json.
fn find_knee(dir: &Path, config: &Path) -> serde_json::Value {
    let report = dir.join("report");
    let out = station()
        .args(["loadtest", "--headless", "--find-knee", "--ramp", "4..64"])
        .args(["--hold", "3s", "--warmup", "1s", "--config"])
        .arg(config)
        .arg("--report-dir")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert!(stdout.contains("knee: "), "{stdout}");
    for f in ["steps.csv", "loadtest.json", "knee.svg", "summary.json"] {
        assert!(report.join(f).is_file(), "{f} missing");
    }
    serde_json::from_slice(&std::fs::read(report.join("loadtest.json")).unwrap()).unwrap()
}

#[test]
fn find_knee_reports_the_register_thing_quota() {
    let dir = tempfile::tempdir().unwrap();
    let config = quota_config(dir.path(), &[("register_thing", "{ tps = 10, burst = 2 }")]);
    let j = find_knee(dir.path(), &config);
    let knee = j["knee_per_s"].as_f64().unwrap();
    assert!((9.0..=11.0).contains(&knee), "knee {knee}: {j:#}");
    assert_eq!(j["limit"]["kind"], "quota", "{j:#}");
    assert_eq!(j["limit"]["api"], "register_thing", "{j:#}");
    assert_eq!(j["limit"]["error_code"], "Throttling", "{j:#}");
    assert_eq!(j["mode"], "find_knee");
    assert_eq!(j["complete"], true);
    // Stepped up, then bisected; every step says what it offered and achieved.
    let steps = j["steps"].as_array().unwrap();
    assert!(steps.iter().any(|s| s["phase"] == "bisect"), "{j:#}");
    assert!(steps.iter().all(|s| s["achieved_per_s"].as_f64().is_some()));
}

#[test]
fn find_knee_names_create_certificate_when_its_quota_is_lower() {
    let dir = tempfile::tempdir().unwrap();
    let config = quota_config(
        dir.path(),
        &[
            ("register_thing", "{ tps = 10, burst = 2 }"),
            ("create_certificate_from_csr", "{ tps = 6, burst = 2 }"),
        ],
    );
    let j = find_knee(dir.path(), &config);
    let knee = j["knee_per_s"].as_f64().unwrap();
    assert!((5.4..=6.6).contains(&knee), "knee {knee}: {j:#}");
    assert_eq!(j["limit"]["kind"], "quota", "{j:#}");
    assert_eq!(j["limit"]["api"], "create_certificate", "{j:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulator_stall_shows_in_the_open_loop_p99() {
    let emu = TestEmulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let p = emu.emulator.paths();
    let path = StationConfig::embedded(dir.path())
        .set_str("endpoint.endpoint", "localhost")
        .set("endpoint.port", &emu.port().to_string())
        .set_str("endpoint.claim_cert", p.claim_cert.display().to_string())
        .set_str("endpoint.claim_key", p.claim_key.display().to_string())
        .set_str("endpoint.root_ca", p.ca_cert.display().to_string())
        .set("provision.sessions", "8")
        .write();
    let cfg = Config::load(&path).unwrap();
    let report = dir.path().join("report");
    let opts = LoadtestOptions {
        devices: 0,
        sessions: None,
        report_dir: Some(report.clone()),
        keep_emulator_state: false,
        progress: false,
        control: None,
    };
    let ol = OpenLoop {
        plan: Plan::Rate {
            rate: 20.0,
            duration: Duration::from_secs(4),
        },
        p99_threshold: open_loop::DEFAULT_P99,
        warmup: None,
        max_in_flight: open_loop::DEFAULT_MAX_IN_FLIGHT,
    };
    let run =
        tokio::spawn(
            async move { open_loop::loadtest_open(&cfg, &opts, &ol, Shutdown::new()).await },
        );
    // Once devices are flowing, the emulator answers nothing for one second.
    let ledger = report.join("ledger.db");
    while count(&ledger, "SELECT count(*) FROM devices") < 10 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    emu.emulator.set_faults(FaultConfig {
        delay_ms: 1000,
        ..FaultConfig::default()
    });
    // The stall's length (the fault itself, not a wait for the station).
    tokio::time::sleep(Duration::from_secs(1)).await;
    emu.emulator.set_faults(FaultConfig::default());
    let out = run.await.unwrap().unwrap();
    assert_eq!(out.steps.len(), 1);
    let s = &out.steps[0];
    eprintln!(
        "stall: {} devices, e2e p50 {:.1} ms, p99 {:.1} ms",
        s.devices, s.end_to_end.p50_ms, s.end_to_end.p99_ms
    );
    // Open loop: every device started on schedule, the stall notwithstanding.
    assert_eq!(s.devices, 80, "{s:?}");
    assert_eq!(s.provisioned, 80, "{s:?}");
    assert!(
        s.end_to_end.p99_ms >= 950.0,
        "the stall is missing from p99: {s:?}"
    );
    // The median device did not see it.
    assert!(s.end_to_end.p50_ms < 950.0, "{s:?}");
    let csv = std::fs::read_to_string(report.join("steps.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
}

fn spawn(args: &[&str], config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_station"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn ctrl_c_during_a_ramp_exits_130_with_the_steps_done() {
    let dir = tempfile::tempdir().unwrap();
    let config = StationConfig::embedded(dir.path()).write();
    let report = dir.path().join("report");
    let r = report.display().to_string();
    let mut child = spawn(
        &[
            "loadtest",
            "--headless",
            "--ramp",
            "5..100",
            "--step",
            "5",
            "--hold",
            "2s",
            "--report-dir",
            &r,
        ],
        &config,
    );
    // Step 1 starts 10 devices: the 15th is in step 2.
    let ledger = report.join("ledger.db");
    wait_for(&mut child, "the second step", || {
        count(&ledger, "SELECT count(*) FROM devices") >= 15
    });
    // SAFETY: sending a signal to a child process we own.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(report.join("steps.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines.len() >= 3, "{csv}");
    assert!(lines.last().unwrap().ends_with(",true"), "{csv}");
    assert!(lines[1].ends_with(",false"), "{csv}");
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("loadtest.json")).unwrap()).unwrap();
    assert_eq!(j["complete"], false);
    assert_eq!(j["steps"].as_array().unwrap().len(), lines.len() - 1);
    assert!(report.join("summary.json").is_file());
}

#[test]
fn a_bad_ramp_and_conflicting_modes_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = StationConfig::embedded(dir.path()).write();
    let run = |args: &[&str]| {
        let out = station()
            .arg("loadtest")
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--ramp", "20..5"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("station::loadtest::bad_ramp"), "{err}");
    let (code, err) = run(&["--find-knee", "--hold", "soon"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("station::loadtest::bad_duration"), "{err}");
    // clap's groups: one mode, and --rate needs --duration.
    for args in [
        &["--devices", "5", "--rate", "3", "--duration", "2s"][..],
        &["--rate", "3"],
        &["--rate", "3", "--duration", "1s", "--find-knee"],
        &["--devices", "5", "--hold", "2s"],
        &[],
    ] {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
    }
    // Nothing was started: no report folder.
    assert!(!dir.path().join("reports").exists());
}
