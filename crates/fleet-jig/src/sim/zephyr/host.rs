//! [`VirtualZephyr`]: Zephyr boards served on a pty behind a stable path, one at a time from
//! a queue, as `VirtualJig` serves our own boards, so the `zephyr-cred` driver runs end to end
//! against a real serial port.
//!
//! The line is paced both ways at the baud rate (the virtual jig's [`Timeline`]s). The
//! board's side is Zephyr's interrupt-driven serial shell backend: bytes land in an RX ring of
//! `CONFIG_SHELL_BACKEND_SERIAL_RX_RING_BUFFER_SIZE` bytes, and the shell thread takes them
//! from there. That thread is busy while a command runs (a flash write) and while its output
//! does not fit the small TX ring (8 bytes): it then waits for the line. Bytes arriving while
//! the ring is full are lost and `RX ring buffer full.` is logged — which is what happens to a
//! host that sends `cred buf` lines without waiting for each `Stored` (Zephyr PR #90358).
//!
//! Faults come from the virtual jig's [`FaultConfig`], counted per command line (the index of
//! a line among those the board started receiving): `drop_rx_at` (the line is lost on the
//! wire, terminator included), `corrupt_rx_at`/`corrupt_rx_probability` (one character of the
//! line garbled), `reboot_at` (the board reboots as the line starts), `unplug_at` (the board
//! is pulled off), `stall` (the board stops reading for a while first), `flip_bit_in` (a
//! credential stored with a bit flipped) and `refuse_commit` (every `cred add` fails in the
//! backend). The others are frame faults of our own protocol and do nothing here.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};

use super::shell::{Effect, Shell, ShellFaults, Store, ZephyrSpec};
use crate::driver::zephyr::shell_text::CredType;
use crate::error::JigError;
use crate::sim::faults::{FaultConfig, FaultPlan, RxFault};
use crate::sim::served::{Served, lock};
use crate::sim::uart::Timeline;
use crate::sim::virtual_jig::pty::Pty;
use crate::sim::virtual_jig::sys;

/// `CONFIG_SHELL_BACKEND_SERIAL_TX_RING_BUFFER_SIZE`'s default: output the shell thread can
/// leave behind before it waits for the line.
const TX_RING: usize = 8;
/// How often an empty jig looks for the next board.
const PLACE_POLL: Duration = Duration::from_millis(10);

/// How a virtual Zephyr jig behaves.
#[derive(Debug, Clone)]
pub struct VirtualZephyrConfig {
    /// Emulated line rate; 0: unpaced.
    pub baud: u32,
    /// A rebooting board ignores the line this long.
    pub boot_time: Duration,
    pub faults: FaultConfig,
}

impl Default for VirtualZephyrConfig {
    fn default() -> VirtualZephyrConfig {
        VirtualZephyrConfig {
            baud: 115_200,
            boot_time: Duration::from_millis(50),
            faults: FaultConfig::default(),
        }
    }
}

/// Board-side counters of a [`VirtualZephyr`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZephyrStats {
    pub boards_placed: u64,
    /// Bytes lost because the RX ring was full.
    pub rx_overrun_bytes: u64,
    pub faults_injected: u64,
    pub reboots: u64,
    /// Device ids in the order the boards were placed.
    pub serials: Vec<String>,
}

struct Shared {
    take_off: Mutex<Option<String>>,
    current: Mutex<Option<String>>,
    pending_faults: Mutex<Option<FaultConfig>>,
    stats: Mutex<ZephyrStats>,
    /// What each board holds, by device id: the one on the jig as of its last command, and
    /// those taken off (a persistent backend keeps them for when the board is put back).
    stores: Mutex<HashMap<String, Store>>,
}

/// Zephyr boards served on a pty behind a stable path, one at a time from a queue.
pub struct VirtualZephyr {
    served: Served,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for VirtualZephyr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualZephyr")
            .field("path", &self.served.path())
            .finish_non_exhaustive()
    }
}

