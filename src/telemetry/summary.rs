//! The run summary written to `<report dir>/summary.json` and printed at the end of a run.
//!
//! ```json
//! {"devices":{"total":N,"provisioned":n,"failed":n,"interrupted":n},"elapsed_s":f,
//!  "throughput_per_s":f,
//!  "stages":{"keygen":S,"create_certificate":S,"register_thing":S,"jig_write":S,"end_to_end":S},
//!  "failures":{"<reason>":n},"retries":n,"throttled":n,
//!  "endpoint":{"outages":n,"unreachable_s":f,"session_takeovers":n}}
//! ```
//! with `S = {"count","p50_ms","p90_ms","p99_ms","max_ms"}` from the HDR histograms.

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{Aggregate, Stage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub devices: Devices,
    pub elapsed_s: f64,
    pub throughput_per_s: f64,
    pub stages: BTreeMap<String, StageStats>,
    pub failures: BTreeMap<String, u64>,
    pub retries: u64,
    pub throttled: u64,
    /// What the station saw of the endpoint.
    #[serde(default)]
    pub endpoint: EndpointSummary,
    /// The line's figures (absent for a load test, which has no jigs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jigs: Option<JigSummary>,
}

/// `"jigs"` in summary.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JigSummary {
    pub count: usize,
    /// The ports' line rate (0 when they run at different rates).
    pub baud: u32,
    /// Payload (slot) bytes written to boards.
    pub bytes_written: u64,
    /// Slot bytes left out because the boards already held them (`jigs.skip_held`).
    #[serde(default)]
    pub bytes_skipped: u64,
    /// Mean time a verified board spent in its write, in milliseconds: from asking what it
    /// holds (or its first PUT) to the verified read-back, retries included.
    #[serde(default)]
    pub write_ms_per_board: f64,
    /// payload bytes ÷ (baud/10 × write-to-verified time), over every verified board.
    pub line_efficiency: f64,
    /// Frames sent again and whole writes repeated.
    pub retries: u64,
    /// Boards whose write or verify failed twice.
    pub failed_boards: u64,
    /// Line efficiency of each jig (0 for a jig that verified no board).
    pub per_jig: BTreeMap<String, f64>,
}

/// The line the run used.
#[derive(Debug, Clone, Copy)]
pub struct LineInfo {
    pub count: usize,
    pub baud: u32,
}

/// payload bytes ÷ (baud/10 × time): the share of the line's byte capacity spent on payload.
pub fn line_efficiency(payload_bytes: u64, time: std::time::Duration, baud: u32) -> f64 {
    efficiency(payload_bytes, f64::from(baud) / 10.0 * time.as_secs_f64())
}

/// "at N baud", or, for a line without one baud rate (`LineInfo::baud` 0: virtual jigs
/// unpaced with `jigs.baud = 0`, or ports at different rates), says so.
pub fn line_speed(baud: u32) -> String {
    match baud {
        0 => "unpaced or at mixed baud rates".to_string(),
        b => format!("at {b} baud"),
    }
}

/// The line's efficiency in % with `decimals`; "n/a" on a line without one baud rate, which
/// has no one byte capacity to compare with (each jig's own is in the report).
pub fn line_efficiency_shown(baud: u32, efficiency: f64, decimals: usize) -> String {
    match baud {
        0 => "n/a".to_string(),
        _ => format!("{:.decimals$} %", efficiency * 100.0),
    }
}

