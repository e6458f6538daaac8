//! Shared test harness: an emulator in a temporary state directory and raw MQTT clients
//! (rumqttc over rustls) that speak to it like a device would.

#![allow(dead_code)]

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
    ConnAck(rumqttc::ConnectReturnCode),
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
            Ok(Event::Incoming(Packet::ConnAck(c))) => Seen::ConnAck(c.code),
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
        let mut opts = MqttOptions::new(client_id, "localhost", port);
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

    /// Waits for CONNACK (asserting success).
    pub async fn connected(&mut self) {
        match self.next().await {
            Seen::ConnAck(rumqttc::ConnectReturnCode::Success) => {}
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
