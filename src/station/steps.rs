//! The open-loop load test's steps: what one step measured ([`StepRecord`]), whether it held
//! ([`StepRecord::held`]), which limit a step that did not hold ran into ([`Limit`]), and the
//! files the report folder gets: `steps.csv`, `loadtest.json` and `knee.svg` (achieved rate
//! and end-to-end p99 against offered rate, plotters' SVG backend like the run's plots).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use crate::telemetry::report::ReportError;
use crate::telemetry::{Stage, Totals};

/// A step does not hold if more than this share of an API's requests were throttled.
pub const THROTTLE_SHARE: f64 = 0.01;
/// The station's CPU is the limit when it used at least this share of the machine's cores.
pub const CPU_SHARE: f64 = 0.9;

/// Median and 99th percentile of one latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |q| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

/// One API's requests in a step's measured window.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ApiStep {
    pub requests: u64,
    pub throttled: u64,
    /// Requests that did not succeed, by result (AWS errorCode, `timeout`, …).
    pub errors: BTreeMap<String, u64>,
    /// Round trip of the call (retries included), as the flow times it.
    pub latency: Latency,
}

impl ApiStep {
    pub fn throttled_share(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.throttled as f64 / self.requests as f64
        }
    }
}

/// What one step measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepRecord {
    pub index: usize,
    /// `ramp`, `rate`, or for `--find-knee` `up` (stepping up) and `bisect`.
    pub phase: &'static str,
    pub offered_per_s: f64,
    /// Devices of the step provisioned, per second of the step (start to close).
    pub achieved_per_s: f64,
    pub hold_s: f64,
    /// The start of the step not measured for throttles and API latency (a quota's burst).
    pub warmup_s: f64,
    /// Devices the step started (on schedule).
    pub devices: u64,
    pub provisioned: u64,
    pub failed: u64,
    /// Devices still in flight when the step closed: their age then counts as their
    /// end-to-end latency (a lower bound), so a stall shows.
    pub in_flight_at_close: u64,
    /// Devices started late because the cap on devices in flight was reached.
    pub cap_hits: u64,
    /// From each device's scheduled start.
    pub end_to_end: Latency,
    /// By API code (`create_certificate`, `register_thing`, …).
    pub apis: BTreeMap<String, ApiStep>,
    /// CPU time of the whole process (station and, if embedded, the emulator) per second
    /// of the step, in cores.
    pub cpu_cores: f64,
    /// The step ended early (Ctrl-C, or the operator stopped the feed).
    pub interrupted: bool,
}

/// Why a step did not hold.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Limit {
    /// The account's quota of an API: its requests were throttled with this errorCode.
    Quota { api: String, error_code: String },
    /// The broker's per-connection publish limit (PUBACK quota exceeded, or the connection
    /// closed at a request).
    PublishLimit { api: String },
    /// The station's own CPU (the whole process: with the embedded emulator, both).
    Cpu { cores_used: f64, cores: usize },
    /// End-to-end p99 crossed the threshold without throttles.
    Latency { p99_ms: f64, threshold_ms: f64 },
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Quota { api, error_code } => {
                write!(f, "the {} quota ({error_code})", aws_name(api))
            }
            Limit::PublishLimit { api } => {
                write!(f, "the per-connection publish limit (at {})", aws_name(api))
            }
            Limit::Cpu { cores_used, cores } => {
                write!(f, "the station's CPU ({cores_used:.2} of {cores} cores)")
            }
            Limit::Latency {
                p99_ms,
                threshold_ms,
            } => write!(
                f,
                "latency (end-to-end p99 {p99_ms:.0} ms > {threshold_ms:.0} ms, no throttles)"
            ),
        }
    }
}

/// AWS's name of an API code.
fn aws_name(code: &str) -> &str {
    match code {
        "create_certificate" => "CreateCertificateFromCsr",
        "create_keys" => "CreateKeysAndCertificate",
        "register_thing" => "RegisterThing",
        other => other,
    }
}

/// The throttle results that mean the per-connection publish limit rather than a quota.
const PUBLISH_LIMIT_CODES: [&str; 2] = ["publish_refused", "connection_closed"];

impl StepRecord {
    /// The API with the highest throttled share above [`THROTTLE_SHARE`], if any.
    pub fn throttled_api(&self) -> Option<(&str, &ApiStep)> {
        self.apis
            .iter()
            .filter(|(_, a)| a.throttled_share() > THROTTLE_SHARE)
            .max_by(|a, b| a.1.throttled_share().total_cmp(&b.1.throttled_share()))
            .map(|(k, a)| (k.as_str(), a))
    }

