//! Shared test harness: an emulator in a temporary state directory and raw MQTT clients
//! (rumqttc over rustls) that speak to it like a device would.

#![allow(dead_code)]

pub mod cleanup;
pub mod cli;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet_station::emulator::{Emulator, EmulatorConfig};
use fleet_station::provision::tls::{client_config_from_pem, read_roots};
use fleet_station::shutdown::Shutdown;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// An emulator on a free port with its own state directory.
pub struct TestEmulator {
    pub emulator: Emulator,
    pub dir: tempfile::TempDir,
    pub shutdown: Shutdown,
}

impl TestEmulator {
    pub async fn start() -> TestEmulator {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut EmulatorConfig)) -> TestEmulator {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = EmulatorConfig {
            listen: "127.0.0.1:0".into(),
            state_dir: dir.path().join("emulator"),
            templates: fixtures().join("templates"),
            ..EmulatorConfig::default()
        };
        tweak(&mut cfg);
        let shutdown = Shutdown::new();
        let emulator = Emulator::start(&cfg, shutdown.clone()).await.unwrap();
        TestEmulator {
            emulator,
            dir,
            shutdown,
        }
    }

    pub fn port(&self) -> u16 {
        self.emulator.local_addr().port()
    }

    /// TLS config with the emulator's claim identity.
    pub fn claim_tls(&self) -> Arc<rustls::ClientConfig> {
        let p = self.emulator.paths();
        let cert = std::fs::read(&p.claim_cert).unwrap();
        let key = std::fs::read(&p.claim_key).unwrap();
        Arc::new(
            client_config_from_pem(read_roots(&p.ca_cert).unwrap(), &cert, &key, false).unwrap(),
        )
    }

    /// TLS config with another identity (PEM) and the emulator's CA as trust anchor.
    pub fn tls_with(&self, cert_pem: &[u8], key_pem: &[u8]) -> Arc<rustls::ClientConfig> {
        let p = self.emulator.paths();
        Arc::new(
            client_config_from_pem(read_roots(&p.ca_cert).unwrap(), cert_pem, key_pem, false)
                .unwrap(),
        )
    }
}

impl Drop for TestEmulator {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// What a raw client sees.
#[derive(Debug)]
pub enum Seen {
    /// Return code and session present.
    ConnAck(rumqttc::ConnectReturnCode, bool),
    SubAck(Vec<rumqttc::SubscribeReasonCode>),
    Publish(String, bytes::Bytes),
    PubAck(u16),
    Down(String),
}

/// A raw MQTT client whose incoming packets arrive on a channel.
pub struct RawClient {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Seen>,
}

async fn pump(mut el: EventLoop, tx: mpsc::UnboundedSender<Seen>) {
    loop {
        let seen = match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(c))) => Seen::ConnAck(c.code, c.session_present),
            Ok(Event::Incoming(Packet::SubAck(s))) => Seen::SubAck(s.return_codes),
            Ok(Event::Incoming(Packet::Publish(p))) => Seen::Publish(p.topic, p.payload),
            Ok(Event::Incoming(Packet::PubAck(a))) => Seen::PubAck(a.pkid),
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(Seen::Down(e.to_string()));
                return;
            }
        };
        if tx.send(seen).is_err() {
            return;
        }
    }
}

impl RawClient {
    pub fn connect(port: u16, client_id: &str, tls: Arc<rustls::ClientConfig>) -> RawClient {
        Self::connect_with(port, client_id, tls, true)
    }

    /// With `clean = false` the broker keeps the session (MQTT 3.1.1 persistent session).
    pub fn connect_with(
        port: u16,
        client_id: &str,
        tls: Arc<rustls::ClientConfig>,
        clean: bool,
    ) -> RawClient {
        let mut opts = MqttOptions::new(client_id, "localhost", port);
        opts.set_clean_session(clean);
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        opts.set_keep_alive(Duration::from_secs(60));
        let (client, mut el) = AsyncClient::new(opts, 16);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        el.set_network_options(net);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(pump(el, tx));
        RawClient { client, rx }
    }

