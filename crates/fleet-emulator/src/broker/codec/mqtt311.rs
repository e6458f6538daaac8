//! MQTT 3.1.1 on the wire: [`super::Inbound`]/[`super::Outbound`] to and from
//! `rumqttc::mqttbytes::v4` packets.

use super::*;
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::{Error as V4Error, QoS as V4QoS};

qos_mapping!(V4QoS);

/// Maps a framing error (from `check`, before any byte is consumed).
pub(super) fn v4_frame_error(e: V4Error) -> ReadError {
    match e {
        V4Error::InsufficientBytes(_) => ReadError::Incomplete,
        V4Error::PayloadSizeLimitExceeded(n) => ReadError::TooLarge(n),
        e => ReadError::Malformed(e.to_string()),
    }
}

/// A 3.1.1 CONNECT as the broker acts on it: the MQTT 5-only fields get their "absent" value.
pub(super) fn connect_from_v4(c: v4::Connect) -> Inbound {
    Inbound::Connect(Connect {
        will_payload_len: c.last_will.as_ref().map(|w| w.message.len()),
        client_id: c.client_id,
        keep_alive_s: c.keep_alive,
        clean_start: c.clean_session,
        session_expiry_s: 0,
        max_packet_size: None,
        auth_method: None,
    })
}

pub(super) fn read_v4(buf: &mut BytesMut, max_size: usize) -> Result<Inbound, ReadError> {
    rumqttc::mqttbytes::check(buf.iter(), max_size).map_err(v4_frame_error)?;
    let packet = v4::Packet::read(buf, max_size).map_err(decode_error)?;
    Ok(match packet {
        v4::Packet::Connect(c) => connect_from_v4(c),
        v4::Packet::Publish(p) => Inbound::Publish {
            topic: p.topic,
            qos: qos_from(p.qos),
            pkid: p.pkid,
            retain: p.retain,
            payload: p.payload,
            topic_alias: None,
            props: None,
        },
        v4::Packet::PubAck(a) => Inbound::PubAck { pkid: a.pkid },
        v4::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| SubFilter {
                    filter: f.path,
                    qos: qos_from(f.qos),
                    no_local: false,
                    retain_handling: 0,
                })
                .collect(),
            has_subscription_id: false,
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

pub(super) fn write_v4(packet: Outbound, out: &mut BytesMut) -> Result<(), WriteError> {
    let p = match packet {
        Outbound::ConnAck {
            code,
            session_present,
            ..
        } => {
            let rc = match code {
                ConnectCode::Accepted => v4::ConnectReturnCode::Success,
                ConnectCode::UnsupportedProtocolVersion => {
                    v4::ConnectReturnCode::RefusedProtocolVersion
                }
                ConnectCode::ClientIdNotValid => v4::ConnectReturnCode::BadClientId,
                // Written as 5 by the codec, then given AWS's value below.
                ConnectCode::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                ConnectCode::BadAuthenticationMethod
                | ConnectCode::PacketTooLarge
                | ConnectCode::ConnectionRateExceeded => return Ok(()),
            };
            let start = out.len();
            v4::Packet::ConnAck(v4::ConnAck::new(rc, session_present))
                .write(out, usize::MAX)
                .map_err(|e| WriteError(e.to_string()))?;
            if code == ConnectCode::NotAuthorized {
                // AWS: "AWS IoT returns the error code 7 instead of the CONNACK error code 5
                // when a connection is refused because the client isn't authorized to
                // connect" (MQTT differences). rumqttc's return-code enum stops at 5, so the
                // return-code byte (the last of the 4-byte CONNACK) is set here.
                if let Some(b) = out.get_mut(start + 3) {
                    *b = 7;
                }
            }
            return Ok(());
        }
        Outbound::SubAck { pkid, codes } => v4::Packet::SubAck(v4::SubAck::new(
            pkid,
            codes
                .into_iter()
                .map(|c| match c {
                    SubCode::Granted(q) => v4::SubscribeReasonCode::Success(qos_to(q)),
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Outbound::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)),
        Outbound::PubAck { pkid, .. } => v4::Packet::PubAck(v4::PubAck::new(pkid)),
        Outbound::Publish {
            topic,
            qos,
            pkid,
            retain,
            payload,
            ..
        } => {
            let mut p = v4::Publish::from_bytes(topic, qos_to(qos), payload);
            p.pkid = pkid;
            p.retain = retain;
            v4::Packet::Publish(p)
        }
        Outbound::PingResp => v4::Packet::PingResp,
        Outbound::Disconnect(_) => return Ok(()),
    };
    p.write(out, usize::MAX)
        .map(|_| ())
        .map_err(|e| WriteError(e.to_string()))
}