    /// Whether the step held: no API throttled above 1 %, end-to-end p99 under the threshold.
    pub fn held(&self, p99_threshold: Duration) -> bool {
        self.limit(p99_threshold, 1).is_none()
    }

    /// The limit this step ran into, if it did not hold.
    pub fn limit(&self, p99_threshold: Duration, cores: usize) -> Option<Limit> {
        if let Some((api, a)) = self.throttled_api() {
            // The errorCode most of the throttles came with.
            let code = a
                .errors
                .iter()
                .max_by_key(|(_, n)| **n)
                .map_or("Throttling", |(c, _)| c.as_str());
            return Some(if PUBLISH_LIMIT_CODES.contains(&code) {
                Limit::PublishLimit { api: api.into() }
            } else {
                Limit::Quota {
                    api: api.into(),
                    error_code: code.into(),
                }
            });
        }
        let threshold_ms = p99_threshold.as_secs_f64() * 1000.0;
        if self.end_to_end.p99_ms > threshold_ms {
            if self.cpu_cores >= CPU_SHARE * cores as f64 {
                return Some(Limit::Cpu {
                    cores_used: self.cpu_cores,
                    cores,
                });
            }
            return Some(Limit::Latency {
                p99_ms: self.end_to_end.p99_ms,
                threshold_ms,
            });
        }
        None
    }
}

/// Per-API figures of the window between two [`Totals`].
pub fn api_window(start: &Totals, end: &Totals) -> BTreeMap<String, ApiStep> {
    let mut apis: BTreeMap<String, ApiStep> = BTreeMap::new();
    for ((api, label), n) in &end.api_results {
        let before = start
            .api_results
            .get(&(*api, label.clone()))
            .copied()
            .unwrap_or(0);
        let n = n.saturating_sub(before);
        if n == 0 {
            continue;
        }
        let a = apis.entry((*api).to_string()).or_default();
        a.requests += n;
        if label != "accepted" {
            *a.errors.entry(label.clone()).or_default() += n;
        }
    }
    for (api, n) in &end.throttled_by_api {
        let before = start.throttled_by_api.get(api).copied().unwrap_or(0);
        if let Some(a) = apis.get_mut(*api) {
            a.throttled = n.saturating_sub(before);
        }
    }
    for (stage, h) in &end.histograms {
        let api = match stage {
            Stage::CreateCertificate => "create_certificate",
            Stage::RegisterThing => "register_thing",
            _ => continue,
        };
        let mut window = h.clone();
        if let Some(before) = start.histograms.get(stage) {
            let _ = window.subtract(before);
        }
        // CreateCertificate's stage times either certificate API: give it to the one used.
        let name = if api == "create_certificate" && !apis.contains_key(api) {
            "create_keys"
        } else {
            api
        };
        if let Some(a) = apis.get_mut(name) {
            a.latency = Latency::of(&window);
        }
    }
    apis
}

/// The outcome of `--find-knee`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Knee {
    /// The highest rate that held (None: not even the first step held).
    pub knee_per_s: Option<f64>,
    /// What the lowest step that did not hold ran into (None: every step up to the
    /// highest rate tried held).
    pub limit: Option<Limit>,
}

/// `loadtest.json`.
#[derive(Debug, Serialize)]
pub struct LoadtestFile<'a> {
    /// `rate`, `ramp` or `find_knee`.
    pub mode: &'static str,
    pub p99_threshold_ms: f64,
    pub cores: usize,
    /// Whether the load test ran to its end (false: stopped, the steps are those done).
    pub complete: bool,
    pub steps: &'a [StepRecord],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knee_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<&'a Limit>,
    /// How a throttled device is treated (for the reader of the file).
    pub throttled_devices: &'static str,
}

/// What `throttled_devices` says.
pub const THROTTLED_DEVICES: &str = "a throttled request is not retried: the device fails as <api>:<errorCode>, so the offered load stays the schedule";

/// `steps.csv`'s header.
const CSV_HEADER: &str = "step,phase,offered_per_s,achieved_per_s,hold_s,devices,provisioned,failed,in_flight_at_close,cap_hits,e2e_p50_ms,e2e_p99_ms,create_p50_ms,create_p99_ms,register_p50_ms,register_p99_ms,requests,throttled,throttled_share_max,throttles,errors,cpu_cores,interrupted";

