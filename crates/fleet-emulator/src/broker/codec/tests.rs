//! Unit tests of the broker codec: round trips of every packet the broker reads and writes,
//! on both protocol versions.

use super::*;
use rumqttc::mqttbytes::QoS as V4QoS;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::mqttbytes::v5;

fn wire4(p: v4::Packet) -> BytesMut {
    let mut b = BytesMut::new();
    p.write(&mut b, usize::MAX).unwrap();
    b
}

fn wire5(p: v5::Packet) -> BytesMut {
    let mut b = BytesMut::new();
    p.write(&mut b, None).unwrap();
    b
}

/// Encodes `p`, checking that the bytes are exactly one frame of the length the fixed
/// header declares (a check independent of rumqttc's packet readers).
fn out(protocol: Protocol, p: Outbound) -> BytesMut {
    let mut b = BytesMut::new();
    write(protocol, p, &mut b).unwrap();
    if !b.is_empty() {
        let h = v5::check(b.iter(), None).unwrap();
        assert_eq!(
            h.frame_length(),
            b.len(),
            "declared length vs bytes: {b:02x?}"
        );
    }
    b
}

fn read5(mut b: BytesMut) -> v5::Packet {
    let p = v5::Packet::read(&mut b, None).unwrap();
    assert!(b.is_empty(), "trailing bytes");
    p
}

#[test]
fn reads_connect_subscribe_publish() {
    let mut c = v4::Connect::new("client-1");
    c.keep_alive = 60;
    let mut buf = wire4(v4::Packet::Connect(c));
    let mut sub = v4::Subscribe::new("a/+/b", V4QoS::AtLeastOnce);
    sub.pkid = 7;
    buf.extend_from_slice(&wire4(v4::Packet::Subscribe(sub)));
    let (proto, first) = read_first(&mut buf, 1024).unwrap();
    assert_eq!(proto, Protocol::V311);
    assert!(
        matches!(first, Inbound::Connect(Connect { ref client_id, keep_alive_s: 60, .. }) if client_id == "client-1")
    );
    assert_eq!(
        read(proto, &mut buf, 1024).unwrap(),
        Inbound::Subscribe {
            pkid: 7,
            filters: vec![SubFilter {
                filter: "a/+/b".into(),
                qos: 1,
                no_local: false,
                retain_handling: 0
            }],
            has_subscription_id: false,
        }
    );
    assert!(matches!(
        read(proto, &mut buf, 1024),
        Err(ReadError::Incomplete)
    ));
}

#[test]
fn the_first_packet_decides_the_version() {
    let mut props = v5::ConnectProperties::new();
    props.session_expiry_interval = Some(30);
    props.max_packet_size = Some(4096);
    let c = v5::Connect {
        keep_alive: 45,
        client_id: "five".into(),
        clean_start: true,
        properties: Some(props),
    };
    let mut buf = wire5(v5::Packet::Connect(c, None, None));
    let (proto, first) = read_first(&mut buf, 1024).unwrap();
    assert_eq!(proto, Protocol::V5);
    assert_eq!(
        first,
        Inbound::Connect(Connect {
            client_id: "five".into(),
            keep_alive_s: 45,
            clean_start: true,
            will_payload_len: None,
            session_expiry_s: 30,
            max_packet_size: Some(4096),
            auth_method: None,
        })
    );
    assert!(buf.is_empty());

    // A CONNECT at protocol level 3 is refused as an unsupported version.
    let mut v3 = wire4(v4::Packet::Connect(v4::Connect::new("old")));
    v3[8] = 3; // protocol level byte of this CONNECT
    assert!(matches!(
        read_first(&mut v3, 1024),
        Err(ReadError::UnsupportedVersion(3))
    ));
    // A first packet that is not a CONNECT.
    let mut ping = BytesMut::from(&[0xC0u8, 0x00][..]);
    assert!(matches!(
        read_first(&mut ping, 1024),
        Err(ReadError::Malformed(_))
    ));
}

