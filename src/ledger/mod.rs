//! The ledger: a journal of every device the station touches, kept in SQLite (a file, the
//! embedded default) or in PostgreSQL (a database many stations share), chosen by
//! [`LedgerLocation`].
//!
//! - devices: one row per board serial — jig, state, key source, certificate id and PEM,
//!   thing name, device configuration, times, and while the device is unfinished what it
//!   takes to resume it (the ownership token, the sealed private key).
//! - events: one row per state change, resume or note (the audit trail).
//! - orphans: certificates AWS issued that will never reach a board, with what AWS may hold.
//!
//! Every change is durable before the call that records it returns, so the step after it
//! never runs ahead of the journal.
//!
//! One station writes a ledger file at a time: [`Ledger::open`] takes the ledger's lock and
//! refuses to start while another process holds it. A PostgreSQL ledger is shared: only a
//! second station with the same `station.id` is refused, and each board's serial is leased to
//! one station at a time ([`LedgerError::HeldElsewhere`] names the holder; `station.lease_s`). Reading needs no lock: [`LedgerView`] writes
//! nothing, so `station ledger export` and `station ledger orphans` run safely beside a
//! running station.
//!
//! Station-made and AWS-made private keys of unfinished devices are sealed under
//! `<ledger>.key` (`seal`). That file is part of the ledger: [`Ledger::open`] refuses to
//! start when it is missing or is not the key the sealed rows were made with, instead of
//! making a new key and silently losing the devices that need the old one.
//!
//! Orphans are recorded here, in one place: whenever a device's certificate is abandoned
//! (the device fails or is interrupted, or a new certificate replaces one that can no longer
//! be registered), the old certificate moves to the orphans; so does a certificate request
//! whose answer was lost ([`Ledger::note_lost_request`]). A certificate is therefore either on
//! a verified board or in the orphan list, and each is listed once.
//!
//! # Layout
//!
//! - `state`: what is recorded and read back ([`DeviceState`], [`Transition`], [`DeviceRow`],
//!   [`Orphan`], [`OrphanStatus`], [`Resume`], [`Begun`]) and the rules every store applies
//!   (when a device resumes, what status an abandoned certificate gets).
//! - `backend`: the boundary to the store: the writes [`Ledger`] makes and the reads
//!   [`LedgerView`] makes, which a store implements, and how an answer is awaited.
//! - `sqlite`: the one store today, the ledger file:
//!   - `sqlite/schema`: the tables, one numbered migration per version, the version check;
//!   - `sqlite/writer`: the group-commit writer thread;
//!   - `sqlite/journal`: the SQL of each change (begin and resume points, transitions,
//!     notes, lost requests);
//!   - `sqlite/orphans`: how an orphan is recorded (once);
//!   - `sqlite/read`: read-only connections and the queries of the read side;
//!   - `sqlite/lock`: the one-writer lock (`<ledger>.lock`);
//!   - `sqlite/tests`: tests of the store itself (files, locks, a reader that writes nothing).
//! - `postgres`: the shared store, a PostgreSQL database (same tables, same rules):
//!   - `postgres/connect`: the URL, TLS (rustls, `sslmode`, `sslrootcert`), the password
//!     kept out of messages;
//!   - `postgres/schema`: numbered migrations (`postgres/migrations/NNNN.sql`) applied at
//!     start under a database lock, the version check, the per-station lock;
//!   - `postgres/writer`: the group-commit writer thread (one connection);
//!   - `postgres/lease`: serial leases (one serial, one station): claimed before each group
//!     commit, renewed, let go; why that order cannot deadlock;
//!   - `postgres/journal`: the SQL of each change;
//!   - `postgres/read`: the read side (one read-only connection on its own thread);
//!   - `postgres/quota`: the account quota shared by every station (`provision.shared_quota`);
//!   - `postgres/tests`: tests of the store itself (stations sharing it, migrations).
//! - `view`: [`LedgerView`], read-only access.
//! - `seal`: sealing private keys kept for resuming, and the guard of the key file.
//! - `error`: [`LedgerError`].
//! - [`export`]: the audit trail as CSV/JSON.
//! - [`cleanup`]: what to run on AWS to remove the orphans, as steps and as a bash script
//!   (`cleanup/tests`: its tests).
//! - `tests`: tests through [`Ledger`] and [`LedgerView`] (`tests/journal`,
//!   `tests/key_file`), run on both stores, and the helpers every ledger test shares.

