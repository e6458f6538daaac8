//! One client connection: TLS handshake and principal lookup, CONNECT, then packets until the
//! client leaves, breaks a rule, goes silent past 1.5 × keep-alive, or the broker shuts down.
//!
//! Fleet-provisioning requests are handed to the API service on their own task; the reply
//! comes back on this connection's control channel and is published only to this connection,
//! only if it subscribed to the reply topic (reference §2).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;

use super::codec::{self, ConnectResult, Inbound, Outbound, Protocol, ReadError};
use super::topic;
use super::{BrokerShared, Control};
use crate::emulator::api::ApiRequest;
use crate::emulator::ca::certificate_id;
use crate::emulator::policy::{self, Action, Variables};
use crate::emulator::registry::CertStatus;
use crate::fleet::ReservedTopic;

/// Keep-alive as AWS applies it: 0 or > 1200 s → 1200 s; < 30 s → 30 s (reference §5.2).
pub fn effective_keep_alive(requested_s: u16) -> Duration {
    let s = match requested_s {
        0 => 1200,
        s if s > 1200 => 1200,
        s if s < 30 => 30,
        s => s,
    };
    Duration::from_secs(u64::from(s))
}

pub(super) async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<BrokerShared>,
) {
    let deadline = Instant::now() + shared.limits.connect_timeout;
    let tls = match timeout_at(deadline, acceptor.accept(socket)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "emulator: TLS handshake refused");
            return;
        }
        Err(_) => return,
    };
    let principal = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c: &CertificateDer<'_>| certificate_id(c));
    let Some(principal) = principal else { return };
    // Only registered, ACTIVE certificates may connect.
    let active = shared
        .registry
        .certificate(&principal)
        .is_some_and(|c| c.status == CertStatus::Active);
    if !active {
        tracing::debug!(%peer, certificate = %principal, "emulator: certificate not active; closing");
        return;
    }
    let mut conn = Connection {
        io: tls,
        rbuf: BytesMut::with_capacity(8 * 1024),
        wbuf: BytesMut::with_capacity(8 * 1024),
        shared,
        principal,
        protocol: Protocol::V311,
        client_id: String::new(),
        policies: Vec::new(),
        thing_name: None,
        subscriptions: Vec::new(),
        next_pkid: 0,
        control: None,
    };
    conn.run(deadline).await;
}

struct Connection<S> {
    io: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    shared: Arc<BrokerShared>,
    principal: String,
    protocol: Protocol,
    client_id: String,
    policies: Vec<serde_json::Value>,
    thing_name: Option<String>,
    /// (filter, granted QoS)
    subscriptions: Vec<(String, u8)>,
    next_pkid: u16,
    /// This connection's own control sender, handed to API tasks for their reply.
    control: Option<mpsc::Sender<Control>>,
}

/// Why a connection ends (for the debug log).
enum Close {
    ClientDisconnect,
    PeerClosed,
    Io(String),
    Protocol(String),
    NotAuthorized(String),
    KeepAliveTimeout,
    Kicked,
    Shutdown,
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::ClientDisconnect => write!(f, "client sent DISCONNECT"),
            Close::PeerClosed => write!(f, "client closed the connection"),
            Close::Io(e) => write!(f, "I/O error: {e}"),
            Close::Protocol(e) => write!(f, "protocol error: {e}"),
            Close::NotAuthorized(what) => write!(f, "not authorized: {what}"),
            Close::KeepAliveTimeout => write!(f, "no packet within 1.5 × keep-alive"),
            Close::Kicked => write!(f, "another connection took over the client id"),
            Close::Shutdown => write!(f, "emulator shutting down"),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn max_packet(&self) -> usize {
        // Payload limit plus room for the fixed header and a maximal topic.
        self.shared.limits.max_payload + 512
    }

    async fn run(&mut self, connect_deadline: Instant) {
        // CONNECT must arrive within the connect timeout.
        let first = match timeout_at(connect_deadline, self.read_first()).await {
            Ok(Ok(p)) => p,
            Ok(Err(close)) => {
                tracing::debug!(%close, "emulator: connection closed before CONNECT");
                return;
            }
            Err(_) => return,
        };
        let (control_tx, mut control_rx) = mpsc::channel::<Control>(1024);
        let Some((conn_id, keep_alive)) = self.connect(first, control_tx).await else {
            return;
        };
        let close = self.session(&mut control_rx, keep_alive).await;
        tracing::debug!(client = %self.client_id, %close, "emulator: connection closed");
        self.shared.release_client_id(&self.client_id, conn_id);
    }

