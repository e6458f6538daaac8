//! `VirtualJig`: a test jig on a pseudo-terminal. A thread serves the pty's master end as a
//! board would; the station opens the jig's path with `JigLink::open`, exactly as it opens a
//! USB adapter. Boards come from a queue, one placed at a time; after a RESET, a board with a
//! committed identity is taken off and the next one placed.
//!
//! The line is emulated exactly (see [`Line`]): what the station writes is read off the pty
//! as soon as it is there and stamped with the time each byte would arrive over a UART at
//! the configured baud; the board sees a frame when its delimiter has arrived, and its
//! answers reach the station when their last byte would have. An answer's first bit goes out
//! after the board's own work on the frame (a flash write is real time), counted from when
//! the frame arrived: how late the host got round to running the board thread (up to
//! 2 ms) is the host's scheduling, not the emulated board's, and is not charged to
//! the line. Nothing ever crosses faster than the baud rate. The board's RX buffer is
//! bounded: bytes that arrive while the board is busy (a slow flash, a stall) and the buffer
//! is full are lost, as on a real UART.
//!
//! The jig's path is stable: a symlink in a private temp directory that points to the
//! current pty. [`VirtualJig::unplug`] makes the pty go away (the station's reads and writes
//! fail, opening the path fails), [`VirtualJig::replug`] puts a new pty behind the same path,
//! with the same board and its flash — as a USB adapter pulled and plugged back reappears as
//! the same `/dev/ttyUSB0`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use serialport::{SerialPort, TTYPort};

use crate::jig::error::JigError;
use crate::jig::sim::board::{Board, BoardFaults, BoardParams, BoardSpec, Outcome};
use crate::jig::sim::faults::{FaultConfig, FaultPlan, RxFault, TxFault};
use crate::jig::sim::flash::Flash;
use crate::jig::sim::pacing::Line;
use crate::jig::wire::codec::{self, CodecError, DELIMITER, FrameAssembler};
use crate::jig::wire::protocol::cmd;

/// How the virtual jig and its boards behave.
#[derive(Debug, Clone)]
pub struct VirtualJigConfig {
    /// Where board flash files go (one per serial).
    pub flash_dir: PathBuf,
    /// Emulated line rate; 0 = unpaced (memory speed).
    pub baud: u32,
    /// Limits every board announces.
    pub params: BoardParams,
    /// A rebooted board ignores the line this long.
    pub boot_time: Duration,
    /// Emulated flash-write time per PUT: the board handles nothing else meanwhile, and the
    /// bytes that keep arriving fill its RX buffer.
    pub put_process_time: Duration,
    pub faults: FaultConfig,
    /// Keep a copy of every byte the board sends (see [`VirtualJig::tx_log`]).
    pub record_tx: bool,
}

impl VirtualJigConfig {
    pub fn new(flash_dir: &Path) -> VirtualJigConfig {
        VirtualJigConfig {
            flash_dir: flash_dir.to_path_buf(),
            baud: 115_200,
            params: BoardParams::default(),
            boot_time: Duration::from_millis(20),
            put_process_time: Duration::ZERO,
            faults: FaultConfig::default(),
            record_tx: false,
        }
    }
}

/// Board-side counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JigStats {
    /// Frames received with a valid CRC.
    pub frames_received: u64,
    /// Frames dropped on receipt: bad CRC, bad COBS, bad length.
    pub frames_dropped: u64,
    /// Answers queued for the line.
    pub frames_sent: u64,
    /// Bytes read off the pty (what the station wrote).
    pub bytes_received: u64,
    /// Bytes delivered to the station.
    pub bytes_sent: u64,
    /// Bytes lost because they arrived while the RX buffer was full.
    pub rx_overrun_bytes: u64,
    pub boards_placed: u64,
    pub boards_removed: u64,
    pub faults_injected: u64,
    /// Times the adapter was unplugged and plugged back.
    pub unplugs: u64,
    pub replugs: u64,
    /// Serials in the order they were placed.
    pub serials: Vec<String>,
}

