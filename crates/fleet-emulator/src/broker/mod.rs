//! The emulator's MQTT broker: TLS listeners with client-certificate authentication (the
//! 8883-style one, and optionally a 443-style one that requires ALPN `x-amzn-mqtt-ca`), the
//! client table (one connection per client id), retained messages, shared subscriptions and
//! routing of fleet-provisioning requests.
//!
//! - `codec`: packets as the session logic sees them, encoded with rumqttc's codecs for
//!   MQTT 3.1.1 and MQTT 5.
//! - `connection`: one task per connection: CONNECT, SUBSCRIBE, PUBLISH, keep-alive, and
//!   how each version is told about a refusal.
//! - `limits`: AWS's broker limits, the `unlimited` and `aws` profiles, rate limiters.
//! - `session`: persistent sessions (subscriptions and queued QoS 1 messages kept for an
//!   hour after a non-clean disconnect).
//! - `topic`: topic and filter validation, matching and AWS's topic size limits.

pub(crate) mod codec;
mod connection;
pub(crate) mod limits;
pub(crate) mod session;
pub(crate) mod topic;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use self::codec::ForwardedProps;
pub(crate) use self::limits::BrokerLimits;
use self::limits::ConnectRate;
pub use self::limits::{BrokerLimitOverrides, BrokerProfile};
use super::api::ApiService;
use super::ca::CertificateAuthority;
use super::registry::Registry;
use crate::shutdown::Shutdown;

/// The ALPN protocol AWS IoT Core requires for MQTT with an X.509 client certificate on
/// port 443 (docs/aws-fleet-provisioning.md §7).
pub const ALPN_MQTT_CA: &[u8] = b"x-amzn-mqtt-ca";

/// Messages to a connection task from elsewhere in the broker.
#[derive(Debug)]
pub(crate) enum Control {
    /// An API reply: delivered only if this connection subscribed to its topic.
    Reply { topic: String, payload: Bytes },
    /// A normal publish from a client (connection `origin`), for subscribers.
    Deliver {
        topic: String,
        payload: Bytes,
        qos: u8,
        props: Option<Arc<ForwardedProps>>,
        origin: u64,
        /// The shared subscriptions this message goes to: (connection, `$share/...` filter)
        /// of the one member chosen in each matching group.
        shared: Option<Arc<Vec<(u64, String)>>>,
    },
    /// Another connection took over this client id.
    Kick,
}

struct ClientEntry {
    conn_id: u64,
    control: mpsc::Sender<Control>,
}

/// A retained message (AWS supports the RETAIN flag on non-reserved topics).
#[derive(Debug, Clone)]
pub(crate) struct Retained {
    pub payload: Bytes,
    pub qos: u8,
    pub props: Option<Arc<ForwardedProps>>,
    pub stored: Instant,
}

/// The members of one shared subscription (`$share/<ShareName>/<filter>`) and whose turn
/// is next.
#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<u64>,
    next: usize,
}

/// State shared by all connections.
pub(crate) struct BrokerShared {
    pub registry: Arc<Registry>,
    pub api: Arc<ApiService>,
    pub limits: BrokerLimits,
    pub shutdown: Shutdown,
    clients: Mutex<HashMap<String, ClientEntry>>,
    next_conn_id: AtomicU64,
    retained: Mutex<HashMap<String, Retained>>,
    /// Present when CONNECTs per client id are limited.
    connect_rate: Option<Mutex<ConnectRate>>,
    /// Persistent sessions.
    pub(crate) sessions: Mutex<session::Sessions>,
    /// Shared subscriptions by their `$share/...` filter.
    shared: Mutex<HashMap<String, SharedGroup>>,
}