mod backend;
pub mod cleanup;
mod error;
pub mod export;
mod postgres;
mod seal;
mod sqlite;
mod state;
mod view;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use self::backend::Journal;
pub use self::error::LedgerError;
pub(crate) use self::postgres::quota;
pub(crate) use self::state::Began;
pub use self::state::{Begun, DeviceRow, DeviceState, Orphan, OrphanStatus, Resume, Transition};
pub use self::view::LedgerView;
pub use crate::keys::KeySource;

/// A handle to the ledger, the one writer of it. Cloneable; all clones share the writer and
/// the ledger lock, which is released when the last clone is dropped. Reads go through
/// [`LedgerView`], which it dereferences to.
#[derive(Clone)]
pub struct Ledger {
    journal: Arc<dyn Journal>,
    view: LedgerView,
}

impl std::ops::Deref for Ledger {
    type Target = LedgerView;

    fn deref(&self) -> &LedgerView {
        &self.view
    }
}

/// Where a ledger is, from `station.ledger` (and `station.ledger_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerLocation {
    /// A SQLite file, with its lock file (`<ledger>.lock`) and key file (`<ledger>.key`)
    /// beside it.
    File(PathBuf),
    /// A PostgreSQL database (`postgres://` or `postgresql://` URL), shared by stations; the
    /// key file sealing this station's private keys is the station's own.
    Postgres { url: String, key_file: PathBuf },
}

impl LedgerLocation {
    /// `ledger` as configured: a `postgres://`/`postgresql://` URL or a file path. A
    /// PostgreSQL ledger's key file is `key_file`, by default `state/ledger-<station>.key`.
    pub fn of(ledger: &Path, key_file: Option<&Path>, station: &str) -> LedgerLocation {
        match ledger.to_str().filter(|s| is_postgres_url(s)) {
            Some(url) => LedgerLocation::Postgres {
                url: url.to_string(),
                key_file: key_file
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from(format!("state/ledger-{station}.key"))),
            },
            None => LedgerLocation::File(ledger.to_path_buf()),
        }
    }

    /// How messages name the ledger: its path, or its URL without the password.
    pub fn display(&self) -> String {
        match self {
            LedgerLocation::File(p) => p.display().to_string(),
            LedgerLocation::Postgres { url, .. } => postgres::redact(url),
        }
    }
}

/// Whether `url` is a PostgreSQL URL the ledger can connect with (checked without
/// connecting); the problem otherwise.
pub fn check_url(url: &str) -> Result<(), String> {
    postgres::check_url(url)
}

