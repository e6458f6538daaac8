//! `station loadtest`'s open-loop modes: synthetic devices started on a schedule (device i of
//! a step at its start + i/R), whatever is in flight, so a stall of the endpoint shows in the
//! latencies instead of slowing the load down (no coordinated omission: end-to-end latency
//! counts from each device's *scheduled* start).
//!
//! - `--rate R --duration D`: one step at R devices/s.
//! - `--ramp FROM..TO --step S --hold D`: steps FROM, FROM+S, … up to TO, back to back.
//! - `--find-knee`: steps up (doubling, or by `--step`) until a step does not hold (more than
//!   1 % of an API's requests throttled, or end-to-end p99 over `--p99-ms`), then bisects
//!   between the last rate that held and the first that did not; reports the highest rate
//!   held and the limit the lowest failing step ran into ([`steps::Limit`]). Its steps are
//!   separate: each waits for the previous one's devices to finish.
//!
//! The engine runs with open rate limiters ([`crate::provision::rate::Limits::open_loop`]): it
//! neither paces nor adapts, and a throttled request is not retried — the device fails as
//! `<api>:<errorCode>` — so the throttles counted are the ones the offered rate caused. The
//! first part of each step (the warm-up, a fifth of the hold by default) is not measured for
//! throttles and API latency, so a quota's burst allowance cannot hide a rate above the
//! quota. Devices in flight are capped (default 10,000); devices started late because of the
//! cap are counted per step.
//!
//! As with `--devices`, the embedded emulator works in a temporary directory unless
//! `--keep-emulator-state`.
//!
//! Ctrl-C stops at once: the current step closes with what it measured (marked interrupted)
//! and the report folder gets the steps done.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use miette::Diagnostic;
use tokio::task::JoinSet;

use super::command::{FeedGate, FeedState};
use super::loadtest::{Ended, LoadtestOptions, Started, Synthetic, key_plan, start};
use super::pipeline::Pipeline;
use super::steps::{self, Knee, LoadtestFile, StepRecord};
use super::{RunReport, Stopped};
use crate::config::Config;
use crate::halt::Halt;
use crate::provision::KeyPlan;
use crate::shutdown::Shutdown;
use crate::telemetry::{Event, Totals};

/// Default hold of a step: long enough that a quota's burst (AWS's is unknown; the
/// emulator's is one second of tokens) cannot hide a rate above the quota.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(15);
/// Default end-to-end p99 threshold of `--find-knee`.
pub const DEFAULT_P99: Duration = Duration::from_millis(2000);
/// `--find-knee`'s default first rate and highest rate (devices/s).
pub const DEFAULT_KNEE_RANGE: (f64, f64) = (5.0, 2000.0);
/// `--find-knee`'s default bisection rounds.
pub const DEFAULT_ROUNDS: u32 = 4;
/// Default cap on devices in flight.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

/// What the steps are.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Rate {
        rate: f64,
        duration: Duration,
    },
    Ramp {
        from: f64,
        to: f64,
        step: f64,
        hold: Duration,
    },
    Knee {
        from: f64,
        to: f64,
        /// Added per step up; `None`: the rate doubles.
        step: Option<f64>,
        hold: Duration,
        rounds: u32,
    },
}

/// An open-loop load test.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    pub plan: Plan,
    pub p99_threshold: Duration,
    /// Not measured at the start of each step; `None`: a fifth of the hold.
    pub warmup: Option<Duration>,
    pub max_in_flight: usize,
}

/// What an open-loop load test produced.
#[derive(Debug)]
pub struct OpenReport {
    pub run: RunReport,
    pub steps: Vec<StepRecord>,
    pub knee: Option<Knee>,
}

/// A load-test flag that cannot be used.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum OpenLoopError {
    #[error("--ramp {given:?}: {reason}")]
    #[diagnostic(
        code(station::loadtest::bad_ramp),
        help(
            "give the rates in devices per second as FROM..TO with 0 < FROM ≤ TO, e.g. --ramp 10..100 --step 10"
        )
    )]
    BadRamp { given: String, reason: String },

    #[error("{flag} {given:?} is not a duration")]
    #[diagnostic(
        code(station::loadtest::bad_duration),
        help("write a positive number with a unit: 500ms, 15s, 2m (a bare number is seconds)")
    )]
    BadDuration { flag: &'static str, given: String },

    #[error("{flag} {given} is not a usable rate")]
    #[diagnostic(
        code(station::loadtest::bad_rate),
        help("give a positive number of devices per second, e.g. --rate 20")
    )]
    BadRate { flag: &'static str, given: f64 },
}

