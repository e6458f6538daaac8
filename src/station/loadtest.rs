//! `station loadtest`: the provisioning engine alone, fed synthetic devices as fast as the
//! endpoint's quotas allow — no jigs, keys from the pool. It writes the same report folder and
//! `summary.json` as `run` (the `jig_write` stage stays empty), and journals its devices in a
//! ledger inside the report folder so the line's ledger is not touched.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Semaphore, oneshot};

use super::pipeline::{Pipeline, PipelineOptions};
use super::{RunReport, timestamp};
use crate::config::{Config, KeySourceConfig};
use crate::ledger::Transition;
use crate::provision::{BoardIdentity, DeviceJob, KeyPlan};
use crate::shutdown::Shutdown;
use crate::telemetry::{Event, Stage};

/// Options of one load test (the CLI flags).
#[derive(Debug, Clone)]
pub struct LoadtestOptions {
    pub devices: usize,
    /// Session pool size (default: `provision.sessions`).
    pub sessions: Option<usize>,
    pub report_dir: Option<PathBuf>,
    pub progress: bool,
}

/// Provisions `devices` synthetic devices through the engine.
pub async fn loadtest(
    cfg: &Config,
    opts: &LoadtestOptions,
    shutdown: Shutdown,
) -> crate::Result<RunReport> {
    let report_dir = opts.report_dir.clone().unwrap_or_else(|| {
        cfg.station
            .report_dir
            .join(format!("loadtest-{}", timestamp()))
    });
    let sessions = opts.sessions.unwrap_or(cfg.provision.sessions).max(1);
    let p = Pipeline::start(
        cfg,
        PipelineOptions {
            report_dir: Some(report_dir.clone()),
            ledger: &report_dir.join("ledger.db"),
            sessions,
            target: opts.devices as u64,
            progress: opts.progress,
            key_pool: cfg.keys.source != KeySourceConfig::Aws,
        },
        &shutdown,
    )
    .await?;

    let stamp: String = timestamp().chars().filter(char::is_ascii_digit).collect();
    // Enough devices in flight to keep every session busy, without a task per device
    // waiting on the ledger at once.
    let permits = Arc::new(Semaphore::new(sessions * 2));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..opts.devices {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = shutdown.wait() => break,
        };
        let serial = format!("LT-{stamp}-{n:07}");
        let (ledger, telemetry, jobs) =
            (p.ledger.clone(), p.telemetry.clone(), p.engine.submitter());
        // Synthetic devices cannot make keys: the pool stands in for them.
        let key = match cfg.keys.source {
            KeySourceConfig::Aws => KeyPlan::Aws,
            KeySourceConfig::Pool | KeySourceConfig::Device => KeyPlan::Pool,
        };
        tasks.spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            let Ok(begun) = ledger.begin(&serial, "loadtest").await else {
                return;
            };
            let device_id = begun.id;
            telemetry
                .emit(Event::DeviceStarted {
                    serial: serial.clone(),
                    jig: "loadtest".into(),
                })
                .await;
            let (reply, rx) = oneshot::channel();
            let board = BoardIdentity {
                serial: serial.clone(),
                mac: None,
                hw_rev: None,
                jig: "loadtest".into(),
            };
            let job = DeviceJob {
                device_id,
                board,
                key,
                resume: None,
                reply,
            };
            let outcome = match jobs.send(job).await {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            match outcome {
                Some(Ok(_credentials)) => {
                    telemetry
                        .emit(Event::StageTime {
                            stage: Stage::EndToEnd,
                            elapsed: started.elapsed(),
                        })
                        .await;
                    telemetry.emit(Event::DeviceProvisioned { serial }).await;
                }
                Some(Err(f)) => {
                    let _ = ledger
                        .record(
                            device_id,
                            Transition::Failed {
                                reason: format!("{}: {}", f.code, f.message),
                            },
                        )
                        .await;
                    telemetry
                        .emit(Event::DeviceFailed {
                            serial,
                            reason: f.code,
                        })
                        .await;
                }
                None => {}
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    p.finish(Some(opts.devices as u64), None).await
}
