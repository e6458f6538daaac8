//! One MQTT session with the claim certificate (rumqttc over rustls), MQTT 3.1.1 or 5.
//!
//! A session is one connection: it connects, subscribes to the accepted/rejected topics of
//! the APIs it will call and waits for the SUBACK before its first request
//! (docs/aws-fleet-provisioning.md §2).
//! The fleet-provisioning API has no correlation id, so [`Session::call`] takes `&mut self`:
//! at most one request is outstanding per session, hence per API. Replies are matched by
//! topic, and the caller may discard a reply it can prove stale (a late duplicate); anything
//! that arrived while no request was outstanding is dropped before the next request.
//!
//! When the connection fails, or a reply does not come in time, the session is finished: the
//! owner builds a new one. A fresh connection cannot receive a reply meant for the old one
//! (AWS answers on the requesting connection only), which keeps replies and requests paired.
//!
//! Every failure says what it means for the line ([`SessionError::class`]): the endpoint is
//! away (wait), it throttles (slow down), or the configuration is wrong (stop).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5 as mqtt5;
use rumqttc::{QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::down::{self, Down, DownKind, DownSource, ServerReason, TlsProblem};
use crate::fleet::payloads::decode;
use crate::fleet::{Api, ErrorResponse, Format, MqttVersion, ReplyKind};

/// How to reach the endpoint.
#[derive(Clone)]
pub struct SessionConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub format: Format,
    /// APIs whose reply topics this session subscribes to.
    pub apis: Vec<Api>,
    pub connect_timeout: Duration,
    pub keep_alive: Duration,
    pub mqtt_version: MqttVersion,
}

/// A reply from the service.
#[derive(Debug, Clone)]
pub enum Reply {
    Accepted(Bytes),
    Rejected(ErrorResponse),
}

/// What the caller makes of an accepted reply before it is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The answer to this request.
    Take,
    /// Provably the answer to an earlier request (a late duplicate): keep waiting.
    Stale,
}

/// Why a connection closed while the session was in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseCause {
    /// No reason given (MQTT 3.1.1 closes without one).
    Unexplained,
    /// Another connection with this client id took the session over.
    TakenOver,
    /// The server said the connection was not authorized for what it did.
    NotAuthorized,
    /// The server said to slow down.
    Throttled,
}

/// A PUBLISH the server refused with an MQTT 5 PUBACK reason code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubAckRefusal {
    /// 0x87: the claim policy does not allow publishing on the topic.
    NotAuthorized,
    /// 0x97: over a quota; a throttle.
    QuotaExceeded,
    Other(String),
}

/// What a failure means for the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The endpoint cannot be reached now: wait for it (no attempt is used).
    Outage,
    /// The endpoint asks to slow down: the request is retried after the rate drops.
    Throttle,
    /// The session ended before the request left: reconnect and send it (no attempt used).
    Reconnect,
    /// Retrying cannot fix it: stop the line.
    Permanent,
    /// A failed attempt of this request.
    Attempt,
}

