//! `VirtualJig`: a test jig on a pseudo-terminal. A thread serves the pty's master end as a
//! board would; the station opens the slave path with `JigLink::open`, exactly as it opens a
//! USB adapter. Boards come from a queue, one placed at a time; after a RESET, a board with a
//! committed identity is taken off and the next one placed. The board side paces bytes to
//! the configured baud rate, bounds its RX buffer, and injects faults on request.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use serialport::{SerialPort, TTYPort};

use super::board::{Board, BoardFaults, BoardParams, BoardSpec, Outcome};
use super::codec::{self, CodecError, FrameAssembler};
use super::error::JigError;
use super::faults::{FaultConfig, FaultPlan, RxFault, TxFault};
use super::flash::Flash;
use super::pacing::{RxPacer, TxPacer};
use super::protocol::cmd;

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
    /// Emulated flash-write time per PUT (bytes keep arriving meanwhile).
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
    pub frames_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Bytes lost because they arrived while the RX buffer was full.
    pub rx_overrun_bytes: u64,
    pub boards_placed: u64,
    pub boards_removed: u64,
    pub faults_injected: u64,
    /// Serials in the order they were placed.
    pub serials: Vec<String>,
}

struct Shared {
    stop: AtomicBool,
    /// New fault config to apply (taken by the jig thread).
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

/// A virtual jig on a pty pair. Dropping it stops the board thread.
pub struct VirtualJig {
    path: String,
    flash_dir: PathBuf,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Our own handle on the slave end, so the master never sees EIO (hang-up) while the
    /// station closes and reopens the port.
    _slave: TTYPort,
}

impl std::fmt::Debug for VirtualJig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualJig")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl VirtualJig {
    /// Opens a pty pair and starts serving boards from `boards`.
    pub fn spawn(
        config: VirtualJigConfig,
        boards: Receiver<BoardSpec>,
    ) -> Result<VirtualJig, JigError> {
        let fixture = |detail: String| JigError::Fixture { detail };
        std::fs::create_dir_all(&config.flash_dir).map_err(|e| JigError::Flash {
            path: config.flash_dir.clone(),
            detail: format!("cannot create the flash directory: {e}"),
        })?;
        let (mut master, slave) =
            TTYPort::pair().map_err(|e| fixture(format!("cannot open a pty pair: {e}")))?;
        let path = slave
            .name()
            .ok_or_else(|| fixture("the pty slave has no path".into()))?;
        master
            .set_timeout(Duration::from_millis(5))
            .map_err(|e| fixture(format!("cannot set the pty timeout: {e}")))?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            pending_faults: Mutex::new(None),
            stats: Mutex::new(JigStats::default()),
            tx_log: Mutex::new(Vec::new()),
            current: Mutex::new(None),
            take_off: Mutex::new(None),
        });
        let flash_dir = config.flash_dir.clone();
        let mut worker = Worker {
            rx_pacer: RxPacer::new(config.baud),
            tx_pacer: TxPacer::new(config.baud),
            plan: FaultPlan::new(config.faults.clone()),
            config,
            master,
            boards,
            queue_closed: false,
            board: None,
            awake_at: Instant::now(),
            asm: FrameAssembler::new(),
            out: Vec::with_capacity(codec::MAX_WIRE),
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("virtual-jig {path}"))
            .spawn(move || worker.run())
            .map_err(|e| fixture(format!("cannot start the board thread: {e}")))?;
        Ok(VirtualJig {
            path,
            flash_dir,
            shared,
            thread: Some(thread),
            _slave: slave,
        })
    }

    /// The pty path the station opens.
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
    }

    /// Every byte the board has sent so far (when `record_tx` is set).
    pub fn tx_log(&self) -> Vec<u8> {
        lock(&self.shared.tx_log).clone()
    }

    /// Stops the board thread and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VirtualJig {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The board thread's state.
struct Worker {
    config: VirtualJigConfig,
    master: TTYPort,
    boards: Receiver<BoardSpec>,
    queue_closed: bool,
    board: Option<Board>,
    /// A rebooting board ignores the line until then.
    awake_at: Instant,
    asm: FrameAssembler,
    rx_pacer: RxPacer,
    tx_pacer: TxPacer,
    plan: FaultPlan,
    out: Vec<u8>,
    shared: Arc<Shared>,
}

impl Worker {
    fn run(&mut self) {
        let mut buf = vec![0u8; 8192];
        while !self.shared.stop.load(Ordering::SeqCst) {
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
            let now = Instant::now();
            let allowance = self.rx_pacer.allowance(now);
            let batch = self.rx_pacer.batch();
            if allowance < batch && self.rx_pacer.in_burst() {
                // Mid-burst: let a batch of bytes "arrive" before reading again.
                std::thread::sleep(self.rx_pacer.time_for(batch - allowance));
                continue;
            }
            let room = (self.config.params.rx_buffer as usize).saturating_sub(self.asm.pending());
            // Unpaced, the kernel buffer stands in for flow control: take only what fits.
            let want = if self.rx_pacer.is_paced() {
                allowance.min(buf.len())
            } else {
                room.max(1).min(buf.len())
            };
            match self.master.read(&mut buf[..want]) {
                Ok(0) => self.rx_pacer.idle(),
                Ok(n) => {
                    self.rx_pacer.took(n, Instant::now());
                    if n < want && self.rx_pacer.is_paced() {
                        // Everything the station has sent so far has arrived: the line is
                        // quiet now, and no arrival credit carries over into the next burst.
                        self.rx_pacer.idle();
                    }
                    let kept = if n > room.max(1) {
                        // Arrived while the RX buffer was full: lost, as on a real UART.
                        lock(&self.shared.stats).rx_overrun_bytes += (n - room) as u64;
                        room
                    } else {
                        n
                    };
                    lock(&self.shared.stats).bytes_received += n as u64;
                    self.feed(&buf[..kept]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => self.rx_pacer.idle(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "virtual jig: pty read failed, stopping");
                    return;
                }
            }
        }
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
                        self.asm.reset();
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
            *lock(&self.shared.current) = None;
            lock(&self.shared.stats).boards_removed += 1;
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (used, event) = self.asm.push(data);
            data = &data[used..];
            let Some(event) = event else { continue };
            // Copy what we need out of the assembler's buffer before handling.
            let frame = match event {
                Ok(f) => Ok((f.code, f.seq, f.crc, f.payload.to_vec())),
                Err(e) => Err(e),
            };
            self.on_frame(frame);
        }
    }

