//! The ledger through the real CLI while a station works on it: `station ledger export` and
//! `station ledger orphans` read beside a running line without stopping it, and a second
//! station on the same ledger is refused (naming the first) until the first is gone, even
//! when it was killed with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::cli::{StationConfig, count, ledger, station, succeeded, wait_for};

/// A station configuration with the embedded emulator, virtual jigs and its ledger in `dir`.
fn write_config(dir: &Path, id: &str) -> PathBuf {
    StationConfig::embedded(dir)
        .set_str("station.id", id)
        .write()
}

/// A running station, killed if the test ends (or fails) before it exits.
struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `station run` with its output in files (a full pipe never stalls it).
fn spawn_run(dir: &Path, config: &Path, name: &str, args: &[&str]) -> Running {
    let child = station()
        .args(["run", "--config"])
        .arg(config)
        .arg("--report-dir")
        .arg(dir.join(format!("report-{name}")))
        .args(args)
        .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
        .spawn()
        .unwrap();
    Running(child)
}

fn output_of(dir: &Path, name: &str) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap_or_default(),
        std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default()
    )
}

#[test]
fn export_and_orphans_run_beside_a_working_line_without_stopping_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "line-a");
    let ledger_path = dir.path().join("ledger.db");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut run = spawn_run(
        dir.path(),
        &config,
        "run",
        &["--boards", "300", "--jigs", "8"],
    );
    // Until the station has created the ledger there is nothing to read.
    wait_for(&mut run, "the ledger's schema", || {
        count(&ledger_path, "PRAGMA user_version") > 0
    });

    let (mut exports, mut during) = (0, 0);
    let status = loop {
        let what: &[&str] = if exports % 2 == 0 {
            &["export", "--format", "csv"]
        } else {
            &["orphans"]
        };
        let out = ledger(&config, what);
        assert!(
            out.status.success(),
            "`station ledger {}` failed while the line ran:\n{}",
            what.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        exports += 1;
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        during += 1;
        if Instant::now() > deadline {
            run.kill().unwrap();
            run.wait().unwrap();
            panic!(
                "the run did not finish within 120 s beside {exports} exports (a hang?):\n{}",
                output_of(dir.path(), "run")
            );
        }
    };
    let output = output_of(dir.path(), "run");
    assert!(status.success(), "{status}\n{output}");
    assert!(
        output.contains("devices: 300 provisioned, 0 failed, of 300"),
        "{output}"
    );
    assert!(during >= 2, "only {during} exports ran during the line");
    eprintln!("300 boards verified beside {during} ledger exports and orphan reports");

    // The last export shows the whole line verified.
    let out = ledger(&config, &["export", "--format", "csv"]);
    assert!(out.status.success());
    let csv = String::from_utf8(out.stdout).unwrap();
    assert_eq!(csv.lines().count(), 301, "header and 300 boards");
    assert_eq!(csv.matches(",verified,").count(), 300, "{csv}");
    let orphans = ledger(&config, &["orphans"]);
    assert!(orphans.status.success());
    let script = String::from_utf8(orphans.stdout).unwrap();
    assert!(script.starts_with("#!/usr/bin/env bash\n"), "{script}");
    assert!(
        script.contains("# 0 orphaned certificate(s) in the ledger; 0 to remove."),
        "{script}"
    );
}

#[test]
fn a_second_station_on_one_ledger_is_refused_until_the_first_is_gone_even_by_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "line-b");
    let ledger_path = dir.path().join("ledger.db");
    let lock = dir.path().join("ledger.db.lock");
    // Many boards at a low line rate: this run is still working when it is killed.
    let mut first = spawn_run(
        dir.path(),
        &config,
        "first",
        &["--boards", "2000", "--baud", "9600"],
    );
    let holder = format!("station line-b, pid {}, host ", first.id());
    wait_for(&mut first, "the lock holder's details", || {
        std::fs::read_to_string(&lock).is_ok_and(|t| t.starts_with(&holder))
    });
    // It has devices part-way (keys sealed under the ledger's key) when it dies.
    wait_for(&mut first, "a device holding a key", || {
        count(
            &ledger_path,
            "SELECT count(*) FROM devices WHERE sealed_key IS NOT NULL",
        ) > 0
    });

    let second = station()
        .args(["run", "--boards", "3", "--config"])
        .arg(&config)
        .arg("--report-dir")
        .arg(dir.path().join("report-second"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    // The report wraps long lines in a box: compare its words.
    let words = stderr
        .split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ");
    assert!(words.contains("is in use by another station"), "{stderr}");
    assert!(
        words.contains(holder.trim_end()),
        "names the holder: {stderr}"
    );
    assert!(words.contains("station::ledger::in_use"), "{stderr}");
    assert!(words.contains("stop the other station first"), "{stderr}");
    // Reading still works beside it.
    assert!(ledger(&config, &["export"]).status.success());
    assert!(first.try_wait().unwrap().is_none(), "the first run went on");

    // SIGKILL: no clean-up runs, the kernel drops the lock.
    first.kill().unwrap();
    first.wait().unwrap();
    let out = station()
        .args(["run", "--boards", "4", "--baud", "0", "--config"])
        .arg(&config)
        .arg("--report-dir")
        .arg(dir.path().join("report-third"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert!(
        stdout.contains("devices: 4 provisioned, 0 failed, of 4"),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&lock).unwrap();
    assert!(text.starts_with("station line-b, pid "), "{text}");
    assert!(
        !text.starts_with(&holder),
        "the new run wrote its own details"
    );
}
