//! The emulator's timing faults over a real claim connection, each changed at run time with
//! `Emulator::set_faults`: `register_thing_delay_ms` delays only RegisterThing,
//! `duplicate_reply_after_ms` publishes an accepted RegisterThing reply once more on the same
//! connection after the delay, and `storage_delay_ms` delays the replies that follow a
//! registry change. Order of arrival is what is asserted, plus lower bounds on time, never
//! upper ones.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{RawClient, Seen, TestEmulator};
use fleet_station::emulator::faults::FaultConfig;
use fleet_station::fleet::payloads::{Secret, decode, encode};
use fleet_station::fleet::{
    Api, CreateCertificateFromCsrRequest, CreateCertificateFromCsrResponse, Format,
    RegisterThingRequest, ReplyKind,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rumqttc::QoS;

const TEMPLATE: &str = "FleetTemplate";

fn register_api() -> Api {
    Api::RegisterThing {
        template: TEMPLATE.into(),
    }
}

fn csr_api() -> Api {
    Api::CreateCertificateFromCsr
}

fn accepted(api: &Api) -> String {
    api.reply_topic(Format::Json, ReplyKind::Accepted)
}

async fn claim_client(emu: &TestEmulator, id: &str) -> RawClient {
    let mut c = RawClient::connect(emu.port(), id, emu.claim_tls());
    c.connected().await;
    let filters: Vec<String> = [csr_api(), register_api()]
        .iter()
        .flat_map(|api| {
            [ReplyKind::Accepted, ReplyKind::Rejected].map(|k| api.reply_topic(Format::Json, k))
        })
        .collect();
    c.subscribe(&filters).await;
    c
}

fn csr_body() -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    encode(
        Format::Json,
        &CreateCertificateFromCsrRequest {
            certificate_signing_request: Some(p.serialize_request(&key).unwrap().pem().unwrap()),
        },
    )
}

fn register_body(token: &str, thing: &str) -> Vec<u8> {
    encode(
        Format::Json,
        &RegisterThingRequest {
            certificate_ownership_token: Some(Secret::new(token)),
            parameters: Some(BTreeMap::from([
                ("ThingName".to_string(), thing.to_string()),
                ("SerialNumber".to_string(), thing.to_string()),
                ("DeviceLocation".to_string(), "Seattle".to_string()),
            ])),
        },
    )
}

async fn publish(c: &RawClient, api: &Api, body: Vec<u8>) {
    c.client
        .publish(
            api.request_topic(Format::Json),
            QoS::AtLeastOnce,
            false,
            body,
        )
        .await
        .unwrap();
}

/// The next PUBLISH this client receives.
async fn next_publish(c: &mut RawClient) -> (String, bytes::Bytes) {
    loop {
        match c.next().await {
            Seen::Publish(t, p) => return (t, p),
            Seen::Down(e) => panic!("connection lost: {e}"),
            _ => {}
        }
    }
}

async fn new_certificate(c: &mut RawClient) -> CreateCertificateFromCsrResponse {
    publish(c, &csr_api(), csr_body()).await;
    let (topic, payload) = next_publish(c).await;
    assert_eq!(topic, accepted(&csr_api()));
    decode(Format::Json, &payload).unwrap()
}

#[tokio::test]
async fn register_thing_delay_delays_register_thing_only() {
    let emu = TestEmulator::start().await;
    emu.emulator.set_faults(FaultConfig {
        register_thing_delay_ms: 600,
        ..FaultConfig::default()
    });
    let mut c = claim_client(&emu, "delay-register").await;
    let created = new_certificate(&mut c).await;

    // RegisterThing first, CreateCertificateFromCsr right after it: the certificate reply
    // overtakes the delayed RegisterThing reply.
    let started = Instant::now();
    publish(
        &c,
        &register_api(),
        register_body(created.certificate_ownership_token.expose(), "delayed-1"),
    )
    .await;
    publish(&c, &csr_api(), csr_body()).await;
    let (first, _) = next_publish(&mut c).await;
    assert_eq!(first, accepted(&csr_api()));
    let (second, _) = next_publish(&mut c).await;
    assert_eq!(second, accepted(&register_api()));
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn an_accepted_register_thing_reply_is_duplicated_on_the_same_connection_after_the_delay() {
    let emu = TestEmulator::start().await;
    emu.emulator.set_faults(FaultConfig {
        duplicate_reply_after_ms: Some(400),
        ..FaultConfig::default()
    });
    let mut c = claim_client(&emu, "duplicate-1").await;
    // Another claim connection, subscribed to the same topics, sees none of it.
    let mut other = claim_client(&emu, "duplicate-2").await;

    // Neither certificate replies nor rejected RegisterThing replies are duplicated: had they
    // been, their copies would arrive before the accepted reply's copy.
    let created = new_certificate(&mut c).await;
    publish(&c, &register_api(), register_body("not-a-token", "dup-1")).await;
    let (rejected, _) = next_publish(&mut c).await;
    assert!(rejected.ends_with("/rejected"), "{rejected}");

    let started = Instant::now();
    publish(
        &c,
        &register_api(),
        register_body(created.certificate_ownership_token.expose(), "dup-1"),
    )
    .await;
    let (topic, first) = next_publish(&mut c).await;
    assert_eq!(topic, accepted(&register_api()));
    let (topic, again) = next_publish(&mut c).await;
    assert_eq!(topic, accepted(&register_api()));
    assert_eq!(again, first, "the same reply, once more");
    assert!(started.elapsed() >= Duration::from_millis(400));

    // Only once: the next message is the reply to the next request.
    let _ = new_certificate(&mut c).await;

    // The other connection's next message is the reply to its own request.
    let _ = new_certificate(&mut other).await;
}

#[tokio::test]
async fn storage_delay_delays_the_replies_that_change_the_registry() {
    let emu = TestEmulator::start().await;
    emu.emulator.set_faults(FaultConfig {
        storage_delay_ms: 500,
        ..FaultConfig::default()
    });
    let mut c = claim_client(&emu, "slow-disk").await;
    let started = Instant::now();
    let created = new_certificate(&mut c).await;
    assert!(started.elapsed() >= Duration::from_millis(500));

    let started = Instant::now();
    publish(
        &c,
        &register_api(),
        register_body(created.certificate_ownership_token.expose(), "slow-1"),
    )
    .await;
    let (topic, _) = next_publish(&mut c).await;
    assert_eq!(topic, accepted(&register_api()));
    assert!(started.elapsed() >= Duration::from_millis(500));
}