impl BrokerShared {
    fn new(
        registry: Arc<Registry>,
        api: Arc<ApiService>,
        limits: BrokerLimits,
        shutdown: Shutdown,
    ) -> BrokerShared {
        let connect_rate = limits
            .connects_per_second_per_client_id
            .map(|r| Mutex::new(ConnectRate::new(r)));
        BrokerShared {
            registry,
            api,
            limits,
            shutdown,
            clients: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
            retained: Mutex::new(HashMap::new()),
            connect_rate,
            sessions: Mutex::new(session::Sessions::default()),
            shared: Mutex::new(HashMap::new()),
        }
    }

    /// Adds a connection to a shared subscription (once, however often it subscribes).
    fn join_shared(&self, filter: &str, conn_id: u64) {
        let mut groups = lock(&self.shared);
        let group = groups.entry(filter.to_string()).or_default();
        if !group.members.contains(&conn_id) {
            group.members.push(conn_id);
        }
    }

    /// Removes a connection from a shared subscription; an empty group goes.
    fn leave_shared(&self, filter: &str, conn_id: u64) {
        let mut groups = lock(&self.shared);
        if let Some(group) = groups.get_mut(filter) {
            group.members.retain(|m| *m != conn_id);
            if group.members.is_empty() {
                groups.remove(filter);
            }
        }
    }

    /// For each shared subscription whose filter matches `topic`, the one member that gets
    /// the message. AWS sends each message to one member "in a random manner" (AWS IoT blog
    /// on shared subscriptions); the emulator takes the members in turn (a choice, so that
    /// tests can count).
    fn choose_shared(&self, topic: &str) -> Vec<(u64, String)> {
        let mut groups = lock(&self.shared);
        let mut chosen = Vec::new();
        for (filter, group) in groups.iter_mut() {
            let matching =
                topic::shared_parts(filter).is_some_and(|(_, f)| topic::matches(f, topic));
            if matching && !group.members.is_empty() {
                let member = group.members[group.next % group.members.len()];
                group.next = group.next.wrapping_add(1);
                chosen.push((member, filter.clone()));
            }
        }
        chosen
    }

    /// Registers a connection under its client id and returns its connection id; the
    /// previous holder is kicked (AWS: a duplicate client id disconnects the older
    /// connection, docs/aws-fleet-provisioning.md §5.2).
    fn claim_client_id(&self, client_id: &str, control: mpsc::Sender<Control>) -> u64 {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let old =
            lock(&self.clients).insert(client_id.to_string(), ClientEntry { conn_id, control });
        if let Some(old) = old {
            let _ = old.control.try_send(Control::Kick);
        }
        conn_id
    }

    fn release_client_id(&self, client_id: &str, conn_id: u64) {
        let mut clients = lock(&self.clients);
        if clients.get(client_id).is_some_and(|e| e.conn_id == conn_id) {
            clients.remove(client_id);
        }
    }

    /// Records a CONNECT for `client_id`; false when it exceeds the per-client-id rate.
    fn admit_connect(&self, client_id: &str) -> bool {
        match &self.connect_rate {
            None => true,
            Some(rate) => lock(rate).admit(client_id, Instant::now()),
        }
    }

    /// Offers a normal publish to every connection; each checks its own subscriptions.
    fn fan_out(
        &self,
        topic: &str,
        payload: &Bytes,
        qos: u8,
        props: &Option<Arc<ForwardedProps>>,
        origin: u64,
    ) {
        lock(&self.sessions).queue(
            &session::Queued {
                topic: topic.to_string(),
                payload: payload.clone(),
                qos,
                props: props.clone(),
            },
            Instant::now(),
        );
        let shared = self.choose_shared(topic);
        let shared = (!shared.is_empty()).then(|| Arc::new(shared));
        let clients = lock(&self.clients);
        for entry in clients.values() {
            // A full queue drops the message, as AWS drops beyond its per-connection limits.
            let _ = entry.control.try_send(Control::Deliver {
                topic: topic.to_string(),
                payload: payload.clone(),
                qos,
                props: props.clone(),
                origin,
                shared: shared.clone(),
            });
        }
    }

