//! The pty thread of a [`VirtualModem`]: the NCS AT host's line handling in front of the
//! emulated modem. A command ends at CR or LF outside double quotes (inside quotes CR and
//! LF are part of the PEM); a line longer than 4096 bytes (`CONFIG_AT_HOST_CMD_MAX_LEN`'s
//! maximum) is dropped without an answer ("Buffer overflow, dropping"). The line is paced:
//! a command is handled when its last byte would have arrived at the baud rate, and its
//! answer reaches the station when its last byte would have.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::modem::{Modem, ModemFaults, ModemSpec, Outcome};
use crate::error::JigError;
use crate::link::line_time;
use crate::sim::faults::{FaultConfig, FaultPlan, RxFault, TxFault};
use crate::sim::served::{Served, lock};
use crate::sim::virtual_jig::pty::Pty;
use crate::sim::virtual_jig::sys;

/// The AT host's longest command line.
const MAX_LINE: usize = 4096;

/// How a virtual modem jig behaves.
#[derive(Debug, Clone)]
pub struct VirtualModemConfig {
    /// Emulated line rate; 0: unpaced.
    pub baud: u32,
    /// A rebooted modem ignores the line this long.
    pub boot_time: Duration,
    /// The virtual jigs' faults, counted in command lines from the jig's start (each fires
    /// once): `drop_rx_at` / `corrupt_rx_at` / `corrupt_rx_probability` lose the line,
    /// `reboot_at` reboots the modem before it runs the line, `drop_tx_bytes_at` drops a
    /// few bytes of its answer, `stall` delays it, `flip_bit_in` stores every write of that
    /// item with one bit flipped. The rest are the jig protocol's and do not apply.
    pub faults: FaultConfig,
    /// Faults only a modem has.
    pub modem_faults: ModemFaults,
}

impl Default for VirtualModemConfig {
    fn default() -> VirtualModemConfig {
        VirtualModemConfig {
            baud: 115_200,
            boot_time: Duration::from_millis(200),
            faults: FaultConfig::default(),
            modem_faults: ModemFaults::default(),
        }
    }
}

struct Shared {
    take_off: Mutex<Option<String>>,
    current: Mutex<Option<String>>,
    modem_faults: Mutex<ModemFaults>,
    /// Faults armed by [`VirtualModem::set_faults`], taken by the thread at its next line.
    pending_faults: Mutex<Option<FaultConfig>>,
    /// Every modem's store when it left the jig, by IMEI (a board put back keeps its NVM).
    stores: Mutex<HashMap<String, ModemStore>>,
}

/// A modem's credential store: (sec_tag, type, content).
pub type ModemStore = Vec<(u32, u8, Vec<u8>)>;

/// nRF91 modems served on a pty behind a stable path, one at a time from a queue.
pub struct VirtualModem {
    served: Served,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for VirtualModem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualModem")
            .field("path", &self.served.path())
            .finish_non_exhaustive()
    }
}

impl VirtualModem {
    /// Opens a pty behind a fresh stable path and serves modems from `boards`.
    pub fn spawn(
        config: VirtualModemConfig,
        boards: Receiver<ModemSpec>,
    ) -> Result<VirtualModem, JigError> {
        let shared = Arc::new(Shared {
            take_off: Mutex::new(None),
            current: Mutex::new(None),
            modem_faults: Mutex::new(config.modem_faults.clone()),
            pending_faults: Mutex::new(None),
            stores: Mutex::new(HashMap::new()),
        });
        let served = Served::spawn("virtual-modem", |pty, stop| {
            let mut host = Host {
                plan: FaultPlan::new(config.faults.clone()),
                config,
                pty,
                boards,
                shared: shared.clone(),
                stop,
                modem: None,
                line: Vec::new(),
                in_quotes: false,
                overflow: false,
                rx_done: Instant::now(),
                deaf_until: Instant::now(),
            };
            move || host.run()
        })?;
        Ok(VirtualModem { served, shared })
    }

    /// The path the station opens.
    pub fn path(&self) -> &str {
        self.served.path()
    }

    /// The IMEI of the modem on the jig.
    pub fn current_board(&self) -> Option<String> {
        lock(&self.shared.current).clone()
    }

    /// Takes modem `imei` off the jig (the next one is placed).
    pub fn take_off(&self, imei: &str) {
        *lock(&self.shared.take_off) = Some(imei.to_string());
    }

    /// A new fault plan (line count from zero) from the next command line on.
    pub fn set_faults(&self, faults: FaultConfig) {
        *lock(&self.shared.pending_faults) = Some(faults);
    }

    /// Modem faults for the modem on the jig and those placed from now on.
    pub fn set_modem_faults(&self, faults: ModemFaults) {
        *lock(&self.shared.modem_faults) = faults;
    }

    /// The store of modem `imei` (sec_tag, type, content): live if it is on the jig, else as
    /// it left the jig.
    pub fn store_of(&self, imei: &str) -> Option<ModemStore> {
        lock(&self.shared.stores).get(imei).cloned()
    }
}

