//! The emulator's MQTT broker over real TLS sockets: MQTT 5 next to 3.1.1, policy violations
//! per version, QoS 2, SUBSCRIBE/UNSUBSCRIBE/PINGREQ, keep-alive, client-id take-over, payload
//! size, every limit of the `aws` profile, MQTT 5 features, and the ALPN listener.
//!
//! No test sleeps to synchronize. Where a test must show that something did *not* happen, it
//! relies on the broker handling a connection's packets in order (an ack would arrive before
//! the PINGRESP of a later PINGREQ) or on deliveries to one connection keeping their order (a
//! message would arrive before a later marker).

use crate::api_support;

use std::time::{Duration, Instant};

use crate::broker_support::*;
use crate::common::TestEmulator;
use fleet_station::emulator::broker::{ALPN_MQTT_CA, BrokerProfile};
use fleet_station::fleet::payloads::decode;
use fleet_station::fleet::{
    Api, CreateCertificateFromCsrResponse, Format, RegisterThingResponse, ReplyKind,
};
use rcgen::KeyPair;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as C5, DisconnectReasonCode as D5, PubAckReason as P5,
    SubscribeReasonCode as S5, UnsubAckReason as U5,
};
use tokio::sync::mpsc;

const CSR_REQUEST: &str = "$aws/certificates/create-from-csr/json";
const CSR_ACCEPTED: &str = "$aws/certificates/create-from-csr/json/accepted";
const PAYLOAD_LIMIT: usize = 128 * 1024;

fn template() -> Api {
    api_support::register_api("FleetTemplate")
}

fn csr_body(key: &KeyPair) -> Vec<u8> {
    api_support::csr_request(Format::Json, &api_support::csr_for(key))
}

fn aws(cfg: &mut fleet_station::emulator::EmulatorConfig) {
    cfg.broker_profile = BrokerProfile::Aws;
}

/// MQTT 5: the next PUBLISH, skipping acks.
async fn next_publish5(c: &mut Raw) -> v5::Publish {
    loop {
        match c.recv5().await {
            Some(v5::Packet::Publish(p)) => return p,
            Some(_) => {}
            None => panic!("connection closed waiting for a PUBLISH"),
        }
    }
}

/// 3.1.1: the next PUBLISH, skipping acks.
async fn next_publish4(c: &mut Raw) -> v4::Publish {
    loop {
        match c.recv4().await {
            Some(v4::Packet::Publish(p)) => return p,
            Some(_) => {}
            None => panic!("connection closed waiting for a PUBLISH"),
        }
    }
}

