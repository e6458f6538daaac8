//! IoT policy conditions, `NotAction`/`NotResource` and policy variables, through MQTT over
//! real TLS: a device provisioned with `fixtures/templates/AttachedThingTemplate.json`
//! (AWS's "Thing policy examples": `Bool iot:Connection.Thing.IsAttached` and thing
//! attributes) connects and publishes where AWS would allow it and is refused where AWS would
//! refuse it; the claim certificate's policy exercises certificate variables, `aws:SourceIp`,
//! `NotAction` and `NotResource`; a document the emulator cannot evaluate is refused when it
//! is loaded.

use crate::api_support::{
    assert_rejected, cert_der, certificate, claim_client, create_from_csr, csr_for,
    has_unused_token, register, templates_with,
};
use crate::broker_support::{BrokerEmu, Raw, connect5, publish5, subscribe5};
use crate::common::{RawClient, Seen, TestEmulator};
use fleet_station::emulator::registry::CertStatus;
use fleet_station::emulator::{Emulator, EmulatorConfig};
use fleet_station::fleet::Format;
use fleet_station::shutdown::Shutdown;
use rcgen::KeyPair;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as C5, PubAckReason as P5, SubscribeReasonCode as S5,
};

const ATTACHED: &str = "AttachedThingTemplate";

/// A device certificate and key provisioned with `template` and `params` (CSR flow).
async fn provision(
    emu: &TestEmulator,
    template: &str,
    params: &[(&str, &str)],
) -> (
    String,
    KeyPair,
    Result<String, fleet_station::fleet::ErrorResponse>,
) {
    let mut c = claim_client(emu, "claim-conditions", &[template]).await;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let created = create_from_csr(&mut c, Format::Json, &csr_for(&key))
        .await
        .unwrap();
    let registered = register(
        &mut c,
        template,
        Format::Json,
        created.certificate_ownership_token.expose(),
        params,
    )
    .await
    .map(|r| r.thing_name.unwrap_or_default());
    (created.certificate_pem, key, registered)
}