    /// Stores (or, with an empty payload, deletes) the retained message of `topic`.
    fn retain(&self, topic: &str, payload: &Bytes, qos: u8, props: &Option<Arc<ForwardedProps>>) {
        let mut retained = lock(&self.retained);
        if payload.is_empty() {
            retained.remove(topic);
        } else {
            retained.insert(
                topic.to_string(),
                Retained {
                    payload: payload.clone(),
                    qos,
                    props: props.clone(),
                    stored: Instant::now(),
                },
            );
        }
    }

    fn retained(&self, topic: &str) -> Option<Retained> {
        lock(&self.retained).get(topic).cloned()
    }

    /// Number of connected clients.
    pub(crate) fn connected(&self) -> usize {
        lock(&self.clients).len()
    }
}

/// Locks a mutex, recovering it if a thread panicked while holding it (the maps stay valid).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Builds the TLS server configuration: the emulator's server certificate, and client
/// certificates required and verified against the emulator CA.
pub(crate) fn server_tls_config(
    ca: &CertificateAuthority,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_der().clone())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(ca.server_chain(), ca.server_key())
}

/// A listen address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub(crate) struct BindError {
    pub addr: String,
    pub source: std::io::Error,
}

/// A running broker.
pub(crate) struct Broker {
    pub(crate) shared: Arc<BrokerShared>,
    addr: SocketAddr,
    alpn_addr: Option<SocketAddr>,
}

impl Broker {
    /// Binds `listen` (and `alpn_listen`, whose clients must negotiate ALPN
    /// `x-amzn-mqtt-ca`) and accepts connections until `shutdown` triggers. Both listeners
    /// serve the same broker.
    pub(crate) async fn start(
        listen: &str,
        alpn_listen: Option<&str>,
        tls: rustls::ServerConfig,
        registry: Arc<Registry>,
        api: Arc<ApiService>,
        limits: BrokerLimits,
        shutdown: Shutdown,
    ) -> Result<Broker, BindError> {
        let (listener, addr) = bind(listen).await?;
        let alpn = match alpn_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let shared = Arc::new(BrokerShared::new(registry, api, limits, shutdown));
        let alpn_addr = alpn.as_ref().map(|(_, a)| *a);
        if let Some((alpn_listener, _)) = alpn {
            let mut alpn_tls = tls.clone();
            alpn_tls.alpn_protocols = vec![ALPN_MQTT_CA.to_vec()];
            let acceptor = TlsAcceptor::from(Arc::new(alpn_tls));
            tokio::spawn(accept_loop(alpn_listener, acceptor, shared.clone(), true));
        }
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        tokio::spawn(accept_loop(listener, acceptor, shared.clone(), false));
        Ok(Broker {
            shared,
            addr,
            alpn_addr,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the listener that requires ALPN `x-amzn-mqtt-ca`, if configured.
    pub(crate) fn alpn_addr(&self) -> Option<SocketAddr> {
        self.alpn_addr
    }

    pub(crate) fn connected_clients(&self) -> usize {
        self.shared.connected()
    }
}

/// Binds a listener with `SO_REUSEADDR`, so an emulator killed a moment ago can listen on its
/// port again at once: the kernel keeps the killed process's connections on that port (in
/// `FIN_WAIT`/`TIME_WAIT`) for up to a minute, and without the option they block the bind.
async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), BindError> {
    let err = |source| BindError {
        addr: addr.to_string(),
        source,
    };
    let mut last = None;
    for candidate in tokio::net::lookup_host(addr).await.map_err(err)? {
        let socket = if candidate.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(err)?;
        socket.set_reuseaddr(true).map_err(err)?;
        match socket.bind(candidate).and_then(|()| socket.listen(1024)) {
            Ok(listener) => {
                let local = listener.local_addr().map_err(err)?;
                return Ok((listener, local));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    })))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<BrokerShared>,
    require_alpn: bool,
) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.wait() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    connection::serve(socket, peer, acceptor, shared, require_alpn).await;
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: keep serving the others.
                tracing::warn!(error = %e, "emulator: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
