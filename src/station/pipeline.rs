//! What `run` and `loadtest` share: the endpoint, the ledger, telemetry with its progress
//! printer, the key pool and the provisioning engine, started together and torn down in
//! order, ending in the run's summary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::endpoint::Endpoint;
use super::{RunReport, timestamp};
use crate::config::Config;
use crate::error::Error;
use crate::keys::KeyPool;
use crate::keys::pool::PoolConfig;
use crate::ledger::Ledger;
use crate::provision::rate::Limits;
use crate::provision::tls::read_roots;
use crate::provision::{EngineConfig, Provisioner};
use crate::shutdown::Shutdown;
use crate::telemetry::summary::{LineInfo, Summary};
use crate::telemetry::{self, Aggregate, Telemetry, progress};

/// The running stages.
pub struct Pipeline {
    pub endpoint: Endpoint,
    pub ledger: Ledger,
    pub telemetry: Telemetry,
    pub engine: Provisioner,
    pub keys: Arc<KeyPool>,
    pub report_dir: PathBuf,
    aggregator: JoinHandle<Aggregate>,
    printer: Option<JoinHandle<()>>,
}

/// How to start a pipeline.
pub struct PipelineOptions<'a> {
    pub report_dir: Option<PathBuf>,
    pub ledger: &'a Path,
    pub sessions: usize,
    /// Devices the run sets out to do (for the progress line); 0 if open-ended.
    pub target: u64,
    pub progress: bool,
    /// Whether devices take keys from the station's pool (else no key workers run).
    pub key_pool: bool,
}

impl Pipeline {
    pub async fn start(
        cfg: &Config,
        opts: PipelineOptions<'_>,
        shutdown: &Shutdown,
    ) -> crate::Result<Pipeline> {
        let report_dir = opts
            .report_dir
            .unwrap_or_else(|| cfg.station.report_dir.join(timestamp()));
        std::fs::create_dir_all(&report_dir).map_err(|source| Error::Report {
            path: report_dir.clone(),
            source,
        })?;
        if cfg.keys.source == crate::config::KeySourceConfig::Aws {
            tracing::warn!(
                "keys.source = \"aws\": AWS makes each private key and sends it over the network; \
                 prefer \"pool\" or \"device\" when the boards allow it"
            );
        }
        let endpoint = Endpoint::resolve(cfg, shutdown).await?;
        let ledger = Ledger::open(opts.ledger, &cfg.station.id)?;
        let (telemetry, snapshots, aggregator) = telemetry::start();
        let printer = opts.progress.then(|| {
            tokio::spawn(progress::run(
                snapshots,
                opts.target,
                Duration::from_secs(1),
            ))
        });
        let keys = Arc::new(KeyPool::start(&PoolConfig {
            algorithm: cfg.keys.algorithm,
            workers: if opts.key_pool { cfg.keys.workers } else { 0 },
            stock: cfg.keys.stock,
            common_name: format!("{} device", cfg.station.id),
        }));
        let engine = Provisioner::start(
            EngineConfig {
                host: endpoint.host.clone(),
                port: endpoint.port,
                tls: endpoint.tls.clone(),
                station_id: cfg.station.id.clone(),
                sessions: opts.sessions,
                template: cfg.provision.template_name.clone(),
                format: cfg.provision.format(),
                request_timeout: Duration::from_secs(cfg.provision.request_timeout_s),
                max_attempts: cfg.provision.max_attempts,
                parameters: cfg.parameters.clone(),
                limits: Arc::new(Limits::new(
                    cfg.provision.create_certificate_tps,
                    cfg.provision.create_keys_tps,
                    cfg.provision.register_thing_tps,
                    cfg.provision.connects_per_s,
                )),
                device_deadline: Duration::from_secs(cfg.provision.device_deadline_s),
                mqtt_version: cfg.provision.mqtt_version,
                post_provision_check: cfg.provision.post_provision_check,
                roots: read_roots(&endpoint.claim.root_ca)?,
                aws_keys: cfg.keys.source == crate::config::KeySourceConfig::Aws,
            },
            keys.clone(),
            ledger.clone(),
            telemetry.clone(),
            shutdown.clone(),
        );
        Ok(Pipeline {
            endpoint,
            ledger,
            telemetry,
            engine,
            keys,
            report_dir,
            aggregator,
            printer,
        })
    }

    /// Stops the engine, closes telemetry, writes `summary.json` and stops the embedded
    /// emulator. `total` is the number of devices the run set out to do (`None`: those
    /// started).
    pub async fn finish(
        self,
        total: Option<u64>,
        line: Option<LineInfo>,
    ) -> crate::Result<RunReport> {
        self.engine.shutdown().await;
        drop(self.telemetry);
        let aggregate = self.aggregator.await.expect("telemetry aggregator");
        if let Some(p) = self.printer {
            p.abort();
        }
        let summary = Summary::from_aggregate(&aggregate, total.unwrap_or(aggregate.started), line);
        summary
            .write(&self.report_dir)
            .map_err(|source| Error::Report {
                path: self.report_dir.clone(),
                source,
            })?;
        if let Some(emu) = &self.endpoint.emulator {
            emu.stop();
        }
        Ok(RunReport {
            summary,
            report_dir: self.report_dir,
        })
    }
}
