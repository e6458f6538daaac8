//! MQTT packets as the broker's session logic sees them, and their wire codec.
//!
//! The session logic works on the protocol-neutral [`Inbound`]/[`Outbound`] types; this file
//! converts them to and from the wire with rumqttc's maintained codecs: MQTT 3.1.1 with
//! `rumqttc::mqttbytes::v4`, MQTT 5 with `rumqttc::v5::mqttbytes::v5`. Nothing here parses
//! MQTT by hand. The first packet of a connection decides its version ([`read_first`]).
//!
//! Reason codes are named after MQTT 5's; each knows its 3.1.1 form, if it has one. A packet
//! with no 3.1.1 form (a server DISCONNECT, most CONNACK refusals) is not written on 3.1.1:
//! the broker then simply closes the connection.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::{Error as V4Error, QoS as V4QoS};
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::{Error as V5Error, QoS as V5QoS};

/// The MQTT protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
    V5,
}

/// CONNECT as the broker acts on it. MQTT 5-only fields have their "absent" value on 3.1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub client_id: String,
    pub keep_alive_s: u16,
    pub clean_start: bool,
    /// Payload length of the will message, if the client set one.
    pub will_payload_len: Option<usize>,
    /// MQTT 5 Session Expiry Interval in seconds.
    pub session_expiry_s: u32,
    /// MQTT 5 Maximum Packet Size the client accepts.
    pub max_packet_size: Option<u32>,
    /// MQTT 5 Authentication Method (enhanced authentication), if the client asked for one.
    pub auth_method: Option<String>,
}

/// MQTT 5 PUBLISH properties a server forwards unaltered to subscribers (MQTT 5 §3.3.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardedProps {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

/// One topic filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubFilter {
    pub filter: String,
    pub qos: u8,
    /// MQTT 5 No Local: do not deliver this connection's own publishes.
    pub no_local: bool,
    /// MQTT 5 Retain Handling: 0 send retained on every subscribe, 1 only on a new
    /// subscription, 2 never.
    pub retain_handling: u8,
}

/// A packet from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Connect(Connect),
    Publish {
        /// Empty when an MQTT 5 client uses an established topic alias.
        topic: String,
        qos: u8,
        pkid: u16,
        retain: bool,
        payload: Bytes,
        topic_alias: Option<u16>,
        props: Option<Arc<ForwardedProps>>,
    },
    PubAck {
        pkid: u16,
    },
    Subscribe {
        pkid: u16,
        filters: Vec<SubFilter>,
        /// The SUBSCRIBE carried an MQTT 5 Subscription Identifier.
        has_subscription_id: bool,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
    /// A packet type a client must not send (CONNACK, SUBACK, ...), does not need (the QoS 2
    /// flow) or the broker does not support (AUTH).
    Unexpected(&'static str),
}

/// CONNACK result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectCode {
    Accepted,
    /// 3.1.1: 0x01; MQTT 5: 0x84.
    UnsupportedProtocolVersion,
    /// 3.1.1: 0x02; MQTT 5: 0x85.
    ClientIdNotValid,
    /// 3.1.1: 0x07, as AWS documents ("AWS IoT returns the error code 7 instead of the
    /// CONNACK error code 5"); MQTT 5: 0x87.
    NotAuthorized,
    /// MQTT 5 only: 0x8C.
    BadAuthenticationMethod,
    /// MQTT 5 only: 0x95.
    PacketTooLarge,
    /// MQTT 5 only: 0x9F.
    ConnectionRateExceeded,
}

/// What the broker tells an MQTT 5 client in a successful CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAckProps {
    /// Sent when the granted keep-alive differs from the requested one.
    pub server_keep_alive: Option<u16>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: u32,
    pub topic_alias_maximum: u16,
    /// Sent when the session expiry granted differs from the one asked for (at most an hour).
    pub session_expiry_s: Option<u32>,
}

/// One SUBACK entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubCode {
    Granted(u8),
    /// Every failure below is 0x80 on 3.1.1.
    Unspecified,
    NotAuthorized,
    TopicFilterInvalid,
    QuotaExceeded,
    SharedSubscriptionsNotSupported,
    SubscriptionIdsNotSupported,
}

/// PUBACK reason (MQTT 5; a 3.1.1 PUBACK has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubAckCode {
    Success,
    ImplementationSpecific,
    NotAuthorized,
    TopicNameInvalid,
    QuotaExceeded,
}

/// UNSUBACK reason (MQTT 5; a 3.1.1 UNSUBACK has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsubCode {
    Success,
    NoSubscriptionExisted,
}

/// Reason of a server DISCONNECT (MQTT 5 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectCode {
    MalformedPacket,
    ProtocolError,
    ImplementationSpecific,
    NotAuthorized,
    ServerShuttingDown,
    KeepAliveTimeout,
    SessionTakenOver,
    TopicAliasInvalid,
    PacketTooLarge,
    QuotaExceeded,
}