/// Parses `--ramp FROM..TO`.
pub fn parse_ramp(given: &str) -> Result<(f64, f64), OpenLoopError> {
    let bad = |reason: &str| OpenLoopError::BadRamp {
        given: given.to_string(),
        reason: reason.to_string(),
    };
    let (from, to) = given
        .split_once("..")
        .ok_or_else(|| bad("expected FROM..TO"))?;
    let num = |s: &str| {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad(&format!("{s:?} is not a number")))
    };
    let (from, to) = (num(from)?, num(to)?);
    if from <= 0.0 {
        return Err(bad("FROM must be above 0"));
    }
    if to < from {
        return Err(bad("TO is below FROM"));
    }
    Ok((from, to))
}

/// Parses a duration: `500ms`, `15s`, `2m`, or a bare number of seconds.
pub fn parse_duration(flag: &'static str, given: &str) -> Result<Duration, OpenLoopError> {
    let bad = || OpenLoopError::BadDuration {
        flag,
        given: given.to_string(),
    };
    let t = given.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    if !(v.is_finite() && v > 0.0) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// Checks a rate flag.
pub fn check_rate(flag: &'static str, given: f64) -> Result<f64, OpenLoopError> {
    if given.is_finite() && given > 0.0 {
        Ok(given)
    } else {
        Err(OpenLoopError::BadRate { flag, given })
    }
}

/// The CPU time (user + system) the whole process has used.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct it is given and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Runs an open-loop load test; `opts.devices` is not used.
pub async fn loadtest_open(
    cfg: &Config,
    opts: &LoadtestOptions,
    ol: &OpenLoop,
    shutdown: Shutdown,
) -> crate::Result<OpenReport> {
    let halt = Halt::new(shutdown.clone());
    let Started {
        p,
        feed,
        cfg,
        scratch: _scratch,
        stamp,
        ..
    } = start(cfg, opts, 0, true, &halt, &shutdown).await?;
    let cfg = &cfg;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut d = Driver {
        p: &p,
        ol,
        feed,
        shutdown: shutdown.clone(),
        key: key_plan(cfg),
        stamp,
        next: 0,
        tasks: JoinSet::new(),
        steps: Vec::new(),
        stopped: false,
    };
    let (mode, knee) = match ol.plan {
        Plan::Rate { rate, duration } => {
            d.step("rate", rate, duration, true).await;
            ("rate", None)
        }
        Plan::Ramp {
            from,
            to,
            step,
            hold,
        } => {
            let mut rate = from;
            loop {
                let next = rate + step;
                let last = next > to * (1.0 + 1e-9);
                d.step("ramp", rate, hold, last).await;
                if last || d.stopped {
                    break;
                }
                rate = next;
            }
            ("ramp", None)
        }
        Plan::Knee {
            from,
            to,
            step,
            hold,
            rounds,
        } => (
            "find_knee",
            Some(d.find_knee(from, to, step, hold, rounds, cores).await),
        ),
    };
    while d.tasks.join_next().await.is_some() {}
    let complete = !d.stopped;
    let steps = std::mem::take(&mut d.steps);
    drop(d);
    let mut run = p.finish(None, None).await?;
    if !complete && matches!(run.stopped, Stopped::Done) {
        run.stopped = Stopped::Drained;
    }
    let file = LoadtestFile {
        mode,
        p99_threshold_ms: ol.p99_threshold.as_secs_f64() * 1000.0,
        cores,
        complete,
        steps: &steps,
        knee_per_s: knee.as_ref().and_then(|k| k.knee_per_s),
        limit: knee.as_ref().and_then(|k| k.limit.as_ref()),
        throttled_devices: steps::THROTTLED_DEVICES,
    };
    let dir: PathBuf = run.report_dir.clone();
    steps::write_files(&dir, &file)?;
    Ok(OpenReport { run, steps, knee })
}

/// One step's devices, as they end (shared with their tasks).
struct Live {
    /// End-to-end latency of the devices provisioned (µs, from the scheduled start).
    e2e: Histogram<u64>,
    provisioned: u64,
    failed: u64,
    /// Devices in flight: their scheduled start.
    pending: HashMap<u64, Instant>,
    /// The step was closed: later ends are not counted.
    closed: bool,
}

impl Live {
    fn record(&mut self, since: Duration) {
        let us = (since.as_micros() as u64).clamp(1, 3_600_000_000);
        let _ = self.e2e.record(us);
    }
}

/// The state of the schedule across steps.
struct Driver<'a> {
    p: &'a Pipeline,
    ol: &'a OpenLoop,
    feed: FeedGate,
    shutdown: Shutdown,
    key: KeyPlan,
    stamp: String,
    /// The next device's number.
    next: u64,
    tasks: JoinSet<()>,
    steps: Vec<StepRecord>,
    /// Ctrl-C, a halt, or the operator's stop: no more steps.
    stopped: bool,
}

