//! The emulator over real sockets and real TLS, driven by a raw MQTT client as a device
//! would: the provisioning happy path, rejections, reply isolation, and TLS refusal.

use crate::api_support::{
    claim_client, create_from_csr, csr_for, csr_request, register_api, register_request,
};
use crate::common::{RawClient, Seen, TestEmulator};
use fleet_station::emulator::registry::CertStatus;
use fleet_station::fleet::payloads::decode;
use fleet_station::fleet::{
    Api, CreateCertificateFromCsrResponse, ErrorResponse, Format, RegisterThingResponse,
};
use rcgen::{CertificateParams, KeyPair};

const FLEET: &str = "FleetTemplate";

fn template() -> Api {
    register_api(FLEET)
}

async fn create_certificate(c: &mut RawClient, key: &KeyPair) -> CreateCertificateFromCsrResponse {
    create_from_csr(c, Format::Json, &csr_for(key))
        .await
        .expect("CreateCertificateFromCsr accepted")
}

#[tokio::test]
async fn csr_then_register_creates_the_thing_and_activates_the_certificate() {
    let emu = TestEmulator::start().await;
    let mut c = claim_client(&emu, "station-test-0", &[FLEET]).await;
    let key = KeyPair::generate().unwrap();
    let created = create_certificate(&mut c, &key).await;
    assert_eq!(created.certificate_id.len(), 64);
    assert!(
        created
            .certificate_id
            .chars()
            .all(|c| c.is_ascii_hexdigit())
    );
    let reg = emu.emulator.registry();
    assert_eq!(
        reg.certificate(&created.certificate_id)
            .unwrap()
            .unwrap()
            .status,
        CertStatus::PendingActivation
    );

    let (topic, payload) = c
        .request(
            &template().request_topic(Format::Json),
            register_request(
                Format::Json,
                created.certificate_ownership_token.expose(),
                &[
                    ("ThingName", "thing-001"),
                    ("SerialNumber", "001"),
                    ("DeviceLocation", "Seattle"),
                ],
            ),
        )
        .await;
    assert_eq!(
        topic,
        "$aws/provisioning-templates/FleetTemplate/provision/json/accepted"
    );
    let r: RegisterThingResponse = decode(Format::Json, &payload).unwrap();
    assert_eq!(r.thing_name.as_deref(), Some("thing-001"));
    assert_eq!(r.device_configuration["LocationUrl"], "https://example.aws");
    assert_eq!(
        r.device_configuration["FallbackUrl"],
        "https://www.example.com/test-site"
    );

    let thing = reg
        .thing("thing-001")
        .unwrap()
        .expect("thing in the registry");
    assert!(thing.principals.contains(&created.certificate_id));
    assert_eq!(thing.thing_type.as_deref(), Some("ThingPrefix_001"));
    let cert = reg.certificate(&created.certificate_id).unwrap().unwrap();
    assert_eq!(cert.status, CertStatus::Active);
    assert!(cert.things.contains("thing-001"));
    assert_eq!(cert.policies.len(), 1, "the template's policy is attached");

    // The token is single use.
    let (topic, payload) = c
        .request(
            &template().request_topic(Format::Json),
            register_request(
                Format::Json,
                created.certificate_ownership_token.expose(),
                &[("ThingName", "thing-001")],
            ),
        )
        .await;
    assert!(topic.ends_with("/rejected"));
    let e: ErrorResponse = decode(Format::Json, &payload).unwrap();
    assert_eq!(
        (e.status_code, e.error_code.as_str()),
        (400, "InvalidCertificateOwnershipToken")
    );

    // The device's certificate is now active, under the template's policy. That policy
    // (AWS's example) allows only iot:Publish on topic/foo/bar, so CONNECT is not authorized.
    let mut device = RawClient::connect(
        emu.port(),
        "thing-001",
        emu.tls_with(
            created.certificate_pem.as_bytes(),
            key.serialize_pem().as_bytes(),
        ),
    );
    match device.next().await {
        // AWS refuses an unauthorized 3.1.1 CONNECT with return code 7 (not 5), which
        // rumqttc reports as an invalid return code.
        Seen::Down(reason) => assert!(reason.contains("return code: 7"), "{reason}"),
        other => panic!("expected CONNECT to be refused by the policy, got {other:?}"),
    }
}

