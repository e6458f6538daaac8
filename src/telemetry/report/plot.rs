//! The report's plots, drawn with `plotters`' SVG backend (no fonts needed: text is written
//! as `<text>` elements for the viewer to render):
//!
//! - `latency.svg`: each stage's latency (ms, log axis) by percentile, on HdrHistogram's
//!   "1 in N" axis (x = 1/(1−percentile), log scaled, ticks at 0 %, 90 %, 99 %, 99.9 %, …):
//!   one line per stage with samples, from the `.hgrm` rows, ending at the stage's maximum
//!   (placed at 1 in N, N the stage's count), and a legend.
//! - `throughput.svg`: devices provisioned per second and devices failed per second over the
//!   run, one step per second of the run.
//!
//! Series are drawn 2 px wide (`stroke-width="2"`), axes and ticks 1 px: a reader of the SVG
//! can tell them apart.

use std::collections::BTreeMap;
use std::ops::Range;

use hdrhistogram::Histogram;
use plotters::coord::combinators::{BindKeyPoints, IntoLogRange};
use plotters::prelude::*;

use super::hgrm;
use crate::telemetry::{Second, Stage};

/// The plots' size in pixels.
const SIZE: (u32, u32) = (1000, 600);

/// One colour per stage (and per throughput series), distinct for colour-blind readers too.
const COLORS: [RGBColor; 5] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(213, 94, 0),
];

/// A plot could not be drawn (`plotters`' message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotError(pub String);

impl std::fmt::Display for PlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn plot_err(e: impl std::fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

/// A stage's line on the percentile plot: (1/(1−p), ms) points.
pub fn latency_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<(f64, f64)> = hgrm::rows(h)
        .into_iter()
        .filter(|r| r.quantile < 1.0)
        .map(|r| (1.0 / (1.0 - r.quantile), r.value_ms))
        .collect();
    // The maximum has no finite 1/(1−p); it is "1 in N" of N samples.
    let last_x = points.last().map_or(1.0, |p| p.0);
    points.push((
        (h.len() as f64).max(last_x),
        h.max() as f64 / hgrm::VALUE_SCALE,
    ));
    points
}

/// The percentile an "1 in N" tick stands for: 1 → `0%`, 10 → `90%`, 1000 → `99.9%`.
fn percentile_label(x: f64) -> String {
    let k = x.log10().round().max(0.0) as usize;
    if k == 0 {
        return "0%".into();
    }
    let decimals = k.saturating_sub(2);
    format!("{:.decimals$}%", 100.0 - 100.0 / x)
}

/// A millisecond value as an axis label, without float noise (`0.01`, `1`, `1000`).
fn ms_label(v: f64) -> String {
    if v >= 1.0 || v <= 0.0 {
        format!("{v:.0}")
    } else {
        let decimals = (-v.log10().floor()) as usize;
        format!("{v:.decimals$}")
    }
}

/// `latency.svg`'s text.
pub fn latency_svg(histograms: &BTreeMap<Stage, Histogram<u64>>) -> Result<String, PlotError> {
    let series: Vec<(Stage, Vec<(f64, f64)>)> = Stage::ALL
        .iter()
        .filter_map(|s| histograms.get(s).map(|h| (*s, latency_points(h))))
        .collect();
    let empty: Vec<&str> = series
        .iter()
        .filter(|(_, p)| p.is_empty())
        .map(|(s, _)| s.name())
        .collect();
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (max_x, min_y, max_y) = all.fold((10.0f64, f64::MAX, 0.0f64), |(x, lo, hi), p| {
        (x.max(p.0), lo.min(p.1), hi.max(p.1))
    });
    let (min_y, max_y) = if max_y > 0.0 {
        (min_y.max(0.001) / 2.0, max_y * 2.0)
    } else {
        (0.001, 1000.0)
    };
    // Decades of "1 in N" up to the one that holds the last sample.
    let decades = max_x.log10().ceil().max(1.0) as i32;
    let x_end = 10f64.powi(decades);
    let ticks: Vec<f64> = (0..=decades).map(|k| 10f64.powi(k)).collect();

    let mut caption = "Latency by percentile, per stage".to_string();
    if !empty.is_empty() {
        caption.push_str(&format!(" (no samples: {})", empty.join(", ")));
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (1.0..x_end).log_scale().with_key_points(ticks),
                (min_y..max_y).log_scale(),
            )
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| ms_label(*y))
            .x_desc("percentile (log scale of 1/(1-percentile): 1 in N)")
            .y_desc("latency (ms, log scale)")
            .draw()
            .map_err(plot_err)?;
        for (i, (stage, points)) in series.iter().enumerate() {
            if points.is_empty() {
                continue;
            }
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(stage.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled())
                });
        }
        // Lower right: latencies rise with the percentile, so that corner is the emptiest.
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// A per-second count as steps: each second `i` of the run is a flat segment from `i` to
/// `i + 1` (a run shorter than a second still shows its one second).
fn steps(seconds: &[Second], count: fn(&Second) -> u32) -> Vec<(f64, f64)> {
    if seconds.is_empty() {
        return vec![(0.0, 0.0), (1.0, 0.0)];
    }
    seconds
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            let v = f64::from(count(s));
            [(i as f64, v), (i as f64 + 1.0, v)]
        })
        .collect()
}

