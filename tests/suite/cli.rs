//! The `station` binary as an operator uses it: `run`, `emulate`, and what a bad
//! configuration prints.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::cli::{StationConfig, station, succeeded};
use crate::common::{RawClient, StandaloneEmulator};
use fleet_station::provision::tls::{client_config_from_pem, read_roots};

fn write_config(dir: &Path) -> std::path::PathBuf {
    StationConfig::embedded(dir).write()
}

#[test]
fn run_provisions_and_writes_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let out = station()
        .args(["run", "--boards", "6", "--config"])
        .arg(&config)
        .arg("--report-dir")
        .arg(dir.path().join("r"))
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert!(
        stdout.contains("devices: 6 provisioned, 0 failed, of 6"),
        "{stdout}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("r/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["devices"]["provisioned"], 6);
    for stage in [
        "keygen",
        "create_certificate",
        "register_thing",
        "jig_write",
        "end_to_end",
    ] {
        assert_eq!(summary["stages"][stage]["count"], 6, "{stage}");
    }
}

/// Not a terminal: no dashboard (no alternate screen, no raw mode), the progress line and the
/// log on stderr; `--log-format json` makes every log line one JSON object.
#[test]
fn without_a_terminal_the_run_is_headless_and_logs_json_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let out = station()
        .args([
            "run",
            "--boards",
            "2",
            "-v",
            "--log-format",
            "json",
            "--config",
        ])
        .arg(&config)
        .arg("--report-dir")
        .arg(dir.path().join("r"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("\x1b[?1049h"),
        "alternate screen entered: {stdout:?}"
    );
    assert!(stdout.contains("devices: 2 provisioned"), "{stdout}");
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!logs.is_empty(), "no JSON log line in {stderr}");
    for l in &logs {
        assert!(l["level"].is_string() && l["fields"].is_object(), "{l}");
    }
    // Every other stderr line is the progress line or the report's, never a text log line.
    for l in stderr.lines().filter(|l| !l.starts_with('{')) {
        assert!(
            !l.contains(" DEBUG ") && !l.contains(" INFO "),
            "text log line: {l}"
        );
    }
    assert!(!dir.path().join("r/station.log").exists());
}

#[test]
fn a_bad_config_names_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = StationConfig::embedded(dir.path())
        .set("provision.sessions", "0")
        .write();
    let out = station()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("provision.sessions"), "{stderr}");
    assert!(stderr.contains("station::config::invalid"), "{stderr}");
    assert!(
        stderr.contains("in parallel"),
        "the help line says what to set: {stderr}"
    );

    let missing = station()
        .args(["run", "--config", "/nonexistent/station.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/station.toml"));
}

#[test]
fn the_open_loop_load_tests_refuse_a_shared_quota_before_they_start() {
    let dir = tempfile::tempdir().unwrap();
    // Refused before anything connects: the database named here need not exist.
    let config = StationConfig::embedded(dir.path())
        .set_str("station.ledger", "postgres://station@127.0.0.1:1/fleet")
        .set("provision.shared_quota", "true")
        .set("provision.register_thing_tps", "10")
        .set("provision.create_certificate_tps", "15")
        .write();
    for mode in [
        &["--rate", "5", "--duration", "2s"][..],
        &["--ramp", "5..10", "--hold", "2s"],
        &["--find-knee"],
    ] {
        let out = station()
            .args(["loadtest", "--headless", "--config"])
            .arg(&config)
            .args(mode)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{mode:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("station::loadtest::shared_quota"),
            "{mode:?}: {stderr}"
        );
        assert!(
            stderr.contains("provision.shared_quota = false"),
            "{stderr}"
        );
    }
}

