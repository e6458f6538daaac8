//! `failures.csv`: one row per failed device of the run (the aggregate's failure log), with a
//! header: `serial,stage,reason,attempts,time`. `stage` is the stage it failed in (`other`
//! for failures outside the timed stages), `reason` its failure code, `attempts` the API
//! requests sent for it in this run (retries included), `time` the failure's wall-clock time
//! in RFC 3339, UTC.

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::telemetry::FailureRecord;

/// The CSV header.
pub const HEADER: [&str; 5] = ["serial", "stage", "reason", "attempts", "time"];

/// RFC 3339 in UTC, to the millisecond: `2026-12-03T14:27:18.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    // Millisecond precision: a failure log does not need nanoseconds.
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The file's bytes.
pub fn render(log: &[FailureRecord]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(HEADER)?;
    for f in log {
        w.write_record([
            f.serial.as_str(),
            f.stage,
            f.reason.as_str(),
            &f.attempts.to_string(),
            &rfc3339(f.wall),
        ])?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn record(serial: &str, reason: &str, wall: SystemTime) -> FailureRecord {
        FailureRecord {
            serial: serial.into(),
            stage: "register_thing",
            reason: reason.into(),
            attempts: 3,
            at: Duration::from_millis(1500),
            wall,
        }
    }

    #[test]
    fn one_row_per_failed_device_under_a_header_with_utc_times() {
        let wall = UNIX_EPOCH + Duration::from_millis(1_796_310_438_123);
        let bytes = render(&[
            record("SN-1", "register_thing:InvalidParameters", wall),
            // A reason with a comma and a quote is quoted, not split.
            record("SN-2", "jig:\"odd\", reason", wall),
        ])
        .unwrap();
        let mut r = csv::Reader::from_reader(bytes.as_slice());
        assert_eq!(r.headers().unwrap(), HEADER.as_slice());
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].iter().collect::<Vec<_>>(),
            [
                "SN-1",
                "register_thing",
                "register_thing:InvalidParameters",
                "3",
                "2026-12-03T15:07:18.123Z"
            ]
        );
        assert_eq!(&rows[1][2], "jig:\"odd\", reason");
    }

    #[test]
    fn a_run_without_failures_has_the_header_only() {
        let bytes = render(&[]).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "serial,stage,reason,attempts,time\n"
        );
    }
}
