//! End to end through the library, as `station run` does it: the embedded emulator over real
//! TLS sockets, virtual boards on real pseudo-terminals, the ledger on disk. Then every board
//! is checked from the outside: its flash file, the emulator's registry and the ledger.

use std::path::Path;

use crate::common::public_key_of;
use fleet_station::config::Config;
use fleet_station::emulator::registry::{CertStatus, Registry};
use fleet_station::jig::Flash;
use fleet_station::ledger::{DeviceState, Ledger};
use fleet_station::shutdown::Shutdown;
use fleet_station::station::{self, RunOptions};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

fn config(dir: &Path, jigs: usize, boards: usize) -> Config {
    config_with(dir, jigs, boards, "Seattle", "")
}

fn config_with(dir: &Path, jigs: usize, boards: usize, location: &str, keys: &str) -> Config {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/templates");
    let text = format!(
        r#"
[station]
id = "e2e"
ledger = "{dir}/ledger.db"
report_dir = "{dir}/reports"

[provision]
template_name = "FleetTemplate"
sessions = 8

[parameters]
ThingName = "{{serial}}"
SerialNumber = "{{serial}}"
DeviceLocation = "{location}"

[jigs]
mode = "virtual"
count = {jigs}
boards = {boards}
baud = 0
flash_dir = "{dir}/boards"

[emulator]
state_dir = "{dir}/emulator"
templates = "{fixtures}"

[keys]
{keys}
"#,
        dir = dir.display(),
        fixtures = fixtures.display(),
        location = location,
    );
    Config::parse(&text, Path::new("e2e.toml")).unwrap()
}

/// A line in serial mode, as on the factory floor: one port `line-1` described by `port`
/// (its `path` and line settings), `jigs` extra lines in `[jigs]`, the embedded emulator.
fn serial_line_config(dir: &Path, jigs: &str, port: &str) -> Config {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/templates");
    let text = format!(
        r#"
[station]
ledger = "{d}/ledger.db"
[parameters]
ThingName = "{{serial}}"
SerialNumber = "{{serial}}"
DeviceLocation = "Seattle"
[jigs]
mode = "serial"
{jigs}
[[jigs.ports]]
name = "line-1"
{port}
[emulator]
state_dir = "{d}/emulator"
templates = "{t}"
"#,
        d = dir.display(),
        t = fixtures.display()
    );
    Config::parse(&text, Path::new("serial.toml")).unwrap()
}

