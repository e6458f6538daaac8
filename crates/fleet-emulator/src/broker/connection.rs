//! One client connection: TLS handshake (and ALPN check on the 443-style listener) and
//! principal lookup, CONNECT, then packets until the client leaves, breaks a rule, goes silent
//! past 1.5 × keep-alive, is taken over, or the broker shuts down.
//!
//! The session logic is the same for MQTT 3.1.1 and MQTT 5; they differ in how a refusal
//! reaches the client (docs/aws-fleet-provisioning.md §6):
//! - a request the client was not allowed to make (policy, AWS topic limits, RETAIN on a
//!   reserved topic) closes a 3.1.1 connection; MQTT 5 gets a PUBACK/SUBACK reason code and
//!   keeps the connection;
//! - a fatal error (malformed packet, packet too large, keep-alive timeout, take-over,
//!   shutdown) closes both; MQTT 5 first gets a DISCONNECT with the reason code.
//!
//! QoS 2 is not supported, as on AWS: a PUBLISH or SUBSCRIBE asking for it gets no PUBACK or
//! SUBACK and is not processed (docs/aws-fleet-provisioning.md §2), on both versions.
//!
//! Shared subscriptions (`$share/<name>/<filter>`, which AWS supports on both versions): the
//! broker picks one member of each matching group per message; a connection delivers on a
//! shared subscription only when it is the member picked. It joins a group when the
//! subscription is granted (or its persistent session resumes) and leaves on UNSUBSCRIBE or
//! when it ends.
//!
//! Fleet-provisioning requests are handed to the API service on their own task; the reply
//! comes back on this connection's control channel and is published only to this connection,
//! only if it subscribed to the reply topic (docs/aws-fleet-provisioning.md §2).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;

use super::codec::{
    self, ConnAckProps, Connect, ConnectCode, DisconnectCode, ForwardedProps, Inbound, Outbound,
    Protocol, PubAckCode, ReadError, SubCode, SubFilter, UnsubCode,
};
use super::session::{self, StoredSubscription};
use super::topic;
use super::{ALPN_MQTT_CA, BrokerShared, Control};
use crate::api::ApiRequest;
use crate::ca::certificate_id;
use crate::fleet::ReservedTopic;
use crate::policy::{self, Action, CertFacts, Facts, PolicyDocument, ThingFacts};
use crate::registry::CertStatus;
use crate::token_bucket::TokenBucket;

/// The most policy decisions a connection keeps (see `Connection::decisions`).
const DECISIONS: usize = 64;

/// How long the broker waits to hand a closing client its last packets.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);

/// Queued outbound bytes that are written without waiting for the end of a batch.
const FLUSH_AT: usize = 64 * 1024;

pub(super) async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<BrokerShared>,
    require_alpn: bool,
) {
    let deadline = Instant::now() + shared.limits.connect_timeout();
    let mut tls = match timeout_at(deadline, acceptor.accept(socket)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "emulator: TLS handshake refused");
            return;
        }
        Err(_) => return,
    };
    // AWS port 443 with a client certificate requires ALPN `x-amzn-mqtt-ca`
    // (docs/aws-fleet-provisioning.md §7). A client offering other protocols fails the handshake
    // (rustls: no_application_protocol); one offering none completes it and is closed here.
    if require_alpn && tls.get_ref().1.alpn_protocol() != Some(ALPN_MQTT_CA) {
        tracing::debug!(%peer, "emulator: ALPN x-amzn-mqtt-ca not negotiated; closing");
        let _ = timeout(DISCONNECT_GRACE, tls.shutdown()).await;
        return;
    }
    let Some(peer_cert) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
    else {
        return;
    };
    let principal = certificate_id(&peer_cert);
    // Only registered, ACTIVE certificates may connect.
    let active = shared
        .registry
        .certificate(&principal)
        .ok()
        .flatten()
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
        conn_id: 0,
        policies: Vec::new(),
        facts: Facts {
            source_ip: Some(peer.ip()),
            certificate: CertFacts::from_der(&peer_cert),
            ..Facts::default()
        },
        decisions: Vec::new(),
        subscriptions: Vec::new(),
        next_pkid: 0,
        control: None,
        topic_aliases: Vec::new(),
        client_max_packet: None,
        inbound_rate: None,
        outbound_rate: None,
        api_requests: 0,
        persistent: false,
    };
    conn.run(deadline).await;
}

