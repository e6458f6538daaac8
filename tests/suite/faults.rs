//! The provisioning engine against an emulator injecting faults: throttle bursts, 500s, slow
//! replies past the request timeout, foreign certificates and dropped connections. Every
//! device must end provisioned or failed with a named reason, without hanging, and no thing
//! may hold two active certificates unless the extra one is in the ledger's orphan list.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{TestEmulator, start_engine, submit};
use fleet_station::emulator::faults::FaultConfig;
use fleet_station::emulator::registry::CertStatus;
use fleet_station::ledger::{DeviceState, Ledger, Transition};
use fleet_station::provision::{KeyPlan, NotProvisioned};
use fleet_station::telemetry::{self, Aggregate};

struct Outcome {
    provisioned: usize,
    failed: Vec<(String, String)>,
    aggregate: Aggregate,
}

async fn provision_all(
    emu: &TestEmulator,
    devices: usize,
    sessions: usize,
    request_timeout: Duration,
    max_attempts: u32,
) -> Outcome {
    let mut cfg = common::engine_config(emu, sessions, "FleetTemplate", "{serial}");
    cfg.request_timeout = request_timeout;
    cfg.max_attempts = max_attempts;
    let keys = common::key_pool();
    let ledger = Ledger::open(&emu.dir.path().join("ledger.db"), "faults").unwrap();
    let (telemetry, _snap, aggregator) = telemetry::start();
    let (engine, halt) = start_engine(cfg, keys, &ledger, telemetry.clone());
    let jobs = engine.submitter();
    let mut waits = Vec::new();
    for i in 0..devices {
        let serial = format!("F{i:04}");
        let (id, rx) = submit(&jobs, &ledger, &serial, "j", KeyPlan::Pool).await;
        waits.push((id, serial, rx));
    }
    let mut provisioned = 0;
    let mut failed = Vec::new();
    for (id, serial, rx) in waits {
        // No hang: every device answers well within its deadline.
        let result = tokio::time::timeout(Duration::from_secs(150), rx)
            .await
            .expect("a device hung")
            .unwrap();
        match result {
            Ok(creds) => {
                assert_eq!(creds.thing_name, serial);
                ledger.record(id, Transition::Written).await.unwrap();
                ledger.record(id, Transition::Verified).await.unwrap();
                provisioned += 1;
            }
            Err(NotProvisioned::Interrupted) => {
                panic!(
                    "{serial} was interrupted: the line stopped: {:?}",
                    halt.take()
                )
            }
            Err(NotProvisioned::Failed(f)) => {
                assert!(!f.message.is_empty());
                ledger
                    .record(
                        id,
                        Transition::Failed {
                            reason: f.code.to_string(),
                        },
                    )
                    .await
                    .unwrap();
                failed.push((serial, f.code.to_string()));
            }
        }
    }
    drop(jobs);
    engine.shutdown().await;
    drop(telemetry);
    let aggregate = aggregator.await.unwrap();
    check_no_double_identity(emu, &ledger);
    Outcome {
        provisioned,
        failed,
        aggregate,
    }
}

