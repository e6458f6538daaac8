//! Why an MQTT connection could not be made or went down, read from rumqttc's errors and the
//! server's own reason codes, so the engine can tell an outage (wait for it to pass) from a
//! throttle (slow down) from a configuration problem (stop the line with one clear error).
//!
//! - TCP refused, reset or unreachable, a name that does not resolve, a handshake cut off, no
//!   CONNACK in time: the endpoint is [`DownKind::Unreachable`], which may pass.
//! - A TLS error from rustls (the server's certificate is not trusted, the server refused the
//!   claim certificate): [`DownKind::Tls`], which will not pass by itself.
//! - CONNACK refused: [`DownKind::Refused`]; "server busy/unavailable" and connect-rate codes
//!   are transient, "not authorized" (3.1.1 code 5, and code 7 as AWS sends it) is not.
//! - An MQTT 5 DISCONNECT from the server: [`DownKind::Server`] with its reason.

use std::io;
use std::sync::Arc;

use rumqttc::v5 as mqtt5;

/// What the TLS failure says about the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProblem {
    /// The endpoint's server certificate is not trusted (wrong root CA, wrong host name).
    ServerCertificate,
    /// The endpoint refused the station's client (claim) certificate.
    ClientCertificate,
    /// Another handshake failure (protocol, ALPN).
    Other,
}

/// Why the server closed an MQTT 5 connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerReason {
    /// Another connection with the same client id took the session over (0x8E).
    TakenOver,
    /// Not authorized (0x87): the policy denies what the connection did.
    NotAuthorized,
    /// Busy, quota exceeded, message or connection rate too high: slow down.
    Throttled(String),
    /// Any other reason code.
    Other(String),
}

/// Why a connection failed or ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownKind {
    Unreachable,
    Tls(TlsProblem),
    Refused {
        code: String,
        /// The code says the client is not allowed to connect (a policy or identity problem).
        not_authorized: bool,
        /// The code says to try again later (server busy or unavailable, connect rate).
        transient: bool,
    },
    Server(ServerReason),
    /// The connection ended for another reason (protocol error, peer closed, local close).
    Closed,
}

/// The error a connection failure came from (rumqttc's, with its own sources).
pub type DownSource = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A connection failure: its kind, the text rumqttc gave, and rumqttc's error itself.
#[derive(Debug, Clone)]
pub struct Down {
    pub kind: DownKind,
    pub reason: String,
    pub source: Option<DownSource>,
}

fn tls_problem(e: &rustls::Error) -> Option<TlsProblem> {
    use rustls::AlertDescription as A;
    Some(match e {
        rustls::Error::InvalidCertificate(_) => TlsProblem::ServerCertificate,
        rustls::Error::AlertReceived(
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired,
        ) => TlsProblem::ClientCertificate,
        // A server in trouble may say so mid-handshake: that passes.
        rustls::Error::AlertReceived(A::InternalError) => return None,
        _ => TlsProblem::Other,
    })
}

/// An I/O error from the socket: a TLS failure if rustls is inside it, else the network.
fn from_io(e: &io::Error) -> DownKind {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(tls_problem)
    {
        Some(p) => DownKind::Tls(p),
        None => DownKind::Unreachable,
    }
}

fn refused_v4(code: rumqttc::ConnectReturnCode) -> DownKind {
    use rumqttc::ConnectReturnCode as C;
    DownKind::Refused {
        code: format!("{code:?}"),
        not_authorized: matches!(code, C::NotAuthorized | C::BadUserNamePassword),
        transient: matches!(code, C::ServiceUnavailable),
    }
}

/// An MQTT 3.1.1 connection error.
pub fn from_v4(e: rumqttc::ConnectionError) -> Down {
    use rumqttc::{ConnectionError as E, StateError as S};
    let kind = match &e {
        E::Io(io) | E::MqttState(S::Io(io)) => from_io(io),
        E::Tls(rumqttc::TlsError::Io(io)) => from_io(io),
        E::Tls(rumqttc::TlsError::TLS(t)) => {
            tls_problem(t).map_or(DownKind::Unreachable, DownKind::Tls)
        }
        E::Tls(_) => DownKind::Tls(TlsProblem::Other),
        E::NetworkTimeout | E::FlushTimeout => DownKind::Unreachable,
        E::ConnectionRefused(code) => refused_v4(*code),
        // AWS answers a 3.1.1 CONNECT it does not authorize with return code 7, which the
        // MQTT 3.1.1 codec does not know (docs/aws-fleet-provisioning.md §6).
        E::MqttState(S::Deserialization(rumqttc::mqttbytes::Error::InvalidConnectReturnCode(
            code,
        ))) => DownKind::Refused {
            code: format!("return code {code}"),
            not_authorized: *code == 7,
            transient: false,
        },
        _ => DownKind::Closed,
    };
    Down {
        kind,
        reason: e.to_string(),
        source: Some(Arc::new(e)),
    }
}