async fn suback5(c: &mut Raw, pkid: u16, filters: &[(&str, u8)]) -> Vec<S5> {
    c.send5(subscribe5(pkid, filters)).await;
    match c.recv5().await {
        Some(v5::Packet::SubAck(s)) => {
            assert_eq!(s.pkid, pkid);
            s.return_codes
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

async fn suback4(c: &mut Raw, pkid: u16, filters: &[(&str, u8)]) -> Vec<v4::SubscribeReasonCode> {
    c.send4(subscribe4(pkid, filters)).await;
    match c.recv4().await {
        Some(v4::Packet::SubAck(s)) => {
            assert_eq!(s.pkid, pkid);
            s.return_codes
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

async fn puback5(c: &mut Raw, topic: &str, pkid: u16, payload: &[u8]) -> P5 {
    c.send5(publish5(topic, 1, pkid, payload)).await;
    match c.recv5().await {
        Some(v5::Packet::PubAck(a)) => {
            assert_eq!(a.pkid, pkid);
            a.reason
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT 5 with a real MQTT 5 client library.

#[tokio::test]
async fn an_mqtt5_client_provisions_a_device() {
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let emu = TestEmulator::start().await;
    let mut opts = MqttOptions::new("v5-station-0", "localhost", emu.port());
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(emu.claim_tls()),
    ));
    opts.set_keep_alive(Duration::from_secs(60));
    let (client, mut el) = AsyncClient::new(opts, 16);
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(p)) => {
                    if tx.send(Ok(p)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    let mut next = async || {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("nothing within the timeout")
            .expect("event loop ended")
            .expect("connection failed")
    };
    match next().await {
        v5::Packet::ConnAck(a) => {
            assert_eq!(a.code, C5::Success);
            let p = a.properties.expect("CONNACK properties");
            assert_eq!(p.max_qos, Some(1));
            assert_eq!(p.retain_available, Some(1));
            assert_eq!(p.subscription_identifiers_available, Some(0));
            assert_eq!(p.server_keep_alive, None, "60 s is within AWS's range");
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let filters: Vec<String> = [Api::CreateCertificateFromCsr, template()]
        .iter()
        .flat_map(|api| {
            [ReplyKind::Accepted, ReplyKind::Rejected].map(|k| api.reply_topic(Format::Json, k))
        })
        .collect();
    client
        .subscribe_many(
            filters
                .iter()
                .map(|f| v5::Filter::new(f.clone(), Q5::AtLeastOnce)),
        )
        .await
        .unwrap();
    match next().await {
        v5::Packet::SubAck(s) => assert_eq!(s.return_codes, vec![S5::Success(Q5::AtLeastOnce); 4]),
        other => panic!("expected SUBACK, got {other:?}"),
    }

    let key = KeyPair::generate().unwrap();
    client
        .publish(CSR_REQUEST, Q5::AtLeastOnce, false, csr_body(&key))
        .await
        .unwrap();
    let created: CreateCertificateFromCsrResponse = loop {
        match next().await {
            v5::Packet::Publish(p) => {
                assert_eq!(&p.topic[..], CSR_ACCEPTED.as_bytes());
                break decode(Format::Json, &p.payload).unwrap();
            }
            v5::Packet::PubAck(a) => assert_eq!(a.reason, P5::Success),
            other => panic!("unexpected {other:?}"),
        }
    };
    let body = api_support::register_request(
        Format::Json,
        created.certificate_ownership_token.expose(),
        &[
            ("ThingName", "v5-thing-1"),
            ("SerialNumber", "1"),
            ("DeviceLocation", "Seattle"),
        ],
    );
    client
        .publish(
            template().request_topic(Format::Json),
            Q5::AtLeastOnce,
            false,
            body,
        )
        .await
        .unwrap();
    let registered: RegisterThingResponse = loop {
        match next().await {
            v5::Packet::Publish(p) => {
                let topic = String::from_utf8(p.topic.to_vec()).unwrap();
                assert!(topic.ends_with("/accepted"), "{topic}");
                break decode(Format::Json, &p.payload).unwrap();
            }
            v5::Packet::PubAck(a) => assert_eq!(a.reason, P5::Success),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(registered.thing_name.as_deref(), Some("v5-thing-1"));
    assert!(
        emu.emulator
            .registry()
            .thing("v5-thing-1")
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn mqtt5_connack_tells_the_client_what_aws_enforces() {
    let b = BrokerEmu::start(aws).await;
    let mut props = v5::ConnectProperties::new();
    props.session_expiry_interval = Some(7200);
    for (i, (asked, told)) in [
        (5u16, Some(30u16)),
        (0, Some(1200)),
        (5000, Some(1200)),
        (60, None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Raw::open(b.addr(), b.tls()).await;
        c.send5(connect5(
            &format!("connack-{i}"),
            asked,
            Some(props.clone()),
        ))
        .await;
        let Some(v5::Packet::ConnAck(a)) = c.recv5().await else {
            panic!("no CONNACK")
        };
        assert_eq!(a.code, C5::Success);
        assert!(!a.session_present);
        let p = a.properties.expect("CONNACK properties");
        assert_eq!(p.server_keep_alive, told, "keep-alive {asked}");
        assert_eq!(p.max_qos, Some(1));
        assert_eq!(p.retain_available, Some(1));
        assert_eq!(p.wildcard_subscription_available, Some(1));
        assert_eq!(p.subscription_identifiers_available, Some(0));
        assert_eq!(p.shared_subscription_available, Some(1));
        assert_eq!(p.receive_max, Some(100));
        assert_eq!(p.topic_alias_max, Some(8));
        assert_eq!(p.max_packet_size, Some((PAYLOAD_LIMIT + 16 * 1024) as u32));
        // A persistent session lasts at most AWS's hour: a longer interval is cut to it.
        assert_eq!(p.session_expiry_interval, Some(3600));
    }
}

// ---------------------------------------------------------------------------------------------
// Policy violations (docs/aws-fleet-provisioning.md §6).

#[tokio::test]
async fn mqtt5_policy_violations_get_0x87_and_the_connection_stays_usable() {
    let b = BrokerEmu::start(|_| {}).await;
    let (mut c, _) = b.v5("v5-policy").await;
    assert_eq!(
        puback5(&mut c, "devices/telemetry", 1, b"x").await,
        P5::NotAuthorized
    );
    assert_eq!(
        suback5(&mut c, 2, &[("devices/#", 1), (CSR_ACCEPTED, 1)]).await,
        vec![S5::NotAuthorized, S5::Success(Q5::AtLeastOnce)]
    );
    // A QoS 0 violation has no ack; the connection still stays.
    c.send5(publish5("devices/telemetry", 0, 0, b"x")).await;
    assert!(c.ping5().await.is_empty());
    // And a provisioning request on the same connection is answered.
    let key = KeyPair::generate().unwrap();
    c.send5(publish5(CSR_REQUEST, 1, 3, &csr_body(&key))).await;
    let reply = next_publish5(&mut c).await;
    assert_eq!(&reply.topic[..], CSR_ACCEPTED.as_bytes());
}

#[tokio::test]
async fn mqtt311_policy_violations_close_the_connection() {
    let b = BrokerEmu::start(|_| {}).await;
    let mut c = b.v4("v4-policy-sub").await;
    c.send4(subscribe4(1, &[(CSR_ACCEPTED, 1), ("devices/#", 1)]))
        .await;
    let seen = c.until_closed4().await;
    assert!(seen.is_empty(), "no SUBACK before the close: {seen:?}");

    let mut c = b.v4("v4-policy-pub0").await;
    c.send4(publish4("devices/telemetry", 0, 0, b"x")).await;
    assert!(c.until_closed4().await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// QoS 2 (docs/aws-fleet-provisioning.md §2): no PUBACK or SUBACK, not processed, on both versions.

#[tokio::test]
async fn qos2_gets_no_ack_and_is_not_processed_on_either_version() {
    let b = BrokerEmu::permissive(|_| {}).await;

    let mut c = b.v4("v4-qos2").await;
    assert_eq!(
        suback4(&mut c, 1, &[("q2/t", 1)]).await,
        vec![v4::SubscribeReasonCode::Success(q4(1))]
    );
    c.send4(publish4("q2/t", 2, 5, b"two")).await;
    c.send4(subscribe4(2, &[("q2/other", 2)])).await;
    assert!(c.ping4().await.is_empty(), "no PUBACK/PUBREC/SUBACK");
    c.send4(publish4("q2/other", 0, 0, b"not subscribed")).await;
    c.send4(publish4("q2/t", 0, 0, b"marker")).await;
    let p = next_publish4(&mut c).await;
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        ("q2/t", &b"marker"[..]),
        "the QoS 2 message and the QoS 2 subscription were not processed"
    );

    let (mut c, _) = b.v5("v5-qos2").await;
    assert_eq!(
        suback5(&mut c, 1, &[("q2/t", 1)]).await,
        vec![S5::Success(Q5::AtLeastOnce)]
    );
    c.send5(publish5("q2/t", 2, 5, b"two")).await;
    c.send5(subscribe5(2, &[("q2/other", 2), ("q2/t", 0)]))
        .await;
    assert!(c.ping5().await.is_empty(), "no PUBACK/PUBREC/SUBACK");
    c.send5(publish5("q2/other", 0, 0, b"not subscribed")).await;
    c.send5(publish5("q2/t", 1, 6, b"marker")).await;
    let p = next_publish5(&mut c).await;
    assert_eq!(&p.payload[..], b"marker");
    // The QoS 2 SUBSCRIBE did not downgrade q2/t either: delivered at QoS 1.
    assert_eq!(p.qos, Q5::AtLeastOnce);
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE, UNSUBSCRIBE, PINGREQ.

#[tokio::test]
async fn one_subscribe_with_several_filters_grants_each() {
    let b = BrokerEmu::permissive(|_| {}).await;
    let (mut c, _) = b.v5("v5-multi").await;
    assert_eq!(
        suback5(&mut c, 1, &[("m/a", 1), ("m/b/+", 0), ("m/c/#", 1)]).await,
        vec![
            S5::Success(Q5::AtLeastOnce),
            S5::Success(Q5::AtMostOnce),
            S5::Success(Q5::AtLeastOnce)
        ]
    );
    for (i, t) in ["m/a", "m/b/x", "m/c/d/e"].iter().enumerate() {
        c.send5(publish5(t, 1, 10 + i as u16, t.as_bytes())).await;
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = next_publish5(&mut c).await;
        got.push((String::from_utf8(p.topic.to_vec()).unwrap(), p.qos));
    }
    assert_eq!(
        got,
        vec![
            ("m/a".to_string(), Q5::AtLeastOnce),
            ("m/b/x".to_string(), Q5::AtMostOnce),
            ("m/c/d/e".to_string(), Q5::AtLeastOnce)
        ]
    );

    let mut c = b.v4("v4-multi").await;
    assert_eq!(
        suback4(&mut c, 1, &[("n/a", 0), ("n/#", 1)]).await,
        vec![
            v4::SubscribeReasonCode::Success(q4(0)),
            v4::SubscribeReasonCode::Success(q4(1))
        ]
    );
    c.send4(publish4("n/a", 1, 2, b"x")).await;
    let p = next_publish4(&mut c).await;
    assert_eq!(p.topic, "n/a");
    assert_eq!(p.qos, q4(1), "overlapping filters: the highest QoS, once");
}

// ---------------------------------------------------------------------------------------------
// Topic filters as AWS matches them (AWS IoT Core developer guide, "MQTT topics" and "AWS IoT
// differences from MQTT specifications").

/// Topics of the PUBLISHes a 3.1.1 client receives until one on `marker`.
async fn topics_until_marker4(c: &mut Raw) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let p = next_publish4(c).await;
        if p.topic == "marker" {
            return got;
        }
        got.push(p.topic);
    }
}

/// Topics of the PUBLISHes an MQTT 5 client receives until one on `marker`.
async fn topics_until_marker5(c: &mut Raw) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let p = next_publish5(c).await;
        let topic = String::from_utf8(p.topic.to_vec()).unwrap();
        if topic == "marker" {
            return got;
        }
        got.push(topic);
    }
}

#[tokio::test]
async fn a_multi_level_wildcard_does_not_match_the_parent_level_as_on_aws() {
    // AWS: `sensor/#` receives `sensor/`, `sensor/temperature`, `sensor/temperature/room1`,
    // not `sensor` (the MQTT specification would deliver `sensor` too).
    let topics = [
        "sensor",
        "sensor/",
        "sensor/temperature",
        "sensor/temperature/room1",
        "sensors/x",
        "marker",
    ];
    let expected = ["sensor/", "sensor/temperature", "sensor/temperature/room1"];
    let b = BrokerEmu::permissive(|_| {}).await;

    let (mut c5, _) = b.v5("v5-parent").await;
    suback5(&mut c5, 1, &[("sensor/#", 0), ("marker", 0)]).await;
    for t in topics {
        c5.send5(publish5(t, 0, 0, b"x")).await;
    }
    assert_eq!(topics_until_marker5(&mut c5).await, expected);

    let mut c4 = b.v4("v4-parent").await;
    suback4(&mut c4, 1, &[("sensor/#", 0), ("marker", 0)]).await;
    for t in topics {
        c4.send4(publish4(t, 0, 0, b"x")).await;
    }
    assert_eq!(topics_until_marker4(&mut c4).await, expected);
}

#[tokio::test]
async fn first_level_wildcards_do_not_match_reserved_dollar_topics() {
    let b = BrokerEmu::permissive(|_| {}).await;
    let (mut wild, _) = b.v5("v5-wild").await;
    suback5(&mut wild, 1, &[("#", 0), ("+/things/#", 0)]).await;
    let (mut reserved, _) = b.v5("v5-reserved").await;
    suback5(&mut reserved, 1, &[("$aws/things/#", 0), ("marker", 0)]).await;
    let mut wild4 = b.v4("v4-wild").await;
    suback4(&mut wild4, 1, &[("#", 0)]).await;

    let shadow = "$aws/things/t/shadow/update";
    for t in [shadow, "x/things/t", "marker"] {
        wild.send5(publish5(t, 0, 0, b"x")).await;
    }
    // `#` and `+/things/#` get the ordinary topics only; `$aws/things/#` gets the reserved one.
    assert_eq!(topics_until_marker5(&mut wild).await, ["x/things/t"]);
    assert_eq!(topics_until_marker4(&mut wild4).await, ["x/things/t"]);
    assert_eq!(topics_until_marker5(&mut reserved).await, [shadow]);
}

#[tokio::test]
async fn after_unsubscribe_nothing_more_is_delivered() {
    let b = BrokerEmu::permissive(|_| {}).await;
    let (mut c, _) = b.v5("v5-unsub").await;
    suback5(&mut c, 1, &[("u/1", 0), ("u/2", 0)]).await;
    c.send5(publish5("u/1", 0, 0, b"before")).await;
    assert_eq!(&next_publish5(&mut c).await.payload[..], b"before");
    c.send5(unsubscribe5(2, &["u/1", "u/never"])).await;
    match c.recv5().await {
        Some(v5::Packet::UnsubAck(u)) => {
            assert_eq!(u.pkid, 2);
            assert_eq!(u.reasons, vec![U5::Success, U5::NoSubscriptionExisted]);
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    c.send5(publish5("u/1", 0, 0, b"after")).await;
    c.send5(publish5("u/2", 0, 0, b"marker")).await;
    assert_eq!(&next_publish5(&mut c).await.payload[..], b"marker");

    let mut c = b.v4("v4-unsub").await;
    suback4(&mut c, 1, &[("u/1", 0), ("u/2", 0)]).await;
    c.send4(unsubscribe4(2, "u/1")).await;
    assert!(matches!(c.recv4().await, Some(v4::Packet::UnsubAck(u)) if u.pkid == 2));
    c.send4(publish4("u/1", 0, 0, b"after")).await;
    c.send4(publish4("u/2", 0, 0, b"marker")).await;
    assert_eq!(&next_publish4(&mut c).await.payload[..], b"marker");
}

#[tokio::test]
async fn pingreq_gets_pingresp_on_both_versions() {
    let b = BrokerEmu::start(|_| {}).await;
    let mut c4 = b.v4("v4-ping").await;
    assert!(c4.ping4().await.is_empty());
    assert!(c4.ping4().await.is_empty());
    let (mut c5, _) = b.v5("v5-ping").await;
    assert!(c5.ping5().await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Keep-alive, take-over, payload size.

#[tokio::test]
async fn silence_past_one_and_a_half_keep_alives_disconnects() {
    // Keep-alive 1 s (AWS's minimum is 30 s; lowered so the test is quick).
    let b = BrokerEmu::start(|cfg| cfg.broker_limits.keep_alive_min_s = Some(1)).await;
    let mut c = Raw::open(b.addr(), b.tls()).await;
    c.send5(connect5("v5-keepalive", 1, None)).await;
    let Some(v5::Packet::ConnAck(a)) = c.recv5().await else {
        panic!("no CONNACK")
    };
    let start = Instant::now();
    assert_eq!(a.properties.and_then(|p| p.server_keep_alive), None);
    assert_eq!(disconnect_reason(&mut c).await, D5::KeepAliveTimeout);
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "disconnected at 1.5 × keep-alive, not before: {:?}",
        start.elapsed()
    );

    let mut c = Raw::open(b.addr(), b.tls()).await;
    c.send4(connect4("v4-keepalive", 1)).await;
    assert!(matches!(c.recv4().await, Some(v4::Packet::ConnAck(_))));
    let start = Instant::now();
    assert!(c.until_closed4().await.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(1400));

    // A client that keeps pinging stays.
    let (mut c, _) = b.v5("v5-pinger").await;
    for _ in 0..3 {
        assert!(c.ping5().await.is_empty());
    }
}

#[tokio::test]
async fn a_second_mqtt5_connection_with_the_same_client_id_takes_over_with_0x8e() {
    let b = BrokerEmu::start(|_| {}).await;
    let (mut first, _) = b.v5("dup-5").await;
    let (mut second, _) = b.v5("dup-5").await;
    assert_eq!(disconnect_reason(&mut first).await, D5::SessionTakenOver);
    assert!(second.ping5().await.is_empty());
    assert_eq!(b.emu.emulator.connected_clients(), 1);
}

#[tokio::test]
async fn a_payload_over_128_kb_closes_3_1_1_and_gets_0x95_on_mqtt5() {
    let b = BrokerEmu::permissive(|_| {}).await;
    let (mut c, _) = b.v5("v5-big").await;
    let limit = vec![b'x'; PAYLOAD_LIMIT];
    assert_eq!(puback5(&mut c, "big/t", 1, &limit).await, P5::Success);
    c.send5(publish5("big/t", 1, 2, &vec![b'x'; PAYLOAD_LIMIT + 1]))
        .await;
    assert_eq!(disconnect_reason(&mut c).await, D5::PacketTooLarge);

    // Far over the limit: refused from its fixed header, without buffering it.
    let (mut c, _) = b.v5("v5-huge").await;
    c.send5(publish5("big/t", 0, 0, &vec![b'x'; 4 * PAYLOAD_LIMIT]))
        .await;
    assert_eq!(disconnect_reason(&mut c).await, D5::PacketTooLarge);

    let mut c = b.v4("v4-big").await;
    c.send4(publish4("big/t", 1, 1, &limit)).await;
    assert!(matches!(c.recv4().await, Some(v4::Packet::PubAck(a)) if a.pkid == 1));
    c.send4(publish4("big/t", 1, 2, &vec![b'x'; PAYLOAD_LIMIT + 1]))
        .await;
    assert!(c.until_closed4().await.is_empty(), "no PUBACK");
}

#[tokio::test]
async fn a_lowered_payload_limit_applies_to_publishes_and_wills() {
    let b = BrokerEmu::permissive(|cfg| cfg.broker_limits.max_payload_bytes = Some(1024)).await;
    let (mut c, _) = b.v5("v5-1k").await;
    assert_eq!(puback5(&mut c, "k/t", 1, &[0u8; 1024]).await, P5::Success);
    c.send5(publish5("k/t", 0, 0, &[0u8; 1025])).await;
    assert_eq!(disconnect_reason(&mut c).await, D5::PacketTooLarge);

    // AWS rejects CONNECT requests over the limit too: a will payload over it is refused.
    let mut c = Raw::open(b.addr(), b.tls()).await;
    c.send5(v5::Packet::Connect(
        v5::Connect {
            keep_alive: 60,
            client_id: "v5-big-will".into(),
            clean_start: true,
            properties: None,
        },
        Some(v5::LastWill::new(
            "will/t",
            vec![0u8; 2000],
            Q5::AtMostOnce,
            false,
            None,
        )),
        None,
    ))
    .await;
    let seen = c.until_closed5().await;
    assert!(
        matches!(seen.as_slice(), [v5::Packet::ConnAck(a)] if a.code == C5::PacketTooLarge),
        "{seen:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The `aws` profile's limits (docs/aws-fleet-provisioning.md §5.2).

#[tokio::test]
async fn aws_inbound_publishes_over_100_per_second_are_discarded() {
    let b = BrokerEmu::permissive(aws).await;
    const N: u16 = 300;

    let (mut c, _) = b.v5("v5-rate").await;
    let mut burst = bytes::BytesMut::new();
    for i in 1..=N {
        publish5("rate/t", 1, i, b"x")
            .write(&mut burst, None)
            .unwrap();
    }
    let start = Instant::now();
    c.send_raw(&burst).await;
    let (mut ok, mut quota) = (0u32, 0u32);
    for _ in 0..N {
        match c.recv5().await {
            Some(v5::Packet::PubAck(a)) if a.reason == P5::Success => ok += 1,
            Some(v5::Packet::PubAck(a)) if a.reason == P5::QuotaExceeded => quota += 1,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    let bound = 100 + (start.elapsed().as_secs_f64() * 100.0).ceil() as u32 + 1;
    assert!(ok >= 100 && ok <= bound, "{ok} accepted, bound {bound}");
    assert_eq!(ok + quota, u32::from(N));
    assert!(c.ping5().await.is_empty(), "the connection stays");

    // 3.1.1: the excess is dropped without PUBACK.
    let mut c = b.v4("v4-rate").await;
    let mut burst = bytes::BytesMut::new();
    for i in 1..=N {
        publish4("rate/t", 1, i, b"x")
            .write(&mut burst, usize::MAX)
            .unwrap();
    }
    let start = Instant::now();
    c.send_raw(&burst).await;
    let acks = c.ping4().await.len() as u32;
    let bound = 100 + (start.elapsed().as_secs_f64() * 100.0).ceil() as u32 + 1;
    assert!(
        acks >= 100 && acks <= bound,
        "{acks} PUBACKs, bound {bound}"
    );
}

#[tokio::test]
async fn aws_outbound_publishes_over_the_rate_are_discarded() {
    // The aws profile with the rate lowered to 10/s so two publishers can exceed a
    // subscriber's outbound rate while staying within their own inbound rate.
    let b = BrokerEmu::permissive(|cfg| {
        aws(cfg);
        cfg.broker_limits.publishes_per_second = Some(10);
    })
    .await;
    let (mut sub, _) = b.v5("v5-out-sub").await;
    suback5(&mut sub, 1, &[("out/t", 0), ("out/marker", 0)]).await;
    let (mut p1, _) = b.v5("v5-out-p1").await;
    let (mut p2, _) = b.v5("v5-out-p2").await;
    let (mut m, _) = b.v5("v5-out-marker").await;
    let mut burst = bytes::BytesMut::new();
    for i in 1..=10u16 {
        publish5("out/t", 1, i, b"m")
            .write(&mut burst, None)
            .unwrap();
    }
    let start = Instant::now();
    p1.send_raw(&burst).await;
    p2.send_raw(&burst).await;
    for p in [&mut p1, &mut p2] {
        let acks = p.ping5().await;
        assert_eq!(acks.len(), 10);
        assert!(
            acks.iter()
                .all(|a| matches!(a, v5::Packet::PubAck(a) if a.reason == P5::Success))
        );
    }
    // Every message above is queued for the subscriber before any marker. Markers are sent
    // until one gets through the subscriber's (refilling) outbound rate.
    let counter = tokio::spawn(async move {
        let mut before_marker = 0u32;
        loop {
            let p = next_publish5(&mut sub).await;
            if &p.topic[..] == b"out/marker" {
                return before_marker;
            }
            before_marker += 1;
        }
    });
    let mut pkid = 0u16;
    while !counter.is_finished() {
        pkid = pkid % 60_000 + 1;
        let _ = puback5(&mut m, "out/marker", pkid, b"marker").await;
    }
    let delivered = counter.await.unwrap();
    let bound = 10 + (start.elapsed().as_secs_f64() * 10.0).ceil() as u32 + 1;
    assert!(
        delivered < 20 && delivered <= bound,
        "{delivered} of 20 delivered, bound {bound}"
    );
}

#[tokio::test]
async fn aws_subscriptions_per_connection_are_limited_to_50() {
    let b = BrokerEmu::permissive(aws).await;
    let names: Vec<String> = (0..51).map(|i| format!("sub/{i}")).collect();

    let (mut c, _) = b.v5("v5-subs").await;
    for (i, chunk) in names[..50].chunks(8).enumerate() {
        let filters: Vec<(&str, u8)> = chunk.iter().map(|f| (f.as_str(), 1)).collect();
        let codes = suback5(&mut c, 1 + i as u16, &filters).await;
        assert!(codes.iter().all(|c| *c == S5::Success(Q5::AtLeastOnce)));
    }
    assert_eq!(
        suback5(&mut c, 20, &[(names[50].as_str(), 1), ("sub/0", 0)]).await,
        vec![S5::QuotaExceeded, S5::Success(Q5::AtMostOnce)],
        "a new 51st is refused; replacing an existing one is not a new subscription"
    );
    assert!(c.ping5().await.is_empty(), "MQTT 5 keeps the connection");

    let mut c = b.v4("v4-subs").await;
    for (i, chunk) in names[..50].chunks(8).enumerate() {
        let filters: Vec<(&str, u8)> = chunk.iter().map(|f| (f.as_str(), 1)).collect();
        suback4(&mut c, 1 + i as u16, &filters).await;
    }
    c.send4(subscribe4(20, &[(names[50].as_str(), 1)])).await;
    let seen = c.until_closed4().await;
    assert!(
        matches!(seen.as_slice(), [v4::Packet::SubAck(s)]
            if s.return_codes == vec![v4::SubscribeReasonCode::Failure]),
        "SUBACK failure, then closed: {seen:?}"
    );
}

#[tokio::test]
async fn aws_topic_filters_per_subscribe_are_limited_to_8() {
    let b = BrokerEmu::permissive(aws).await;
    let nine: Vec<String> = (0..9).map(|i| format!("f/{i}")).collect();
    let nine: Vec<(&str, u8)> = nine.iter().map(|f| (f.as_str(), 0)).collect();

    let (mut c, _) = b.v5("v5-filters").await;
    assert_eq!(suback5(&mut c, 1, &nine).await, vec![S5::QuotaExceeded; 9]);
    assert_eq!(
        suback5(&mut c, 2, &nine[1..]).await,
        vec![S5::Success(Q5::AtMostOnce); 8]
    );
    // f/0 was not subscribed by the refused SUBSCRIBE.
    c.send5(publish5("f/0", 0, 0, b"no")).await;
    c.send5(publish5("f/1", 0, 0, b"marker")).await;
    assert_eq!(&next_publish5(&mut c).await.payload[..], b"marker");

    let mut c = b.v4("v4-filters").await;
    c.send4(subscribe4(1, &nine)).await;
    assert!(c.until_closed4().await.is_empty(), "closed without SUBACK");
}

#[tokio::test]
async fn aws_a_second_connect_within_a_second_per_client_id_is_refused() {
    let b = BrokerEmu::start(aws).await;
    let (mut first, _) = b.v5("rate-5").await;
    let mut again = Raw::open(b.addr(), b.tls()).await;
    again.send5(connect5("rate-5", 60, None)).await;
    let seen = again.until_closed5().await;
    assert!(
        matches!(seen.as_slice(), [v5::Packet::ConnAck(a)] if a.code == C5::ConnectionRateExceeded),
        "{seen:?}"
    );
    assert!(first.ping5().await.is_empty(), "the holder is not kicked");
    let (_other, _) = b.v5("rate-5-other").await;

    let mut first = b.v4("rate-4").await;
    let mut again = Raw::open(b.addr(), b.tls()).await;
    again.send4(connect4("rate-4", 60)).await;
    assert!(
        again.until_closed4().await.is_empty(),
        "3.1.1: closed without CONNACK"
    );
    assert!(first.ping4().await.is_empty());
}

#[tokio::test]
async fn aws_client_ids_are_limited_to_128_bytes() {
    let b = BrokerEmu::start(aws).await;
    let id128 = "c".repeat(128);
    let id129 = "c".repeat(129);
    let (_ok, _) = b.v5(&id128).await;
    let mut c = Raw::open(b.addr(), b.tls()).await;
    c.send5(connect5(&id129, 60, None)).await;
    assert!(matches!(
        c.until_closed5().await.as_slice(),
        [v5::Packet::ConnAck(a)] if a.code == C5::ClientIdentifierNotValid
    ));
    let mut c = Raw::open(b.addr(), b.tls()).await;
    c.send4(connect4(&id129, 60)).await;
    assert!(matches!(
        c.until_closed4().await.as_slice(),
        [v4::Packet::ConnAck(a)] if a.code == v4::ConnectReturnCode::BadClientId
    ));

    // The unlimited profile has no client-id length quota.
    let u = BrokerEmu::start(|_| {}).await;
    let (_long, _) = u.v5(&id129).await;
}

#[tokio::test]
async fn aws_topics_are_limited_to_256_bytes_and_7_slashes() {
    let b = BrokerEmu::permissive(aws).await;
    let seven = "a/b/c/d/e/f/g/h";
    let eight = "a/b/c/d/e/f/g/h/i";
    let max_len = "t".repeat(256);
    let too_long = "t".repeat(257);
    // Basic Ingest's `$aws/rules/<rule>/` prefix is not counted (AWS quotas page).
    let ingest = format!("$aws/rules/my_rule/{seven}");
    let ingest_long = format!("$aws/rules/my_rule/{max_len}");

    let (mut c, _) = b.v5("v5-topics").await;
    let cases = [
        (seven, P5::Success),
        (eight, P5::TopicNameInvalid),
        (max_len.as_str(), P5::Success),
        (too_long.as_str(), P5::TopicNameInvalid),
        (ingest.as_str(), P5::Success),
        (ingest_long.as_str(), P5::Success),
    ];
    for (i, (topic, want)) in cases.into_iter().enumerate() {
        assert_eq!(
            puback5(&mut c, topic, 1 + i as u16, b"x").await,
            want,
            "{topic}"
        );
    }
    assert_eq!(
        suback5(&mut c, 9, &[(seven, 0), (eight, 0), (too_long.as_str(), 0)]).await,
        vec![
            S5::Success(Q5::AtMostOnce),
            S5::TopicFilterInvalid,
            S5::TopicFilterInvalid
        ]
    );

    let mut c = b.v4("v4-topics").await;
    assert_eq!(
        suback4(&mut c, 1, &[(eight, 0)]).await,
        vec![v4::SubscribeReasonCode::Failure]
    );
    c.send4(publish4(eight, 1, 2, b"x")).await;
    assert!(c.until_closed4().await.is_empty(), "closed without PUBACK");
}

// ---------------------------------------------------------------------------------------------
// Other MQTT 5 behaviour.

#[tokio::test]
async fn mqtt5_subscription_identifiers_are_refused() {
    let b = BrokerEmu::permissive(|_| {}).await;
    let (mut c, _) = b.v5("v5-subid").await;
    let mut s = v5::Subscribe::new_many(
        [
            v5::Filter::new("s/a", Q5::AtLeastOnce),
            v5::Filter::new("s/b", Q5::AtMostOnce),
        ],
        Some(v5::SubscribeProperties {
            id: Some(7),
            user_properties: Vec::new(),
        }),
    );
    s.pkid = 1;
    c.send5(v5::Packet::Subscribe(s)).await;
    match c.recv5().await {
        Some(v5::Packet::SubAck(a)) => {
            assert_eq!(a.return_codes, vec![S5::SubscriptionIdNotSupported; 2])
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    assert!(c.ping5().await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Shared subscriptions. AWS IoT Core supports them on MQTT 3.1.1 and 5: clients subscribe to
// `$share/{ShareName}/{TopicFilter}` and each message goes to only one member of the group
// (developer guide, "MQTT" → shared subscriptions).

#[tokio::test]
async fn a_shared_subscription_delivers_each_message_to_one_member_on_either_version() {
    let b = BrokerEmu::permissive(|_| {}).await;
    let shared = "$share/workers/jobs/#";
    let (mut m1, _) = b.v5("v5-member-1").await;
    let (mut m2, _) = b.v5("v5-member-2").await;
    let mut m3 = b.v4("v4-member-3").await;
    for m in [&mut m1, &mut m2] {
        assert_eq!(
            suback5(m, 1, &[(shared, 1), ("marker", 0)]).await,
            vec![S5::Success(Q5::AtLeastOnce), S5::Success(Q5::AtMostOnce)]
        );
    }
    assert_eq!(
        suback4(&mut m3, 1, &[(shared, 1), ("marker", 0)]).await,
        vec![
            v4::SubscribeReasonCode::Success(q4(1)),
            v4::SubscribeReasonCode::Success(q4(0))
        ]
    );
    // An ordinary subscriber of the same filter gets every message.
    let (mut all, _) = b.v5("v5-ordinary").await;
    suback5(&mut all, 1, &[("jobs/#", 0), ("marker", 0)]).await;

    let (mut publisher, _) = b.v5("v5-jobs").await;
    let jobs: Vec<String> = (0..6).map(|i| format!("jobs/{i}")).collect();
    for (i, job) in jobs.iter().enumerate() {
        assert_eq!(
            puback5(&mut publisher, job, 1 + i as u16, b"j").await,
            P5::Success
        );
    }
    // `jobs` does not match `jobs/#` (AWS's parent rule) and goes to nobody.
    publisher.send5(publish5("jobs", 0, 0, b"j")).await;
    publisher.send5(publish5("marker", 0, 0, b"m")).await;

    let got = [
        topics_until_marker5(&mut m1).await,
        topics_until_marker5(&mut m2).await,
        topics_until_marker4(&mut m3).await,
    ];
    let mut delivered: Vec<String> = got.iter().flatten().cloned().collect();
    delivered.sort();
    assert_eq!(
        delivered, jobs,
        "each message to exactly one member: {got:?}"
    );
    assert!(
        got.iter().all(|g| !g.is_empty()),
        "members take turns: {got:?}"
    );
    assert_eq!(topics_until_marker5(&mut all).await, jobs);
}

#[tokio::test]
async fn a_member_that_unsubscribes_or_leaves_gets_no_more_shared_messages() {
    let b = BrokerEmu::permissive(|_| {}).await;
    let shared = "$share/g/work";
    let (mut stays, _) = b.v5("v5-stays").await;
    suback5(&mut stays, 1, &[(shared, 0), ("marker", 0)]).await;
    let (mut goes, _) = b.v5("v5-goes").await;
    suback5(&mut goes, 1, &[(shared, 0), ("marker", 0)]).await;
    let mut gone = b.v4("v4-gone").await;
    suback4(&mut gone, 1, &[(shared, 0)]).await;

    // The UNSUBACK says `goes` left the group; the broker closes `gone`'s connection only
    // after taking it out of its groups.
    goes.send5(unsubscribe5(2, &[shared])).await;
    assert!(
        matches!(goes.recv5().await, Some(v5::Packet::UnsubAck(u)) if u.reasons == [U5::Success])
    );
    gone.send4(v4::Packet::Disconnect).await;
    assert!(gone.until_closed4().await.is_empty());

    let (mut publisher, _) = b.v5("v5-work").await;
    for i in 0..4u16 {
        assert_eq!(
            puback5(&mut publisher, "work", 1 + i, b"w").await,
            P5::Success
        );
    }
    publisher.send5(publish5("marker", 0, 0, b"m")).await;
    assert_eq!(topics_until_marker5(&mut goes).await, Vec::<String>::new());
    assert_eq!(topics_until_marker5(&mut stays).await, ["work"; 4]);
}

#[tokio::test]
async fn shared_subscription_filters_are_checked() {
    let b = BrokerEmu::permissive(|_| {}).await;
    let (mut c, _) = b.v5("v5-share-filters").await;
    assert_eq!(
        suback5(
            &mut c,
            1,
            &[
                ("$share/g", 0),
                ("$share//a", 0),
                ("$share/g+/a", 0),
                ("$share/g/a/#/b", 0),
                ("$share/g/a/+", 0),
            ]
        )
        .await,
        vec![
            S5::TopicFilterInvalid,
            S5::TopicFilterInvalid,
            S5::TopicFilterInvalid,
            S5::TopicFilterInvalid,
            S5::Success(Q5::AtMostOnce),
        ]
    );
    // MQTT 5 §3.8.3.1: No Local on a shared subscription is a Protocol Error.
    let mut f = v5::Filter::new("$share/g/a", Q5::AtMostOnce);
    f.nolocal = true;
    let mut s = v5::Subscribe::new(f, None);
    s.pkid = 2;
    c.send5(v5::Packet::Subscribe(s)).await;
    assert_eq!(disconnect_reason(&mut c).await, D5::ProtocolError);
}

#[tokio::test]
async fn retained_messages_follow_aws_rules() {
    let b = BrokerEmu::permissive(|_| {}).await;
    let (mut p, _) = b.v5("v5-retain-pub").await;
    let mut retained = v5::Publish::new("ret/a", Q5::AtLeastOnce, b"kept".to_vec(), None);
    retained.pkid = 1;
    retained.retain = true;
    p.send5(v5::Packet::Publish(retained)).await;
    assert!(matches!(p.recv5().await, Some(v5::Packet::PubAck(a)) if a.reason == P5::Success));

    // An exact filter gets it on subscribe, with RETAIN set.
    let (mut s, _) = b.v5("v5-retain-sub").await;
    suback5(&mut s, 1, &[("ret/a", 1)]).await;
    let got = next_publish5(&mut s).await;
    assert_eq!((&got.payload[..], got.retain), (&b"kept"[..], true));
    // A wildcard filter does not (AWS: only an exact match receives retained messages).
    let (mut w, _) = b.v5("v5-retain-wild").await;
    suback5(&mut w, 1, &[("ret/+", 1)]).await;
    assert!(w.ping5().await.is_empty());
    // 3.1.1 gets it too.
    let mut s4 = b.v4("v4-retain-sub").await;
    suback4(&mut s4, 1, &[("ret/a", 1)]).await;
    let got = next_publish4(&mut s4).await;
    assert_eq!((&got.payload[..], got.retain), (&b"kept"[..], true));

    // An empty retained payload deletes it.
    let mut delete = v5::Publish::new("ret/a", Q5::AtLeastOnce, Vec::<u8>::new(), None);
    delete.pkid = 2;
    delete.retain = true;
    p.send5(v5::Packet::Publish(delete)).await;
    assert!(matches!(p.recv5().await, Some(v5::Packet::PubAck(a)) if a.reason == P5::Success));
    let (mut late, _) = b.v5("v5-retain-late").await;
    suback5(&mut late, 1, &[("ret/a", 1)]).await;
    assert!(late.ping5().await.is_empty());

    // RETAIN on a reserved topic is refused.
    let mut reserved = v5::Publish::new(
        "$aws/things/t/shadow/update",
        Q5::AtLeastOnce,
        b"{}".to_vec(),
        None,
    );
    reserved.pkid = 3;
    reserved.retain = true;
    p.send5(v5::Packet::Publish(reserved)).await;
    assert!(matches!(
        p.recv5().await,
        Some(v5::Packet::PubAck(a)) if a.reason == P5::ImplementationSpecificError
    ));
}

#[tokio::test]
async fn retained_publish_needs_iot_retain_publish() {
    let policy = r#"{"Statement":[{"Effect":"Allow",
        "Action":["iot:Connect","iot:Publish","iot:Subscribe","iot:Receive"],"Resource":"*"}]}"#;
    let b = BrokerEmu::start_with_policy(Some(policy), |_| {}).await;
    let (mut c, _) = b.v5("v5-no-retain").await;
    let mut p = v5::Publish::new("r/t", Q5::AtLeastOnce, b"x".to_vec(), None);
    p.pkid = 1;
    p.retain = true;
    c.send5(v5::Packet::Publish(p)).await;
    assert!(matches!(
        c.recv5().await,
        Some(v5::Packet::PubAck(a)) if a.reason == P5::NotAuthorized
    ));
    assert_eq!(puback5(&mut c, "r/t", 2, b"x").await, P5::Success);
}

#[tokio::test]
async fn mqtt5_topic_aliases_no_local_and_forwarded_properties() {
    let b = BrokerEmu::permissive(|_| {}).await;
    let (mut sub, _) = b.v5("v5-props-sub").await;
    suback5(&mut sub, 1, &[("al/t", 1)]).await;
    let (mut c, _) = b.v5("v5-props-pub").await;

    // Alias 1 set with the topic, then used alone; user properties are forwarded.
    let props = v5::PublishProperties {
        topic_alias: Some(1),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    let mut p = v5::Publish::new("al/t", Q5::AtLeastOnce, b"one".to_vec(), Some(props));
    p.pkid = 1;
    c.send5(v5::Packet::Publish(p)).await;
    let props = v5::PublishProperties {
        topic_alias: Some(1),
        ..Default::default()
    };
    let mut p = v5::Publish::new("", Q5::AtLeastOnce, b"two".to_vec(), Some(props));
    p.pkid = 2;
    c.send5(v5::Packet::Publish(p)).await;
    let one = next_publish5(&mut sub).await;
    assert_eq!(
        (&one.topic[..], &one.payload[..]),
        (&b"al/t"[..], &b"one"[..])
    );
    let up = one
        .properties
        .map(|p| p.user_properties)
        .unwrap_or_default();
    assert_eq!(up, vec![("k".to_string(), "v".to_string())]);
    let two = next_publish5(&mut sub).await;
    assert_eq!(
        (&two.topic[..], &two.payload[..]),
        (&b"al/t"[..], &b"two"[..])
    );

    // No Local: a connection's own publish is not sent back to that subscription.
    let mut nl = v5::Filter::new("nl/t", Q5::AtMostOnce);
    nl.nolocal = true;
    let mut s = v5::Subscribe::new_many([nl, v5::Filter::new("nl/marker", Q5::AtMostOnce)], None);
    s.pkid = 3;
    c.send5(v5::Packet::Subscribe(s)).await;
    let _ = next_suback(&mut c).await;
    c.send5(publish5("nl/t", 0, 0, b"own")).await;
    c.send5(publish5("nl/marker", 0, 0, b"marker")).await;
    assert_eq!(&next_publish5(&mut c).await.payload[..], b"marker");

    // An alias above the Topic Alias Maximum (8) is a protocol violation: DISCONNECT 0x94.
    let props = v5::PublishProperties {
        topic_alias: Some(9),
        ..Default::default()
    };
    let p = v5::Publish::new("al/t", Q5::AtMostOnce, b"x".to_vec(), Some(props));
    c.send5(v5::Packet::Publish(p)).await;
    assert_eq!(disconnect_reason(&mut c).await, D5::TopicAliasInvalid);
}

async fn next_suback(c: &mut Raw) -> v5::SubAck {
    loop {
        match c.recv5().await {
            Some(v5::Packet::SubAck(s)) => return s,
            Some(_) => {}
            None => panic!("closed waiting for SUBACK"),
        }
    }
}

#[tokio::test]
async fn a_client_maximum_packet_size_is_respected() {
    let b = BrokerEmu::permissive(|_| {}).await;
    let mut props = v5::ConnectProperties::new();
    props.max_packet_size = Some(100);
    let mut small = Raw::open(b.addr(), b.tls()).await;
    small.send5(connect5("v5-small", 60, Some(props))).await;
    assert!(matches!(small.recv5().await, Some(v5::Packet::ConnAck(_))));
    suback5(&mut small, 1, &[("mp/#", 0)]).await;
    small.send5(publish5("mp/big", 0, 0, &[0u8; 200])).await;
    small.send5(publish5("mp/marker", 0, 0, b"m")).await;
    let p = next_publish5(&mut small).await;
    assert_eq!(
        &p.topic[..],
        b"mp/marker",
        "the oversized PUBLISH was discarded"
    );
}

#[tokio::test]
async fn protocol_errors_end_the_connection_with_the_right_reason() {
    let b = BrokerEmu::start(|_| {}).await;

    // A packet type that does not exist: malformed.
    let (mut c, _) = b.v5("v5-garbage").await;
    c.send_raw(&[0xF0, 0x00]).await;
    assert_eq!(disconnect_reason(&mut c).await, D5::MalformedPacket);

    // A second CONNECT: protocol error.
    let (mut c, _) = b.v5("v5-second").await;
    c.send5(connect5("v5-second", 60, None)).await;
    assert_eq!(disconnect_reason(&mut c).await, D5::ProtocolError);

    // A malformed 3.1.1 packet just closes.
    let mut c = b.v4("v4-garbage").await;
    c.send_raw(&[0x30, 0x03, 0xFF, 0xFF, 0x00]).await;
    assert!(c.until_closed4().await.is_empty());

    // MQTT 5 enhanced authentication is not supported.
    let mut props = v5::ConnectProperties::new();
    props.authentication_method = Some("SCRAM-SHA-1".into());
    let mut c = Raw::open(b.addr(), b.tls()).await;
    c.send5(connect5("v5-auth", 60, Some(props))).await;
    assert!(matches!(
        c.until_closed5().await.as_slice(),
        [v5::Packet::ConnAck(a)] if a.code == C5::BadAuthenticationMethod
    ));

    // MQTT 3.1 (protocol level 3) gets CONNACK 0x01.
    let mut connect = bytes::BytesMut::new();
    connect4("old", 60).write(&mut connect, usize::MAX).unwrap();
    connect[8] = 3;
    let mut c = Raw::open(b.addr(), b.tls()).await;
    c.send_raw(&connect).await;
    assert!(matches!(
        c.until_closed4().await.as_slice(),
        [v4::Packet::ConnAck(a)] if a.code == v4::ConnectReturnCode::RefusedProtocolVersion
    ));

    // Nothing here took the broker down.
    assert!(b.v5("v5-after").await.0.ping5().await.is_empty());
}

#[tokio::test]
async fn shutdown_sends_mqtt5_clients_0x8b() {
    let b = BrokerEmu::start(|_| {}).await;
    let (mut c, _) = b.v5("v5-shutdown").await;
    assert!(c.ping5().await.is_empty());
    b.emu.emulator.stop();
    assert_eq!(disconnect_reason(&mut c).await, D5::ServerShuttingDown);
}

// ---------------------------------------------------------------------------------------------
// The port-443-style listener (docs/aws-fleet-provisioning.md §7).

#[tokio::test]
async fn the_alpn_listener_accepts_x_amzn_mqtt_ca_and_refuses_without_it() {
    let b = BrokerEmu::start(|cfg| cfg.alpn_listen = Some("127.0.0.1:0".into())).await;
    let alpn_addr = b.emu.emulator.alpn_addr().expect("ALPN listener address");
    assert_ne!(alpn_addr, b.addr());

    let mut c = Raw::open(alpn_addr, b.tls_with_alpn(&[ALPN_MQTT_CA])).await;
    assert_eq!(c.alpn().as_deref(), Some(ALPN_MQTT_CA));
    c.send5(connect5("alpn-ok", 60, None)).await;
    assert!(matches!(c.recv5().await, Some(v5::Packet::ConnAck(a)) if a.code == C5::Success));
    assert!(c.ping5().await.is_empty());
    // The same broker: a request on it reaches the same client table.
    assert_eq!(b.emu.emulator.connected_clients(), 1);

    // No ALPN: the handshake completes, then the connection is closed before any CONNACK.
    let mut c = Raw::open(alpn_addr, b.tls()).await;
    c.send4(connect4("alpn-none", 60)).await;
    assert!(c.until_closed4().await.is_empty());

    // Another ALPN protocol (`mqtt` is AWS's custom-authentication one): refused in the
    // handshake, or closed right after it.
    match Raw::try_open(alpn_addr, b.tls_with_alpn(&[b"mqtt"])).await {
        Err(_) => {}
        Ok(mut c) => {
            c.send4(connect4("alpn-mqtt", 60)).await;
            assert!(c.until_closed4().await.is_empty());
        }
    }
    assert_eq!(b.emu.emulator.connected_clients(), 1);

    // The 8883-style listener does not require ALPN.
    let (mut plain, _) = b.v5("plain").await;
    assert!(plain.ping5().await.is_empty());

    // Without `alpn_listen` there is no such listener.
    let none = BrokerEmu::start(|_| {}).await;
    assert!(none.emu.emulator.alpn_addr().is_none());
}