/// No thing holds two active certificates unless the extra one is an orphan.
fn check_no_double_identity(emu: &TestEmulator, ledger: &Ledger) {
    let orphans: HashSet<String> = ledger
        .orphans()
        .unwrap()
        .into_iter()
        .filter_map(|o| o.certificate_id)
        .collect();
    let devices = ledger.devices().unwrap();
    let registry = emu.emulator.registry();
    for d in devices.iter().filter(|d| d.state == DeviceState::Verified) {
        let thing = registry
            .thing(d.thing_name.as_deref().unwrap())
            .unwrap()
            .unwrap();
        let own = d.certificate_id.clone().unwrap();
        assert!(thing.principals.contains(&own));
        for p in &thing.principals {
            let active = registry
                .certificate(p)
                .unwrap()
                .is_some_and(|c| c.status == CertStatus::Active);
            if *p != own && active {
                assert!(
                    orphans.contains(p),
                    "{} holds an extra active certificate {p} not in the orphan list",
                    d.serial
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_bursts_are_retried_and_counted() {
    let emu = TestEmulator::start_with(|c| {
        c.faults = FaultConfig {
            throttle_burst_every: Some(6),
            throttle_burst_len: 3,
            ..FaultConfig::default()
        };
    })
    .await;
    let out = provision_all(&emu, 30, 4, Duration::from_secs(10), 8).await;
    assert_eq!(out.provisioned, 30, "{:?}", out.failed);
    assert!(out.aggregate.throttled > 0);
    assert!(out.aggregate.retries >= out.aggregate.throttled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_errors_are_retried_or_fail_with_a_named_reason() {
    let emu = TestEmulator::start_with(|c| {
        c.faults = FaultConfig {
            error_500_fraction: 0.3,
            seed: Some(11),
            ..FaultConfig::default()
        };
    })
    .await;
    let out = provision_all(&emu, 30, 4, Duration::from_secs(10), 8).await;
    assert!(out.aggregate.retries > 0);
    assert_eq!(out.provisioned + out.failed.len(), 30);
    for (_, code) in &out.failed {
        assert!(code.ends_with(":gave_up"), "{code}");
    }
    assert!(out.provisioned >= 25, "{:?}", out.failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_later_than_the_timeout_never_pair_with_the_wrong_request() {
    // About a third of the replies (0–350 ms against a 250 ms timeout) come after the station
    // gave up on them; the late ones arrive on a connection the station has already dropped.
    // (With half of them late, whether six of twelve boards made it in two certificate rounds
    // was a coin toss on a loaded machine.)
    let emu = TestEmulator::start_with(|c| {
        c.faults = FaultConfig {
            delay_ms: 0,
            delay_jitter_ms: 350,
            seed: Some(3),
            ..FaultConfig::default()
        };
    })
    .await;
    let out = provision_all(&emu, 12, 4, Duration::from_millis(250), 12).await;
    assert!(out.aggregate.retries > 0, "no reply was late");
    assert_eq!(out.provisioned + out.failed.len(), 12);
    // A registration whose reply came too late used its token: the retry is refused, the
    // certificate is abandoned (an orphan) and a new one requested, up to three rounds.
    for (_, code) in &out.failed {
        assert!(
            code.ends_with(":gave_up")
                || code.ends_with(":deadline")
                || code == "certificate:rounds",
            "{code}"
        );
    }
    assert!(out.provisioned >= 6, "{:?}", out.failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_certificates_are_refused_and_requested_again() {
    let emu = TestEmulator::start_with(|c| {
        c.faults = FaultConfig {
            foreign_certificate_fraction: 0.4,
            seed: Some(5),
            ..FaultConfig::default()
        };
    })
    .await;
    let out = provision_all(&emu, 20, 4, Duration::from_secs(10), 10).await;
    assert_eq!(out.provisioned, 20, "{:?}", out.failed);
    assert!(
        out.aggregate.retries > 0,
        "no foreign certificate was served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_sessions_reconnect_and_the_device_in_flight_resumes() {
    // Every connection is dropped when it sends its fourth request: the request in flight
    // is retried on a new connection (a RegisterThing with the token it already holds), so
    // no device needs a second certificate.
    let emu = TestEmulator::start_with(|c| {
        c.faults = FaultConfig {
            drop_after_messages: Some(3),
            ..FaultConfig::default()
        };
    })
    .await;
    let out = provision_all(&emu, 16, 4, Duration::from_secs(10), 6).await;
    assert_eq!(out.provisioned, 16, "{:?}", out.failed);
    assert!(out.aggregate.retries > 0, "no connection was dropped");
    // A connection the server closes after a request and before its reply is how a
    // throttle can arrive: it slows the rate controller like a 429.
    assert!(out.aggregate.throttled > 0, "the closes slowed nothing");
    let issued = emu
        .emulator
        .registry()
        .certificates()
        .unwrap()
        .iter()
        .filter(|c| !c.claim)
        .count();
    assert_eq!(issued, 16, "a device restarted instead of resuming");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_duplicate_reply_is_never_credited_to_the_next_device() {
    // Every request is answered 300 ms late and every accepted RegisterThing answer comes
    // again 450 ms after the first: on the one session, the duplicate of a device's answer
    // arrives while the next device waits for its own RegisterThing answer.
    let emu = TestEmulator::start_with(|c| {
        c.faults = FaultConfig {
            delay_ms: 300,
            duplicate_reply_after_ms: Some(450),
            ..FaultConfig::default()
        };
    })
    .await;
    let out = provision_all(&emu, 4, 1, Duration::from_secs(10), 3).await;
    // `provision_all` checks each device got the thing named after its own serial.
    assert_eq!(out.provisioned, 4, "{:?}", out.failed);
}