/// `steps.csv`: one line per step; throttles and errors as `api:code=n` joined by `;`.
pub fn steps_csv(steps: &[StepRecord]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for s in steps {
        let api = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| s.apis.get(*n))
                .map(|a| a.latency)
                .unwrap_or_default()
        };
        let create = api(&["create_certificate", "create_keys"]);
        let register = api(&["register_thing"]);
        let requests: u64 = s.apis.values().map(|a| a.requests).sum();
        let throttled: u64 = s.apis.values().map(|a| a.throttled).sum();
        let share = s
            .apis
            .values()
            .map(ApiStep::throttled_share)
            .fold(0.0, f64::max);
        let throttles: Vec<String> = s
            .apis
            .iter()
            .filter(|(_, a)| a.throttled > 0)
            .map(|(n, a)| format!("{n}={}", a.throttled))
            .collect();
        let errors: Vec<String> = s
            .apis
            .iter()
            .flat_map(|(n, a)| a.errors.iter().map(move |(c, k)| format!("{n}:{c}={k}")))
            .collect();
        out.push_str(&format!(
            "{},{},{:.3},{:.3},{:.3},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{:.4},{},{},{:.3},{}\n",
            s.index,
            s.phase,
            s.offered_per_s,
            s.achieved_per_s,
            s.hold_s,
            s.devices,
            s.provisioned,
            s.failed,
            s.in_flight_at_close,
            s.cap_hits,
            s.end_to_end.p50_ms,
            s.end_to_end.p99_ms,
            create.p50_ms,
            create.p99_ms,
            register.p50_ms,
            register.p99_ms,
            requests,
            throttled,
            share,
            throttles.join(";"),
            errors.join(";"),
            s.cpu_cores,
            s.interrupted,
        ));
    }
    out
}

/// `knee.svg`: achieved rate (left axis) and end-to-end p99 (right axis) by offered rate,
/// steps sorted by offered rate.
pub fn knee_svg(steps: &[StepRecord]) -> Result<String, String> {
    let mut sorted: Vec<&StepRecord> = steps.iter().collect();
    sorted.sort_by(|a, b| a.offered_per_s.total_cmp(&b.offered_per_s));
    let top_rate = sorted
        .iter()
        .map(|s| s.offered_per_s.max(s.achieved_per_s))
        .fold(1.0, f64::max)
        * 1.1;
    let top_p99 = sorted
        .iter()
        .map(|s| s.end_to_end.p99_ms)
        .fold(1.0, f64::max)
        * 1.1;
    let achieved: Vec<(f64, f64)> = sorted
        .iter()
        .map(|s| (s.offered_per_s, s.achieved_per_s))
        .collect();
    let p99: Vec<(f64, f64)> = sorted
        .iter()
        .map(|s| (s.offered_per_s, s.end_to_end.p99_ms))
        .collect();
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let blue = RGBColor(0, 114, 178);
    let orange = RGBColor(213, 94, 0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Achieved rate and end-to-end p99 by offered rate",
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .right_y_label_area_size(70)
            .build_cartesian_2d(0.0..top_rate, 0.0..top_rate)
            .map_err(|x| e(&x))?
            .set_secondary_coord(0.0..top_rate, 0.0..top_p99);
        chart
            .configure_mesh()
            .x_desc("offered devices per second")
            .y_desc("achieved devices per second")
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .configure_secondary_axes()
            .y_desc("end-to-end p99 (ms)")
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (top_rate, top_rate)],
                BLACK.mix(0.3).stroke_width(1),
            ))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(LineSeries::new(achieved, blue.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label("achieved per second")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], blue.filled()));
        chart
            .draw_secondary_series(LineSeries::new(p99, orange.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label("end-to-end p99 (ms)")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], orange.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(svg)
}

/// The steps as a table for the terminal, and the knee's line when there is one.
pub fn render(steps: &[StepRecord], knee: Option<&Knee>) -> String {
    let mut out = String::from(
        "step  phase   offered/s  achieved/s  devices  failed  throttled%  e2e p50 ms  e2e p99 ms  cpu cores\n",
    );
    for s in steps {
        let share = s
            .apis
            .values()
            .map(ApiStep::throttled_share)
            .fold(0.0, f64::max);
        out.push_str(&format!(
            "{:>4}  {:<6} {:>10.2} {:>11.2} {:>8} {:>7} {:>11.2} {:>11.1} {:>11.1} {:>10.2}{}\n",
            s.index + 1,
            s.phase,
            s.offered_per_s,
            s.achieved_per_s,
            s.devices,
            s.failed,
            share * 100.0,
            s.end_to_end.p50_ms,
            s.end_to_end.p99_ms,
            s.cpu_cores,
            if s.interrupted { "  (interrupted)" } else { "" },
        ));
    }
    if let Some(k) = knee {
        match k.knee_per_s {
            Some(r) => out.push_str(&format!("knee: {r:.2} devices/s held with < 1 % throttled")),
            None => out.push_str("knee: not even the first step held"),
        }
        match &k.limit {
            Some(l) => out.push_str(&format!("; the limit: {l}\n")),
            None => out.push_str("; no step up to the highest rate tried failed\n"),
        }
    }
    out
}

