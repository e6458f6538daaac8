//! What `station report` prints: a past run's `summary.json` as a table, and two runs side by
//! side with the change of every figure (`--compare`).
//!
//! Every figure is printed with the decimals `summary.json` keeps (latencies in ms with three,
//! throughput with two, elapsed time with three), so the table shows the file's numbers, not
//! a rounding of them.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use crate::telemetry::Stage;
use crate::telemetry::summary::{StageStats, Summary, line_efficiency_shown, line_speed};

/// One figure of a summary, as compared between runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// What it is (`devices provisioned`, `end_to_end p99 ms`, `failed: <reason>`).
    pub label: String,
    pub value: f64,
    /// Decimals it is printed with.
    pub decimals: usize,
}

fn figure(label: impl Into<String>, value: f64, decimals: usize) -> Figure {
    Figure {
        label: label.into(),
        value,
        decimals,
    }
}

fn count(label: impl Into<String>, n: u64) -> Figure {
    figure(label, n as f64, 0)
}

/// The stages in pipeline order, then any others the file holds (a newer station's).
fn stage_names(s: &Summary) -> Vec<String> {
    let mut names: Vec<String> = Stage::ALL
        .iter()
        .map(|s| s.name().to_string())
        .filter(|n| s.stages.contains_key(n))
        .collect();
    names.extend(
        s.stages
            .keys()
            .filter(|k| !names.contains(k))
            .cloned()
            .collect::<Vec<_>>(),
    );
    names
}

fn stage_figures(name: &str, st: &StageStats) -> [Figure; 5] {
    [
        count(format!("{name} count"), st.count),
        figure(format!("{name} p50 ms"), st.p50_ms, 3),
        figure(format!("{name} p90 ms"), st.p90_ms, 3),
        figure(format!("{name} p99 ms"), st.p99_ms, 3),
        figure(format!("{name} max ms"), st.max_ms, 3),
    ]
}

/// Every figure of a summary, in table order. Failure reasons and jigs come from `keys`
/// (the union of both runs' when comparing; a reason or jig a run lacks counts 0 there).
fn figures_with(s: &Summary, reasons: &BTreeSet<String>, jigs: &BTreeSet<String>) -> Vec<Figure> {
    let d = &s.devices;
    let mut f = vec![
        count("devices total", d.total),
        count("devices provisioned", d.provisioned),
        count("devices failed", d.failed),
        count("devices interrupted", d.interrupted),
        figure("elapsed s", s.elapsed_s, 3),
        figure("throughput devices/s", s.throughput_per_s, 2),
        count("retries", s.retries),
        count("throttled", s.throttled),
        count("endpoint outages", s.endpoint.outages),
        figure("endpoint unreachable s", s.endpoint.unreachable_s, 3),
        count("session takeovers", s.endpoint.session_takeovers),
    ];
    for name in stage_names(s) {
        f.extend(stage_figures(&name, &s.stages[&name]));
    }
    for r in reasons {
        f.push(count(
            format!("failed: {r}"),
            s.failures.get(r).copied().unwrap_or(0),
        ));
    }
    if let Some(j) = &s.jigs {
        f.extend([
            count("jigs", j.count as u64),
            count("jig baud", u64::from(j.baud)),
            count("jig payload bytes", j.bytes_written),
            count("jig bytes held, skipped", j.bytes_skipped),
            figure("jig write ms a board", j.write_ms_per_board, 1),
            figure("line efficiency %", j.line_efficiency * 100.0, 2),
            count("jig retries", j.retries),
            count("boards failed at the jig", j.failed_boards),
        ]);
        for name in jigs {
            let e = j.per_jig.get(name).copied().unwrap_or(0.0);
            f.push(figure(format!("{name} line efficiency %"), e * 100.0, 2));
        }
    }
    f
}

/// Every figure of one summary, in table order.
pub fn figures(s: &Summary) -> Vec<Figure> {
    let reasons = s.failures.keys().cloned().collect();
    let jigs = s
        .jigs
        .as_ref()
        .map(|j| j.per_jig.keys().cloned().collect())
        .unwrap_or_default();
    figures_with(s, &reasons, &jigs)
}

fn num(v: f64, decimals: usize) -> String {
    format!("{v:.decimals$}")
}

