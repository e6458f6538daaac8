//! The provisioning engine against the emulator over real TLS sockets: many devices through
//! a pool of sessions, each journaled in the ledger; the failures an operator must be able
//! to read; and the configuration problems that stop the line after one certificate instead
//! of failing every board.

use crate::common;

use std::collections::HashSet;

use crate::common::{TestEmulator, failure, key_pool, start_engine, submit, submit_board};
use fleet_station::Error;
use fleet_station::fleet::ApiKind;
use fleet_station::keys::certificate_matches_key;
use fleet_station::ledger::{DeviceState, Ledger};
use fleet_station::provision::health::LineError;
use fleet_station::provision::{BoardIdentity, EngineConfig, FailureCode, KeyPlan, NotProvisioned};
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
    let (engine, _halt) = start_engine(
        engine_config(&emu, 4, "FleetTemplate"),
        key_pool(),
        &ledger,
        telemetry.clone(),
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
        let thing = emu
            .emulator
            .registry()
            .thing(&creds.thing_name)
            .unwrap()
            .unwrap();
        assert!(thing.principals.contains(&creds.certificate_id));
    }
    drop(jobs);
    engine.shutdown().await;
    drop(telemetry);
    let agg = aggregator.await.unwrap();
    assert_eq!(agg.histograms[&telemetry::Stage::RegisterThing].len(), 40);
    assert_eq!(agg.retries, 0);
}

/// Certificates the emulator issued (claim certificate aside).
fn issued(emu: &TestEmulator) -> usize {
    common::issued_certificates(emu.emulator.registry())
}

#[tokio::test]
async fn once_a_device_got_through_a_rejection_fails_only_its_device() {
    let emu = TestEmulator::start().await;
    let ledger = Ledger::open(&emu.dir.path().join("ledger.db"), "t").unwrap();
    let (telemetry, _snap, _agg) = telemetry::start();
    let mut cfg = engine_config(&emu, 1, "FleetTemplate");
    // Each board reports its location as its hardware revision.
    cfg.parameters
        .insert("DeviceLocation".into(), "{hw_rev}".into());
    let (engine, halt) = start_engine(cfg, key_pool(), &ledger, telemetry);
    let board = |serial: &str, location: &str| BoardIdentity {
        serial: serial.into(),
        jig: "jig".into(),
        hw_rev: Some(location.into()),
        ..Default::default()
    };
    let (_, rx) = submit_board(
        &engine.submitter(),
        &ledger,
        board("SN-OK", "Seattle"),
        KeyPlan::Pool,
    )
    .await;
    rx.await.unwrap().unwrap();
    // Atlantis is not in the template's LocationTable mapping.
    let (_, rx) = submit_board(
        &engine.submitter(),
        &ledger,
        board("SN-X", "Atlantis"),
        KeyPlan::Pool,
    )
    .await;
    let failure = failure(rx.await.unwrap());
    assert_eq!(
        failure.code,
        FailureCode::Rejected {
            api: ApiKind::RegisterThing,
            error_code: "InvalidParameters".into()
        }
    );
    assert!(
        failure.message.contains("provision/json/rejected"),
        "{}",
        failure.message
    );
    assert!(failure.message.contains("400"), "{}", failure.message);
    assert!(
        !halt.is_raised(),
        "one board's problem does not stop the line"
    );
}