/// Writes `steps.csv`, `loadtest.json` and `knee.svg` into `dir`.
pub fn write_files(dir: &Path, file: &LoadtestFile<'_>) -> Result<(), ReportError> {
    let write = |name: &str, body: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, body).map_err(|source| ReportError::Write { path, source })
    };
    write("steps.csv", steps_csv(file.steps).as_bytes())?;
    let json = serde_json::to_vec_pretty(file).expect("the steps serialize");
    write("loadtest.json", &json)?;
    match knee_svg(file.steps) {
        Ok(svg) => write("knee.svg", svg.as_bytes()),
        Err(reason) => Err(ReportError::Plot {
            path: dir.join("knee.svg"),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(offered: f64, apis: &[(&str, u64, u64, &str)], p99_ms: f64, cpu: f64) -> StepRecord {
        StepRecord {
            index: 0,
            phase: "up",
            offered_per_s: offered,
            achieved_per_s: offered,
            hold_s: 10.0,
            warmup_s: 2.0,
            devices: 100,
            provisioned: 100,
            failed: 0,
            in_flight_at_close: 0,
            cap_hits: 0,
            end_to_end: Latency {
                count: 100,
                p50_ms: 10.0,
                p99_ms,
            },
            apis: apis
                .iter()
                .map(|(n, req, thr, code)| {
                    let mut a = ApiStep {
                        requests: *req,
                        throttled: *thr,
                        ..ApiStep::default()
                    };
                    if *thr > 0 {
                        a.errors.insert((*code).into(), *thr);
                    }
                    ((*n).to_string(), a)
                })
                .collect(),
            cpu_cores: cpu,
            interrupted: false,
        }
    }

    #[test]
    fn the_most_throttled_api_is_the_limit_with_its_code() {
        let s = step(
            20.0,
            &[
                ("create_certificate", 200, 1, "Throttling"),
                ("register_thing", 199, 40, "Throttling"),
            ],
            30.0,
            0.2,
        );
        assert_eq!(
            s.limit(Duration::from_millis(500), 2),
            Some(Limit::Quota {
                api: "register_thing".into(),
                error_code: "Throttling".into()
            })
        );
        // 1 % exactly holds.
        let s = step(10.0, &[("register_thing", 100, 1, "Throttling")], 30.0, 0.2);
        assert!(s.held(Duration::from_millis(500)));
    }

    #[test]
    fn publish_refusals_name_the_per_connection_limit() {
        let s = step(
            50.0,
            &[("register_thing", 100, 10, "publish_refused")],
            30.0,
            0.2,
        );
        assert_eq!(
            s.limit(Duration::from_millis(500), 2),
            Some(Limit::PublishLimit {
                api: "register_thing".into()
            })
        );
    }

    #[test]
    fn slow_without_throttles_is_latency_or_cpu() {
        let s = step(50.0, &[("register_thing", 100, 0, "")], 900.0, 0.5);
        assert!(matches!(
            s.limit(Duration::from_millis(500), 2),
            Some(Limit::Latency { .. })
        ));
        let s = step(50.0, &[("register_thing", 100, 0, "")], 900.0, 1.9);
        assert!(matches!(
            s.limit(Duration::from_millis(500), 2),
            Some(Limit::Cpu { cores: 2, .. })
        ));
    }

    #[test]
    fn csv_has_a_line_per_step_and_the_svg_both_series() {
        let steps = [
            step(5.0, &[("register_thing", 50, 0, "")], 20.0, 0.1),
            step(10.0, &[("register_thing", 100, 9, "Throttling")], 40.0, 0.1),
        ];
        let csv = steps_csv(&steps);
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.contains("register_thing:Throttling=9"), "{csv}");
        let svg = knee_svg(&steps).unwrap();
        assert!(svg.contains("achieved per second") && svg.contains("end-to-end p99 (ms)"));
    }
}
