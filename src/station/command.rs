//! Operator commands: the one channel from the operator's surface (the dashboard's keys) to
//! the pipeline. Telemetry observes and never steers; the operator steers only through here.
//!
//! [`channel`] makes the two ends: the [`Operator`] (the dashboard holds it: it sends
//! [`Command`]s and reads the feed state and the snapshots) and the [`Control`] (the run or
//! load test takes it: [`Control::serve`] obeys the commands and hands out a [`FeedGate`] that
//! the jig cycles, the virtual line and the load test consult before they start a new board).
//!
//! The feed is a small state machine ([`FeedState::apply`]): running ⇄ paused, and either to
//! stopping, which is final (no new board starts; the devices in flight finish).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};

use crate::shutdown::Shutdown;
use crate::telemetry::Snapshot;

/// What the operator asks of the feed of new boards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    Pause,
    Resume,
    /// Start no new board; finish the devices in flight, write the report, exit.
    Stop,
}

/// An operator command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Feed(Feed),
    /// Put the failed boards of this run back in the queue (virtual line, load test) or
    /// re-arm their jigs (real line).
    RetryFailed,
    /// Stop at once, as Ctrl-C does: devices in flight keep their state (exit 130).
    Interrupt,
}

/// Whether new boards are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeedState {
    #[default]
    Running,
    Paused,
    /// No new board starts; the run ends when the devices in flight are done.
    Stopping,
}

impl FeedState {
    /// The state after `feed`. Stopping is final; pausing a paused feed or resuming a running
    /// one changes nothing.
    pub fn apply(self, feed: Feed) -> FeedState {
        match (self, feed) {
            (FeedState::Stopping, _) | (_, Feed::Stop) => FeedState::Stopping,
            (_, Feed::Pause) => FeedState::Paused,
            (_, Feed::Resume) => FeedState::Running,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            FeedState::Running => "running",
            FeedState::Paused => "paused",
            FeedState::Stopping => "stopping",
        }
    }
}

/// How many commands may wait for the pipeline (keys come at human speed).
const COMMAND_QUEUE: usize = 16;

/// What the run publishes for the operator's surface once it has started.
#[derive(Debug, Clone)]
pub struct Published {
    pub snapshots: watch::Receiver<Snapshot>,
    pub report_dir: std::path::PathBuf,
    /// Devices the run sets out to do (0: open-ended).
    pub target: u64,
}

/// The operator's end of the channel.
#[derive(Clone)]
pub struct Operator {
    commands: mpsc::Sender<Command>,
    feed: watch::Receiver<FeedState>,
    published: Arc<OnceLock<Published>>,
}

impl Operator {
    /// Sends `command`; false if the pipeline is gone or (at human speed, never) behind.
    pub fn send(&self, command: Command) -> bool {
        self.commands.try_send(command).is_ok()
    }

    /// The feed state the pipeline obeys now.
    pub fn feed(&self) -> FeedState {
        *self.feed.borrow()
    }

    /// The run's snapshots and report folder, once it has started.
    pub fn published(&self) -> Option<&Published> {
        self.published.get()
    }
}

/// The pipeline's end of the channel (cloneable so it can ride in the run's options; only
/// the first [`serve`](Control::serve) receives the commands).
#[derive(Clone)]
pub struct Control {
    commands: Arc<Mutex<Option<mpsc::Receiver<Command>>>>,
    feed: Arc<watch::Sender<FeedState>>,
    published: Arc<OnceLock<Published>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("feed", &*self.feed.borrow())
            .finish_non_exhaustive()
    }
}

/// The two ends of the operator's command channel.
pub fn channel() -> (Operator, Control) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (feed_tx, feed_rx) = watch::channel(FeedState::Running);
    let published = Arc::new(OnceLock::new());
    (
        Operator {
            commands: tx,
            feed: feed_rx,
            published: published.clone(),
        },
        Control {
            commands: Arc::new(Mutex::new(Some(rx))),
            feed: Arc::new(feed_tx),
            published,
        },
    )
}

impl Control {
    /// Shows the run to the operator (the first call wins).
    pub fn publish(&self, published: Published) {
        let _ = self.published.set(published);
    }

    /// Obeys the commands until the channel closes or `shutdown` fires: feed commands change
    /// the feed state, [`Command::Interrupt`] triggers `shutdown` (as Ctrl-C does),
    /// [`Command::RetryFailed`] wakes [`FeedGate::retry_requested`]. Call inside a tokio
    /// runtime.
    pub fn serve(&self, shutdown: Shutdown) -> FeedGate {
        let retry = Arc::new(Notify::new());
        let gate = FeedGate {
            feed: self.feed.subscribe(),
            retry: retry.clone(),
        };
        let rx = self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut rx) = rx {
            let feed = self.feed.clone();
            tokio::spawn(async move {
                loop {
                    let command = tokio::select! {
                        c = rx.recv() => match c { Some(c) => c, None => return },
                        _ = shutdown.wait() => return,
                    };
                    tracing::info!(?command, "operator command");
                    match command {
                        Command::Feed(f) => {
                            feed.send_modify(|s| *s = s.apply(f));
                        }
                        Command::RetryFailed => retry.notify_one(),
                        Command::Interrupt => shutdown.trigger(),
                    }
                }
            });
        }
        gate
    }
}