#[test]
fn reads_v5_publish_with_alias_and_forwarded_properties() {
    let props = v5::PublishProperties {
        topic_alias: Some(3),
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    let mut p = v5::Publish::new("a/b", V5QoS::AtLeastOnce, vec![1u8, 2], Some(props));
    p.pkid = 9;
    p.retain = true;
    let mut buf = wire5(v5::Packet::Publish(p));
    match read(Protocol::V5, &mut buf, 1024).unwrap() {
        Inbound::Publish {
            topic,
            qos,
            pkid,
            retain,
            payload,
            topic_alias,
            props,
        } => {
            assert_eq!((topic.as_str(), qos, pkid, retain), ("a/b", 1, 9, true));
            assert_eq!(&payload[..], &[1, 2]);
            assert_eq!(topic_alias, Some(3));
            let props = props.unwrap();
            assert_eq!(props.user_properties, vec![("k".into(), "v".into())]);
            assert_eq!(props.content_type.as_deref(), Some("application/json"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn reads_v5_subscribe_options_and_subscription_id() {
    let mut f = v5::Filter::new("x/#", V5QoS::AtMostOnce);
    f.nolocal = true;
    f.retain_forward_rule = v5::RetainForwardRule::Never;
    let mut s = v5::Subscribe::new(
        f,
        Some(v5::SubscribeProperties {
            id: Some(5),
            user_properties: Vec::new(),
        }),
    );
    s.pkid = 2;
    let mut buf = wire5(v5::Packet::Subscribe(s));
    assert_eq!(
        read(Protocol::V5, &mut buf, 1024).unwrap(),
        Inbound::Subscribe {
            pkid: 2,
            filters: vec![SubFilter {
                filter: "x/#".into(),
                qos: 0,
                no_local: true,
                retain_handling: 2
            }],
            has_subscription_id: true,
        }
    );
}

#[test]
fn reads_a_v5_disconnect_without_reason_code() {
    let mut buf = BytesMut::from(&[0xE0u8, 0x00, 0xC0, 0x00][..]);
    assert_eq!(
        read(Protocol::V5, &mut buf, 1024).unwrap(),
        Inbound::Disconnect
    );
    assert_eq!(
        read(Protocol::V5, &mut buf, 1024).unwrap(),
        Inbound::PingReq
    );
    // Reason code only (property length omitted, MQTT 5 §3.14.2.2.1), and with properties.
    let mut with_reason = BytesMut::from(&[0xE0u8, 0x01, 0x04, 0xE0, 0x02, 0x80, 0x00][..]);
    assert_eq!(
        read(Protocol::V5, &mut with_reason, 1024).unwrap(),
        Inbound::Disconnect
    );
    assert_eq!(
        read(Protocol::V5, &mut with_reason, 1024).unwrap(),
        Inbound::Disconnect
    );
    assert!(with_reason.is_empty());
}

#[test]
fn partial_packets_wait_and_oversized_are_refused() {
    for proto in [Protocol::V311, Protocol::V5] {
        let full = match proto {
            Protocol::V311 => {
                let mut p = v4::Publish::new("t", V4QoS::AtLeastOnce, vec![0u8; 300]);
                p.pkid = 1;
                wire4(v4::Packet::Publish(p))
            }
            Protocol::V5 => {
                let mut p = v5::Publish::new("t", V5QoS::AtLeastOnce, vec![0u8; 300], None);
                p.pkid = 1;
                wire5(v5::Packet::Publish(p))
            }
        };
        let mut part = BytesMut::from(&full[..10]);
        assert!(matches!(
            read(proto, &mut part, 1024),
            Err(ReadError::Incomplete)
        ));
        let mut all = full.clone();
        assert!(matches!(
            read(proto, &mut all, 100),
            Err(ReadError::TooLarge(_))
        ));
        let mut garbage = BytesMut::from(&[0xF0u8, 0x00][..]);
        assert!(matches!(
            read(proto, &mut garbage, 100),
            Err(ReadError::Malformed(_))
        ));
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut rng = fastrand::Rng::with_seed(7);
    // Valid packets with bytes flipped, and pure noise, through every read path.
    let mut seeds: Vec<BytesMut> = Vec::new();
    let mut p = v5::Publish::new("a/b", V5QoS::AtLeastOnce, vec![7u8; 20], None);
    p.pkid = 3;
    seeds.push(wire5(v5::Packet::Publish(p)));
    seeds.push(wire5(v5::Packet::Connect(
        v5::Connect {
            keep_alive: 5,
            client_id: "c".into(),
            clean_start: true,
            properties: Some(v5::ConnectProperties::new()),
        },
        Some(v5::LastWill::new(
            "w",
            vec![1u8],
            V5QoS::AtMostOnce,
            false,
            None,
        )),
        Some(v5::Login::new("u", "p")),
    )));
    seeds.push(wire5(v5::Packet::Subscribe(v5::Subscribe::new(
        v5::Filter::new("f/+", V5QoS::AtLeastOnce),
        None,
    ))));
    seeds.push(wire4(v4::Packet::Connect(v4::Connect::new("c"))));
    for i in 0..20_000 {
        let mut bytes = if i % 4 == 0 {
            let n = rng.usize(0..64);
            BytesMut::from(&(0..n).map(|_| rng.u8(..)).collect::<Vec<u8>>()[..])
        } else {
            let mut b = seeds[rng.usize(..seeds.len())].clone();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..b.len());
                b[at] = rng.u8(..);
            }
            b
        };
        let mut first = bytes.clone();
        let _ = read_first(&mut first, 4096);
        for proto in [Protocol::V311, Protocol::V5] {
            let mut b = bytes.clone();
            while read(proto, &mut b, 4096).is_ok() {}
        }
        bytes.clear();
    }
}

#[test]
fn writes_v4_acks_the_client_codec_can_read() {
    let mut o = out(
        Protocol::V311,
        Outbound::SubAck {
            pkid: 3,
            codes: vec![SubCode::Granted(1), SubCode::NotAuthorized],
        },
    );
    match v4::Packet::read(&mut o, 1024).unwrap() {
        v4::Packet::SubAck(s) => {
            assert_eq!(s.pkid, 3);
            assert_eq!(
                s.return_codes,
                vec![
                    v4::SubscribeReasonCode::Success(V4QoS::AtLeastOnce),
                    v4::SubscribeReasonCode::Failure
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    // 3.1.1 has no server DISCONNECT and no CONNACK for a rate refusal.
    assert!(
        out(
            Protocol::V311,
            Outbound::Disconnect(DisconnectCode::KeepAliveTimeout)
        )
        .is_empty()
    );
    let refused = Outbound::ConnAck {
        code: ConnectCode::ConnectionRateExceeded,
        session_present: false,
        props: None,
    };
    assert!(out(Protocol::V311, refused).is_empty());
}

#[test]
fn v4_not_authorized_connack_carries_aws_code_7() {
    let o = out(
        Protocol::V311,
        Outbound::ConnAck {
            code: ConnectCode::NotAuthorized,
            session_present: false,
            props: None,
        },
    );
    assert_eq!(&o[..], &[0x20, 0x02, 0x00, 0x07]);
    let ok = out(
        Protocol::V311,
        Outbound::ConnAck {
            code: ConnectCode::Accepted,
            session_present: false,
            props: None,
        },
    );
    assert_eq!(&ok[..], &[0x20, 0x02, 0x00, 0x00]);
}

#[test]
fn v5_connack_round_trips_with_properties() {
    let o = out(
        Protocol::V5,
        Outbound::ConnAck {
            code: ConnectCode::Accepted,
            session_present: false,
            props: Some(Box::new(ConnAckProps {
                server_keep_alive: Some(30),
                receive_maximum: Some(100),
                maximum_packet_size: 147_456,
                topic_alias_maximum: 8,
                session_expiry_s: Some(0),
            })),
        },
    );
    match read5(o) {
        v5::Packet::ConnAck(c) => {
            assert_eq!(c.code, v5::ConnectReturnCode::Success);
            assert!(!c.session_present);
            let p = c.properties.unwrap();
            assert_eq!(p.server_keep_alive, Some(30));
            assert_eq!(p.receive_max, Some(100));
            assert_eq!(p.max_qos, Some(1));
            assert_eq!(p.retain_available, Some(1));
            assert_eq!(p.max_packet_size, Some(147_456));
            assert_eq!(p.topic_alias_max, Some(8));
            assert_eq!(p.wildcard_subscription_available, Some(1));
            assert_eq!(p.subscription_identifiers_available, Some(0));
            assert_eq!(p.shared_subscription_available, Some(1));
            assert_eq!(p.session_expiry_interval, Some(0));
        }
        other => panic!("{other:?}"),
    }
    for (code, want) in [
        (
            ConnectCode::NotAuthorized,
            v5::ConnectReturnCode::NotAuthorized,
        ),
        (
            ConnectCode::ConnectionRateExceeded,
            v5::ConnectReturnCode::ConnectionRateExceeded,
        ),
        (
            ConnectCode::ClientIdNotValid,
            v5::ConnectReturnCode::ClientIdentifierNotValid,
        ),
        (
            ConnectCode::PacketTooLarge,
            v5::ConnectReturnCode::PacketTooLarge,
        ),
        (
            ConnectCode::BadAuthenticationMethod,
            v5::ConnectReturnCode::BadAuthenticationMethod,
        ),
        (
            ConnectCode::UnsupportedProtocolVersion,
            v5::ConnectReturnCode::UnsupportedProtocolVersion,
        ),
    ] {
        match read5(out(
            Protocol::V5,
            Outbound::ConnAck {
                code,
                session_present: false,
                props: None,
            },
        )) {
            v5::Packet::ConnAck(c) => assert_eq!(c.code, want),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn v5_acks_round_trip_with_reason_codes() {
    match read5(out(
        Protocol::V5,
        Outbound::SubAck {
            pkid: 4,
            codes: vec![
                SubCode::Granted(0),
                SubCode::Granted(1),
                SubCode::NotAuthorized,
                SubCode::TopicFilterInvalid,
                SubCode::QuotaExceeded,
                SubCode::SubscriptionIdsNotSupported,
            ],
        },
    )) {
        v5::Packet::SubAck(s) => {
            assert_eq!(s.pkid, 4);
            use v5::SubscribeReasonCode as R;
            assert_eq!(
                s.return_codes,
                vec![
                    R::Success(V5QoS::AtMostOnce),
                    R::Success(V5QoS::AtLeastOnce),
                    R::NotAuthorized,
                    R::TopicFilterInvalid,
                    R::QuotaExceeded,
                    R::SubscriptionIdNotSupported,
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    for (code, want) in [
        (PubAckCode::Success, v5::PubAckReason::Success),
        (PubAckCode::NotAuthorized, v5::PubAckReason::NotAuthorized),
        (PubAckCode::QuotaExceeded, v5::PubAckReason::QuotaExceeded),
        (
            PubAckCode::TopicNameInvalid,
            v5::PubAckReason::TopicNameInvalid,
        ),
        (
            PubAckCode::ImplementationSpecific,
            v5::PubAckReason::ImplementationSpecificError,
        ),
    ] {
        match read5(out(Protocol::V5, Outbound::PubAck { pkid: 11, code })) {
            v5::Packet::PubAck(a) => assert_eq!((a.pkid, a.reason), (11, want)),
            other => panic!("{other:?}"),
        }
    }
    match read5(out(
        Protocol::V5,
        Outbound::UnsubAck {
            pkid: 5,
            codes: vec![UnsubCode::Success, UnsubCode::NoSubscriptionExisted],
        },
    )) {
        v5::Packet::UnsubAck(u) => assert_eq!(
            u.reasons,
            vec![
                v5::UnsubAckReason::Success,
                v5::UnsubAckReason::NoSubscriptionExisted
            ]
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        read5(out(Protocol::V5, Outbound::PingResp)),
        v5::Packet::PingResp(_)
    ));
}

#[test]
fn v5_disconnects_round_trip_with_reason_codes() {
    use v5::DisconnectReasonCode as R;
    for (code, want) in [
        (DisconnectCode::SessionTakenOver, R::SessionTakenOver),
        (DisconnectCode::KeepAliveTimeout, R::KeepAliveTimeout),
        (DisconnectCode::PacketTooLarge, R::PacketTooLarge),
        (DisconnectCode::NotAuthorized, R::NotAuthorized),
        (DisconnectCode::ProtocolError, R::ProtocolError),
        (DisconnectCode::MalformedPacket, R::MalformedPacket),
        (DisconnectCode::ServerShuttingDown, R::ServerShuttingDown),
        (DisconnectCode::TopicAliasInvalid, R::TopicAliasInvalid),
        (DisconnectCode::QuotaExceeded, R::QuotaExceeded),
        (
            DisconnectCode::ImplementationSpecific,
            R::ImplementationSpecificError,
        ),
    ] {
        let bytes = out(Protocol::V5, Outbound::Disconnect(code));
        // Fixed header, then the reason code right after the remaining length.
        assert_eq!(bytes[0], 0xE0);
        assert_eq!(bytes[2], want as u8);
        match read5(bytes) {
            v5::Packet::Disconnect(d) => {
                assert_eq!(d.reason_code, want);
                let reason = d.properties.and_then(|p| p.reason_string);
                assert_eq!(reason.as_deref(), Some(code.description()));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn v5_publish_round_trips_with_forwarded_properties() {
    let props = Arc::new(ForwardedProps {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        content_type: Some("text/plain".into()),
        response_topic: Some("r/t".into()),
        correlation_data: Some(Bytes::from_static(b"id")),
        user_properties: vec![("a".into(), "b".into())],
    });
    match read5(out(
        Protocol::V5,
        Outbound::Publish {
            topic: "x/y".into(),
            qos: 1,
            pkid: 17,
            retain: true,
            payload: Bytes::from_static(b"hello"),
            props: Some(props),
        },
    )) {
        v5::Packet::Publish(p) => {
            assert_eq!(&p.topic[..], b"x/y");
            assert_eq!((p.qos, p.pkid, p.retain), (V5QoS::AtLeastOnce, 17, true));
            assert_eq!(&p.payload[..], b"hello");
            let pp = p.properties.unwrap();
            assert_eq!(pp.message_expiry_interval, Some(60));
            assert_eq!(pp.response_topic.as_deref(), Some("r/t"));
            assert_eq!(pp.correlation_data.as_deref(), Some(&b"id"[..]));
            assert_eq!(pp.user_properties, vec![("a".into(), "b".into())]);
            assert_eq!(pp.topic_alias, None);
        }
        other => panic!("{other:?}"),
    }
    // The same publish on 3.1.1 drops the properties.
    let mut o = out(
        Protocol::V311,
        Outbound::Publish {
            topic: "x/y".into(),
            qos: 0,
            pkid: 0,
            retain: false,
            payload: Bytes::from_static(b"hello"),
            props: None,
        },
    );
    assert!(matches!(
        v4::Packet::read(&mut o, 1024).unwrap(),
        v4::Packet::Publish(p) if p.topic == "x/y" && &p.payload[..] == b"hello"
    ));
}