#[tokio::test]
async fn a_provisioned_device_connects_under_its_attached_policy() {
    let emu = TestEmulator::start().await;
    let api = register_api("PySampleTemplate");
    let mut c = claim_client(&emu, "station-test-py", &["PySampleTemplate"]).await;
    let key = KeyPair::generate().unwrap();
    let created = create_certificate(&mut c, &key).await;
    let (topic, payload) = c
        .request(
            &api.request_topic(Format::Json),
            register_request(
                Format::Json,
                created.certificate_ownership_token.expose(),
                &[("SerialNumber", "1"), ("DeviceLocation", "Seattle")],
            ),
        )
        .await;
    assert!(topic.ends_with("/accepted"), "{topic}: {payload:?}");
    let r: RegisterThingResponse = decode(Format::Json, &payload).unwrap();
    assert_eq!(r.thing_name.as_deref(), Some("ThingPrefix_1"));

    let tls = emu.tls_with(
        created.certificate_pem.as_bytes(),
        key.serialize_pem().as_bytes(),
    );
    let mut device = RawClient::connect(emu.port(), "ThingPrefix_1", tls);
    device.connected().await;
    // The policy allows everything, so the device may publish and subscribe freely.
    assert!(matches!(
        device
            .subscribe(&["things/ThingPrefix_1/#".to_string()])
            .await[0],
        rumqttc::SubscribeReasonCode::Success(_)
    ));
}

#[tokio::test]
async fn rejections_carry_the_documented_codes() {
    let emu = TestEmulator::start().await;
    let mut c = claim_client(&emu, "station-test-1", &[FLEET]).await;

    // Missing token.
    let (topic, payload) = c
        .request(&template().request_topic(Format::Json), b"{}".to_vec())
        .await;
    assert!(topic.ends_with("/rejected"));
    let e: ErrorResponse = decode(Format::Json, &payload).unwrap();
    assert_eq!(e.status_code, 400);
    assert_eq!(e.error_code, "InvalidCertificateOwnershipToken");
    assert_eq!(
        e.error_message,
        "Certificate ownership token cannot be empty."
    );

    // A CSR that is not one.
    let (topic, payload) = c
        .request(
            &Api::CreateCertificateFromCsr.request_topic(Format::Json),
            br#"{"certificateSigningRequest":"not a csr"}"#.to_vec(),
        )
        .await;
    assert!(topic.ends_with("/rejected"));
    let e: ErrorResponse = decode(Format::Json, &payload).unwrap();
    assert_eq!(e.status_code, 400);

    // An unresolvable parameter: DeviceLocation is not in the mapping.
    let key = KeyPair::generate().unwrap();
    let created = create_certificate(&mut c, &key).await;
    let (topic, payload) = c
        .request(
            &template().request_topic(Format::Json),
            register_request(
                Format::Json,
                created.certificate_ownership_token.expose(),
                &[
                    ("ThingName", "t-x"),
                    ("SerialNumber", "x"),
                    ("DeviceLocation", "Atlantis"),
                ],
            ),
        )
        .await;
    assert!(topic.ends_with("/rejected"), "{topic}");
    let e: ErrorResponse = decode(Format::Json, &payload).unwrap();
    assert_eq!(
        (e.status_code, e.error_code.as_str()),
        (400, "InvalidParameters")
    );
    assert!(
        emu.emulator.registry().thing("t-x").unwrap().is_none(),
        "nothing is created on a rejection"
    );
}

