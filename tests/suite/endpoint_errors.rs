//! What the engine does with each kind of trouble at the endpoint (issue 8, "Talking to
//! AWS"): a problem retrying cannot fix stops the line once, with the error that names the
//! fix, instead of being retried on every board; MQTT 5 reason codes are acted on at once; a
//! quota refusal is a throttle; another station with the same client ids is reported.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{TestEmulator, key_pool, start_engine, submit};
use fleet_station::Error;
use fleet_station::fleet::MqttVersion;
use fleet_station::halt::Halt;
use fleet_station::ledger::Ledger;
use fleet_station::provision::health::LineError;
use fleet_station::provision::{EngineConfig, KeyPlan, NotProvisioned};
use fleet_station::telemetry::{self, Aggregate};

/// Runs `devices` devices through an engine with `cfg`; returns the outcomes, the halt and
/// the telemetry aggregate.
async fn run_devices(
    emu: &TestEmulator,
    cfg: EngineConfig,
    devices: usize,
    ledger_name: &str,
) -> (Vec<Result<(), NotProvisioned>>, Halt, Aggregate) {
    let ledger = Ledger::open(&emu.dir.path().join(ledger_name), "t").unwrap();
    let (telemetry, _snap, aggregator) = telemetry::start();
    let (engine, halt) = start_engine(cfg, key_pool(), &ledger, telemetry.clone());
    let mut waits = Vec::new();
    for i in 0..devices {
        let serial = format!("{ledger_name}-{i:03}");
        waits.push(submit(&engine.submitter(), &ledger, &serial, "j", KeyPlan::Pool).await);
    }
    let mut outcomes = Vec::new();
    for (_, rx) in waits {
        let r = tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .expect("a device hung");
        // A job the stopped engine never took counts as interrupted.
        outcomes.push(match r {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(NotProvisioned::Interrupted),
        });
    }
    engine.shutdown().await;
    drop(telemetry);
    (outcomes, halt, aggregator.await.unwrap())
}

fn issued(emu: &TestEmulator) -> usize {
    emu.emulator
        .registry()
        .certificates()
        .unwrap()
        .iter()
        .filter(|c| !c.claim)
        .count()
}

fn all_interrupted(outcomes: &[Result<(), NotProvisioned>]) {
    assert!(
        outcomes
            .iter()
            .all(|o| *o == Err(NotProvisioned::Interrupted)),
        "{outcomes:?}"
    );
}

