//! `VirtualJig`: a test jig on a pseudo-terminal. A thread serves the pty's master end as a
//! board would; the station opens the jig's path with `JigLink::open`, exactly as it opens a
//! USB adapter. Boards come from a queue, one placed at a time; after a RESET, a board with a
//! committed identity is taken off and the next one placed.
//!
//! The serial line is emulated exactly (the UART model, `sim/uart.rs`): what the station writes
//! is read off the pty as soon as it is there and stamped with the time each byte would arrive
//! over a UART at the configured baud; the board sees a frame when its delimiter has arrived,
//! and its answers reach the station when their last byte would have. An answer's first bit
//! goes out after the board's own work on the frame (a flash write is real time), counted from
//! when the frame arrived: how late the host got round to running the board thread (up to 2 ms)
//! is the host's scheduling, not the emulated board's, and is not charged to the line. Nothing
//! ever crosses faster than the baud rate. The board's RX buffer is bounded: bytes that arrive
//! while the board is busy (a slow flash, a stall) and the buffer is full are lost, as on a
//! real UART.
//!
//! The jig's path is stable: a symlink in a private temp directory that points to the
//! current pty. [`VirtualJig::unplug`] makes the pty go away (the station's reads and writes
//! fail, opening the path fails), [`VirtualJig::replug`] puts a new pty behind the same path,
//! with the same board and its flash — as a USB adapter pulled and plugged back reappears as
//! the same `/dev/ttyUSB0`.
//!
//! # Layout
//!
//! - this file: [`VirtualJig`], the handle tests and the station hold (config, counters,
//!   unplug/replug, faults), and what it shares with the board thread.
//! - `worker`: the board thread: boards on and off the jig, the pty read and written at
//!   line rate, frames to the board and answers back, faults applied.
//! - `pty`: the adapter: a pty pair behind the stable path.
//! - `tmpdir`: the private temp directories holding the stable paths.
//! - `sys`: the libc shim (non-blocking pty I/O, `ppoll`, timer slack).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use self::worker::Worker;
use crate::error::JigError;
use crate::sim::board::{BoardParams, BoardSpec};
use crate::sim::faults::FaultConfig;
use crate::sim::flash::Flash;
use crate::sim::served::lock;

pub(super) mod pty;
pub(super) mod sys;
pub(super) mod tmpdir;
mod worker;

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

/// What the handle and the board thread share.
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
        let (dir, link, pty) = pty::open_stable()?;
        let path = link.to_string_lossy().into_owned();
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
        let mut worker = Worker::new(
            config,
            link,
            pty,
            boards,
            request_rx,
            wake_rx,
            shared.clone(),
        );
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
    pub(crate) fn shutdown(mut self) {
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
