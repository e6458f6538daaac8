//! What `run` and `loadtest` share: the endpoint, the ledger, telemetry with its progress
//! printer, the key pool and the provisioning engine, started together and torn down in
//! order, ending in the run's summary and how the run stopped.
//!
//! Start-up checks come first (the line's ledger and its lock, the shared quota's connection
//! when `provision.shared_quota` is on, then the endpoint and TLS files); the report folder is
//! created only when they passed, under a name no other run uses, and a probe file checks at
//! once that it can be written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::endpoint::Endpoint;
use super::{RunReport, Stopped, timestamp};
use crate::config::Config;
use crate::fleet::ApiKind;
use crate::halt::Halt;
use crate::keys::KeyPool;
use crate::keys::pool::PoolConfig;
use crate::ledger::{Ledger, LedgerLocation};
use crate::provision::rate::Limits;
use crate::provision::shared_quota::SharedQuota;
use crate::provision::tls::read_roots;
use crate::provision::{EngineConfig, Provisioner};
use crate::telemetry::http::{BoundMetrics, MetricsServer};
use crate::telemetry::summary::{LineInfo, Summary};
use crate::telemetry::{self, Aggregate, Telemetry, progress};

/// The running stages.
pub struct Pipeline {
    pub endpoint: Endpoint,
    pub ledger: Ledger,
    pub telemetry: Telemetry,
    pub engine: Provisioner,
    pub report_dir: PathBuf,
    pub halt: Halt,
    /// The telemetry snapshots, for the operator's surface.
    pub snapshots: tokio::sync::watch::Receiver<telemetry::Snapshot>,
    aggregator: JoinHandle<Aggregate>,
    printer: Option<JoinHandle<()>>,
    /// `/metrics`, served until the run's report is written.
    metrics: Option<MetricsServer>,
    /// `station.id`: whose unfinished devices the report counts as this station's.
    station: String,
}

/// The engine's rate limiters: open (the load-test modes that measure quotas), the account
/// quota all stations share (`provision.shared_quota`: its own connection to the ledger's
/// database, opened now), or the station's own.
async fn line_limits(cfg: &Config, open_loop: bool) -> crate::Result<Limits> {
    let p = &cfg.provision;
    if !p.shared_quota {
        return Ok(if open_loop {
            Limits::open_loop()
        } else {
            Limits::new(
                p.create_certificate_tps,
                p.create_keys_tps,
                p.register_thing_tps,
                p.connects_per_s,
            )
        });
    }
    if open_loop {
        return Err(crate::Error::SharedQuotaOpenLoop);
    }
    let LedgerLocation::Postgres { url, .. } = cfg.station.ledger_location() else {
        return Err(crate::config::ConfigError::Invalid {
            path: PathBuf::from("(configuration)"),
            key: "provision.shared_quota".into(),
            problem: "is true, but station.ledger is a file".into(),
            help: "point station.ledger at the factory's PostgreSQL, or set provision.shared_quota = false".into(),
        }
        .into());
    };
    let quotas: Vec<(&'static str, f64)> = [
        (ApiKind::CreateCertificateFromCsr, p.create_certificate_tps),
        (ApiKind::CreateKeysAndCertificate, p.create_keys_tps),
        (ApiKind::RegisterThing, p.register_thing_tps),
    ]
    .into_iter()
    .filter(|&(_, tps)| tps > 0.0)
    .map(|(api, tps)| (api.code(), tps))
    .collect();
    let station = cfg.station.id.clone();
    let quota = tokio::task::spawn_blocking(move || SharedQuota::start(&url, &station, &quotas))
        .await
        .map_err(|e| crate::ledger::LedgerError::Postgres {
            ledger: "the shared quota".into(),
            reason: e.to_string(),
        })??;
    Ok(Limits::shared(
        &quota,
        p.create_certificate_tps,
        p.create_keys_tps,
        p.register_thing_tps,
        p.connects_per_s,
    ))
}

/// Where the run's ledger is.
pub enum LedgerPlace<'a> {
    /// The configured ledger (`station.ledger`): a file or a PostgreSQL database.
    At(&'a LedgerLocation),
    /// `ledger.db` in the report folder (a load test's synthetic devices).
    InReportDir,
}

