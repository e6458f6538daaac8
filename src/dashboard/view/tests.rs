//! The view rendered on ratatui's `TestBackend` from populated snapshots, at 80×24 and
//! 200×60: what an operator must read is on the screen.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::Color;

use super::*;
use crate::fleet::ApiKind;
use crate::telemetry::{FailureRecord, RateRow, Second, Stage, StageRow};

/// A line of `jigs` virtual jigs, every one busy writing a board.
fn busy_line(jigs: usize) -> Snapshot {
    let mut s = Snapshot {
        elapsed: Duration::from_secs(754),
        busy: Duration::from_secs(750),
        started: 1_250 + jigs as u64,
        provisioned: 1_234,
        failed: 16,
        retries: 42,
        throttled: 7,
        key_stock: (61, 64),
        sessions: (16, 5, 16),
        ..Snapshot::default()
    };
    s.stages = Stage::ALL
        .iter()
        .map(|&stage| StageRow {
            stage,
            count: 1_250,
            p50: Duration::from_millis(120),
            p99: Duration::from_millis(480),
        })
        .collect();
    s.rates = vec![
        RateRow {
            api: ApiKind::CreateCertificateFromCsr,
            target: Some(40.0),
            actual: 12.5,
            last_throttle: Some(Duration::from_secs(3)),
        },
        RateRow {
            api: ApiKind::RegisterThing,
            target: None,
            actual: 12.0,
            last_throttle: None,
        },
    ];
    s.seconds = (0..120)
        .map(|n| Second {
            provisioned: 1 + n % 3,
            failed: 0,
        })
        .collect();
    let mut map = BTreeMap::new();
    for n in 0..jigs {
        map.insert(
            format!("vjig-{n}"),
            JigTotals {
                boards: 150 + n as u64,
                payload_bytes: 900_000,
                write_time: Duration::from_secs(100),
                capacity_bytes: 1_000_000.0,
                connected: true,
                current: Some(format!("SN-261203144643210-{:06}", 1_300 + n)),
                progress: Some((600, 1_200)),
                last: Some(JigOutcome::Provisioned {
                    serial: format!("SN-261203144643210-{:06}", 1_200 + n),
                }),
                ..JigTotals::default()
            },
        );
    }
    s.jigs = map;
    s
}

/// The busy line with jig 3 unplugged and failures in the log.
fn troubled_line(jigs: usize) -> Snapshot {
    let mut s = busy_line(jigs);
    let j = s.jigs.get_mut("vjig-3").unwrap();
    j.connected = false;
    j.current = None;
    j.progress = None;
    s.jigs_disconnected = 1;
    let last = s.jigs.get_mut("vjig-5").unwrap();
    last.last = Some(JigOutcome::Failed {
        serial: "SN-261203144643210-001205".into(),
        reason: "jig:verify_mismatch".into(),
    });
    s.recent_failures = (0..12)
        .map(|n| FailureRecord {
            serial: format!("SN-261203144643210-{:06}", 900 + n),
            stage: "register_thing",
            reason: format!("register_thing:InvalidParameters #{n}"),
            attempts: 1,
            at: Duration::from_secs(600 + n),
            wall: SystemTime::UNIX_EPOCH,
        })
        .collect();
    s
}

fn context(log: &Path) -> ViewContext<'_> {
    ViewContext {
        mode: "run",
        target: 2_000,
        feed: FeedState::Running,
        log: Some(log),
        help: false,
        line: true,
    }
}

/// Renders `s` at `width`×`height`; returns the buffer.
fn render_at(width: u16, height: u16, s: &Snapshot, v: &ViewContext) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| render(f, s, v)).unwrap();
    terminal.backend().buffer().clone()
}

/// The screen as lines of text.
fn text(b: &Buffer) -> Vec<String> {
    (0..b.area.height)
        .map(|y| {
            (0..b.area.width)
                .map(|x| b[(x, y)].symbol())
                .collect::<String>()
        })
        .collect()
}