/// Why a session step failed. Each names the exchange that failed; a failure of the
/// connection keeps rumqttc's error as its source.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable {
        endpoint: String,
        reason: String,
        #[source]
        source: Option<DownSource>,
    },
    #[error("TLS handshake with {endpoint} failed: {reason}")]
    Tls {
        endpoint: String,
        reason: String,
        problem: TlsProblem,
        #[source]
        source: Option<DownSource>,
    },
    #[error("CONNECT refused by {endpoint}: {code}")]
    Refused {
        endpoint: String,
        code: String,
        not_authorized: bool,
        transient: bool,
    },
    #[error("SUBSCRIBE to {filter} refused: {code}")]
    SubscribeRefused { filter: String, code: String },
    #[error("no reply to {api} within {secs} s")]
    Timeout { api: &'static str, secs: u64 },
    #[error("the connection closed during {step}: {reason}")]
    Closed {
        step: String,
        reason: String,
        /// The request had been sent: it may have been processed.
        after_request: bool,
        cause: CloseCause,
        #[source]
        source: Option<DownSource>,
    },
    #[error("PUBLISH to {topic} refused: {code:?}")]
    PublishRefused {
        api: &'static str,
        topic: String,
        code: PubAckRefusal,
    },
    #[error("unreadable {api} reply: {reason}")]
    BadReply { api: &'static str, reason: String },
}

impl SessionError {
    /// What this failure means for the line.
    pub fn class(&self) -> ErrorClass {
        match self {
            SessionError::Unreachable { .. } => ErrorClass::Outage,
            SessionError::Refused {
                transient: true, ..
            } => ErrorClass::Outage,
            SessionError::Tls { .. }
            | SessionError::Refused { .. }
            | SessionError::SubscribeRefused { .. }
            | SessionError::PublishRefused {
                code: PubAckRefusal::NotAuthorized,
                ..
            }
            | SessionError::Closed {
                cause: CloseCause::NotAuthorized,
                ..
            } => ErrorClass::Permanent,
            SessionError::PublishRefused {
                code: PubAckRefusal::QuotaExceeded,
                ..
            }
            | SessionError::Closed {
                cause: CloseCause::Throttled,
                ..
            } => ErrorClass::Throttle,
            // An established session closed by the server after a request and before its
            // reply is how a throttle can arrive (issue 8; SDK users report it after
            // RegisterThing bursts): slow down and send it again.
            SessionError::Closed {
                after_request: true,
                cause: CloseCause::Unexplained,
                ..
            } => ErrorClass::Throttle,
            SessionError::Closed { .. } => ErrorClass::Reconnect,
            SessionError::Timeout { .. }
            | SessionError::BadReply { .. }
            | SessionError::PublishRefused { .. } => ErrorClass::Attempt,
        }
    }

    fn at_connect(endpoint: &str, d: Down) -> SessionError {
        let endpoint = endpoint.to_string();
        match d.kind {
            DownKind::Tls(problem) => SessionError::Tls {
                endpoint,
                reason: d.reason,
                problem,
                source: d.source,
            },
            DownKind::Refused {
                code,
                not_authorized,
                transient,
            } => SessionError::Refused {
                endpoint,
                code,
                not_authorized,
                transient,
            },
            DownKind::Server(ServerReason::NotAuthorized) => SessionError::Refused {
                endpoint,
                code: "DISCONNECT NotAuthorized".into(),
                not_authorized: true,
                transient: false,
            },
            _ => SessionError::Unreachable {
                endpoint,
                reason: d.reason,
                source: d.source,
            },
        }
    }

    fn closed(step: impl Into<String>, d: Down, after_request: bool) -> SessionError {
        let cause = match d.kind {
            DownKind::Server(ServerReason::TakenOver) => CloseCause::TakenOver,
            DownKind::Server(ServerReason::NotAuthorized) => CloseCause::NotAuthorized,
            DownKind::Server(ServerReason::Throttled(_)) => CloseCause::Throttled,
            _ => CloseCause::Unexplained,
        };
        SessionError::Closed {
            step: step.into(),
            reason: d.reason,
            after_request,
            cause,
            source: d.source,
        }
    }
}

/// What the driver task saw.
enum Incoming {
    ConnAck,
    /// Per filter: `Ok(granted QoS)` or `Err(reason)`.
    SubAck(Vec<Result<u8, String>>),
    Publish {
        topic: String,
        payload: Bytes,
    },
    /// An MQTT 5 PUBACK with a failure reason code.
    PubAckRefused(PubAckRefusal),
    Down(Down),
}

enum Client {
    V4(rumqttc::AsyncClient),
    V5(mqtt5::AsyncClient),
}

impl Client {
    async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .publish(topic, mqtt5::mqttbytes::QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn subscribe(&self, filters: &[String]) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
                )
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe_many(filters.iter().map(|f| {
                    mqtt5::mqttbytes::v5::Filter::new(f.clone(), mqtt5::mqttbytes::QoS::AtLeastOnce)
                }))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn disconnect(&self) -> bool {
        match self {
            Client::V4(c) => c.disconnect().await.is_ok(),
            Client::V5(c) => c.disconnect().await.is_ok(),
        }
    }
}

/// A connected, subscribed session.
pub struct Session {
    client: Client,
    incoming: mpsc::Receiver<Incoming>,
    driver: JoinHandle<()>,
    format: Format,
    connect_timeout: Duration,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn qos_u8(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn local_close(reason: &str) -> Down {
    Down {
        kind: DownKind::Closed,
        reason: reason.to_string(),
        source: None,
    }
}

async fn drive_v4(mut eventloop: rumqttc::EventLoop, tx: mpsc::Sender<Incoming>) {
    use rumqttc::{Event, Packet, SubscribeReasonCode};
    loop {
        let msg = match eventloop.poll().await {
            // A refused CONNACK arrives as an error (ConnectionRefused).
            Ok(Event::Incoming(Packet::ConnAck(_))) => Incoming::ConnAck,
            Ok(Event::Incoming(Packet::SubAck(s))) => Incoming::SubAck(
                s.return_codes
                    .iter()
                    .map(|c| match c {
                        SubscribeReasonCode::Success(q) => Ok(qos_u8(*q)),
                        SubscribeReasonCode::Failure => Err("Failure (0x80)".to_string()),
                    })
                    .collect(),
            ),
            Ok(Event::Incoming(Packet::Publish(p))) => Incoming::Publish {
                topic: p.topic,
                payload: p.payload,
            },
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(Incoming::Down(down::from_v4(e))).await;
                // One connection per session: the owner builds a new session.
                return;
            }
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

async fn drive_v5(mut eventloop: mqtt5::EventLoop, tx: mpsc::Sender<Incoming>) {
    use mqtt5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
    loop {
        let msg = match eventloop.poll().await {
            Ok(mqtt5::Event::Incoming(Packet::ConnAck(_))) => Incoming::ConnAck,
            Ok(mqtt5::Event::Incoming(Packet::SubAck(s))) => Incoming::SubAck(
                s.return_codes
                    .iter()
                    .map(|c| match c {
                        SubscribeReasonCode::Success(q) => Ok(*q as u8),
                        other => Err(format!("{other:?}")),
                    })
                    .collect(),
            ),
            Ok(mqtt5::Event::Incoming(Packet::Publish(p))) => Incoming::Publish {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload,
            },
            // rumqttc only logs a PUBACK's failure reason; the engine must act on it.
            Ok(mqtt5::Event::Incoming(Packet::PubAck(a))) => match a.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => continue,
                PubAckReason::NotAuthorized => {
                    Incoming::PubAckRefused(PubAckRefusal::NotAuthorized)
                }
                PubAckReason::QuotaExceeded => {
                    Incoming::PubAckRefused(PubAckRefusal::QuotaExceeded)
                }
                other => Incoming::PubAckRefused(PubAckRefusal::Other(format!("{other:?}"))),
            },
            Ok(mqtt5::Event::Incoming(Packet::Disconnect(d))) => {
                Incoming::Down(down::from_v5_disconnect(d.reason_code))
            }
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(Incoming::Down(down::from_v5(e))).await;
                return;
            }
        };
        let down = matches!(msg, Incoming::Down(_));
        if tx.send(msg).await.is_err() || down {
            return;
        }
    }
}

impl Session {
    /// Connects and subscribes; returns once every SUBACK has arrived.
    pub async fn connect(cfg: &SessionConfig) -> Result<Session, SessionError> {
        let mut s = Session::connect_only(cfg).await?;
        for api in &cfg.apis {
            s.subscribe_api(api).await?;
        }
        Ok(s)
    }

    /// Connects (TLS handshake, CONNECT, CONNACK) without subscribing.
    pub async fn connect_only(cfg: &SessionConfig) -> Result<Session, SessionError> {
        let endpoint = format!("{}:{}", cfg.host, cfg.port);
        let transport = Transport::tls_with_config(TlsConfiguration::Rustls(cfg.tls.clone()));
        // Requests are small and latency-bound: without TCP_NODELAY a PUBLISH that follows
        // the PUBACK of the previous reply waits for a delayed ACK (~40 ms).
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(cfg.connect_timeout.as_secs().max(1));
        let (tx, incoming) = mpsc::channel(64);
        let (client, driver) = if cfg.mqtt_version == MqttVersion::V5 {
            let mut opts =
                mqtt5::MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
            opts.set_transport(transport);
            opts.set_keep_alive(cfg.keep_alive);
            opts.set_clean_start(true);
            opts.set_max_packet_size(Some(256 * 1024));
            opts.set_network_options(net);
            let (client, eventloop) = mqtt5::AsyncClient::new(opts, 16);
            (Client::V5(client), tokio::spawn(drive_v5(eventloop, tx)))
        } else {
            let mut opts =
                rumqttc::MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
            opts.set_transport(transport);
            opts.set_keep_alive(cfg.keep_alive);
            opts.set_clean_session(true);
            opts.set_max_packet_size(256 * 1024, 256 * 1024);
            let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 16);
            eventloop.set_network_options(net);
            (Client::V4(client), tokio::spawn(drive_v4(eventloop, tx)))
        };
        let mut s = Session {
            client,
            incoming,
            driver,
            format: cfg.format,
            connect_timeout: cfg.connect_timeout,
        };
        match timeout(cfg.connect_timeout, s.incoming.recv()).await {
            Ok(Some(Incoming::ConnAck)) => Ok(s),
            Ok(Some(Incoming::Down(d))) => Err(SessionError::at_connect(&endpoint, d)),
            Ok(_) => Err(SessionError::Unreachable {
                endpoint,
                reason: "connection ended before CONNACK".into(),
                source: None,
            }),
            Err(_) => Err(SessionError::Unreachable {
                endpoint,
                reason: format!("no CONNACK within {} s", cfg.connect_timeout.as_secs()),
                source: None,
            }),
        }
    }

    /// Subscribes to `api`'s accepted and rejected topics; returns the granted QoS of each.
    pub async fn subscribe_api(&mut self, api: &Api) -> Result<Vec<(String, u8)>, SessionError> {
        let filters: Vec<String> = [ReplyKind::Accepted, ReplyKind::Rejected]
            .map(|k| api.reply_topic(self.format, k))
            .to_vec();
        let step = format!("SUBSCRIBE {}", filters.join(", "));
        self.client
            .subscribe(&filters)
            .await
            .map_err(|reason| SessionError::closed(&step, local_close(&reason), false))?;
        loop {
            match timeout(self.connect_timeout, self.incoming.recv()).await {
                Ok(Some(Incoming::SubAck(codes))) => {
                    let mut granted = Vec::with_capacity(filters.len());
                    for (filter, code) in filters.iter().zip(codes) {
                        match code {
                            Ok(q) => granted.push((filter.clone(), q)),
                            Err(code) => {
                                return Err(SessionError::SubscribeRefused {
                                    filter: filter.clone(),
                                    code,
                                });
                            }
                        }
                    }
                    return Ok(granted);
                }
                // The SUBSCRIBE was sent: MQTT 3.1.1 answers a denied one by closing.
                Ok(Some(Incoming::Down(d))) => return Err(SessionError::closed(step, d, true)),
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(SessionError::closed(
                        step,
                        local_close("connection ended"),
                        true,
                    ));
                }
                Err(_) => {
                    return Err(SessionError::Timeout {
                        api: "SUBSCRIBE",
                        secs: self.connect_timeout.as_secs(),
                    });
                }
            }
        }
    }

    /// Drops whatever arrived while no request was outstanding (late replies to abandoned
    /// requests); fails if the connection ended meanwhile.
    fn drain_idle(&mut self, api: &Api) -> Result<(), SessionError> {
        while let Ok(m) = self.incoming.try_recv() {
            match m {
                Incoming::Publish { topic, .. } => {
                    tracing::debug!(%topic, "dropping a message that arrived between requests");
                }
                Incoming::Down(d) => {
                    return Err(SessionError::closed(
                        format!("the wait before {}", api.name()),
                        d,
                        false,
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Publishes a request and waits for its accepted or rejected reply. `verdict` judges an
    /// accepted reply: a [`Verdict::Stale`] one is dropped and the wait goes on.
    pub async fn call(
        &mut self,
        api: &Api,
        payload: Vec<u8>,
        wait: Duration,
        verdict: &(dyn Fn(&Bytes) -> Verdict + Sync),
    ) -> Result<Reply, SessionError> {
        let accepted = api.reply_topic(self.format, ReplyKind::Accepted);
        let rejected = api.reply_topic(self.format, ReplyKind::Rejected);
        self.drain_idle(api)?;
        let request_topic = api.request_topic(self.format);
        self.client
            .publish(request_topic.clone(), payload)
            .await
            .map_err(|reason| {
                SessionError::closed(
                    format!("{} PUBLISH", api.name()),
                    local_close(&reason),
                    false,
                )
            })?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.incoming.recv()).await;
            match next {
                Ok(Some(Incoming::Publish { topic, payload })) => {
                    if topic == accepted {
                        match verdict(&payload) {
                            Verdict::Take => return Ok(Reply::Accepted(payload)),
                            Verdict::Stale => {
                                tracing::debug!(%topic, "dropping a stale duplicate reply");
                                continue;
                            }
                        }
                    }
                    if topic == rejected {
                        return decode::<ErrorResponse>(self.format, &payload)
                            .map(Reply::Rejected)
                            .map_err(|e| SessionError::BadReply {
                                api: api.name(),
                                reason: e.to_string(),
                            });
                    }
                    tracing::debug!(%topic, "dropping a message that answers no outstanding request");
                }
                Ok(Some(Incoming::PubAckRefused(code))) => {
                    return Err(SessionError::PublishRefused {
                        api: api.name(),
                        topic: request_topic,
                        code,
                    });
                }
                Ok(Some(Incoming::Down(d))) => {
                    return Err(SessionError::closed(api.name(), d, true));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(SessionError::closed(
                        api.name(),
                        local_close("connection ended"),
                        true,
                    ));
                }
                Err(_) => {
                    return Err(SessionError::Timeout {
                        api: api.name(),
                        secs: wait.as_secs(),
                    });
                }
            }
        }
    }

    /// Sends DISCONNECT and waits briefly for the connection to close.
    pub async fn close(mut self) {
        if self.client.disconnect().await {
            let _ = timeout(Duration::from_secs(2), async {
                while let Some(m) = self.incoming.recv().await {
                    if matches!(m, Incoming::Down(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}