/// Where a delivered message comes from: the publishing connection, and the members the
/// broker chose for the shared subscriptions it matches.
struct Origin {
    conn_id: u64,
    shared: Option<Arc<Vec<(u64, String)>>>,
}

/// One subscription of a connection (`filter` as subscribed, `$share/...` included).
struct Subscription {
    filter: String,
    /// Granted QoS (0 or 1).
    qos: u8,
    /// MQTT 5 No Local.
    no_local: bool,
}

struct Connection<S> {
    io: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    shared: Arc<BrokerShared>,
    principal: String,
    protocol: Protocol,
    client_id: String,
    /// This connection's id in the client table (for MQTT 5 No Local).
    conn_id: u64,
    policies: Vec<PolicyDocument>,
    /// What the policies may ask about this connection (client id, address, certificate,
    /// attached thing): all fixed once it is connected.
    facts: Facts,
    /// Policy decisions already made on this connection, by action and name: its policies
    /// and everything their variables and conditions read (`facts`: the thing and its
    /// attributes are read at CONNECT) are fixed once it is connected, and a client repeats
    /// the same few topics, so each is evaluated once (at most `DECISIONS` kept). No
    /// condition key the emulator evaluates changes during a connection (time keys such as
    /// `aws:CurrentTime` are refused when a policy is loaded).
    decisions: Vec<(Action, String, bool)>,
    subscriptions: Vec<Subscription>,
    next_pkid: u16,
    /// This connection's own control sender, handed to API tasks for their reply.
    control: Option<mpsc::Sender<Control>>,
    /// MQTT 5 topic aliases set by the client; index = alias − 1.
    topic_aliases: Vec<Option<String>>,
    /// MQTT 5 Maximum Packet Size of the client: larger packets to it are discarded.
    client_max_packet: Option<usize>,
    inbound_rate: Option<TokenBucket>,
    outbound_rate: Option<TokenBucket>,
    /// Fleet-provisioning requests received on this connection (for fault injection).
    api_requests: u64,
    /// The session outlives the connection (its subscriptions are saved as they change).
    persistent: bool,
}

impl<S> Connection<S> {
    /// Takes this connection out of the groups of its shared subscriptions (it is ending).
    fn leave_shared_groups(&self) {
        for s in &self.subscriptions {
            if topic::shared_parts(&s.filter).is_some() {
                self.shared.leave_shared(&s.filter, self.conn_id);
            }
        }
    }

    /// Saves the subscriptions of a persistent session as they change.
    fn save_session(&self) {
        if self.persistent {
            let subs = self
                .subscriptions
                .iter()
                .map(|s| StoredSubscription {
                    filter: s.filter.clone(),
                    qos: s.qos,
                    no_local: s.no_local,
                })
                .collect();
            lock_sessions(&self.shared).save(&self.client_id, self.conn_id, subs);
        }
    }
}

fn lock_sessions(shared: &BrokerShared) -> std::sync::MutexGuard<'_, session::Sessions> {
    shared.sessions.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a connection ends.
#[derive(Debug)]
enum Close {
    ClientDisconnect,
    PeerClosed,
    Io(String),
    Malformed(String),
    Protocol(String),
    TopicAlias(String),
    TooLarge(usize),
    NotAuthorized(String),
    /// A 3.1.1 request over one of AWS's quotas (MQTT 5 gets a reason code instead).
    Quota(String),
    /// A 3.1.1 request AWS refuses (MQTT 5 gets a reason code instead).
    Refused(String),
    KeepAliveTimeout,
    Kicked,
    Shutdown,
    Encode(String),
    /// Fault injection: the connection is dropped (without a DISCONNECT, as a network would).
    InjectedDrop(u64),
}

