//! The `zephyr-cred` driver end to end: the station against emulated Zephyr boards (the
//! TLS-credentials shell on real ptys, paced at the baud rate), through the CLI for a line of
//! 50 boards and through the library on a serial-mode port for what each board then holds,
//! the failures (a credential buffer too small, a digest that does not match) and the ledger
//! after them. The driver on its own: a dropped line resent, a reboot mid-write, the volatile
//! backend's warning, and the shell's RX ring overflowing for a host that does not wait.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::cli::{StationConfig, count, station, succeeded};
use fleet_station::config::Config;
use fleet_station::emulator::registry::{CertStatus, Registry};
use fleet_station::jig::{
    CsrSubject, DriverKind, FaultConfig, JigDriver, JigError, PortSettings, Slot, SlotWrite,
    VirtualZephyr, VirtualZephyrConfig, ZephyrCred, ZephyrOptions, ZephyrSpec,
};
use fleet_station::ledger::{DeviceState, Ledger};
use fleet_station::shutdown::Shutdown;
use fleet_station::station::{self, RunOptions};

/// `station run --boards <boards> --jigs 4 --driver zephyr-cred` with `config`, reports in
/// `dir/<report>`; returns summary.json.
fn run_cli(dir: &Path, config: &Path, report: &str, boards: usize) -> serde_json::Value {
    let out = station()
        .args(["run", "--boards", &boards.to_string(), "--jigs", "4"])
        .args(["--driver", "zephyr-cred", "--headless", "--config"])
        .arg(config)
        .arg("--report-dir")
        .arg(dir.join(report))
        .output()
        .unwrap();
    succeeded(&out);
    serde_json::from_slice(&std::fs::read(dir.join(report).join("summary.json")).unwrap()).unwrap()
}

/// 50 boards on 4 jigs through `station run --driver zephyr-cred`, station-made keys: every
/// board verified, identified by its `hwinfo devid`, its thing named after it and its
/// certificate active in the emulator's registry.
#[test]
fn station_run_provisions_fifty_zephyr_boards_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let config = StationConfig::embedded(dir.path())
        .set("jigs.baud", "921600")
        .write();
    let summary = run_cli(dir.path(), &config, "r", 50);
    assert_eq!(summary["devices"]["provisioned"], 50, "{summary}");
    assert_eq!(summary["devices"]["failed"], 0, "{summary}");
    assert_eq!(summary["jigs"]["failed_boards"], 0);
    assert!(
        summary["jigs"]["per_jig"]
            .as_object()
            .unwrap()
            .contains_key("vzephyr-1")
    );
    let db = dir.path().join("ledger.db");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM devices WHERE state = 'verified' AND key_source = 'pool'"
        ),
        50
    );
    let registry = Registry::open(&dir.path().join("emulator/registry.db")).unwrap();
    let devices = Ledger::open(&db, "check").unwrap().devices().unwrap();
    assert_eq!(devices.len(), 50);
    for d in devices {
        // Device ids: 16 hex digits, the `hwinfo devid` of each virtual board.
        assert!(
            d.serial.len() == 16
                && d.serial.starts_with("f5")
                && d.serial.bytes().all(|b| b.is_ascii_hexdigit()),
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

/// Device ids are new each run; with `jigs.stamp_serials = false` they are the same, and the
/// boards the ledger shows verified are not placed again.
#[test]
fn device_ids_are_new_each_run_unless_stamp_serials_is_false() {
    let dir = tempfile::tempdir().unwrap();
    let stamped = StationConfig::embedded(dir.path()).write();
    run_cli(dir.path(), &stamped, "r1", 3);
    run_cli(dir.path(), &stamped, "r2", 3);
    let count = |l: &Path| Ledger::open(l, "check").unwrap().devices().unwrap().len();
    assert_eq!(
        count(&dir.path().join("ledger.db")),
        6,
        "new ids in the second run"
    );

    let dir = tempfile::tempdir().unwrap();
    let fixed = StationConfig::embedded(dir.path())
        .set("jigs.stamp_serials", "false")
        .write();
    run_cli(dir.path(), &fixed, "r1", 3);
    let summary = run_cli(dir.path(), &fixed, "r2", 3);
    assert_eq!(
        summary["devices"]["total"], 0,
        "verified boards are not placed again"
    );
    assert_eq!(count(&dir.path().join("ledger.db")), 3);
}

/// Board-made keys with zephyr-cred are refused before anything starts.
#[test]
fn device_made_keys_with_zephyr_cred_are_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = StationConfig::embedded(dir.path())
        .set_str("keys.source", "device")
        .write();
    let out = station()
        .args([
            "run",
            "--boards",
            "1",
            "--driver",
            "zephyr-cred",
            "--headless",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot make a key or a CSR"), "{stderr}");
    assert!(stderr.contains("keys.source = \"pool\""), "{stderr}");
}

/// A station config with serial-mode ports `z-1`, `z-2`, … at `paths`, driver zephyr-cred,
/// each with the lines `port_extra`.
fn serial_config(dir: &Path, paths: &[&str], port_extra: &str) -> Config {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/templates");
    let ports: String = paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            format!(
                "[[jigs.ports]]\nname = \"z-{}\"\npath = \"{path}\"\nbaud = 115200\ndriver = \"zephyr-cred\"\n{port_extra}\n",
                i + 1
            )
        })
        .collect();
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
timeout_ms = 200
{ports}
[emulator]
state_dir = "{d}/emulator"
templates = "{t}"
"#,
        d = dir.display(),
        t = fixtures.display()
    );
    Config::parse(&text, Path::new("zephyr.toml")).unwrap()
}

