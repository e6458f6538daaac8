//! The virtual line: `jigs.count` virtual jigs on pseudo-terminals, fed from one queue of
//! boards with generated identities, so `station run` can provision a whole line on one
//! machine. The station opens each jig's pty path exactly as it opens a USB adapter.
//! Failed boards go back in the queue when the operator asks ([`VirtualLine::requeue`]).
//!
//! The line's boards are those of `jigs.driver`: [`VirtualLine::start`] matches on the
//! driver kind, one arm per driver, each starting its emulated boards (`LineJig`) and
//! their queue (`Queue`); what every driver shares (identities new each run unless
//! `jigs.stamp_serials = false`, boards the ledger shows verified left out, requeueing) is
//! here once.
//!
//! - `fleet-jig`: [`VirtualJig`]s serving boards with serials `<prefix>-<stamp>-<n>`.
//! - `nrf91-at`: [`VirtualModem`]s, emulated nRF91 modems behind their AT host, identified
//!   by IMEIs.
//! - `zephyr-cred`: [`VirtualZephyr`]s, emulated Zephyr boards with the TLS-credentials shell,
//!   identified by their `hwinfo devid`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::jig_cycle::{JigPort, ReleaseHook};
use crate::config::Config;
use crate::jig::{
    BoardSpec, DriverKind, DriverOptions, ModemSpec, PortSettings, SerialGenerator, Slot,
    VirtualJig, VirtualJigConfig, VirtualModem, VirtualModemConfig, VirtualZephyr,
    VirtualZephyrConfig, ZephyrSpec, devids, imeis,
};
use crate::ledger::{DeviceState, Ledger};

/// One virtual jig of the line, of the line's driver.
#[derive(Clone)]
enum LineJig {
    /// A board running our jig firmware (`fleet-jig`).
    Fleet(Arc<VirtualJig>),
    /// An nRF91 modem behind its AT host (`nrf91-at`).
    Modem(Arc<VirtualModem>),
    /// A Zephyr board with the TLS-credentials shell (`zephyr-cred`).
    Zephyr(Arc<VirtualZephyr>),
}

impl LineJig {
    fn path(&self) -> &str {
        match self {
            LineJig::Fleet(j) => j.path(),
            LineJig::Modem(m) => m.path(),
            LineJig::Zephyr(j) => j.path(),
        }
    }

    fn take_off(&self, serial: &str) {
        match self {
            LineJig::Fleet(j) => j.take_off(serial),
            LineJig::Modem(m) => m.take_off(serial),
            LineJig::Zephyr(j) => j.take_off(serial),
        }
    }
}

/// The boards of one driver's line: the queue its jigs take them from (kept open so failed
/// boards can be placed again) and every board fed, by identity.
struct Feed<S> {
    tx: crossbeam_channel::Sender<S>,
    boards: HashMap<String, S>,
}

impl<S: Clone> Feed<S> {
    /// A feed for `boards` boards and the receiving end the jigs share.
    fn new(boards: usize) -> (Feed<S>, crossbeam_channel::Receiver<S>) {
        let (tx, rx) = crossbeam_channel::bounded(boards.max(1));
        let feed = Feed {
            tx,
            boards: HashMap::new(),
        };
        (feed, rx)
    }

    /// Places the board `id` in the queue.
    fn push(&mut self, id: String, spec: S) {
        self.boards.insert(id, spec.clone());
        self.tx.send(spec).expect("queue sized for every board");
    }

    fn len(&self) -> usize {
        self.boards.len()
    }

    /// Places the boards `ids` (fed earlier) in the queue again; returns how many.
    fn requeue(&self, ids: &[String]) -> usize {
        ids.iter()
            .filter_map(|s| self.boards.get(s))
            .filter(|spec| self.tx.try_send((*spec).clone()).is_ok())
            .count()
    }
}

/// The line's board queue, of the line's driver.
enum Queue {
    Fleet(Feed<BoardSpec>),
    Modem(Feed<ModemSpec>),
    Zephyr(Feed<ZephyrSpec>),
}

/// The running virtual jigs.
pub struct VirtualLine {
    jigs: Vec<(String, LineJig)>,
    settings: PortSettings,
    driver: DriverKind,
    options: DriverOptions,
    queue: Queue,
}