    fn on_frame(&mut self, frame: Result<(u8, u16, u32, Vec<u8>), CodecError>) {
        let awake = Instant::now() >= self.awake_at;
        if self.board.is_none() || !awake {
            return; // nobody listening: bytes fall on the floor
        }
        // Checked per frame: a test arms faults and then sends at once.
        if let Some(f) = lock(&self.shared.pending_faults).take() {
            self.plan = FaultPlan::new(f);
        }
        let (index, rx_fault, stall) = self.plan.on_receive();
        if rx_fault != RxFault::None {
            lock(&self.shared.stats).faults_injected += 1;
        }
        self.out.clear();
        let mut outcome = Outcome::Continue;
        let Some(board) = self.board.as_mut() else {
            return;
        };
        board.faults = BoardFaults {
            refuse_commit: self.plan.config().refuse_commit,
            power_cut_in_commit: self.plan.config().power_cut_in_commit,
            flip_bit_in: self.plan.config().flip_bit_in,
        };
        match (frame, rx_fault) {
            (_, RxFault::Unplug) => {
                tracing::info!("virtual jig: fault: board unplugged");
                self.remove_board();
                return;
            }
            (_, RxFault::Reboot) => {
                tracing::info!("virtual jig: fault: board rebooted");
                board.reboot();
                self.awake_at = Instant::now() + self.config.boot_time;
                return;
            }
            (_, RxFault::Drop) => return,
            (Err(CodecError::BadCrc { code, seq, .. }), _)
            | (Ok((code, seq, ..)), RxFault::Corrupt) => {
                lock(&self.shared.stats).frames_dropped += 1;
                board.nak_bad_crc(code, seq, &mut self.out);
            }
            (Err(_), _) => {
                // Bad COBS or length: the board cannot tell what it was; drop silently.
                lock(&self.shared.stats).frames_dropped += 1;
                return;
            }
            (Ok((code, seq, ..)), RxFault::Nak(error)) => {
                lock(&self.shared.stats).frames_received += 1;
                board.nak_with(code, seq, error, &mut self.out);
            }
            (Ok((code, seq, crc, payload)), RxFault::None) => {
                lock(&self.shared.stats).frames_received += 1;
                if !stall.is_zero() {
                    std::thread::sleep(stall);
                }
                let f = codec::Frame {
                    code,
                    seq,
                    payload: &payload,
                    crc,
                };
                outcome = board.handle(&f, &mut self.out);
                if code == cmd::PUT && !self.config.put_process_time.is_zero() {
                    std::thread::sleep(self.config.put_process_time);
                }
            }
        }
        if outcome == Outcome::PowerCut {
            tracing::info!("virtual jig: fault: power cut during COMMIT");
            self.remove_board();
            return;
        }
        if !self.out.is_empty() {
            let wire = match self.plan.on_transmit(index) {
                TxFault::None => std::mem::take(&mut self.out),
                TxFault::Corrupt => {
                    lock(&self.shared.stats).faults_injected += 1;
                    codec::corrupt_crc(&self.out)
                }
                TxFault::DropBytes => {
                    lock(&self.shared.stats).faults_injected += 1;
                    let mut w = std::mem::take(&mut self.out);
                    let mid = w.len() / 2;
                    w.drain(mid.saturating_sub(1)..(mid + 2).min(w.len().saturating_sub(1)));
                    w
                }
            };
            self.transmit(&wire);
            self.out = wire;
        }
        if outcome == Outcome::Reboot {
            let has_identity = self.board.as_ref().is_some_and(|b| b.has_identity());
            if has_identity {
                // Provisioned: the operator takes it off; the next one goes on the jig.
                self.remove_board();
                self.place_next();
            } else if let Some(b) = self.board.as_mut() {
                b.reboot();
                self.awake_at = Instant::now() + self.config.boot_time;
            }
        }
    }

    /// Sends bytes at the line rate. Gives up (drops the rest) if the station stops reading
    /// for a second, as a UART with nobody listening would just send into the void.
    fn transmit(&mut self, wire: &[u8]) {
        let give_up = Instant::now() + Duration::from_secs(1);
        let mut rest = wire;
        while !rest.is_empty() && Instant::now() < give_up {
            let n = self.tx_pacer.chunk().min(rest.len());
            match self.master.write(&rest[..n]) {
                Ok(w) => {
                    let wait = self.tx_pacer.sent(w, Instant::now());
                    if self.config.record_tx {
                        lock(&self.shared.tx_log).extend_from_slice(&rest[..w]);
                    }
                    rest = &rest[w..];
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
        }
        let mut s = lock(&self.shared.stats);
        s.bytes_sent += (wire.len() - rest.len()) as u64;
        if rest.is_empty() {
            s.frames_sent += 1;
        }
    }
}