fn server_reason(code: mqtt5::mqttbytes::v5::DisconnectReasonCode) -> ServerReason {
    use mqtt5::mqttbytes::v5::DisconnectReasonCode as D;
    match code {
        D::SessionTakenOver => ServerReason::TakenOver,
        D::NotAuthorized => ServerReason::NotAuthorized,
        D::ServerBusy
        | D::QuotaExceeded
        | D::MessageRateTooHigh
        | D::ConnectionRateExceeded
        | D::ReceiveMaximumExceeded => ServerReason::Throttled(format!("{code:?}")),
        other => ServerReason::Other(format!("{other:?}")),
    }
}

/// An MQTT 5 DISCONNECT from the server.
pub fn from_v5_disconnect(code: mqtt5::mqttbytes::v5::DisconnectReasonCode) -> Down {
    Down {
        kind: DownKind::Server(server_reason(code)),
        reason: format!("DISCONNECT from the server: {code:?}"),
        source: None,
    }
}

/// An MQTT 5 connection error.
pub fn from_v5(e: mqtt5::ConnectionError) -> Down {
    use mqtt5::mqttbytes::v5::ConnectReturnCode as C;
    use mqtt5::{ConnectionError as E, StateError as S};
    let kind = match &e {
        E::Io(io) | E::MqttState(S::Io(io)) => from_io(io),
        E::Tls(rumqttc::TlsError::Io(io)) => from_io(io),
        E::Tls(rumqttc::TlsError::TLS(t)) => {
            tls_problem(t).map_or(DownKind::Unreachable, DownKind::Tls)
        }
        E::Tls(_) => DownKind::Tls(TlsProblem::Other),
        E::Timeout(_) => DownKind::Unreachable,
        E::ConnectionRefused(code) | E::MqttState(S::ConnFail { reason: code }) => {
            DownKind::Refused {
                code: format!("{code:?}"),
                not_authorized: matches!(
                    code,
                    C::NotAuthorized | C::BadUserNamePassword | C::Banned
                ),
                transient: matches!(
                    code,
                    C::ServerUnavailable
                        | C::ServerBusy
                        | C::ServiceUnavailable
                        | C::QuotaExceeded
                        | C::ConnectionRateExceeded
                ),
            }
        }
        E::MqttState(S::ServerDisconnect { reason_code, .. }) => {
            DownKind::Server(server_reason(*reason_code))
        }
        _ => DownKind::Closed,
    };
    Down {
        kind,
        reason: e.to_string(),
        source: Some(Arc::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_with(inner: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, inner)
    }

    #[test]
    fn network_failures_are_outages_and_tls_failures_are_not() {
        let refused =
            rumqttc::ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(from_v4(refused).kind, DownKind::Unreachable);
        let eof = rumqttc::ConnectionError::Tls(rumqttc::TlsError::Io(io::Error::from(
            io::ErrorKind::UnexpectedEof,
        )));
        assert_eq!(from_v4(eof).kind, DownKind::Unreachable);
        let untrusted = rumqttc::ConnectionError::Tls(rumqttc::TlsError::Io(io_with(
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        )));
        assert_eq!(
            from_v4(untrusted).kind,
            DownKind::Tls(TlsProblem::ServerCertificate)
        );
        // TLS 1.3: the server's refusal of the client certificate arrives on the first read.
        let rejected = rumqttc::ConnectionError::MqttState(rumqttc::StateError::Io(io_with(
            rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate),
        )));
        assert_eq!(
            from_v4(rejected).kind,
            DownKind::Tls(TlsProblem::ClientCertificate)
        );
        let v5 = mqtt5::ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(from_v5(v5).kind, DownKind::Unreachable);
    }

    #[test]
    fn connack_codes_say_whether_to_wait_or_stop() {
        let seven = rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::InvalidConnectReturnCode(7),
        ));
        assert!(matches!(
            from_v4(seven).kind,
            DownKind::Refused {
                not_authorized: true,
                transient: false,
                ..
            }
        ));
        let busy = rumqttc::ConnectionError::ConnectionRefused(
            rumqttc::ConnectReturnCode::ServiceUnavailable,
        );
        assert!(matches!(
            from_v4(busy).kind,
            DownKind::Refused {
                transient: true,
                ..
            }
        ));
        let v5 = mqtt5::ConnectionError::ConnectionRefused(
            mqtt5::mqttbytes::v5::ConnectReturnCode::NotAuthorized,
        );
        assert!(matches!(
            from_v5(v5).kind,
            DownKind::Refused {
                not_authorized: true,
                ..
            }
        ));
    }

    #[test]
    fn server_disconnects_are_read_by_reason() {
        use mqtt5::mqttbytes::v5::DisconnectReasonCode as D;
        assert_eq!(
            from_v5_disconnect(D::SessionTakenOver).kind,
            DownKind::Server(ServerReason::TakenOver)
        );
        assert!(matches!(
            from_v5_disconnect(D::QuotaExceeded).kind,
            DownKind::Server(ServerReason::Throttled(_))
        ));
        assert_eq!(
            from_v5_disconnect(D::NotAuthorized).kind,
            DownKind::Server(ServerReason::NotAuthorized)
        );
    }
}
