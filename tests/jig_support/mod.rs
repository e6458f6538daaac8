//! Shared helpers for the jig tests over real ptys: a virtual jig with queued boards, link
//! settings for tests, and a realistic identity to write.
#![allow(dead_code)]

use std::time::Duration;

use fleet_station::jig::{
    BoardSpec, Flash, JigLink, PortSettings, Slot, SlotWrite, VirtualJig, VirtualJigConfig,
};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub jig: VirtualJig,
}

impl Fixture {
    /// A jig with `serials` queued (queue closed after them), configured by `tweak`.
    pub fn new(serials: &[&str], tweak: impl FnOnce(&mut VirtualJigConfig)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = VirtualJigConfig::new(dir.path());
        config.baud = 1_000_000;
        tweak(&mut config);
        let (tx, rx) = crossbeam_channel::unbounded();
        for s in serials {
            tx.send(BoardSpec::new(s)).unwrap();
        }
        drop(tx); // no more boards after these: then the jig is empty
        let jig = VirtualJig::spawn(config, rx).unwrap();
        Fixture { dir, jig }
    }

    pub fn link(&self) -> JigLink {
        JigLink::open(self.jig.path(), &settings()).unwrap()
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

    /// Number of PUT frames at `chunk` bytes per frame.
    pub fn puts(&self, chunk: usize) -> u64 {
        self.items()
            .iter()
            .map(|i| i.data.len().div_ceil(chunk) as u64)
            .sum()
    }

    /// The flash holds exactly this identity.
    pub fn assert_in(&self, flash: &Flash) {
        assert_eq!(flash.certificate(), Some(&self.cert[..]));
        assert_eq!(flash.private_key(), Some(&self.key[..]));
        assert_eq!(flash.root_ca(), Some(&self.root_ca[..]));
        assert_eq!(flash.device_config(), Some(&self.config[..]));
        assert_eq!(flash.slot(Slot::ThingName), Some(&self.thing[..]));
    }
}
