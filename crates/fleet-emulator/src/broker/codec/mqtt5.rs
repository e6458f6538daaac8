//! MQTT 5 on the wire: [`super::Inbound`]/[`super::Outbound`] to and from
//! `rumqttc::v5::mqttbytes::v5` packets, properties and reason codes.

use super::*;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::{Error as V5Error, QoS as V5QoS};

qos_mapping!(V5QoS);

/// Maps a framing error (from `check`, before any byte is consumed).
pub(super) fn v5_frame_error(e: V5Error) -> ReadError {
    match e {
        V5Error::InsufficientBytes(_) => ReadError::Incomplete,
        V5Error::PayloadSizeLimitExceeded { pkt_size, .. } => ReadError::TooLarge(pkt_size),
        e => ReadError::Malformed(e.to_string()),
    }
}

/// An MQTT 5 CONNECT as the broker acts on it.
pub(super) fn connect_from_v5(c: v5::Connect, will: Option<v5::LastWill>) -> Inbound {
    let props = c.properties;
    Inbound::Connect(Connect {
        client_id: c.client_id,
        keep_alive_s: c.keep_alive,
        clean_start: c.clean_start,
        will_payload_len: will.map(|w| w.message.len()),
        session_expiry_s: props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0),
        max_packet_size: props.as_ref().and_then(|p| p.max_packet_size),
        auth_method: props.and_then(|p| p.authentication_method),
    })
}

pub(super) fn read_v5(buf: &mut BytesMut, max_size: usize) -> Result<Inbound, ReadError> {
    let max = limit_u32(max_size);
    let header = v5::check(buf.iter(), Some(max)).map_err(v5_frame_error)?;
    // A client DISCONNECT ends the connection whatever its reason code and properties, so
    // it is not decoded: rumqttc's v5 reader refuses forms MQTT 5 allows (no reason code,
    // §3.14.2.1; a reason code without property length, §3.14.2.2.1).
    if matches!(header.packet_type(), Ok(v5::PacketType::Disconnect)) {
        buf.advance(header.frame_length());
        return Ok(Inbound::Disconnect);
    }
    let packet = v5::Packet::read(buf, Some(max)).map_err(decode_error)?;
    Ok(match packet {
        v5::Packet::Connect(c, will, _login) => connect_from_v5(c, will),
        v5::Packet::Publish(p) => {
            let topic = std::str::from_utf8(&p.topic)
                .map_err(|_| ReadError::Malformed("topic name is not UTF-8".into()))?
                .to_string();
            let (topic_alias, props) = match p.properties {
                None => (None, None),
                Some(pp) => {
                    let fwd = ForwardedProps {
                        payload_format_indicator: pp.payload_format_indicator,
                        message_expiry_interval: pp.message_expiry_interval,
                        content_type: pp.content_type,
                        response_topic: pp.response_topic,
                        correlation_data: pp.correlation_data,
                        user_properties: pp.user_properties,
                    };
                    let fwd = (fwd != ForwardedProps::default()).then(|| Arc::new(fwd));
                    (pp.topic_alias, fwd)
                }
            };
            Inbound::Publish {
                topic,
                qos: qos_from(p.qos),
                pkid: p.pkid,
                retain: p.retain,
                payload: p.payload,
                topic_alias,
                props,
            }
        }
        v5::Packet::PubAck(a) => Inbound::PubAck { pkid: a.pkid },
        v5::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            has_subscription_id: s.properties.as_ref().is_some_and(|p| p.id.is_some()),
            filters: s
                .filters
                .into_iter()
                .map(|f| SubFilter {
                    qos: qos_from(f.qos),
                    no_local: f.nolocal,
                    retain_handling: match f.retain_forward_rule {
                        v5::RetainForwardRule::OnEverySubscribe => 0,
                        v5::RetainForwardRule::OnNewSubscribe => 1,
                        v5::RetainForwardRule::Never => 2,
                    },
                    filter: f.path,
                })
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Disconnect(_) => Inbound::Disconnect,
        v5::Packet::Auth(_) => Inbound::Unexpected("AUTH"),
        v5::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Inbound::Unexpected("PINGRESP"),
        v5::Packet::PubRec(_) => Inbound::Unexpected("PUBREC"),
        v5::Packet::PubRel(_) => Inbound::Unexpected("PUBREL"),
        v5::Packet::PubComp(_) => Inbound::Unexpected("PUBCOMP"),
    })
}

