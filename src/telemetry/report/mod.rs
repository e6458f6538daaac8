//! The run's report folder beyond `summary.json`, and `station report`.
//!
//! At the end of every `run` and `loadtest`, [`write_run_files`] writes into the report
//! folder:
//! - `<stage>.hgrm` for each stage ([`hgrm`]): HdrHistogram's percentile distribution, in ms;
//! - `latency.svg` and `throughput.svg` ([`plot`]);
//! - `failures.csv` ([`failures`]): one row per failed device.
//!
//! The folder is checked at start ([`probe_writable`]), so a run never provisions boards
//! only to find it cannot write what it learned. `station report DIR [--compare OTHER]`
//! ([`command`], [`table`]) prints a past run's `summary.json`, or two side by side.

pub mod failures;
pub mod hgrm;
pub mod plot;
pub mod table;

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::summary::Summary;
use super::{Aggregate, Stage};

/// A report folder that cannot be written or read.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ReportError {
    #[error("the report folder {path} cannot be written: {source}")]
    #[diagnostic(
        code(station::report::not_writable),
        help(
            "pass a writable directory with --report-dir, or set station.report_dir to one; the run writes summary.json, the .hgrm files, latency.svg, throughput.svg and failures.csv there (nothing was provisioned)"
        )
    )]
    NotWritable {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot write {path}: {source}")]
    #[diagnostic(
        code(station::report::write),
        help(
            "the folder was writable at start: check the disk is not full and nothing removed or locked the folder; summary.json and the ledger hold the run's figures and devices"
        )
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot draw {path}: {reason}")]
    #[diagnostic(
        code(station::report::plot),
        help(
            "summary.json and the .hgrm files hold the figures; report this as a bug with the run's summary.json"
        )
    )]
    Plot { path: PathBuf, reason: String },

    #[error("no readable run summary at {path}: {source}")]
    #[diagnostic(
        code(station::report::no_summary),
        help(
            "pass a run's report folder, the one `station run` or `station loadtest` printed (by default <station.report_dir>/<UTC timestamp>/, which holds summary.json)"
        )
    )]
    NoSummary {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path} is not a run summary: {reason}")]
    #[diagnostic(
        code(station::report::bad_summary),
        help(
            "summary.json is written by `station run` and `station loadtest`; pass the folder of such a run, with the file as the station wrote it"
        )
    )]
    BadSummary { path: PathBuf, reason: String },
}

/// The probe file's name (removed at once).
const PROBE: &str = ".station-write-probe";

