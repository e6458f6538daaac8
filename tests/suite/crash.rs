//! Crash safety: a 300-board `station run` against a standalone emulator is killed with
//! SIGKILL again and again — early, and while RegisterThing requests are in flight (the
//! emulator answers them 100 ms late to widen the window) — and the emulator itself is killed
//! with SIGKILL twice while the line runs and started again on its port (the station rides
//! it out as an outage). Then the station is run until the line is done.
//!
//! Afterwards: every board holds exactly one verified identity; every certificate the
//! emulator issued is on a board, in the ledger's orphan list, or a never-registered one whose
//! key the orphan list names (a request whose answer was lost); every thing with two ACTIVE
//! certificates has the extra one in the orphan list marked `active` with that thing; no write
//! the emulator acknowledged was lost; and the printed cleanup of every orphan, applied to the
//! emulator's registry with AWS's rules, succeeds and removes exactly the orphans.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::common::cleanup::apply_cleanup;
use crate::common::cli::{StationConfig, count, station, wait_for};
use crate::common::{StandaloneEmulator, free_port, public_key_of};
use fleet_station::emulator::ca::certificate_id;
use fleet_station::emulator::registry::{CertStatus, Registry};
use fleet_station::jig::Flash;
use fleet_station::keys::public_key_sha256;
use fleet_station::ledger::cleanup::cleanup_plan;
use fleet_station::ledger::{DeviceState, Ledger};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

const BOARDS: usize = 300;

fn station_config(dir: &Path, emu: &StandaloneEmulator) -> PathBuf {
    StationConfig::endpoint(dir, emu)
        .set_str("station.id", "crash")
        .set("provision.sessions", "8")
        .set("provision.request_timeout_s", "3")
        .set("jigs.count", "8")
        .set("jigs.boards", &BOARDS.to_string())
        .set("jigs.baud", "115200")
        .set("jigs.stamp_serials", "false")
        .write()
}

/// The ledger's progress, read-only (the station may be writing).
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    verified: usize,
    /// Devices with a certificate and no thing yet: their RegisterThing is in flight.
    issued: usize,
    events: usize,
}

fn progress(ledger: &Path) -> Progress {
    Progress {
        verified: count(
            ledger,
            "SELECT count(*) FROM devices WHERE state = 'verified'",
        ),
        issued: count(
            ledger,
            "SELECT count(*) FROM devices WHERE state = 'certificate_issued'",
        ),
        events: count(ledger, "SELECT count(*) FROM events"),
    }
}

/// Waits until the ledger shows `until`, while the station `child` runs.
fn wait_until(child: &mut std::process::Child, ledger: &Path, until: impl Fn(Progress) -> bool) {
    wait_for(child, "the kill point", || until(progress(ledger)));
}