impl DisconnectCode {
    /// The Reason String sent with the code.
    pub fn description(self) -> &'static str {
        match self {
            DisconnectCode::MalformedPacket => "malformed packet",
            DisconnectCode::ProtocolError => "protocol error",
            DisconnectCode::ImplementationSpecific => "request refused",
            DisconnectCode::NotAuthorized => "not authorized",
            DisconnectCode::ServerShuttingDown => "server shutting down",
            DisconnectCode::KeepAliveTimeout => "no packet within 1.5 times the keep-alive",
            DisconnectCode::SessionTakenOver => "another connection uses this client id",
            DisconnectCode::TopicAliasInvalid => "invalid topic alias",
            DisconnectCode::PacketTooLarge => "packet or payload too large",
            DisconnectCode::QuotaExceeded => "quota exceeded",
        }
    }
}

/// A packet to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    ConnAck {
        code: ConnectCode,
        /// A stored (persistent) session was resumed.
        session_present: bool,
        /// MQTT 5 only; ignored on 3.1.1.
        props: Option<Box<ConnAckProps>>,
    },
    SubAck {
        pkid: u16,
        codes: Vec<SubCode>,
    },
    UnsubAck {
        pkid: u16,
        codes: Vec<UnsubCode>,
    },
    PubAck {
        pkid: u16,
        code: PubAckCode,
    },
    Publish {
        topic: String,
        qos: u8,
        pkid: u16,
        retain: bool,
        payload: Bytes,
        /// MQTT 5 only; dropped on 3.1.1.
        props: Option<Arc<ForwardedProps>>,
    },
    PingResp,
    /// MQTT 5 only.
    Disconnect(DisconnectCode),
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
    /// First packet only: a CONNECT for an MQTT version the broker does not speak.
    #[error("unsupported MQTT protocol level {0}")]
    UnsupportedVersion(u8),
}

/// Why a packet could not be encoded (a broker bug, never client input).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode MQTT packet: {0}")]
pub struct WriteError(String);

fn qos_from_v4(q: V4QoS) -> u8 {
    match q {
        V4QoS::AtMostOnce => 0,
        V4QoS::AtLeastOnce => 1,
        V4QoS::ExactlyOnce => 2,
    }
}

fn qos_to_v4(q: u8) -> V4QoS {
    match q {
        0 => V4QoS::AtMostOnce,
        1 => V4QoS::AtLeastOnce,
        _ => V4QoS::ExactlyOnce,
    }
}

fn qos_from_v5(q: V5QoS) -> u8 {
    match q {
        V5QoS::AtMostOnce => 0,
        V5QoS::AtLeastOnce => 1,
        V5QoS::ExactlyOnce => 2,
    }
}

fn qos_to_v5(q: u8) -> V5QoS {
    match q {
        0 => V5QoS::AtMostOnce,
        1 => V5QoS::AtLeastOnce,
        _ => V5QoS::ExactlyOnce,
    }
}

fn limit_u32(max_size: usize) -> u32 {
    u32::try_from(max_size).unwrap_or(u32::MAX)
}

/// Maps a framing error (from `check`, before any byte is consumed).
fn v4_frame_error(e: V4Error) -> ReadError {
    match e {
        V4Error::InsufficientBytes(_) => ReadError::Incomplete,
        V4Error::PayloadSizeLimitExceeded(n) => ReadError::TooLarge(n),
        e => ReadError::Malformed(e.to_string()),
    }
}

/// Maps a framing error (from `check`, before any byte is consumed).
fn v5_frame_error(e: V5Error) -> ReadError {
    match e {
        V5Error::InsufficientBytes(_) => ReadError::Incomplete,
        V5Error::PayloadSizeLimitExceeded { pkt_size, .. } => ReadError::TooLarge(pkt_size),
        e => ReadError::Malformed(e.to_string()),
    }
}

/// Maps an error decoding a whole frame. The frame was complete, so "insufficient bytes"
/// here means a length inside the packet overruns it: malformed, not incomplete.
fn decode_error(e: impl std::fmt::Display) -> ReadError {
    ReadError::Malformed(e.to_string())
}

/// Reads one packet from the front of `buf` (consuming it), if a whole one is there.
/// `max_size` bounds the packet's remaining length.
pub fn read(protocol: Protocol, buf: &mut BytesMut, max_size: usize) -> Result<Inbound, ReadError> {
    match protocol {
        Protocol::V311 => read_v4(buf, max_size),
        Protocol::V5 => read_v5(buf, max_size),
    }
}

