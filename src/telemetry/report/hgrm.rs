//! `<stage>.hgrm`: a stage's latency histogram in HdrHistogram's percentile-distribution text,
//! exactly as `HistogramLogProcessor` / `outputPercentileDistribution` write it (5 ticks per
//! half-distance), so HdrHistogram's own plotter (`plotFiles.html`) and the tools that read
//! `.hgrm` files take it as is.
//!
//! **Units**: the histograms record microseconds; the file is written with a value scaling
//! ratio of 1000, so every value (the `Value` column, `Mean`, `StdDeviation`, `Max`) is in
//! **milliseconds**, with three decimals (the histogram's three significant digits). A last
//! comment line after the standard footer says so (`#[Unit = milliseconds, …]`); readers
//! skip `#` lines.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Ticks per half-distance to 100 %, as `HistogramLogProcessor` uses by default.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Recorded microseconds per written millisecond.
pub const VALUE_SCALE: f64 = 1000.0;

/// One row of the distribution: (value in ms, quantile 0..=1, count at or below).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub value_ms: f64,
    pub quantile: f64,
    pub total_count: u64,
}

/// The rows `outputPercentileDistribution` prints: the quantile ticks up to 1.0, each with
/// the highest value equivalent to the one it reached (the last row is quantile 1.0, the
/// maximum). Empty for an empty histogram.
pub fn rows(h: &Histogram<u64>) -> Vec<Row> {
    let mut total = 0u64;
    h.iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .map(|v| {
            total += v.count_since_last_iteration();
            Row {
                value_ms: v.value_iterated_to() as f64 / VALUE_SCALE,
                quantile: v.quantile_iterated_to(),
                total_count: total,
            }
        })
        .collect()
}

/// The histogram's sub-bucket count (Java's `subBucketCount`): the power of two that gives
/// unit resolution up to 2 × 10^significant digits.
fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest_single_unit = 2 * 10u64.pow(u32::from(sigfig));
    largest_single_unit.next_power_of_two().max(2)
}

/// The whole file's text.
pub fn render(h: &Histogram<u64>) -> String {
    let digits = usize::from(h.sigfig());
    let mut out = String::new();
    // Java: "%12s %14s %10s %14s\n\n".
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for r in rows(h) {
        if r.quantile < 1.0 {
            // Java: "%12.{d}f %2.12f %10d %14.2f\n".
            let _ = writeln!(
                out,
                "{:>12.digits$} {:>2.12} {:>10} {:>14.2}",
                r.value_ms,
                r.quantile,
                r.total_count,
                1.0 / (1.0 - r.quantile)
            );
        } else {
            // The last line has no 1/(1-Percentile): it would be infinite.
            let _ = writeln!(
                out,
                "{:>12.digits$} {:>2.12} {:>10}",
                r.value_ms, r.quantile, r.total_count
            );
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            h.mean() / VALUE_SCALE,
            h.stdev() / VALUE_SCALE,
            h.max() as f64 / VALUE_SCALE,
        )
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stdev:>12.digits$}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    );
    let _ = writeln!(
        out,
        "#[Unit = milliseconds (recorded in microseconds, value scaling ratio {VALUE_SCALE})]"
    );
    out
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

    /// The data rows of a file: (value, percentile, total count, 1/(1-p) if present).
    fn parse(text: &str) -> Vec<(f64, f64, u64, Option<f64>)> {
        text.lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f.get(3).map(|x| x.parse().unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn the_file_has_java_s_header_columns_ticks_and_footer() {
        // 1..=1000 ms.
        let h = histogram((1..=1000u64).map(|ms| ms * 1000));
        let text = render(&h);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("       Value     Percentile TotalCount 1/(1-Percentile)")
        );
        assert_eq!(lines.next(), Some(""));
        // The first row is the minimum at percentile 0, in Java's column widths.
        assert_eq!(
            lines.next(),
            Some("       1.000 0.000000000000          1           1.00")
        );
        let rows = parse(&text);
        // 5 ticks per half-distance: 0, 0.1, …, 0.5, then 0.55, … 0.75, then 0.775 …
        let quantiles: Vec<f64> = rows.iter().map(|r| r.1).take(12).collect();
        let expected = [
            0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.775,
        ];
        for (q, e) in quantiles.iter().zip(expected) {
            assert!((q - e).abs() < 1e-9, "{quantiles:?}");
        }
        // The last row is 100 % without the infinite 1/(1-p); counts only grow.
        let last = rows.last().unwrap();
        assert_eq!((last.1, last.2, last.3), (1.0, 1000, None));
        assert!((last.0 - 1000.0).abs() <= 1.0, "{last:?}");
        assert!(
            rows.windows(2)
                .all(|w| w[0].2 <= w[1].2 && w[0].0 <= w[1].0)
        );
        // The 1/(1-p) column is what the plotter's x axis reads.
        let p90 = rows.iter().find(|r| (r.1 - 0.9).abs() < 1e-9).unwrap();
        assert_eq!(p90.3, Some(10.0));
        // Footer: mean, max and count in ms, then the bucket layout of a 3-digit histogram.
        let footer: Vec<&str> = text.lines().filter(|l| l.starts_with("#[")).collect();
        assert!(footer[0].starts_with("#[Mean    =      500."), "{footer:?}");
        assert!(
            footer[0].contains(", StdDeviation   =      288."),
            "{footer:?}"
        );
        assert!(
            footer[1].starts_with("#[Max     =     1000.")
                && footer[1].ends_with("Total count    =         1000]"),
            "{footer:?}"
        );
        assert_eq!(
            footer[2],
            format!(
                "#[Buckets = {:>12}, SubBuckets     =         2048]",
                h.buckets()
            )
        );
        assert!(footer[3].contains("milliseconds"));
    }

    #[test]
    fn the_rows_hold_the_histogram_s_quantiles() {
        let h = histogram((1..=5000u64).map(|i| i * 37 % 90_001 + 250));
        let rows = parse(&render(&h));
        // 0.5 is a tick: its row is the median.
        let p50 = rows.iter().find(|r| r.1 == 0.5).unwrap();
        assert_eq!(p50.0, h.value_at_quantile(0.5) as f64 / 1000.0);
        // 0.99 falls between two ticks (0.989062…, 0.990625): their rows bracket the p99.
        let after = rows.iter().position(|r| r.1 >= 0.99).unwrap();
        let p99 = h.value_at_quantile(0.99) as f64 / 1000.0;
        assert!(rows[after - 1].1 < 0.99);
        assert!(
            rows[after - 1].0 <= p99 && p99 <= rows[after].0,
            "{p99} {rows:?}"
        );
    }

    #[test]
    fn an_empty_histogram_has_the_header_and_a_zero_footer() {
        let text = render(&histogram([]));
        assert!(parse(&text).is_empty());
        assert!(text.contains("#[Max     =        0.000, Total count    =            0]"));
    }
}
