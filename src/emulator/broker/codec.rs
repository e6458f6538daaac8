//! MQTT packets as the broker's session logic sees them, and their wire codec.
//!
//! The session logic works on the protocol-neutral [`Inbound`]/[`Outbound`] types; this file
//! converts them to and from the wire with rumqttc's maintained `mqttbytes` codec (MQTT 3.1.1
//! in `rumqttc::mqttbytes::v4`). Nothing here parses MQTT by hand.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::{Error as CodecError, QoS};

/// The MQTT protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
}

/// A packet from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Connect {
        client_id: String,
        keep_alive_s: u16,
        clean_session: bool,
        has_will: bool,
    },
    Publish {
        topic: String,
        qos: u8,
        pkid: u16,
        retain: bool,
        payload: Bytes,
    },
    PubAck {
        pkid: u16,
    },
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
    /// A packet type a client must not send (CONNACK, SUBACK, ...) or does not need (QoS 2 flow).
    Unexpected(&'static str),
}

/// CONNACK result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectResult {
    Accepted,
    BadClientId,
    NotAuthorized,
    ServerUnavailable,
}

/// A packet to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    ConnAck(ConnectResult),
    /// One entry per filter: `Some(granted QoS)` or `None` for failure.
    SubAck {
        pkid: u16,
        granted: Vec<Option<u8>>,
    },
    UnsubAck {
        pkid: u16,
    },
    PubAck {
        pkid: u16,
    },
    Publish {
        topic: String,
        qos: u8,
        pkid: u16,
        payload: Bytes,
    },
    PingResp,
}

/// Why bytes from the client could not be read as a packet.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("need more bytes")]
    Incomplete,
    #[error("packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed packet: {0}")]
    Malformed(String),
}

fn qos_u8(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn qos_from(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Reads one packet from the front of `buf` (consuming it), if a whole one is there.
pub fn read(protocol: Protocol, buf: &mut BytesMut, max_size: usize) -> Result<Inbound, ReadError> {
    match protocol {
        Protocol::V311 => read_v4(buf, max_size),
    }
}

/// Reads the first packet of a connection, which decides the protocol version.
pub fn read_first(buf: &mut BytesMut, max_size: usize) -> Result<(Protocol, Inbound), ReadError> {
    read_v4(buf, max_size).map(|p| (Protocol::V311, p))
}

fn read_v4(buf: &mut BytesMut, max_size: usize) -> Result<Inbound, ReadError> {
    let packet = match v4::Packet::read(buf, max_size) {
        Ok(p) => p,
        Err(CodecError::InsufficientBytes(_)) => return Err(ReadError::Incomplete),
        Err(CodecError::PayloadSizeLimitExceeded(n)) => return Err(ReadError::TooLarge(n)),
        Err(e) => return Err(ReadError::Malformed(e.to_string())),
    };
    Ok(match packet {
        v4::Packet::Connect(c) => Inbound::Connect {
            client_id: c.client_id,
            keep_alive_s: c.keep_alive,
            clean_session: c.clean_session,
            has_will: c.last_will.is_some(),
        },
        v4::Packet::Publish(p) => Inbound::Publish {
            topic: p.topic,
            qos: qos_u8(p.qos),
            pkid: p.pkid,
            retain: p.retain,
            payload: p.payload,
        },
        v4::Packet::PubAck(a) => Inbound::PubAck { pkid: a.pkid },
        v4::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, qos_u8(f.qos)))
                .collect(),
        },
        v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect,
        v4::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Inbound::Unexpected("PINGRESP"),
        v4::Packet::PubRec(_) => Inbound::Unexpected("PUBREC"),
        v4::Packet::PubRel(_) => Inbound::Unexpected("PUBREL"),
        v4::Packet::PubComp(_) => Inbound::Unexpected("PUBCOMP"),
    })
}

/// Appends the wire form of `packet` to `out`.
pub fn write(protocol: Protocol, packet: &Outbound, out: &mut BytesMut) {
    match protocol {
        Protocol::V311 => write_v4(packet, out),
    }
}