impl VirtualZephyr {
    /// Opens a pty behind a fresh stable path and serves boards from `boards`.
    pub fn spawn(
        config: VirtualZephyrConfig,
        boards: Receiver<ZephyrSpec>,
    ) -> Result<VirtualZephyr, JigError> {
        let shared = Arc::new(Shared {
            take_off: Mutex::new(None),
            current: Mutex::new(None),
            pending_faults: Mutex::new(None),
            stats: Mutex::new(ZephyrStats::default()),
            stores: Mutex::new(HashMap::new()),
        });
        let served = Served::spawn("virtual-zephyr", |pty, stop| {
            let mut host = Host {
                rx: Timeline::new(config.baud),
                tx: Timeline::new(config.baud),
                plan: FaultPlan::new(config.faults.clone()),
                config,
                pty,
                boards,
                queue_closed: false,
                board: None,
                placed_at: Instant::now(),
                awake_at: Instant::now(),
                busy_until: Instant::now(),
                ring: VecDeque::new(),
                overrun: false,
                line_fault: LineFault::None,
                line_pos: 0,
                shared: shared.clone(),
                stop,
            };
            move || host.run()
        })?;
        Ok(VirtualZephyr { served, shared })
    }

    /// The path the station opens.
    pub fn path(&self) -> &str {
        self.served.path()
    }

    /// The operator takes board `serial` off the jig if it is still there.
    pub fn take_off(&self, serial: &str) {
        *lock(&self.shared.take_off) = Some(serial.to_string());
    }

    /// Device id of the board on the jig now, if any.
    pub fn current_board(&self) -> Option<String> {
        lock(&self.shared.current).clone()
    }

    /// Replaces the fault configuration; line indices count from the next line.
    pub fn set_faults(&self, faults: FaultConfig) {
        *lock(&self.shared.pending_faults) = Some(faults);
    }

    pub fn stats(&self) -> ZephyrStats {
        lock(&self.shared.stats).clone()
    }