/// Reads the first packet of a connection, which must be a CONNECT and decides the version.
///
/// The CONNECT frame is decoded with the MQTT 5 codec first (on a copy, once per connection):
/// its CONNECT reader checks the protocol level right after the protocol name, so a 3.1.1
/// CONNECT fails there with level 4 and is then decoded with the 3.1.1 codec. (The 3.1.1
/// reader reports level 5 too, but would go on to read MQTT 5 properties as a client id.)
pub fn read_first(buf: &mut BytesMut, max_size: usize) -> Result<(Protocol, Inbound), ReadError> {
    let header = v5::check(buf.iter(), Some(limit_u32(max_size))).map_err(v5_frame_error)?;
    if !matches!(header.packet_type(), Ok(v5::PacketType::Connect)) {
        // Consume nothing: the connection is closed anyway.
        return Err(ReadError::Malformed(
            "the first packet is not CONNECT".into(),
        ));
    }
    let mut frame = buf.split_to(header.frame_length());
    let mut probe = frame.clone();
    match v5::Packet::read(&mut probe, None) {
        Ok(v5::Packet::Connect(c, will, _login)) => Ok((Protocol::V5, connect_from_v5(c, will))),
        Ok(_) => Err(ReadError::Malformed(
            "the first packet is not CONNECT".into(),
        )),
        Err(V5Error::InvalidProtocolLevel(4)) => match v4::Packet::read(&mut frame, usize::MAX) {
            Ok(v4::Packet::Connect(c)) => Ok((
                Protocol::V311,
                Inbound::Connect(Connect {
                    will_payload_len: c.last_will.as_ref().map(|w| w.message.len()),
                    client_id: c.client_id,
                    keep_alive_s: c.keep_alive,
                    clean_start: c.clean_session,
                    session_expiry_s: 0,
                    max_packet_size: None,
                    auth_method: None,
                }),
            )),
            Ok(_) => Err(ReadError::Malformed(
                "the first packet is not CONNECT".into(),
            )),
            Err(e) => Err(ReadError::Malformed(e.to_string())),
        },
        Err(V5Error::InvalidProtocolLevel(level)) => Err(ReadError::UnsupportedVersion(level)),
        Err(e) => Err(ReadError::Malformed(e.to_string())),
    }
}

fn connect_from_v5(c: v5::Connect, will: Option<v5::LastWill>) -> Inbound {
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

fn read_v4(buf: &mut BytesMut, max_size: usize) -> Result<Inbound, ReadError> {
    rumqttc::mqttbytes::check(buf.iter(), max_size).map_err(v4_frame_error)?;
    let packet = v4::Packet::read(buf, max_size).map_err(decode_error)?;
    Ok(match packet {
        v4::Packet::Connect(c) => Inbound::Connect(Connect {
            will_payload_len: c.last_will.as_ref().map(|w| w.message.len()),
            client_id: c.client_id,
            keep_alive_s: c.keep_alive,
            clean_start: c.clean_session,
            session_expiry_s: 0,
            max_packet_size: None,
            auth_method: None,
        }),
        v4::Packet::Publish(p) => Inbound::Publish {
            topic: p.topic,
            qos: qos_from_v4(p.qos),
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
                    qos: qos_from_v4(f.qos),
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

fn read_v5(buf: &mut BytesMut, max_size: usize) -> Result<Inbound, ReadError> {
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
                qos: qos_from_v5(p.qos),
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
                    qos: qos_from_v5(f.qos),
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

/// Appends the wire form of `packet` to `out`. A packet with no form in `protocol` (a server
/// DISCONNECT on 3.1.1, say) appends nothing.
pub fn write(protocol: Protocol, packet: Outbound, out: &mut BytesMut) -> Result<(), WriteError> {
    match protocol {
        Protocol::V311 => write_v4(packet, out),
        Protocol::V5 => write_v5(packet, out),
    }
}

fn write_v4(packet: Outbound, out: &mut BytesMut) -> Result<(), WriteError> {
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
                    SubCode::Granted(q) => v4::SubscribeReasonCode::Success(qos_to_v4(q)),
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
            let mut p = v4::Publish::from_bytes(topic, qos_to_v4(qos), payload);
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

fn write_v5(packet: Outbound, out: &mut BytesMut) -> Result<(), WriteError> {
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
                    SubCode::Granted(q) => v5::SubscribeReasonCode::Success(qos_to_v5(q)),
                    SubCode::Unspecified => v5::SubscribeReasonCode::Unspecified,
                    SubCode::NotAuthorized => v5::SubscribeReasonCode::NotAuthorized,
                    SubCode::TopicFilterInvalid => v5::SubscribeReasonCode::TopicFilterInvalid,
                    SubCode::QuotaExceeded => v5::SubscribeReasonCode::QuotaExceeded,
                    SubCode::SharedSubscriptionsNotSupported => {
                        v5::SubscribeReasonCode::SharedSubscriptionsNotSupported
                    }
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
            qos: qos_to_v5(qos),
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
/// identifiers not available). Shared subscriptions are not implemented by the emulator, so
/// it says so.
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
        shared_subscription_available: Some(0),
        server_keep_alive: p.server_keep_alive,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                assert_eq!(p.shared_subscription_available, Some(0));
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
                    SubCode::SharedSubscriptionsNotSupported,
                    SubCode::SubscriptionIdsNotSupported,
                    SubCode::Unspecified,
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
                        R::SharedSubscriptionsNotSupported,
                        R::SubscriptionIdNotSupported,
                        R::Unspecified,
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
}