fn screen(b: &Buffer) -> String {
    text(b).join("\n")
}

/// The line holding `needle`, and where in it.
fn find(b: &Buffer, needle: &str) -> Option<(u16, String)> {
    text(b)
        .into_iter()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .map(|(y, l)| (y as u16, l))
}

/// The colour of the cell where `needle` starts on screen.
fn colour_of(b: &Buffer, needle: &str) -> Color {
    let (y, line) = find(b, needle).unwrap_or_else(|| panic!("{needle:?} not on screen"));
    let x = line[..line.find(needle).unwrap()].chars().count() as u16;
    b[(x, y)].fg
}

#[test]
fn a_busy_line_at_80x24_shows_totals_stages_rates_and_every_jig() {
    let log = Path::new("reports/20261203T144500Z/station.log");
    let s = busy_line(8);
    let b = render_at(80, 24, &s, &context(log));
    let all = screen(&b);
    for needle in [
        "station run",
        "RUNNING",
        "provisioned 1234 / 2000",
        "failed 16",
        "in flight 8",
        "retries 42",
        "throttled 7",
        "keys 61/64",
        "end_to_end",
        "create_certificate",
        "sessions 16/16 up, 5 busy",
        "register_thing",
        "now 120/min",
    ] {
        assert!(all.contains(needle), "{needle:?} missing at 80x24:\n{all}");
    }
    // One row per jig, each busy with its board and a progress bar.
    for n in 0..8 {
        let (_, row) = find(&b, &format!("vjig-{n}"))
            .unwrap_or_else(|| panic!("jig {n} missing at 80x24:\n{all}"));
        assert!(row.contains(BUSY), "{row}");
        assert!(
            row.contains(&format!("SN-261203144643210-{:06}", 1_300 + n)),
            "{row}"
        );
        assert!(row.contains("[███···]  50%"), "{row}");
    }
    assert!(!all.contains(UNPLUGGED), "{all}");
    assert!(all.contains("q stop feeding"), "{all}");
}

#[test]
fn an_unplugged_jig_and_failed_boards_stand_out_in_colour_and_symbol_at_80x24() {
    let log = Path::new("reports/x/station.log");
    let s = troubled_line(8);
    let b = render_at(80, 24, &s, &context(log));
    let all = screen(&b);
    let (_, row) = find(&b, "vjig-3").expect("the unplugged jig has its row");
    assert!(row.contains(UNPLUGGED), "{row}");
    assert_eq!(colour_of(&b, UNPLUGGED), Color::Red);
    assert!(all.contains(&format!("{FAIL} 1 unplugged")), "{all}");
    // The newest failure with its serial and reason, readable without a log.
    let (_, f) = find(&b, "SN-261203144643210-000911").expect("newest failure on screen");
    assert!(
        f.contains(FAIL) && f.contains("InvalidParameters #11"),
        "{f}"
    );
    assert_eq!(
        colour_of(&b, &format!("{FAIL} SN-261203144643210-000911")),
        Color::Red
    );
    // The jig whose last board failed says so with a symbol.
    let (_, row) = find(&b, "vjig-5").unwrap();
    assert!(row.contains(FAIL), "{row}");

    // More jigs than rows: those that need the operator come first.
    let b = render_at(80, 24, &troubled_line(16), &context(log));
    let all = screen(&b);
    assert!(all.contains("jigs (16, 8 shown)"), "{all}");
    for jig in ["vjig-3 ", "vjig-5 "] {
        assert!(find(&b, jig).is_some(), "{jig} missing:\n{all}");
    }
}