#[tokio::test]
async fn a_rejection_before_any_device_got_through_stops_the_line_after_one_certificate() {
    let emu = TestEmulator::start().await;
    let ledger = Ledger::open(&emu.dir.path().join("ledger.db"), "t").unwrap();
    let (telemetry, _snap, _agg) = telemetry::start();
    let mut cfg = engine_config(&emu, 4, "FleetTemplate");
    cfg.parameters
        .insert("DeviceLocation".into(), "Atlantis".into());
    let (engine, halt) = start_engine(cfg, key_pool(), &ledger, telemetry);
    let mut waits = Vec::new();
    for i in 0..8 {
        waits.push(
            submit(
                &engine.submitter(),
                &ledger,
                &format!("SN-{i}"),
                "jig",
                KeyPlan::Pool,
            )
            .await,
        );
    }
    for (_, rx) in waits {
        // Interrupted, or never taken by the stopped engine.
        if let Ok(r) = rx.await {
            assert_eq!(r.unwrap_err(), NotProvisioned::Interrupted);
        }
    }
    let Some(Error::Line(LineError::FirstDeviceRejected { message, .. })) = halt.take() else {
        panic!("the line was not stopped for the first device's rejection");
    };
    assert!(
        message.contains("InvalidParameters") && message.contains("Atlantis"),
        "{message}"
    );
    // Four sessions, eight boards, one certificate.
    assert_eq!(issued(&emu), 1);
    // The device that got it keeps it: it resumes once the configuration is fixed.
    let with_certificate: Vec<_> = ledger
        .devices()
        .unwrap()
        .into_iter()
        .filter(|d| d.state == DeviceState::CertificateIssued)
        .collect();
    assert_eq!(with_certificate.len(), 1);
    assert!(ledger.orphans().unwrap().is_empty());
}

#[tokio::test]
async fn an_unknown_template_stops_the_line_with_its_name() {
    let emu = TestEmulator::start().await;
    let ledger = Ledger::open(&emu.dir.path().join("ledger.db"), "t").unwrap();
    let (telemetry, _snap, _agg) = telemetry::start();
    let (engine, halt) = start_engine(
        engine_config(&emu, 2, "NoSuchTemplate"),
        key_pool(),
        &ledger,
        telemetry,
    );
    let (_, a) = submit(&engine.submitter(), &ledger, "SN-Y", "jig", KeyPlan::Pool).await;
    assert_eq!(a.await.unwrap().unwrap_err(), NotProvisioned::Interrupted);
    // The default claim policy allows every template's topics; the service answers 404.
    let Some(Error::Line(e @ LineError::TemplateNotFound { .. })) = halt.take() else {
        panic!("the line was not stopped for the missing template");
    };
    assert!(e.to_string().contains("NoSuchTemplate"), "{e}");
    assert_eq!(issued(&emu), 1);
}

async fn provision_one(
    emu: &TestEmulator,
    cfg: EngineConfig,
    serial: &str,
    key: KeyPlan,
) -> Result<fleet_station::provision::Credentials, NotProvisioned> {
    let ledger = Ledger::open(&emu.dir.path().join(format!("{serial}.db")), "t").unwrap();
    let (telemetry, _snap, _agg) = telemetry::start();
    let (engine, _halt) = start_engine(cfg, key_pool(), &ledger, telemetry);
    let (_, rx) = submit(&engine.submitter(), &ledger, serial, "jig", key).await;
    rx.await.unwrap()
}

#[tokio::test]
async fn mqtt5_sessions_provision_as_3_1_1_ones_do() {
    let emu = TestEmulator::start().await;
    let mut cfg = engine_config(&emu, 1, "FleetTemplate");
    cfg.mqtt_version = fleet_station::fleet::MqttVersion::V5;
    let creds = provision_one(&emu, cfg, "SN-V5", KeyPlan::Pool)
        .await
        .unwrap();
    assert_eq!(creds.thing_name, "thing-SN-V5");
    assert!(
        emu.emulator
            .registry()
            .thing("thing-SN-V5")
            .unwrap()
            .is_some()
    );
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
    let failure = failure(provision_one(&emu, cfg, "SN-PC", KeyPlan::Pool).await);
    assert_eq!(failure.code, FailureCode::PostCheckConnect);
    assert!(
        failure.message.contains("thing-SN-PC"),
        "{}",
        failure.message
    );
}

