//! A run's report folder through the real CLI: after `station run` it holds one `.hgrm` per
//! stage whose rows give back the summary's percentiles, `latency.svg` and `throughput.svg`
//! that parse as XML with their series, and `failures.csv`; `station report DIR` prints the
//! summary as a table and `--compare OTHER` prints two runs side by side; a report folder
//! that cannot be written stops the run at start, before any device is provisioned.

use std::path::Path;

use crate::common::cli::{StationConfig, count, station};

const STAGES: [&str; 5] = [
    "keygen",
    "create_certificate",
    "register_thing",
    "jig_write",
    "end_to_end",
];

/// `station run --boards N` on the virtual line, its report in `dir/<name>`.
fn run(dir: &Path, config: &Path, name: &str, boards: usize) -> serde_json::Value {
    let out = station()
        .args(["run", "--boards", &boards.to_string(), "--config"])
        .arg(config)
        .arg("--report-dir")
        .arg(dir.join(name))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(dir.join(name).join("summary.json")).unwrap()).unwrap()
}

/// The data rows of an `.hgrm` file: (value ms, quantile), and the footer's total count.
fn hgrm(text: &str) -> (Vec<(f64, f64)>, u64) {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    );
    let rows = text
        .lines()
        .skip(2)
        .take_while(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap())
        })
        .collect();
    let total = text
        .lines()
        .find_map(|l| l.split_once("Total count    =").map(|(_, t)| t))
        .expect("a footer with the total count")
        .trim_end_matches(']')
        .trim()
        .parse()
        .unwrap();
    (rows, total)
}

/// The value at quantile `q` lies between the rows around it. (Not always equal to the row
/// printed at a tick `q`: HdrHistogram's iterator reaches its ticks by adding increments, so
/// the tick printed as 0.900000000000 may be 0.9000000000000001 and take the next sample, as
/// Java's `outputPercentileDistribution` does.)
fn bracketed(rows: &[(f64, f64)], q: f64, value: f64, what: &str) {
    let after = rows
        .iter()
        .position(|r| r.1 >= q)
        .unwrap_or_else(|| panic!("{what}: no row reaches {q}: {rows:?}"));
    assert!(value <= rows[after].0, "{what}: {value} above {rows:?}");
    if after > 0 {
        assert!(rows[after - 1].0 <= value, "{what}: {value} below {rows:?}");
    }
}

/// The series (the 2 px polylines, each with more than one point) and the texts of an SVG,
/// parsed as XML.
fn svg(path: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
        .filter(|n| {
            n.attribute("points")
                .is_some_and(|p| p.split_whitespace().count() > 1)
        })
        .count();
    let texts = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_string()))
        .collect();
    (lines, texts)
}

#[test]
fn a_run_s_report_folder_holds_histograms_plots_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let config = StationConfig::embedded(dir.path()).write();
    let summary = run(dir.path(), &config, "r", 40);
    let folder = dir.path().join("r");

    for stage in STAGES {
        let text = std::fs::read_to_string(folder.join(format!("{stage}.hgrm"))).unwrap();
        let (rows, total) = hgrm(&text);
        let s = &summary["stages"][stage];
        assert_eq!(total, s["count"].as_u64().unwrap(), "{stage}");
        assert_eq!(total, 40, "{stage}");
        for (q, key) in [(0.5, "p50_ms"), (0.9, "p90_ms"), (0.99, "p99_ms")] {
            bracketed(
                &rows,
                q,
                s[key].as_f64().unwrap(),
                &format!("{stage} {key}"),
            );
        }
        let last = rows.last().unwrap();
        assert_eq!(last.1, 1.0, "{stage}: the last row is 100 %");
        assert_eq!(last.0, s["max_ms"].as_f64().unwrap(), "{stage}: max");
    }

    let (lines, texts) = svg(&folder.join("latency.svg"));
    assert_eq!(lines, STAGES.len(), "one line per stage: {texts:?}");
    for stage in STAGES {
        assert!(
            texts.iter().any(|t| t == stage),
            "legend {stage}: {texts:?}"
        );
    }
    let (lines, texts) = svg(&folder.join("throughput.svg"));
    assert_eq!(lines, 2, "{texts:?}");
    assert!(
        texts.iter().any(|t| t == "provisioned per second"),
        "{texts:?}"
    );
    assert!(texts.iter().any(|t| t == "failed per second"), "{texts:?}");

    let failures = std::fs::read_to_string(folder.join("failures.csv")).unwrap();
    let mut rows = failures.lines();
    assert_eq!(
        rows.next(),
        Some("serial,stage,reason,attempts,time"),
        "{failures}"
    );
    assert_eq!(rows.count(), 0, "nothing failed: {failures}");
}

#[test]
fn station_report_prints_a_run_and_compares_two() {
    let dir = tempfile::tempdir().unwrap();
    let config = StationConfig::embedded(dir.path()).write();
    run(dir.path(), &config, "a", 6);
    run(dir.path(), &config, "b", 9);

    let out = station()
        .arg("report")
        .arg(dir.path().join("a"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("6 total, 6 provisioned, 0 failed"), "{text}");
    for stage in STAGES {
        assert!(
            text.lines().any(|l| l.starts_with(stage)),
            "no {stage} row: {text}"
        );
    }

    let out = station()
        .arg("report")
        .arg(dir.path().join("a"))
        .arg("--compare")
        .arg(dir.path().join("b"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("devices provisioned"))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        row["devices provisioned".len()..]
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["6", "9", "+3", "+50.0", "%"]
    );

    // A folder without a summary: the path, a code and the fix.
    let out = station()
        .arg("report")
        .arg(dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nowhere"), "{stderr}");
    assert!(stderr.contains("station::report::"), "{stderr}");
}

#[test]
fn a_report_folder_that_cannot_be_written_stops_the_run_before_any_device() {
    let dir = tempfile::tempdir().unwrap();
    let config = StationConfig::embedded(dir.path()).write();
    // A file where the report folder's parent should be.
    std::fs::write(dir.path().join("taken"), "a file").unwrap();
    let out = station()
        .args(["run", "--boards", "5", "--config"])
        .arg(&config)
        .arg("--report-dir")
        .arg(dir.path().join("taken/r"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("station::report::not_writable"), "{stderr}");
    assert!(stderr.contains("--report-dir"), "the fix: {stderr}");
    let ledger = dir.path().join("ledger.db");
    if ledger.exists() {
        assert_eq!(count(&ledger, "SELECT count(*) FROM devices"), 0);
    }
}
