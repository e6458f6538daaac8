//! The provisioning engine against the emulator over real TLS sockets: many devices through
//! a pool of sessions, each journaled in the ledger; and the failures an operator must be
//! able to read.

mod common;

use std::collections::HashSet;

use common::{TestEmulator, key_pool, submit};
use fleet_station::keys::certificate_matches_key;
use fleet_station::ledger::{DeviceState, Ledger};
use fleet_station::provision::{EngineConfig, KeyPlan, Provisioner};
use fleet_station::shutdown::Shutdown;
use fleet_station::telemetry;
use rustls_pki_types::pem::PemObject;

fn engine_config(emu: &TestEmulator, sessions: usize, template: &str) -> EngineConfig {
    common::engine_config(emu, sessions, template, "thing-{serial}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisions_many_devices_over_a_session_pool() {
    let emu = TestEmulator::start().await;
    let ledger = Ledger::open(&emu.dir.path().join("ledger.db"), "test-station").unwrap();
    let (telemetry, _snap, aggregator) = telemetry::start();
    let engine = Provisioner::start(
        engine_config(&emu, 4, "FleetTemplate"),
        key_pool(),
        ledger.clone(),
        telemetry.clone(),
        Shutdown::new(),
    );
    let jobs = engine.submitter();
    let mut waits = Vec::new();
    for i in 0..40 {
        let serial = format!("SN{i:03}");
        let (_, rx) = submit(&jobs, &ledger, &serial, "jig-0", KeyPlan::Pool).await;
        waits.push((serial, rx));
    }
    let mut cert_ids = HashSet::new();
    for (serial, rx) in waits {
        let creds = rx
            .await
            .unwrap()
            .unwrap_or_else(|f| panic!("{serial}: {f}"));
        assert_eq!(creds.thing_name, format!("thing-{serial}"));
        let key = rcgen::KeyPair::from_pem(creds.private_key.as_ref().unwrap().expose()).unwrap();
        assert!(certificate_matches_key(
            &creds.certificate_pem,
            &rcgen::PublicKeyData::subject_public_key_info(&key)
        ));
        assert_eq!(
            creds.device_configuration["LocationUrl"],
            "https://example.aws"
        );
        assert!(
            cert_ids.insert(creds.certificate_id.clone()),
            "certificate issued twice"
        );
        let row = ledger.device(&serial).unwrap().unwrap();
        assert_eq!(row.state, DeviceState::Registered);
        assert_eq!(
            row.certificate_id.as_deref(),
            Some(creds.certificate_id.as_str())
        );
        let thing = emu.emulator.registry().thing(&creds.thing_name).unwrap();
        assert!(thing.principals.contains(&creds.certificate_id));
    }
    drop(jobs);
    engine.shutdown().await;
    drop(telemetry);
    let agg = aggregator.await.unwrap();
    assert_eq!(agg.histograms[&telemetry::Stage::RegisterThing].len(), 40);
    assert_eq!(agg.retries, 0);
}

#[tokio::test]
async fn a_rejection_fails_the_device_with_the_api_and_error_code() {
    let emu = TestEmulator::start().await;
    let ledger = Ledger::open(&emu.dir.path().join("ledger.db"), "t").unwrap();
    let (telemetry, _snap, _agg) = telemetry::start();
    let mut cfg = engine_config(&emu, 1, "FleetTemplate");
    // Atlantis is not in the template's LocationTable mapping.
    cfg.parameters
        .insert("DeviceLocation".into(), "Atlantis".into());
    let engine = Provisioner::start(cfg, key_pool(), ledger.clone(), telemetry, Shutdown::new());
    let (_, rx) = submit(&engine.submitter(), &ledger, "SN-X", "jig", KeyPlan::Pool).await;
    let failure = rx.await.unwrap().unwrap_err();
    assert_eq!(failure.code, "register_thing:InvalidParameters");
    assert!(
        failure.message.contains("provision/json/rejected"),
        "{}",
        failure.message
    );
    assert!(failure.message.contains("400"), "{}", failure.message);
}

#[tokio::test]
async fn an_unknown_template_is_named_in_the_failure() {
    let emu = TestEmulator::start().await;
    let ledger = Ledger::open(&emu.dir.path().join("ledger.db"), "t").unwrap();
    let (telemetry, _snap, _agg) = telemetry::start();
    let engine = Provisioner::start(
        engine_config(&emu, 1, "NoSuchTemplate"),
        key_pool(),
        ledger.clone(),
        telemetry,
        Shutdown::new(),
    );
    let (_, rx) = submit(&engine.submitter(), &ledger, "SN-Y", "jig", KeyPlan::Pool).await;
    let failure = rx.await.unwrap().unwrap_err();
    // The default claim policy allows every template's topics; the service answers 404.
    assert_eq!(failure.code, "register_thing:ResourceNotFound");
    assert!(
        failure.message.contains("NoSuchTemplate"),
        "{}",
        failure.message
    );
}

async fn provision_one(
    emu: &TestEmulator,
    cfg: EngineConfig,
    serial: &str,
    key: KeyPlan,
) -> Result<fleet_station::provision::Credentials, fleet_station::provision::DeviceFailure> {
    let ledger = Ledger::open(&emu.dir.path().join(format!("{serial}.db")), "t").unwrap();
    let (telemetry, _snap, _agg) = telemetry::start();
    let engine = Provisioner::start(cfg, key_pool(), ledger.clone(), telemetry, Shutdown::new());
    let (_, rx) = submit(&engine.submitter(), &ledger, serial, "jig", key).await;
    rx.await.unwrap()
}

#[tokio::test]
async fn mqtt5_sessions_provision_as_3_1_1_ones_do() {
    let emu = TestEmulator::start().await;
    let mut cfg = engine_config(&emu, 1, "FleetTemplate");
    cfg.mqtt_version = 5;
    let creds = provision_one(&emu, cfg, "SN-V5", KeyPlan::Pool)
        .await
        .unwrap();
    assert_eq!(creds.thing_name, "thing-SN-V5");
    assert!(emu.emulator.registry().thing("thing-SN-V5").is_some());
}

#[tokio::test]
async fn aws_made_keys_arrive_as_rsa_and_match_the_certificate() {
    let emu = TestEmulator::start().await;
    let mut cfg = engine_config(&emu, 1, "FleetTemplate");
    cfg.aws_keys = true;
    let creds = provision_one(&emu, cfg, "SN-AWS", KeyPlan::Aws)
        .await
        .unwrap();
    let key = creds.private_key.unwrap();
    assert!(key.expose().starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.expose().as_bytes()).unwrap();
    let pair = rcgen::KeyPair::from_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256).unwrap();
    assert!(certificate_matches_key(
        &creds.certificate_pem,
        &rcgen::PublicKeyData::subject_public_key_info(&pair)
    ));
    assert_eq!(creds.key_source, fleet_station::ledger::KeySource::Aws);
}

#[tokio::test]
async fn the_post_provision_check_connects_with_the_new_identity() {
    let emu = TestEmulator::start().await;
    // PySampleTemplate's policy lets the device connect.
    let mut cfg = engine_config(&emu, 1, "PySampleTemplate");
    cfg.post_provision_check = true;
    let creds = provision_one(&emu, cfg, "1", KeyPlan::Pool).await.unwrap();
    assert_eq!(creds.thing_name, "ThingPrefix_1");

    // FleetTemplate's policy (AWS's example) allows no iot:Connect: the check catches it
    // before the board leaves the jig.
    let mut cfg = engine_config(&emu, 1, "FleetTemplate");
    cfg.post_provision_check = true;
    let failure = provision_one(&emu, cfg, "SN-PC", KeyPlan::Pool)
        .await
        .unwrap_err();
    assert_eq!(failure.code, "post_check:connect");
    assert!(
        failure.message.contains("thing-SN-PC"),
        "{}",
        failure.message
    );
}