/// The crash the issue describes, made exact: the station recorded a certificate and sent
/// RegisterThing; the registration went through but the station died before it heard so
/// (here a raw client registers with the station's token). On resume the token is refused
/// within its hour: the old certificate is recorded as ACTIVE on the thing the new
/// registration names, and the device gets exactly one new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_on_resume_lists_the_first_certificate_as_active_on_its_thing() {
    use fleet_station::fleet::payloads::{Secret, decode, encode};
    use fleet_station::fleet::{
        Api, CreateCertificateFromCsrRequest, CreateCertificateFromCsrResponse, Format,
        RegisterThingRequest, ReplyKind,
    };
    use fleet_station::keys::KeyAlgorithm;
    use fleet_station::keys::KeyMaterial;
    use fleet_station::ledger::{KeySource, Transition, now_ms};

    let emu = TestEmulator::start().await;
    let ledger = Ledger::open(&emu.dir.path().join("ledger.db"), "t").unwrap();
    let serial = "SN-CRASH";

    // What the station journaled before it died: key reserved, certificate issued.
    let key = KeyMaterial::generate(KeyAlgorithm::P256, "t").unwrap();
    let mut client = common::RawClient::connect(emu.port(), "test-station-0", emu.claim_tls());
    client.connected().await;
    let create = Api::CreateCertificateFromCsr;
    let register = Api::RegisterThing {
        template: "FleetTemplate".into(),
    };
    let filters: Vec<String> = [&create, &register]
        .iter()
        .flat_map(|a| {
            [ReplyKind::Accepted, ReplyKind::Rejected].map(|k| a.reply_topic(Format::Json, k))
        })
        .collect();
    client.subscribe(&filters).await;
    let (_, reply) = client
        .request(
            &create.request_topic(Format::Json),
            encode(
                Format::Json,
                &CreateCertificateFromCsrRequest {
                    certificate_signing_request: Some(key.csr_pem().to_string()),
                },
            ),
        )
        .await;
    let created: CreateCertificateFromCsrResponse = decode(Format::Json, &reply).unwrap();
    let id = ledger.begin(serial, "jig").await.unwrap().id;
    ledger
        .record(
            id,
            Transition::KeyReserved {
                source: KeySource::Pool,
                public_key_sha256: Some(key.public_key_sha256()),
                private_key: Some(Secret::new(key.private_key_pem())),
            },
        )
        .await
        .unwrap();
    ledger
        .record(
            id,
            Transition::CertificateIssued {
                certificate_id: created.certificate_id.clone(),
                certificate_pem: created.certificate_pem.clone(),
                token: created.certificate_ownership_token.clone(),
                token_expires_ms: (now_ms() + 3_000_000) as u64,
                private_key: None,
                public_key_sha256: None,
            },
        )
        .await
        .unwrap();
    // Its RegisterThing went through; the answer never reached the ledger.
    let mut parameters = std::collections::BTreeMap::new();
    for (k, v) in [
        ("ThingName", serial),
        ("SerialNumber", serial),
        ("DeviceLocation", "Seattle"),
    ] {
        parameters.insert(k.to_string(), v.to_string());
    }
    let (topic, _) = client
        .request(
            &register.request_topic(Format::Json),
            encode(
                Format::Json,
                &RegisterThingRequest {
                    certificate_ownership_token: Some(created.certificate_ownership_token),
                    parameters: Some(parameters),
                },
            ),
        )
        .await;
    assert!(topic.ends_with("/accepted"), "{topic}");
    drop(client);

    // The restarted station resumes the device.
    let (telemetry, _snap, _agg) = telemetry::start();
    let (engine, halt) = start_engine(
        common::engine_config(&emu, 1, "FleetTemplate", "{serial}"),
        key_pool(),
        &ledger,
        telemetry,
    );
    let (_, rx) = submit(&engine.submitter(), &ledger, serial, "jig", KeyPlan::Pool).await;
    let creds = rx.await.unwrap().unwrap();
    assert!(!halt.is_raised());
    assert_eq!(creds.thing_name, serial);
    assert_ne!(creds.certificate_id, created.certificate_id);
    let orphans = ledger.orphans().unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    let o = &orphans[0];
    assert_eq!(
        o.certificate_id.as_deref(),
        Some(created.certificate_id.as_str())
    );
    assert_eq!(o.status, "active");
    assert_eq!(o.thing_name.as_deref(), Some(serial));
    // What AWS holds: the thing with both certificates ACTIVE; two certificates in all.
    let thing = emu.emulator.registry().thing(serial).unwrap().unwrap();
    assert!(thing.principals.contains(&created.certificate_id));
    assert!(thing.principals.contains(&creds.certificate_id));
    assert_eq!(issued(&emu), 2, "one new certificate, no more");
}
