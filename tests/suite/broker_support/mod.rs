//! Test support for the broker tests: an emulator whose claim policy can be widened, and a raw
//! MQTT client over real TLS that sends exactly the packets a test builds (with rumqttc's
//! 3.1.1 and MQTT 5 codecs) and shows every packet the broker sends back, or that it closed.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::{Error as V4Error, QoS as Q4};
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::{Error as V5Error, QoS as Q5};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::common::TestEmulator;
use fleet_station::emulator::EmulatorConfig;

/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// An IoT policy that allows every action on every resource.
pub const ALLOW_ALL: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#;

/// An emulator for broker tests.
pub struct BrokerEmu {
    pub emu: TestEmulator,
    _policy_dir: tempfile::TempDir,
}

impl BrokerEmu {
    /// The default (claim-policy) emulator with `tweak` applied to its config.
    pub async fn start(tweak: impl FnOnce(&mut EmulatorConfig)) -> BrokerEmu {
        BrokerEmu::start_with_policy(None, tweak).await
    }

    /// An emulator whose claim certificate may publish, subscribe and receive anywhere.
    pub async fn permissive(tweak: impl FnOnce(&mut EmulatorConfig)) -> BrokerEmu {
        BrokerEmu::start_with_policy(Some(ALLOW_ALL), tweak).await
    }

    /// An emulator whose claim certificate has the policy document `policy` (`None`: the
    /// default claim policy).
    pub async fn start_with_policy(
        policy: Option<&str>,
        tweak: impl FnOnce(&mut EmulatorConfig),
    ) -> BrokerEmu {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claim-policy.json");
        if let Some(p) = policy {
            std::fs::write(&path, p).unwrap();
        }
        let emu = TestEmulator::start_with(|cfg| {
            if policy.is_some() {
                cfg.claim_policy = Some(path);
            }
            tweak(cfg);
        })
        .await;
        BrokerEmu {
            emu,
            _policy_dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.emu.emulator.local_addr()
    }

    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.emu.claim_tls()
    }

    /// The claim identity's TLS config offering `alpn` protocols.
    pub fn tls_with_alpn(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut cfg = (*self.emu.claim_tls()).clone();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }

    /// A 3.1.1 client, connected (CONNACK success asserted).
    pub async fn v4(&self, client_id: &str) -> Raw {
        let mut c = Raw::open(self.addr(), self.tls()).await;
        c.send4(connect4(client_id, 60)).await;
        match c.recv4().await {
            Some(v4::Packet::ConnAck(a)) if a.code == v4::ConnectReturnCode::Success => c,
            other => panic!("expected CONNACK success, got {other:?}"),
        }
    }

    /// An MQTT 5 client, connected (CONNACK success asserted), and its CONNACK.
    pub async fn v5(&self, client_id: &str) -> (Raw, v5::ConnAck) {
        let mut c = Raw::open(self.addr(), self.tls()).await;
        c.send5(connect5(client_id, 60, None)).await;
        match c.recv5().await {
            Some(v5::Packet::ConnAck(a)) if a.code == v5::ConnectReturnCode::Success => (c, a),
            other => panic!("expected CONNACK success, got {other:?}"),
        }
    }
}

/// A raw MQTT client on one TLS connection.
pub struct Raw {
    io: TlsStream<TcpStream>,
    rbuf: BytesMut,
}

impl Raw {
    /// Connects TCP and TLS; panics if that fails.
    pub async fn open(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Raw {
        Raw::try_open(addr, tls).await.expect("TLS connection")
    }

    pub async fn try_open(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Raw> {
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other("TCP connect timed out"))??;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost").unwrap();
        let io = tokio::time::timeout(WAIT, TlsConnector::from(tls).connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
        Ok(Raw {
            io,
            rbuf: BytesMut::new(),
        })
    }

    /// The ALPN protocol the handshake agreed on.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.io.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        // The broker may already have closed; a test then sees it on its next read.
        let _ = self.io.write_all(bytes).await;
        let _ = self.io.flush().await;
    }

    pub async fn send4(&mut self, p: v4::Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).unwrap();
        self.send_raw(&b).await;
    }

