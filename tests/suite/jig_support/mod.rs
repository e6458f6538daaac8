//! Shared helpers for the jig tests over real ptys: a virtual jig with queued boards, link
//! settings for tests, a realistic identity to write, frames decoded from a byte stream, a
//! raw port that times one command against the board, and a transport that records what the
//! link writes and reads.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_station::jig::wire::codec::{Frame, FrameAssembler};
use fleet_station::jig::wire::{Command, Message, Response};
use fleet_station::jig::{
    BoardSpec, Flash, JigLink, PortSettings, Slot, SlotWrite, Transport, VirtualJig,
    VirtualJigConfig, open_port,
};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub jig: VirtualJig,
}

impl Fixture {
    /// A jig with `serials` queued (queue closed after them), configured by `tweak`.
    pub fn new(serials: &[&str], tweak: impl FnOnce(&mut VirtualJigConfig)) -> Fixture {
        Fixture::with_boards(serials.iter().map(|s| BoardSpec::new(s)).collect(), tweak)
    }

    /// A jig with the boards `specs` queued (queue closed after them).
    pub fn with_boards(
        specs: Vec<BoardSpec>,
        tweak: impl FnOnce(&mut VirtualJigConfig),
    ) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = VirtualJigConfig::new(dir.path());
        config.baud = 1_000_000;
        tweak(&mut config);
        let (tx, rx) = crossbeam_channel::unbounded();
        for spec in specs {
            tx.send(spec).unwrap();
        }
        drop(tx); // no more boards after these: then the jig is empty
        let jig = VirtualJig::spawn(config, rx).unwrap();
        Fixture { dir, jig }
    }

    pub fn link(&self) -> JigLink {
        JigLink::open(self.jig.path(), &settings()).unwrap()
    }

    /// A link over a [`Recorder`] on the jig's port, and the recorder's log.
    pub fn recorded_link(&self, settings: &PortSettings) -> (JigLink, IoLog) {
        let port = open_port(self.jig.path(), settings).unwrap();
        let log = IoLog::default();
        let recorder = Recorder {
            port,
            log: log.clone(),
        };
        let link = JigLink::from_transport(Box::new(recorder), self.jig.path(), settings);
        (link, log)
    }

    pub fn flash(&self, serial: &str) -> Flash {
        Flash::load(&self.jig.flash_path(serial)).unwrap()
    }
}

pub fn settings() -> PortSettings {
    PortSettings {
        baud: 1_000_000,
        timeout: Duration::from_millis(200),
        long_timeout: Duration::from_millis(500),
        retries: 3,
        ..PortSettings::default()
    }
}

/// Content for every slot, distinct per `tag`.
pub struct Identity {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub root_ca: Vec<u8>,
    pub config: Vec<u8>,
    pub thing: Vec<u8>,
}

fn pem_like(label: &str, tag: &str, len: usize) -> Vec<u8> {
    let mut body = String::new();
    let mut i = 0u32;
    while body.len() < len {
        // Include zero-free but varied bytes, like base64.
        body.push_str(&format!("{tag}{i:08x}QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="));
        i += 1;
        if body.len() % 65 > 60 {
            body.push('\n');
        }
    }
    format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n").into_bytes()
}

impl Identity {
    pub fn new(tag: &str) -> Identity {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Identity {
            cert: pem_like("CERTIFICATE", tag, 1300),
            key: key.serialize_pem().into_bytes(),
            root_ca: pem_like("CERTIFICATE", &format!("ca-{tag}"), 1200),
            // Binary-ish config with zeros, to exercise COBS.
            config: (0..2500u32)
                .map(|i| (i % 251) as u8)
                .chain(tag.bytes())
                .collect(),
            thing: format!("thing-{tag}").into_bytes(),
        }
    }