/// Whether `s` names a PostgreSQL database rather than a file.
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// How long a serial lease lasts unless renewed, when `station.lease_s` is not given.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A file that belongs to the ledger at `ledger`: its path with `suffix` appended.
fn beside(ledger: &Path, suffix: &str) -> PathBuf {
    let mut p = ledger.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

impl Ledger {
    /// Opens (or creates) the ledger file and its key file (`<ledger>.key`), as the one
    /// writer of the ledger; `station` is the station id recorded with every device it
    /// begins.
    ///
    /// Refused when another process has the ledger open ([`LedgerError::InUse`]), when the
    /// ledger holds sealed keys and the key file is missing ([`LedgerError::KeyMissing`]) or
    /// is not theirs ([`LedgerError::KeyMismatch`]), and for a schema this version cannot
    /// upgrade ([`LedgerError::Schema`]). A key file is created only for a ledger without
    /// sealed keys.
    pub fn open(path: &Path, station: &str) -> Result<Ledger, LedgerError> {
        let (journal, records) = sqlite::open(path, station)?;
        Ok(Ledger {
            journal: Arc::new(journal),
            view: LedgerView::of(records),
        })
    }

    /// Opens the ledger at `at`: a file as [`open`](Self::open) does, or a PostgreSQL
    /// database, where the lock is per station id (a second station with the same id is
    /// refused with [`LedgerError::StationInUse`], other stations share the ledger), the
    /// schema is migrated once however many stations start together, and the key file is
    /// this station's own. Blocking work: call it off the async reactor.
    pub fn open_at(at: &LedgerLocation, station: &str) -> Result<Ledger, LedgerError> {
        Ledger::open_leasing(at, station, DEFAULT_LEASE)
    }

    /// [`open_at`](Self::open_at) with serial leases of `lease` (`station.lease_s`) on a
    /// PostgreSQL ledger: a lease this station stops renewing (it died) expires after `lease`,
    /// and another station may then take the serial over. A file ledger has one station and
    /// no leases.
    pub fn open_leasing(
        at: &LedgerLocation,
        station: &str,
        lease: std::time::Duration,
    ) -> Result<Ledger, LedgerError> {
        match at {
            LedgerLocation::File(path) => Ledger::open(path, station),
            LedgerLocation::Postgres { url, key_file } => {
                let (journal, records) = postgres::open(url, key_file, station, lease)?;
                Ok(Ledger {
                    journal: Arc::new(journal),
                    view: LedgerView::of(records),
                })
            }
        }
    }

    /// Records that a board is being provisioned. A board left unfinished by an earlier run
    /// resumes where it stopped ([`Begun::resume`]); a verified board is refused
    /// ([`LedgerError::AlreadyProvisioned`]): it must not get a second identity. On a shared
    /// PostgreSQL ledger the station first leases the serial: a board whose serial another
    /// station holds is refused ([`LedgerError::HeldElsewhere`], naming that station).
    pub async fn begin(&self, serial: &str, jig: &str) -> Result<Begun, LedgerError> {
        begun(serial, self.journal.begin(serial, jig).wait().await?)
    }

    /// [`begin`](Self::begin) for plain threads.
    pub fn begin_blocking(&self, serial: &str, jig: &str) -> Result<Begun, LedgerError> {
        begun(serial, self.journal.begin(serial, jig).wait_blocking()?)
    }

    /// Lets this station's lease on device `id`'s serial go while the device stays in its
    /// state (a load test's device, which has no board to write, ends at `registered`).
    /// Verified, failed and interrupted devices let theirs go when recorded.
    pub async fn release(&self, id: i64) -> Result<(), LedgerError> {
        self.journal.release(id).wait().await
    }

    /// Records a state change; returns once it is durable.
    pub async fn record(&self, id: i64, t: Transition) -> Result<(), LedgerError> {
        self.journal.record(id, t).wait().await
    }

    /// [`record`](Self::record) for plain threads (the jig writers).
    pub fn record_blocking(&self, id: i64, t: Transition) -> Result<(), LedgerError> {
        self.journal.record(id, t).wait_blocking()
    }

    /// Adds an audit-trail entry without changing the device's state.
    pub async fn note(&self, id: i64, what: &str, detail: &str) -> Result<(), LedgerError> {
        self.journal.note(id, what, detail).wait().await
    }

    /// Records that a CreateCertificateFromCsr request was sent and its answer lost (a
    /// timeout, or the connection closed after the publish), before the engine retries with
    /// the same key: AWS may have issued a certificate the station never saw. It is listed as
    /// a `pending` orphan with no certificate id and the device's current public key (once
    /// per key); the device's state is unchanged. Nothing is recorded when the device has no
    /// public key on record.
    pub async fn note_lost_request(&self, id: i64, reason: &str) -> Result<(), LedgerError> {
        self.journal.note_lost_request(id, reason).wait().await
    }
}

/// What `begin` tells the station.
fn begun(serial: &str, began: Began) -> Result<Begun, LedgerError> {
    match began {
        Began::Fresh(id) => Ok(Begun { id, resume: None }),
        Began::Resumed(id, resume) => Ok(Begun {
            id,
            resume: Some(resume),
        }),
        Began::Verified { thing } => Err(LedgerError::AlreadyProvisioned {
            serial: serial.to_string(),
            thing,
        }),
        Began::Held {
            station,
            expires_in_s,
        } => Err(LedgerError::HeldElsewhere {
            serial: serial.to_string(),
            station,
            expires_in_s,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests;