struct Shared {
    stop: AtomicBool,
    /// New fault config to apply (taken by the jig thread, checked per frame so a test can
    /// arm faults and send at once).
    pending_faults: Mutex<Option<FaultConfig>>,
    stats: Mutex<JigStats>,
    tx_log: Mutex<Vec<u8>>,
    current: Mutex<Option<String>>,
    /// A board the operator takes off the jig (whatever its state).
    take_off: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Requests to the board thread that the caller waits for.
enum Request {
    Unplug(Sender<()>),
    Replug(Sender<Result<(), JigError>>),
}

/// A virtual jig on a pty pair behind a stable path. Dropping it stops the board thread.
pub struct VirtualJig {
    /// The stable path (a symlink to the current pty).
    path: String,
    dir: PathBuf,
    flash_dir: PathBuf,
    shared: Arc<Shared>,
    requests: Sender<Request>,
    /// Writing a byte here wakes the board thread.
    waker: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for VirtualJig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualJig")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl VirtualJig {
    /// Opens a pty pair behind a fresh stable path and starts serving boards from `boards`.
    pub fn spawn(
        config: VirtualJigConfig,
        boards: Receiver<BoardSpec>,
    ) -> Result<VirtualJig, JigError> {
        let fixture = |detail: String| JigError::Fixture { detail };
        std::fs::create_dir_all(&config.flash_dir).map_err(|e| JigError::Flash {
            path: config.flash_dir.clone(),
            detail: format!("cannot create the flash directory: {e}"),
        })?;
        let dir =
            private_dir().map_err(|e| fixture(format!("cannot create the jig directory: {e}")))?;
        let link = dir.join("tty");
        let path = link.to_string_lossy().into_owned();
        let pty = match Pty::open(&link) {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let (waker, wake_rx) = UnixStream::pair()
            .map_err(|e| fixture(format!("cannot create the wake-up socket: {e}")))?;
        for s in [&waker, &wake_rx] {
            s.set_nonblocking(true)
                .map_err(|e| fixture(format!("cannot set up the wake-up socket: {e}")))?;
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            pending_faults: Mutex::new(None),
            stats: Mutex::new(JigStats::default()),
            tx_log: Mutex::new(Vec::new()),
            current: Mutex::new(None),
            take_off: Mutex::new(None),
        });
        let (requests, request_rx) = crossbeam_channel::unbounded();
        let flash_dir = config.flash_dir.clone();
        let mut worker = Worker {
            rx: Line::new(config.baud),
            tx: Line::new(config.baud),
            plan: FaultPlan::new(config.faults.clone()),
            config,
            link,
            pty: Some(pty),
            readable: true,
            boards,
            queue_closed: false,
            board: None,
            awake_at: Instant::now(),
            asm: FrameAssembler::new(),
            held: VecDeque::new(),
            deferred: None,
            tx_blocked_since: None,
            out: Vec::with_capacity(codec::MAX_WIRE),
            read_buf: vec![0; 8192],
            requests: request_rx,
            wake: wake_rx,
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("virtual-jig {path}"))
            .spawn(move || worker.run())
            .map_err(|e| fixture(format!("cannot start the board thread: {e}")))?;
        Ok(VirtualJig {
            path,
            dir,
            flash_dir,
            shared,
            requests,
            waker,
            thread: Some(thread),
        })
    }

    /// The path the station opens: stable across [`unplug`](Self::unplug) and
    /// [`replug`](Self::replug).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where the flash file of board `serial` is.
    pub fn flash_path(&self, serial: &str) -> PathBuf {
        Flash::path_for(&self.flash_dir, serial)
    }

    /// Replaces the fault configuration; frame indices count from the next frame received.
    pub fn set_faults(&self, faults: FaultConfig) {
        *lock(&self.shared.pending_faults) = Some(faults);
    }

    pub fn stats(&self) -> JigStats {
        lock(&self.shared.stats).clone()
    }

    /// Serial of the board on the jig now, if any.
    pub fn current_board(&self) -> Option<String> {
        lock(&self.shared.current).clone()
    }

