//! The ledger for people: the audit trail as CSV or JSON (serial ↔ certificate id ↔ thing ↔
//! jig ↔ station ↔ times), read through a [`LedgerView`] so it runs beside a working station,
//! and the orphan report with the AWS CLI commands that clean up.

use std::io::Write;

use serde::Serialize;

use super::{DeviceRow, LedgerError, LedgerView, Orphan};

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

/// One exported row (fields in [`HEADER`] order).
#[derive(Debug, Serialize)]
pub struct ExportRow<'a> {
    pub serial: &'a str,
    pub state: &'a str,
    pub thing_name: &'a str,
    pub certificate_id: &'a str,
    pub key_source: &'a str,
    pub jig: &'a str,
    pub station: &'a str,
    pub attempts: i64,
    pub first_seen: String,
    pub last_change: String,
    pub reason: &'a str,
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

/// Writes every device as CSV with a header row.
pub fn write_csv(ledger: &LedgerView, out: impl Write) -> Result<(), ExportError> {
    let devices = ledger.devices()?;
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

/// Writes every device as a JSON array.
pub fn write_json(ledger: &LedgerView, mut out: impl Write) -> Result<(), ExportError> {
    let devices = ledger.devices()?;
    let rows: Vec<ExportRow<'_>> = devices.iter().map(row).collect();
    serde_json::to_writer_pretty(&mut out, &rows).map_err(|e| ExportError::Io(e.into()))?;
    writeln!(out).map_err(ExportError::Io)?;
    Ok(())
}

/// The orphan report: what each orphan is and the AWS CLI commands that clean it up.
/// `region`/`account` go into the certificate ARNs (`detach-thing-principal`).
pub fn orphan_report(orphans: &[Orphan], region: &str, account: &str) -> String {
    if orphans.is_empty() {
        return "no orphaned certificates\n".to_string();
    }
    let mut out = String::new();
    for o in orphans {
        match (&o.certificate_id, o.status.as_str()) {
            (Some(id), status @ ("active" | "unknown")) => {
                let what = if status == "active" {
                    "ACTIVE"
                } else {
                    "possibly ACTIVE (a registration may have happened)"
                };
                out.push_str(&format!(
                    "# {id}: {what}, board {} never got it ({})\n",
                    o.serial, o.reason
                ));
                out.push_str(&format!(
                    "aws iot update-certificate --certificate-id {id} --new-status INACTIVE\n"
                ));
                if let Some(thing) = &o.thing_name {
                    out.push_str(&format!(
                        "aws iot detach-thing-principal --thing-name {thing} --principal arn:aws:iot:{region}:{account}:cert/{id}\n"
                    ));
                }
                out.push_str(&format!(
                    "aws iot delete-certificate --certificate-id {id} --force-delete\n"
                ));
            }
            (Some(id), _) => {
                out.push_str(&format!(
                    "# {id}: never registered, board {} ({}); AWS deletes it when its ownership token expires (1 h), or now:\n",
                    o.serial, o.reason
                ));
                out.push_str(&format!(
                    "aws iot delete-certificate --certificate-id {id}\n"
                ));
            }
            (None, _) => {
                out.push_str(&format!(
                    "# board {}: a certificate request for public key sha256:{} was in flight ({}); \
                     if AWS issued it, it stays PENDING_ACTIVATION and AWS deletes it after 1 h\n",
                    o.serial,
                    o.public_key_sha256.as_deref().unwrap_or("?"),
                    o.reason
                ));
            }
        }
    }
    out
}

/// The region in an AWS IoT data endpoint (`xxxx-ats.iot.REGION.amazonaws.com`).
pub fn region_of(endpoint: &str) -> Option<&str> {
    let mut parts = endpoint.split('.');
    parts.next()?;
    (parts.next()? == "iot").then_some(())?;
    parts.next().filter(|r| !r.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_comes_from_the_endpoint() {
        assert_eq!(
            region_of("abc123-ats.iot.eu-west-1.amazonaws.com"),
            Some("eu-west-1")
        );
        assert_eq!(region_of("embedded"), None);
        assert_eq!(region_of("localhost"), None);
    }

    #[test]
    fn the_report_says_what_to_run_for_each_kind_of_orphan() {
        let o = |id: Option<&str>, status: &str, thing: Option<&str>| Orphan {
            certificate_id: id.map(str::to_string),
            public_key_sha256: Some("ab".into()),
            serial: "SN".into(),
            status: status.into(),
            thing_name: thing.map(str::to_string),
            reason: "r".into(),
            recorded_ms: 0,
        };
        let report = orphan_report(
            &[
                o(Some("c1"), "active", Some("t1")),
                o(Some("c2"), "pending", None),
                o(None, "unknown", None),
            ],
            "eu-west-1",
            "111122223333",
        );
        assert!(
            report.contains("aws iot update-certificate --certificate-id c1 --new-status INACTIVE")
        );
        assert!(report.contains("aws iot detach-thing-principal --thing-name t1 --principal arn:aws:iot:eu-west-1:111122223333:cert/c1"));
        assert!(report.contains("aws iot delete-certificate --certificate-id c1 --force-delete"));
        assert!(report.contains("aws iot delete-certificate --certificate-id c2\n"));
        assert!(report.contains("sha256:ab"));
        assert_eq!(orphan_report(&[], "r", "a"), "no orphaned certificates\n");
    }
}
