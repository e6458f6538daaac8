//! The emulator's timing faults over a real claim connection, each changed at run time with
//! `Emulator::set_faults`: `register_thing_delay_ms` delays only RegisterThing,
//! `duplicate_reply_after_ms` publishes an accepted RegisterThing reply once more on the same
//! connection after the delay, and `storage_delay_ms` delays the replies that follow a
//! registry change. Order of arrival is what is asserted, plus lower bounds on time, never
//! upper ones.

use crate::api_support;

use std::time::{Duration, Instant};

use crate::api_support::{claim_client, create_from_csr, next_publish, p256_csr, register_request};
use crate::common::{RawClient, TestEmulator};
use fleet_station::emulator::faults::FaultConfig;
use fleet_station::fleet::{Api, CreateCertificateFromCsrResponse, Format, ReplyKind};
use rumqttc::QoS;

const TEMPLATE: &str = "FleetTemplate";

fn register_api() -> Api {
    api_support::register_api(TEMPLATE)
}

fn csr_api() -> Api {
    Api::CreateCertificateFromCsr
}

fn accepted(api: &Api) -> String {
    api.reply_topic(Format::Json, ReplyKind::Accepted)
}

fn csr_body() -> Vec<u8> {
    api_support::csr_request(Format::Json, &p256_csr().1)
}

fn register_body(token: &str, thing: &str) -> Vec<u8> {
    register_request(
        Format::Json,
        token,
        &[
            ("ThingName", thing),
            ("SerialNumber", thing),
            ("DeviceLocation", "Seattle"),
        ],
    )
}

/// Publishes a request without waiting for its reply.
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

async fn new_certificate(c: &mut RawClient) -> CreateCertificateFromCsrResponse {
    create_from_csr(c, Format::Json, &p256_csr().1)
        .await
        .expect("CreateCertificateFromCsr accepted")
}

#[tokio::test]
async fn register_thing_delay_delays_register_thing_only() {
    let emu = TestEmulator::start().await;
    emu.emulator.set_faults(FaultConfig {
        register_thing_delay_ms: 600,
        ..FaultConfig::default()
    });
    let mut c = claim_client(&emu, "delay-register", &[TEMPLATE]).await;
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
    let mut c = claim_client(&emu, "duplicate-1", &[TEMPLATE]).await;
    // Another claim connection, subscribed to the same topics, sees none of it.
    let mut other = claim_client(&emu, "duplicate-2", &[TEMPLATE]).await;

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
    let mut c = claim_client(&emu, "slow-disk", &[TEMPLATE]).await;
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