impl Close {
    /// The reason an MQTT 5 client is given in the server's DISCONNECT, if it gets one.
    fn disconnect_code(&self) -> Option<DisconnectCode> {
        Some(match self {
            Close::ClientDisconnect | Close::PeerClosed | Close::Io(_) | Close::InjectedDrop(_) => {
                return None;
            }
            Close::Malformed(_) => DisconnectCode::MalformedPacket,
            Close::Protocol(_) => DisconnectCode::ProtocolError,
            Close::TopicAlias(_) => DisconnectCode::TopicAliasInvalid,
            Close::TooLarge(_) => DisconnectCode::PacketTooLarge,
            Close::NotAuthorized(_) => DisconnectCode::NotAuthorized,
            Close::Quota(_) => DisconnectCode::QuotaExceeded,
            Close::Refused(_) | Close::Encode(_) => DisconnectCode::ImplementationSpecific,
            Close::KeepAliveTimeout => DisconnectCode::KeepAliveTimeout,
            Close::Kicked => DisconnectCode::SessionTakenOver,
            Close::Shutdown => DisconnectCode::ServerShuttingDown,
        })
    }
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::ClientDisconnect => write!(f, "client sent DISCONNECT"),
            Close::PeerClosed => write!(f, "client closed the connection"),
            Close::Io(e) => write!(f, "I/O error: {e}"),
            Close::Malformed(e) => write!(f, "malformed packet: {e}"),
            Close::Protocol(e) => write!(f, "protocol error: {e}"),
            Close::TopicAlias(e) => write!(f, "invalid topic alias: {e}"),
            Close::TooLarge(n) => write!(f, "packet or payload of {n} bytes over the limit"),
            Close::NotAuthorized(what) => write!(f, "not authorized: {what}"),
            Close::Quota(what) => write!(f, "quota exceeded: {what}"),
            Close::Refused(what) => write!(f, "refused: {what}"),
            Close::KeepAliveTimeout => write!(f, "no packet within 1.5 × keep-alive"),
            Close::Kicked => write!(f, "another connection took over the client id"),
            Close::Shutdown => write!(f, "emulator shutting down"),
            Close::Encode(e) => write!(f, "{e}"),
            Close::InjectedDrop(n) => write!(f, "dropped after {n} API requests (fault injection)"),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn max_packet(&self) -> usize {
        self.shared.limits.max_packet_bytes()
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
        let Some(keep_alive) = self.connect(first, control_tx).await else {
            self.close_gracefully(None).await;
            return;
        };
        let close = self.session(&mut control_rx, keep_alive).await;
        tracing::debug!(client = %self.client_id, %close, "emulator: connection closed");
        self.leave_shared_groups();
        lock_sessions(&self.shared).close(&self.client_id, self.conn_id, std::time::Instant::now());
        self.shared.release_client_id(&self.client_id, self.conn_id);
        if !matches!(close, Close::Io(_) | Close::PeerClosed) {
            self.close_gracefully(close.disconnect_code()).await;
        }
    }

    /// Sends what is queued (and an MQTT 5 DISCONNECT with `code`), then closes the TLS
    /// stream. Best effort, bounded in time: the client may have stopped reading.
    async fn close_gracefully(&mut self, code: Option<DisconnectCode>) {
        let _ = timeout(DISCONNECT_GRACE, async {
            if let Some(code) = code {
                let _ = self.send(Outbound::Disconnect(code)).await;
            }
            if self.flush_out().await.is_ok() {
                let _ = self.io.shutdown().await;
            }
        })
        .await;
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
                Err(ReadError::UnsupportedVersion(level)) => {
                    // MQTT 3.1.1 §3.1.2.2: answer CONNACK 0x01, then close.
                    let _ = self
                        .send(Outbound::ConnAck {
                            code: ConnectCode::UnsupportedProtocolVersion,
                            session_present: false,
                            props: None,
                        })
                        .await;
                    self.close_gracefully(None).await;
                    return Err(Close::Protocol(format!("MQTT protocol level {level}")));
                }
                Err(ReadError::TooLarge(n)) => return Err(Close::TooLarge(n)),
                Err(ReadError::Malformed(e)) => return Err(Close::Malformed(e)),
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

    /// Queues one packet for the client; it is written by the next [`Self::flush_out`] (the
    /// session flushes before it waits for anything, so acks for a batch of packets go out
    /// together). A packet larger than the client's MQTT 5 Maximum Packet Size is discarded,
    /// as MQTT 5 §3.1.2.11.4 requires.
    async fn send(&mut self, packet: Outbound) -> Result<(), Close> {
        let start = self.wbuf.len();
        codec::write(self.protocol, packet, &mut self.wbuf)
            .map_err(|e| Close::Encode(e.to_string()))?;
        if self
            .client_max_packet
            .is_some_and(|m| self.wbuf.len() - start > m)
        {
            self.wbuf.truncate(start);
        }
        if self.wbuf.len() >= FLUSH_AT {
            self.flush_out().await?;
        }
        Ok(())
    }

    /// Writes every queued packet and flushes the TLS stream (tokio-rustls may otherwise keep
    /// written records buffered until the next write).
    async fn flush_out(&mut self) -> Result<(), Close> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let r = self.io.write_all(&self.wbuf).await;
        self.wbuf.clear();
        r.map_err(|e| Close::Io(e.to_string()))?;
        self.io.flush().await.map_err(|e| Close::Io(e.to_string()))
    }

