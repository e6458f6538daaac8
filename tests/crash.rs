//! Crash safety: `station run` is killed with SIGKILL at several points of a 300-board run
//! against a standalone emulator (which survives, as AWS would), then restarted until the
//! line is done. Afterwards every board holds exactly one verified identity, and every
//! certificate the emulator ever issued is on a board or in the ledger's orphan list.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::StandaloneEmulator;
use fleet_station::emulator::ca::certificate_id;
use fleet_station::emulator::registry::{CertStatus, Registry};
use fleet_station::jig::Flash;
use fleet_station::keys::public_key_sha256;
use fleet_station::ledger::{DeviceState, Ledger};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

const BOARDS: usize = 300;

fn station() -> Command {
    Command::new(env!("CARGO_BIN_EXE_station"))
}

fn station_config(dir: &Path, emu: &StandaloneEmulator) -> PathBuf {
    let path = dir.join("station.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[station]
id = "crash"
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
[parameters]
ThingName = "{{serial}}"
SerialNumber = "{{serial}}"
DeviceLocation = "Seattle"
[jigs]
count = 8
boards = {BOARDS}
baud = 115200
stamp_serials = false
flash_dir = "{d}/boards"
"#,
            d = dir.display(),
            port = emu.port,
            cert = emu.cert.display(),
            key = emu.key.display(),
            ca = emu.ca.display(),
        ),
    )
    .unwrap();
    path
}

/// Counts rows of the ledger by state, read-only (the station may be writing).
fn progress(ledger: &Path) -> (usize, usize) {
    let Ok(c) =
        rusqlite::Connection::open_with_flags(ledger, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return (0, 0);
    };
    let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0) as usize;
    (
        count("SELECT count(*) FROM devices WHERE state = 'verified'"),
        count("SELECT count(*) FROM events"),
    )
}

/// Runs the station until `kill_when` says so, then SIGKILLs it.
fn run_and_kill(config: &Path, ledger: &Path, kill_when: impl Fn((usize, usize)) -> bool) {
    let mut child = station()
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if kill_when(progress(ledger)) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the station finished before the kill point"
        );
        assert!(
            Instant::now() < deadline,
            "the kill point was never reached"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn public_key_of(key_pem: &[u8]) -> Vec<u8> {
    let key = PrivateKeyDer::from_pem_slice(key_pem).unwrap();
    rcgen::PublicKeyData::subject_public_key_info(&rcgen::KeyPair::try_from(&key).unwrap())
}

#[test]
fn sigkill_at_several_points_loses_no_identity() {
    let dir = tempfile::tempdir().unwrap();
    let emu = StandaloneEmulator::start(dir.path(), "");
    let config = station_config(dir.path(), &emu);
    let ledger_path = dir.path().join("ledger.db");

    // Early (first certificates in flight), mid-line, and late.
    run_and_kill(&config, &ledger_path, |(_, events)| events >= 40);
    run_and_kill(&config, &ledger_path, |(verified, _)| verified >= 120);
    run_and_kill(&config, &ledger_path, |(verified, events)| {
        verified >= 220 && events % 3 == 0
    });

    let out = station()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Stop the emulator cleanly so its registry is on disk.
    emu.stop();

    let ledger = Ledger::open(&ledger_path, "check").unwrap();
    let devices = ledger.devices().unwrap();
    assert_eq!(devices.len(), BOARDS);
    let mut on_boards = HashSet::new();
    for d in &devices {
        assert_eq!(d.state, DeviceState::Verified, "{d:?}");
        let flash = Flash::load(&Flash::path_for(&dir.path().join("boards"), &d.serial)).unwrap();
        let der = CertificateDer::from_pem_slice(flash.certificate().unwrap()).unwrap();
        let id = certificate_id(&der);
        assert_eq!(
            d.certificate_id.as_deref(),
            Some(id.as_str()),
            "{}",
            d.serial
        );
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            public_key_of(flash.private_key().unwrap()).as_slice()
        );
        assert!(on_boards.insert(id), "two boards hold one certificate");
    }

    // The kills really interrupted devices: some resumed where they had stopped.
    let resumed = devices
        .iter()
        .filter(|d| {
            ledger
                .events(d.id)
                .unwrap()
                .iter()
                .any(|e| e.0 == "resumed")
        })
        .count();
    assert!(resumed >= 1, "no device was interrupted by the kills");

    let orphans = ledger.orphans().unwrap();
    eprintln!(
        "{resumed} devices resumed after a kill; {} orphans",
        orphans.len()
    );
    let orphan_ids: HashSet<String> = orphans
        .iter()
        .filter_map(|o| o.certificate_id.clone())
        .collect();
    let orphan_keys: HashSet<String> = orphans
        .iter()
        .filter(|o| o.certificate_id.is_none())
        .filter_map(|o| o.public_key_sha256.clone())
        .collect();
    let registry = Registry::open(&dir.path().join("emulator/registry.db")).unwrap();
    let certs: Vec<_> = registry.read(|s| {
        s.certificates
            .values()
            .filter(|c| !c.claim)
            .cloned()
            .collect()
    });
    let mut active_per_thing: HashMap<String, usize> = HashMap::new();
    for c in &certs {
        if on_boards.contains(&c.id) {
            continue;
        }
        if orphan_ids.contains(&c.id) {
            continue;
        }
        // A certificate whose request was in flight at a kill: never registered, and the
        // ledger names the key it was requested for.
        let der = CertificateDer::from_pem_slice(c.pem.as_bytes()).unwrap();
        let (_, x) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            c.status,
            CertStatus::PendingActivation,
            "{} is neither on a board nor an orphan",
            c.id
        );
        assert!(
            orphan_keys.contains(&public_key_sha256(x.public_key().raw)),
            "pending certificate {} matches no in-flight request in the orphan list",
            c.id
        );
    }
    for c in certs.iter().filter(|c| c.status == CertStatus::Active) {
        for thing in &c.things {
            *active_per_thing.entry(thing.clone()).or_default() += 1;
        }
    }
    // No board was provisioned twice: a thing with two active certificates has the extra
    // one in the orphan list.
    for (thing, n) in active_per_thing {
        if n > 1 {
            let extra: Vec<_> = certs
                .iter()
                .filter(|c| {
                    c.status == CertStatus::Active
                        && c.things.contains(&thing)
                        && !on_boards.contains(&c.id)
                })
                .collect();
            assert_eq!(extra.len(), n - 1, "{thing}");
            assert!(extra.iter().all(|c| orphan_ids.contains(&c.id)), "{thing}");
        }
    }
}
