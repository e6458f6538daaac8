//! The ledger for people: the audit trail as CSV or JSON (serial ↔ certificate id ↔ thing ↔
//! jig ↔ station ↔ times), read through a [`LedgerView`] so it runs beside a working station.
//! On a shared PostgreSQL ledger it covers every station (the `station` column says whose each
//! device is), or one ([`Filter`]).
//! (The orphan report is [`super::cleanup`].)

use std::io::Write;

use serde::Serialize;

use super::{DeviceRow, LedgerError, LedgerView};

const HEADER: [&str; 11] = [
    "serial",
    "state",
    "thing_name",
    "certificate_id",
    "key_source",
    "jig",
    "station",
    "attempts",
    "first_seen",
    "last_change",
    "reason",
];

/// One exported row (fields in [`HEADER`] order); times in RFC 3339, UTC.
#[derive(Debug, Serialize)]
struct ExportRow<'a> {
    serial: &'a str,
    state: &'a str,
    thing_name: &'a str,
    certificate_id: &'a str,
    key_source: &'a str,
    jig: &'a str,
    station: &'a str,
    attempts: i64,
    first_seen: String,
    last_change: String,
    reason: &'a str,
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn row(d: &DeviceRow) -> ExportRow<'_> {
    ExportRow {
        serial: &d.serial,
        state: d.state.as_str(),
        thing_name: d.thing_name.as_deref().unwrap_or(""),
        certificate_id: d.certificate_id.as_deref().unwrap_or(""),
        key_source: d.key_source.as_deref().unwrap_or(""),
        jig: &d.jig,
        station: &d.station,
        attempts: d.attempts,
        first_seen: rfc3339(d.created_ms),
        last_change: rfc3339(d.updated_ms),
        reason: d.reason.as_deref().unwrap_or(""),
    }
}

/// Which devices an export holds: every station's, or one station's (`--station ID`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter<'a> {
    pub station: Option<&'a str>,
}

impl Filter<'_> {
    /// Whether a row of `station` is kept.
    pub fn keeps(&self, station: &str) -> bool {
        self.station.is_none_or(|s| s == station)
    }
}

fn devices(ledger: &LedgerView, filter: Filter<'_>) -> Result<Vec<DeviceRow>, LedgerError> {
    let mut devices = ledger.devices()?;
    devices.retain(|d| filter.keeps(&d.station));
    Ok(devices)
}

/// Writes every device (of [`Filter`]) as CSV with a header row.
pub fn write_csv(
    ledger: &LedgerView,
    filter: Filter<'_>,
    out: impl Write,
) -> Result<(), ExportError> {
    let devices = devices(ledger, filter)?;
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(out);
    // The header is written even when there are no rows.
    w.write_record(HEADER)?;
    for d in &devices {
        w.serialize(row(d))?;
    }
    w.flush()
        .map_err(|e| ExportError::Csv(csv::Error::from(e)))?;
    Ok(())
}

/// Writes every device (of [`Filter`]) as a JSON array.
pub fn write_json(
    ledger: &LedgerView,
    filter: Filter<'_>,
    mut out: impl Write,
) -> Result<(), ExportError> {
    let devices = devices(ledger, filter)?;
    let rows: Vec<ExportRow<'_>> = devices.iter().map(row).collect();
    serde_json::to_writer_pretty(&mut out, &rows).map_err(|e| ExportError::Io(e.into()))?;
    writeln!(out).map_err(ExportError::Io)?;
    Ok(())
}

/// Export failures.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ExportError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot write the export: {0}")]
    #[diagnostic(
        code(station::ledger::export),
        help("check the output path and free disk space")
    )]
    Io(std::io::Error),
    #[error("cannot write CSV: {0}")]
    #[diagnostic(
        code(station::ledger::export_csv),
        help("check the output path and free disk space")
    )]
    Csv(#[from] csv::Error),
}