/// `throughput.svg`'s text.
pub fn throughput_svg(seconds: &[Second]) -> Result<String, PlotError> {
    let provisioned = steps(seconds, |s| s.provisioned);
    let failed = steps(seconds, |s| s.failed);
    let top = provisioned
        .iter()
        .chain(&failed)
        .map(|p| p.1)
        .fold(0.0, f64::max);
    let y: Range<f64> = 0.0..(top * 1.1).max(1.0);
    let x: Range<f64> = 0.0..(seconds.len().max(1) as f64);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Devices per second over the run", ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the start of the run")
            .y_desc("devices per second")
            .draw()
            .map_err(plot_err)?;
        for (i, (label, points)) in [
            ("provisioned per second", provisioned),
            ("failed per second", failed),
        ]
        .into_iter()
        .enumerate()
        {
            let color = [COLORS[0], COLORS[4]][i];
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values_us: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in values_us {
            h.record(v).unwrap();
        }
        h
    }

    /// The series' stroke colours (2 px polylines; axes are 1 px) and the text of every
    /// `<text>` element.
    fn parts(svg: &str) -> (Vec<String>, Vec<String>) {
        let doc = roxmltree::Document::parse(svg).expect("the SVG is well-formed XML");
        let lines = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
            .map(|n| n.attribute("stroke").unwrap_or_default().to_string())
            .collect();
        let texts = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(|t| t.trim().to_string()))
            .collect();
        (lines, texts)
    }

    #[test]
    fn percentile_ticks_read_as_the_hdr_plotter_s() {
        let labels: Vec<String> = [1.0, 10.0, 100.0, 1000.0, 10_000.0]
            .into_iter()
            .map(percentile_label)
            .collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%"]);
        assert_eq!(ms_label(0.01), "0.01");
        assert_eq!(ms_label(100.0), "100");
    }

    #[test]
    fn the_latency_line_follows_the_percentiles_to_the_maximum() {
        let h = histogram((1..=1000u64).map(|ms| ms * 1000));
        let p = latency_points(&h);
        assert_eq!(p[0], (1.0, 1.0));
        // The median sits at 1 in 2.
        let p50 = p.iter().find(|(x, _)| *x == 2.0).unwrap();
        assert_eq!(p50.1, h.value_at_quantile(0.5) as f64 / 1000.0);
        // The maximum ends the line, at 1 in N or after the last tick.
        let (x, y) = *p.last().unwrap();
        assert_eq!(y, h.max() as f64 / 1000.0);
        assert!(x >= 1000.0 && x >= p[p.len() - 2].0, "{x}");
        assert!(latency_points(&histogram([])).is_empty());
    }

    #[test]
    fn latency_svg_has_one_line_per_stage_with_samples_and_a_legend() {
        let mut hs: BTreeMap<Stage, Histogram<u64>> = BTreeMap::new();
        for (i, s) in Stage::ALL.iter().enumerate() {
            let samples = if *s == Stage::JigWrite { 0 } else { 200 };
            hs.insert(
                *s,
                histogram((1..=samples).map(|n| n * 100 * (i as u64 + 1))),
            );
        }
        let (lines, texts) = parts(&latency_svg(&hs).unwrap());
        assert_eq!(lines.len(), 4, "{lines:?}");
        let distinct: std::collections::BTreeSet<&String> = lines.iter().collect();
        assert_eq!(distinct.len(), 4, "each stage has its own colour");
        for s in [
            "keygen",
            "create_certificate",
            "register_thing",
            "end_to_end",
        ] {
            assert!(
                texts.iter().any(|t| t == s),
                "no legend entry {s}: {texts:?}"
            );
        }
        assert!(!texts.iter().any(|t| t == "jig_write"));
        assert!(texts.iter().any(|t| t.contains("no samples: jig_write")));
        for tick in ["0%", "90%", "99%"] {
            assert!(texts.iter().any(|t| t == tick), "no tick {tick}: {texts:?}");
        }
    }

    #[test]
    fn throughput_svg_has_a_provisioned_and_a_failed_series() {
        let seconds = [
            Second {
                provisioned: 5,
                failed: 0,
            },
            Second {
                provisioned: 9,
                failed: 2,
            },
        ];
        let (lines, texts) = parts(&throughput_svg(&seconds).unwrap());
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_ne!(lines[0], lines[1]);
        assert!(texts.iter().any(|t| t == "provisioned per second"));
        assert!(texts.iter().any(|t| t == "failed per second"));
        // A run that ended no device still has both series.
        assert_eq!(parts(&throughput_svg(&[]).unwrap()).0.len(), 2);
    }

    #[test]
    fn steps_give_each_second_its_count() {
        let s = [
            Second {
                provisioned: 3,
                failed: 1,
            },
            Second {
                provisioned: 4,
                failed: 0,
            },
        ];
        assert_eq!(
            steps(&s, |s| s.provisioned),
            [(0.0, 3.0), (1.0, 3.0), (1.0, 4.0), (2.0, 4.0)]
        );
    }
}