#[tokio::test]
async fn replies_go_only_to_the_requesting_connection() {
    let emu = TestEmulator::start().await;
    let mut requester = claim_client(&emu, "station-test-a", &[FLEET]).await;
    let mut bystander = claim_client(&emu, "station-test-b", &[FLEET]).await;

    let key = KeyPair::generate().unwrap();
    create_certificate(&mut requester, &key).await;

    // The bystander's own request is answered; had the requester's reply been delivered to
    // it, that reply would have been queued first.
    let other = KeyPair::generate().unwrap();
    let own = create_certificate(&mut bystander, &other).await;
    assert!(fleet_station::keys::certificate_matches_key(
        &own.certificate_pem,
        &rcgen::PublicKeyData::subject_public_key_info(&other)
    ));
    assert!(bystander.rx.try_recv().is_err(), "nothing else arrived");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_at_the_handshake() {
    let emu = TestEmulator::start().await;
    let rogue_ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let rogue_ca = ca_params.self_signed(&rogue_ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&rogue_ca.pem(), rogue_ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::default()
        .signed_by(&key, &issuer)
        .unwrap();

    let mut c = RawClient::connect(
        emu.port(),
        "rogue",
        emu.tls_with(cert.pem().as_bytes(), key.serialize_pem().as_bytes()),
    );
    match c.next().await {
        Seen::Down(reason) => assert!(
            reason.to_lowercase().contains("tls")
                || reason.to_lowercase().contains("certificate")
                || reason.contains("reset")
                || reason.contains("closed")
                || reason.contains("alert"),
            "{reason}"
        ),
        other => panic!("expected the handshake to fail, got {other:?}"),
    }
    assert_eq!(emu.emulator.connected_clients(), 0);
}

#[tokio::test]
async fn publishing_outside_the_claim_policy_closes_a_3_1_1_connection() {
    let emu = TestEmulator::start().await;
    let mut c = claim_client(&emu, "station-test-p", &[FLEET]).await;
    c.client
        .publish(
            "devices/telemetry",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"x".to_vec(),
        )
        .await
        .unwrap();
    loop {
        match c.next().await {
            Seen::Down(_) => break,
            Seen::PubAck(_) => panic!("a forbidden publish was acknowledged"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_duplicate_client_id_disconnects_the_older_connection() {
    let emu = TestEmulator::start().await;
    let mut first = claim_client(&emu, "same-id", &[FLEET]).await;
    let _second = claim_client(&emu, "same-id", &[FLEET]).await;
    loop {
        if let Seen::Down(_) = first.next().await {
            break;
        }
    }
}

#[tokio::test]
async fn over_quota_requests_get_429_with_the_configured_error_code() {
    use fleet_station::emulator::quota::{Quota, QuotaConfig};
    let emu = TestEmulator::start_with(|c| {
        c.quotas = QuotaConfig {
            create_certificate_from_csr: Some(Quota::Full {
                tps: 0.5,
                burst: Some(1.0),
            }),
            ..QuotaConfig::default()
        };
        c.error_codes
            .insert("Throttling".into(), "ThrottlingException".into());
    })
    .await;
    let mut c = claim_client(&emu, "station-test-q", &[FLEET]).await;
    let key = KeyPair::generate().unwrap();
    create_certificate(&mut c, &key).await;
    // The burst of one is spent: the next request within two seconds is throttled.
    let (topic, payload) = c
        .request(
            &Api::CreateCertificateFromCsr.request_topic(Format::Json),
            csr_request(Format::Json, &csr_for(&key)),
        )
        .await;
    assert!(topic.ends_with("/rejected"), "{topic}");
    let e: ErrorResponse = decode(Format::Json, &payload).unwrap();
    assert_eq!(
        (e.status_code, e.error_code.as_str()),
        (429, "ThrottlingException")
    );
    assert!(e.error_message.contains("CreateCertificateFromCsr"));
    // Other APIs have their own quota: RegisterThing is not throttled (it is refused for
    // its missing token instead).
    let (_, payload) = c
        .request(&template().request_topic(Format::Json), b"{}".to_vec())
        .await;
    let e: ErrorResponse = decode(Format::Json, &payload).unwrap();
    assert_eq!(e.status_code, 400);
}

/// Waits (bounded) until the emulator has no connected client.
async fn until_no_clients(emu: &TestEmulator) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while emu.emulator.connected_clients() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a client stayed connected"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_persistent_session_keeps_subscriptions_and_queues_messages_while_away() {
    // A claim policy that lets the test publish and subscribe anywhere.
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("allow-all.json");
    std::fs::write(
        &policy,
        r#"{"Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#,
    )
    .unwrap();
    let emu = TestEmulator::start_with(|c| c.claim_policy = Some(policy.clone())).await;
    let tls = emu.claim_tls();

    let mut a = RawClient::connect_with(emu.port(), "persist-a", tls.clone(), false);
    assert!(!a.connected_session().await, "no session to resume yet");
    a.subscribe(&["devices/a/#".to_string()]).await;
    a.client.disconnect().await.unwrap();
    drop(a);
    until_no_clients(&emu).await;

    // Published while A is away: queued for its session.
    let mut b = RawClient::connect(emu.port(), "publisher-b", tls.clone());
    b.connected().await;
    b.client
        .publish(
            "devices/a/1",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"queued".to_vec(),
        )
        .await
        .unwrap();
    while !matches!(b.next().await, Seen::PubAck(_)) {}

    let mut a = RawClient::connect_with(emu.port(), "persist-a", tls.clone(), false);
    assert!(a.connected_session().await, "CONNACK says session present");
    match a.next().await {
        Seen::Publish(t, p) => assert_eq!((t.as_str(), &p[..]), ("devices/a/1", &b"queued"[..])),
        other => panic!("expected the queued message, got {other:?}"),
    }
    // The subscription is live again without a new SUBSCRIBE.
    b.client
        .publish(
            "devices/a/2",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"live".to_vec(),
        )
        .await
        .unwrap();
    loop {
        match a.next().await {
            Seen::Publish(t, _) => {
                assert_eq!(t, "devices/a/2");
                break;
            }
            Seen::Down(e) => panic!("{e}"),
            _ => {}
        }
    }

    // A clean connect discards the session.
    a.client.disconnect().await.unwrap();
    drop(a);
    b.client.disconnect().await.unwrap();
    drop(b);
    until_no_clients(&emu).await;
    let mut a = RawClient::connect_with(emu.port(), "persist-a", tls, true);
    assert!(!a.connected_session().await);
}