    /// The operator takes board `serial` off the jig if it is still there (a failed board
    /// keeps its place after RESET; a real operator removes it and places the next one).
    pub fn take_off(&self, serial: &str) {
        *lock(&self.shared.take_off) = Some(serial.to_string());
        self.wake();
    }

    /// Every byte the board has sent so far (when `record_tx` is set).
    pub fn tx_log(&self) -> Vec<u8> {
        lock(&self.shared.tx_log).clone()
    }

    /// Pulls the jig's USB adapter: the pty goes away, so the station's reads and writes on
    /// it fail and opening [`path`](Self::path) fails until [`replug`](Self::replug). The
    /// adapter powers the board: it loses its RAM (staged data, session) but not its flash.
    /// Returns once the pty is gone.
    pub fn unplug(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.requests.send(Request::Unplug(tx)).is_ok() {
            self.wake();
            let _ = rx.recv();
        }
    }

    /// Plugs the adapter back: a new pty behind the same path, the same board on the jig.
    /// Returns once the path can be opened.
    pub fn replug(&self) -> Result<(), JigError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let gone = || JigError::Fixture {
            detail: "the virtual jig's board thread has stopped".into(),
        };
        self.requests
            .send(Request::Replug(tx))
            .map_err(|_| gone())?;
        self.wake();
        rx.recv().map_err(|_| gone())?
    }