pub(super) fn write_v5(packet: Outbound, out: &mut BytesMut) -> Result<(), WriteError> {
    let p = match packet {
        Outbound::ConnAck {
            code,
            session_present,
            props,
        } => v5::Packet::ConnAck(v5::ConnAck {
            session_present,
            code: match code {
                ConnectCode::Accepted => v5::ConnectReturnCode::Success,
                ConnectCode::UnsupportedProtocolVersion => {
                    v5::ConnectReturnCode::UnsupportedProtocolVersion
                }
                ConnectCode::ClientIdNotValid => v5::ConnectReturnCode::ClientIdentifierNotValid,
                ConnectCode::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                ConnectCode::BadAuthenticationMethod => {
                    v5::ConnectReturnCode::BadAuthenticationMethod
                }
                ConnectCode::PacketTooLarge => v5::ConnectReturnCode::PacketTooLarge,
                ConnectCode::ConnectionRateExceeded => {
                    v5::ConnectReturnCode::ConnectionRateExceeded
                }
            },
            properties: props.map(|p| connack_properties(&p)),
        }),
        Outbound::SubAck { pkid, codes } => v5::Packet::SubAck(v5::SubAck {
            pkid,
            return_codes: codes
                .into_iter()
                .map(|c| match c {
                    SubCode::Granted(q) => v5::SubscribeReasonCode::Success(qos_to(q)),
                    SubCode::NotAuthorized => v5::SubscribeReasonCode::NotAuthorized,
                    SubCode::TopicFilterInvalid => v5::SubscribeReasonCode::TopicFilterInvalid,
                    SubCode::QuotaExceeded => v5::SubscribeReasonCode::QuotaExceeded,
                    SubCode::SubscriptionIdsNotSupported => {
                        v5::SubscribeReasonCode::SubscriptionIdNotSupported
                    }
                })
                .collect(),
            properties: None,
        }),
        Outbound::UnsubAck { pkid, codes } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid,
            reasons: codes
                .into_iter()
                .map(|c| match c {
                    UnsubCode::Success => v5::UnsubAckReason::Success,
                    UnsubCode::NoSubscriptionExisted => v5::UnsubAckReason::NoSubscriptionExisted,
                })
                .collect(),
            properties: None,
        }),
        Outbound::PubAck { pkid, code } => v5::Packet::PubAck(v5::PubAck {
            pkid,
            reason: match code {
                PubAckCode::Success => v5::PubAckReason::Success,
                PubAckCode::ImplementationSpecific => v5::PubAckReason::ImplementationSpecificError,
                PubAckCode::NotAuthorized => v5::PubAckReason::NotAuthorized,
                PubAckCode::TopicNameInvalid => v5::PubAckReason::TopicNameInvalid,
                PubAckCode::QuotaExceeded => v5::PubAckReason::QuotaExceeded,
            },
            properties: None,
        }),
        Outbound::Publish {
            topic,
            qos,
            pkid,
            retain,
            payload,
            props,
        } => v5::Packet::Publish(v5::Publish {
            dup: false,
            qos: qos_to(qos),
            retain,
            // String → Bytes takes the string's buffer; no copy.
            topic: Bytes::from(topic),
            pkid,
            payload,
            properties: props.map(|p| v5::PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                topic_alias: None,
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                subscription_identifiers: Vec::new(),
                content_type: p.content_type.clone(),
            }),
        }),
        Outbound::PingResp => v5::Packet::PingResp(v5::PingResp),
        // Always with a Reason String: rumqttc writes a reason code without properties with a
        // Remaining Length one short of what it writes, and one with an empty property block
        // as a bare normal disconnection.
        Outbound::Disconnect(code) => v5::Packet::Disconnect(v5::Disconnect {
            properties: Some(v5::DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(code.description().to_string()),
                user_properties: Vec::new(),
                server_reference: None,
            }),
            reason_code: match code {
                DisconnectCode::MalformedPacket => v5::DisconnectReasonCode::MalformedPacket,
                DisconnectCode::ProtocolError => v5::DisconnectReasonCode::ProtocolError,
                DisconnectCode::ImplementationSpecific => {
                    v5::DisconnectReasonCode::ImplementationSpecificError
                }
                DisconnectCode::NotAuthorized => v5::DisconnectReasonCode::NotAuthorized,
                DisconnectCode::ServerShuttingDown => v5::DisconnectReasonCode::ServerShuttingDown,
                DisconnectCode::KeepAliveTimeout => v5::DisconnectReasonCode::KeepAliveTimeout,
                DisconnectCode::SessionTakenOver => v5::DisconnectReasonCode::SessionTakenOver,
                DisconnectCode::TopicAliasInvalid => v5::DisconnectReasonCode::TopicAliasInvalid,
                DisconnectCode::PacketTooLarge => v5::DisconnectReasonCode::PacketTooLarge,
                DisconnectCode::QuotaExceeded => v5::DisconnectReasonCode::QuotaExceeded,
            },
        }),
    };
    p.write(out, None)
        .map(|_| ())
        .map_err(|e| WriteError(e.to_string()))
}

/// The CONNACK properties: what the broker enforces, and the features AWS IoT Core states
/// (maximum QoS 1; retained messages and wildcard subscriptions available; subscription
/// identifiers not available; shared subscriptions available, as AWS supports them).
fn connack_properties(p: &ConnAckProps) -> v5::ConnAckProperties {
    v5::ConnAckProperties {
        session_expiry_interval: p.session_expiry_s,
        receive_max: p.receive_maximum,
        max_qos: Some(1),
        retain_available: Some(1),
        max_packet_size: Some(p.maximum_packet_size),
        assigned_client_identifier: None,
        topic_alias_max: (p.topic_alias_maximum > 0).then_some(p.topic_alias_maximum),
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(1),
        server_keep_alive: p.server_keep_alive,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}