impl VirtualLine {
    /// Starts `jigs.count` jigs of `jigs.driver` sharing a queue of `boards` boards, new
    /// identities each run (or, with `jigs.stamp_serials = false`, the same ones without the
    /// boards `ledger` shows verified). With `jigs.boards_hold_root_ca`, blank boards come
    /// with `root_ca` already stored. Returns the line and the number of boards placed in
    /// its queue.
    pub fn start(
        cfg: &Config,
        boards: usize,
        ledger: &Ledger,
        root_ca: &[u8],
    ) -> crate::Result<(VirtualLine, usize)> {
        let verified = verified_boards(cfg, ledger)?;
        let (jigs, queue) = match cfg.jigs.driver {
            DriverKind::FleetJig => start_fleet(cfg, boards, &verified, root_ca)?,
            DriverKind::Nrf91At => start_modems(cfg, boards, &verified, root_ca)?,
            DriverKind::ZephyrCred => start_zephyr(cfg, boards, &verified, root_ca)?,
        };
        let fed = match &queue {
            Queue::Fleet(f) => f.len(),
            Queue::Modem(f) => f.len(),
            Queue::Zephyr(f) => f.len(),
        };
        let line = VirtualLine {
            jigs,
            settings: cfg.jigs.port_settings(cfg.jigs.baud),
            driver: cfg.jigs.driver,
            options: cfg.jigs.driver_options(),
            queue,
        };
        Ok((line, fed))
    }

    /// The jigs as the station sees them.
    pub fn ports(&self) -> Vec<JigPort> {
        self.jigs
            .iter()
            .map(|(name, j)| JigPort {
                name: name.clone(),
                path: j.path().to_string(),
                settings: self.settings.clone(),
                driver: self.driver,
                options: self.options.clone(),
            })
            .collect()
    }

    /// Places the boards `serials` (fed earlier, since taken off) in the queue again;
    /// returns how many.
    pub fn requeue(&self, serials: &[String]) -> usize {
        match &self.queue {
            Queue::Fleet(f) => f.requeue(serials),
            Queue::Modem(f) => f.requeue(serials),
            Queue::Zephyr(f) => f.requeue(serials),
        }
    }

    /// The simulated operator: takes a finished board off its jig.
    pub fn release_hook(&self) -> ReleaseHook {
        let jigs: HashMap<String, LineJig> = self.jigs.iter().cloned().collect();
        Arc::new(move |jig: &str, serial: &str| {
            if let Some(j) = jigs.get(jig) {
                j.take_off(serial);
            }
        })
    }
}

/// With `jigs.stamp_serials = false` (the same identities every run), the boards the ledger
/// shows verified, which are not placed again; empty otherwise.
fn verified_boards(cfg: &Config, ledger: &Ledger) -> crate::Result<HashSet<String>> {
    if cfg.jigs.stamp_serials {
        return Ok(HashSet::new());
    }
    Ok(ledger
        .devices()?
        .into_iter()
        .filter(|d| d.state == DeviceState::Verified)
        .map(|d| d.serial)
        .collect())
}

type Started = (Vec<(String, LineJig)>, Queue);

/// `fleet-jig`: serials `<prefix>-<UTC yymmddHHMMSSmmm>-<n>`, so boards of different runs do
/// not collide, or `<prefix>-<n>` with `jigs.stamp_serials = false`; with
/// `jigs.boards_hold_root_ca`, `root_ca` in the root-CA slot.
fn start_fleet(
    cfg: &Config,
    boards: usize,
    verified: &HashSet<String>,
    root_ca: &[u8],
) -> crate::Result<Started> {
    let (mut feed, rx) = Feed::new(boards);
    let prefix = if cfg.jigs.stamp_serials {
        let now = time::OffsetDateTime::now_utc();
        let stamp = now
            .format(time::macros::format_description!(
                "[year repr:last_two][month][day][hour][minute][second][subsecond digits:3]"
            ))
            .unwrap_or_else(|_| now.unix_timestamp().to_string());
        format!("{}-{stamp}-", cfg.jigs.serial_prefix)
    } else {
        format!("{}-", cfg.jigs.serial_prefix)
    };
    let mut generator = SerialGenerator::new(&prefix, 6, 1);
    if cfg.jigs.boards_hold_root_ca {
        generator = generator.firmware_slot(Slot::RootCa, root_ca);
    }
    for spec in generator.take(boards) {
        if !verified.contains(&spec.serial) {
            feed.push(spec.serial.clone(), spec);
        }
    }
    let mut jigs = Vec::with_capacity(cfg.jigs.count);
    for i in 0..cfg.jigs.count {
        let mut jc = VirtualJigConfig::new(&cfg.jigs.flash_dir);
        jc.baud = cfg.jigs.baud;
        let jig = VirtualJig::spawn(jc, rx.clone())?;
        jigs.push((format!("vjig-{}", i + 1), LineJig::Fleet(Arc::new(jig))));
    }
    Ok((jigs, Queue::Fleet(feed)))
}