fn write_v4(packet: &Outbound, out: &mut BytesMut) {
    let p = match packet {
        Outbound::ConnAck(r) => v4::Packet::ConnAck(v4::ConnAck::new(
            match r {
                ConnectResult::Accepted => v4::ConnectReturnCode::Success,
                ConnectResult::BadClientId => v4::ConnectReturnCode::BadClientId,
                ConnectResult::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                ConnectResult::ServerUnavailable => v4::ConnectReturnCode::ServiceUnavailable,
            },
            false,
        )),
        Outbound::SubAck { pkid, granted } => v4::Packet::SubAck(v4::SubAck::new(
            *pkid,
            granted
                .iter()
                .map(|g| match g {
                    Some(q) => v4::SubscribeReasonCode::Success(qos_from(*q)),
                    None => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Outbound::UnsubAck { pkid } => v4::Packet::UnsubAck(v4::UnsubAck::new(*pkid)),
        Outbound::PubAck { pkid } => v4::Packet::PubAck(v4::PubAck::new(*pkid)),
        Outbound::Publish {
            topic,
            qos,
            pkid,
            payload,
        } => {
            let mut p = v4::Publish::from_bytes(topic.clone(), qos_from(*qos), payload.clone());
            p.pkid = *pkid;
            v4::Packet::Publish(p)
        }
        Outbound::PingResp => v4::Packet::PingResp,
    };
    // Outgoing packets are bounded by what the broker builds (≤ 128 KiB payloads).
    p.write(out, usize::MAX)
        .expect("encoding a broker-built MQTT packet");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(p: v4::Packet) -> BytesMut {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).unwrap();
        b
    }

    #[test]
    fn reads_connect_subscribe_publish() {
        let mut c = v4::Connect::new("client-1");
        c.keep_alive = 60;
        let mut buf = wire(v4::Packet::Connect(c));
        let mut sub = v4::Subscribe::new("a/+/b", QoS::AtLeastOnce);
        sub.pkid = 7;
        buf.extend_from_slice(&wire(v4::Packet::Subscribe(sub)));
        let (proto, first) = read_first(&mut buf, 1024).unwrap();
        assert_eq!(proto, Protocol::V311);
        assert!(
            matches!(first, Inbound::Connect { ref client_id, keep_alive_s: 60, .. } if client_id == "client-1")
        );
        assert_eq!(
            read(proto, &mut buf, 1024).unwrap(),
            Inbound::Subscribe {
                pkid: 7,
                filters: vec![("a/+/b".into(), 1)]
            }
        );
        assert!(matches!(
            read(proto, &mut buf, 1024),
            Err(ReadError::Incomplete)
        ));
    }

    #[test]
    fn partial_packets_wait_and_oversized_are_refused() {
        let mut p = v4::Publish::new("t", QoS::AtLeastOnce, vec![0u8; 300]);
        p.pkid = 1;
        let full = wire(v4::Packet::Publish(p));
        let mut part = BytesMut::from(&full[..10]);
        assert!(matches!(
            read(Protocol::V311, &mut part, 1024),
            Err(ReadError::Incomplete)
        ));
        let mut all = full.clone();
        assert!(matches!(
            read(Protocol::V311, &mut all, 100),
            Err(ReadError::TooLarge(_))
        ));
        let mut garbage = BytesMut::from(&[0xF0u8, 0x00][..]);
        assert!(matches!(
            read(Protocol::V311, &mut garbage, 100),
            Err(ReadError::Malformed(_))
        ));
    }

    #[test]
    fn writes_acks_the_client_codec_can_read() {
        let mut out = BytesMut::new();
        write(
            Protocol::V311,
            &Outbound::SubAck {
                pkid: 3,
                granted: vec![Some(1), None],
            },
            &mut out,
        );
        match v4::Packet::read(&mut out, 1024).unwrap() {
            v4::Packet::SubAck(s) => {
                assert_eq!(s.pkid, 3);
                assert_eq!(
                    s.return_codes,
                    vec![
                        v4::SubscribeReasonCode::Success(QoS::AtLeastOnce),
                        v4::SubscribeReasonCode::Failure
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