    pub async fn send5(&mut self, p: v5::Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, None).unwrap();
        self.send_raw(&b).await;
    }

    /// Reads more bytes; false when the broker closed the connection.
    async fn fill(&mut self) -> bool {
        match tokio::time::timeout(WAIT, self.io.read_buf(&mut self.rbuf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(_)) => true,
            Err(_) => panic!("nothing from the broker within {WAIT:?}"),
        }
    }

    /// The next 3.1.1 packet from the broker, or `None` once it closed the connection.
    pub async fn recv4(&mut self) -> Option<v4::Packet> {
        loop {
            match v4::Packet::read(&mut self.rbuf, usize::MAX) {
                Ok(p) => return Some(p),
                Err(V4Error::InsufficientBytes(_)) => {
                    if !self.fill().await {
                        return None;
                    }
                }
                Err(e) => panic!("broker sent an unreadable 3.1.1 packet: {e}"),
            }
        }
    }

    /// The next MQTT 5 packet from the broker, or `None` once it closed the connection.
    pub async fn recv5(&mut self) -> Option<v5::Packet> {
        loop {
            match v5::Packet::read(&mut self.rbuf, None) {
                Ok(p) => return Some(p),
                Err(V5Error::InsufficientBytes(_)) => {
                    if !self.fill().await {
                        return None;
                    }
                }
                Err(e) => panic!("broker sent an unreadable MQTT 5 packet: {e}"),
            }
        }
    }

    /// 3.1.1: everything the broker sends until it closes (panics if it does not within WAIT).
    pub async fn until_closed4(&mut self) -> Vec<v4::Packet> {
        let mut seen = Vec::new();
        while let Some(p) = self.recv4().await {
            seen.push(p);
        }
        seen
    }

    /// MQTT 5: everything the broker sends until it closes.
    pub async fn until_closed5(&mut self) -> Vec<v5::Packet> {
        let mut seen = Vec::new();
        while let Some(p) = self.recv5().await {
            seen.push(p);
        }
        seen
    }

    /// 3.1.1: sends PINGREQ and returns every packet that arrived before its PINGRESP. The
    /// broker handles a connection's packets in order, so an ack for anything sent before the
    /// PINGREQ arrives before the PINGRESP.
    pub async fn ping4(&mut self) -> Vec<v4::Packet> {
        self.send4(v4::Packet::PingReq).await;
        let mut before = Vec::new();
        loop {
            match self.recv4().await {
                Some(v4::Packet::PingResp) => return before,
                Some(p) => before.push(p),
                None => panic!("connection closed waiting for PINGRESP; before: {before:?}"),
            }
        }
    }

    /// MQTT 5: as [`Raw::ping4`].
    pub async fn ping5(&mut self) -> Vec<v5::Packet> {
        self.send5(v5::Packet::PingReq(v5::PingReq)).await;
        let mut before = Vec::new();
        loop {
            match self.recv5().await {
                Some(v5::Packet::PingResp(_)) => return before,
                Some(p) => before.push(p),
                None => panic!("connection closed waiting for PINGRESP; before: {before:?}"),
            }
        }
    }
}

/// QoS `q` (0, 1 or 2) in rumqttc's 3.1.1 codec.
pub fn q4(q: u8) -> Q4 {
    rumqttc::mqttbytes::qos(q).expect("QoS 0, 1 or 2")
}

/// QoS `q` (0, 1 or 2) in rumqttc's MQTT 5 codec.
pub fn q5(q: u8) -> Q5 {
    rumqttc::v5::mqttbytes::qos(q).expect("QoS 0, 1 or 2")
}

pub fn connect4(client_id: &str, keep_alive_s: u16) -> v4::Packet {
    let mut c = v4::Connect::new(client_id);
    c.keep_alive = keep_alive_s;
    v4::Packet::Connect(c)
}

pub fn connect5(
    client_id: &str,
    keep_alive_s: u16,
    props: Option<v5::ConnectProperties>,
) -> v5::Packet {
    v5::Packet::Connect(
        v5::Connect {
            keep_alive: keep_alive_s,
            client_id: client_id.into(),
            clean_start: true,
            properties: props,
        },
        None,
        None,
    )
}

pub fn publish4(topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> v4::Packet {
    let mut p = v4::Publish::new(topic, q4(qos), payload.to_vec());
    p.pkid = pkid;
    v4::Packet::Publish(p)
}

pub fn publish5(topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> v5::Packet {
    let mut p = v5::Publish::new(topic, q5(qos), payload.to_vec(), None);
    p.pkid = pkid;
    v5::Packet::Publish(p)
}

pub fn subscribe4(pkid: u16, filters: &[(&str, u8)]) -> v4::Packet {
    let mut s = v4::Subscribe::new_many(
        filters
            .iter()
            .map(|(f, q)| v4::SubscribeFilter::new((*f).to_string(), q4(*q))),
    );
    s.pkid = pkid;
    v4::Packet::Subscribe(s)
}

pub fn subscribe5(pkid: u16, filters: &[(&str, u8)]) -> v5::Packet {
    let mut s = v5::Subscribe::new_many(
        filters.iter().map(|(f, q)| v5::Filter::new(*f, q5(*q))),
        None,
    );
    s.pkid = pkid;
    v5::Packet::Subscribe(s)
}

pub fn unsubscribe5(pkid: u16, filters: &[&str]) -> v5::Packet {
    v5::Packet::Unsubscribe(v5::Unsubscribe {
        pkid,
        filters: filters.iter().map(|f| (*f).to_string()).collect(),
        properties: None,
    })
}

pub fn unsubscribe4(pkid: u16, filter: &str) -> v4::Packet {
    let mut u = v4::Unsubscribe::new(filter);
    u.pkid = pkid;
    v4::Packet::Unsubscribe(u)
}

/// The reason code of a server DISCONNECT followed by the connection closing.
pub async fn disconnect_reason(c: &mut Raw) -> v5::DisconnectReasonCode {
    let seen = c.until_closed5().await;
    match seen.last() {
        Some(v5::Packet::Disconnect(d)) => d.reason_code,
        _ => panic!("expected DISCONNECT before the close, got {seen:?}"),
    }
}
