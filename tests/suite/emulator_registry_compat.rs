//! A registry written by fleet-station 0.1.0 (`fixtures/emulator/registry-0.1.0`, see its
//! README) opens with the current code and is served: its records read back as they were
//! written, the control plane answers from them, and an emulator started on that state
//! directory lets the provisioned device connect with its certificate, keeps the claim
//! identity working, and provisions a new device into the same registry.

use crate::common;

use std::path::{Path, PathBuf};

use crate::api_support::{claim_client, create_from_csr, p256_csr, register};
use crate::common::{RawClient, fixtures};
use fleet_station::emulator::control::{
    self, ControlError, certificate_arn, describe_certificate, list_principal_things,
};
use fleet_station::emulator::registry::{CertStatus, Registry, TokenProblem};
use fleet_station::emulator::{Emulator, EmulatorConfig};
use fleet_station::fleet::Format;
use fleet_station::provision::tls::{client_config_from_pem, read_roots};
use fleet_station::shutdown::Shutdown;

const THING: &str = "ThingPrefix_fixture-0001";

fn fixture() -> PathBuf {
    fixtures().join("emulator/registry-0.1.0")
}

fn read(name: &str) -> String {
    let path = fixture().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// A copy of the fixture's state directory (the emulator writes to its registry).
fn copy_state() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture().join("state")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn open(state_dir: &Path) -> std::sync::Arc<Registry> {
    Registry::open_state_dir(state_dir).expect("a 0.1.0 registry opens")
}

#[test]
fn the_records_of_a_0_1_0_registry_read_back_as_written() {
    let state = copy_state();
    let reg = open(state.path());
    let device = read("device-certificate-id");
    let pending = read("pending-certificate-id");

    let cert = reg
        .certificate(&device)
        .unwrap()
        .expect("the provisioned certificate");
    assert_eq!(cert.status, CertStatus::Active);
    assert_eq!(cert.things.iter().collect::<Vec<_>>(), [THING]);
    assert!(!cert.claim);
    assert_eq!(cert.pem.trim(), read("device-cert.pem"));
    let thing = reg
        .thing(THING)
        .unwrap()
        .expect("the thing RegisterThing created");
    assert!(thing.principals.contains(&device));
    assert_eq!(thing.attributes["version"], "v1");
    // PySampleTemplate's policy, named after its document's hash, is attached and stored.
    let policy_name = cert.policies.iter().next().expect("a policy is attached");
    assert!(reg.policy(policy_name).unwrap().is_some());
    assert_eq!(reg.policies_of(&device).unwrap().len(), 1);

    let claim = reg
        .certificates()
        .unwrap()
        .into_iter()
        .filter(|c| c.claim)
        .map(|c| (c.status, c.policies))
        .collect::<Vec<_>>();
    assert_eq!(claim.len(), 1, "one claim certificate");
    assert_eq!(claim[0].0, CertStatus::Active);
    assert!(claim[0].1.contains("FleetStationClaimPolicy"));

    let p = reg
        .certificate(&pending)
        .unwrap()
        .expect("the unregistered certificate");
    assert_eq!(p.status, CertStatus::PendingActivation);
    assert!(p.things.is_empty());

    // Tokens are stored by their hash: the tokens themselves still find their records.
    let mut txn = reg.txn();
    assert_eq!(
        txn.check_token(&read("device-token"), 0).unwrap(),
        Err(TokenProblem::AlreadyUsed)
    );
    let rec = txn
        .check_token(&read("pending-token"), 0)
        .unwrap()
        .expect("the unused token redeems before its expiry");
    assert_eq!(rec.certificate_id, pending);
    assert_eq!(
        txn.check_token(&read("pending-token"), rec.expires_ms)
            .unwrap(),
        Err(TokenProblem::Expired)
    );
    assert_eq!(
        txn.check_token("not a token", 0).unwrap(),
        Err(TokenProblem::Unknown)
    );
    drop(txn);
    reg.close();
}

#[test]
fn the_control_plane_answers_from_a_0_1_0_registry() {
    let state = copy_state();
    let reg = open(state.path());
    let device = read("device-certificate-id");
    let pending = read("pending-certificate-id");

    let d = describe_certificate(&reg, &device).unwrap();
    assert_eq!(d.status, CertStatus::Active);
    assert_eq!(d.certificate_arn, certificate_arn(&device));
    assert_eq!(
        list_principal_things(&reg, &certificate_arn(&device)).unwrap(),
        [THING]
    );
    // An active certificate cannot be deleted; the unregistered one, once inactive, can.
    assert!(matches!(
        control::delete_certificate(&reg, &device, false),
        Err(ControlError::CertificateStateException(_))
    ));
    control::update_certificate(&reg, &pending, CertStatus::Inactive).unwrap();
    control::delete_certificate(&reg, &pending, false).unwrap();
    assert!(reg.certificate(&pending).unwrap().is_none());
    reg.close();

    // The changes were written to the old file and read back.
    let reg = open(state.path());
    assert!(reg.certificate(&pending).unwrap().is_none());
    assert_eq!(
        reg.certificate(&device).unwrap().unwrap().status,
        CertStatus::Active
    );
    reg.close();
}

#[tokio::test]
async fn an_emulator_on_a_0_1_0_state_directory_serves_its_devices_and_provisions_more() {
    let state = copy_state();
    let cfg = EmulatorConfig {
        listen: "127.0.0.1:0".into(),
        state_dir: state.path().to_path_buf(),
        templates: fixtures().join("templates"),
        ..EmulatorConfig::default()
    };
    let shutdown = Shutdown::new();
    let emulator = Emulator::start(&cfg, shutdown.clone()).await.unwrap();
    let emu = common::TestEmulator {
        emulator,
        dir: tempfile::tempdir().unwrap(),
        shutdown,
    };
    // The CA is the fixture's: it was loaded, not made anew.
    assert_eq!(
        std::fs::read_to_string(&emu.emulator.paths().ca_cert).unwrap(),
        std::fs::read_to_string(fixture().join("state/ca.pem")).unwrap()
    );

    // The provisioned device connects with the certificate it got from 0.1.0, under the
    // policy attached then.
    let roots = read_roots(&emu.emulator.paths().ca_cert).unwrap();
    let tls = client_config_from_pem(
        roots,
        read("device-cert.pem").as_bytes(),
        read("device-key.pem").as_bytes(),
        false,
    )
    .unwrap();
    let mut device = RawClient::connect(emu.port(), THING, std::sync::Arc::new(tls));
    device.connected().await;
    let codes = device
        .subscribe(&["devices/fixture-0001/#".to_string()])
        .await;
    assert!(
        matches!(codes[..], [rumqttc::SubscribeReasonCode::Success(_)]),
        "{codes:?}"
    );

    // The claim identity of 0.1.0 still provisions, into the same registry.
    let mut claim = claim_client(&emu, "compat-claim", &["PySampleTemplate"]).await;
    let (_key, csr) = p256_csr();
    let cert = create_from_csr(&mut claim, Format::Json, &csr)
        .await
        .unwrap();
    let thing = register(
        &mut claim,
        "PySampleTemplate",
        Format::Json,
        cert.certificate_ownership_token.expose(),
        &[
            ("SerialNumber", "fixture-0002"),
            ("DeviceLocation", "Seattle"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        thing.thing_name.as_deref(),
        Some("ThingPrefix_fixture-0002")
    );
    let reg = emu.emulator.registry();
    assert_eq!(
        reg.certificate(&cert.certificate_id)
            .unwrap()
            .unwrap()
            .status,
        CertStatus::Active
    );
    assert_eq!(
        reg.certificate(&read("device-certificate-id"))
            .unwrap()
            .unwrap()
            .status,
        CertStatus::Active
    );
}
