//! `station loadtest`: the provisioning engine alone, fed synthetic devices as fast as the
//! endpoint's quotas allow — no jigs, keys from the pool. It writes the same report folder and
//! `summary.json` as `run` (the `jig_write` stage stays empty), and journals its devices in a
//! ledger inside the report folder so the line's ledger file is not touched — or, when
//! `station.ledger` is a PostgreSQL database, in that shared ledger as `run` does, with
//! `ledger.json` in the report folder naming the ledger and the load test's serials (its
//! devices are `LT-<start time><six random digits>-<n>`), by which `--cleanup-plan` reads
//! them back.
//!
//! Every device started is accounted for: provisioned, failed, or interrupted by a stop.
//! Synthetic devices never resume, so an interrupted one is closed in the ledger with its
//! certificate listed for cleanup. A ledger that refuses a step stops the load test with
//! that error.
//!
//! The operator's commands apply as on the line: pause and resume stop and restart new
//! devices, stopping the feed lets the devices in flight finish, and `r` submits the failed
//! synthetic devices again.
//!
//! This is the fixed-count mode (`--devices N`); the open-loop modes (`--rate`, `--ramp`,
//! `--find-knee`) are in [`super::open_loop`] and share its synthetic device (`Synthetic`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Semaphore, oneshot};

use super::command::{self, FeedGate, FeedState};
use super::pipeline::{LedgerPlace, Pipeline, PipelineOptions};
use super::{RunReport, timestamp};
use crate::config::Config;
use crate::halt::Halt;
use crate::keys::KeySource;
use crate::ledger::{Ledger, LedgerLocation, Transition};
use crate::provision::{BoardIdentity, DeviceJob, KeyPlan, NotProvisioned};
use crate::shutdown::Shutdown;
use crate::telemetry::{Event, Stage, Telemetry};

/// Options of one load test (the CLI flags).
#[derive(Debug, Clone)]
pub struct LoadtestOptions {
    pub devices: usize,
    /// Session pool size (default: `provision.sessions`).
    pub sessions: Option<usize>,
    pub report_dir: Option<PathBuf>,
    /// Keep the embedded emulator's state in `emulator.state_dir`; otherwise it works in a
    /// temporary directory removed after the run (a load test's things are synthetic).
    pub keep_emulator_state: bool,
    pub progress: bool,
    /// The operator's commands (the dashboard's keys); `None`: none come.
    pub control: Option<command::Control>,
}