impl Driver<'_> {
    /// The running totals (a cut in the telemetry stream).
    async fn totals(&self) -> Totals {
        self.p.telemetry.totals().await.unwrap_or_default()
    }

    /// Steps up, then bisects (module docs); the knee and its limit.
    async fn find_knee(
        &mut self,
        from: f64,
        to: f64,
        step: Option<f64>,
        hold: Duration,
        rounds: u32,
        cores: usize,
    ) -> Knee {
        let threshold = self.ol.p99_threshold;
        let mut good: Option<f64> = None;
        let mut bad: Option<(f64, StepRecord)> = None;
        let mut rate = from;
        loop {
            let rec = self.step("up", rate, hold, true).await;
            if self.stopped {
                break;
            }
            if !rec.held(threshold) {
                bad = Some((rate, rec));
                break;
            }
            good = Some(rate);
            if rate >= to {
                break;
            }
            rate = step.map_or(rate * 2.0, |s| rate + s).min(to);
        }
        if let (Some(mut g), Some((mut b, _))) = (good, bad.as_ref().map(|(r, s)| (*r, s))) {
            for _ in 0..rounds {
                if self.stopped || (b - g) / g < 0.02 {
                    break;
                }
                let mid = (g + b) / 2.0;
                let rec = self.step("bisect", mid, hold, true).await;
                if self.stopped {
                    break;
                }
                if rec.held(threshold) {
                    g = mid;
                } else {
                    b = mid;
                    bad = Some((mid, rec));
                }
            }
            good = Some(g);
        }
        Knee {
            knee_per_s: good,
            limit: bad.and_then(|(_, rec)| rec.limit(threshold, cores)),
        }
    }

    /// Runs one step at `rate` for `hold`; `drain`: wait for its devices before closing it.
    async fn step(
        &mut self,
        phase: &'static str,
        rate: f64,
        hold: Duration,
        drain: bool,
    ) -> StepRecord {
        let index = self.steps.len();
        self.p
            .telemetry
            .emit(Event::Step {
                label: format!(
                    "step {} ({phase}): {rate:.1}/s offered for {:.0} s",
                    index + 1,
                    hold.as_secs_f64()
                ),
            })
            .await;
        let warmup = self.ol.warmup.unwrap_or(hold / 5).min(hold / 2);
        let live = Arc::new(Mutex::new(Live {
            e2e: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            provisioned: 0,
            failed: 0,
            pending: HashMap::new(),
            closed: false,
        }));
        let cpu0 = cpu_time();
        let t0 = Instant::now();
        // Moves later by the time the operator paused the feed.
        let mut base = t0;
        let n = ((rate * hold.as_secs_f64()).floor() as u64).max(1);
        let mut measured: Option<Totals> = None;
        let (mut devices, mut cap_hits) = (0u64, 0u64);
        let mut interrupted = false;
        for i in 0..n {
            let at = base + Duration::from_secs_f64(i as f64 / rate);
            if measured.is_none() && at >= base + warmup {
                measured = Some(self.totals().await);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = self.shutdown.wait() => { interrupted = true; break }
            }
            match self.feed.state() {
                FeedState::Running => {}
                FeedState::Stopping => {
                    interrupted = true;
                    break;
                }
                FeedState::Paused => {
                    let paused = Instant::now();
                    if !self.feed.admit(&self.shutdown).await {
                        interrupted = true;
                        break;
                    }
                    base += paused.elapsed();
                }
            }
            while self.tasks.try_join_next().is_some() {}
            if self.tasks.len() >= self.ol.max_in_flight {
                cap_hits += 1;
                while self.tasks.len() >= self.ol.max_in_flight {
                    tokio::select! {
                        _ = self.tasks.join_next() => {}
                        _ = self.shutdown.wait() => { interrupted = true; break }
                    }
                }
                if interrupted {
                    break;
                }
            }
            let id = self.next;
            self.next += 1;
            devices += 1;
            let scheduled = base + Duration::from_secs_f64(i as f64 / rate);
            live.lock()
                .unwrap_or_else(|p| p.into_inner())
                .pending
                .insert(id, scheduled);
            let serial = format!("LT-{}-{id:07}", self.stamp);
            let device = Synthetic::new(self.p, serial, self.key.clone(), scheduled);
            let live = live.clone();
            self.tasks.spawn(async move {
                let ended = device.run().await;
                let mut l = live.lock().unwrap_or_else(|p| p.into_inner());
                if l.closed {
                    return;
                }
                l.pending.remove(&id);
                match ended {
                    Ended::Provisioned => {
                        l.provisioned += 1;
                        l.record(scheduled.elapsed());
                    }
                    Ended::Failed => l.failed += 1,
                    Ended::Interrupted | Ended::NotStarted => {}
                }
            });
        }
        let measured = match measured {
            Some(m) => m,
            None => self.totals().await,
        };
        if !interrupted {
            tokio::select! {
                _ = tokio::time::sleep_until((base + hold).into()) => {}
                _ = self.shutdown.wait() => interrupted = true,
            }
        }
        if drain && !interrupted {
            loop {
                tokio::select! {
                    j = self.tasks.join_next() => if j.is_none() { break },
                    _ = self.shutdown.wait() => { interrupted = true; break }
                }
            }
        }
        let end = self.totals().await;
        let wall = t0.elapsed();
        let cpu = cpu_time().saturating_sub(cpu0);
        let now = Instant::now();
        let mut l = live.lock().unwrap_or_else(|p| p.into_inner());
        l.closed = true;
        let pending: Vec<Instant> = l.pending.values().copied().collect();
        for scheduled in &pending {
            l.record(now.saturating_duration_since(*scheduled));
        }
        if interrupted {
            self.stopped = true;
        }
        let rec = StepRecord {
            index,
            phase,
            offered_per_s: rate,
            achieved_per_s: l.provisioned as f64 / wall.as_secs_f64().max(1e-3),
            hold_s: hold.as_secs_f64(),
            warmup_s: warmup.as_secs_f64(),
            devices,
            provisioned: l.provisioned,
            failed: l.failed,
            in_flight_at_close: pending.len() as u64,
            cap_hits,
            end_to_end: steps::Latency::of(&l.e2e),
            apis: steps::api_window(&measured, &end),
            cpu_cores: cpu.as_secs_f64() / wall.as_secs_f64().max(1e-3),
            interrupted,
        };
        drop(l);
        if cap_hits > 0 {
            tracing::warn!(
                "step {}: {cap_hits} devices started late: {} devices were in flight (the cap)",
                index + 1,
                self.ol.max_in_flight
            );
        }
        tracing::info!(
            "step {} ({phase}): offered {rate:.2}/s, achieved {:.2}/s, end-to-end p99 {:.0} ms",
            index + 1,
            rec.achieved_per_s,
            rec.end_to_end.p99_ms
        );
        self.steps.push(rec.clone());
        rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_and_durations_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_ramp("10..100").unwrap(), (10.0, 100.0));
        assert_eq!(parse_ramp(" 2.5 .. 5 ").unwrap(), (2.5, 5.0));
        for bad in ["10", "0..5", "5..2", "a..3", "..3"] {
            let e = parse_ramp(bad).unwrap_err();
            assert!(matches!(e, OpenLoopError::BadRamp { .. }), "{bad}");
        }
        assert_eq!(
            parse_duration("--hold", "15s").unwrap(),
            Duration::from_secs(15)
        );
        assert_eq!(
            parse_duration("--hold", "2").unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(
            parse_duration("--hold", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("--hold", "1m").unwrap(),
            Duration::from_secs(60)
        );
        assert!(parse_duration("--hold", "0s").is_err());
        assert!(parse_duration("--hold", "soon").is_err());
        assert!(check_rate("--rate", 0.0).is_err());
    }

    #[test]
    fn cpu_time_advances() {
        let a = cpu_time();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_time() > a);
    }
}