/// An MQTT 5 connection with the given identity; the CONNACK's code.
async fn connect_v5(emu: &TestEmulator, cert: &str, key: &KeyPair, client_id: &str) -> (Raw, C5) {
    let tls = emu.tls_with(cert.as_bytes(), key.serialize_pem().as_bytes());
    let mut c = Raw::open(emu.emulator.local_addr(), tls).await;
    c.send5(connect5(client_id, 60, None)).await;
    match c.recv5().await {
        Some(v5::Packet::ConnAck(a)) => (c, a.code),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

async fn puback(c: &mut Raw, topic: &str, pkid: u16) -> P5 {
    c.send5(publish5(topic, 1, pkid, b"x")).await;
    match c.recv5().await {
        Some(v5::Packet::PubAck(a)) => {
            assert_eq!(a.pkid, pkid);
            a.reason
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

async fn suback(c: &mut Raw, filter: &str, pkid: u16) -> S5 {
    c.send5(subscribe5(pkid, &[(filter, 1)])).await;
    match c.recv5().await {
        Some(v5::Packet::SubAck(s)) => {
            assert_eq!(s.pkid, pkid);
            s.return_codes[0]
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn an_attached_thing_connects_and_publishes_only_on_its_line() {
    let emu = TestEmulator::start().await;
    let (cert, key, thing) =
        provision(&emu, ATTACHED, &[("SerialNumber", "1"), ("Line", "L1")]).await;
    assert_eq!(thing.unwrap(), "att_1");

    let (mut dev, code) = connect_v5(&emu, &cert, &key, "att_1").await;
    assert_eq!(code, C5::Success);
    // lines/${iot:Connection.Thing.Attributes[line]}/* with IsAttached = true.
    assert_eq!(puback(&mut dev, "lines/L1/temp", 1).await, P5::Success);
    assert_eq!(
        puback(&mut dev, "lines/L2/temp", 2).await,
        P5::NotAuthorized
    );
    assert!(matches!(
        suback(&mut dev, "lines/L1/#", 3).await,
        S5::Success(_)
    ));
    assert_eq!(suback(&mut dev, "lines/L2/#", 4).await, S5::NotAuthorized);

    // MQTT 3.1.1 with the station's client library: allowed publish acknowledged, one off
    // the line closes the connection (docs/aws-fleet-provisioning.md §6).
    let tls = emu.tls_with(cert.as_bytes(), key.serialize_pem().as_bytes());
    drop(dev);
    let mut v4 = RawClient::connect(emu.port(), "att_1", tls);
    v4.connected().await;
    v4.client
        .publish("lines/L1/x", rumqttc::QoS::AtLeastOnce, false, "ok")
        .await
        .unwrap();
    assert!(matches!(v4.next().await, Seen::PubAck(_)));
    v4.client
        .publish("lines/L9/x", rumqttc::QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    assert!(matches!(v4.next().await, Seen::Down(_)));
}

#[tokio::test]
async fn a_client_id_that_is_not_the_attached_thing_is_refused() {
    // AWS: thing policy variables need the client id to be the thing name; otherwise
    // IsAttached is false and `${iot:Connection.Thing.ThingName}` does not resolve.
    let emu = TestEmulator::start().await;
    let (cert, key, thing) =
        provision(&emu, ATTACHED, &[("SerialNumber", "2"), ("Line", "L1")]).await;
    assert_eq!(thing.unwrap(), "att_2");
    let (_, code) = connect_v5(&emu, &cert, &key, "not-the-thing").await;
    assert_eq!(code, C5::NotAuthorized);
    // A thing that exists but this certificate is not attached to: refused too.
    let (other_cert, other_key, _) =
        provision(&emu, ATTACHED, &[("SerialNumber", "3"), ("Line", "L1")]).await;
    let (_, code) = connect_v5(&emu, &other_cert, &other_key, "att_2").await;
    assert_eq!(code, C5::NotAuthorized);
    let (_, code) = connect_v5(&emu, &other_cert, &other_key, "att_3").await;
    assert_eq!(code, C5::Success);
}

#[tokio::test]
async fn a_deny_with_a_condition_on_an_attribute_denies() {
    let emu = TestEmulator::start().await;
    let (cert, key, _) = provision(
        &emu,
        ATTACHED,
        &[("SerialNumber", "4"), ("Line", "quarantine")],
    )
    .await;
    let (mut dev, code) = connect_v5(&emu, &cert, &key, "att_4").await;
    assert_eq!(code, C5::Success);
    // The Allow matches (its line), but the Deny's StringEquals on the attribute holds.
    assert_eq!(
        puback(&mut dev, "lines/quarantine/x", 1).await,
        P5::NotAuthorized
    );
    // Subscribing is not denied.
    assert!(matches!(
        suback(&mut dev, "lines/quarantine/#", 2).await,
        S5::Success(_)
    ));
}

#[tokio::test]
async fn register_thing_refuses_a_policy_the_emulator_cannot_evaluate() {
    let body = serde_json::json!({
        "Parameters": {"AWS::IoT::Certificate::Id": {"Type": "String"}},
        "Resources": {
            "certificate": {"Type": "AWS::IoT::Certificate",
                "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}},
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*",
                    "Condition": {"StringLikeIgnoreCase": {"iot:ClientId": "a*"}}}]}}}
        }
    });
    let dir = templates_with(&[("BadPolicy.json", body.to_string())]);
    let emu = TestEmulator::start_with(|cfg| cfg.templates = dir.path().to_path_buf()).await;
    let (pem, _, registered) = provision(&emu, "BadPolicy", &[]).await;
    let e = registered.unwrap_err();
    // Refused before anything changed: the certificate is not activated, its token unused,
    // and no policy is attached.
    let id = fleet_station::emulator::ca::certificate_id(&cert_der(&pem));
    let cert = certificate(&emu, &id).unwrap();
    assert_eq!(cert.status, CertStatus::PendingActivation);
    assert!(cert.policies.is_empty());
    assert!(has_unused_token(&emu, &id));
    assert_rejected(&e, 400, "InvalidParameters");
    assert!(
        e.error_message.contains("MalformedPolicyException")
            && e.error_message.contains("StringLikeIgnoreCase"),
        "{e}"
    );
}

#[tokio::test]
async fn a_claim_policy_with_an_unknown_condition_key_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claim.json");
    std::fs::write(
        &path,
        r#"{"Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*",
            "Condition":{"StringEquals":{"iot:Connection.Thing.Colour":"red"}}}]}"#,
    )
    .unwrap();
    let cfg = EmulatorConfig {
        listen: "127.0.0.1:0".into(),
        state_dir: dir.path().join("emulator"),
        templates: crate::common::fixtures().join("templates"),
        claim_policy: Some(path),
        ..EmulatorConfig::default()
    };
    let Err(e) = Emulator::start(&cfg, Shutdown::new()).await else {
        panic!("the emulator started with a policy it cannot evaluate");
    };
    let text = e.to_string();
    assert!(
        text.contains("Statement[0].Condition.StringEquals.iot:Connection.Thing.Colour"),
        "{text}"
    );
}

/// The serial number of a PEM certificate in decimal.
fn serial_decimal(pem: &[u8]) -> String {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).unwrap();
    let cert = p.parse_x509().unwrap();
    cert.tbs_certificate.serial.to_str_radix(10)
}