/// Checks that `dir` takes files: creates a probe file in it and removes it.
pub fn probe_writable(dir: &Path) -> Result<(), ReportError> {
    let not_writable = |source| ReportError::NotWritable {
        path: dir.to_path_buf(),
        source,
    };
    let probe = dir.join(format!("{PROBE}-{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(not_writable)?;
    let written = f.write_all(b"probe").and_then(|()| f.sync_all());
    drop(f);
    let removed = std::fs::remove_file(&probe);
    written.map_err(not_writable)?;
    removed.map_err(not_writable)
}

/// The files [`write_run_files`] writes, besides `summary.json`.
pub fn run_file_names() -> Vec<String> {
    let mut names: Vec<String> = Stage::ALL
        .iter()
        .map(|s| format!("{}.hgrm", s.name()))
        .collect();
    names.extend(["latency.svg", "throughput.svg", "failures.csv"].map(String::from));
    names
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ReportError> {
    let path = dir.join(name);
    crate::files::write_atomic(&path, bytes).map_err(|source| ReportError::Write { path, source })
}

/// Writes the `.hgrm` files, the plots and `failures.csv` of a finished run into `dir`.
pub fn write_run_files(dir: &Path, agg: &Aggregate) -> Result<(), ReportError> {
    for stage in Stage::ALL {
        if let Some(h) = agg.histograms.get(&stage) {
            write(
                dir,
                &format!("{}.hgrm", stage.name()),
                hgrm::render(h).as_bytes(),
            )?;
        }
    }
    let plot_err = |name: &str| {
        let path = dir.join(name);
        move |e: plot::PlotError| ReportError::Plot {
            path,
            reason: e.to_string(),
        }
    };
    let latency = plot::latency_svg(&agg.histograms).map_err(plot_err("latency.svg"))?;
    write(dir, "latency.svg", latency.as_bytes())?;
    let throughput = plot::throughput_svg(&agg.seconds).map_err(plot_err("throughput.svg"))?;
    write(dir, "throughput.svg", throughput.as_bytes())?;
    let csv = failures::render(&agg.failure_log).map_err(|e| ReportError::Write {
        path: dir.join("failures.csv"),
        source: std::io::Error::other(e),
    })?;
    write(dir, "failures.csv", &csv)
}

/// Reads `<dir>/summary.json`.
pub fn load_summary(dir: &Path) -> Result<Summary, ReportError> {
    let path = dir.join("summary.json");
    let bytes = std::fs::read(&path).map_err(|source| ReportError::NoSummary {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ReportError::BadSummary {
        path,
        reason: e.to_string(),
    })
}

/// `station report DIR [--compare OTHER]`: the text to print.
pub fn command(dir: &Path, compare: Option<&Path>) -> Result<String, ReportError> {
    let summary = load_summary(dir)?;
    match compare {
        None => Ok(table::render(&summary, dir)),
        Some(other) => {
            let other_summary = load_summary(other)?;
            Ok(table::compare(&summary, dir, &other_summary, other))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::telemetry::{Event, FailureRecord};

    #[test]
    fn the_probe_leaves_nothing_behind_and_names_a_folder_it_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        probe_writable(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        // Under a regular file no one (root included) can create anything.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = probe_writable(&file.join("sub")).unwrap_err();
        assert!(matches!(&err, ReportError::NotWritable { path, .. } if *path == file.join("sub")));
        let code = miette::Diagnostic::code(&err).unwrap().to_string();
        assert_eq!(code, "station::report::not_writable");
        assert!(
            miette::Diagnostic::help(&err)
                .unwrap()
                .to_string()
                .contains("--report-dir")
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_existing_folder_that_takes_no_files_fails_the_probe() {
        // /proc exists, and not even root can create a file in it.
        assert!(matches!(
            probe_writable(Path::new("/proc")),
            Err(ReportError::NotWritable { .. })
        ));
    }

    #[test]
    fn a_run_s_files_are_written_and_a_summary_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut agg = Aggregate::new();
        let mut stock = (0, 0);
        for ms in [3, 5, 8] {
            agg.apply(
                Event::StageTime {
                    stage: Stage::EndToEnd,
                    elapsed: Duration::from_millis(ms),
                },
                &mut stock,
            );
        }
        agg.failure_log.push(FailureRecord {
            serial: "SN-9".into(),
            stage: "other",
            reason: "parameter:mac".into(),
            attempts: 0,
            at: Duration::from_millis(5),
            wall: SystemTime::now(),
        });
        write_run_files(dir.path(), &agg).unwrap();
        for name in run_file_names() {
            assert!(dir.path().join(&name).is_file(), "{name}");
        }
        let csv = std::fs::read_to_string(dir.path().join("failures.csv")).unwrap();
        assert_eq!(csv.lines().count(), 2);
        assert!(
            csv.lines()
                .nth(1)
                .unwrap()
                .starts_with("SN-9,other,parameter:mac,0,")
        );

        let err = load_summary(dir.path()).unwrap_err();
        assert!(
            matches!(&err, ReportError::NoSummary { path, .. } if path.ends_with("summary.json"))
        );
        let summary = Summary::from_aggregate(&agg, 3, None);
        summary.write(dir.path()).unwrap();
        assert_eq!(load_summary(dir.path()).unwrap(), summary);
        std::fs::write(dir.path().join("summary.json"), b"{\"devices\": 3}").unwrap();
        assert!(matches!(
            load_summary(dir.path()),
            Err(ReportError::BadSummary { .. })
        ));
    }
}