/// How to start a pipeline.
pub struct PipelineOptions<'a> {
    /// The report folder; default `<station.report_dir>/<prefix><UTC timestamp>`.
    pub report_dir: Option<PathBuf>,
    pub report_prefix: &'a str,
    pub ledger: LedgerPlace<'a>,
    pub sessions: usize,
    /// Devices the run sets out to do (for the progress line); 0 if open-ended.
    pub target: u64,
    pub progress: bool,
    /// Whether devices take keys from the station's pool (else no key workers run).
    pub key_pool: bool,
    /// Open loop (the load-test modes that measure quotas): open rate limiters, no
    /// adaptation, throttled requests not retried ([`Limits::open_loop`]).
    pub open_loop: bool,
}

impl Pipeline {
    pub async fn start(
        cfg: &Config,
        opts: PipelineOptions<'_>,
        halt: &Halt,
    ) -> crate::Result<Pipeline> {
        if cfg.keys.source == crate::keys::KeySource::Aws {
            tracing::warn!(
                "keys.source = \"aws\": AWS makes each private key and sends it over the network; \
                 prefer \"pool\" or \"device\" when the boards allow it"
            );
        }
        // The line's ledger first: a second station on it is refused before it starts
        // anything (an embedded emulator on the same state directory, a report folder).
        let line_ledger = match opts.ledger {
            LedgerPlace::At(at) => {
                Some(open_ledger(at, &cfg.station.id, cfg.station.lease()).await?)
            }
            LedgerPlace::InReportDir => None,
        };
        // The rate limiters next: with the shared quota, its database is reached now.
        let limits = Arc::new(line_limits(cfg, opts.open_loop).await?);
        // The metrics address next, before anything is provisioned: one in use or unusable
        // stops the run here. Port 0 picks a free one, so the address is printed.
        let metrics = match &cfg.telemetry.metrics_addr {
            Some(addr) => {
                let bound = BoundMetrics::bind(addr, cfg.telemetry.metrics_addr_key)?;
                eprintln!("metrics: http://{}/metrics", bound.local_addr());
                Some(bound)
            }
            None => None,
        };
        let endpoint = Endpoint::resolve(cfg).await?;
        let roots = read_roots(&endpoint.claim.root_ca)?;
        let report_dir = create_report_dir(cfg, opts.report_dir, opts.report_prefix)?;
        // The report is written at the end: find out now, before any board, that it can be.
        telemetry::report::probe_writable(&report_dir)?;
        let ledger = match line_ledger {
            Some(l) => l,
            None => match open_ledger(
                &LedgerLocation::File(report_dir.join("ledger.db")),
                &cfg.station.id,
                cfg.station.lease(),
            )
            .await
            {
                Ok(l) => l,
                Err(e) => {
                    // Leave nothing behind for a run that did not start.
                    let _ = std::fs::remove_dir(&report_dir);
                    return Err(e.into());
                }
            },
        };
        let (telemetry, snapshots, aggregator) = telemetry::start();
        let metrics = metrics.map(|m| m.serve(snapshots.clone(), &cfg.station.id));
        let printer = opts.progress.then(|| {
            tokio::spawn(progress::run(
                snapshots.clone(),
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
                format: cfg.provision.format,
                request_timeout: Duration::from_secs(cfg.provision.request_timeout_s),
                max_attempts: cfg.provision.max_attempts,
                parameters: cfg.parameters.clone(),
                limits,
                device_deadline: Duration::from_secs(cfg.provision.device_deadline_s),
                mqtt_version: cfg.provision.mqtt_version,
                post_provision_check: cfg.provision.post_provision_check,
                roots,
                aws_keys: cfg.keys.source == crate::keys::KeySource::Aws,
            },
            keys,
            ledger.clone(),
            telemetry.clone(),
            halt.clone(),
        );
        Ok(Pipeline {
            endpoint,
            ledger,
            telemetry,
            engine,
            report_dir,
            halt: halt.clone(),
            snapshots,
            aggregator,
            printer,
            metrics,
            station: cfg.station.id.clone(),
        })
    }

    /// Stops the engine, closes telemetry, writes `summary.json` and the report's other files
    /// (`.hgrm` per stage, `latency.svg`, `throughput.svg`, `failures.csv`), and stops the embedded
    /// emulator. `total` is the number of devices the run set out to do (`None`: those
    /// started). The report says how the run stopped.
    pub async fn finish(
        self,
        total: Option<u64>,
        line: Option<LineInfo>,
    ) -> crate::Result<RunReport> {
        self.engine.shutdown().await;
        let stopped = match self.halt.take() {
            Some(e) => Stopped::Halted(Box::new(e)),
            None if self.halt.shutdown().is_triggered() => Stopped::Interrupted,
            None => Stopped::Done,
        };
        // Devices that keep their state for the next run: this station's, and on a shared
        // ledger every other station's.
        let ledger = self.ledger.clone();
        let by_station = tokio::task::spawn_blocking(move || ledger.unfinished_by_station())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let (own, unfinished_elsewhere): (Vec<_>, Vec<_>) = by_station
            .into_iter()
            .partition(|(s, _)| *s == self.station);
        let unfinished = own.iter().map(|(_, n)| n).sum();
        drop(self.telemetry);
        let aggregate = self.aggregator.await.expect("telemetry aggregator");
        if let Some(p) = self.printer {
            p.abort();
        }
        let summary = Summary::from_aggregate(&aggregate, total.unwrap_or(aggregate.started), line);
        summary.write(&self.report_dir).map_err(|source| {
            telemetry::report::ReportError::Write {
                path: self.report_dir.join("summary.json"),
                source,
            }
        })?;
        // The .hgrm files, the plots and failures.csv (file work: off the reactor).
        let dir = self.report_dir.clone();
        tokio::task::spawn_blocking(move || telemetry::report::write_run_files(&dir, &aggregate))
            .await
            .expect("the report writer does not panic")?;
        drop(self.endpoint);
        drop(self.metrics);
        Ok(RunReport {
            summary,
            report_dir: self.report_dir,
            stopped,
            unfinished,
            unfinished_elsewhere,
        })
    }
}

/// Opens a ledger off the async reactor (opening, locking and migrating are blocking work).
async fn open_ledger(
    at: &LedgerLocation,
    station: &str,
    lease: std::time::Duration,
) -> Result<Ledger, crate::ledger::LedgerError> {
    let (at, station) = (at.clone(), station.to_string());
    tokio::task::spawn_blocking(move || Ledger::open_leasing(&at, &station, lease))
        .await
        .expect("the ledger opener does not panic")
}

/// Creates the report folder: the one given, or a new `<prefix><UTC timestamp>` folder under
/// `station.report_dir` that no other run uses (a suffix `-2`, `-3`… when two runs start in
/// the same second).
fn create_report_dir(cfg: &Config, given: Option<PathBuf>, prefix: &str) -> crate::Result<PathBuf> {
    let report = |path: &Path| {
        let path = path.to_path_buf();
        move |source| telemetry::report::ReportError::NotWritable { path, source }
    };
    if let Some(dir) = given {
        std::fs::create_dir_all(&dir).map_err(report(&dir))?;
        return Ok(dir);
    }
    let parent = &cfg.station.report_dir;
    std::fs::create_dir_all(parent).map_err(report(parent))?;
    let stamp = format!("{prefix}{}", timestamp());
    for n in 1.. {
        let dir = if n == 1 {
            parent.join(&stamp)
        } else {
            parent.join(format!("{stamp}-{n}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(report(&dir)(e).into()),
        }
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_started_in_the_same_second_get_their_own_report_folders() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::parse("", Path::new("t.toml")).unwrap();
        cfg.station.report_dir = dir.path().join("reports");
        let a = create_report_dir(&cfg, None, "").unwrap();
        let b = create_report_dir(&cfg, None, "").unwrap();
        let c = create_report_dir(&cfg, None, "loadtest-").unwrap();
        assert_ne!(a, b);
        assert!(a.is_dir() && b.is_dir() && c.is_dir());
        assert!(
            c.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("loadtest-")
        );
        // A folder given on the command line is used as it is, even if it exists.
        assert_eq!(create_report_dir(&cfg, Some(a.clone()), "").unwrap(), a);
    }
}