/// The modem firmware the virtual modems report (`AT+CGMR`).
const VIRTUAL_MODEM_FIRMWARE: &str = "mfw_nrf9160_1.3.5";

/// `nrf91-at`: IMEIs `35<run><n><check>`, the run part from the start time (new each run)
/// or 000000 with `jigs.stamp_serials = false`; with `jigs.boards_hold_root_ca`, `root_ca`
/// already stored as type 0 in the line's security tag (`jigs.sec_tag`).
fn start_modems(
    cfg: &Config,
    boards: usize,
    verified: &HashSet<String>,
    root_ca: &[u8],
) -> crate::Result<Started> {
    let (mut feed, rx) = Feed::new(boards);
    let run = if cfg.jigs.stamp_serials {
        // Tenths of a second, six digits: new each run (they wrap after 27 hours).
        let tenths = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 100_000_000;
        (tenths % 1_000_000) as u32
    } else {
        0
    };
    let sec_tag = cfg.jigs.driver_options().nrf91.sec_tag;
    for imei in imeis(run, boards) {
        if verified.contains(&imei) {
            continue;
        }
        let spec = ModemSpec {
            imei: imei.clone(),
            fw_version: VIRTUAL_MODEM_FIRMWARE.into(),
            stored: if cfg.jigs.boards_hold_root_ca {
                vec![(sec_tag, 0, root_ca.to_vec())]
            } else {
                Vec::new()
            },
        };
        feed.push(imei, spec);
    }
    let mut jigs = Vec::with_capacity(cfg.jigs.count);
    for i in 0..cfg.jigs.count {
        let mc = VirtualModemConfig {
            baud: cfg.jigs.baud,
            ..VirtualModemConfig::default()
        };
        let jig = VirtualModem::spawn(mc, rx.clone())?;
        jigs.push((format!("vmodem-{}", i + 1), LineJig::Modem(Arc::new(jig))));
    }
    Ok((jigs, Queue::Modem(feed)))
}

/// `zephyr-cred`: Zephyr boards with the TLS-credentials shell, identified by their
/// `hwinfo devid` (8 bytes: `f5`, a run number from the start time — new each run, or 0 with
/// `jigs.stamp_serials = false` — and the board's number). Built with a 2048-byte credential
/// buffer and a persistent backend; with `jigs.boards_hold_root_ca`, the firmware registers
/// `root_ca` under the line's security tag (`jigs.sec_tag`) at boot.
fn start_zephyr(
    cfg: &Config,
    boards: usize,
    verified: &HashSet<String>,
    root_ca: &[u8],
) -> crate::Result<Started> {
    let (mut feed, rx) = Feed::new(boards);
    let sec_tag = cfg.jigs.driver_options().zephyr.sec_tag;
    let run = if cfg.jigs.stamp_serials {
        // Tenths of a second, 24 bits: a new run number every run (wraps after ~19 days).
        let tenths = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 100_000_000;
        (tenths % (1 << 24)) as u32
    } else {
        0
    };
    for devid in devids(run, boards) {
        let mut spec = ZephyrSpec::new(&devid);
        if cfg.jigs.boards_hold_root_ca {
            spec = spec.with_root_ca(sec_tag, root_ca);
        }
        let id = spec.serial();
        if !verified.contains(&id) {
            feed.push(id, spec);
        }
    }
    let mut jigs = Vec::with_capacity(cfg.jigs.count);
    for i in 0..cfg.jigs.count {
        let zc = VirtualZephyrConfig {
            baud: cfg.jigs.baud,
            ..VirtualZephyrConfig::default()
        };
        let jig = VirtualZephyr::spawn(zc, rx.clone())?;
        jigs.push((format!("vzephyr-{}", i + 1), LineJig::Zephyr(Arc::new(jig))));
    }
    Ok((jigs, Queue::Zephyr(feed)))
}