/// payload bytes ÷ capacity bytes, rounded to 4 decimals (0 without capacity).
pub fn efficiency(payload_bytes: u64, capacity: f64) -> f64 {
    if capacity > 0.0 {
        ((payload_bytes as f64 / capacity) * 10_000.0).round() / 10_000.0
    } else {
        0.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Devices {
    pub total: u64,
    pub provisioned: u64,
    pub failed: u64,
    /// In flight when the station stopped: not failed; they resume on the next run (a load
    /// test's synthetic devices do not; their certificates are listed for cleanup).
    #[serde(default)]
    pub interrupted: u64,
}

/// `"endpoint"` in summary.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointSummary {
    /// Times the endpoint could not be reached (devices waited).
    pub outages: u64,
    /// Total time it could not be reached.
    pub unreachable_s: f64,
    /// Times another connection took over one of the station's client ids.
    pub session_takeovers: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Microseconds to milliseconds (three decimals are exact).
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl StageStats {
    pub fn from_histogram(h: &Histogram<u64>) -> StageStats {
        if h.is_empty() {
            return StageStats {
                count: 0,
                p50_ms: 0.0,
                p90_ms: 0.0,
                p99_ms: 0.0,
                max_ms: 0.0,
            };
        }
        StageStats {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

impl Summary {
    /// Builds the summary; `total` is the number of devices the run set out to provision.
    pub fn from_aggregate(agg: &Aggregate, total: u64, line: Option<LineInfo>) -> Summary {
        let end = agg.last_done_at.unwrap_or(agg.finished_at);
        let elapsed = end.duration_since(agg.started_at).as_secs_f64();
        let stages = Stage::ALL
            .iter()
            .map(|s| {
                (
                    s.name().to_string(),
                    StageStats::from_histogram(&agg.histograms[s]),
                )
            })
            .collect();
        Summary {
            devices: Devices {
                total,
                provisioned: agg.provisioned,
                failed: agg.failed,
                interrupted: agg.interrupted,
            },
            elapsed_s: (elapsed * 1000.0).round() / 1000.0,
            throughput_per_s: if elapsed > 0.0 {
                ((agg.provisioned as f64 / elapsed) * 100.0).round() / 100.0
            } else {
                0.0
            },
            stages,
            failures: agg.failures.clone(),
            retries: agg.retries,
            throttled: agg.throttled,
            endpoint: EndpointSummary {
                outages: agg.outages,
                unreachable_s: ((agg.outage_time
                    + agg
                        .down
                        .as_ref()
                        .map_or(std::time::Duration::ZERO, |(t, _)| {
                            agg.finished_at.saturating_duration_since(*t)
                        }))
                .as_secs_f64()
                    * 1000.0)
                    .round()
                    / 1000.0,
                session_takeovers: agg.takeovers,
            },
            jigs: line.map(|l| {
                let total = |f: fn(&super::JigTotals) -> u64| agg.jigs.values().map(f).sum::<u64>();
                let capacity = agg.jigs.values().map(|j| j.capacity_bytes).sum();
                JigSummary {
                    count: l.count,
                    baud: l.baud,
                    bytes_written: total(|j| j.payload_bytes),
                    bytes_skipped: total(|j| j.skipped_bytes),
                    write_ms_per_board: {
                        let boards = total(|j| j.boards);
                        let time: f64 = agg.jigs.values().map(|j| j.write_time.as_secs_f64()).sum();
                        if boards == 0 {
                            0.0
                        } else {
                            (time / boards as f64 * 1e6).round() / 1e3
                        }
                    },
                    line_efficiency: efficiency(total(|j| j.payload_bytes), capacity),
                    retries: total(|j| j.retries),
                    failed_boards: total(|j| j.failed_boards),
                    per_jig: agg
                        .jigs
                        .iter()
                        .map(|(name, j)| {
                            (name.clone(), efficiency(j.payload_bytes, j.capacity_bytes))
                        })
                        .collect(),
                }
            }),
        }
    }

    /// Writes `summary.json` into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("summary serializes");
        crate::files::write_atomic(&dir.join("summary.json"), &json)
    }

    /// A short human-readable report for the terminal.
    pub fn render(&self) -> String {
        let interrupted = if self.devices.interrupted > 0 {
            format!(", {} interrupted", self.devices.interrupted)
        } else {
            String::new()
        };
        let mut out = format!(
            "devices: {} provisioned, {} failed{interrupted}, of {}\nelapsed: {:.2} s, throughput: {:.1} devices/s, retries: {}, throttled: {}\n",
            self.devices.provisioned,
            self.devices.failed,
            self.devices.total,
            self.elapsed_s,
            self.throughput_per_s,
            self.retries,
            self.throttled
        );
        let e = &self.endpoint;
        if e.outages > 0 {
            out.push_str(&format!(
                "endpoint: unreachable {} times, {:.1} s in all (devices waited)\n",
                e.outages, e.unreachable_s
            ));
        }
        if e.session_takeovers > 0 {
            out.push_str(&format!(
                "endpoint: {} sessions taken over by another client with the same client id (another station with this station.id?)\n",
                e.session_takeovers
            ));
        }
        out.push_str("stage                 count     p50 ms     p90 ms     p99 ms     max ms\n");
        for s in Stage::ALL {
            let st = &self.stages[s.name()];
            out.push_str(&format!(
                "{:<20} {:>6} {:>10.2} {:>10.2} {:>10.2} {:>10.2}\n",
                s.name(),
                st.count,
                st.p50_ms,
                st.p90_ms,
                st.p99_ms,
                st.max_ms
            ));
        }
        if let Some(j) = &self.jigs {
            out.push_str(&format!(
                "line: {} jigs {}, {} payload bytes ({} held by the boards, skipped), {:.1} ms a board, line efficiency {}, {} retries, {} boards failed at the jig\n",
                j.count,
                line_speed(j.baud),
                j.bytes_written,
                j.bytes_skipped,
                j.write_ms_per_board,
                line_efficiency_shown(j.baud, j.line_efficiency, 1),
                j.retries,
                j.failed_boards
            ));
        }
        for (reason, n) in &self.failures {
            out.push_str(&format!("failed: {n} × {reason}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_efficiency_is_payload_over_line_capacity() {
        // 11 520 bytes in one second at 115 200 baud fill the line.
        assert_eq!(
            line_efficiency(11_520, std::time::Duration::from_secs(1), 115_200),
            1.0
        );
        assert_eq!(
            line_efficiency(5_760, std::time::Duration::from_secs(1), 115_200),
            0.5
        );
        assert_eq!(line_efficiency(1, std::time::Duration::ZERO, 115_200), 0.0);
    }

    #[test]
    fn a_line_without_one_baud_rate_shows_no_line_efficiency() {
        assert_eq!(line_speed(115_200), "at 115200 baud");
        assert_eq!(line_efficiency_shown(115_200, 0.8123, 1), "81.2 %");
        assert_eq!(line_speed(0), "unpaced or at mixed baud rates");
        assert_eq!(line_efficiency_shown(0, 0.0, 1), "n/a");
    }

    #[test]
    fn stage_stats_are_in_milliseconds() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let s = StageStats::from_histogram(&h);
        assert_eq!(s.count, 1000);
        assert!((499.0..=501.0).contains(&s.p50_ms), "{s:?}");
        assert!((989.0..=991.0).contains(&s.p99_ms), "{s:?}");
        assert!((999.0..=1001.0).contains(&s.max_ms), "{s:?}");
    }
}