    /// Refuses a CONNECT with `code` (no CONNACK on 3.1.1 when `code` has no 3.1.1 form).
    async fn refuse(&mut self, code: ConnectCode, why: &str) {
        tracing::debug!(client = %self.client_id, ?code, why, "emulator: CONNECT refused");
        let _ = self
            .send(Outbound::ConnAck {
                code,
                session_present: false,
                props: None,
            })
            .await;
    }

    /// Handles CONNECT; returns the keep-alive, or `None` if refused.
    async fn connect(
        &mut self,
        first: Inbound,
        control: mpsc::Sender<Control>,
    ) -> Option<Duration> {
        let Inbound::Connect(c) = first else {
            return None;
        };
        let shared = self.shared.clone();
        let limits = &shared.limits;
        let Connect {
            client_id,
            keep_alive_s,
            will_payload_len,
            session_expiry_s,
            max_packet_size,
            auth_method,
            clean_start,
            ..
        } = c;
        // AWS: a `$` prefix is reserved and the id is at most 128 bytes (aws profile);
        // an empty id is refused.
        if client_id.is_empty()
            || client_id.starts_with('$')
            || limits
                .max_client_id_bytes
                .is_some_and(|m| client_id.len() > m)
        {
            self.refuse(ConnectCode::ClientIdNotValid, "client id")
                .await;
            return None;
        }
        self.client_id = client_id;
        // AWS authenticates by certificate (or custom authorizer); there is no MQTT 5
        // enhanced authentication, so an Authentication Method is refused (MQTT 5 §3.1.2.11.9).
        if auth_method.is_some() {
            self.refuse(
                ConnectCode::BadAuthenticationMethod,
                "authentication method",
            )
            .await;
            return None;
        }
        // AWS rejects "publish and connect requests larger than" the payload limit.
        if will_payload_len.is_some_and(|n| n > limits.max_payload_bytes) {
            self.refuse(ConnectCode::PacketTooLarge, "will payload")
                .await;
            return None;
        }
        if !shared.admit_connect(&self.client_id) {
            self.refuse(
                ConnectCode::ConnectionRateExceeded,
                "CONNECTs per second per client id",
            )
            .await;
            return None;
        }
        // A registry that cannot be read (logged there) allows nothing, and so does a stored
        // document that no longer parses (every path that stores one checks it first).
        self.policies = shared
            .registry
            .policies_of(&self.principal)
            .unwrap_or_default()
            .iter()
            .map(PolicyDocument::parse)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| {
                tracing::error!(certificate = %self.principal, error = %e,
                    "emulator: an attached policy does not parse; the connection is allowed nothing");
                Vec::new()
            });
        self.decisions.clear();
        // Thing policy variables: the thing named by the client id, if this certificate is
        // attached to it (AWS: the client id "must exactly match the thing name"). Read once,
        // at CONNECT: a change to the thing applies from the next connection (docs/emulator.md;
        // AWS documents no propagation time for thing changes, and says policy changes "can
        // take anywhere between 6 and 8 minutes to become effective").
        self.facts.client_id = self.client_id.clone();
        self.facts.thing = shared
            .registry
            .thing(&self.client_id)
            .ok()
            .flatten()
            .filter(|t| t.principals.contains(&self.principal))
            .map(|t| ThingFacts {
                name: t.name,
                type_name: t.thing_type,
                attributes: t.attributes,
            });
        let client_id = self.client_id.clone();
        if !self.allowed(Action::Connect, &client_id) {
            self.refuse(ConnectCode::NotAuthorized, "iot:Connect").await;
            return None;
        }
        self.client_max_packet = max_packet_size.map(|m| m as usize);
        let now = std::time::Instant::now();
        self.inbound_rate = limits
            .publishes_per_second
            .map(|r| TokenBucket::per_second(r, now));
        self.outbound_rate = limits
            .publishes_per_second
            .map(|r| TokenBucket::per_second(r, now));
        self.control = Some(control.clone());
        self.conn_id = shared.claim_client_id(&self.client_id, control);
        // Persistent session: MQTT 3.1.1 cleanSession = 0 keeps it for AWS's hour; MQTT 5
        // keeps it for the Session Expiry Interval asked for, at most an hour.
        let (persistent, expiry) = match self.protocol {
            Protocol::V311 => (!clean_start, session::MAX_EXPIRY),
            Protocol::V5 => (
                session_expiry_s > 0,
                Duration::from_secs(u64::from(session_expiry_s)).min(session::MAX_EXPIRY),
            ),
        };
        self.persistent = persistent;
        let resumed = lock_sessions(&shared).open(
            &self.client_id,
            self.conn_id,
            clean_start,
            persistent,
            expiry,
            std::time::Instant::now(),
        );
        let session_present = resumed.is_some();
        if let Some(r) = &resumed {
            self.subscriptions = r
                .subscriptions
                .iter()
                .map(|s| Subscription {
                    filter: s.filter.clone(),
                    qos: s.qos,
                    no_local: s.no_local,
                })
                .collect();
            // A resumed session's shared subscriptions take this connection into their groups.
            for s in &self.subscriptions {
                if topic::shared_parts(&s.filter).is_some() {
                    shared.join_shared(&s.filter, self.conn_id);
                }
            }
        }
        let granted = limits.effective_keep_alive(keep_alive_s);
        let props = (self.protocol == Protocol::V5).then(|| {
            Box::new(ConnAckProps {
                server_keep_alive: (granted != keep_alive_s).then_some(granted),
                receive_maximum: limits.receive_maximum,
                maximum_packet_size: u32::try_from(limits.max_packet_bytes()).unwrap_or(u32::MAX),
                topic_alias_maximum: limits.topic_alias_maximum,
                // An interval above AWS's hour is cut to the hour.
                session_expiry_s: (u64::from(session_expiry_s) > session::MAX_EXPIRY.as_secs())
                    .then_some(session::MAX_EXPIRY.as_secs() as u32),
            })
        });
        let accepted = Outbound::ConnAck {
            code: ConnectCode::Accepted,
            session_present,
            props,
        };
        if self.send(accepted).await.is_err() || self.flush_out().await.is_err() {
            self.leave_shared_groups();
            lock_sessions(&shared).close(&self.client_id, self.conn_id, std::time::Instant::now());
            shared.release_client_id(&self.client_id, self.conn_id);
            return None;
        }
        // What was published to the session while the client was away.
        for q in resumed.map(|r| r.queued).unwrap_or_default() {
            if self
                .deliver(q.topic, q.payload, Some(q.qos), q.props, None)
                .await
                .is_err()
            {
                break;
            }
        }
        Some(Duration::from_secs(u64::from(granted)))
    }

    fn allowed(&mut self, action: Action, name: &str) -> bool {
        if let Some(&(_, _, decided)) = self
            .decisions
            .iter()
            .find(|(a, n, _)| *a == action && n == name)
        {
            return decided;
        }
        let decided = policy::is_allowed(&self.policies, action, name, &self.facts);
        if self.decisions.len() >= DECISIONS {
            self.decisions.clear();
        }
        self.decisions.push((action, name.to_string(), decided));
        decided
    }

    /// Serves packets and control messages until the connection ends. The keep-alive timer
    /// restarts on every packet from the client (MQTT's rule; AWS's quota page lists PUBLISH,
    /// SUBSCRIBE, PINGREQ and PUBACK, and is silent on UNSUBSCRIBE) and fires at 1.5 × the
    /// granted keep-alive.
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
                    Err(ReadError::TooLarge(n)) => return Close::TooLarge(n),
                    Err(ReadError::Malformed(e)) => return Close::Malformed(e),
                    Err(ReadError::UnsupportedVersion(n)) => {
                        return Close::Protocol(format!("protocol level {n}"));
                    }
                }
            }
            // Everything the batch produced goes out before waiting.
            if let Err(close) = self.flush_out().await {
                return close;
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
                        if let Err(c) = self.deliver(topic, payload, None, None, None).await {
                            return c;
                        }
                    }
                    Some(Control::Deliver { topic, payload, qos, props, origin, shared }) => {
                        let from = Some(Origin { conn_id: origin, shared });
                        if let Err(c) = self.deliver(topic, payload, Some(qos), props, from).await {
                            return c;
                        }
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
                retain,
                payload,
                topic_alias,
                props,
            } => {
                let topic = self.resolve_alias(topic, topic_alias)?;
                self.on_publish(topic, qos, pkid, retain, payload, props)
                    .await
            }
            Inbound::Subscribe {
                pkid,
                filters,
                has_subscription_id,
            } => self.on_subscribe(pkid, filters, has_subscription_id).await,
            Inbound::Unsubscribe { pkid, filters } => {
                let codes = filters
                    .iter()
                    .map(|f| {
                        let before = self.subscriptions.len();
                        self.subscriptions.retain(|s| s.filter != *f);
                        if self.subscriptions.len() < before {
                            if topic::shared_parts(f).is_some() {
                                self.shared.leave_shared(f, self.conn_id);
                            }
                            UnsubCode::Success
                        } else {
                            UnsubCode::NoSubscriptionExisted
                        }
                    })
                    .collect();
                self.save_session();
                self.send(Outbound::UnsubAck { pkid, codes }).await
            }
            Inbound::PubAck { .. } => Ok(()),
            Inbound::PingReq => self.send(Outbound::PingResp).await,
            Inbound::Disconnect => Err(Close::ClientDisconnect),
            Inbound::Connect(_) => Err(Close::Protocol("second CONNECT".into())),
            Inbound::Unexpected(what) => Err(Close::Protocol(format!("unexpected {what}"))),
        }
    }

    /// Applies an MQTT 5 topic alias: sets it when the PUBLISH has a topic, uses it when the
    /// topic is empty.
    fn resolve_alias(&mut self, topic: String, alias: Option<u16>) -> Result<String, Close> {
        let Some(alias) = alias else {
            return Ok(topic);
        };
        let max = self.shared.limits.topic_alias_maximum;
        if alias == 0 || alias > max {
            return Err(Close::TopicAlias(format!(
                "alias {alias} outside 1..={max}"
            )));
        }
        let slot = usize::from(alias - 1);
        if self.topic_aliases.len() <= slot {
            self.topic_aliases.resize(slot + 1, None);
        }
        if topic.is_empty() {
            self.topic_aliases[slot]
                .clone()
                .ok_or_else(|| Close::Protocol(format!("topic alias {alias} was never set")))
        } else {
            self.topic_aliases[slot] = Some(topic.clone());
            Ok(topic)
        }
    }

    /// A PUBLISH the broker will not process. 3.1.1: `close_v311` closes the connection, or
    /// (if `None`) the message is dropped silently. MQTT 5: a QoS 1 PUBLISH gets PUBACK `code`
    /// and the connection stays; a QoS 0 one is dropped.
    async fn reject_publish(
        &mut self,
        qos: u8,
        pkid: u16,
        code: PubAckCode,
        close_v311: Option<Close>,
    ) -> Result<(), Close> {
        match self.protocol {
            Protocol::V311 => close_v311.map_or(Ok(()), Err),
            Protocol::V5 if qos == 1 => self.send(Outbound::PubAck { pkid, code }).await,
            Protocol::V5 => Ok(()),
        }
    }

    async fn on_publish(
        &mut self,
        topic: String,
        qos: u8,
        pkid: u16,
        retain: bool,
        payload: Bytes,
        props: Option<Arc<ForwardedProps>>,
    ) -> Result<(), Close> {
        if !topic::valid_topic_name(&topic) {
            return Err(Close::Protocol(format!("invalid topic name {topic:?}")));
        }
        let limits = &self.shared.limits;
        // AWS: payloads over 128 KB are rejected; 3.1.1 is closed (lifecycle CLIENT_ERROR),
        // MQTT 5 gets DISCONNECT 0x95.
        if payload.len() > limits.max_payload_bytes {
            return Err(Close::TooLarge(payload.len()));
        }
        // AWS does not support QoS 2: no PUBACK, and the message is not processed.
        if qos > 1 {
            return Ok(());
        }
        // AWS: publishes over the per-connection rate are discarded.
        if let Some(bucket) = &mut self.inbound_rate
            && !bucket.take(std::time::Instant::now())
        {
            return self
                .reject_publish(qos, pkid, PubAckCode::QuotaExceeded, None)
                .await;
        }
        if !topic::within_aws_limits(&topic, limits.max_topic_bytes, limits.max_topic_slashes) {
            let close = Close::Refused(format!("topic {topic:?} is over AWS's topic limits"));
            return self
                .reject_publish(qos, pkid, PubAckCode::TopicNameInvalid, Some(close))
                .await;
        }
        if !self.allowed(Action::Publish, &topic)
            || (retain && !self.allowed(Action::RetainPublish, &topic))
        {
            // MQTT 3.1.1: a policy violation closes the connection; MQTT 5: PUBACK 0x87
            // (docs/aws-fleet-provisioning.md §6).
            let close = Close::NotAuthorized(format!("PUBLISH {topic}"));
            return self
                .reject_publish(qos, pkid, PubAckCode::NotAuthorized, Some(close))
                .await;
        }
        // AWS: "You can't publish to a reserved topic with the RETAIN flag set."
        if retain && topic.starts_with('$') {
            let close = Close::Refused(format!("RETAIN on reserved topic {topic}"));
            return self
                .reject_publish(qos, pkid, PubAckCode::ImplementationSpecific, Some(close))
                .await;
        }
        match ReservedTopic::parse(&topic) {
            Some(ReservedTopic {
                api,
                format,
                reply: None,
            }) => {
                if let Some(limit) = self.shared.api.faults().drop_after()
                    && self.api_requests >= limit
                {
                    return Err(Close::InjectedDrop(self.api_requests));
                }
                self.api_requests += 1;
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
                    let Some(control) = control else { return };
                    let delivered = control
                        .send(Control::Reply {
                            topic: reply.topic.clone(),
                            payload: reply.payload.clone(),
                        })
                        .await;
                    // Fault injection: the same reply once more, later, on this connection
                    // only (a closed connection drops it, as its channel is gone).
                    if let (Ok(()), Some(after)) = (delivered, reply.duplicate_after) {
                        tokio::time::sleep(after).await;
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
            None => {
                if retain {
                    self.shared.retain(&topic, &payload, qos, &props);
                }
                self.shared
                    .fan_out(&topic, &payload, qos, &props, self.conn_id);
            }
        }
        if qos == 1 {
            self.send(Outbound::PubAck {
                pkid,
                code: PubAckCode::Success,
            })
            .await?;
        }
        Ok(())
    }

    async fn on_subscribe(
        &mut self,
        pkid: u16,
        filters: Vec<SubFilter>,
        has_subscription_id: bool,
    ) -> Result<(), Close> {
        // AWS does not support QoS 2 and sends no SUBACK when it is requested
        // (docs/aws-fleet-provisioning.md §2).
        if filters.iter().any(|f| f.qos > 1) {
            return Ok(());
        }
        let v5 = self.protocol == Protocol::V5;
        let n = filters.len();
        // AWS does not support MQTT 5 Subscription Identifiers (CONNACK says so); a SUBSCRIBE
        // carrying one is not accepted: SUBACK 0xA1 for every filter (MQTT 5 §3.9.3).
        if has_subscription_id {
            let codes = vec![SubCode::SubscriptionIdsNotSupported; n];
            return self.send(Outbound::SubAck { pkid, codes }).await;
        }
        let shared = self.shared.clone();
        let limits = &shared.limits;
        if let Some(max) = limits.max_filters_per_subscribe
            && n > max
        {
            if !v5 {
                return Err(Close::Quota(format!(
                    "{n} topic filters in one SUBSCRIBE (limit {max})"
                )));
            }
            let codes = vec![SubCode::QuotaExceeded; n];
            return self.send(Outbound::SubAck { pkid, codes }).await;
        }
        let mut codes = Vec::with_capacity(n);
        let mut over_quota = false;
        let mut retained_for: Vec<(String, u8)> = Vec::new();
        for f in filters {
            let is_shared = topic::shared_parts(&f.filter).is_some();
            // MQTT 5 §3.8.3.1: No Local on a shared subscription is a Protocol Error.
            if v5 && is_shared && f.no_local {
                return Err(Close::Protocol(format!(
                    "No Local on shared subscription {}",
                    f.filter
                )));
            }
            let code = if !topic::valid_filter(&f.filter)
                || !topic::within_aws_limits(
                    &f.filter,
                    limits.max_topic_bytes,
                    limits.max_topic_slashes,
                ) {
                SubCode::TopicFilterInvalid
            } else if !self.allowed(Action::Subscribe, &f.filter) {
                // MQTT 3.1.1: a policy violation closes the connection; MQTT 5: SUBACK 0x87
                // (docs/aws-fleet-provisioning.md §6).
                if !v5 {
                    return Err(Close::NotAuthorized(format!("SUBSCRIBE {}", f.filter)));
                }
                SubCode::NotAuthorized
            } else {
                // Retained messages go to exact ordinary filters only (AWS); never to a shared
                // subscription (MQTT 5 §4.8.2: none are sent when a shared one is made).
                let exact = !is_shared && !f.filter.contains(['+', '#']);
                let existing = self.subscriptions.iter().position(|s| s.filter == f.filter);
                let new_sub = Subscription {
                    filter: f.filter.clone(),
                    qos: f.qos,
                    no_local: f.no_local,
                };
                match existing {
                    Some(i) => {
                        self.subscriptions[i] = new_sub;
                        if is_shared {
                            shared.join_shared(&f.filter, self.conn_id);
                        }
                        // Retain Handling 0: retained messages on every subscribe.
                        if exact && f.retain_handling == 0 {
                            retained_for.push((f.filter, f.qos));
                        }
                        SubCode::Granted(f.qos)
                    }
                    None if limits
                        .max_subscriptions
                        .is_some_and(|m| self.subscriptions.len() >= m) =>
                    {
                        over_quota = true;
                        SubCode::QuotaExceeded
                    }
                    None => {
                        self.subscriptions.push(new_sub);
                        if is_shared {
                            shared.join_shared(&f.filter, self.conn_id);
                        }
                        // AWS sends a retained message on subscribe only to a filter that
                        // names its topic exactly (no wildcards).
                        if exact && f.retain_handling < 2 {
                            retained_for.push((f.filter, f.qos));
                        }
                        SubCode::Granted(f.qos)
                    }
                }
            };
            codes.push(code);
        }
        self.save_session();
        self.send(Outbound::SubAck { pkid, codes }).await?;
        if over_quota && !v5 {
            // AWS: subscriptions over the per-connection limit "may be rejected … and the
            // connection will be closed".
            return Err(Close::Quota("subscriptions per connection".into()));
        }
        for (topic, qos) in retained_for {
            self.deliver_retained(topic, qos).await?;
        }
        Ok(())
    }

    /// Sends the retained message of `topic`, if any, with the RETAIN flag set.
    async fn deliver_retained(&mut self, topic: String, granted_qos: u8) -> Result<(), Close> {
        let Some(r) = self.shared.retained(&topic) else {
            return Ok(());
        };
        if !self.allowed(Action::Receive, &topic) {
            return Ok(());
        }
        let mut props = r.props;
        // MQTT 5 §3.3.2.3.3: the expiry sent on is what remains; an expired message is not sent.
        if let Some(p) = &props
            && let Some(expiry) = p.message_expiry_interval
        {
            let elapsed = u32::try_from(r.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
            if elapsed >= expiry {
                return Ok(());
            }
            let mut adjusted = ForwardedProps::clone(p);
            adjusted.message_expiry_interval = Some(expiry - elapsed);
            props = Some(Arc::new(adjusted));
        }
        self.publish_out(topic, r.qos.min(granted_qos), true, r.payload, props)
            .await
    }

    /// Publishes to this client if a subscription matches (and `iot:Receive` allows it).
    /// `publish_qos` is `None` for API replies, which go out at the subscription's QoS;
    /// `origin` is the publishing connection (for MQTT 5 No Local) and the shared
    /// subscriptions the broker chose a member for: a shared subscription of this connection
    /// counts only when this connection is that member. API replies (`origin` `None`) go to
    /// ordinary subscriptions only.
    async fn deliver(
        &mut self,
        topic: String,
        payload: Bytes,
        publish_qos: Option<u8>,
        props: Option<Arc<ForwardedProps>>,
        origin: Option<Origin>,
    ) -> Result<(), Close> {
        let own = origin.as_ref().is_some_and(|o| o.conn_id == self.conn_id);
        let chosen = |filter: &str| {
            origin
                .as_ref()
                .and_then(|o| o.shared.as_deref())
                .is_some_and(|c| c.iter().any(|(m, f)| *m == self.conn_id && f == filter))
        };
        let Some(sub_qos) = self
            .subscriptions
            .iter()
            .filter(|s| match topic::shared_parts(&s.filter) {
                Some(_) => chosen(&s.filter),
                None => !(own && s.no_local) && topic::matches(&s.filter, &topic),
            })
            .map(|s| s.qos)
            .max()
        else {
            return Ok(());
        };
        if !self.allowed(Action::Receive, &topic) {
            return Ok(());
        }
        let qos = publish_qos.map_or(sub_qos, |q| q.min(sub_qos)).min(1);
        self.publish_out(topic, qos, false, payload, props).await
    }

    async fn publish_out(
        &mut self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Bytes,
        props: Option<Arc<ForwardedProps>>,
    ) -> Result<(), Close> {
        // AWS: outbound publishes over the per-connection rate are discarded.
        if let Some(bucket) = &mut self.outbound_rate
            && !bucket.take(std::time::Instant::now())
        {
            tracing::trace!(client = %self.client_id, %topic, "emulator: outbound publish over the rate; dropped");
            return Ok(());
        }
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
            retain,
            payload,
            props,
        })
        .await
    }
}