    async fn read_first(&mut self) -> Result<Inbound, Close> {
        loop {
            let max = self.max_packet();
            match codec::read_first(&mut self.rbuf, max) {
                Ok((protocol, packet)) => {
                    self.protocol = protocol;
                    return Ok(packet);
                }
                Err(ReadError::Incomplete) => self.fill().await?,
                Err(e) => return Err(Close::Protocol(e.to_string())),
            }
        }
    }

    async fn fill(&mut self) -> Result<(), Close> {
        match self.io.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(Close::PeerClosed),
            Ok(_) => Ok(()),
            Err(e) => Err(Close::Io(e.to_string())),
        }
    }

    async fn send(&mut self, packet: Outbound) -> Result<(), Close> {
        codec::write(self.protocol, &packet, &mut self.wbuf);
        let r = self.io.write_all(&self.wbuf).await;
        self.wbuf.clear();
        r.map_err(|e| Close::Io(e.to_string()))
    }

    /// Handles CONNECT; returns the connection id and keep-alive, or `None` if refused.
    async fn connect(
        &mut self,
        first: Inbound,
        control: mpsc::Sender<Control>,
    ) -> Option<(u64, Duration)> {
        let Inbound::Connect {
            client_id,
            keep_alive_s,
            ..
        } = first
        else {
            return None;
        };
        // AWS: ≤ 128 bytes; a `$` prefix is reserved; an empty id is refused.
        if client_id.is_empty() || client_id.len() > 128 || client_id.starts_with('$') {
            let _ = self
                .send(Outbound::ConnAck(ConnectResult::BadClientId))
                .await;
            return None;
        }
        self.client_id = client_id;
        self.policies = self.shared.registry.policies_of(&self.principal);
        self.thing_name = self
            .shared
            .registry
            .thing(&self.client_id)
            .filter(|t| t.principals.contains(&self.principal))
            .map(|t| t.name);
        if !self.allowed(Action::Connect, &self.client_id.clone()) {
            let _ = self
                .send(Outbound::ConnAck(ConnectResult::NotAuthorized))
                .await;
            return None;
        }
        self.control = Some(control.clone());
        let conn_id = self.shared.claim_client_id(&self.client_id, control);
        if self
            .send(Outbound::ConnAck(ConnectResult::Accepted))
            .await
            .is_err()
        {
            self.shared.release_client_id(&self.client_id, conn_id);
            return None;
        }
        Some((conn_id, effective_keep_alive(keep_alive_s)))
    }

    fn allowed(&self, action: Action, name: &str) -> bool {
        let vars = Variables {
            client_id: &self.client_id,
            thing_name: self.thing_name.as_deref(),
        };
        policy::is_allowed(&self.policies, action, name, &vars)
    }

    async fn session(
        &mut self,
        control: &mut mpsc::Receiver<Control>,
        keep_alive: Duration,
    ) -> Close {
        let grace = keep_alive + keep_alive / 2;
        let mut deadline = Instant::now() + grace;
        let shutdown = self.shared.shutdown.clone();
        loop {
            // Drain every whole packet already buffered.
            loop {
                let max = self.max_packet();
                match codec::read(self.protocol, &mut self.rbuf, max) {
                    Ok(packet) => {
                        deadline = Instant::now() + grace;
                        if let Err(close) = self.on_packet(packet).await {
                            return close;
                        }
                    }
                    Err(ReadError::Incomplete) => break,
                    Err(e) => return Close::Protocol(e.to_string()),
                }
            }
            tokio::select! {
                r = self.io.read_buf(&mut self.rbuf) => match r {
                    Ok(0) => return Close::PeerClosed,
                    Ok(_) => {}
                    Err(e) => return Close::Io(e.to_string()),
                },
                msg = control.recv() => match msg {
                    Some(Control::Kick) | None => return Close::Kicked,
                    Some(Control::Reply { topic, payload }) => {
                        if let Err(c) = self.deliver(topic, payload, None).await { return c; }
                    }
                    Some(Control::Deliver { topic, payload, qos }) => {
                        if let Err(c) = self.deliver(topic, payload, Some(qos)).await { return c; }
                    }
                },
                _ = tokio::time::sleep_until(deadline) => return Close::KeepAliveTimeout,
                _ = shutdown.wait() => return Close::Shutdown,
            }
        }
    }

    async fn on_packet(&mut self, packet: Inbound) -> Result<(), Close> {
        match packet {
            Inbound::Publish {
                topic,
                qos,
                pkid,
                payload,
                ..
            } => self.on_publish(topic, qos, pkid, payload).await,
            Inbound::Subscribe { pkid, filters } => self.on_subscribe(pkid, filters).await,
            Inbound::Unsubscribe { pkid, filters } => {
                self.subscriptions.retain(|(f, _)| !filters.contains(f));
                self.send(Outbound::UnsubAck { pkid }).await
            }
            Inbound::PubAck { .. } => Ok(()),
            Inbound::PingReq => self.send(Outbound::PingResp).await,
            Inbound::Disconnect => Err(Close::ClientDisconnect),
            Inbound::Connect { .. } => Err(Close::Protocol("second CONNECT".into())),
            Inbound::Unexpected(what) => Err(Close::Protocol(format!("unexpected {what}"))),
        }
    }

    async fn on_subscribe(&mut self, pkid: u16, filters: Vec<(String, u8)>) -> Result<(), Close> {
        // AWS does not support QoS 2 and sends no SUBACK when it is requested (reference §2).
        if filters.iter().any(|(_, q)| *q > 1) {
            return Ok(());
        }
        let mut granted = Vec::with_capacity(filters.len());
        for (filter, qos) in filters {
            if !topic::valid_filter(&filter) {
                granted.push(None);
                continue;
            }
            if !self.allowed(Action::Subscribe, &filter) {
                // MQTT 3.1.1: a policy violation closes the connection (reference §6).
                return Err(Close::NotAuthorized(format!("SUBSCRIBE {filter}")));
            }
            self.subscriptions.retain(|(f, _)| *f != filter);
            self.subscriptions.push((filter, qos));
            granted.push(Some(qos));
        }
        self.send(Outbound::SubAck { pkid, granted }).await
    }

    async fn on_publish(
        &mut self,
        topic: String,
        qos: u8,
        pkid: u16,
        payload: Bytes,
    ) -> Result<(), Close> {
        if !topic::valid_topic_name(&topic) {
            return Err(Close::Protocol(format!("invalid topic name {topic:?}")));
        }
        // AWS does not support QoS 2: no PUBACK, and the message is not processed.
        if qos > 1 {
            return Ok(());
        }
        if !self.allowed(Action::Publish, &topic) {
            return Err(Close::NotAuthorized(format!("PUBLISH {topic}")));
        }
        match ReservedTopic::parse(&topic) {
            Some(ReservedTopic {
                api,
                format,
                reply: None,
            }) => {
                let req = ApiRequest {
                    api,
                    format,
                    payload,
                    client_id: self.client_id.clone(),
                    principal: self.principal.clone(),
                };
                let api = self.shared.api.clone();
                let control = self.control.clone();
                tokio::spawn(async move {
                    let reply = api.handle(req).await;
                    if let Some(control) = control {
                        let _ = control
                            .send(Control::Reply {
                                topic: reply.topic,
                                payload: reply.payload,
                            })
                            .await;
                    }
                });
            }
            // Devices do not publish on reply topics; such messages go nowhere.
            Some(_) => {}
            None => self.shared.fan_out(&topic, &payload, qos),
        }
        if qos == 1 {
            self.send(Outbound::PubAck { pkid }).await?;
        }
        Ok(())
    }

    /// Publishes to this client if a subscription matches (and `iot:Receive` allows it).
    /// `publish_qos` is `None` for API replies, which go out at the subscription's QoS.
    async fn deliver(
        &mut self,
        topic: String,
        payload: Bytes,
        publish_qos: Option<u8>,
    ) -> Result<(), Close> {
        let Some(sub_qos) = self
            .subscriptions
            .iter()
            .filter(|(f, _)| topic::matches(f, &topic))
            .map(|(_, q)| *q)
            .max()
        else {
            return Ok(());
        };
        if !self.allowed(Action::Receive, &topic) {
            return Ok(());
        }
        let qos = publish_qos.map_or(sub_qos, |q| q.min(sub_qos)).min(1);
        let pkid = if qos == 1 {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            self.next_pkid
        } else {
            0
        };
        self.send(Outbound::Publish {
            topic,
            qos,
            pkid,
            payload,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_clamped_like_aws() {
        assert_eq!(effective_keep_alive(0), Duration::from_secs(1200));
        assert_eq!(effective_keep_alive(5), Duration::from_secs(30));
        assert_eq!(effective_keep_alive(60), Duration::from_secs(60));
        assert_eq!(effective_keep_alive(5000), Duration::from_secs(1200));
    }
}