    /// The next thing seen, within 10 s.
    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("nothing arrived within 10 s")
            .expect("client pump ended")
    }

    /// Waits for CONNACK (asserting success); returns its session-present flag.
    pub async fn connected_session(&mut self) -> bool {
        match self.next().await {
            Seen::ConnAck(rumqttc::ConnectReturnCode::Success, present) => present,
            other => panic!("expected CONNACK success, got {other:?}"),
        }
    }

    /// Waits for CONNACK (asserting success).
    pub async fn connected(&mut self) {
        match self.next().await {
            Seen::ConnAck(rumqttc::ConnectReturnCode::Success, _) => {}
            other => panic!("expected CONNACK success, got {other:?}"),
        }
    }

    /// Subscribes and returns the SUBACK codes.
    pub async fn subscribe(&mut self, filters: &[String]) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe_many(
                filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
            )
            .await
            .unwrap();
        loop {
            match self.next().await {
                Seen::SubAck(codes) => return codes,
                Seen::Down(e) => panic!("connection lost while subscribing: {e}"),
                _ => {}
            }
        }
    }

    /// Publishes and returns the next PUBLISH received (skipping acks).
    pub async fn request(&mut self, topic: &str, payload: Vec<u8>) -> (String, bytes::Bytes) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        loop {
            match self.next().await {
                Seen::Publish(t, p) => return (t, p),
                Seen::Down(e) => panic!("connection lost waiting for a reply: {e}"),
                _ => {}
            }
        }
    }
}

/// An engine configuration against `emu`: `sessions` sessions, `template`, and parameters
/// `ThingName = thing_name` (a pattern such as `"thing-{serial}"`), `SerialNumber = {serial}`,
/// `DeviceLocation = Seattle`.
pub fn engine_config(
    emu: &TestEmulator,
    sessions: usize,
    template: &str,
    thing_name: &str,
) -> fleet_station::provision::EngineConfig {
    let mut parameters = std::collections::BTreeMap::new();
    parameters.insert("ThingName".to_string(), thing_name.to_string());
    parameters.insert("SerialNumber".to_string(), "{serial}".to_string());
    parameters.insert("DeviceLocation".to_string(), "Seattle".to_string());
    fleet_station::provision::EngineConfig {
        host: "localhost".into(),
        port: emu.port(),
        tls: emu.claim_tls(),
        station_id: "test-station".into(),
        sessions,
        template: template.into(),
        format: fleet_station::fleet::Format::Json,
        request_timeout: Duration::from_secs(10),
        max_attempts: 3,
        parameters,
        limits: Arc::new(fleet_station::provision::rate::Limits::new(
            0.0, 0.0, 0.0, 1000.0,
        )),
        device_deadline: Duration::from_secs(120),
        mqtt_version: fleet_station::fleet::MqttVersion::V311,
        post_provision_check: false,
        roots: read_roots(&emu.emulator.paths().ca_cert).unwrap(),
        aws_keys: false,
    }
}

/// A small P-256 key pool with one worker.
pub fn key_pool() -> Arc<fleet_station::keys::KeyPool> {
    Arc::new(fleet_station::keys::KeyPool::start(
        &fleet_station::keys::pool::PoolConfig {
            algorithm: fleet_station::keys::KeyAlgorithm::P256,
            workers: 1,
            stock: 16,
            common_name: "test".into(),
        },
    ))
}

/// `station emulate` as a separate process, as an operator runs it.
pub struct StandaloneEmulator {
    pub child: std::process::Child,
    pub port: u16,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// What it was started with, for [`StandaloneEmulator::restart`].
    dir: PathBuf,
    extra: String,
}

impl StandaloneEmulator {
    /// Starts it with state in `dir/emulator`, the fixture templates and `extra` lines in
    /// its `[emulator]` section; returns once it printed where it listens.
    pub fn start(dir: &Path, extra: &str) -> StandaloneEmulator {
        Self::spawn(dir, None, extra)
    }

    /// As [`StandaloneEmulator::start`], listening on `127.0.0.1:port` (`listen` in its
    /// configuration), as the station's crash and outage tests need to restart it there.
    pub fn start_on(dir: &Path, port: u16, extra: &str) -> StandaloneEmulator {
        Self::spawn(dir, Some(port), extra)
    }