#[test]
fn a_bad_cli_argument_is_refused_with_usage() {
    let out = station()
        .args(["run", "--boards", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--boards"), "{stderr}");
    assert!(stderr.contains("invalid digit"), "{stderr}");
}

#[tokio::test]
async fn emulate_prints_where_it_listens_and_serves_the_claim_identity() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut child = station()
        .args(["emulate", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{first}"));
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let mut paths = Vec::new();
    for _ in 0..3 {
        let l = lines.next().unwrap().unwrap();
        paths.push(l.split_once(": ").unwrap().1.to_string());
    }
    assert!(
        paths[0].ends_with("ca.pem")
            && paths[1].ends_with("claim-cert.pem")
            && paths[2].ends_with("claim-key.pem"),
        "{paths:?}"
    );

    let tls = client_config_from_pem(
        read_roots(Path::new(&paths[0])).unwrap(),
        &std::fs::read(&paths[1]).unwrap(),
        &std::fs::read(&paths[2]).unwrap(),
        false,
    )
    .unwrap();
    let mut c = RawClient::connect(port, "cli-test", std::sync::Arc::new(tls));
    c.connected().await;

    // SIGTERM stops it cleanly.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(dir.path().join("emulator/registry.db").exists());
}

/// `station emulate` with `policy` (JSON) as its claim policy.
fn emulator_with_policy(dir: &Path, policy: &str) -> StandaloneEmulator {
    let path = dir.join("claim-policy.json");
    std::fs::write(&path, policy).unwrap();
    StandaloneEmulator::start(dir, &format!("claim_policy = \"{}\"", path.display()))
}

fn check(dir: &Path, emu: &StandaloneEmulator) -> std::process::Output {
    check_with(dir, emu, &[])
}

/// `station check` against `emu` with extra arguments.
fn check_with(dir: &Path, emu: &StandaloneEmulator, args: &[&str]) -> std::process::Output {
    let empty = dir.join("check.toml");
    std::fs::write(&empty, "").unwrap();
    station()
        .args(["check", "--config"])
        .arg(&empty)
        .args(args)
        .args(["--endpoint", "localhost", "--port", &emu.port.to_string()])
        .arg("--ca-file")
        .arg(&emu.ca)
        .arg("--cert")
        .arg(&emu.cert)
        .arg("--key")
        .arg(&emu.key)
        .output()
        .unwrap()
}

#[test]
fn check_reports_each_step_against_a_standalone_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let emu = StandaloneEmulator::start(dir.path(), "");
    let out = check(dir.path(), &emu);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // CONNECT, two SUBSCRIBEs, and a request of each API that creates nothing.
    assert_eq!(stdout.matches("[ ok ]").count(), 5, "{stdout}");
    assert!(
        stdout.contains("create-from-csr/json/accepted (QoS 1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FleetTemplate/provision/json/rejected (QoS 1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[ ok ] RegisterThing request and reply"),
        "{stdout}"
    );
    // What it cannot check is said, not implied.
    assert!(stdout.contains("[ -- ] not checked"), "{stdout}");
    emu.stop();
    // Nothing was created.
    assert_eq!(
        crate::common::issued_certificates_in(&dir.path().join("emulator")),
        0
    );
}

#[test]
fn check_fails_for_a_template_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let emu = StandaloneEmulator::start(dir.path(), "");
    let out = check_with(dir.path(), &emu, &["--template-name", "NoSuchTemplate"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("[FAIL] RegisterThing request and reply")
            && stdout.contains("NoSuchTemplate does not exist"),
        "{stdout}"
    );
    assert!(stdout.contains("create-provisioning-template"), "{stdout}");
    emu.stop();
}

/// A claim policy that lets the station subscribe to every reply topic but publish only the
/// CSR request (the template's request topic is missing).
const NO_TEMPLATE_PUBLISH: &str = r#"{"Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"},
    {"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":"arn:aws:iot:*:*:topic/$aws/certificates/create-from-csr/*"},
    {"Effect":"Allow","Action":"iot:Receive","Resource":"arn:aws:iot:*:*:topic/$aws/provisioning-templates/*"},
    {"Effect":"Allow","Action":"iot:Subscribe","Resource":"*"}]}"#;

#[test]
fn check_fails_when_the_policy_denies_publishing_on_the_template_topic() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator_with_policy(dir.path(), NO_TEMPLATE_PUBLISH);
    for version in ["3", "5"] {
        let out = check_with(dir.path(), &emu, &["--mqtt-version", version]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "MQTT {version}: {stdout}");
        assert!(
            stdout.contains("[ ok ] CreateCertificateFromCsr request and reply"),
            "MQTT {version}: {stdout}"
        );
        assert!(
            stdout.contains("[FAIL] RegisterThing request and reply")
                && stdout.contains("iot:Publish"),
            "MQTT {version}: {stdout}"
        );
    }
    emu.stop();
}

#[test]
fn check_maps_a_refused_connect_to_the_claim_policy() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator_with_policy(
        dir.path(),
        r#"{"Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:*:*:client/someone-else"}]}"#,
    );
    for version in ["3", "5"] {
        let out = check_with(dir.path(), &emu, &["--mqtt-version", version]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "MQTT {version}: {stdout}");
        assert!(
            stdout.contains("[FAIL] TLS handshake and CONNECT: CONNECT refused"),
            "MQTT {version}: {stdout}"
        );
        assert!(
            stdout.contains("the claim policy must allow iot:Connect for this client id"),
            "MQTT {version}: {stdout}"
        );
    }
    emu.stop();
}

#[test]
fn check_names_the_topic_a_claim_policy_does_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    // A claim policy for the CSR API only (like AWS's embedded-C CSR demo without the
    // template topics).
    let emu = emulator_with_policy(
        dir.path(),
        r#"{"Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"},
            {"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":"arn:aws:iot:*:*:topic/$aws/certificates/create-from-csr/*"},
            {"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:aws:iot:*:*:topicfilter/$aws/certificates/create-from-csr/*"}]}"#,
    );
    let out = check(dir.path(), &emu);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("[ ok ] SUBSCRIBE CreateCertificateFromCsr"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[FAIL] SUBSCRIBE RegisterThing"),
        "{stdout}"
    );
    assert!(
        stdout.contains("iot:Subscribe"),
        "the help names the policy action: {stdout}"
    );
    emu.stop();
}

#[test]
fn a_run_that_fails_its_start_up_checks_leaves_no_report_folder() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let out = station()
        .args(["run", "--config"])
        .arg(&config)
        .args(["--endpoint", "abc-ats.iot.eu-west-1.amazonaws.com"])
        .arg("--cert")
        .arg(dir.path().join("missing-cert.pem"))
        .arg("--key")
        .arg(dir.path().join("missing-key.pem"))
        .arg("--ca-file")
        .arg(dir.path().join("missing-ca.pem"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing-ca.pem"), "{stderr}");
    assert!(
        !dir.path().join("reports").exists(),
        "a report folder was created for a run that never started"
    );
}