    /// Stops the board thread and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn wake(&self) {
        // A full socket already holds a wake-up; nothing to do then.
        let _ = (&self.waker).write(&[1]);
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for VirtualJig {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Prefix of the jigs' private directories in the temp directory: `<prefix><pid>-<n>`.
const DIR_PREFIX: &str = "fleet-station-jig-";

/// A fresh directory only we can use, for the jig's stable path.
fn private_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(remove_dirs_of_dead_processes);
    loop {
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Removes the jig directories a killed process left behind (its stable paths, dangling).
fn remove_dirs_of_dead_processes() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The adapter while plugged in: a pty pair, and the stable path pointing at its slave.
struct Pty {
    master: TTYPort,
    /// Our own handle on the slave end, so the master never sees a hang-up while the station
    /// closes and reopens the port.
    _slave: TTYPort,
}

impl Pty {
    fn open(link: &Path) -> Result<Pty, JigError> {
        let fixture = |detail: String| JigError::Fixture { detail };
        let (master, slave) =
            TTYPort::pair().map_err(|e| fixture(format!("cannot open a pty pair: {e}")))?;
        let target = slave
            .name()
            .ok_or_else(|| fixture("the pty slave has no path".into()))?;
        sys::set_nonblocking(master.as_raw_fd())
            .map_err(|e| fixture(format!("cannot make the pty non-blocking: {e}")))?;
        // Point the stable path at the new pty atomically (symlink beside it, rename over).
        let tmp = link.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)
            .and_then(|()| std::fs::rename(&tmp, link))
            .map_err(|e| fixture(format!("cannot link {} to {target}: {e}", link.display())))?;
        Ok(Pty {
            master,
            _slave: slave,
        })
    }
}

/// A frame the board took off the line, owned (the assembler's buffer is reused).
type RxFrame = Result<(u8, u16, u32, Vec<u8>), CodecError>;

/// A frame the board handles later: after a stall, or after the flash time of a PUT.
struct Deferred {
    at: Instant,
    index: u64,
    frame: (u8, u16, u32, Vec<u8>),
}

/// Most bytes the line holds before the board stops reading the pty (the station is far
/// ahead of the line; the pty's own buffer then fills).
const LINE_CAP: usize = 64 * 1024;
/// A station that does not read its port for this long loses what the board sends.
const TX_GIVE_UP: Duration = Duration::from_secs(1);
/// How often an empty jig looks for the next board.
const PLACE_POLL: Duration = Duration::from_millis(10);
/// Most of the board thread's own lateness (the host was busy) that the emulated line makes
/// up for; anything later than this is charged to the line as a slow board.
const LATE_MAX: Duration = Duration::from_millis(2);

/// The board thread's state.
struct Worker {
    config: VirtualJigConfig,
    /// The stable path.
    link: PathBuf,
    /// `None` while unplugged.
    pty: Option<Pty>,
    /// The last wait said the pty has bytes (or we have not waited yet).
    readable: bool,
    boards: Receiver<BoardSpec>,
    queue_closed: bool,
    board: Option<Board>,
    /// A rebooting board ignores the line until then.
    awake_at: Instant,
    asm: FrameAssembler,
    /// Station → board bytes on their way.
    rx: Line,
    /// Board → station bytes on their way.
    tx: Line,
    /// Bytes that arrived while the board was busy: its RX buffer (with the assembler's
    /// partial frame).
    held: VecDeque<u8>,
    /// The board is busy until this frame is handled.
    deferred: Option<Deferred>,
    tx_blocked_since: Option<Instant>,
    plan: FaultPlan,
    out: Vec<u8>,
    read_buf: Vec<u8>,
    requests: Receiver<Request>,
    wake: UnixStream,
    shared: Arc<Shared>,
}

impl Worker {
    fn run(&mut self) {
        sys::precise_timers();
        while !self.shared.stop.load(Ordering::SeqCst) {
            self.serve_requests();
            let take_off = lock(&self.shared.take_off).take();
            if let Some(serial) = take_off
                && self
                    .board
                    .as_ref()
                    .is_some_and(|b| b.spec().serial == serial)
            {
                self.remove_board();
            }
            if self.board.is_none() {
                self.place_next();
            }
            if self.readable {
                self.read_line(Instant::now());
            }
            self.advance(Instant::now());
            self.flush_tx(Instant::now());
            let wake_at = self.next_wake();
            self.wait(wake_at);
        }
    }

    fn serve_requests(&mut self) {
        while let Ok(request) = self.requests.try_recv() {
            match request {
                Request::Unplug(ack) => {
                    self.unplug_port();
                    let _ = ack.send(());
                }
                Request::Replug(ack) => {
                    let _ = ack.send(self.replug_port());
                }
            }
        }
    }

    fn unplug_port(&mut self) {
        if self.pty.is_none() {
            return;
        }
        // The device node goes first: from now on opening the path fails.
        let _ = std::fs::remove_file(&self.link);
        self.pty = None;
        self.rx.clear();
        self.tx.clear();
        self.tx_blocked_since = None;
        self.reset_board_rx();
        if let Some(b) = self.board.as_mut() {
            b.reboot();
        }
        lock(&self.shared.stats).unplugs += 1;
        tracing::info!(path = %self.link.display(), "virtual jig: adapter unplugged");
    }

    fn replug_port(&mut self) -> Result<(), JigError> {
        if self.pty.is_some() {
            return Ok(());
        }
        self.pty = Some(Pty::open(&self.link)?);
        self.readable = true;
        self.awake_at = Instant::now() + self.config.boot_time;
        lock(&self.shared.stats).replugs += 1;
        tracing::info!(path = %self.link.display(), "virtual jig: adapter plugged back");
        Ok(())
    }

    /// The board's RX side starts empty (new board, reboot, power loss).
    fn reset_board_rx(&mut self) {
        self.asm.reset();
        self.held.clear();
        self.deferred = None;
    }

    fn place_next(&mut self) {
        if self.queue_closed {
            return;
        }
        match self.boards.try_recv() {
            Ok(spec) => {
                let serial = spec.serial.clone();
                match Board::new(spec, self.config.params, &self.config.flash_dir) {
                    Ok(board) => {
                        self.board = Some(board);
                        self.awake_at = Instant::now();
                        self.reset_board_rx();
                        *lock(&self.shared.current) = Some(serial.clone());
                        let mut s = lock(&self.shared.stats);
                        s.boards_placed += 1;
                        s.serials.push(serial);
                    }
                    Err(e) => {
                        tracing::error!(serial = %serial, error = %e, "virtual jig: cannot place board")
                    }
                }
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => self.queue_closed = true,
        }
    }

    fn remove_board(&mut self) {
        if self.board.take().is_some() {
            self.reset_board_rx();
            *lock(&self.shared.current) = None;
            lock(&self.shared.stats).boards_removed += 1;
        }
    }

    /// Bytes the board's RX buffer can still take.
    fn rx_room(&self) -> usize {
        (self.config.params.rx_buffer as usize).saturating_sub(self.held.len() + self.asm.pending())
    }

    /// Whether to read the pty now. Unpaced, the pty's buffer stands in for the line and a
    /// busy board reads nothing (flow control by the kernel).
    fn wants_input(&self) -> bool {
        self.pty.is_some()
            && self.rx.len() < LINE_CAP
            && (self.rx.is_paced() || (self.deferred.is_none() && self.rx.is_empty()))
    }

    /// Takes what the station has written off the pty, stamped with `now`.
    fn read_line(&mut self, now: Instant) {
        self.readable = false;
        while self.wants_input() {
            let Some(pty) = self.pty.as_ref() else { return };
            let max = if self.rx.is_paced() {
                self.read_buf.len()
            } else {
                self.rx_room().clamp(1, self.read_buf.len())
            };
            match sys::read(pty.master.as_raw_fd(), &mut self.read_buf[..max]) {
                Ok(0) => return,
                Ok(n) => {
                    self.rx.push(&self.read_buf[..n], now);
                    lock(&self.shared.stats).bytes_received += n as u64;
                    if n < max {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "virtual jig: pty read failed; the adapter is gone");
                    self.unplug_port();
                    return;
                }
            }
        }
    }

    /// Moves the board's clock to `now`: bytes arrive, frames are handled, in time order.
    fn advance(&mut self, now: Instant) {
        loop {
            let byte_due = self.rx.next_due().filter(|t| *t <= now);
            let busy_until = self.deferred.as_ref().map(|d| d.at);
            match (byte_due, busy_until) {
                (None, None) => break,
                (None, Some(at)) if at > now => break,
                // A byte arrives while the board is busy: into the RX buffer (if it fits).
                (Some(b), Some(at)) if b < at => {
                    // Strictly before the board is free again, and no later than now.
                    let before = at.checked_sub(Duration::from_nanos(1)).unwrap_or(at);
                    self.hold(before.min(now).max(b));
                }
                (_, Some(at)) if at <= now => {
                    self.finish_deferred();
                    self.drain_held(at);
                }
                (Some(_), None) => self.receive(now),
                _ => break,
            }
        }
    }

    /// Bytes through the line by `until` go into the busy board's RX buffer; what does not
    /// fit is lost.
    fn hold(&mut self, until: Instant) {
        loop {
            let ready = self.rx.ready(until);
            if ready.is_empty() {
                return;
            }
            let n = ready.len();
            let keep = n.min(
                (self.config.params.rx_buffer as usize)
                    .saturating_sub(self.held.len() + self.asm.pending()),
            );
            self.held.extend(&ready[..keep]);
            if keep < n {
                lock(&self.shared.stats).rx_overrun_bytes += (n - keep) as u64;
            }
            self.rx.consume(n);
        }
    }

    /// The board is free: bytes through by `now` go straight to the frame assembler, and each
    /// frame is handled when its delimiter arrives.
    fn receive(&mut self, now: Instant) {
        while self.deferred.is_none() {
            let ready = self.rx.ready(now);
            if ready.is_empty() {
                return;
            }
            let upto = ready
                .iter()
                .position(|&b| b == DELIMITER)
                .map_or(ready.len(), |p| p + 1);
            // When the last of these bytes arrived: a frame ending here is handled then.
            let at = self.rx.due_at(upto - 1).unwrap_or(now);
            let chunk = &ready[..upto];
            let ends_frame = chunk.last() == Some(&DELIMITER);
            let body = chunk.len() - usize::from(ends_frame);
            // A frame longer than the RX buffer loses its tail (the CRC then fails).
            let room = (self.config.params.rx_buffer as usize).saturating_sub(self.asm.pending());
            let keep = body.min(room);
            let mut frame = None;
            if keep > 0 {
                let (_, ev) = self.asm.push(&chunk[..keep]);
                frame = ev.map(own);
            }
            if ends_frame && frame.is_none() {
                let (_, ev) = self.asm.push(&[DELIMITER]);
                frame = ev.map(own);
            }
            if keep < body {
                lock(&self.shared.stats).rx_overrun_bytes += (body - keep) as u64;
            }
            self.rx.consume(upto);
            if let Some(f) = frame {
                self.on_frame(f, at);
            }
        }
    }

    /// After a busy spell: the buffered bytes are handled, frame by frame, until the board is
    /// busy again or the buffer is empty.
    fn drain_held(&mut self, at: Instant) {
        while self.deferred.is_none() && !self.held.is_empty() {
            let (front, _) = self.held.as_slices();
            let upto = front
                .iter()
                .position(|&b| b == DELIMITER)
                .map_or(front.len(), |p| p + 1);
            let (used, ev) = self.asm.push(&front[..upto]);
            let frame = ev.map(own);
            self.held.drain(..used);
            if let Some(f) = frame {
                self.on_frame(f, at);
            }
        }
    }

    fn finish_deferred(&mut self) {
        if let Some(d) = self.deferred.take() {
            self.handle(d.index, d.frame, d.at);
        }
    }

    /// A frame has arrived at `at` (line time).
    fn on_frame(&mut self, frame: RxFrame, at: Instant) {
        if self.board.is_none() || at < self.awake_at {
            return; // nobody listening: bytes fall on the floor
        }
        if let Some(f) = lock(&self.shared.pending_faults).take() {
            self.plan = FaultPlan::new(f);
        }
        let (index, rx_fault, stall) = self.plan.on_receive();
        if rx_fault != RxFault::None {
            lock(&self.shared.stats).faults_injected += 1;
        }
        self.out.clear();
        match (frame, rx_fault) {
            (_, RxFault::Unplug) => {
                tracing::info!("virtual jig: fault: board pulled off the jig");
                self.remove_board();
            }
            (_, RxFault::Reboot) => {
                tracing::info!("virtual jig: fault: board rebooted");
                if let Some(b) = self.board.as_mut() {
                    b.reboot();
                }
                self.reset_board_rx();
                self.awake_at = Instant::now() + self.config.boot_time;
            }
            (_, RxFault::Drop) => {}
            (Err(CodecError::BadCrc { code, seq, .. }), _)
            | (Ok((code, seq, ..)), RxFault::Corrupt) => {
                lock(&self.shared.stats).frames_dropped += 1;
                if let Some(b) = self.board.as_mut() {
                    b.nak_bad_crc(code, seq, &mut self.out);
                }
                self.respond(index, Outcome::Continue, at);
            }
            (Err(_), _) => {
                // Bad COBS or length: the board cannot tell what it was; drop silently.
                lock(&self.shared.stats).frames_dropped += 1;
            }
            (Ok((code, seq, ..)), RxFault::Nak(error)) => {
                lock(&self.shared.stats).frames_received += 1;
                if let Some(b) = self.board.as_mut() {
                    b.nak_with(code, seq, error, &mut self.out);
                }
                self.respond(index, Outcome::Continue, at);
            }
            (Ok(frame), RxFault::None) => {
                lock(&self.shared.stats).frames_received += 1;
                let mut busy = stall;
                if frame.0 == cmd::PUT {
                    busy += self.config.put_process_time;
                }
                if busy.is_zero() {
                    self.handle(index, frame, at);
                } else {
                    self.deferred = Some(Deferred {
                        at: at + busy,
                        index,
                        frame,
                    });
                }
            }
        }
    }

    /// The board acts on a valid frame it has from `at` (line time) and answers.
    fn handle(
        &mut self,
        index: u64,
        (code, seq, crc, payload): (u8, u16, u32, Vec<u8>),
        at: Instant,
    ) {
        let config = self.plan.config();
        let faults = BoardFaults {
            refuse_commit: config.refuse_commit,
            power_cut_in_commit: config.power_cut_in_commit,
            flip_bit_in: config.flip_bit_in,
        };
        let Some(board) = self.board.as_mut() else {
            return;
        };
        board.faults = faults;
        let f = codec::Frame {
            code,
            seq,
            payload: &payload,
            crc,
        };
        self.out.clear();
        let started = Instant::now();
        let outcome = board.handle(&f, &mut self.out);
        // The board's own work (a flash write) is real time; how late this thread got to the
        // frame is the host's scheduling, not the emulated board's: the answer starts on the
        // line after the work, counted from when the frame arrived.
        let done = at.max(started - started.saturating_duration_since(at).min(LATE_MAX))
            + started.elapsed();
        self.respond(index, outcome, done);
    }

    /// Queues the answer in `self.out` for the line, its first bit going out at `ready` (or
    /// now, if that is earlier — never before the line is free), and carries out `outcome`.
    fn respond(&mut self, index: u64, outcome: Outcome, ready: Instant) {
        if outcome == Outcome::PowerCut {
            tracing::info!("virtual jig: fault: power cut during COMMIT");
            self.remove_board();
            return;
        }
        if !self.out.is_empty() {
            let now = ready.min(Instant::now());
            match self.plan.on_transmit(index) {
                TxFault::None => self.tx.push(&self.out, now),
                TxFault::Corrupt => {
                    lock(&self.shared.stats).faults_injected += 1;
                    self.tx.push(&codec::corrupt_crc(&self.out), now);
                }
                TxFault::DropBytes => {
                    lock(&self.shared.stats).faults_injected += 1;
                    let mut w = std::mem::take(&mut self.out);
                    let mid = w.len() / 2;
                    w.drain(mid.saturating_sub(1)..(mid + 2).min(w.len().saturating_sub(1)));
                    self.tx.push(&w, now);
                    self.out = w;
                }
            }
            lock(&self.shared.stats).frames_sent += 1;
        }
        if outcome == Outcome::Reboot {
            let has_identity = self.board.as_ref().is_some_and(|b| b.has_identity());
            if has_identity {
                // Provisioned: the operator takes it off; the next one goes on the jig.
                self.remove_board();
                self.place_next();
            } else if let Some(b) = self.board.as_mut() {
                b.reboot();
                self.reset_board_rx();
                self.awake_at = Instant::now() + self.config.boot_time;
            }
        }
    }

    /// Hands the station every byte whose time on the line is over.
    fn flush_tx(&mut self, now: Instant) {
        let Some(pty) = self.pty.as_ref() else {
            self.tx.clear();
            return;
        };
        let fd = pty.master.as_raw_fd();
        loop {
            let ready = self.tx.ready(now);
            if ready.is_empty() {
                self.tx_blocked_since = None;
                return;
            }
            match sys::write(fd, ready) {
                Ok(n) => {
                    if self.config.record_tx {
                        lock(&self.shared.tx_log).extend_from_slice(&ready[..n]);
                    }
                    lock(&self.shared.stats).bytes_sent += n as u64;
                    let partial = n < ready.len();
                    self.tx.consume(n);
                    if partial {
                        self.tx_blocked_since.get_or_insert(now);
                        return;
                    }
                    self.tx_blocked_since = None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let since = *self.tx_blocked_since.get_or_insert(now);
                    if now.duration_since(since) >= TX_GIVE_UP {
                        // Nobody reads the port: a UART just sends into the void.
                        self.tx.clear();
                        self.tx_blocked_since = None;
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "virtual jig: pty write failed; the adapter is gone");
                    self.unplug_port();
                    return;
                }
            }
        }
    }

    /// When the board next has something to do (`None`: only when woken).
    fn next_wake(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut at_least = |t: Option<Instant>| {
            if let Some(t) = t {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        };
        match &self.deferred {
            // Busy: bytes are buffered when the board is free again (lazily, same result).
            Some(d) => at_least(Some(d.at)),
            // Free: the next frame is complete when its delimiter arrives.
            None => at_least(self.rx.next_due_of(DELIMITER)),
        }
        if self.pty.is_some() && !self.tx.is_empty() {
            match self.tx_blocked_since {
                Some(since) => at_least(Some(since + TX_GIVE_UP)),
                None => {
                    // Each answer as its last byte arrives; long ones every millisecond.
                    at_least(self.tx.next_due_of(DELIMITER));
                    let chunk = self.tx.bytes_per_ms().min(self.tx.len());
                    at_least(self.tx.due_at(chunk.saturating_sub(1)));
                }
            }
        }
        if self.board.is_none() && !self.queue_closed {
            at_least(Some(Instant::now() + PLACE_POLL));
        }
        at
    }

    /// Sleeps until `until`, new bytes from the station, room to send, or a wake-up.
    fn wait(&mut self, until: Option<Instant>) {
        let timeout = until.map(|t| t.saturating_duration_since(Instant::now()));
        if timeout == Some(Duration::ZERO) {
            // Something is due already; look at the pty again on the way.
            self.readable = true;
            return;
        }
        let mut fds = [sys::PollFd::new(self.wake.as_raw_fd(), true, false); 2];
        let mut n = 1;
        if let Some(pty) = &self.pty {
            let input = self.wants_input();
            let output = self.tx_blocked_since.is_some();
            if input || output {
                fds[1] = sys::PollFd::new(pty.master.as_raw_fd(), input, output);
                n = 2;
            }
        }
        if let Err(e) = sys::poll(&mut fds[..n], timeout) {
            tracing::warn!(error = %e, "virtual jig: poll failed");
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
        if fds[0].readable() {
            let mut sink = [0u8; 64];
            while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
        }
        if n == 2 {
            if fds[1].hung_up() {
                tracing::warn!("virtual jig: the pty hung up; the adapter is gone");
                self.unplug_port();
            } else {
                self.readable = fds[1].readable();
            }
        }
    }
}

fn own(ev: Result<codec::Frame<'_>, CodecError>) -> RxFrame {
    ev.map(|f| (f.code, f.seq, f.crc, f.payload.to_vec()))
}

/// The few system calls the board thread needs beyond std: non-blocking pty I/O, `ppoll`
/// with a sub-millisecond timeout, and precise timer wake-ups.
mod sys {
    use std::io;
    use std::os::fd::RawFd;
    use std::time::Duration;

    pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
        // SAFETY: fcntl on a descriptor we own, with integer arguments only.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole call.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    #[derive(Clone, Copy)]
    #[repr(transparent)]
    pub struct PollFd(libc::pollfd);

    impl PollFd {
        pub fn new(fd: RawFd, input: bool, output: bool) -> PollFd {
            let mut events = 0;
            if input {
                events |= libc::POLLIN;
            }
            if output {
                events |= libc::POLLOUT;
            }
            PollFd(libc::pollfd {
                fd,
                events,
                revents: 0,
            })
        }

        pub fn readable(&self) -> bool {
            self.0.revents & libc::POLLIN != 0
        }

        pub fn hung_up(&self) -> bool {
            self.0.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
        }
    }

    /// Waits for any of `fds`, at most `timeout` (`None`: no limit). An interrupted wait
    /// returns early without error.
    pub fn poll(fds: &mut [PollFd], timeout: Option<Duration>) -> io::Result<()> {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `PollFd` is a transparent wrapper of `libc::pollfd` (same layout, one
        // field), the slice is valid for the call, `ts_ptr` is null or points to `ts`, which
        // outlives the call, and a null signal mask leaves the mask unchanged.
        let r = unsafe {
            libc::ppoll(
                fds.as_mut_ptr().cast::<libc::pollfd>(),
                fds.len() as libc::nfds_t,
                ts_ptr,
                std::ptr::null(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Timer wake-ups of this thread within a microsecond of their deadline (Linux adds up to
    /// 50 µs of slack by default, which would slow the emulated line).
    pub fn precise_timers() {
        // SAFETY: PR_SET_TIMERSLACK takes one integer argument and affects this thread only.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
        }
    }
}
