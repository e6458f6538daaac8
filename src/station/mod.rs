//! `station run`: wires the stages into the pipeline.
//!
//! ```text
//! jigs (one OS thread each) ──DeviceJob──► provisioner (M sessions) ──Credentials──► jigs
//!        │                                      │                                      │
//!        └──────────── ledger (every state, durable before the next step) ─────────────┘
//!        └──────────── telemetry events ──► aggregator ──► progress printer, summary.json
//! ```
//!
//! - [`command`]: the operator's commands (pause, resume, stop feeding, retry failed
//!   boards, interrupt) on one channel, and the feed gate the stages obey.
//! - [`cleanup`]: `loadtest --cleanup-plan`: the script and JSON that remove what a load
//!   test created.
//! - [`pipeline`]: the stages `run` and `loadtest` share, started and torn down in order.
//! - [`endpoint`]: the embedded emulator or a real AWS endpoint.
//! - [`jig_cycle`]: the cycle each jig's thread runs: wait for a board, provision it, write and
//!   verify, release it.
//! - [`loadtest`]: `station loadtest`, the engine alone with synthetic devices.
//! - [`open_loop`]: its open-loop modes (`--rate`, `--ramp`, `--find-knee`): devices started
//!   on a schedule, in steps, and the search for the highest rate the endpoint holds.
//! - [`steps`]: those modes' per-step figures, the knee's limit, and their report files.
//! - [`virtual_line`]: virtual jigs on pseudo-terminals fed by a serial-number generator.

pub mod cleanup;
pub mod command;
pub mod endpoint;
pub mod jig_cycle;
pub mod loadtest;
pub mod open_loop;
pub mod pipeline;
pub mod steps;
pub mod virtual_line;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::error::Error;
use crate::halt::Halt;
use crate::shutdown::Shutdown;
use crate::telemetry::summary::{LineInfo, Summary};

use self::jig_cycle::{LineContext, LineProgress};
use self::pipeline::{LedgerPlace, Pipeline, PipelineOptions};

/// Options of one run (the CLI flags).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Number of boards (virtual line: boards fed; real line: stop after this many).
    pub boards: Option<usize>,
    /// Report directory; default `<station.report_dir>/<UTC timestamp>/`.
    pub report_dir: Option<PathBuf>,
    /// Virtual jigs (overrides `jigs.count`).
    pub jigs: Option<usize>,
    /// Line rate (overrides `jigs.baud`).
    pub baud: Option<u32>,
    /// The virtual line's driver (overrides `jigs.driver`).
    pub driver: Option<crate::jig::DriverKind>,
    /// Print progress lines to stderr.
    pub progress: bool,
    /// The operator's commands (the dashboard's keys); `None`: none come.
    pub control: Option<command::Control>,
}

/// How a run ended.
#[derive(Debug)]
pub enum Stopped {
    /// It did what it set out to do (or ran out of boards).
    Done,
    /// The operator stopped it (Ctrl-C, SIGTERM): devices in flight keep their state.
    Interrupted,
    /// The operator stopped feeding new boards (`q`); the devices in flight finished.
    Drained,
    /// A problem no retry can fix stopped the line (this error says which and what to do);
    /// devices in flight keep their state.
    Halted(Box<Error>),
}

/// What a run produced.
#[derive(Debug)]
pub struct RunReport {
    pub summary: Summary,
    pub report_dir: PathBuf,
    pub stopped: Stopped,
    /// This station's devices the ledger holds unfinished at the end (they resume when their
    /// boards are placed again).
    pub unfinished: usize,
    /// On a shared ledger, the other stations' unfinished devices: (station id, count),
    /// stations with none left out.
    pub unfinished_elsewhere: Vec<(String, usize)>,
}

impl RunReport {
    /// True when every board the run set out to do was provisioned and verified.
    pub fn all_provisioned(&self) -> bool {
        let d = &self.summary.devices;
        d.failed == 0 && d.provisioned == d.total
    }

