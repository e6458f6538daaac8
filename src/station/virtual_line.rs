//! The virtual line: `jigs.count` virtual jigs on pseudo-terminals, fed from one queue of
//! boards with generated serial numbers, so `station run` can provision a whole line on one
//! machine. The station opens each jig's pty path exactly as it opens a USB adapter.
//! Failed boards go back in the queue when the operator asks ([`VirtualLine::requeue`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::jig_cycle::{JigPort, ReleaseHook};
use crate::config::Config;
use crate::jig::{
    BoardSpec, DriverKind, DriverOptions, PortSettings, SerialGenerator, Slot, VirtualJig,
    VirtualJigConfig,
};
use crate::ledger::{DeviceState, Ledger};

/// The running virtual jigs.
pub struct VirtualLine {
    jigs: Vec<(String, Arc<VirtualJig>)>,
    settings: PortSettings,
    /// The queue stays open so failed boards can be placed again.
    queue: crossbeam_channel::Sender<BoardSpec>,
    /// Every board fed, by serial.
    boards: HashMap<String, BoardSpec>,
}

impl VirtualLine {
    /// Starts `jigs.count` jigs sharing a queue of `boards` boards. Serials are
    /// `<prefix>-<UTC yymmddHHMMSSmmm>-<n>`, so boards of different runs do not collide; or,
    /// with `jigs.stamp_serials = false`, `<prefix>-<n>` without the boards `ledger` shows
    /// verified. With `jigs.boards_hold_root_ca`, blank boards come with `root_ca` in their
    /// root-CA slot. Returns the line and the number of boards placed in its queue.
    pub fn start(
        cfg: &Config,
        boards: usize,
        ledger: &Ledger,
        root_ca: &[u8],
    ) -> crate::Result<(VirtualLine, usize)> {
        let (tx, rx) = crossbeam_channel::bounded(boards.max(1));
        let now = time::OffsetDateTime::now_utc();
        let stamp = now
            .format(time::macros::format_description!(
                "[year repr:last_two][month][day][hour][minute][second][subsecond digits:3]"
            ))
            .unwrap_or_else(|_| now.unix_timestamp().to_string());
        let mut fed = 0;
        let mut specs = HashMap::new();
        let mut feed = |spec: BoardSpec| {
            specs.insert(spec.serial.clone(), spec.clone());
            tx.send(spec).expect("queue sized for every board");
            fed += 1;
        };
        let generator = |prefix: &str| {
            let g = SerialGenerator::new(prefix, 6, 1);
            if cfg.jigs.boards_hold_root_ca {
                g.firmware_slot(Slot::RootCa, root_ca)
            } else {
                g
            }
        };
        if cfg.jigs.stamp_serials {
            let prefix = format!("{}-{stamp}-", cfg.jigs.serial_prefix);
            for spec in generator(&prefix).take(boards) {
                feed(spec);
            }
        } else {
            let verified: HashSet<String> = ledger
                .devices()?
                .into_iter()
                .filter(|d| d.state == DeviceState::Verified)
                .map(|d| d.serial)
                .collect();
            let prefix = format!("{}-", cfg.jigs.serial_prefix);
            for spec in generator(&prefix).take(boards) {
                if !verified.contains(&spec.serial) {
                    feed(spec);
                }
            }
        }
        let mut jigs = Vec::with_capacity(cfg.jigs.count);
        for i in 0..cfg.jigs.count {
            let mut jc = VirtualJigConfig::new(&cfg.jigs.flash_dir);
            jc.baud = cfg.jigs.baud;
            let jig = VirtualJig::spawn(jc, rx.clone())?;
            jigs.push((format!("vjig-{}", i + 1), Arc::new(jig)));
        }
        let line = VirtualLine {
            jigs,
            settings: cfg.jigs.port_settings(cfg.jigs.baud),
            queue: tx,
            boards: specs,
        };
        Ok((line, fed))
    }

    /// Every jig: its name, pty path, settings and driver.
    pub fn ports(&self) -> Vec<JigPort> {
        self.jigs
            .iter()
            .map(|(name, j)| JigPort {
                name: name.clone(),
                path: j.path().to_string(),
                settings: self.settings.clone(),
                driver: DriverKind::FleetJig,
                options: DriverOptions::default(),
            })
            .collect()
    }

    /// Places the boards `serials` (fed earlier, since taken off) in the queue again;
    /// returns how many.
    pub fn requeue(&self, serials: &[String]) -> usize {
        serials
            .iter()
            .filter_map(|s| self.boards.get(s))
            .filter(|spec| self.queue.try_send((*spec).clone()).is_ok())
            .count()
    }

    /// The simulated operator: takes a finished board off its jig.
    pub fn release_hook(&self) -> ReleaseHook {
        let jigs: HashMap<String, Arc<VirtualJig>> = self.jigs.iter().cloned().collect();
        Arc::new(move |jig: &str, serial: &str| {
            if let Some(j) = jigs.get(jig) {
                j.take_off(serial);
            }
        })
    }
}
