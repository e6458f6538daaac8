//! One MQTT session with the claim certificate (rumqttc over rustls).
//!
//! A session is one connection: it connects, subscribes to the accepted/rejected topics of
//! the APIs it will call and waits for the SUBACK before its first request (reference §2).
//! The fleet-provisioning API has no correlation id, so [`Session::call`] takes `&mut self`:
//! at most one request is outstanding per session, hence per API. Replies are matched by
//! topic; anything else that arrives (a late reply to an abandoned request) is dropped.
//!
//! When the connection fails, or a reply does not come in time, the session is finished: the
//! owner builds a new one. A fresh connection cannot receive a reply meant for the old one
//! (AWS answers on the requesting connection only), which keeps replies and requests paired.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::fleet::payloads::decode;
use crate::fleet::{Api, ErrorResponse, Format, ReplyKind};

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
    /// 3 (MQTT 3.1.1) or 5.
    pub mqtt_version: u8,
}

/// A reply from the service.
#[derive(Debug, Clone)]
pub enum Reply {
    Accepted(Bytes),
    Rejected(ErrorResponse),
}

/// Why a session step failed. Each names the exchange that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    #[error("connection to {endpoint} failed: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("CONNECT refused by {endpoint}: {code}")]
    Refused { endpoint: String, code: String },
    #[error("SUBSCRIBE to {filter} refused")]
    SubscribeRefused { filter: String },
    #[error("no reply to {api} within {secs} s")]
    Timeout { api: &'static str, secs: u64 },
    #[error("connection lost during {step}: {reason}")]
    Disconnected { step: String, reason: String },
    #[error("unreadable {api} reply: {reason}")]
    BadReply { api: &'static str, reason: String },
}

impl SessionError {
    /// Short stable code for failure counts.
    pub fn code(&self) -> String {
        match self {
            SessionError::Connect { .. } => "connect".into(),
            SessionError::Refused { code, .. } => format!("connect_refused:{code}"),
            SessionError::SubscribeRefused { .. } => "subscribe_refused".into(),
            SessionError::Timeout { api, .. } => format!("timeout:{api}"),
            SessionError::Disconnected { .. } => "disconnected".into(),
            SessionError::BadReply { api, .. } => format!("bad_reply:{api}"),
        }
    }
}

enum Incoming {
    ConnAck(ConnectReturnCode),
    SubAck(Vec<SubscribeReasonCode>),
    Publish { topic: String, payload: Bytes },
    Down(String),
}

/// A connected, subscribed session.
pub struct Session {
    client: AsyncClient,
    incoming: mpsc::Receiver<Incoming>,
    driver: JoinHandle<()>,
    format: Format,
    endpoint: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn drive(mut eventloop: EventLoop, tx: mpsc::Sender<Incoming>) {
    loop {
        let msg = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(c))) => Incoming::ConnAck(c.code),
            Ok(Event::Incoming(Packet::SubAck(s))) => Incoming::SubAck(s.return_codes),
            Ok(Event::Incoming(Packet::Publish(p))) => Incoming::Publish {
                topic: p.topic,
                payload: p.payload,
            },
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(Incoming::Down(e.to_string())).await;
                // One connection per session: the owner builds a new session.
                return;
            }
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

impl Session {
    /// Connects and subscribes; returns once every SUBACK has arrived.
    pub async fn connect(cfg: &SessionConfig) -> Result<Session, SessionError> {
        let endpoint = format!("{}:{}", cfg.host, cfg.port);
        let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            cfg.tls.clone(),
        )));
        opts.set_keep_alive(cfg.keep_alive);
        opts.set_clean_session(true);
        opts.set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        // Requests are small and latency-bound: without TCP_NODELAY a PUBLISH that follows
        // the PUBACK of the previous reply waits for a delayed ACK (~40 ms).
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(cfg.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(net);
        let (tx, incoming) = mpsc::channel(64);
        let driver = tokio::spawn(drive(eventloop, tx));
        let mut s = Session {
            client,
            incoming,
            driver,
            format: cfg.format,
            endpoint: endpoint.clone(),
        };

        match timeout(cfg.connect_timeout, s.incoming.recv()).await {
            Ok(Some(Incoming::ConnAck(ConnectReturnCode::Success))) => {}
            Ok(Some(Incoming::ConnAck(code))) => {
                return Err(SessionError::Refused {
                    endpoint,
                    code: format!("{code:?}"),
                });
            }
            Ok(Some(Incoming::Down(reason))) => {
                return Err(SessionError::Connect { endpoint, reason });
            }
            Ok(_) => {
                return Err(SessionError::Connect {
                    endpoint,
                    reason: "connection ended before CONNACK".into(),
                });
            }
            Err(_) => {
                return Err(SessionError::Connect {
                    endpoint,
                    reason: format!("no CONNACK within {} s", cfg.connect_timeout.as_secs()),
                });
            }
        }

        if cfg.apis.is_empty() {
            return Ok(s);
        }
        let filters: Vec<String> = cfg
            .apis
            .iter()
            .flat_map(|api| {
                [ReplyKind::Accepted, ReplyKind::Rejected].map(|k| api.reply_topic(cfg.format, k))
            })
            .collect();
        s.client
            .subscribe_many(
                filters
                    .iter()
                    .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
            )
            .await
            .map_err(|e| SessionError::Disconnected {
                step: "SUBSCRIBE".into(),
                reason: e.to_string(),
            })?;
        loop {
            match timeout(cfg.connect_timeout, s.incoming.recv()).await {
                Ok(Some(Incoming::SubAck(codes))) => {
                    if let Some(i) = codes
                        .iter()
                        .position(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        return Err(SessionError::SubscribeRefused {
                            filter: filters.get(i).cloned().unwrap_or_default(),
                        });
                    }
                    return Ok(s);
                }
                Ok(Some(Incoming::Down(reason))) => {
                    return Err(SessionError::Disconnected {
                        step: "SUBSCRIBE".into(),
                        reason,
                    });
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(SessionError::Disconnected {
                        step: "SUBSCRIBE".into(),
                        reason: "connection ended".into(),
                    });
                }
                Err(_) => {
                    return Err(SessionError::Disconnected {
                        step: "SUBSCRIBE".into(),
                        reason: format!("no SUBACK within {} s", cfg.connect_timeout.as_secs()),
                    });
                }
            }
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Publishes a request and waits for its accepted or rejected reply.
    pub async fn call(
        &mut self,
        api: &Api,
        payload: Vec<u8>,
        wait: Duration,
    ) -> Result<Reply, SessionError> {
        let accepted = api.reply_topic(self.format, ReplyKind::Accepted);
        let rejected = api.reply_topic(self.format, ReplyKind::Rejected);
        self.client
            .publish(
                api.request_topic(self.format),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .map_err(|e| SessionError::Disconnected {
                step: format!("{} PUBLISH", api.name()),
                reason: e.to_string(),
            })?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.incoming.recv()).await;
            match next {
                Ok(Some(Incoming::Publish { topic, payload })) => {
                    if topic == accepted {
                        return Ok(Reply::Accepted(payload));
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
                Ok(Some(Incoming::Down(reason))) => {
                    return Err(SessionError::Disconnected {
                        step: api.name().into(),
                        reason,
                    });
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(SessionError::Disconnected {
                        step: api.name().into(),
                        reason: "connection ended".into(),
                    });
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
        if self.client.disconnect().await.is_ok() {
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