    /// The process exit code: 0 when every board was provisioned (or, stopped with `q`, when
    /// none failed), 1 when some failed (or were not done), 2 when the line was stopped by an error, 130 when the operator
    /// stopped it (SIGINT/SIGTERM), as shells report a command ended by Ctrl-C.
    pub fn exit_code(&self) -> u8 {
        match &self.stopped {
            Stopped::Halted(_) => 2,
            Stopped::Interrupted => 130,
            Stopped::Done if self.all_provisioned() => 0,
            Stopped::Done => 1,
            Stopped::Drained if self.summary.devices.failed == 0 => 0,
            Stopped::Drained => 1,
        }
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

/// `station check`: connects with the claim certificate and subscribes to the topics the
/// configured key source and template need, reporting each step.
pub async fn check(cfg: &Config) -> crate::Result<Vec<crate::provision::check::Step>> {
    use crate::fleet::Api;
    use crate::keys::KeySource;
    let endpoint = endpoint::Endpoint::resolve(cfg).await?;
    let create = match cfg.keys.source {
        KeySource::Aws => Api::CreateKeysAndCertificate,
        KeySource::Pool | KeySource::Device => Api::CreateCertificateFromCsr,
    };
    let steps = crate::provision::check::run(&crate::provision::check::CheckConfig {
        host: endpoint.host.clone(),
        port: endpoint.port,
        client_id: format!("{}-check", cfg.station.id),
        tls: endpoint.tls.clone(),
        apis: vec![
            create,
            Api::RegisterThing {
                template: cfg.provision.template_name.clone(),
            },
        ],
        format: cfg.provision.format,
        mqtt_version: cfg.provision.mqtt_version,
        timeout: std::time::Duration::from_secs(cfg.provision.request_timeout_s),
    })
    .await;
    Ok(steps)
}

/// Provisions the boards of the configured line until `boards` are done or `shutdown`
/// (Ctrl-C) — or until a stage stops the line for a problem no retry can fix; the report says
/// which ([`RunReport::stopped`]).
pub async fn run(cfg: &Config, opts: &RunOptions, shutdown: Shutdown) -> crate::Result<RunReport> {
    let halt = Halt::new(shutdown.clone());
    let feed = match &opts.control {
        Some(c) => c.serve(shutdown.clone()),
        None => command::FeedGate::always(),
    };
    let mut cfg = cfg.clone();
    if let Some(j) = opts.jigs {
        cfg.jigs.count = j;
    }
    if let Some(b) = opts.baud {
        cfg.jigs.baud = b;
    }
    if let Some(d) = opts.driver {
        cfg.jigs.driver = d;
        cfg.check_key_source_and_drivers(std::path::Path::new("--driver"))?;
    }
    let cfg = &cfg;
    let requested = if cfg.jigs.is_virtual() {
        Some(opts.boards.unwrap_or(cfg.jigs.boards))
    } else {
        opts.boards
    };
    let ledger_at = cfg.station.ledger_location();
    let p = Pipeline::start(
        cfg,
        PipelineOptions {
            report_dir: opts.report_dir.clone(),
            report_prefix: "",
            ledger: LedgerPlace::At(&ledger_at),
            sessions: cfg.provision.sessions,
            target: requested.unwrap_or(0) as u64,
            progress: opts.progress,
            open_loop: false,
            key_pool: cfg.keys.source == crate::keys::KeySource::Pool,
        },
        &halt,
    )
    .await?;
    let root_ca_pem = std::fs::read(&p.endpoint.board_root_ca).map_err(|source| {
        crate::provision::tls::TlsSetupError::Read {
            what: "board root CA",
            path: p.endpoint.board_root_ca.clone(),
            source,
        }
    })?;
    let ledger = p.ledger.clone();
    let unfinished = tokio::task::spawn_blocking(move || ledger.unfinished_count())
        .await
        .expect("the ledger reader does not panic")?;
    if unfinished > 0 {
        tracing::info!(
            count = unfinished,
            "the ledger holds unfinished devices from an earlier run; they resume when their boards are placed"
        );
    }

    // The jigs: virtual ones on ptys, or the configured serial ports.
    let mut virtual_line = None;
    let mut target = requested;
    let ports: Vec<jig_cycle::JigPort> = if cfg.jigs.is_virtual() {
        // Off the reactor: it reads the ledger and opens pseudo-terminals.
        let (cfg, ledger, boards) = (cfg.clone(), p.ledger.clone(), requested.unwrap_or(0));
        let root_ca = root_ca_pem.clone();
        let (line, fed) = tokio::task::spawn_blocking(move || {
            virtual_line::VirtualLine::start(&cfg, boards, &ledger, &root_ca)
        })
        .await
        .expect("starting the virtual line does not panic")?;
        target = Some(fed);
        let ports = line.ports();
        virtual_line = Some(Arc::new(line));
        ports
    } else {
        cfg.jigs
            .ports
            .iter()
            .map(|p| jig_cycle::JigPort {
                name: p.name.clone(),
                path: p.path.clone(),
                settings: p.settings(&cfg.jigs),
                driver: p.driver,
                options: p.driver_options(),
            })
            .collect()
    };
    if ports.is_empty() {
        return Err(Error::NoJigs);
    }
    // The line's baud rate; 0 when the ports run at different rates (each jig's efficiency
    // uses its own).
    let first_baud = ports[0].settings.baud;
    let line_info = LineInfo {
        count: ports.len(),
        baud: if ports.iter().all(|p| p.settings.baud == first_baud) {
            first_baud
        } else {
            0
        },
    };
    let progress_state = Arc::new(LineProgress::new(target.map(|t| t as u64)));
    let retry = Arc::new(command::RetryBook::default());
    if let Some(c) = &opts.control {
        c.publish(command::Published {
            snapshots: p.snapshots.clone(),
            report_dir: p.report_dir.clone(),
            target: target.unwrap_or(0) as u64,
        });
    }
    // `r`: the failed boards go round again (back in the virtual line's queue, or re-armed
    // on their real jigs).
    let retrier = tokio::spawn({
        let (feed, retry, line) = (feed.clone(), retry.clone(), virtual_line.clone());
        let (progress, telemetry) = (progress_state.clone(), p.telemetry.clone());
        async move {
            loop {
                feed.retry_requested().await;
                let serials = retry.arm_failed();
                let again = match &line {
                    Some(line) => line.requeue(&serials),
                    None => serials.len(),
                };
                tracing::info!(boards = again, "failed boards go round again");
                for serial in serials {
                    telemetry
                        .emit(crate::telemetry::Event::Requeued { serial })
                        .await;
                }
                progress.add_target(again as u64);
            }
        }
    });
    let ctx = LineContext {
        ledger: p.ledger.clone(),
        telemetry: p.telemetry.clone(),
        jobs: p.engine.submitter(),
        root_ca_pem: Arc::new(root_ca_pem),
        progress: progress_state.clone(),
        halt: halt.clone(),
        release: virtual_line.as_ref().map(|l| l.release_hook()),
        key_source: cfg.keys.source,
        station_id: cfg.station.id.clone(),
        feed: feed.clone(),
        retry,
        skip_held: cfg.jigs.skip_held,
    };
    let jig_threads: Vec<_> = ports
        .into_iter()
        .map(|port| {
            let ctx = ctx.clone();
            std::thread::Builder::new()
                .name(format!("jig-{}", port.name))
                .spawn(move || jig_cycle::run_jig(&port, &ctx))
                .expect("spawn jig thread")
        })
        .collect();
    drop(ctx);

    // Wait for the line to finish, the operator to stop it, or every jig's cycle to end
    // (the operator stopped the feed and the boards in flight are done).
    let mut joined = tokio::task::spawn_blocking(move || {
        for t in jig_threads {
            let _ = t.join();
        }
    });
    let mut all_joined = false;
    tokio::select! {
        _ = progress_state.finished.wait() => {}
        _ = shutdown.wait() => {}
        _ = &mut joined => all_joined = true,
    }
    progress_state.finished.trigger();
    if !all_joined {
        joined.await.ok();
    }
    retrier.abort();
    let _ = retrier.await;
    drop(virtual_line);
    let mut report = p.finish(target.map(|t| t as u64), Some(line_info)).await?;
    if matches!(report.stopped, Stopped::Done) && feed.state() == command::FeedState::Stopping {
        report.stopped = Stopped::Drained;
    }
    Ok(report)
}