/// Runs the line until `boards` boards are done (verified or failed).
fn run_line(cfg: &Config, dir: &Path, boards: usize) -> station::RunReport {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(station::run(
            cfg,
            &RunOptions {
                boards: Some(boards),
                report_dir: Some(dir.join("report")),
                ..RunOptions::default()
            },
            Shutdown::new(),
        ))
        .unwrap()
}

/// A Zephyr jig at 115200 baud serving `specs`, with `faults`.
fn zephyr_jig(specs: Vec<ZephyrSpec>, faults: FaultConfig) -> VirtualZephyr {
    let (tx, rx) = crossbeam_channel::unbounded();
    for s in specs {
        tx.send(s).unwrap();
    }
    VirtualZephyr::spawn(
        VirtualZephyrConfig {
            baud: 115_200,
            faults,
            ..VirtualZephyrConfig::default()
        },
        rx,
    )
    .unwrap()
}

fn sha_item(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.push(0);
    v
}

/// The ledger's events of `serial`, oldest first.
fn events(db: &Path, serial: &str) -> Vec<String> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut q = c
        .prepare(
            "SELECT e.state FROM events e JOIN devices d ON d.id = e.device_id \
             WHERE d.serial = ?1 ORDER BY e.id",
        )
        .unwrap();
    q.query_map([serial], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// On a serial-mode port: each board ends with the root CA, its certificate and its key under
/// the default tag, stored NUL-terminated as `cred add … bint|strt` stores them; the
/// ledger's certificate is the one the board holds; the device configuration and thing name
/// are not written (the store has no place for them).
#[test]
fn each_board_holds_its_credentials_under_the_tag_and_the_ledger_says_verified() {
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<ZephyrSpec> = (1..=3u8)
        .map(|i| ZephyrSpec::new(&[0xaa, 0, 0, 0, 0, 0, 0, i]))
        .collect();
    let serials: Vec<String> = specs.iter().map(ZephyrSpec::serial).collect();
    // The first board runs an old shell without `cred buf load`: it gets base64 chunks.
    let mut specs = specs;
    specs[0].buf_load = false;
    // One board a jig: on a serial line the operator, not the station, takes a finished
    // board off.
    let jigs: Vec<VirtualZephyr> = specs
        .into_iter()
        .map(|s| zephyr_jig(vec![s], FaultConfig::default()))
        .collect();
    let paths: Vec<&str> = jigs.iter().map(VirtualZephyr::path).collect();
    let cfg = serial_config(dir.path(), &paths, "");
    let report = run_line(&cfg, dir.path(), 3);
    assert!(report.all_provisioned(), "{:?}", report.summary);
    let ledger = Ledger::open(&cfg.station.ledger, "check").unwrap();
    for (serial, jig) in serials.iter().zip(&jigs) {
        let row = ledger.device(serial).unwrap().unwrap();
        assert_eq!(row.state, DeviceState::Verified, "{serial}");
        let creds = jig.credentials(serial);
        let types: Vec<(u32, &str)> = creds.iter().map(|(t, y, _)| (*t, *y)).collect();
        assert_eq!(
            types,
            [(16842753, "CA"), (16842753, "SERV"), (16842753, "PK")],
            "{serial}"
        );
        for (_, _, stored) in &creds {
            assert_eq!(stored.last(), Some(&0), "stored NUL-terminated");
            assert!(stored.starts_with(b"-----BEGIN "));
        }
        let cert = creds.iter().find(|(_, y, _)| *y == "SERV").unwrap();
        let c = rusqlite::Connection::open_with_flags(
            &cfg.station.ledger,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let pem: String = c
            .query_row(
                "SELECT certificate_pem FROM devices WHERE serial = ?1",
                [serial],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(cert.2, sha_item(pem.as_bytes()), "{serial}");
    }
}

/// A board built with a credential buffer too small for its certificate: the board fails
/// with `cred_buffer_too_small` naming the Kconfig option, after the retry, and the ledger
/// never records it verified.
#[test]
fn a_credential_buffer_too_small_fails_the_board_with_the_kconfig_to_raise() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = ZephyrSpec::new(&[0xbb, 0, 0, 0, 0, 0, 0, 1]);
    spec.cred_buf_size = 400;
    let serial = spec.serial();
    let jig = zephyr_jig(vec![spec], FaultConfig::default());
    let cfg = serial_config(dir.path(), &[jig.path()], "");
    let report = run_line(&cfg, dir.path(), 1);
    assert_eq!(report.summary.devices.failed, 1, "{:?}", report.summary);
    let ledger = Ledger::open(&cfg.station.ledger, "check").unwrap();
    let row = ledger.device(&serial).unwrap().unwrap();
    assert_eq!(row.state, DeviceState::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(reason.contains("cred_buffer_too_small"), "{reason}");
    assert!(
        reason.contains("Increase CONFIG_TLS_CREDENTIALS_SHELL_CRED_BUF_SIZE"),
        "{reason}"
    );
    let ev = events(&cfg.station.ledger, &serial);
    assert!(!ev.iter().any(|e| e == "verified"), "{ev:?}");
}

/// A board whose storage flips a bit of the certificate: `cred list` shows another digest,
/// the board fails with `digest_mismatch` (written, never verified).
#[test]
fn a_digest_mismatch_by_fault_injection_fails_the_board_unverified() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ZephyrSpec::new(&[0xcc, 0, 0, 0, 0, 0, 0, 1]);
    let serial = spec.serial();
    let jig = zephyr_jig(
        vec![spec],
        FaultConfig {
            flip_bit_in: Some(Slot::Certificate),
            ..FaultConfig::default()
        },
    );
    // Chunks this time (and a port option set): the same verdict whatever the transfer.
    let cfg = serial_config(dir.path(), &[jig.path()], "buf_load = false\nchunk = 64");
    let report = run_line(&cfg, dir.path(), 1);
    assert_eq!(report.summary.devices.failed, 1, "{:?}", report.summary);
    let ledger = Ledger::open(&cfg.station.ledger, "check").unwrap();
    let row = ledger.device(&serial).unwrap().unwrap();
    assert_eq!(row.state, DeviceState::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(reason.contains("digest_mismatch"), "{reason}");
    assert!(reason.contains("slot certificate"), "{reason}");
    let ev = events(&cfg.station.ledger, &serial);
    assert!(ev.iter().any(|e| e == "written"), "{ev:?}");
    assert!(!ev.iter().any(|e| e == "verified"), "{ev:?}");
}

fn settings() -> PortSettings {
    PortSettings {
        timeout: Duration::from_millis(200),
        ..PortSettings::default()
    }
}

const CERT: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQk9BUkQtQ0VSVA==\n-----END CERTIFICATE-----\n";
const KEY: &[u8] = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEH\n-----END PRIVATE KEY-----\n";
const CA: &[u8] =
    b"-----BEGIN CERTIFICATE-----\nMIIBQ0EtUk9PVC1DQS1GT1ItVEVTVFM=\n-----END CERTIFICATE-----\n";

fn items() -> Vec<SlotWrite<'static>> {
    vec![
        SlotWrite {
            slot: Slot::Certificate,
            data: CERT,
        },
        SlotWrite {
            slot: Slot::RootCa,
            data: CA,
        },
        SlotWrite {
            slot: Slot::ThingName,
            data: b"thing",
        },
        SlotWrite {
            slot: Slot::PrivateKey,
            data: KEY,
        },
    ]
}

fn driver(jig: &VirtualZephyr, options: ZephyrOptions) -> ZephyrCred {
    let mut d = ZephyrCred::open(jig.path(), &settings(), options).unwrap();
    // Wait (bounded) for the board to be placed and answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match d.identify() {
            Ok(_) => return d,
            Err(JigError::NoBoard { .. }) if Instant::now() < deadline => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// Identity, held items and a write through the driver alone; the thing name is not written.
#[test]
fn the_driver_identifies_skips_what_is_held_and_writes_the_rest() {
    let spec = ZephyrSpec::new(&[1, 2, 3, 4, 5, 6, 7, 8]).with_root_ca(16842753, CA);
    let jig = zephyr_jig(vec![spec], FaultConfig::default());
    let mut d = ZephyrCred::open(jig.path(), &settings(), ZephyrOptions::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        match d.identify() {
            Ok(id) => break id,
            Err(JigError::NoBoard { .. }) if Instant::now() < deadline => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(id.serial, "0102030405060708");
    assert_eq!(id.fw_version, "4.1.0");
    assert_eq!(d.kind(), DriverKind::ZephyrCred);
    // The root CA is baked in: held; the certificate is not.
    assert_eq!(d.held(&items()).unwrap(), [Slot::RootCa]);
    let all = items();
    let to_write: Vec<SlotWrite<'_>> = all
        .iter()
        .filter(|i| i.slot != Slot::RootCa)
        .map(|i| SlotWrite {
            slot: i.slot,
            data: i.data,
        })
        .collect();
    let mut seen = Vec::new();
    let w = d
        .write_and_verify(&to_write, &mut |done, total| seen.push((done, total)))
        .unwrap();
    assert_eq!(w.bytes, CERT.len() + KEY.len());
    assert_eq!(seen.last(), Some(&(w.bytes, w.bytes)));
    let creds = jig.credentials("0102030405060708");
    assert_eq!(creds.len(), 3);
    assert!(
        creds
            .iter()
            .any(|(_, y, v)| *y == "PK" && *v == sha_item(KEY))
    );
    assert!(!d.volatile_store());
    assert!(matches!(
        d.gen_csr(&CsrSubject {
            common_name: "x".into(),
            organization: String::new(),
            organizational_unit: String::new(),
            country: String::new(),
            serial_number: "x".into(),
        }),
        Err(JigError::NoGenCsr { .. })
    ));
}

/// A line lost on the wire (no echo at all) is sent again; a board that reboots mid-write
/// fails that write (`board_rebooted`), and the next write deletes what survived and ends
/// verified.
#[test]
fn a_dropped_line_is_resent_and_a_reboot_mid_write_is_reported_then_rewritten() {
    let spec = ZephyrSpec::new(&[9, 9, 9, 9, 0, 0, 0, 1]);
    let jig = zephyr_jig(vec![spec], FaultConfig::default());
    let mut d = driver(&jig, ZephyrOptions::default());
    jig.set_faults(FaultConfig {
        drop_rx_at: Some(2),
        ..FaultConfig::default()
    });
    d.write_and_verify(&items(), &mut |_, _| {}).unwrap();
    assert!(d.retransmissions() >= 1);
    assert_eq!(jig.stats().faults_injected, 1);
    // Lines from here: list (0), del CA (1), buf load (2), raw + ^C (3), add (4), del SERV (5) …
    jig.set_faults(FaultConfig {
        reboot_at: Some(5),
        ..FaultConfig::default()
    });
    let e = d.write_and_verify(&items(), &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, JigError::BoardRebooted { .. }), "{e}");
    d.write_and_verify(&items(), &mut |_, _| {}).unwrap();
    assert_eq!(jig.stats().reboots, 1);
}

/// A volatile backend says so when a credential is added; the driver reports it.
#[test]
fn the_volatile_backend_is_noticed() {
    let mut spec = ZephyrSpec::new(&[7, 7, 7, 7, 0, 0, 0, 1]);
    spec.volatile = true;
    let jig = zephyr_jig(vec![spec], FaultConfig::default());
    let mut d = driver(&jig, ZephyrOptions::default());
    d.write_and_verify(&items(), &mut |_, _| {}).unwrap();
    assert!(d.volatile_store());
}

/// A host that sends `cred buf` lines without waiting for `Stored` overruns the shell's
/// 64-byte RX ring: characters are lost and the board logs it.
#[test]
fn lines_sent_ahead_overrun_the_shell_rx_ring() {
    let spec = ZephyrSpec::new(&[5, 5, 5, 5, 0, 0, 0, 1]);
    let jig = zephyr_jig(vec![spec], FaultConfig::default());
    drop(driver(&jig, ZephyrOptions::default()));
    let mut port = serialport::new(jig.path(), 115_200)
        .timeout(Duration::from_millis(50))
        .open()
        .unwrap();
    let line = format!("cred buf {}\r", "QUJD".repeat(12));
    port.write_all(line.repeat(12).as_bytes()).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains("RX ring buffer full.") {
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&got)
        );
        let mut buf = [0u8; 512];
        if let Ok(n) = port.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(jig.stats().rx_overrun_bytes > 0);
}