/// Provisions `devices` synthetic devices through the engine.
pub async fn loadtest(
    cfg: &Config,
    opts: &LoadtestOptions,
    shutdown: Shutdown,
) -> crate::Result<RunReport> {
    let halt = Halt::new(shutdown.clone());
    let Started {
        p,
        feed,
        sessions,
        cfg,
        scratch: _scratch,
        stamp,
    } = start(cfg, opts, opts.devices as u64, false, &halt, &shutdown).await?;
    let cfg = &cfg;

    let key = key_plan(cfg);
    // Enough devices in flight to keep every session busy, without a task per device
    // waiting on the ledger at once.
    let permits = Arc::new(Semaphore::new(sessions * 2));
    let mut tasks = tokio::task::JoinSet::new();
    // Serials are made as devices start (the next number), not all up front: memory stays
    // the same whatever the count. Failed devices the operator sends again queue here.
    let mut next = 0..opts.devices;
    let mut queue: VecDeque<String> = VecDeque::new();
    // Failed devices, for the operator's `r`.
    let failed = Arc::new(Mutex::new(Vec::new()));
    loop {
        // A finished device's task is reaped here, not kept until the end of the run.
        while tasks.try_join_next().is_some() {}
        if queue.is_empty()
            && let Some(n) = next.next()
        {
            queue.push_back(format!("LT-{stamp}-{n:07}"));
        }
        if queue.is_empty() {
            // Wait for the devices in flight, or for the operator to send failed ones again.
            tokio::select! {
                joined = tasks.join_next() => if joined.is_none() { break } else { continue },
                _ = feed.retry_requested() => {
                    let again: Vec<String> =
                        std::mem::take(&mut *failed.lock().unwrap_or_else(|p| p.into_inner()));
                    for serial in &again {
                        p.telemetry.emit(Event::Requeued { serial: serial.clone() }).await;
                    }
                    queue.extend(again);
                    continue;
                }
                _ = shutdown.wait() => break,
            }
        }
        if !feed.admit(&shutdown).await {
            break;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = shutdown.wait() => break,
        };
        if feed.state() != FeedState::Running {
            // Paused or stopped while waiting for a permit: look at the feed again.
            drop(permit);
            continue;
        }
        let Some(serial) = queue.pop_front() else {
            continue;
        };
        let failed = failed.clone();
        let device = Synthetic::new(&p, serial, key.clone(), Instant::now());
        tasks.spawn(async move {
            let _permit = permit;
            let serial = device.serial.clone();
            if device.run().await == Ended::Failed {
                failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(serial);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut report = p.finish(Some(opts.devices as u64), None).await?;
    if matches!(report.stopped, super::Stopped::Done) && feed.state() == FeedState::Stopping {
        report.stopped = super::Stopped::Drained;
    }
    Ok(report)
}

/// What every kind of load test starts with.
pub(super) struct Started {
    pub p: Pipeline,
    /// The operator's commands, or a gate that is always open.
    pub feed: FeedGate,
    pub sessions: usize,
    /// The configuration to run with (the embedded emulator's state may be a scratch one).
    pub cfg: Config,
    /// The scratch emulator state, removed when this is dropped: keep it until the run ends.
    pub scratch: Option<tempfile::TempDir>,
    /// The digits of the start time in the load test's serials (`LT-<stamp>-<n>`).
    pub stamp: String,
}

/// Starts a load test's pipeline (ledger in the report folder, or the shared PostgreSQL ledger
/// with `ledger.json` naming it there; `target` devices, open loop or not) and the operator's feed gate, and publishes the run to the operator. The embedded
/// emulator keeps nothing past a load test unless `keep_emulator_state`: its registry would only
/// grow (and be read back at every start).
pub(super) async fn start(
    cfg: &Config,
    opts: &LoadtestOptions,
    target: u64,
    open_loop: bool,
    halt: &Halt,
    shutdown: &Shutdown,
) -> crate::Result<Started> {
    if open_loop && cfg.provision.shared_quota {
        return Err(crate::Error::SharedQuotaOpenLoop);
    }
    let feed = match &opts.control {
        Some(c) => c.serve(shutdown.clone()),
        None => FeedGate::always(),
    };
    let sessions = opts.sessions.unwrap_or(cfg.provision.sessions).max(1);
    let mut cfg = cfg.clone();
    let scratch = if cfg.endpoint.is_embedded() && !opts.keep_emulator_state {
        let dir = tempfile::Builder::new()
            .prefix("fleet-loadtest-emulator-")
            .tempdir()
            .map_err(crate::Error::LoadtestScratch)?;
        cfg.emulator.state_dir = dir.path().to_path_buf();
        Some(dir)
    } else {
        None
    };
    // A shared (PostgreSQL) ledger journals the load test as it journals the line; a ledger
    // file is the line's own, and the load test keeps a ledger of its own in its report folder.
    let configured = cfg.station.ledger_location();
    let shared = matches!(configured, LedgerLocation::Postgres { .. });
    // On a shared ledger, load tests that start in the same second (on this station or
    // another) must not take each other's serials: six random digits follow the time.
    let stamp = if shared {
        format!("{}{:06}", serial_stamp(), fastrand::u32(..1_000_000))
    } else {
        serial_stamp()
    };
    let p = Pipeline::start(
        &cfg,
        PipelineOptions {
            report_dir: opts.report_dir.clone(),
            report_prefix: "loadtest-",
            ledger: if shared {
                LedgerPlace::At(&configured)
            } else {
                LedgerPlace::InReportDir
            },
            sessions,
            target,
            progress: opts.progress,
            key_pool: cfg.keys.source != KeySource::Aws,
            open_loop,
        },
        halt,
    )
    .await?;
    if shared {
        crate::station::cleanup::write_ledger_pointer(
            &p.report_dir,
            &configured,
            &format!("LT-{stamp}-"),
        )?;
    }
    if let Some(c) = &opts.control {
        c.publish(command::Published {
            snapshots: p.snapshots.clone(),
            report_dir: p.report_dir.clone(),
            target,
        });
    }
    Ok(Started {
        p,
        feed,
        sessions,
        cfg,
        scratch,
        stamp,
    })
}

/// The digits of the load test's start time, in its synthetic serial numbers.
pub(super) fn serial_stamp() -> String {
    timestamp().chars().filter(char::is_ascii_digit).collect()
}

/// Synthetic devices cannot make keys: the pool stands in for them.
pub(super) fn key_plan(cfg: &Config) -> KeyPlan {
    match cfg.keys.source {
        KeySource::Aws => KeyPlan::Aws,
        KeySource::Pool | KeySource::Device => KeyPlan::Pool,
    }
}

/// How a synthetic device ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    Provisioned,
    Failed,
    Interrupted,
    /// The ledger refused to journal it (the load test stops).
    NotStarted,
}

/// One synthetic device and what it needs.
pub(super) struct Synthetic {
    pub serial: String,
    key: KeyPlan,
    ledger: Ledger,
    telemetry: Telemetry,
    jobs: tokio::sync::mpsc::Sender<DeviceJob>,
    halt: Halt,
    /// When the device was due to start: its end-to-end latency counts from here (an open
    /// loop's schedule, so a stall shows in the percentiles).
    scheduled: Instant,
}

impl Synthetic {
    pub(super) fn new(p: &Pipeline, serial: String, key: KeyPlan, scheduled: Instant) -> Self {
        Synthetic {
            serial,
            key,
            ledger: p.ledger.clone(),
            telemetry: p.telemetry.clone(),
            jobs: p.engine.submitter(),
            halt: p.halt.clone(),
            scheduled,
        }
    }

    /// Runs the device.
    pub(super) async fn run(self) -> Ended {
        let started = self.scheduled;
        let begun = match self.ledger.begin(&self.serial, "loadtest").await {
            Ok(b) => b,
            Err(e) => {
                // Not journaled, so not started: the load test stops with the ledger's error.
                self.halt.raise(e);
                return Ended::NotStarted;
            }
        };
        let device_id = begun.id;
        self.telemetry
            .emit(Event::DeviceStarted {
                serial: self.serial.clone(),
                jig: "loadtest".into(),
            })
            .await;
        let (reply, rx) = oneshot::channel();
        let job = DeviceJob {
            device_id,
            board: BoardIdentity {
                serial: self.serial.clone(),
                mac: None,
                hw_rev: None,
                jig: "loadtest".into(),
            },
            key: self.key,
            resume: None,
            reply,
        };
        let outcome = match self.jobs.send(job).await {
            Ok(()) => rx.await.unwrap_or(Err(NotProvisioned::Interrupted)),
            Err(_) => Err(NotProvisioned::Interrupted),
        };
        let serial = self.serial;
        match outcome {
            Ok(_credentials) => {
                // A synthetic device ends at `registered` (no board to write): its serial's
                // lease on a shared ledger is let go here (counted in its latency).
                if let Err(e) = self.ledger.release(device_id).await {
                    self.halt.raise(e);
                }
                self.telemetry
                    .emit(Event::StageTime {
                        stage: Stage::EndToEnd,
                        elapsed: started.elapsed(),
                    })
                    .await;
                self.telemetry
                    .emit(Event::DeviceProvisioned { serial })
                    .await;
                Ended::Provisioned
            }
            Err(NotProvisioned::Failed(f)) => {
                let recorded = self
                    .ledger
                    .record(
                        device_id,
                        Transition::Failed {
                            reason: format!("{}: {}", f.code, f.message),
                        },
                    )
                    .await;
                if let Err(e) = recorded {
                    self.halt.raise(e);
                }
                self.telemetry
                    .emit(Event::DeviceFailed {
                        serial,
                        reason: f.code,
                    })
                    .await;
                Ended::Failed
            }
            Err(NotProvisioned::Interrupted) => {
                // A synthetic device never resumes: close it, listing its certificate.
                if let Err(e) = record_interrupted(&self.ledger, device_id).await {
                    self.halt.raise(e);
                }
                self.telemetry
                    .emit(Event::DeviceInterrupted { serial })
                    .await;
                Ended::Interrupted
            }
        }
    }
}

/// Closes an interrupted synthetic device: its certificate goes to the orphans.
async fn record_interrupted(
    ledger: &Ledger,
    device_id: i64,
) -> Result<(), crate::ledger::LedgerError> {
    ledger
        .record(
            device_id,
            Transition::Interrupted {
                reason: "the load test was stopped; synthetic devices do not resume".into(),
            },
        )
        .await
}
