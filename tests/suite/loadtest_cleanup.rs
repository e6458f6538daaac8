//! A load test leaves no litter: `station loadtest --cleanup-plan DIR` writes `cleanup.sh` and
//! `cleanup.json` for everything the load test in DIR created; applied with AWS's rules to the
//! registry of the (standalone) emulator it ran against, the plan leaves only the claim
//! certificate. A load test's embedded emulator keeps no state past the run unless asked. A
//! folder that is not a load test's is refused with a code and the fix.

use std::path::Path;

use crate::common::StandaloneEmulator;
use crate::common::cleanup::apply_cleanup;
use crate::common::cli::{StationConfig, station};
use fleet_station::emulator::registry::Registry;
use fleet_station::ledger::cleanup::CleanupStep;

fn loadtest(config: &Path, report: &Path, devices: usize, extra: &[&str]) {
    let out = station()
        .args(["loadtest", "--headless", "--devices", &devices.to_string()])
        .arg("--config")
        .arg(config)
        .arg("--report-dir")
        .arg(report)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn steps(value: &serde_json::Value) -> Vec<CleanupStep> {
    serde_json::from_value(value["steps"].clone()).unwrap()
}

#[test]
fn the_cleanup_plan_removes_every_certificate_and_thing_a_load_test_created() {
    let dir = tempfile::tempdir().unwrap();
    let mut emu = StandaloneEmulator::start(dir.path(), "");
    let config = StationConfig::endpoint(dir.path(), &emu).write();
    let report = dir.path().join("lt");
    loadtest(&config, &report, 12, &[]);
    // The emulator stops; its registry is read and changed as AWS would be by the script.
    emu.child.kill().unwrap();
    emu.child.wait().unwrap();

    let out = station()
        .args(["loadtest", "--cleanup-plan"])
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("12 certificate(s), 12 thing(s) to delete, 0 thing(s) kept"),
        "{stdout}"
    );
    let script = std::fs::read_to_string(report.join("cleanup.sh")).unwrap();
    assert!(script.starts_with("#!/usr/bin/env bash\n"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(report.join("cleanup.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "cleanup.sh is executable");
    }
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("cleanup.json")).unwrap()).unwrap();

    let registry = Registry::open_state_dir(&dir.path().join("emulator")).unwrap();
    let things_before = registry.things().unwrap().len();
    assert_eq!(things_before, 12);
    for c in plan["certificates"].as_array().unwrap() {
        assert_eq!(c["status"], "active", "{c}");
        apply_cleanup(&registry, &steps(c));
    }
    for t in plan["things"].as_array().unwrap() {
        apply_cleanup(&registry, &steps(t));
    }
    let certificates = registry.certificates().unwrap();
    let (certificates, things) = (
        certificates.iter().filter(|c| !c.claim).count(),
        registry.things().unwrap().len(),
    );
    assert_eq!((certificates, things), (0, 0), "the load test left litter");
    // The claim certificate is not the load test's.
    assert!(registry.certificates().unwrap().iter().any(|c| c.claim));
}

#[test]
fn an_embedded_emulator_keeps_no_state_past_a_load_test_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = StationConfig::embedded(dir.path()).write();
    let state = dir.path().join("emulator");
    loadtest(&config, &dir.path().join("a"), 4, &[]);
    assert!(!state.exists(), "a load test left the emulator's state");
    loadtest(
        &config,
        &dir.path().join("b"),
        4,
        &["--keep-emulator-state"],
    );
    let registry = Registry::open_state_dir(&state).unwrap();
    assert_eq!(registry.things().unwrap().len(), 4);
}

#[test]
fn a_folder_that_is_not_a_load_test_s_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = station()
        .args(["loadtest", "--cleanup-plan"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("station::loadtest::no_ledger"), "{stderr}");
    assert!(stderr.contains("report folder"), "{stderr}");
    assert!(!dir.path().join("cleanup.sh").exists());

    // It provisions nothing: --devices with it is a usage error.
    let out = station()
        .args(["loadtest", "--devices", "3", "--cleanup-plan"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