/// What the stages that start new boards consult.
#[derive(Clone)]
pub struct FeedGate {
    feed: watch::Receiver<FeedState>,
    retry: Arc<Notify>,
}

impl FeedGate {
    /// A gate with no operator: always running.
    pub fn always() -> FeedGate {
        let (_tx, feed) = watch::channel(FeedState::Running);
        FeedGate {
            feed,
            retry: Arc::new(Notify::new()),
        }
    }

    pub fn state(&self) -> FeedState {
        *self.feed.borrow()
    }

    /// Waits while the feed is paused: true when a new board may start, false when the
    /// feed is stopping or `stop` fires.
    pub async fn admit(&self, stop: &Shutdown) -> bool {
        let mut feed = self.feed.clone();
        loop {
            let state = *feed.borrow_and_update();
            match state {
                FeedState::Running => return true,
                FeedState::Stopping => return false,
                FeedState::Paused => {}
            }
            tokio::select! {
                changed = feed.changed() => if changed.is_err() {
                    // The operator's end is gone: the state can no longer change.
                    return *feed.borrow() == FeedState::Running;
                },
                _ = stop.wait() => return false,
            }
        }
    }

    /// Resolves when the operator asks for the failed boards to be tried again (a request
    /// made while nobody waited is kept for the next wait).
    pub async fn retry_requested(&self) {
        self.retry.notified().await
    }
}

/// How long a jig thread waits between looks at a paused feed.
pub const PAUSED_POLL: Duration = Duration::from_millis(100);

/// The boards that failed in this run, and those the operator re-armed: a jig tries a failed
/// board again only once it is armed (a virtual line's board comes back through the queue).
#[derive(Debug, Default)]
pub struct RetryBook {
    failed: Mutex<Vec<String>>,
    armed: Mutex<HashSet<String>>,
}

impl RetryBook {
    /// Notes a board that failed.
    pub fn failed(&self, serial: &str) {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(serial.to_string());
    }

    /// Arms every failed board for one more try; returns their serials.
    pub fn arm_failed(&self) -> Vec<String> {
        let serials: Vec<String> =
            std::mem::take(&mut *self.failed.lock().unwrap_or_else(|p| p.into_inner()));
        self.armed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(serials.iter().cloned());
        serials
    }

    /// Whether `serial` was armed (disarms it).
    pub fn take_armed(&self, serial: &str) -> bool {
        self.armed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_pauses_resumes_and_stopping_is_final() {
        use Feed::*;
        use FeedState::*;
        assert_eq!(Running.apply(Pause), Paused);
        assert_eq!(Paused.apply(Pause), Paused);
        assert_eq!(Paused.apply(Resume), Running);
        assert_eq!(Running.apply(Resume), Running);
        assert_eq!(Paused.apply(Stop), Stopping);
        assert_eq!(Running.apply(Stop), Stopping);
        for f in [Pause, Resume, Stop] {
            assert_eq!(Stopping.apply(f), Stopping, "{f:?}");
        }
    }

    #[tokio::test]
    async fn commands_steer_the_gate_and_interrupt_triggers_the_shutdown() {
        let (operator, control) = channel();
        let stop = Shutdown::new();
        let gate = control.serve(stop.clone());
        assert!(gate.admit(&stop).await);

        assert!(operator.send(Command::Feed(Feed::Pause)));
        let waiting = tokio::spawn({
            let (gate, stop) = (gate.clone(), stop.clone());
            async move { gate.admit(&stop).await }
        });
        // Paused: the gate holds until the operator resumes.
        wait_until(|| operator.feed() == FeedState::Paused).await;
        assert!(!waiting.is_finished());
        assert!(operator.send(Command::Feed(Feed::Resume)));
        let admitted = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("resume opens the gate")
            .unwrap();
        assert!(admitted);

        // A retry request made before anyone waits is kept.
        assert!(operator.send(Command::RetryFailed));
        tokio::time::timeout(Duration::from_secs(5), gate.retry_requested())
            .await
            .expect("the retry request arrives");

        assert!(operator.send(Command::Feed(Feed::Stop)));
        wait_until(|| gate.state() == FeedState::Stopping).await;
        assert!(!gate.admit(&stop).await);
        assert!(!stop.is_triggered());
        assert!(operator.send(Command::Interrupt));
        tokio::time::timeout(Duration::from_secs(5), stop.wait())
            .await
            .expect("interrupt triggers the shutdown");
    }

    #[tokio::test]
    async fn a_paused_gate_lets_go_when_the_run_stops() {
        let (operator, control) = channel();
        let stop = Shutdown::new();
        let gate = control.serve(stop.clone());
        operator.send(Command::Feed(Feed::Pause));
        wait_until(|| gate.state() == FeedState::Paused).await;
        stop.trigger();
        assert!(!gate.admit(&stop).await);
        assert!(FeedGate::always().admit(&Shutdown::new()).await);
    }

    #[test]
    fn only_armed_failed_boards_are_tried_again_once() {
        let book = RetryBook::default();
        book.failed("SN-1");
        book.failed("SN-2");
        assert!(!book.take_armed("SN-1"));
        assert_eq!(book.arm_failed(), ["SN-1", "SN-2"]);
        assert!(book.arm_failed().is_empty());
        assert!(book.take_armed("SN-1"));
        assert!(!book.take_armed("SN-1"));
        assert!(book.take_armed("SN-2"));
    }

    async fn wait_until(cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not met in 5 s"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