fn policy_file(emu_dir: &std::path::Path, doc: &str) -> std::path::PathBuf {
    let p = emu_dir.join("claim-policy.json");
    std::fs::write(&p, doc).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_stops_the_line_at_once() {
    let emu = TestEmulator::start().await;
    let mut cfg = common::engine_config(&emu, 4, "FleetTemplate", "{serial}");
    // The station trusts a CA that did not sign the endpoint's certificate.
    let other = rcgen::CertificateParams::new(vec!["other-ca".into()])
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(other.der().clone()).unwrap();
    let p = emu.emulator.paths();
    cfg.tls = Arc::new(
        fleet_station::provision::tls::client_config_from_pem(
            roots,
            &std::fs::read(&p.claim_cert).unwrap(),
            &std::fs::read(&p.claim_key).unwrap(),
            false,
        )
        .unwrap(),
    );
    let started = Instant::now();
    let (outcomes, halt, _) = run_devices(&emu, cfg, 8, "ca").await;
    all_interrupted(&outcomes);
    let Some(Error::Line(e @ LineError::ServerCertificate { .. })) = halt.take() else {
        panic!("the line did not stop for the server certificate");
    };
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    let help = miette::Diagnostic::help(&e).unwrap().to_string();
    assert!(
        help.contains("Amazon Root CA 1 and Amazon Root CA 3"),
        "{help}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(issued(&emu), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_stops_the_line_on_both_protocol_versions() {
    for version in [MqttVersion::V311, MqttVersion::V5] {
        let dir = tempfile::tempdir().unwrap();
        let policy = policy_file(
            dir.path(),
            r#"{"Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:*:*:client/someone-else"}]}"#,
        );
        let emu = TestEmulator::start_with(|c| c.claim_policy = Some(policy.clone())).await;
        let mut cfg = common::engine_config(&emu, 4, "FleetTemplate", "{serial}");
        cfg.mqtt_version = version;
        let (outcomes, halt, _) = run_devices(&emu, cfg, 6, "connect").await;
        all_interrupted(&outcomes);
        let Some(Error::Line(e @ LineError::ConnectRefused { .. })) = halt.take() else {
            panic!("MQTT {version}: the line did not stop for the refused CONNECT");
        };
        assert!(e.to_string().contains("test-station-"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_stops_the_line_after_one_device_gave_up() {
    let dir = tempfile::tempdir().unwrap();
    // Publishing and subscribing are allowed, receiving is not: no reply ever arrives.
    let policy = policy_file(
        dir.path(),
        r#"{"Statement":[{"Effect":"Allow","Action":["iot:Connect","iot:Subscribe","iot:Publish"],"Resource":"*"}]}"#,
    );
    let emu = TestEmulator::start_with(|c| c.claim_policy = Some(policy.clone())).await;
    let mut cfg = common::engine_config(&emu, 4, "FleetTemplate", "{serial}");
    cfg.request_timeout = Duration::from_millis(500);
    cfg.max_attempts = 2;
    let started = Instant::now();
    let (outcomes, halt, _) = run_devices(&emu, cfg, 8, "silent").await;
    all_interrupted(&outcomes);
    let Some(Error::Line(e @ LineError::SilentEndpoint { .. })) = halt.take() else {
        panic!("the line did not stop for the silent endpoint");
    };
    let help = miette::Diagnostic::help(&e).unwrap().to_string();
    assert!(help.contains("iot:Receive"), "{help}");
    // One device's two attempts, not eight devices' (4 s with one probe at a time).
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        issued(&emu),
        2,
        "the probe's two requests were the only ones"
    );
}

/// A claim policy that allows everything but publishing on the template's request topic.
const NO_TEMPLATE_PUBLISH: &str = r#"{"Statement":[{"Effect":"Allow","Action":["iot:Connect","iot:Subscribe","iot:Receive"],"Resource":"*"},
    {"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/$aws/certificates/create-from-csr/*"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_policy_denies_stops_the_line_with_the_topic() {
    for version in [MqttVersion::V5, MqttVersion::V311] {
        let dir = tempfile::tempdir().unwrap();
        let policy = policy_file(dir.path(), NO_TEMPLATE_PUBLISH);
        let emu = TestEmulator::start_with(|c| c.claim_policy = Some(policy.clone())).await;
        let mut cfg = common::engine_config(&emu, 4, "FleetTemplate", "{serial}");
        cfg.mqtt_version = version;
        cfg.request_timeout = Duration::from_secs(10);
        let started = Instant::now();
        let (outcomes, halt, _) = run_devices(&emu, cfg, 6, "publish").await;
        all_interrupted(&outcomes);
        match halt.take() {
            // MQTT 5: PUBACK 0x87 names it at once.
            Some(Error::Line(LineError::PublishNotAuthorized { topic, .. }))
                if version == MqttVersion::V5 =>
            {
                assert!(topic.ends_with("FleetTemplate/provision/json"), "{topic}");
            }
            // MQTT 3.1.1: the connection is closed after each request.
            Some(Error::Line(LineError::ClosedAtRequest { api, .. }))
                if version == MqttVersion::V311 =>
            {
                assert_eq!(api, "RegisterThing");
            }
            other => panic!("MQTT {version}: {other:?}"),
        }
        // Not a wait for the request timeout on every attempt.
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "MQTT {version}: {:?}",
            started.elapsed()
        );
        assert_eq!(issued(&emu), 1, "MQTT {version}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_quota_refusal_is_a_throttle() {
    // One publish per second per connection: a device's RegisterThing, right after its
    // CreateCertificateFromCsr, is refused with PUBACK 0x97.
    let emu = TestEmulator::start_with(|c| c.broker_limits.publishes_per_second = Some(1)).await;
    let mut cfg = common::engine_config(&emu, 2, "FleetTemplate", "{serial}");
    cfg.mqtt_version = MqttVersion::V5;
    cfg.request_timeout = Duration::from_secs(2);
    let (outcomes, halt, agg) = run_devices(&emu, cfg, 6, "quota").await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert!(!halt.is_raised());
    assert!(agg.throttled > 0, "the refusals were counted as throttles");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_station_with_the_same_id_is_reported() {
    // Every request takes 10 ms, so the two stations' sessions are surely connected at once.
    let emu = TestEmulator::start_with(|c| c.faults.delay_ms = 10).await;
    // Two engines with one station id: both use client ids test-station-0 and -1.
    let mut engines = Vec::new();
    for name in ["a", "b"] {
        let mut cfg = common::engine_config(&emu, 2, "FleetTemplate", "{serial}");
        cfg.mqtt_version = MqttVersion::V5;
        let ledger = Ledger::open(&emu.dir.path().join(format!("{name}.db")), "t").unwrap();
        let (telemetry, _snap, aggregator) = telemetry::start();
        let (engine, _halt) = start_engine(cfg, key_pool(), &ledger, telemetry);
        engines.push((name, ledger, engine, aggregator));
    }
    // Devices alternate between the stations.
    let mut waits = Vec::new();
    for i in 0..20 {
        for (name, ledger, engine, _) in &engines {
            let serial = format!("{name}-{i:03}");
            waits.push(submit(&engine.submitter(), ledger, &serial, "j", KeyPlan::Pool).await);
        }
    }
    for (_, rx) in waits {
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .expect("a device hung")
            .unwrap()
            .unwrap();
    }
    let mut takeovers = 0;
    for (_, _, engine, aggregator) in engines {
        engine.shutdown().await;
        takeovers += aggregator.await.unwrap().takeovers;
    }
    assert!(takeovers > 0, "the take-over was reported");
}