fn start_station(config: &Path) -> std::process::Child {
    station()
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn sigkills_of_the_station_and_the_emulator_lose_no_identity() {
    let dir = tempfile::tempdir().unwrap();
    // RegisterThing answers come 100 ms late: kills land while they are in flight.
    let mut emu = StandaloneEmulator::start_on(
        dir.path(),
        free_port(),
        "[emulator.faults]\nregister_thing_delay_ms = 100",
    );
    let config = station_config(dir.path(), &emu);
    let ledger_path = dir.path().join("ledger.db");
    let mut station_kills = 0;
    let mut emulator_kills = 0;

    // Early: the first certificates in flight.
    let mut child = start_station(&config);
    wait_until(&mut child, &ledger_path, |p| p.events >= 40);
    child.kill().unwrap();
    child.wait().unwrap();
    station_kills += 1;

    // While RegisterThing requests are in flight, at four points of the line.
    for verified in [40, 90, 140, 190] {
        let mut child = start_station(&config);
        wait_until(&mut child, &ledger_path, |p| {
            p.verified >= verified && p.issued >= 3
        });
        child.kill().unwrap();
        child.wait().unwrap();
        station_kills += 1;
    }

    // The emulator is killed twice while the station runs; it comes back on its port.
    let mut child = start_station(&config);
    for verified in [210, 235] {
        wait_until(&mut child, &ledger_path, |p| {
            p.verified >= verified && p.issued >= 2
        });
        emu.restart();
        emulator_kills += 1;
    }
    // And the station once more, late.
    wait_until(&mut child, &ledger_path, |p| {
        p.verified >= 260 && p.events % 3 == 0
    });
    child.kill().unwrap();
    child.wait().unwrap();
    station_kills += 1;

    let out = station()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Stop the emulator cleanly and read its registry.
    emu.stop();
    let ledger = Ledger::open(&ledger_path, "check").unwrap();
    let devices = ledger.devices().unwrap();
    assert_eq!(devices.len(), BOARDS);
    let registry = Registry::open_state_dir(&dir.path().join("emulator")).unwrap();

    // Every board: one verified identity, and the emulator kept what it acknowledged.
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
        assert!(
            on_boards.insert(id.clone()),
            "two boards hold one certificate"
        );
        let thing_name = d.thing_name.as_deref().unwrap();
        let thing = registry
            .thing(thing_name)
            .unwrap()
            .unwrap_or_else(|| panic!("thing {thing_name} of a verified board was lost"));
        assert!(thing.principals.contains(&id), "{thing_name}");
        let c = registry
            .certificate(&id)
            .unwrap()
            .expect("an acknowledged certificate was lost");
        assert_eq!(c.status, CertStatus::Active, "{id} of {thing_name}");
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
    let orphan_ids: HashMap<String, &fleet_station::ledger::Orphan> = orphans
        .iter()
        .filter_map(|o| o.certificate_id.clone().map(|id| (id, o)))
        .collect();
    let orphan_keys: HashSet<String> = orphans
        .iter()
        .filter(|o| o.certificate_id.is_none())
        .filter_map(|o| o.public_key_sha256.clone())
        .collect();
    assert!(
        orphan_ids.keys().all(|id| !on_boards.contains(id)),
        "a board's certificate is listed as an orphan"
    );
    let certs: Vec<_> = registry
        .certificates()
        .unwrap()
        .into_iter()
        .filter(|c| !c.claim)
        .collect();
    for c in &certs {
        if on_boards.contains(&c.id) || orphan_ids.contains_key(&c.id) {
            continue;
        }
        // A certificate whose request's answer was lost: never registered, and the ledger
        // names the key it was requested for.
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
            "pending certificate {} matches no lost request in the orphan list",
            c.id
        );
    }
    // Every orphan the ledger names by id was issued.
    for id in orphan_ids.keys() {
        assert!(
            registry.certificate(id).unwrap().is_some(),
            "orphan {id} is unknown to the emulator (an acknowledged certificate was lost)"
        );
    }

    // A thing with two active certificates has the extra one listed as an active orphan
    // with that thing.
    let mut active_per_thing: HashMap<String, Vec<String>> = HashMap::new();
    for c in certs.iter().filter(|c| c.status == CertStatus::Active) {
        for thing in &c.things {
            active_per_thing
                .entry(thing.clone())
                .or_default()
                .push(c.id.clone());
        }
    }
    let mut doubled = 0;
    for (thing, ids) in &active_per_thing {
        if ids.len() < 2 {
            continue;
        }
        doubled += 1;
        for id in ids.iter().filter(|id| !on_boards.contains(*id)) {
            let o = orphan_ids
                .get(id)
                .unwrap_or_else(|| panic!("{thing}: extra active certificate {id} is no orphan"));
            assert_eq!(o.status, "active", "{thing}: {id}");
            assert_eq!(o.thing_name.as_deref(), Some(thing.as_str()), "{id}");
        }
    }

    // The printed cleanup of every orphan succeeds and removes exactly the orphans.
    for plan in cleanup_plan(&orphans) {
        apply_cleanup(&registry, &plan.steps);
    }
    for id in orphan_ids.keys() {
        assert!(
            registry.certificate(id).unwrap().is_none(),
            "orphan {id} survived its cleanup"
        );
    }
    for d in &devices {
        let id = d.certificate_id.as_deref().unwrap();
        let c = registry.certificate(id).unwrap().unwrap();
        assert_eq!(c.status, CertStatus::Active);
        assert!(c.things.contains(d.thing_name.as_deref().unwrap()));
    }

    let by_status = |s: &str| orphans.iter().filter(|o| o.status == s).count();
    eprintln!(
        "{station_kills} station kills, {emulator_kills} emulator kills: {resumed} devices resumed; \
         {doubled} things with two active certificates; {} orphans ({} active, {} unknown, {} pending; \
         {} without a certificate id); {} certificates issued for {BOARDS} boards",
        orphans.len(),
        by_status("active"),
        by_status("unknown"),
        by_status("pending"),
        orphans
            .iter()
            .filter(|o| o.certificate_id.is_none())
            .count(),
        certs.len()
    );
}