    /// The size of what the line writes (~1.8 KB: a P-256 certificate, key, root CA, a short
    /// configuration and a thing name), distinct per `tag`.
    pub fn line_sized(tag: &str) -> Identity {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Identity {
            cert: pem_like("CERTIFICATE", tag, 700),
            key: key.serialize_pem().into_bytes(),
            root_ca: pem_like("CERTIFICATE", &format!("ca-{tag}"), 600),
            config: format!("{{\"DeviceLocation\":\"Seattle\",\"tag\":\"{tag}\"}}").into_bytes(),
            thing: format!("thing-{tag}").into_bytes(),
        }
    }

    pub fn items(&self) -> Vec<SlotWrite<'_>> {
        vec![
            SlotWrite {
                slot: Slot::Certificate,
                data: &self.cert,
            },
            SlotWrite {
                slot: Slot::PrivateKey,
                data: &self.key,
            },
            SlotWrite {
                slot: Slot::RootCa,
                data: &self.root_ca,
            },
            SlotWrite {
                slot: Slot::DeviceConfig,
                data: &self.config,
            },
            SlotWrite {
                slot: Slot::ThingName,
                data: &self.thing,
            },
        ]
    }

    pub fn total(&self) -> usize {
        self.items().iter().map(|i| i.data.len()).sum()
    }

    /// Number of PUT frames at `chunk` bytes per frame (the slots are staged back to back).
    pub fn puts(&self, chunk: usize) -> u64 {
        self.total().div_ceil(chunk) as u64
    }

    /// The flash holds exactly this identity.
    pub fn assert_in(&self, flash: &Flash) {
        for item in self.items() {
            assert_eq!(flash.slot(item.slot), Some(item.data), "slot {}", item.slot);
        }
    }

    /// Whether the flash holds this identity, every slot of it.
    pub fn is_in(&self, flash: &Flash) -> bool {
        self.items()
            .iter()
            .all(|item| flash.slot(item.slot) == Some(item.data))
    }
}

/// One write or one (non-empty) read of a [`Recorder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoEvent {
    Wrote(Vec<u8>),
    Read(Vec<u8>),
}

/// What a [`Recorder`] saw, in order.
#[derive(Debug, Clone, Default)]
pub struct IoLog(Arc<Mutex<Vec<IoEvent>>>);

impl IoLog {
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    pub fn events(&self) -> Vec<IoEvent> {
        self.0.lock().unwrap().clone()
    }

    /// The frames written before the first byte was read back, as (code, payload).
    pub fn written_before_first_read(&self) -> Vec<(u8, Vec<u8>)> {
        let events = self.events();
        let end = events
            .iter()
            .position(|e| matches!(e, IoEvent::Read(_)))
            .unwrap_or(events.len());
        let mut bytes = Vec::new();
        for e in &events[..end] {
            if let IoEvent::Wrote(b) = e {
                bytes.extend_from_slice(b);
            }
        }
        frames(&bytes)
    }
}

/// The valid frames in a byte stream, as (code, payload).
pub fn frames(stream: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut asm = FrameAssembler::new();
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let (used, ev) = asm.push(rest);
        if let Some(Ok(f)) = ev {
            out.push((f.code, f.payload.to_vec()));
        }
        rest = &rest[used..];
    }
    out
}

/// A frame's (code, payload) decoded as a command; panics if it is none.
pub fn command((code, payload): &(u8, Vec<u8>)) -> Command<'_> {
    Command::decode(&frame(*code, payload)).expect("a well-formed command")
}

/// A frame's (code, payload) decoded as a response; panics if it is none.
pub fn response((code, payload): &(u8, Vec<u8>)) -> Response<'_> {
    Response::decode(&frame(*code, payload)).expect("a well-formed response")
}

fn frame(code: u8, payload: &[u8]) -> Frame<'_> {
    Frame {
        code,
        seq: 0,
        payload,
        crc: 0,
    }
}

