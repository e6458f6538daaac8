//! MQTT packets as the broker's session logic sees them, and their wire codec.
//!
//! The session logic works on the protocol-neutral [`Inbound`]/[`Outbound`] types; this file
//! defines them and converts them to and from the wire with rumqttc's maintained codecs.
//! Nothing here parses MQTT by hand. The first packet of a connection decides its version
//! ([`read_first`]).
//!
//! - `mqtt311`: MQTT 3.1.1 with `rumqttc::mqttbytes::v4`.
//! - `mqtt5`: MQTT 5 with `rumqttc::v5::mqttbytes::v5`, properties and reason codes.
//! - `tests`: round trips of every packet the broker reads and writes, on both versions.
//!
//! Reason codes are named after MQTT 5's; each knows its 3.1.1 form, if it has one. A packet
//! with no 3.1.1 form (a server DISCONNECT, most CONNACK refusals) is not written on 3.1.1:
//! the broker then simply closes the connection.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::Error as V5Error;
use rumqttc::v5::mqttbytes::v5;

/// The QoS mapping of both codecs: rumqttc's 3.1.1 and MQTT 5 `QoS` are two enums with the
/// same variants (discriminants 0, 1 and 2), so one definition serves both. Expands to
/// `qos_from` (wire enum to number) and `qos_to` (number to wire enum; anything above 1 is
/// QoS 2, which the broker never grants or sends).
macro_rules! qos_mapping {
    ($qos:ident) => {
        fn qos_from(q: $qos) -> u8 {
            q as u8
        }

        fn qos_to(q: u8) -> $qos {
            match q {
                0 => $qos::AtMostOnce,
                1 => $qos::AtLeastOnce,
                _ => $qos::ExactlyOnce,
            }
        }
    };
}

mod mqtt311;
mod mqtt5;

use mqtt5::{connect_from_v5, read_v5, v5_frame_error, write_v5};
use mqtt311::{connect_from_v4, read_v4, write_v4};

/// The MQTT protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    V311,
    V5,
}

/// CONNECT as the broker acts on it. MQTT 5-only fields have their "absent" value on 3.1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connect {
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
pub(crate) struct ForwardedProps {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

/// One topic filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubFilter {
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
pub(crate) enum Inbound {
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
pub(crate) enum ConnectCode {
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
pub(crate) struct ConnAckProps {
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
pub(crate) enum SubCode {
    Granted(u8),
    /// Every failure below is 0x80 on 3.1.1.
    NotAuthorized,
    TopicFilterInvalid,
    QuotaExceeded,
    SubscriptionIdsNotSupported,
}

/// PUBACK reason (MQTT 5; a 3.1.1 PUBACK has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PubAckCode {
    Success,
    ImplementationSpecific,
    NotAuthorized,
    TopicNameInvalid,
    QuotaExceeded,
}

/// UNSUBACK reason (MQTT 5; a 3.1.1 UNSUBACK has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnsubCode {
    Success,
    NoSubscriptionExisted,
}

/// Reason of a server DISCONNECT (MQTT 5 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DisconnectCode {
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
    pub(crate) fn description(self) -> &'static str {
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
pub(crate) enum Outbound {
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
pub(crate) enum ReadError {
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
pub(crate) struct WriteError(String);

fn limit_u32(max_size: usize) -> u32 {
    u32::try_from(max_size).unwrap_or(u32::MAX)
}

/// Maps an error decoding a whole frame. The frame was complete, so "insufficient bytes"
/// here means a length inside the packet overruns it: malformed, not incomplete.
fn decode_error(e: impl std::fmt::Display) -> ReadError {
    ReadError::Malformed(e.to_string())
}

/// Reads one packet from the front of `buf` (consuming it), if a whole one is there.
/// `max_size` bounds the packet's remaining length.
pub(crate) fn read(
    protocol: Protocol,
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Inbound, ReadError> {
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
pub(crate) fn read_first(
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<(Protocol, Inbound), ReadError> {
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
            Ok(v4::Packet::Connect(c)) => Ok((Protocol::V311, connect_from_v4(c))),
            Ok(_) => Err(ReadError::Malformed(
                "the first packet is not CONNECT".into(),
            )),
            Err(e) => Err(ReadError::Malformed(e.to_string())),
        },
        Err(V5Error::InvalidProtocolLevel(level)) => Err(ReadError::UnsupportedVersion(level)),
        Err(e) => Err(ReadError::Malformed(e.to_string())),
    }
}

/// Appends the wire form of `packet` to `out`. A packet with no form in `protocol` (a server
/// DISCONNECT on 3.1.1, say) appends nothing.
pub(crate) fn write(
    protocol: Protocol,
    packet: Outbound,
    out: &mut BytesMut,
) -> Result<(), WriteError> {
    match protocol {
        Protocol::V311 => write_v4(packet, out),
        Protocol::V5 => write_v5(packet, out),
    }
}

#[cfg(test)]
mod tests;