    fn spawn(dir: &Path, port: Option<u16>, extra: &str) -> StandaloneEmulator {
        use std::io::{BufRead, BufReader};
        let config = dir.join("emulator.toml");
        let listen = port
            .map(|p| format!("listen = \"127.0.0.1:{p}\"\n"))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "[emulator]\n{listen}state_dir = \"{}\"\ntemplates = \"{}\"\n{extra}\n",
                dir.join("emulator").display(),
                fixtures().join("templates").display()
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_station"))
            .args(["emulate", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(dir.join("emulator.stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let Some(Ok(first)) = lines.next() else {
            let status = child.wait().unwrap();
            panic!(
                "station emulate ended ({status}) before it listened: {}",
                std::fs::read_to_string(dir.join("emulator.stderr")).unwrap_or_default()
            );
        };
        let mut next = || lines.next().unwrap().unwrap();
        let port = first
            .strip_prefix("listening on ")
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {first}"));
        let mut path = || PathBuf::from(next().split_once(": ").unwrap().1);
        let (ca, cert, key) = (path(), path(), path());
        StandaloneEmulator {
            child,
            port,
            ca,
            cert,
            key,
            dir: dir.to_path_buf(),
            extra: extra.to_string(),
        }
    }

    /// SIGKILL (nothing is flushed, no signal handler runs), and waits until the process is
    /// gone. Killing an emulator that is already gone does nothing.
    pub fn kill(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            // SIGKILL on Unix.
            let _ = self.child.kill();
        }
        self.child.wait().unwrap();
    }

    /// Kills it if it still runs, then starts it again at once with the same configuration
    /// and state directory, on the same port; returns once it listens again.
    pub fn restart(&mut self) {
        self.kill();
        let (dir, extra) = (self.dir.clone(), self.extra.clone());
        *self = Self::spawn(&dir, Some(self.port), &extra);
    }

    /// TLS config with the claim identity and the emulator's CA as trust anchor.
    pub fn claim_tls(&self) -> Arc<rustls::ClientConfig> {
        let cert = std::fs::read(&self.cert).unwrap();
        let key = std::fs::read(&self.key).unwrap();
        self.tls_with(&cert, &key)
    }

    /// TLS config with another identity (PEM) and the emulator's CA as trust anchor.
    pub fn tls_with(&self, cert_pem: &[u8], key_pem: &[u8]) -> Arc<rustls::ClientConfig> {
        Arc::new(
            client_config_from_pem(read_roots(&self.ca).unwrap(), cert_pem, key_pem, false)
                .unwrap(),
        )
    }

    /// SIGTERM, and waits for a clean exit (the registry is then on disk).
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        assert!(self.child.wait().unwrap().success());
    }
}

/// A TCP port on 127.0.0.1 for a fixed `listen` address: free a moment ago, and below the
/// kernel's ephemeral range (`ip_local_port_range`, 32768 and up on Linux), so no client
/// socket of a parallel test is given it as its local port between now and the bind (or
/// between a kill and a restart), which would make the bind fail.
pub fn free_port() -> u16 {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            let mut it = r.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // Up to 10 000 ports just below the ephemeral range, or else the ones above it.
    let (from, to) = if low > 2048 {
        (low.saturating_sub(10_000).max(1024), low)
    } else {
        (high.saturating_add(1), u16::MAX)
    };
    for _ in 0..1000 {
        let port = fastrand::u16(from..to);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {from}..{to}");
}

/// What [`submit`] hands back: the device's ledger id and where its outcome arrives.
pub type Submitted = (
    i64,
    tokio::sync::oneshot::Receiver<
        Result<fleet_station::provision::Credentials, fleet_station::provision::NotProvisioned>,
    >,
);

/// The engine with `cfg`, journaling in `ledger`; the [`Halt`](fleet_station::halt::Halt)
/// tells why it stopped the line, if it did.
pub fn start_engine(
    cfg: fleet_station::provision::EngineConfig,
    keys: Arc<fleet_station::keys::KeyPool>,
    ledger: &fleet_station::ledger::Ledger,
    telemetry: fleet_station::telemetry::Telemetry,
) -> (
    fleet_station::provision::Provisioner,
    fleet_station::halt::Halt,
) {
    let halt = fleet_station::halt::Halt::new(Shutdown::new());
    let engine = fleet_station::provision::Provisioner::start(
        cfg,
        keys,
        ledger.clone(),
        telemetry,
        halt.clone(),
    );
    (engine, halt)
}

/// The device's failure (panics if it was provisioned or interrupted).
pub fn failure(
    r: Result<fleet_station::provision::Credentials, fleet_station::provision::NotProvisioned>,
) -> fleet_station::provision::DeviceFailure {
    match r {
        Err(fleet_station::provision::NotProvisioned::Failed(f)) => f,
        Ok(c) => panic!("expected a failure, the device was provisioned: {c:?}"),
        Err(other) => panic!("expected a failure, got {other:?}"),
    }
}

/// Journals a fresh board `serial` on `jig` in `ledger` and submits it to the engine behind
/// `jobs` with key plan `key`.
pub async fn submit(
    jobs: &tokio::sync::mpsc::Sender<fleet_station::provision::DeviceJob>,
    ledger: &fleet_station::ledger::Ledger,
    serial: &str,
    jig: &str,
    key: fleet_station::provision::KeyPlan,
) -> Submitted {
    let board = fleet_station::provision::BoardIdentity {
        serial: serial.into(),
        jig: jig.into(),
        ..Default::default()
    };
    submit_board(jobs, ledger, board, key).await
}

/// [`submit`] for a board that reports more than its serial.
pub async fn submit_board(
    jobs: &tokio::sync::mpsc::Sender<fleet_station::provision::DeviceJob>,
    ledger: &fleet_station::ledger::Ledger,
    board: fleet_station::provision::BoardIdentity,
    key: fleet_station::provision::KeyPlan,
) -> Submitted {
    let begun = ledger.begin(&board.serial, &board.jig).await.unwrap();
    let (reply, rx) = tokio::sync::oneshot::channel();
    // An engine that stopped the line takes no more jobs: the receiver then says so (its
    // sender is dropped with the job).
    let _ = jobs
        .send(fleet_station::provision::DeviceJob {
            device_id: begun.id,
            board,
            key,
            resume: begun.resume,
            reply,
        })
        .await;
    (begun.id, rx)
}

/// A TCP proxy in front of an endpoint that a test can take away and bring back: while it
/// is cut, every connection through it is closed and new ones are refused, as when a
/// network link or the endpoint goes down.
pub struct OutageProxy {
    pub port: u16,
    cut: tokio::sync::watch::Sender<bool>,
}

impl OutageProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`.
    pub async fn start(target: u16) -> OutageProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, mut cut_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut listener = Some(listener);
            let mut conns = tokio::task::JoinSet::new();
            loop {
                match &listener {
                    Some(l) => tokio::select! {
                        accepted = l.accept() => {
                            let Ok((mut inbound, _)) = accepted else { continue };
                            conns.spawn(async move {
                                if let Ok(mut outbound) =
                                    tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                                {
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                        .await;
                                }
                            });
                        }
                        changed = cut_rx.changed() => {
                            if changed.is_err() { return }
                            if *cut_rx.borrow() {
                                // Away: drop every connection and stop listening.
                                conns.abort_all();
                                listener = None;
                            }
                        }
                    },
                    None => {
                        if cut_rx.changed().await.is_err() {
                            return;
                        }
                        if !*cut_rx.borrow() {
                            listener = Some(
                                tokio::net::TcpListener::bind(("127.0.0.1", port))
                                    .await
                                    .expect("the proxy's port is free again"),
                            );
                        }
                    }
                }
            }
        });
        OutageProxy { port, cut }
    }

    /// The endpoint goes away: connections are closed, new ones refused.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// The endpoint is back.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

/// Public key (SPKI DER) of a PEM private key.
pub fn public_key_of(key_pem: &[u8]) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem).unwrap();
    let pair = rcgen::KeyPair::try_from(&key).unwrap();
    rcgen::PublicKeyData::subject_public_key_info(&pair)
}

/// Certificates the emulator's registry holds that it issued (the claim certificate aside).
pub fn issued_certificates(registry: &fleet_station::emulator::registry::Registry) -> usize {
    registry
        .certificates()
        .unwrap()
        .iter()
        .filter(|c| !c.claim)
        .count()
}

/// [`issued_certificates`] of the registry an emulator left in `state_dir`.
pub fn issued_certificates_in(state_dir: &Path) -> usize {
    let registry =
        fleet_station::emulator::registry::Registry::open(&state_dir.join("registry.db")).unwrap();
    issued_certificates(&registry)
}