/// A raw port on a virtual jig, for what the link does not do: one command at a time, timed
/// from the write to the last byte of the answer, or a burst written at once.
pub struct RawPort {
    pub port: Box<dyn serialport::SerialPort>,
    seq: u16,
}

/// One command's round trip on a [`RawPort`].
pub struct RoundTrip {
    /// The answer, as (code, payload): decode it with [`response`].
    pub answer: (u8, Vec<u8>),
    /// Wire bytes out (the command) and in (the answer).
    pub wire_out: usize,
    pub wire_in: usize,
    pub elapsed: Duration,
}

impl RawPort {
    /// Opens the jig's port at `baud` without saying HELLO.
    pub fn open(fx: &Fixture, baud: u32) -> RawPort {
        let settings = PortSettings { baud, ..settings() };
        let mut port = open_port(fx.jig.path(), &settings).unwrap();
        port.set_timeout(Duration::from_secs(2)).unwrap();
        RawPort { port, seq: 100 }
    }

    /// Opens the jig's port at `baud` and says HELLO.
    pub fn hello(fx: &Fixture, baud: u32) -> RawPort {
        let mut raw = RawPort::open(fx, baud);
        raw.exchange(&Command::Hello { version: 1 });
        raw
    }

    /// Sends `command` and waits for its answer, which must be the only thing that arrives.
    pub fn exchange(&mut self, command: &Command<'_>) -> RoundTrip {
        self.seq += 1;
        let (mut head, mut wire) = (Vec::new(), Vec::new());
        command.encode(self.seq, &mut head, &mut wire).unwrap();
        let started = Instant::now();
        self.port.write_all(&wire).unwrap();
        let mut asm = FrameAssembler::new();
        let mut buf = [0u8; 8192];
        let mut received = 0;
        loop {
            let n = self.port.read(&mut buf).expect("the board answers");
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let (used, ev) = asm.push(rest);
                received += used;
                rest = &rest[used..];
                if let Some(frame) = ev {
                    let elapsed = started.elapsed();
                    let frame = frame.expect("a valid answer");
                    assert_eq!(frame.seq, self.seq);
                    Response::decode(&frame).expect("a well-formed answer");
                    assert!(rest.is_empty(), "nothing but the answer arrived");
                    return RoundTrip {
                        answer: (frame.code, frame.payload.to_vec()),
                        wire_out: wire.len(),
                        wire_in: received,
                        elapsed,
                    };
                }
            }
        }
    }

    /// Writes `commands` in one go, numbered from the next seq, without waiting.
    pub fn burst(&mut self, commands: &[Command<'_>]) {
        let (mut head, mut wire) = (Vec::new(), Vec::new());
        for c in commands {
            self.seq += 1;
            c.encode(self.seq, &mut head, &mut wire).unwrap();
        }
        self.port.write_all(&wire).unwrap();
    }

    /// Every byte that arrives until the board has been quiet for `quiet`.
    pub fn read_until_quiet(&mut self, quiet: Duration) -> Vec<u8> {
        self.port.set_timeout(quiet).unwrap();
        let (mut got, mut buf) = (Vec::new(), [0u8; 512]);
        while let Ok(n) = self.port.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        got
    }
}

/// A transport over a real port that records every write and every read, in order.
pub struct Recorder {
    port: Box<dyn serialport::SerialPort>,
    log: IoLog,
}

impl Read for Recorder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.port.read(buf)?;
        if n > 0 {
            self.log
                .0
                .lock()
                .unwrap()
                .push(IoEvent::Read(buf[..n].to_vec()));
        }
        Ok(n)
    }
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.port.write(buf)?;
        self.log
            .0
            .lock()
            .unwrap()
            .push(IoEvent::Wrote(buf[..n].to_vec()));
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.port.flush()
    }
}

impl Transport for Recorder {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        Transport::set_read_timeout(&mut self.port, timeout)
    }

    fn discard_input(&mut self) -> io::Result<()> {
        Transport::discard_input(&mut self.port)
    }
}
