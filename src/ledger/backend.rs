//! The boundary between the ledger the station uses ([`Ledger`](super::Ledger),
//! [`LedgerView`](super::LedgerView)) and the store behind it: SQLite ([`super::sqlite`]) or
//! PostgreSQL ([`super::postgres`]), each implementing the same two traits and its own
//! opening; the station's calls do not change.
//!
//! What a backend provides:
//! - **Opening as the one writer**: take the ledger's one-writer lock (refusing a second
//!   station with [`LedgerError::InUse`]; on a shared PostgreSQL ledger the lock is per station
//!   id, [`LedgerError::StationInUse`]), bring the schema to this version or refuse a
//!   newer one ([`LedgerError::Schema`]), guard the key file with [`seal::open_key_file`] from
//!   what its sealed rows are, and answer a [`Journal`] and [`Records`].
//! - **Opening read-only**: [`Records`] that write nothing and take no lock.
//! - [`Journal`]: the writes. Each answers through a [`Pending`] once the change is durable
//!   (or failed), so the step after it never runs ahead of the ledger; blocking work stays off
//!   the async reactor (the SQLite backend runs it on its writer thread).
//! - [`Records`]: the reads.
//!
//! [`Ledger::open_at`](super::Ledger::open_at) and
//! [`LedgerView::open_at`](super::LedgerView::open_at) choose the store from the
//! [`LedgerLocation`](super::LedgerLocation) the configuration names.
//!
//! The rules every backend applies are in [`super::state`] ([`DeviceState::resumes`],
//! [`OrphanStatus::of_abandoned`]) and the sealing of keys in [`seal`].
//!
//! [`seal::open_key_file`]: super::seal::open_key_file
//! [`seal`]: super::seal
//! [`DeviceState::resumes`]: super::DeviceState::resumes
//! [`OrphanStatus::of_abandoned`]: super::OrphanStatus::of_abandoned

use tokio::sync::oneshot;

use super::{Began, DeviceRow, DeviceState, LedgerError, Orphan, Transition};

/// The changes a station records. Every method returns at once; its [`Pending`] answers when
/// the change is durable.
pub(crate) trait Journal: Send + Sync {
    /// Records that a board is being provisioned by this station on `jig`: a new device, a
    /// failed or interrupted one starting over, or an unfinished one resuming (with its
    /// resume point, private key unsealed). A verified device is refused and nothing is
    /// recorded.
    fn begin(&self, serial: &str, jig: &str) -> Pending<Began>;

    /// Records a state change of device `id`, with what it implies for orphans (see
    /// [`Transition`]).
    fn record(&self, id: i64, change: Transition) -> Pending<()>;

    /// Adds an audit-trail entry `what` with `detail`; the state does not change.
    fn note(&self, id: i64, what: &str, detail: &str) -> Pending<()>;

    /// Lists the device's current public key as a `pending` orphan with no certificate id
    /// (once per key) and notes `request_lost`; nothing when it has no public key on record.
    fn note_lost_request(&self, id: i64, reason: &str) -> Pending<()>;

    /// Lets this station's lease on device `id`'s serial go without a final state (a load
    /// test's device ends at `registered`). A file ledger has one station, whose leases are
    /// trivially its own: nothing to do.
    fn release(&self, _id: i64) -> Pending<()> {
        Pending::ready(Ok(()))
    }
}

/// The reads: every call sees the last committed state.
pub(crate) trait Records: Send + Sync + std::fmt::Debug {
    /// One device by serial.
    fn device(&self, serial: &str) -> Result<Option<DeviceRow>, LedgerError>;
    /// Every device, in the order they were first seen.
    fn devices(&self) -> Result<Vec<DeviceRow>, LedgerError>;
    /// The devices in one of `states`, in the order they were first seen (the store filters,
    /// so a ledger of many finished devices is not read whole to find the few unfinished).
    fn devices_in(&self, states: &[DeviceState]) -> Result<Vec<DeviceRow>, LedgerError>;
    /// How many devices are in one of `states` (counted by the store, no row read out).
    fn count_in(&self, states: &[DeviceState]) -> Result<usize, LedgerError>;
    /// The audit trail of one device, oldest first: (state or note, detail, time).
    fn events(&self, id: i64) -> Result<Vec<(String, Option<String>, i64)>, LedgerError>;
    /// How many devices are in one of `states`, by station (stations with none left out),
    /// in the order of the station ids.
    fn count_by_station(&self, states: &[DeviceState])
    -> Result<Vec<(String, usize)>, LedgerError>;
    /// Every orphan, in the order they were recorded.
    fn orphans(&self) -> Result<Vec<Orphan>, LedgerError>;
}

/// The answer to a [`Journal`] call, awaited from async code or from a plain thread.
#[must_use = "the change is durable only once its answer has come"]
pub(crate) struct Pending<T>(oneshot::Receiver<Result<T, LedgerError>>);

impl<T> Pending<T> {
    /// A pending answer and the sender that gives it.
    pub(crate) fn channel() -> (oneshot::Sender<Result<T, LedgerError>>, Pending<T>) {
        let (tx, rx) = oneshot::channel();
        (tx, Pending(rx))
    }

    /// An answer that is already there (a call refused before it reached the store).
    pub(crate) fn ready(result: Result<T, LedgerError>) -> Pending<T> {
        let (tx, pending) = Pending::channel();
        let _ = tx.send(result);
        pending
    }

    /// Waits for the answer; a store that went away without one has stopped.
    pub(crate) async fn wait(self) -> Result<T, LedgerError> {
        self.0.await.unwrap_or(Err(LedgerError::Stopped))
    }

    /// [`wait`](Self::wait) for plain threads (not from inside the async runtime).
    pub(crate) fn wait_blocking(self) -> Result<T, LedgerError> {
        self.0.blocking_recv().unwrap_or(Err(LedgerError::Stopped))
    }
}