struct Host {
    config: VirtualModemConfig,
    plan: FaultPlan,
    pty: Pty,
    boards: Receiver<ModemSpec>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    modem: Option<Modem>,
    line: Vec<u8>,
    in_quotes: bool,
    overflow: bool,
    /// When the last byte read so far has fully arrived over the emulated line.
    rx_done: Instant,
    /// A rebooting modem ignores the line until then.
    deaf_until: Instant,
}

impl Host {
    fn run(&mut self) {
        let fd = self.pty.master.as_raw_fd();
        let mut buf = [0u8; 1024];
        while !self.stop.load(Ordering::SeqCst) {
            self.take_off();
            if self.modem.is_none() {
                match self.boards.recv_timeout(Duration::from_millis(20)) {
                    Ok(spec) => self.place(spec),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
            let mut fds = [sys::PollFd::new(fd, true, false)];
            if sys::poll(&mut fds, Some(Duration::from_millis(20))).is_err() || !fds[0].readable() {
                continue;
            }
            let n = match sys::read(fd, &mut buf) {
                Ok(n) => n,
                Err(_) => continue,
            };
            let now = Instant::now();
            self.rx_done = self.rx_done.max(now) + line_time(n, self.config.baud);
            self.take_off();
            self.place_next();
            if self.modem.is_none() || now < self.deaf_until {
                // Nobody listens: an empty jig, or a modem still booting.
                self.line.clear();
                self.in_quotes = false;
                continue;
            }
            for &b in &buf[..n] {
                self.byte(b);
            }
        }
    }

    /// Places the next modem of the queue when the jig is empty.
    fn place_next(&mut self) {
        if self.modem.is_none()
            && let Ok(spec) = self.boards.try_recv()
        {
            self.place(spec);
        }
    }

    fn place(&mut self, mut spec: ModemSpec) {
        if let Some(stored) = lock(&self.shared.stores).get(&spec.imei) {
            spec.stored = stored.clone();
        }
        *lock(&self.shared.current) = Some(spec.imei.clone());
        let faults = lock(&self.shared.modem_faults).clone();
        self.modem = Some(Modem::new(spec, faults, self.plan.config()));
        self.line.clear();
        self.in_quotes = false;
        self.overflow = false;
    }

    fn save(&self) {
        if let Some(m) = &self.modem {
            let store = m
                .store
                .iter()
                .map(|((t, y), c)| (*t, *y, c.clone()))
                .collect();
            lock(&self.shared.stores).insert(m.spec.imei.clone(), store);
        }
    }

    fn take_off(&mut self) {
        let wanted = lock(&self.shared.take_off).take();
        if let (Some(w), Some(m)) = (wanted, &self.modem)
            && m.spec.imei == w
        {
            self.save();
            self.modem = None;
            *lock(&self.shared.current) = None;
        }
    }

    fn byte(&mut self, b: u8) {
        if b == b'"' {
            self.in_quotes = !self.in_quotes;
        }
        let end = !self.in_quotes && (b == b'\r' || b == b'\n');
        if !end {
            if self.line.len() >= MAX_LINE {
                self.overflow = true;
            } else {
                self.line.push(b);
            }
            return;
        }
        let mut raw = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.overflow) || raw.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        raw.push(b);
        self.command(&raw);
    }

    fn command(&mut self, raw: &[u8]) {
        // The command is whole when its last byte has arrived over the line.
        sleep_until(self.rx_done);
        if let Some(f) = lock(&self.shared.pending_faults).take() {
            self.plan = FaultPlan::new(f);
        }
        // A modem the operator took off meanwhile no longer answers; the next one in the
        // queue (if any) is on the jig at once.
        self.take_off();
        self.place_next();
        let (index, fault, stall) = self.plan.on_receive();
        let tx_fault = self.plan.on_transmit(index);
        let Some(modem) = self.modem.as_mut() else {
            return;
        };
        modem.faults = lock(&self.shared.modem_faults).clone();
        let fault = match fault {
            RxFault::Unplug | RxFault::Nak(_) => RxFault::None,
            f => f,
        };
        match modem.handle(raw, fault) {
            Outcome::Answer(mut bytes) => {
                self.save();
                sleep_until(Instant::now() + stall);
                // Echo goes out while the command comes in (full duplex); the answer after.
                let echoed = if bytes.starts_with(raw) { raw.len() } else { 0 };
                if tx_fault == TxFault::DropBytes && bytes.len() > echoed + 4 {
                    let mid = echoed + (bytes.len() - echoed) / 2;
                    bytes.drain(mid - 2..mid + 2);
                }
                sleep_until(Instant::now() + line_time(bytes.len() - echoed, self.config.baud));
                self.send(&bytes);
            }
            Outcome::Lost => {}
            Outcome::Rebooted => {
                self.save();
                self.deaf_until = Instant::now() + self.config.boot_time;
                self.in_quotes = false;
            }
        }
    }

    fn send(&mut self, mut bytes: &[u8]) {
        let fd = self.pty.master.as_raw_fd();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !bytes.is_empty() && Instant::now() < deadline {
            match sys::write(fd, bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}