    /// What board `serial` holds: (sectag, type name as `cred list` prints it, bytes stored).
    pub fn credentials(&self, serial: &str) -> Vec<(u32, &'static str, Vec<u8>)> {
        lock(&self.shared.stores)
            .get(serial)
            .map(|s| {
                s.iter()
                    .map(|((tag, ty), v)| (*tag, ty.compact(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What happens to the rest of the command line being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineFault {
    None,
    /// Lost on the wire up to and with its terminator.
    Drop,
    /// One character garbled.
    Corrupt,
}

/// The board thread's state.
struct Host {
    config: VirtualZephyrConfig,
    pty: Pty,
    rx: Timeline,
    tx: Timeline,
    plan: FaultPlan,
    boards: Receiver<ZephyrSpec>,
    queue_closed: bool,
    board: Option<Shell>,
    /// When the board on the jig powered up (its log timestamps count from there).
    placed_at: Instant,
    /// A rebooting board ignores the line until then.
    awake_at: Instant,
    /// The shell thread reads its RX ring again from then.
    busy_until: Instant,
    /// The serial backend's RX ring.
    ring: VecDeque<u8>,
    /// Bytes were lost since the shell last read the ring.
    overrun: bool,
    line_fault: LineFault,
    /// Characters of the current line received so far.
    line_pos: usize,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl Host {
    fn run(&mut self) {
        sys::precise_timers();
        let mut buf = vec![0u8; 4096];
        while !self.stop.load(Ordering::SeqCst) {
            if let Some(f) = lock(&self.shared.pending_faults).take() {
                self.plan = FaultPlan::new(f);
            }
            let take_off = lock(&self.shared.take_off).take();
            if let Some(serial) = take_off
                && self
                    .board
                    .as_ref()
                    .is_some_and(|b| b.spec().serial() == serial)
            {
                self.remove_board();
            }
            if self.board.is_none() {
                self.place_next();
            }
            let now = Instant::now();
            loop {
                match sys::read(self.pty.master.as_raw_fd(), &mut buf) {
                    Ok(0) => break,
                    Ok(n) => self.rx.push(&buf[..n], now),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            self.advance(Instant::now());
            self.flush_tx(Instant::now());
            self.wait();
        }
    }

    fn place_next(&mut self) {
        if self.queue_closed {
            return;
        }
        match self.boards.try_recv() {
            Ok(spec) => {
                let serial = spec.serial();
                // A board put back keeps what a persistent backend stored.
                let kept = if spec.volatile {
                    None
                } else {
                    lock(&self.shared.stores).get(&serial).cloned()
                };
                let shell = Shell::new(spec, kept);
                let mut out = Vec::new();
                shell.boot_banner(&mut out);
                let now = Instant::now();
                self.tx.push(&out, now);
                self.placed_at = now;
                self.awake_at = now;
                self.busy_until = now;
                self.ring.clear();
                self.line_fault = LineFault::None;
                self.line_pos = 0;
                lock(&self.shared.stores).insert(serial.clone(), shell.store().clone());
                self.board = Some(shell);
                *lock(&self.shared.current) = Some(serial.clone());
                let mut s = lock(&self.shared.stats);
                s.boards_placed += 1;
                s.serials.push(serial);
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => self.queue_closed = true,
        }
    }

    fn remove_board(&mut self) {
        if let Some(b) = self.board.take() {
            let serial = b.spec().serial();
            let mut stores = lock(&self.shared.stores);
            if b.spec().volatile {
                // Power is gone: so is what the volatile backend held.
                stores.remove(&serial);
            } else {
                stores.insert(serial, b.store().clone());
            }
            *lock(&self.shared.current) = None;
        }
        self.ring.clear();
    }

    /// Runs the board's clock to `now`: bytes into the RX ring as they arrive, the shell
    /// thread taking them whenever it is free.
    fn advance(&mut self, now: Instant) {
        loop {
            let free = self.busy_until;
            self.fill_ring(free.min(now));
            if free > now {
                break;
            }
            if self.overrun {
                self.overrun = false;
                if let Some(b) = self.board.as_ref() {
                    let mut out = Vec::new();
                    b.log_rx_overrun(free.duration_since(self.placed_at), &mut out);
                    self.emit(&out, free);
                }
            }
            if let Some(byte) = self.ring.pop_front() {
                self.process(byte, free);
                continue;
            }
            match self.rx.next_due() {
                Some(t) if t <= now => self.busy_until = t.max(free),
                _ => break,
            }
        }
    }

    /// Bytes through the line by `until` go into the RX ring; what does not fit is lost.
    /// Unpaced (baud 0), every byte is through at once: the pty's buffer stands in for the
    /// line and the ring takes what it has room for (flow control by the kernel), so memory
    /// speed loses nothing.
    fn fill_ring(&mut self, until: Instant) {
        loop {
            let room = self.board.as_ref().map_or(0, |b| b.spec().rx_ring);
            let asleep = self.board.is_none() || until < self.awake_at;
            let ready = self.rx.ready(until);
            let n = if self.rx.is_paced() || asleep {
                ready.len()
            } else {
                ready.len().min(room.saturating_sub(self.ring.len()))
            };
            if n == 0 {
                return;
            }
            let ready = &ready[..n];
            // Nobody listening (an empty jig, a board still booting): the bytes are lost.
            if !asleep {
                for &b in ready {
                    if self.ring.len() < room {
                        self.ring.push_back(b);
                    } else {
                        self.overrun = true;
                        lock(&self.shared.stats).rx_overrun_bytes += 1;
                    }
                }
            }
            self.rx.consume(n);
        }
    }

    /// The shell thread takes `byte` at `at`.
    fn process(&mut self, mut byte: u8, at: Instant) {
        let Some(shell) = self.board.as_ref() else {
            return;
        };
        let newline = byte == b'\r' || byte == b'\n';
        if shell.at_line_start() && self.line_fault == LineFault::None && !newline {
            let (_, fault, stall) = self.plan.on_receive();
            let injected = fault != RxFault::None || !stall.is_zero();
            if injected {
                lock(&self.shared.stats).faults_injected += 1;
            }
            self.line_pos = 0;
            match fault {
                RxFault::Unplug => {
                    tracing::info!("virtual zephyr: fault: board pulled off the jig");
                    self.remove_board();
                    return;
                }
                RxFault::Reboot => {
                    tracing::info!("virtual zephyr: fault: board rebooted");
                    self.reboot(at);
                    return;
                }
                RxFault::Drop => self.line_fault = LineFault::Drop,
                RxFault::Corrupt => self.line_fault = LineFault::Corrupt,
                RxFault::None | RxFault::Nak(_) => {}
            }
            if !stall.is_zero() {
                // The shell stops reading; this byte waits at the head of the ring.
                self.ring.push_front(byte);
                self.busy_until = at + stall;
                return;
            }
        }
        match self.line_fault {
            LineFault::Drop => {
                if newline {
                    self.line_fault = LineFault::None;
                }
                return;
            }
            LineFault::Corrupt if self.line_pos == 12 && !newline => {
                byte ^= 0x01;
                self.line_fault = LineFault::None;
            }
            _ => {}
        }
        if newline {
            self.line_fault = LineFault::None;
        }
        self.line_pos += 1;
        let config = self.plan.config();
        let faults = ShellFaults {
            flip_bit_in: config.flip_bit_in.and_then(CredType::of_slot),
            refuse_add: config.refuse_commit,
        };
        let Some(shell) = self.board.as_mut() else {
            return;
        };
        shell.faults = faults;
        let mut out = Vec::new();
        let effect = shell.feed(byte, &mut out);
        if newline {
            let serial = shell.spec().serial();
            lock(&self.shared.stores).insert(serial, shell.store().clone());
        }
        match effect {
            Effect::Ready => self.emit(&out, at),
            Effect::Busy(d) => {
                self.emit(&out, at + d);
                self.busy_until = self.busy_until.max(at + d);
            }
            Effect::Reboot => {
                lock(&self.shared.stats).reboots += 1;
                self.ring.clear();
                self.emit(&out, at + self.config.boot_time);
                self.awake_at = at + self.config.boot_time;
                self.busy_until = self.awake_at;
                self.placed_at = self.awake_at;
            }
        }
    }

    fn reboot(&mut self, at: Instant) {
        let Some(shell) = self.board.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        shell.reboot(&mut out);
        let serial = shell.spec().serial();
        lock(&self.shared.stores).insert(serial, shell.store().clone());
        lock(&self.shared.stats).reboots += 1;
        self.ring.clear();
        self.line_fault = LineFault::None;
        self.awake_at = at + self.config.boot_time;
        self.busy_until = self.awake_at;
        self.placed_at = self.awake_at;
        self.emit(&out, self.awake_at);
    }

    /// Queues `out` on the line from `at`; the shell thread waits while more than the TX
    /// ring's worth is still to go.
    fn emit(&mut self, out: &[u8], at: Instant) {
        if out.is_empty() {
            return;
        }
        self.tx.push(out, at);
        let backlog = self.tx.len();
        if backlog > TX_RING
            && let Some(t) = self.tx.due_at(backlog - 1 - TX_RING)
        {
            self.busy_until = self.busy_until.max(t);
        }
    }

    /// Hands the station every byte whose time on the line is over (what the pty cannot take
    /// now waits).
    fn flush_tx(&mut self, now: Instant) {
        let fd = self.pty.master.as_raw_fd();
        loop {
            let ready = self.tx.ready(now);
            if ready.is_empty() {
                return;
            }
            let n = ready.len();
            match sys::write(fd, ready) {
                Ok(w) if w == n => self.tx.consume(n),
                Ok(w) => {
                    self.tx.consume(w);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Sleeps until something is due: output to hand over (a short answer when its last
    /// byte is through, a long one every millisecond), the shell free again with bytes to
    /// take, the end of the next line arriving (characters before it are taken at their own
    /// arrival times when the thread wakes), new input, or the next look for a board.
    fn wait(&mut self) {
        let now = Instant::now();
        let ms = Duration::from_millis(1);
        let mut at = now + PLACE_POLL;
        if let Some(first) = self.tx.next_due() {
            let last = self.tx.due_at(self.tx.len() - 1).unwrap_or(first);
            at = at.min(last.min(first + ms));
        }
        if !self.ring.is_empty() {
            at = at.min(self.busy_until);
        }
        if let Some(next) = self.rx.next_due() {
            let line_end = self.rx.next_due_of(b'\r').unwrap_or(next + ms);
            at = at.min(line_end.min(next + ms).max(self.busy_until));
        }
        let timeout = at.saturating_duration_since(now);
        if timeout.is_zero() {
            return;
        }
        let mut fds = [sys::PollFd::new(self.pty.master.as_raw_fd(), true, false)];
        if sys::poll(&mut fds, Some(timeout)).is_err() {
            std::thread::sleep(ms);
        }
    }
}

/// Device ids for a virtual line: 8 bytes, `f5` then the 3-byte run number (new each run
/// unless `run` is fixed) then the board's 4-byte number, counting from 1.
pub fn devids(run: u32, n: usize) -> impl Iterator<Item = Vec<u8>> {
    let r = run.to_be_bytes();
    (1..=n as u32).map(move |i| {
        let c = i.to_be_bytes();
        vec![0xf5, r[1], r[2], r[3], c[0], c[1], c[2], c[3]]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devids_differ_by_run_and_board() {
        let a: Vec<_> = devids(1, 2).collect();
        let b: Vec<_> = devids(2, 2).collect();
        assert_eq!(hex::encode(&a[0]), "f500000100000001");
        assert_ne!(a[0], a[1]);
        assert_ne!(a[0], b[0]);
        assert_eq!(devids(1, 2).collect::<Vec<_>>(), a);
    }
}