/// `station run` of `cfg` with reports in `dir/report`; `boards` as `--boards`.
async fn run_line(cfg: &Config, dir: &Path, boards: Option<usize>) -> station::RunReport {
    station::run(
        cfg,
        &RunOptions {
            boards,
            report_dir: Some(dir.join("report")),
            ..RunOptions::default()
        },
        Shutdown::new(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisions_a_line_of_virtual_boards_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 4, 60);
    let report = run_line(&cfg, dir.path(), None).await;
    assert!(report.all_provisioned(), "{:?}", report.summary);
    assert_eq!(report.summary.devices.provisioned, 60);
    assert_eq!(report.summary.stages["end_to_end"].count, 60);
    let written: fleet_station::telemetry::summary::Summary =
        serde_json::from_slice(&std::fs::read(dir.path().join("report/summary.json")).unwrap())
            .unwrap();
    assert_eq!(written, report.summary);

    let ca_der = CertificateDer::from_pem_file(dir.path().join("emulator/ca.pem")).unwrap();
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    let registry = Registry::open(&dir.path().join("emulator/registry.db")).unwrap();
    let ledger = Ledger::open(&cfg.station.ledger, "e2e").unwrap();
    let devices = ledger.devices().unwrap();
    assert_eq!(devices.len(), 60);

    for d in devices {
        assert_eq!(d.state, DeviceState::Verified, "{d:?}");
        let flash = Flash::load(&Flash::path_for(&cfg.jigs.flash_dir, &d.serial)).unwrap();

        // The certificate on the board chains to the emulator's CA ...
        let cert_der = CertificateDer::from_pem_slice(flash.certificate().unwrap()).unwrap();
        let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();
        cert.verify_signature(Some(ca.public_key())).unwrap();
        // ... and carries the public key of the private key on the board.
        assert_eq!(
            cert.public_key().raw,
            public_key_of(flash.private_key().unwrap()).as_slice()
        );

        // The thing has the name the template gives (ThingName = the serial) and this
        // certificate; the ledger agrees.
        assert_eq!(flash.thing_name(), Some(d.serial.as_str()));
        let thing = registry
            .thing(&d.serial)
            .unwrap()
            .expect("thing in the registry");
        let cert_id = d.certificate_id.clone().unwrap();
        assert!(thing.principals.contains(&cert_id));
        assert_eq!(
            registry.certificate(&cert_id).unwrap().unwrap().status,
            CertStatus::Active
        );
        assert_eq!(d.thing_name.as_deref(), Some(d.serial.as_str()));

        // The device configuration of the template reached the board.
        let config: serde_json::Value =
            serde_json::from_slice(flash.device_config().unwrap()).unwrap();
        assert_eq!(config["LocationUrl"], "https://example.aws");
        assert_eq!(
            flash.root_ca().unwrap(),
            std::fs::read(dir.path().join("emulator/ca.pem")).unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_parameter_stops_the_line_after_one_certificate_and_the_fixed_line_resumes() {
    let dir = tempfile::tempdir().unwrap();
    // Atlantis is not in the template's LocationTable: RegisterThing is rejected (400).
    let mut cfg = config_with(dir.path(), 2, 6, "Atlantis", "");
    // The same boards come back after the fix.
    cfg.jigs.stamp_serials = false;
    let report = run_line(&cfg, dir.path(), None).await;
    let station::Stopped::Halted(e) = &report.stopped else {
        panic!("the line did not stop: {:?}", report.stopped);
    };
    let message = e.to_string();
    assert!(
        message.contains("InvalidParameters") && message.contains("Atlantis"),
        "{message}"
    );
    assert_eq!(report.exit_code(), 2);
    let s = &report.summary;
    assert_eq!((s.devices.provisioned, s.devices.failed), (0, 0));
    assert!(s.devices.interrupted >= 1, "{:?}", s.devices);
    let registry = |dir: &Path| crate::common::issued_certificates_in(&dir.join("emulator"));
    assert_eq!(
        registry(dir.path()),
        1,
        "one certificate, not one per board"
    );
    {
        let ledger = Ledger::open(&cfg.station.ledger, "e2e").unwrap();
        assert!(ledger.orphans().unwrap().is_empty());
        for d in ledger.devices().unwrap() {
            assert!(
                !Flash::path_for(&cfg.jigs.flash_dir, &d.serial).exists(),
                "nothing is written to a board that got no identity"
            );
        }
    }

    // The operator fixes the parameter and places the same boards again: the one that has a
    // certificate registers it with its token; nothing is orphaned.
    let mut fixed = config_with(dir.path(), 2, 6, "Seattle", "");
    fixed.jigs.stamp_serials = false;
    let report = run_line(&fixed, dir.path(), None).await;
    assert_eq!(report.exit_code(), 0, "{:?}", report.stopped);
    assert_eq!(report.summary.devices.provisioned, 6);
    assert_eq!(registry(dir.path()), 6);
    let ledger = Ledger::open(&cfg.station.ledger, "e2e").unwrap();
    assert!(ledger.orphans().unwrap().is_empty());
    assert!(
        ledger
            .devices()
            .unwrap()
            .iter()
            .all(|d| d.state == DeviceState::Verified)
    );
}

/// Every file under `dir` except the boards' own flash files.
fn station_files(dir: &Path, boards: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p != boards {
                    stack.push(p);
                }
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_made_keys_never_leave_the_board() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with(dir.path(), 2, 8, "Seattle", "source = \"device\"");
    let report = run_line(&cfg, dir.path(), None).await;
    assert!(report.all_provisioned(), "{:?}", report.summary);
    // The keygen stage is the board's GEN_CSR.
    assert_eq!(report.summary.stages["keygen"].count, 8);

    let ledger = Ledger::open(&cfg.station.ledger, "e2e").unwrap();
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for d in ledger.devices().unwrap() {
        assert_eq!(d.state, DeviceState::Verified);
        assert_eq!(d.key_source.as_deref(), Some("device"));
        let flash = Flash::load(&Flash::path_for(&cfg.jigs.flash_dir, &d.serial)).unwrap();
        let key_pem = flash.private_key().unwrap().to_vec();
        let cert = CertificateDer::from_pem_slice(flash.certificate().unwrap()).unwrap();
        let (_, cert) = X509Certificate::from_der(&cert).unwrap();
        assert_eq!(cert.public_key().raw, public_key_of(&key_pem).as_slice());
        let der = PrivateKeyDer::from_pem_slice(&key_pem)
            .unwrap()
            .secret_der()
            .to_vec();
        // The PEM body lines and the DER itself.
        secrets.extend(
            std::str::from_utf8(&key_pem)
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with("-----") && l.len() > 16)
                .map(|l| l.as_bytes().to_vec()),
        );
        secrets.push(der);
    }
    // Nothing the station stored or reported holds any of it: ledger (and its WAL and key
    // file), reports, the emulator's state.
    for file in station_files(dir.path(), &cfg.jigs.flash_dir) {
        let bytes = std::fs::read(&file).unwrap();
        for s in &secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_slice()),
                "{} holds private key material",
                file.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_made_keys_reach_the_board() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with(dir.path(), 2, 4, "Seattle", "source = \"aws\"");
    let report = run_line(&cfg, dir.path(), None).await;
    assert!(report.all_provisioned(), "{:?}", report.summary);
    let ledger = Ledger::open(&cfg.station.ledger, "e2e").unwrap();
    for d in ledger.devices().unwrap() {
        assert_eq!(d.key_source.as_deref(), Some("aws"));
        let flash = Flash::load(&Flash::path_for(&cfg.jigs.flash_dir, &d.serial)).unwrap();
        assert!(
            flash
                .private_key()
                .unwrap()
                .starts_with(b"-----BEGIN RSA PRIVATE KEY-----")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_mode_drives_a_port_by_its_path_as_on_the_line() {
    use fleet_station::jig::{BoardSpec, VirtualJig, VirtualJigConfig};
    // A virtual board behind a pty stands in for a USB adapter: the station gets only its
    // path, in jigs.mode = "serial", exactly as a real port is configured.
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    for s in ["REAL-1", "REAL-2", "REAL-3"] {
        tx.send(BoardSpec::new(s)).unwrap();
    }
    drop(tx);
    let mut jc = VirtualJigConfig::new(&dir.path().join("boards"));
    jc.baud = 115_200;
    let jig = VirtualJig::spawn(jc, rx).unwrap();
    let cfg = serial_line_config(
        dir.path(),
        "",
        &format!(
            "path = \"{}\"\nbaud = 115200\nparity = \"none\"\nflow_control = \"none\"",
            jig.path()
        ),
    );
    let report = run_line(&cfg, dir.path(), Some(3)).await;
    assert!(report.all_provisioned(), "{:?}", report.summary);
    let jigs = report.summary.jigs.as_ref().unwrap();
    assert_eq!((jigs.count, jigs.baud), (1, 115_200));
    assert!(jigs.per_jig.contains_key("line-1"));
    for s in ["REAL-1", "REAL-2", "REAL-3"] {
        let flash = Flash::load(&jig.flash_path(s)).unwrap();
        assert_eq!(flash.thing_name(), Some(s));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_line_a_failed_board_put_back_is_tried_again() {
    use fleet_station::jig::{BoardSpec, FaultConfig, VirtualJig, VirtualJigConfig};
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    tx.send(BoardSpec::new("RETRY-1")).unwrap();
    let mut jc = VirtualJigConfig::new(&dir.path().join("boards"));
    jc.baud = 0;
    // The board refuses every COMMIT: its write fails twice.
    jc.faults = FaultConfig {
        refuse_commit: true,
        ..FaultConfig::default()
    };
    let jig = VirtualJig::spawn(jc, rx).unwrap();
    let cfg = serial_line_config(
        dir.path(),
        "timeout_ms = 100",
        &format!("path = \"{}\"", jig.path()),
    );
    let ledger_path = cfg.station.ledger.clone();
    let run = tokio::spawn({
        let cfg = cfg.clone();
        let report_dir = dir.path().join("report");
        async move {
            station::run(
                &cfg,
                &RunOptions {
                    // The first try and the retry.
                    boards: Some(2),
                    report_dir: Some(report_dir),
                    ..RunOptions::default()
                },
                Shutdown::new(),
            )
            .await
        }
    });
    // Wait (bounded) for the first try to fail.
    // Read-only peeks at the ledger the running station writes.
    let state = |serial: &str| -> Option<String> {
        let c = rusqlite::Connection::open_with_flags(
            &ledger_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()?;
        c.query_row(
            "SELECT state FROM devices WHERE serial = ?1",
            [serial],
            |r| r.get(0),
        )
        .ok()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while state("RETRY-1").as_deref() != Some("failed") {
        assert!(
            std::time::Instant::now() < deadline,
            "the first try never failed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The operator takes it off (the jig is seen empty), fixes it, and puts it back.
    jig.set_faults(FaultConfig::default());
    jig.take_off("RETRY-1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while jig.current_board().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the board was not taken off"
        );
        tokio::task::yield_now().await;
    }
    // Put it back only once the station has seen the empty jig: it has sent at least ten
    // more HELLOs (~10 bytes each), more than one full "no board" round of retries.
    let before = jig.stats().bytes_received;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while jig.stats().bytes_received < before + 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "the station stopped polling the jig"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tx.send(BoardSpec::new("RETRY-1")).unwrap();
    drop(tx);
    let report = run.await.unwrap().unwrap();
    let d = &report.summary.devices;
    assert_eq!((d.provisioned, d.failed), (1, 1), "{:?}", report.summary);
    let ledger = Ledger::open(&ledger_path, "check").unwrap();
    let row = ledger.device("RETRY-1").unwrap().unwrap();
    assert_eq!((row.state, row.attempts), (DeviceState::Verified, 2));
    assert_eq!(
        Flash::load(&jig.flash_path("RETRY-1"))
            .unwrap()
            .thing_name(),
        Some("RETRY-1")
    );
}

/// Boards whose firmware already carries the root CA (`jigs.boards_hold_root_ca`) are asked
/// what they hold and not sent it again (`jigs.skip_held`, the default): summary.json counts
/// the bytes left out, and every board ends with the whole identity. With `skip_held = false`
/// every slot is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boards_that_hold_the_root_ca_are_not_sent_it_again() {
    for skip_held in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 2, 8);
        cfg.jigs.boards_hold_root_ca = true;
        cfg.jigs.skip_held = skip_held;
        let report = run_line(&cfg, dir.path(), None).await;
        assert!(report.all_provisioned(), "{:?}", report.summary);
        let ca = std::fs::read(dir.path().join("emulator/ca.pem")).unwrap();
        let written: fleet_station::telemetry::summary::Summary =
            serde_json::from_slice(&std::fs::read(dir.path().join("report/summary.json")).unwrap())
                .unwrap();
        let jigs = written.jigs.expect("a line run reports its jigs");
        let expected = if skip_held { 8 * ca.len() as u64 } else { 0 };
        assert_eq!(jigs.bytes_skipped, expected, "skip_held = {skip_held}");
        assert!(jigs.write_ms_per_board > 0.0, "{jigs:?}");

        let ledger = Ledger::open(&cfg.station.ledger, "e2e").unwrap();
        let devices = ledger.devices().unwrap();
        assert_eq!(devices.len(), 8);
        for d in devices {
            assert_eq!(d.state, DeviceState::Verified, "{d:?}");
            let flash = Flash::load(&Flash::path_for(&cfg.jigs.flash_dir, &d.serial)).unwrap();
            assert_eq!(flash.root_ca(), Some(ca.as_slice()));
            assert_eq!(flash.thing_name(), Some(d.serial.as_str()));
            assert!(flash.certificate().is_some() && flash.private_key().is_some());
        }
    }
}
