//! Rendering one telemetry [`Snapshot`] into a frame: pure (no terminal, no clock, no
//! channel), so tests render it on ratatui's `TestBackend` and read the screen.
//!
//! Top to bottom: a title line (what runs, the feed state, the log file), a banner when the
//! endpoint is unreachable, the totals beside a sparkline of devices per second, the stages
//! beside the rate controller and the sessions, one row per jig, the latest failures, and a
//! line of keys (or the help). Everything that needs the operator's eye carries a symbol as
//! well as a colour, so it reads on a monochrome terminal too.

use std::path::Path;
use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, Wrap};

use crate::station::command::FeedState;
use crate::telemetry::{JigOutcome, JigTotals, RECENT_FAILURES, Snapshot};

/// A board failed / a jig is unplugged / the endpoint is down.
pub const FAIL: &str = "✖";
/// A board provisioned.
pub const OK: &str = "✔";
/// A jig's port is gone.
pub const UNPLUGGED: &str = "✖ UNPLUGGED";
/// A jig working on a board.
pub const BUSY: &str = "▶";
/// A jig waiting for a board.
pub const IDLE: &str = "·";

/// What the view shows besides the snapshot.
#[derive(Debug, Clone, Copy)]
pub struct ViewContext<'a> {
    /// `run` or `loadtest`.
    pub mode: &'a str,
    /// Devices the run sets out to do (0: open-ended).
    pub target: u64,
    pub feed: FeedState,
    /// Where the log goes while the dashboard runs.
    pub log: Option<&'a Path>,
    /// The help overlay is open.
    pub help: bool,
    /// The run has a line of jigs (`run`); a load test has none, and its failures get the
    /// jigs' room.
    pub line: bool,
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn alarm() -> Style {
    Style::default()
        .fg(Color::Red)
        .add_modifier(Modifier::BOLD | Modifier::REVERSED)
}

fn failed_style() -> Style {
    Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Devices per minute over the last `window` whole seconds of the snapshot.
pub fn per_minute_now(s: &Snapshot, window: usize) -> f64 {
    // The last entry is the current, unfinished second: leave it out.
    let done = s.seconds.len().saturating_sub(1);
    let from = done.saturating_sub(window);
    let span = done - from;
    if span == 0 {
        return 0.0;
    }
    let n: u32 = s.seconds[from..done]
        .iter()
        .map(|x| x.provisioned + x.failed)
        .sum();
    f64::from(n) * 60.0 / span as f64
}

/// Devices provisioned per minute over the run.
pub fn per_minute_run(s: &Snapshot) -> f64 {
    let busy = s.busy.as_secs_f64();
    if busy > 0.0 {
        s.provisioned as f64 * 60.0 / busy
    } else {
        0.0
    }
}

/// Renders `s` into the whole frame.
pub fn render(frame: &mut Frame, s: &Snapshot, v: &ViewContext) {
    let area = frame.area();
    // A big screen gets framed panels and more failures; 80×24 gets every essential.
    let big = area.height >= 40 && area.width >= 120;
    let failures_rows = if big { 10 } else { 2 };
    let failures_height = 1 + s.recent_failures.len().clamp(1, failures_rows) as u16;
    let (jigs_height, failures_height, failures_rows) = if v.line {
        (
            Constraint::Min(2),
            Constraint::Length(failures_height),
            failures_rows,
        )
    } else {
        (Constraint::Length(0), Constraint::Min(2), RECENT_FAILURES)
    };
    let banner = u16::from(s.endpoint_down.is_some());
    let [title, banner_area, top, middle, jigs, failures, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(banner),
        Constraint::Length(if big { 6 } else { 3 }),
        Constraint::Length(if big { 7 } else { 6 }),
        jigs_height,
        failures_height,
        Constraint::Length(1),
    ])
    .areas(area);
    render_title(frame, title, s, v);
    if let Some((why, since)) = &s.endpoint_down {
        let text = format!(
            "{FAIL} ENDPOINT UNREACHABLE for {:.0} s — devices paused: {why}",
            since.as_secs_f64()
        );
        frame.render_widget(Paragraph::new(text).style(alarm()), banner_area);
    }
    let split = if big { 60 } else { 40 };
    let [totals, spark] =
        Layout::horizontal([Constraint::Length(split), Constraint::Min(10)]).areas(top);
    render_totals(frame, totals, s, v, big);
    render_sparkline(frame, spark, s);
    let [stages, rates] =
        Layout::horizontal([Constraint::Length(split), Constraint::Min(20)]).areas(middle);
    render_stages(frame, stages, s, big);
    render_rates(frame, rates, s, big);
    if v.line {
        render_jigs(frame, jigs, s, big);
    }
    render_failures(frame, failures, s, failures_rows);
    let keys = "q stop feeding · qq/Ctrl-C stop now · p pause/resume · r retry failed · ? help";
    frame.render_widget(
        Paragraph::new(keys).style(Style::default().add_modifier(Modifier::DIM)),
        footer,
    );
    if v.help {
        render_help(frame, area);
    }
}

