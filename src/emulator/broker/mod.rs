//! The emulator's MQTT broker: TLS listener with client-certificate authentication, the
//! client table (one connection per client id) and routing of fleet-provisioning requests.
//!
//! - [`codec`]: packets as the session logic sees them, encoded with rumqttc's `mqttbytes`.
//! - [`connection`]: one task per connection: CONNECT, SUBSCRIBE, PUBLISH, keep-alive.
//! - [`topic`]: topic and filter validation and matching.

pub mod codec;
mod connection;
pub mod topic;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::api::ApiService;
use super::ca::CertificateAuthority;
use super::registry::Registry;
use crate::shutdown::Shutdown;

/// Limits the broker enforces (reference §5.2).
#[derive(Debug, Clone)]
pub struct BrokerLimits {
    /// Largest PUBLISH payload accepted (AWS: 128 KB).
    pub max_payload: usize,
    /// Time allowed for the TLS handshake and the CONNECT packet.
    pub connect_timeout: Duration,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        BrokerLimits {
            max_payload: 128 * 1024,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Messages to a connection task from elsewhere in the broker.
#[derive(Debug)]
pub(crate) enum Control {
    /// An API reply: delivered only if this connection subscribed to its topic.
    Reply { topic: String, payload: Bytes },
    /// A normal publish from another client, for subscribers.
    Deliver {
        topic: String,
        payload: Bytes,
        qos: u8,
    },
    /// Another connection took over this client id.
    Kick,
}

struct ClientEntry {
    conn_id: u64,
    control: mpsc::Sender<Control>,
}

/// State shared by all connections.
pub(crate) struct BrokerShared {
    pub registry: Arc<Registry>,
    pub api: Arc<ApiService>,
    pub limits: BrokerLimits,
    pub shutdown: Shutdown,
    clients: Mutex<HashMap<String, ClientEntry>>,
    next_conn_id: AtomicU64,
}

impl BrokerShared {
    /// Registers a connection under its client id; the previous holder is kicked (AWS: a
    /// duplicate client id disconnects the older connection, reference §5.2).
    fn claim_client_id(&self, client_id: &str, control: mpsc::Sender<Control>) -> u64 {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let old = self
            .clients
            .lock()
            .expect("client table lock")
            .insert(client_id.to_string(), ClientEntry { conn_id, control });
        if let Some(old) = old {
            let _ = old.control.try_send(Control::Kick);
        }
        conn_id
    }

    fn release_client_id(&self, client_id: &str, conn_id: u64) {
        let mut clients = self.clients.lock().expect("client table lock");
        if clients.get(client_id).is_some_and(|e| e.conn_id == conn_id) {
            clients.remove(client_id);
        }
    }

    /// Offers a normal publish to every connection; each checks its own subscriptions.
    fn fan_out(&self, topic: &str, payload: &Bytes, qos: u8) {
        let clients = self.clients.lock().expect("client table lock");
        for entry in clients.values() {
            // A full queue drops the message, as AWS drops beyond its per-connection limits.
            let _ = entry.control.try_send(Control::Deliver {
                topic: topic.to_string(),
                payload: payload.clone(),
                qos,
            });
        }
    }

    /// Number of connected clients.
    pub fn connected(&self) -> usize {
        self.clients.lock().expect("client table lock").len()
    }
}

/// Builds the TLS server configuration: the emulator's server certificate, and client
/// certificates required and verified against the emulator CA.
pub fn server_tls_config(ca: &CertificateAuthority) -> Result<rustls::ServerConfig, rustls::Error> {
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

/// A running broker.
pub struct Broker {
    pub(crate) shared: Arc<BrokerShared>,
    addr: SocketAddr,
}

impl Broker {
    /// Binds `listen` and starts accepting connections until `shutdown` triggers.
    pub async fn start(
        listen: &str,
        tls: rustls::ServerConfig,
        registry: Arc<Registry>,
        api: Arc<ApiService>,
        limits: BrokerLimits,
        shutdown: Shutdown,
    ) -> std::io::Result<Broker> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(BrokerShared {
            registry,
            api,
            limits,
            shutdown: shutdown.clone(),
            clients: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
        });
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        tokio::spawn(accept_loop(listener, acceptor, shared.clone()));
        Ok(Broker { shared, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn connected_clients(&self) -> usize {
        self.shared.connected()
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<BrokerShared>) {
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
                    connection::serve(socket, peer, acceptor, shared).await;
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
