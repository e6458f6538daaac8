//! The operator's terminal dashboard (ratatui + crossterm) for `station run` and `station
//! loadtest`. It reads telemetry [`Snapshot`](crate::telemetry::Snapshot)s and sends operator
//! commands on the one command channel ([`crate::station::command`]); it never steers or
//! slows the pipeline otherwise.
//!
//! - [`view`]: renders one snapshot into a frame (pure: tests render it on `TestBackend`).
//! - [`keys`]: what each key asks of the pipeline (a small state machine, no terminal).
//! - [`terminal`]: raw mode and the alternate screen, restored on every exit path (a `Drop`
//!   guard, and a panic hook for panics anywhere in the process).
//! - [`log`]: the log sink that moves tracing output from stderr to a file in the report
//!   folder while the dashboard owns the screen.
//!
//! [`spawn`] runs the dashboard on its own thread: it waits until the run has started (its
//! report folder is known), moves the log there, takes the screen and redraws at most
//! [`MAX_FPS`] times a second from the latest snapshot, until [`Dashboard::finish`].

pub mod keys;
pub mod log;
pub mod terminal;
pub mod view;

use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event};

use crate::station::command::Operator;

use self::keys::Keys;
use self::log::LogSink;
use self::view::ViewContext;

/// The most redraws a second.
pub const MAX_FPS: u32 = 10;
/// The least time between two redraws.
const FRAME: Duration = Duration::from_millis(1000 / MAX_FPS as u64);
/// The log file's name in the report folder.
pub const LOG_FILE: &str = "station.log";

/// A dashboard running on its own thread.
pub struct Dashboard {
    done: mpsc::Sender<()>,
    thread: JoinHandle<std::io::Result<()>>,
}

/// Starts the dashboard for a run of `mode` (`run` or `loadtest`): it shows the run once it
/// has published its snapshots, and sends the operator's keys through `operator`.
pub fn spawn(operator: Operator, mode: &'static str, log: LogSink) -> std::io::Result<Dashboard> {
    let (done, finished) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("dashboard".into())
        .spawn(move || run(&operator, mode, &log, &finished))?;
    Ok(Dashboard { done, thread })
}

impl Dashboard {
    /// Stops the dashboard and gives the terminal back (the run has ended).
    pub fn finish(self) -> std::io::Result<()> {
        drop(self.done);
        match self.thread.join() {
            Ok(r) => r,
            // The panic hook has restored the terminal and printed the panic.
            Err(_) => Err(std::io::Error::other("the dashboard panicked")),
        }
    }
}

/// The dashboard thread: waits for the run, then draws and reads keys until `finished`
/// closes.
fn run(
    operator: &Operator,
    mode: &'static str,
    log: &LogSink,
    finished: &mpsc::Receiver<()>,
) -> std::io::Result<()> {
    // Until the run has started there is nothing to show, and start-up errors print as usual.
    let published = loop {
        if let Some(p) = operator.published() {
            break p;
        }
        match finished.recv_timeout(Duration::from_millis(50)) {
            Err(RecvTimeoutError::Timeout) => continue,
            _ => return Ok(()),
        }
    };
    let log_path = published.report_dir.join(LOG_FILE);
    log.to_file(&log_path)?;
    let mut snapshots = published.snapshots.clone();
    let mut term = terminal::TerminalGuard::enter()?;
    let mut keys = Keys::default();
    let mut snapshot = snapshots.borrow_and_update().clone();
    let mut last_draw: Option<Instant> = None;
    let mut dirty = true;
    let mut feed = operator.feed();
    loop {
        if !terminal::active() {
            // A panic elsewhere gave the terminal back: draw no more.
            return Ok(());
        }
        match finished.try_recv() {
            Err(TryRecvError::Empty) => {}
            _ => return Ok(()),
        }
        if snapshots.has_changed().unwrap_or(false) {
            // Cloned at once: the aggregator's next publish never waits for a redraw.
            snapshot = snapshots.borrow_and_update().clone();
            dirty = true;
        }
        if operator.feed() != feed {
            feed = operator.feed();
            dirty = true;
        }
        let next_frame = last_draw.map_or(Duration::ZERO, |t| FRAME.saturating_sub(t.elapsed()));
        if dirty && next_frame.is_zero() {
            let view = ViewContext {
                mode,
                target: published.target,
                feed,
                log: Some(&log_path),
                help: keys.help,
                line: mode == "run",
            };
            term.draw(|f| view::render(f, &snapshot, &view))?;
            last_draw = Some(Instant::now());
            dirty = false;
        }
        // Sleep on the keyboard until the next frame may be drawn (or, with nothing to draw,
        // for one frame: snapshots come a few times a second).
        let wait = if dirty { next_frame } else { FRAME };
        if event::poll(wait.max(Duration::from_millis(1)))? {
            // Everything waiting, so a burst of keys or resizes costs one redraw.
            loop {
                match event::read()? {
                    Event::Key(k) => {
                        if let Some(command) = keys.on_key(k) {
                            operator.send(command);
                        }
                        dirty = true;
                    }
                    Event::Resize(..) => dirty = true,
                    _ => {}
                }
                if !event::poll(Duration::ZERO)? {
                    break;
                }
            }
        }
    }
}