fn render_title(frame: &mut Frame, area: Rect, s: &Snapshot, v: &ViewContext) {
    let feed = match v.feed {
        FeedState::Running => Span::styled(" RUNNING ", bold().fg(Color::Green)),
        FeedState::Paused => Span::styled(" ‖ PAUSED ", alarm().fg(Color::Yellow)),
        FeedState::Stopping => Span::styled(" ■ STOPPING ", alarm().fg(Color::Yellow)),
    };
    let mut spans = vec![
        Span::styled(format!("station {}", v.mode), bold()),
        Span::raw(" "),
        feed,
        Span::raw(format!(" {}", clock(s.elapsed))),
    ];
    if let Some(step) = &s.step {
        spans.push(Span::styled(format!("  {step}"), bold()));
    }
    if let Some(log) = v.log {
        spans.push(Span::raw(format!("  log: {}", log.display())));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn render_totals(frame: &mut Frame, area: Rect, s: &Snapshot, v: &ViewContext, big: bool) {
    let of = if v.target > 0 {
        format!(" / {}", v.target)
    } else {
        String::new()
    };
    let failed = Span::styled(
        format!("{FAIL} failed {}", s.failed),
        if s.failed > 0 {
            failed_style()
        } else {
            Style::default()
        },
    );
    let (connected, busy, total) = s.sessions;
    let sessions = Span::styled(
        format!("sessions {connected}/{total} up, {busy} busy"),
        if total > 0 && connected < total {
            Style::default().fg(Color::Yellow)
        } else {
            Style::default()
        },
    );
    let mut lines = vec![
        Line::from(vec![
            Span::styled(format!("provisioned {}{of}", s.provisioned), bold()),
            Span::raw("  "),
            failed,
        ]),
        Line::from(format!(
            "in flight {}  retries {}  throttled {}",
            s.in_flight(),
            s.retries,
            s.throttled
        )),
        Line::from(vec![
            Span::raw(format!("keys {}/{}  ", s.key_stock.0, s.key_stock.1)),
            sessions,
        ]),
    ];
    if big {
        lines.push(Line::from(format!(
            "devices per minute: now {:.0}, over the run {:.0}",
            per_minute_now(s, 10),
            per_minute_run(s)
        )));
        lines.push(Line::from(format!(
            "interrupted {}  jig bytes {}",
            s.interrupted, s.jig_bytes
        )));
    }
    if s.requeued > 0 {
        lines.push(Line::from(format!("sent round again {}", s.requeued)));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

fn render_sparkline(frame: &mut Frame, area: Rect, s: &Snapshot) {
    let width = area.width as usize;
    let data: Vec<u64> = s.seconds[s.seconds.len().saturating_sub(width)..]
        .iter()
        .map(|x| u64::from(x.provisioned + x.failed))
        .collect();
    let spark = Sparkline::default()
        .block(Block::default().borders(Borders::TOP).title(format!(
            "now {:.0}/min, run {:.0}/min (devices/s, {} s)",
            per_minute_now(s, 10),
            per_minute_run(s),
            data.len()
        )))
        .data(&data)
        .style(Style::default().fg(Color::Cyan));
    frame.render_widget(spark, area);
}

/// A panel's frame: a titled top border on a big screen, nothing on a small one (the
/// table's header says what it is).
fn panel<'a>(title: impl Into<Line<'a>>, big: bool) -> Block<'a> {
    if big {
        Block::default().borders(Borders::TOP).title(title)
    } else {
        Block::default()
    }
}

fn render_stages(frame: &mut Frame, area: Rect, s: &Snapshot, big: bool) {
    let rows = s.stages.iter().map(|r| {
        Row::new(vec![
            Cell::from(r.stage.name()),
            Cell::from(r.count.to_string()),
            Cell::from(ms(r.p50)),
            Cell::from(ms(r.p99)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(18),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
        ],
    )
    .header(Row::new(vec!["stage", "count", "p50", "p99"]).style(bold()))
    .block(panel("stages", big));
    frame.render_widget(table, area);
}

/// `3s ago`, `4m ago`, `2h ago`.
fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn render_rates(frame: &mut Frame, area: Rect, s: &Snapshot, big: bool) {
    let rows = s.rates.iter().map(|r| {
        let target = r.target.map_or("∞".to_string(), |t| format!("{t:.1}"));
        let last = r.last_throttle.map_or("never".to_string(), ago);
        let recent = r.last_throttle.is_some_and(|d| d < Duration::from_secs(10));
        Row::new(vec![
            Cell::from(r.api.code()),
            Cell::from(target),
            Cell::from(format!("{:.1}", r.actual)),
            Cell::from(last).style(if recent {
                Style::default().fg(Color::Yellow)
            } else {
                Style::default()
            }),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(18),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Min(8),
        ],
    )
    .header(Row::new(vec!["API req/s", "target", "now", "throttle"]).style(bold()))
    .block(panel("rate control", big));
    frame.render_widget(table, area);
}

/// `[█████·····]` for `done` of `total`.
pub fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        ((done.min(total) as u128 * width as u128) / total as u128) as usize
    };
    format!("[{}{}]", "█".repeat(filled), "·".repeat(width - filled))
}

/// Sorts `vjig-2` before `vjig-10`: the name without its trailing number, then the number.
fn natural(name: &str) -> (&str, u64) {
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit());
    (stem, name[stem.len()..].parse().unwrap_or(0))
}

/// Whether a jig needs the operator's eye: unplugged, or its last board failed.
fn troubled(j: &JigTotals) -> bool {
    !j.connected || matches!(j.last, Some(JigOutcome::Failed { .. }))
}

fn jig_row<'a>(name: &'a str, j: &'a JigTotals, big: bool) -> Row<'a> {
    let (state, style) = if !j.connected {
        (UNPLUGGED.to_string(), failed_style())
    } else if j.current.is_some() {
        (format!("{BUSY} busy"), Style::default().fg(Color::Green))
    } else {
        (format!("{IDLE} idle"), Style::default())
    };
    let progress = match j.progress {
        Some((done, total)) if j.current.is_some() => format!(
            "{} {:>3}%",
            bar(done, total, if big { 20 } else { 6 }),
            (done * 100).checked_div(total).unwrap_or(0)
        ),
        _ => String::new(),
    };
    // On a small screen the last board's result only (its serial is in the failures).
    let (last, last_style) = match &j.last {
        Some(JigOutcome::Provisioned { serial }) => (
            if big {
                format!("{OK} {serial}")
            } else {
                format!("{OK} ok")
            },
            Style::default().fg(Color::Green),
        ),
        Some(JigOutcome::Failed { serial, reason }) => (
            if big {
                format!("{FAIL} {serial} {reason}")
            } else {
                format!("{FAIL} {reason}")
            },
            failed_style(),
        ),
        Some(JigOutcome::Interrupted { serial }) => (
            if big {
                format!("‖ {serial} interrupted")
            } else {
                "‖ interrupted".into()
            },
            Style::default(),
        ),
        None => (String::new(), Style::default()),
    };
    let eff = j.efficiency();
    Row::new(vec![
        Cell::from(name),
        Cell::from(state).style(style),
        Cell::from(j.current.clone().unwrap_or_default()),
        Cell::from(progress),
        Cell::from(j.boards.to_string()),
        Cell::from(if eff > 0.0 {
            format!("{:.0}%", eff * 100.0)
        } else {
            "-".into()
        }),
        Cell::from(last).style(last_style),
    ])
}

fn render_jigs(frame: &mut Frame, area: Rect, s: &Snapshot, big: bool) {
    // Title and header take two lines; when not every jig fits, those that need the
    // operator come first.
    let fit = area.height.saturating_sub(2) as usize;
    let mut jigs: Vec<(&String, &JigTotals)> = s.jigs.iter().collect();
    jigs.sort_by_key(|(name, _)| natural(name));
    if jigs.len() > fit {
        jigs.sort_by_key(|(_, j)| !troubled(j));
    }
    let shown = jigs.len().min(fit);
    let width = |text: &str, floor: usize| text.chars().count().max(floor) as u16;
    let name_width = jigs.iter().map(|(n, _)| width(n, 3)).max().unwrap_or(3);
    let board_width = jigs
        .iter()
        .filter_map(|(_, j)| j.current.as_deref())
        .map(|b| width(b, 5))
        .max()
        .unwrap_or(5);
    let rows = jigs.iter().map(|(name, j)| jig_row(name, j, big));
    let unplugged = s.jigs.values().filter(|j| !j.connected).count();
    let mut title = vec![Span::raw(if shown < s.jigs.len() {
        format!("jigs ({}, {shown} shown) ", s.jigs.len())
    } else {
        format!("jigs ({}) ", s.jigs.len())
    })];
    if unplugged > 0 {
        title.push(Span::styled(
            format!("{FAIL} {unplugged} unplugged"),
            failed_style(),
        ));
    }
    let table = Table::new(
        rows,
        [
            Constraint::Length(name_width),
            Constraint::Length(11),
            Constraint::Length(board_width),
            Constraint::Length(if big { 27 } else { 13 }),
            Constraint::Length(6),
            Constraint::Length(4),
            Constraint::Min(8),
        ],
    )
    .header(
        Row::new(vec![
            "jig", "state", "board", "write", "boards", "eff", "last",
        ])
        .style(bold()),
    )
    .column_spacing(1)
    .block(
        Block::default()
            .borders(Borders::TOP)
            .title(Line::from(title)),
    );
    frame.render_widget(table, area);
}

fn render_failures(frame: &mut Frame, area: Rect, s: &Snapshot, rows: usize) {
    let lines: Vec<Line> = if s.recent_failures.is_empty() {
        vec![Line::from("none")]
    } else {
        s.recent_failures
            .iter()
            .rev()
            .take(rows)
            .map(|f| {
                Line::from(vec![
                    Span::styled(format!("{FAIL} {}", f.serial), failed_style()),
                    Span::raw(format!(
                        "  {}  (at {}, {}, attempts {})",
                        f.reason,
                        clock(f.at),
                        f.stage,
                        f.attempts,
                    )),
                ])
            })
            .collect()
    };
    let title = format!("latest failures ({} failed)", s.failed);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::TOP).title(title)),
        area,
    );
}

/// The keys, over the middle of the screen.
pub const HELP: &[&str] = &[
    "q        stop feeding new boards; finish those in flight, write the report, exit",
    "         (exit 0 if no device failed)",
    "q again  stop at once, like Ctrl-C: devices in flight keep their state (exit 130)",
    "Ctrl-C   the same",
    "p        pause / resume feeding new boards",
    "r        send the failed boards of this run round again (virtual line: back",
    "         in the queue; real line: their jigs are re-armed)",
    "?        show / hide this help",
];

fn render_help(frame: &mut Frame, area: Rect) {
    let width = area.width.min(84);
    let height = (HELP.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(HELP.iter().map(|l| Line::from(*l)).collect::<Vec<_>>())
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title("keys")),
        popup,
    );
}

#[cfg(test)]
mod tests;