#[tokio::test]
async fn certificate_variables_source_ip_not_action_and_not_resource() {
    let policy = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Action":"iot:Connect","Resource":"*",
         "Condition":{"IpAddress":{"aws:SourceIp":"127.0.0.0/8"}}},
        {"Effect":"Deny","Action":"iot:Connect","Resource":"arn:aws:iot:*:*:client/blocked-*",
         "Condition":{"IpAddress":{"aws:SourceIp":["127.0.0.1/32"]}}},
        {"Effect":"Allow","NotAction":["iot:Connect","iot:Subscribe","iot:Receive","iot:RetainPublish"],
         "NotResource":"arn:aws:iot:*:*:topic/forbidden/*"},
        {"Effect":"Allow","Action":"iot:Subscribe","Resource":[
            "arn:aws:iot:*:*:topicfilter/cn/${iot:Certificate.Subject.CommonName}",
            "arn:aws:iot:*:*:topicfilter/issuer/${iot:Certificate.Issuer.Organization}",
            "arn:aws:iot:*:*:topicfilter/serial/${iot:Certificate.SerialNumber}",
            "arn:aws:iot:*:*:topicfilter/none/${iot:Certificate.Subject.Surname}"]},
        {"Effect":"Allow","Action":"iot:Subscribe","Resource":"*",
         "Condition":{"ForAnyValue:StringEquals":{"iot:Certificate.Issuer.Country.List":["DE","US"]},
                      "StringLike":{"iot:ClientId":"any-*"}}}
    ]}"#;
    let b = BrokerEmu::start_with_policy(Some(policy), |_| {}).await;
    let serial = serial_decimal(&std::fs::read(&b.emu.emulator.paths().claim_cert).unwrap());

    // aws:SourceIp is the loopback address the test connects from.
    let mut c = Raw::open(b.addr(), b.tls()).await;
    c.send5(connect5("blocked-1", 60, None)).await;
    assert!(matches!(
        c.recv5().await,
        Some(v5::Packet::ConnAck(a)) if a.code == C5::NotAuthorized
    ));

    let (mut c, _) = b.v5("claim-vars").await;
    // NotAction + NotResource: publish anywhere but forbidden/…
    assert_eq!(puback(&mut c, "anything/at/all", 1).await, P5::Success);
    assert_eq!(puback(&mut c, "forbidden/x", 2).await, P5::NotAuthorized);
    // Certificate variables: the claim certificate's subject CN, issuer O and serial.
    let cn = "cn/fleet-station emulator claim";
    assert!(matches!(suback(&mut c, cn, 3).await, S5::Success(_)));
    assert_eq!(suback(&mut c, "cn/other", 4).await, S5::NotAuthorized);
    let issuer = "issuer/Amazon.com Inc.";
    assert!(matches!(suback(&mut c, issuer, 5).await, S5::Success(_)));
    let by_serial = format!("serial/{serial}");
    assert!(matches!(
        suback(&mut c, &by_serial, 6).await,
        S5::Success(_)
    ));
    // A certificate field the certificate does not have: the variable does not resolve and
    // the entry matches nothing (not even the literal text).
    let literal = "none/${iot:Certificate.Subject.Surname}";
    assert_eq!(suback(&mut c, literal, 7).await, S5::NotAuthorized);
    assert_eq!(suback(&mut c, "none/", 8).await, S5::NotAuthorized);

    // ForAnyValue over the issuer's countries, AND a StringLike on the client id.
    let (mut any, _) = b.v5("any-1").await;
    assert!(matches!(suback(&mut any, "x/y", 1).await, S5::Success(_)));
    assert_eq!(suback(&mut c, "x/y", 9).await, S5::NotAuthorized);
}
