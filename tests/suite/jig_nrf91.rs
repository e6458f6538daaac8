//! The `nrf91-at` driver end to end: `station run --driver nrf91-at` through the real CLI
//! against the embedded emulator and emulated nRF91 modems on ptys (station-made and
//! modem-made keys), and, through the library in serial mode, one modem on a pty with a
//! fault: each failure is a per-board error naming its cause and the ledger never records
//! the board verified; faults the station recovers from end verified, with the modem's
//! store holding exactly what the ledger's certificate says.

use std::path::Path;

use fleet_station::config::Config;
use fleet_station::emulator::registry::{CertStatus, Registry};
use fleet_station::jig::{
    FaultConfig, ModemFaults, ModemSpec, Slot, VirtualModem, VirtualModemConfig,
};
use fleet_station::ledger::{DeviceRow, DeviceState, Ledger};
use fleet_station::shutdown::Shutdown;
use fleet_station::station::{self, RunOptions};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::common::cli::{StationConfig, station};
use crate::common::public_key_of;

const IMEI: &str = "352656100000017";
const IMEI2: &str = "352656100000025";
const TAG: u32 = 4242;

/// `station run --boards N --jigs 4 --driver nrf91-at` on `config`; asserts it succeeded
/// and returns its stderr.
fn run_cli(dir: &Path, config: &Path, report: &str, boards: usize) -> String {
    let out = station()
        .args(["run", "--boards", &boards.to_string(), "--jigs", "4"])
        .args(["--driver", "nrf91-at", "--headless", "--config"])
        .arg(config)
        .arg("--report-dir")
        .arg(dir.join(report))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

#[test]
fn station_run_provisions_50_nrf91_modems_with_station_and_modem_made_keys() {
    for source in ["pool", "device"] {
        let dir = tempfile::tempdir().unwrap();
        let config = StationConfig::embedded(dir.path())
            .set_str("keys.source", source)
            .write();
        let stderr = run_cli(dir.path(), &config, "report", 50);
        // No silent success: the items AT%CMNG has no place for are named.
        assert!(
            stderr.contains("not_written=device_config, thing_name"),
            "{stderr}"
        );
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("report/summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["devices"]["provisioned"], 50, "{summary}");
        assert_eq!(summary["devices"]["failed"], 0, "{summary}");
        assert!(summary["jigs"]["bytes_written"].as_u64().unwrap() > 0);

        let ledger = Ledger::open(&dir.path().join("ledger.db"), "check").unwrap();
        let registry = Registry::open(&dir.path().join("emulator/registry.db")).unwrap();
        let devices = ledger.devices().unwrap();
        assert_eq!(devices.len(), 50);
        for d in devices {
            assert_eq!(d.state, DeviceState::Verified, "{d:?}");
            assert_eq!(d.key_source.as_deref(), Some(source));
            // The board's identity is its IMEI: 15 digits, and the thing is named after it
            // (ThingName = "{serial}").
            assert!(
                d.serial.len() == 15 && d.serial.bytes().all(|b| b.is_ascii_digit()),
                "{d:?}"
            );
            assert_eq!(d.thing_name.as_deref(), Some(d.serial.as_str()));
            let cert_id = d.certificate_id.clone().unwrap();
            assert_eq!(
                registry.certificate(&cert_id).unwrap().unwrap().status,
                CertStatus::Active
            );
        }
    }
}

#[test]
fn modems_are_new_each_run_unless_stamp_serials_is_false() {
    let dir = tempfile::tempdir().unwrap();
    let stamped = StationConfig::embedded(dir.path()).write();
    run_cli(dir.path(), &stamped, "r1", 3);
    run_cli(dir.path(), &stamped, "r2", 3);
    let ledger = dir.path().join("ledger.db");
    let count = |l: &Path| Ledger::open(l, "check").unwrap().devices().unwrap().len();
    assert_eq!(count(&ledger), 6, "a second run brings new IMEIs");

    let dir = tempfile::tempdir().unwrap();
    let fixed = StationConfig::embedded(dir.path())
        .set("jigs.stamp_serials", "false")
        .write();
    run_cli(dir.path(), &fixed, "r1", 3);
    run_cli(dir.path(), &fixed, "r2", 3);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("r2/summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        summary["devices"]["total"], 0,
        "verified modems are not placed again"
    );
    assert_eq!(count(&dir.path().join("ledger.db")), 3);
}

/// A serial line of one `nrf91-at` port (security tag [`TAG`]) on `modem`.
fn line_config(dir: &Path, modem: &VirtualModem) -> Config {
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
timeout_ms = 100
[[jigs.ports]]
name = "modem-1"
path = "{p}"
driver = "nrf91-at"
sec_tag = {TAG}
[emulator]
state_dir = "{d}/emulator"
templates = "{t}"
"#,
        d = dir.display(),
        p = modem.path(),
        t = fixtures.display()
    );
    Config::parse(&text, Path::new("nrf91.toml")).unwrap()
}

/// One modem (holding `stored` before provisioning) on a pty with `faults` and
/// `modem_faults`, provisioned by `station run` in serial mode; returns the modem, the run's
/// summary and the modem's ledger row.
async fn provision_one(
    dir: &Path,
    imei: &str,
    stored: Vec<(u32, u8, Vec<u8>)>,
    faults: FaultConfig,
    modem_faults: ModemFaults,
) -> (
    VirtualModem,
    fleet_station::telemetry::summary::Summary,
    DeviceRow,
) {
    let (tx, rx) = crossbeam_channel::unbounded();
    tx.send(ModemSpec {
        imei: imei.into(),
        fw_version: "mfw_nrf9160_1.3.5".into(),
        stored,
    })
    .unwrap();
    let modem = VirtualModem::spawn(
        VirtualModemConfig {
            baud: 0,
            faults,
            modem_faults,
            ..VirtualModemConfig::default()
        },
        rx,
    )
    .unwrap();
    let cfg = line_config(dir, &modem);
    let report = station::run(
        &cfg,
        &RunOptions {
            boards: Some(1),
            report_dir: Some(dir.join(format!("report-{imei}"))),
            ..RunOptions::default()
        },
        Shutdown::new(),
    )
    .await
    .unwrap();
    let row = Ledger::open(&cfg.station.ledger, "check")
        .unwrap()
        .device(imei)
        .unwrap()
        .expect("the modem is in the ledger");
    (modem, report.summary, row)
}

/// The item of `ty` in the store of the modem on `modem`'s jig under [`TAG`].
fn item(modem: &VirtualModem, ty: u8) -> Option<Vec<u8>> {
    let imei = modem.current_board().expect("the modem is on the jig");
    modem
        .store_of(&imei)
        .unwrap_or_default()
        .into_iter()
        .find(|(t, y, _)| *t == TAG && *y == ty)
        .map(|(_, _, c)| c)
}

/// The board failed with `code` (its reason names `cause`), and is not verified.
fn assert_failed(
    summary: &fleet_station::telemetry::summary::Summary,
    row: &DeviceRow,
    code: &str,
    cause: &str,
) {
    assert_eq!(summary.devices.failed, 1, "{summary:?}");
    assert_eq!(summary.devices.provisioned, 0, "{summary:?}");
    let failures = serde_json::to_string(&summary.failures).unwrap();
    assert!(failures.contains(code), "{failures}");
    assert_eq!(row.state, DeviceState::Failed, "{row:?}");
    let reason = row.reason.clone().unwrap_or_default();
    assert!(reason.contains(cause), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modem_that_will_not_go_offline_fails_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let (modem, summary, row) = provision_one(
        dir.path(),
        IMEI,
        Vec::new(),
        FaultConfig::default(),
        ModemFaults {
            stays_online: true,
            ..ModemFaults::default()
        },
    )
    .await;
    assert_failed(&summary, &row, "modem_not_offline", "is not offline");
    assert_eq!(item(&modem, 1), None, "no certificate was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_that_exists_and_cannot_be_deleted_fails_the_board() {
    let dir = tempfile::tempdir().unwrap();
    let old = b"-----BEGIN CERTIFICATE-----\nOLD\n-----END CERTIFICATE-----\n".to_vec();
    let (modem, summary, row) = provision_one(
        dir.path(),
        IMEI,
        vec![(TAG, 1, old.clone())],
        FaultConfig::default(),
        ModemFaults {
            refuse_delete: true,
            ..ModemFaults::default()
        },
    )
    .await;
    assert_failed(
        &summary,
        &row,
        "item_exists",
        "already exists on the board on jig",
    );
    assert!(row.reason.unwrap().contains("514"));
    assert_eq!(
        item(&modem, 1),
        Some(old),
        "the old certificate is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_that_differs_from_what_was_sent_is_never_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (modem, summary, row) = provision_one(
        dir.path(),
        IMEI,
        Vec::new(),
        FaultConfig {
            flip_bit_in: Some(Slot::Certificate),
            ..FaultConfig::default()
        },
        ModemFaults::default(),
    )
    .await;
    assert_failed(
        &summary,
        &row,
        "digest_mismatch",
        "does not match what was sent",
    );
    // The modem holds a certificate, but not the one sent: written, never verified.
    assert!(item(&modem, 1).is_some());
}

/// The modem's store after a verified board: the certificate (chaining to the emulator's
/// CA, for the ledger's certificate id's thing) and the key that belongs to it, the root CA,
/// under the port's security tag; the functional mode restored.
fn assert_provisioned(dir: &Path, modem: &VirtualModem, row: &DeviceRow) {
    assert_eq!(row.state, DeviceState::Verified, "{row:?}");
    let cert_pem = item(modem, 1).expect("certificate stored");
    let key_pem = item(modem, 2).expect("key stored");
    let ca = std::fs::read(dir.join("emulator/ca.pem")).unwrap();
    assert_eq!(item(modem, 0).as_deref(), Some(ca.as_slice()));
    let der = CertificateDer::from_pem_slice(&cert_pem).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        cert.public_key().raw,
        public_key_of(&key_pem).as_slice(),
        "the stored key belongs to the stored certificate"
    );
    let registry = Registry::open(&dir.join("emulator/registry.db")).unwrap();
    let thing = registry
        .thing(&row.serial)
        .unwrap()
        .expect("thing named after the IMEI");
    assert!(
        thing
            .principals
            .contains(row.certificate_id.as_ref().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modem_that_reboots_mid_write_is_written_again_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (modem, summary, row) = provision_one(
        dir.path(),
        IMEI,
        Vec::new(),
        FaultConfig::default(),
        ModemFaults {
            // The second item (the root CA after the certificate, or the key).
            reboot_at_write: 2,
            ..ModemFaults::default()
        },
    )
    .await;
    assert_eq!(summary.devices.provisioned, 1, "{summary:?}");
    assert!(
        summary.retries >= 1,
        "the write was tried again: {summary:?}"
    );
    assert_provisioned(dir.path(), &modem, &row);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_command_line_is_recovered_and_the_board_verified() {
    let dir = tempfile::tempdir().unwrap();
    // Line 6 of the jig: a command of the write (after AT, AT+CGSN, AT+CGMR, ...).
    let (modem, summary, row) = provision_one(
        dir.path(),
        IMEI,
        Vec::new(),
        FaultConfig {
            drop_rx_at: Some(6),
            ..FaultConfig::default()
        },
        ModemFaults::default(),
    )
    .await;
    assert_eq!(summary.devices.provisioned, 1, "{summary:?}");
    assert!(
        summary.retries >= 1,
        "the lost line cost a try: {summary:?}"
    );
    assert_provisioned(dir.path(), &modem, &row);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_ca_the_modem_holds_is_not_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let (modem, summary, row) = provision_one(
        dir.path(),
        IMEI,
        Vec::new(),
        FaultConfig::default(),
        ModemFaults::default(),
    )
    .await;
    assert_provisioned(dir.path(), &modem, &row);
    assert_eq!(summary.jigs.unwrap().bytes_skipped, 0);

    // A second modem whose firmware holds the endpoint's root CA under the tag (the same
    // station state, so the same CA): AT%CMNG=1 shows its digest, and it is left out.
    let ca = std::fs::read(dir.path().join("emulator/ca.pem")).unwrap();
    let (modem2, summary2, row2) = provision_one(
        dir.path(),
        IMEI2,
        vec![(TAG, 0, ca.clone())],
        FaultConfig::default(),
        ModemFaults::default(),
    )
    .await;
    assert_provisioned(dir.path(), &modem2, &row2);
    assert_eq!(summary2.jigs.unwrap().bytes_skipped, ca.len() as u64);
}
