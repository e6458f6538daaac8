//! `station run`: wires the stages into the pipeline.
//!
//! ```text
//! jigs (one OS thread each) ──DeviceJob──► provisioner (M sessions) ──Credentials──► jigs
//!        │                                      │                                      │
//!        └──────────── ledger (every state, durable before the next step) ─────────────┘
//!        └──────────── telemetry events ──► aggregator ──► progress printer, summary.json
//! ```
//!
//! - [`endpoint`]: the embedded emulator or a real AWS endpoint.
//! - [`line`]: the per-jig line cycle.
//! - [`virtual_line`]: virtual jigs on pseudo-terminals fed by a serial-number generator.

pub mod endpoint;
pub mod line;
pub mod virtual_line;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::error::Error;
use crate::jig::PortSettings;
use crate::keys::KeyPool;
use crate::keys::pool::PoolConfig;
use crate::ledger::Ledger;
use crate::provision::{EngineConfig, Provisioner};
use crate::shutdown::Shutdown;
use crate::telemetry::summary::Summary;
use crate::telemetry::{self, progress};

use self::endpoint::Endpoint;
use self::line::{LineContext, LineProgress};

/// Options of one run (the CLI flags).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Number of boards (virtual line: boards fed; real line: stop after this many).
    pub boards: Option<usize>,
    /// Report directory; default `<station.report_dir>/<UTC timestamp>/`.
    pub report_dir: Option<PathBuf>,
    /// Print progress lines to stderr.
    pub progress: bool,
}

/// What a run produced.
#[derive(Debug)]
pub struct RunReport {
    pub summary: Summary,
    pub report_dir: PathBuf,
}

impl RunReport {
    /// True when every board the run set out to do was provisioned and verified.
    pub fn all_provisioned(&self) -> bool {
        let d = &self.summary.devices;
        d.failed == 0 && d.provisioned == d.total
    }
}

/// UTC timestamp for report directory names, e.g. `20261129T074424Z`.
pub fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(time::macros::format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Provisions the boards of the configured line until `boards` are done or `shutdown`.
pub async fn run(cfg: &Config, opts: &RunOptions, shutdown: Shutdown) -> crate::Result<RunReport> {
    let report_dir = opts
        .report_dir
        .clone()
        .unwrap_or_else(|| cfg.station.report_dir.join(timestamp()));
    std::fs::create_dir_all(&report_dir).map_err(|source| Error::Report {
        path: report_dir.clone(),
        source,
    })?;

    let endpoint = Endpoint::resolve(cfg, &shutdown).await?;
    let root_ca_pem = std::fs::read(&endpoint.board_root_ca).map_err(|source| {
        crate::provision::tls::TlsSetupError::Read {
            what: "board root CA",
            path: endpoint.board_root_ca.clone(),
            source,
        }
    })?;
    let ledger = Ledger::open(&cfg.station.ledger, &cfg.station.id)?;

    let target = if cfg.jigs.is_virtual() {
        Some(opts.boards.unwrap_or(cfg.jigs.boards))
    } else {
        opts.boards
    };
    let (telemetry, snapshots, aggregator) = telemetry::start();
    let printer = opts.progress.then(|| {
        tokio::spawn(progress::run(
            snapshots.clone(),
            target.unwrap_or(0) as u64,
            Duration::from_secs(1),
        ))
    });

    let keys = Arc::new(KeyPool::start(&PoolConfig {
        algorithm: cfg.keys.algorithm,
        workers: cfg.keys.workers,
        stock: cfg.keys.stock,
        common_name: format!("{} device", cfg.station.id),
    }));
    let engine = Provisioner::start(
        EngineConfig {
            host: endpoint.host.clone(),
            port: endpoint.port,
            tls: endpoint.tls.clone(),
            station_id: cfg.station.id.clone(),
            sessions: cfg.provision.sessions,
            template: cfg.provision.template_name.clone(),
            format: cfg.provision.format(),
            request_timeout: Duration::from_secs(cfg.provision.request_timeout_s),
            max_attempts: cfg.provision.max_attempts,
            parameters: cfg.parameters.clone(),
        },
        keys.clone(),
        ledger.clone(),
        telemetry.clone(),
        shutdown.clone(),
    );

    let progress_state = Arc::new(LineProgress::new(target.map(|t| t as u64)));

    // The jigs: virtual ones on ptys, or the configured serial ports.
    let mut virtual_line = None;
    let ports: Vec<(String, String, PortSettings)> = if cfg.jigs.is_virtual() {
        let line = virtual_line::VirtualLine::start(cfg, target.unwrap_or(0))?;
        let ports = line.ports();
        virtual_line = Some(line);
        ports
    } else {
        cfg.jigs
            .ports
            .iter()
            .map(|p| {
                let settings = virtual_line::port_settings(cfg, p.baud.unwrap_or(cfg.jigs.baud));
                (p.name.clone(), p.path.clone(), settings)
            })
            .collect()
    };
    if ports.is_empty() {
        return Err(Error::NoJigs);
    }
    let ctx = LineContext {
        ledger: ledger.clone(),
        telemetry: telemetry.clone(),
        jobs: engine.submitter(),
        root_ca_pem: Arc::new(root_ca_pem),
        progress: progress_state.clone(),
        shutdown: shutdown.clone(),
        release: virtual_line.as_ref().map(|l| l.release_hook()),
    };
    let jig_threads: Vec<_> = ports
        .into_iter()
        .map(|(name, path, settings)| {
            let ctx = ctx.clone();
            std::thread::Builder::new()
                .name(format!("jig-{name}"))
                .spawn(move || line::run_jig(&name, &path, &settings, &ctx))
                .expect("spawn jig thread")
        })
        .collect();
    drop(ctx);

    // Wait for the line to finish (or the operator to stop it).
    tokio::select! {
        _ = progress_state.finished.wait() => {}
        _ = shutdown.wait() => {}
    }
    progress_state.finished.trigger();
    tokio::task::spawn_blocking(move || {
        for t in jig_threads {
            let _ = t.join();
        }
    })
    .await
    .ok();
    engine.shutdown().await;
    drop(virtual_line);
    drop(telemetry);
    let aggregate = aggregator.await.expect("telemetry aggregator");
    if let Some(p) = printer {
        p.abort();
    }
    let total = target.map_or(aggregate.started, |t| t as u64);
    let summary = Summary::from_aggregate(&aggregate, total);
    summary.write(&report_dir).map_err(|source| Error::Report {
        path: report_dir.clone(),
        source,
    })?;
    if let Some(emu) = &endpoint.emulator {
        emu.stop();
    }
    Ok(RunReport {
        summary,
        report_dir,
    })
}
