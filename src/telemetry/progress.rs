//! The headless progress printer: reads telemetry snapshots and prints one line a second to
//! stderr. It only observes.

use std::io::Write;
use std::time::Duration;

use tokio::sync::watch;

use super::Snapshot;

/// Formats one progress line.
pub fn line(s: &Snapshot, total: u64) -> String {
    let secs = s.elapsed.as_secs_f64();
    let busy = s.busy.as_secs_f64();
    let rate = if busy > 0.0 {
        s.provisioned as f64 / busy
    } else {
        0.0
    };
    let mut line = format!(
        "[{secs:7.1}s] provisioned {}/{total} ({rate:.1}/s)  failed {}  in flight {}  keys {}/{}  retries {}  throttled {}  p50 {:.0} ms",
        s.provisioned,
        s.failed,
        s.in_flight(),
        s.key_stock.0,
        s.key_stock.1,
        s.retries,
        s.throttled,
        s.p50_end_to_end.as_secs_f64() * 1000.0,
    );
    if let Some((why, since)) = &s.endpoint_down {
        line.push_str(&format!(
            "  ENDPOINT UNREACHABLE for {:.0} s, devices paused: {why}",
            since.as_secs_f64()
        ));
    }
    line
}

/// Prints a line every `every` until the snapshot channel closes.
pub async fn run(mut snapshots: watch::Receiver<Snapshot>, total: u64, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = tick.tick() => {
                let l = line(&snapshots.borrow(), total);
                let _ = writeln!(std::io::stderr(), "{l}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_endpoint_is_on_the_progress_line_with_its_reason() {
        let mut s = Snapshot {
            provisioned: 3,
            ..Snapshot::default()
        };
        assert!(!line(&s, 10).contains("UNREACHABLE"));
        s.endpoint_down = Some((
            "cannot reach localhost:8883: connection refused".into(),
            Duration::from_secs(4),
        ));
        let l = line(&s, 10);
        assert!(
            l.contains("ENDPOINT UNREACHABLE for 4 s, devices paused: cannot reach localhost:8883: connection refused"),
            "{l}"
        );
    }
}
