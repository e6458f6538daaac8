//! The ledger read-only: [`LedgerView`] is what `station ledger export` and `station ledger
//! orphans` read while a station may be writing the same ledger, and what a [`Ledger`]
//! reads through. It writes nothing and takes no lock.
//!
//! [`Ledger`]: super::Ledger

use std::path::Path;
use std::sync::Arc;

use super::backend::Records;
use super::sqlite::SqliteRecords;
use super::{DeviceRow, DeviceState, LedgerError, LedgerLocation, Orphan};

/// Read access to a ledger. [`Ledger`](super::Ledger) dereferences to one.
#[derive(Debug, Clone)]
pub struct LedgerView {
    records: Arc<dyn Records>,
}

impl LedgerView {
    /// Opens an existing ledger for reading. Refuses a missing file and a schema this version
    /// does not read.
    pub fn open(path: &Path) -> Result<LedgerView, LedgerError> {
        Ok(LedgerView::of(SqliteRecords::open(path)?))
    }

    /// Opens the ledger at `at` for reading: a file as [`open`](Self::open) does, or a
    /// PostgreSQL database through a read-only session (refused when it holds no ledger or
    /// one of a schema this version does not read).
    pub fn open_at(at: &LedgerLocation) -> Result<LedgerView, LedgerError> {
        match at {
            LedgerLocation::File(path) => LedgerView::open(path),
            LedgerLocation::Postgres { url, .. } => {
                Ok(LedgerView::of(super::postgres::PgRecords::open(url)?))
            }
        }
    }

    pub(super) fn of(records: impl Records + 'static) -> LedgerView {
        LedgerView {
            records: Arc::new(records),
        }
    }

    /// One device by serial.
    pub fn device(&self, serial: &str) -> Result<Option<DeviceRow>, LedgerError> {
        self.records.device(serial)
    }

    /// Every device, in the order they were first seen.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, LedgerError> {
        self.records.devices()
    }

    /// Devices an earlier run left part-way (holding a key or a certificate): they resume
    /// where they stopped when their boards are placed again. A device at `started` holds
    /// nothing and simply starts afresh, so it is not listed.
    pub fn unfinished(&self) -> Result<Vec<DeviceRow>, LedgerError> {
        self.records.devices_in(&resuming())
    }

    /// How many devices [`unfinished`](Self::unfinished) would list, without reading them.
    pub fn unfinished_count(&self) -> Result<usize, LedgerError> {
        self.records.count_in(&resuming())
    }

    /// [`unfinished_count`](Self::unfinished_count) by station: on a shared ledger, each
    /// station's own (station id, count), stations with none left out.
    pub fn unfinished_by_station(&self) -> Result<Vec<(String, usize)>, LedgerError> {
        self.records.count_by_station(&resuming())
    }

    /// The audit trail of one device, oldest first: (state or note, detail, time in ms).
    pub fn events(&self, id: i64) -> Result<Vec<(String, Option<String>, i64)>, LedgerError> {
        self.records.events(id)
    }

    /// Every orphaned certificate, in the order they were recorded.
    pub fn orphans(&self) -> Result<Vec<Orphan>, LedgerError> {
        self.records.orphans()
    }
}

/// The states a device resumes from.
fn resuming() -> Vec<DeviceState> {
    DeviceState::ALL
        .into_iter()
        .filter(|s| s.resumes())
        .collect()
}