/// One run's summary as a table.
pub fn render(s: &Summary, dir: &Path) -> String {
    let mut out = String::new();
    let d = &s.devices;
    let e = &s.endpoint;
    let _ = writeln!(out, "run report    {}", dir.display());
    let _ = writeln!(
        out,
        "devices       {} total, {} provisioned, {} failed, {} interrupted",
        d.total, d.provisioned, d.failed, d.interrupted
    );
    let _ = writeln!(out, "elapsed       {:.3} s", s.elapsed_s);
    let _ = writeln!(out, "throughput    {:.2} devices/s", s.throughput_per_s);
    let _ = writeln!(
        out,
        "requests      {} retries, {} throttled",
        s.retries, s.throttled
    );
    let _ = writeln!(
        out,
        "endpoint      {} outages, {:.3} s unreachable, {} session takeovers",
        e.outages, e.unreachable_s, e.session_takeovers
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20} {:>8} {:>12} {:>12} {:>12} {:>12}",
        "stage", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for name in stage_names(s) {
        let st = &s.stages[&name];
        let _ = writeln!(
            out,
            "{:<20} {:>8} {:>12.3} {:>12.3} {:>12.3} {:>12.3}",
            name, st.count, st.p50_ms, st.p90_ms, st.p99_ms, st.max_ms
        );
    }
    let _ = writeln!(out);
    if s.failures.is_empty() {
        let _ = writeln!(out, "failures by reason: none");
    } else {
        let _ = writeln!(out, "failures by reason");
        let width = s.failures.keys().map(String::len).max().unwrap_or(0);
        for (reason, n) in &s.failures {
            let _ = writeln!(out, "  {reason:<width$}  {n:>8}");
        }
    }
    match &s.jigs {
        None => {
            let _ = writeln!(out, "jigs: none (a load test)");
        }
        Some(j) => {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "jigs          {} {}, {} payload bytes ({} held by the boards, skipped), {:.1} ms a board, line efficiency {}, {} retries, {} boards failed at the jig",
                j.count,
                line_speed(j.baud),
                j.bytes_written,
                j.bytes_skipped,
                j.write_ms_per_board,
                line_efficiency_shown(j.baud, j.line_efficiency, 2),
                j.retries,
                j.failed_boards
            );
            for (name, e) in &j.per_jig {
                let _ = writeln!(out, "  {name:<12} line efficiency {:.2} %", e * 100.0);
            }
        }
    }
    out
}

/// The change from `a` to `b`: absolute (signed) and in % of `a` (`n/a` from 0 to non-0).
fn change(a: &Figure, b: &Figure) -> (String, String) {
    let decimals = a.decimals.max(b.decimals);
    let delta = b.value - a.value;
    let abs = format!("{delta:+.decimals$}");
    let pct = if a.value == 0.0 {
        if b.value == 0.0 {
            "+0.0 %".to_string()
        } else {
            "n/a".to_string()
        }
    } else {
        format!("{:+.1} %", delta / a.value.abs() * 100.0)
    };
    (abs, pct)
}