#[test]
fn a_big_terminal_shows_more_failures_the_sparkline_and_the_log_path() {
    let log = Path::new("reports/20261203T144500Z/station.log");
    let s = troubled_line(24);
    let b = render_at(200, 60, &s, &context(log));
    let all = screen(&b);
    assert!(
        all.contains("log: reports/20261203T144500Z/station.log"),
        "{all}"
    );
    // Ten latest failures, newest first, with stage, reason and attempts.
    for n in 2..12 {
        let serial = format!("SN-261203144643210-{:06}", 900 + n);
        let (_, line) = find(&b, &serial).unwrap_or_else(|| panic!("{serial} missing:\n{all}"));
        assert!(
            line.contains("register_thing") && line.contains("attempts 1"),
            "{line}"
        );
    }
    assert!(
        find(&b, "SN-261203144643210-000901").is_none(),
        "only the latest ten"
    );
    // Every jig has its row, with its efficiency and last result.
    for n in 0..24 {
        let (_, row) = find(&b, &format!("vjig-{n} "))
            .unwrap_or_else(|| panic!("jig {n} missing at 200x60:\n{all}"));
        if n != 3 {
            assert!(row.contains("[██████████··········]  50%"), "{row}");
            assert!(row.contains("90%"), "{row}");
        }
    }
    assert!(all.contains("devices/s"), "{all}");
    // Jigs in their natural order: vjig-2 before vjig-10.
    assert!(find(&b, "vjig-2 ").unwrap().0 < find(&b, "vjig-10 ").unwrap().0);
    assert!(all.contains("devices per minute: now"), "{all}");
}

#[test]
fn paused_stopping_help_and_an_unreachable_endpoint_are_on_screen() {
    let log = Path::new("station.log");
    let mut s = busy_line(8);
    s.endpoint_down = Some(("connection refused".into(), Duration::from_secs(12)));
    let mut v = context(log);
    v.feed = FeedState::Paused;
    let b = render_at(80, 24, &s, &v);
    let all = screen(&b);
    assert!(all.contains("PAUSED"), "{all}");
    assert!(all.contains("ENDPOINT UNREACHABLE for 12 s"), "{all}");
    v.feed = FeedState::Stopping;
    v.help = true;
    let b = render_at(80, 24, &s, &v);
    let all = screen(&b);
    assert!(all.contains("STOPPING"), "{all}");
    assert!(all.contains("pause / resume feeding"), "{all}");
}

#[test]
fn a_load_test_has_no_jig_panel_and_its_failures_get_the_room() {
    let log = Path::new("station.log");
    let mut s = troubled_line(8);
    // Synthetic devices all start on the pseudo-jig `loadtest`, which is never connected.
    s.jigs.clear();
    s.jigs.insert("loadtest".into(), JigTotals::default());
    let v = ViewContext {
        mode: "loadtest",
        line: false,
        ..context(log)
    };
    let b = render_at(80, 24, &s, &v);
    let all = screen(&b);
    assert!(all.contains("station loadtest"), "{all}");
    assert!(!all.contains("jigs (") && !all.contains(UNPLUGGED), "{all}");
    for n in 5..12 {
        assert!(
            all.contains(&format!("SN-261203144643210-{:06}", 900 + n)),
            "{all}"
        );
    }
}

#[test]
fn an_empty_snapshot_renders_at_the_smallest_sizes() {
    let log = Path::new("station.log");
    for (w, h) in [(80, 24), (40, 10), (20, 5)] {
        render_at(w, h, &Snapshot::default(), &context(log));
        render_at(w, h, &troubled_line(8), &context(log));
    }
}

#[test]
fn a_load_test_in_steps_shows_its_step_in_the_title() {
    let mut s = busy_line(0);
    s.step = Some("step 3 (up): 16.0/s offered for 15 s".into());
    let log = Path::new("/tmp/station.log");
    let v = ViewContext {
        mode: "loadtest",
        line: false,
        ..context(log)
    };
    let b = render_at(200, 60, &s, &v);
    let title = &text(&b)[0];
    assert!(
        title.contains("step 3 (up): 16.0/s offered for 15 s"),
        "{title}"
    );
}