/// Two runs side by side: `a` (the folder given first) and `b` (`--compare`), with the change
/// from `a` to `b` of every figure.
pub fn compare(a: &Summary, a_dir: &Path, b: &Summary, b_dir: &Path) -> String {
    let reasons: BTreeSet<String> = a
        .failures
        .keys()
        .chain(b.failures.keys())
        .cloned()
        .collect();
    let jig_names = |s: &Summary| -> Vec<String> {
        s.jigs
            .as_ref()
            .map(|j| j.per_jig.keys().cloned().collect())
            .unwrap_or_default()
    };
    let jigs: BTreeSet<String> = jig_names(a).into_iter().chain(jig_names(b)).collect();
    let fa = figures_with(a, &reasons, &jigs);
    let fb = figures_with(b, &reasons, &jigs);
    let mut rows: Vec<[String; 5]> = Vec::new();
    // Figures in A's order; those only B has (jigs of a line against a load test) after.
    for f in &fa {
        let other = fb.iter().find(|g| g.label == f.label);
        let (bv, abs, pct) = match other {
            Some(g) => {
                let (abs, pct) = change(f, g);
                (num(g.value, g.decimals), abs, pct)
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        rows.push([f.label.clone(), num(f.value, f.decimals), bv, abs, pct]);
    }
    for g in fb.iter().filter(|g| !fa.iter().any(|f| f.label == g.label)) {
        rows.push([
            g.label.clone(),
            "-".into(),
            num(g.value, g.decimals),
            "-".into(),
            "-".into(),
        ]);
    }
    let header = ["figure", "A", "B", "change B-A", "change %"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].len())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let w: Vec<usize> = (0..5).map(width).collect();
    let mut out = String::new();
    let _ = writeln!(out, "A: {}", a_dir.display());
    let _ = writeln!(out, "B: {}", b_dir.display());
    let _ = writeln!(out);
    let line = |out: &mut String, r: &[String; 5]| {
        let _ = writeln!(
            out,
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {:>w4$}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4]
        );
    };
    line(&mut out, &header.map(String::from));
    for r in &rows {
        line(&mut out, r);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::telemetry::summary::{Devices, EndpointSummary, JigSummary};

    fn stats(p50: f64) -> StageStats {
        StageStats {
            count: 10,
            p50_ms: p50,
            p90_ms: p50 * 2.0,
            p99_ms: p50 * 3.0,
            max_ms: p50 * 4.0,
        }
    }

    fn summary(provisioned: u64, p50: f64, failures: &[(&str, u64)]) -> Summary {
        Summary {
            devices: Devices {
                total: 10,
                provisioned,
                failed: 10 - provisioned,
                interrupted: 0,
            },
            elapsed_s: 1.25,
            throughput_per_s: provisioned as f64 / 1.25,
            stages: Stage::ALL
                .iter()
                .map(|s| (s.name().to_string(), stats(p50)))
                .collect(),
            failures: failures.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
            retries: 1,
            throttled: 0,
            endpoint: EndpointSummary::default(),
            jigs: Some(JigSummary {
                count: 2,
                baud: 921_600,
                bytes_written: 36_000,
                bytes_skipped: 2_400,
                write_ms_per_board: 48.5,
                line_efficiency: 0.8123,
                retries: 0,
                failed_boards: 0,
                per_jig: BTreeMap::from([("jig-1".into(), 0.8), ("jig-2".into(), 0.8246)]),
            }),
        }
    }

    #[test]
    fn the_table_shows_the_summary_s_figures() {
        let s = summary(8, 12.345, &[("register_thing:InvalidParameters", 2)]);
        let text = render(&s, Path::new("reports/a"));
        assert!(text.contains("10 total, 8 provisioned, 2 failed"), "{text}");
        assert!(text.contains("throughput    6.40 devices/s"), "{text}");
        let e2e = text
            .lines()
            .find(|l| l.starts_with("end_to_end"))
            .expect("an end_to_end row");
        let cols: Vec<&str> = e2e.split_whitespace().collect();
        assert_eq!(
            cols,
            ["end_to_end", "10", "12.345", "24.690", "37.035", "49.380"]
        );
        assert!(
            text.contains("register_thing:InvalidParameters         2"),
            "{text}"
        );
        assert!(text.contains("line efficiency 81.23 %"), "{text}");
        assert!(
            text.contains("jig-2        line efficiency 82.46 %"),
            "{text}"
        );
    }

    #[test]
    fn compare_shows_both_runs_and_the_change() {
        let a = summary(10, 10.0, &[]);
        let b = summary(8, 12.5, &[("jig:timeout", 2)]);
        let text = compare(&a, Path::new("reports/a"), &b, Path::new("reports/b"));
        let row = |label: &str| -> Vec<String> {
            let line = text
                .lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no row {label}: {text}"));
            line[label.len()..]
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            row("end_to_end p50 ms"),
            ["10.000", "12.500", "+2.500", "+25.0", "%"]
        );
        assert_eq!(row("devices provisioned"), ["10", "8", "-2", "-20.0", "%"]);
        // A reason only B has: 0 in A, and no percentage from zero.
        assert_eq!(row("failed: jig:timeout"), ["0", "2", "+2", "n/a"]);
        assert_eq!(row("retries"), ["1", "1", "+0", "+0.0", "%"]);
        assert!(text.starts_with("A: reports/a\nB: reports/b\n"), "{text}");
    }

    #[test]
    fn a_load_test_compared_with_a_line_lists_the_jig_figures_of_the_line_only() {
        let line = summary(10, 10.0, &[]);
        let mut load = summary(10, 10.0, &[]);
        load.jigs = None;
        let text = compare(&load, Path::new("l"), &line, Path::new("r"));
        let jigs = text.lines().find(|l| l.starts_with("jigs ")).unwrap();
        assert_eq!(
            jigs.split_whitespace().collect::<Vec<_>>(),
            ["jigs", "-", "2", "-", "-"]
        );
        assert!(render(&load, Path::new("l")).contains("jigs: none (a load test)"));
    }
}
