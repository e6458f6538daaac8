//! The `station` command line: parse, load the configuration, call the library.

// The doc comments of the argument types are clap's `--help` text, written for operators
// (`<UTC timestamp>`, `[parameters]`), not rustdoc markup.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_station::config::{Config, ConfigError, Overrides};
use fleet_station::dashboard::{self, log::LogSink};
use fleet_station::emulator::Emulator;
use fleet_station::fleet::MqttVersion;
use fleet_station::jig::SimBoardOptions;
use fleet_station::ledger::LedgerView;
use fleet_station::ledger::cleanup;
use fleet_station::ledger::export::{self, ExportError};
use fleet_station::shutdown::{self, Shutdown};
use fleet_station::station::command;
use fleet_station::station::loadtest::{self, LoadtestOptions};
use fleet_station::station::open_loop;
use fleet_station::station::{self, RunOptions};

#[derive(Parser)]
#[command(
    name = "station",
    version,
    about = "Provision IoT boards on a factory line with AWS IoT fleet provisioning by claim",
    long_about = "Provision IoT boards on a factory line with AWS IoT fleet provisioning by claim.\n\n\
        With the checked-in station.toml, `station run` starts an embedded emulator of AWS IoT \
        Core's fleet-provisioning API and provisions virtual boards on pseudo-terminals, end to end."
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log format: text, or json (one object a line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Provision the boards on the line (the configured jigs) and write a report.
    ///
    /// Exits 0 only if every board was provisioned and verified.
    Run {
        /// Station configuration file.
        #[arg(long, default_value = "station.toml", value_name = "FILE")]
        config: PathBuf,
        /// Number of boards: how many virtual boards to feed the line (overrides
        /// jigs.boards), or for real jigs, stop after this many.
        #[arg(long, value_name = "N")]
        boards: Option<usize>,
        /// Where to write summary.json (default: <station.report_dir>/<UTC timestamp>/).
        #[arg(long, value_name = "DIR")]
        report_dir: Option<PathBuf>,
        /// Number of virtual jigs (overrides jigs.count).
        #[arg(long, value_name = "J", value_parser = clap::value_parser!(u16).range(1..=512))]
        jigs: Option<u16>,
        /// Line rate in baud (overrides jigs.baud; virtual boards emulate it, 0 = memory speed).
        #[arg(long, value_name = "B")]
        baud: Option<u32>,
        /// The virtual line's jig driver (overrides jigs.driver): fleet-jig, nrf91-at or
        /// zephyr-cred.
        #[arg(long, value_name = "DRIVER", value_parser = parse_driver)]
        driver: Option<fleet_station::jig::DriverKind>,
        /// No dashboard: a progress line a second on stderr (also when stdout is not a
        /// terminal).
        #[arg(long)]
        headless: bool,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics while the run lasts
        /// (overrides telemetry.metrics_addr; port 0 picks a free port, printed at start).
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Load-test the provisioning engine: synthetic devices, no jigs. Writes summary.json
    /// like `run`.
    ///
    /// --devices N: N devices as fast as the endpoint's quotas allow. --rate, --ramp and
    /// --find-knee: open loop (devices started on a schedule, latency from the scheduled
    /// start, throttles counted and not retried), with steps.csv, loadtest.json and knee.svg.
    #[command(group(
        clap::ArgGroup::new("mode")
            .required(true)
            .multiple(true)
            .args(["devices", "rate", "ramp", "find_knee", "cleanup_plan"])
    ))]
    Loadtest {
        /// Station configuration file (endpoint, template, parameters, keys).
        #[arg(long, default_value = "station.toml", value_name = "FILE")]
        config: PathBuf,
        /// Number of synthetic devices (the fixed-count mode).
        #[arg(long, value_name = "N", conflicts_with_all = ["rate", "ramp", "find_knee"])]
        devices: Option<usize>,
        #[command(flatten)]
        open: Box<OpenLoopArgs>,
        /// Write cleanup.sh and cleanup.json into DIR, the report folder of a past load test:
        /// the AWS CLI commands that remove every certificate and thing it created. Provisions
        /// nothing.
        #[arg(
            long,
            value_name = "DIR",
            conflicts_with_all = ["devices", "sessions", "report_dir", "metrics_addr", "keep_emulator_state", "rate", "ramp", "find_knee"]
        )]
        cleanup_plan: Option<PathBuf>,
        /// Keep the embedded emulator's state (CA, claim identity, registry) in
        /// emulator.state_dir after the load test; by default a load test's embedded emulator
        /// works in a temporary directory that goes with the run.
        #[arg(long)]
        keep_emulator_state: bool,
        /// MQTT sessions provisioning in parallel (default: provision.sessions).
        #[arg(long, value_name = "M")]
        sessions: Option<usize>,
        /// Where to write summary.json (default: <station.report_dir>/loadtest-<UTC timestamp>/).
        #[arg(long, value_name = "DIR")]
        report_dir: Option<PathBuf>,
        /// No dashboard: a progress line a second on stderr (also when stdout is not a
        /// terminal).
        #[arg(long)]
        headless: bool,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics while the run lasts
        /// (overrides telemetry.metrics_addr; port 0 picks a free port, printed at start).
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Check the endpoint without provisioning anything: TLS handshake with the claim
    /// certificate, CONNACK, and a SUBACK for each topic the station needs.
    ///
    /// The first thing to run on line day. Exits 0 only if every step passed.
    Check {
        /// Station configuration file.
        #[arg(long, default_value = "station.toml", value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// The ledger: export the audit trail, list orphaned certificates. Both only read the
    /// ledger, so they run safely while a station is working on it.
    Ledger {
        /// Station configuration file (for station.ledger).
        #[arg(long, default_value = "station.toml", value_name = "FILE")]
        config: PathBuf,
        #[command(subcommand)]
        what: LedgerCommand,
    },
    /// Print a past run's summary as a table (totals, throughput, each stage's latencies,
    /// failures by reason, jigs), or two runs side by side with the change of every figure.
    ///
    /// DIR is a run's report folder (the one `run` or `loadtest` printed, holding
    /// summary.json).
    Report {
        /// The run's report folder.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Another run's report folder: prints DIR (A) and OTHER (B) side by side with the
        /// change from A to B, absolute and in %.
        #[arg(long, value_name = "OTHER")]
        compare: Option<PathBuf>,
    },
    /// Run the fleet-provisioning emulator alone (MQTT over mutual TLS) until Ctrl-C.
    ///
    /// Prints `listening on HOST:PORT` once it accepts connections, then the paths of
    /// ca.pem, claim-cert.pem and claim-key.pem in its state directory.
    Emulate {
        /// Configuration file with an [emulator] section.
        #[arg(long, default_value = "station.toml", value_name = "FILE")]
        config: PathBuf,
    },
    /// Run one virtual board on a pseudo-terminal, to try the jig protocol by hand.
    ///
    /// Prints the pty path; open it like a serial port (e.g. with `station run` and
    /// jigs.mode = "serial").
    SimBoard {
        /// Serial-number prefix; boards are <prefix><n, 6 digits>.
        #[arg(long, default_value = "SIM-")]
        serial_prefix: String,
        /// Boards served one after the other (the next is placed after RESET of a
        /// provisioned one); 0 = endless.
        #[arg(long, default_value_t = 1)]
        boards: u64,
        /// Emulated line rate (0 = memory speed).
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
        /// Directory for the boards' flash files.
        #[arg(long, default_value = "state/boards", value_name = "DIR")]
        flash_dir: PathBuf,
    },
    /// List the serial ports of this machine.
    Ports,
}

/// The open-loop load-test flags.
#[derive(clap::Args, Default)]
struct OpenLoopArgs {
    /// Open loop at R devices/s for --duration.
    #[arg(long, value_name = "R", requires = "duration", conflicts_with_all = ["ramp", "find_knee"])]
    rate: Option<f64>,
    /// How long --rate runs (15s, 2m, 500ms).
    #[arg(long, value_name = "D", requires = "rate")]
    duration: Option<String>,
    /// Steps of increasing rate, FROM..TO devices/s (with --find-knee: its first and
    /// highest rate; default 5..2000).
    #[arg(long, value_name = "FROM..TO")]
    ramp: Option<String>,
    /// Rate added per step (--ramp default: FROM; --find-knee default: the rate doubles).
    #[arg(long, value_name = "S", conflicts_with_all = ["devices", "rate"])]
    step: Option<f64>,
    /// How long each step holds (default 15s).
    #[arg(long, value_name = "D", conflicts_with_all = ["devices", "rate"])]
    hold: Option<String>,
    /// Step up until more than 1 % of an API's requests are throttled or end-to-end p99
    /// passes --p99-ms, then bisect: the highest rate held and which limit bit.
    #[arg(long)]
    find_knee: bool,
    /// --find-knee's end-to-end p99 threshold in ms (default 2000).
    #[arg(long, value_name = "MS", requires = "find_knee")]
    p99_ms: Option<u64>,
    /// --find-knee's bisection rounds (default 4).
    #[arg(long, value_name = "N", requires = "find_knee")]
    rounds: Option<u32>,
    /// The start of each step not measured for throttles and API latency, so a quota's
    /// burst is spent before the measuring starts (default: a fifth of the hold).
    #[arg(long, value_name = "D", conflicts_with = "devices")]
    warmup: Option<String>,
    /// Cap on devices in flight (default 10000); devices started late because of it are
    /// counted per step.
    #[arg(long, value_name = "N", conflicts_with = "devices")]
    max_in_flight: Option<usize>,
}

impl OpenLoopArgs {
    /// The open-loop plan, or `None` for the fixed-count mode.
    fn plan(&self) -> Result<Option<open_loop::OpenLoop>, open_loop::OpenLoopError> {
        use open_loop::{OpenLoop, Plan, check_rate, parse_duration, parse_ramp};
        let hold = match &self.hold {
            Some(h) => parse_duration("--hold", h)?,
            None => open_loop::DEFAULT_HOLD,
        };
        let step = self.step.map(|s| check_rate("--step", s)).transpose()?;
        let plan = if let Some(rate) = self.rate {
            let duration = parse_duration("--duration", self.duration.as_deref().unwrap_or(""))?;
            Plan::Rate {
                rate: check_rate("--rate", rate)?,
                duration,
            }
        } else if self.find_knee {
            let (from, to) = match &self.ramp {
                Some(r) => parse_ramp(r)?,
                None => open_loop::DEFAULT_KNEE_RANGE,
            };
            Plan::Knee {
                from,
                to,
                step,
                hold,
                rounds: self.rounds.unwrap_or(open_loop::DEFAULT_ROUNDS),
            }
        } else if let Some(r) = &self.ramp {
            let (from, to) = parse_ramp(r)?;
            Plan::Ramp {
                from,
                to,
                step: step.unwrap_or(from),
                hold,
            }
        } else {
            return Ok(None);
        };
        Ok(Some(OpenLoop {
            plan,
            p99_threshold: self
                .p99_ms
                .map_or(open_loop::DEFAULT_P99, std::time::Duration::from_millis),
            warmup: self
                .warmup
                .as_deref()
                .map(|w| parse_duration("--warmup", w))
                .transpose()?,
            max_in_flight: self
                .max_in_flight
                .unwrap_or(open_loop::DEFAULT_MAX_IN_FLIGHT)
                .max(1),
        }))
    }
}

/// Endpoint overrides, named like the AWS IoT SDK samples' arguments.
#[derive(clap::Args, Default)]
struct EndpointArgs {
    /// AWS IoT data endpoint (`xxxx-ats.iot.REGION.amazonaws.com`), or `embedded`.
    #[arg(long, value_name = "HOST")]
    endpoint: Option<String>,
    /// MQTT port: 8883, or 443 (ALPN x-amzn-mqtt-ca).
    #[arg(long)]
    port: Option<u16>,
    /// Claim certificate (PEM).
    #[arg(long = "cert", value_name = "FILE")]
    claim_cert: Option<PathBuf>,
    /// Claim private key (PEM).
    #[arg(long = "key", value_name = "FILE")]
    claim_key: Option<PathBuf>,
    /// CA of the endpoint's server certificate (Amazon Root CA 1).
    #[arg(long = "ca-file", value_name = "FILE")]
    root_ca: Option<PathBuf>,
    /// Provisioning template name.
    #[arg(long)]
    template_name: Option<String>,
    /// Template parameters as a JSON object of strings, merged over [parameters]; values may
    /// use {serial}, {mac}, {hw_rev}, {station_id}, {jig}.
    #[arg(long, value_name = "JSON")]
    template_parameters: Option<String>,
    /// MQTT protocol version: 3 (3.1.1) or 5.
    #[arg(long, value_name = "3|5")]
    mqtt_version: Option<MqttVersion>,
}

impl EndpointArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            endpoint: self.endpoint.clone(),
            port: self.port,
            claim_cert: self.claim_cert.clone(),
            claim_key: self.claim_key.clone(),
            root_ca: self.root_ca.clone(),
            template_name: self.template_name.clone(),
            template_parameters: self.template_parameters.clone(),
            mqtt_version: self.mqtt_version,
            metrics_addr: None,
        }
    }
}

/// Loads the configuration and applies the command-line overrides.
fn load(config: &std::path::Path, args: &EndpointArgs) -> Result<Config, ConfigError> {
    load_with(config, args, None)
}

/// [`load`], with `--metrics-addr` (of `run` and `loadtest`).
fn load_with(
    config: &std::path::Path,
    args: &EndpointArgs,
    metrics_addr: Option<String>,
) -> Result<Config, ConfigError> {
    let overrides = Overrides {
        metrics_addr,
        ..args.overrides()
    };
    Config::load(config)?.with_overrides(&overrides, config)
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Every device: serial, state, thing, certificate id, key source, jig, station, times.
    Export {
        /// `csv` or `json`.
        #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
        format: String,
        /// Output file (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Only this station's devices (a shared PostgreSQL ledger holds every station's;
        /// the `station` column says whose each is).
        #[arg(long, value_name = "ID")]
        station: Option<String>,
    },
    /// Certificates that will never reach a board, as a bash script of the AWS CLI commands
    /// that remove them (detach from things, deactivate, delete). Read it, then run it with
    /// credentials for the account: `station ledger orphans > cleanup.sh && bash cleanup.sh`.
    Orphans {
        /// No longer needed (the script reads each certificate's ARN from AWS); ignored.
        #[arg(long, value_name = "ID", hide = true)]
        account: Option<String>,
        /// Only this station's orphans (each is listed with the station whose certificate it
        /// was).
        #[arg(long, value_name = "ID")]
        station: Option<String>,
    },
}

/// Logs go to `sink` (stderr, until a dashboard moves them to a file), as text or JSON.
fn init_logging(verbose: u8, format: LogFormat, sink: LogSink, ansi: bool) {
    let default = match verbose {
        0 => "warn,fleet_station=info,rumqttc=error",
        1 => "info,fleet_station=debug",
        _ => "debug,fleet_station=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink)
        .with_target(false);
    match format {
        LogFormat::Text => fmt.with_ansi(ansi).init(),
        LogFormat::Json => fmt.json().with_ansi(false).init(),
    }
}

/// The dashboard, when one is shown: the operator's end of the command channel and the
/// thread drawing it.
struct Surface {
    dashboard: Option<dashboard::Dashboard>,
    control: Option<command::Control>,
    log: LogSink,
}

impl Surface {
    /// Starts the dashboard for `mode` unless `headless` or stdout is not a terminal.
    fn start(headless: bool, mode: &'static str, log: &LogSink) -> Surface {
        let mut surface = Surface {
            dashboard: None,
            control: None,
            log: log.clone(),
        };
        if headless || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            return surface;
        }
        let (operator, control) = command::channel();
        match dashboard::spawn(operator, mode, log.clone()) {
            Ok(d) => {
                surface.dashboard = Some(d);
                surface.control = Some(control);
            }
            Err(e) => eprintln!("no dashboard ({e}); progress lines instead"),
        }
        surface
    }

    /// Headless: the progress line instead.
    fn progress(&self) -> bool {
        self.control.is_none()
    }

    /// Gives the terminal back (the run has ended) and says where the log went.
    fn finish(self) {
        if let Some(d) = self.dashboard
            && let Err(e) = d.finish()
        {
            eprintln!("dashboard: {e}");
        }
        if let Some(path) = self.log.file() {
            eprintln!("log: {}", path.display());
        }
    }
}

fn report(err: impl miette::Diagnostic + Send + Sync + 'static) -> ExitCode {
    eprintln!("{:?}", miette::Report::new(err));
    ExitCode::from(2)
}

/// The ledger commands read a [`LedgerView`]: no lock, no write, beside a running station.
fn ledger_command(cfg: &Config, what: LedgerCommand) -> Result<(), ExportError> {
    let ledger = LedgerView::open_at(&cfg.station.ledger_location())?;
    match what {
        LedgerCommand::Export {
            format,
            out,
            station,
        } => {
            let filter = export::Filter {
                station: station.as_deref(),
            };
            let sink: Box<dyn std::io::Write> = match &out {
                Some(path) => Box::new(std::fs::File::create(path).map_err(ExportError::Io)?),
                None => Box::new(std::io::stdout().lock()),
            };
            if format == "json" {
                export::write_json(&ledger, filter, sink)
            } else {
                export::write_csv(&ledger, filter, sink)
            }
        }
        LedgerCommand::Orphans { account, station } => {
            if account.is_some() {
                eprintln!(
                    "note: --account is no longer needed: the script reads each certificate's ARN from AWS"
                );
            }
            let filter = export::Filter {
                station: station.as_deref(),
            };
            let mut orphans = ledger.orphans()?;
            orphans.retain(|o| filter.keeps(&o.station));
            if !matches!(
                cfg.station.ledger_location(),
                fleet_station::ledger::LedgerLocation::Postgres { .. }
            ) {
                // A ledger file has one station: its script reads as it always has.
                for o in &mut orphans {
                    o.station.clear();
                }
            }
            let script = cleanup::cleanup_script(&orphans);
            std::io::Write::write_all(&mut std::io::stdout().lock(), script.as_bytes())
                .map_err(ExportError::Io)
        }
    }
}

/// Prints the summary and how the run stopped; the exit code says it too (README: 0 all
/// provisioned, 1 some failed, 2 an error stopped the line, 130 stopped by the operator).
fn print_report(r: station::RunReport, line: bool) -> ExitCode {
    let what_resumes = if line {
        "they keep their state and resume where they stopped on the next run"
    } else {
        "synthetic devices do not resume: their certificates are listed in the load test's ledger.db for cleanup"
    };
    println!("{}", r.summary.render());
    println!("report: {}", r.report_dir.join("summary.json").display());
    let code = r.exit_code();
    let interrupted = r.summary.devices.interrupted;
    match r.stopped {
        station::Stopped::Halted(e) => {
            eprintln!("{:?}", miette::Report::new(*e));
            if interrupted > 0 {
                eprintln!("{interrupted} devices in flight were stopped; {what_resumes}");
            }
        }
        station::Stopped::Interrupted => {
            eprintln!(
                "stopped by the operator: {interrupted} devices in flight were stopped; {what_resumes}"
            );
        }
        station::Stopped::Drained => {
            eprintln!(
                "stopped feeding by the operator (q): the devices in flight finished; boards not fed were not started"
            );
        }
        station::Stopped::Done => {}
    }
    if line && r.unfinished > 0 {
        eprintln!(
            "the ledger holds {} unfinished device{} of this station: each resumes where it stopped when its board is placed again",
            r.unfinished,
            if r.unfinished == 1 { "" } else { "s" }
        );
    }
    if line && !r.unfinished_elsewhere.is_empty() {
        let each: Vec<String> = r
            .unfinished_elsewhere
            .iter()
            .map(|(station, n)| format!("station {station}: {n}"))
            .collect();
        eprintln!(
            "unfinished devices of the other stations on the shared ledger: {} (`station ledger export --station ID` lists them)",
            each.join(", ")
        );
    }
    ExitCode::from(code)
}

/// An open-loop load test's report: the summary, the steps, the knee. Devices failed by
/// throttles are what it measures, so it exits 0 when it ran to its end (130 when stopped,
/// 2 when an error stopped it).
fn print_open_report(
    r: station::RunReport,
    steps: &[fleet_station::station::steps::StepRecord],
    knee: Option<&fleet_station::station::steps::Knee>,
) -> ExitCode {
    let dir = r.report_dir.clone();
    let done = matches!(r.stopped, station::Stopped::Done);
    let code = print_report(r, false);
    print!("{}", fleet_station::station::steps::render(steps, knee));
    println!("steps: {}", dir.join("steps.csv").display());
    if done { ExitCode::SUCCESS } else { code }
}

/// `--driver NAME`: one of the jig drivers.
fn parse_driver(name: &str) -> Result<fleet_station::jig::DriverKind, String> {
    fleet_station::jig::DriverKind::parse(name).ok_or_else(|| {
        let names: Vec<&str> = fleet_station::jig::DriverKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        format!(
            "unknown jig driver {name:?}; use one of: {}",
            names.join(", ")
        )
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// mimalloc: see `fleet_station::allocator` for why and what it measured.
#[global_allocator]
static ALLOCATOR: fleet_station::allocator::Allocator = fleet_station::allocator::Allocator;

fn main() -> ExitCode {
    fleet_station::allocator::no_huge_pages();
    let cli = Cli::parse();
    let log = LogSink::default();
    // A dashboard may move the log to a file: no colour codes there.
    let dashboard_possible = matches!(
        cli.command,
        Command::Run {
            headless: false,
            ..
        } | Command::Loadtest {
            headless: false,
            cleanup_plan: None,
            ..
        }
    ) && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !dashboard_possible;
    init_logging(cli.verbose, cli.log_format, log.clone(), ansi);
    match cli.command {
        Command::Run {
            config,
            boards,
            report_dir,
            jigs,
            baud,
            driver,
            headless,
            metrics_addr,
            endpoint,
        } => {
            let cfg = match load_with(&config, &endpoint, metrics_addr) {
                Ok(c) => c,
                Err(e) => return report(e),
            };
            let surface = Surface::start(headless, "run", &log);
            let opts = RunOptions {
                boards,
                report_dir,
                jigs: jigs.map(usize::from),
                baud,
                driver,
                progress: surface.progress(),
                control: surface.control.clone(),
            };
            let result = runtime().block_on(async {
                let stop = Shutdown::new();
                shutdown::trigger_on_signals(&stop);
                station::run(&cfg, &opts, stop).await
            });
            surface.finish();
            match result {
                Ok(r) => print_report(r, true),
                Err(e) => report(e),
            }
        }
        Command::Loadtest {
            cleanup_plan: Some(dir),
            config,
            ..
        } => match station::cleanup::write_cleanup_plan(&dir, &config) {
            Ok(f) => {
                println!(
                    "cleanup plan: {} certificate(s), {} thing(s) to delete, {} thing(s) kept (see cleanup.json)",
                    f.certificates, f.things, f.kept
                );
                println!("script: {}", f.script.display());
                println!("plan: {}", f.json.display());
                ExitCode::SUCCESS
            }
            Err(e) => report(e),
        },
        Command::Loadtest {
            config,
            devices,
            open,
            sessions,
            report_dir,
            headless,
            metrics_addr,
            endpoint,
            keep_emulator_state,
            cleanup_plan: None,
        } => {
            let cfg = match load_with(&config, &endpoint, metrics_addr) {
                Ok(c) => c,
                Err(e) => return report(e),
            };
            let plan = match open.plan() {
                Ok(p) => p,
                Err(e) => return report(e),
            };
            let surface = Surface::start(headless, "loadtest", &log);
            let opts = LoadtestOptions {
                devices: devices.unwrap_or(0),
                sessions,
                report_dir,
                keep_emulator_state,
                progress: surface.progress(),
                control: surface.control.clone(),
            };
            let result = runtime().block_on(async {
                let stop = Shutdown::new();
                shutdown::trigger_on_signals(&stop);
                match &plan {
                    None => loadtest::loadtest(&cfg, &opts, stop)
                        .await
                        .map(|r| (r, None)),
                    Some(ol) => open_loop::loadtest_open(&cfg, &opts, ol, stop)
                        .await
                        .map(|r| (r.run, Some((r.steps, r.knee)))),
                }
            });
            surface.finish();
            match result {
                Ok((r, None)) => print_report(r, false),
                Ok((r, Some((steps, knee)))) => print_open_report(r, &steps, knee.as_ref()),
                Err(e) => report(e),
            }
        }
        Command::Check { config, endpoint } => {
            let cfg = match load(&config, &endpoint) {
                Ok(c) => c,
                Err(e) => return report(e),
            };
            runtime().block_on(async {
                match station::check(&cfg).await {
                    Ok(steps) => {
                        for s in &steps {
                            println!("{s}");
                        }
                        if steps.iter().all(|s| s.ok()) {
                            println!(
                                "the endpoint is ready for provisioning, as far as a check that creates nothing can tell (see \"not checked\")"
                            );
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::FAILURE
                        }
                    }
                    Err(e) => report(e),
                }
            })
        }
        Command::Ledger { config, what } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return report(e),
            };
            match ledger_command(&cfg, what) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => report(e),
            }
        }
        Command::Report { dir, compare } => {
            match fleet_station::telemetry::report::command(&dir, compare.as_deref()) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => report(e),
            }
        }
        Command::Emulate { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return report(e),
            };
            runtime().block_on(async {
                let stop = Shutdown::new();
                shutdown::trigger_on_signals(&stop);
                let emu = match Emulator::start(&cfg.emulator, stop.clone()).await {
                    Ok(e) => e,
                    Err(e) => return report(e),
                };
                let p = emu.paths();
                println!("listening on {}", emu.local_addr());
                println!("ca: {}", p.ca_cert.display());
                println!("claim certificate: {}", p.claim_cert.display());
                println!("claim key: {}", p.claim_key.display());
                stop.wait().await;
                emu.stop();
                eprintln!("emulator stopped; registry saved");
                ExitCode::SUCCESS
            })
        }
        Command::SimBoard {
            serial_prefix,
            boards,
            baud,
            flash_dir,
        } => match fleet_station::jig::run_sim_board(&SimBoardOptions {
            flash_dir,
            serial_prefix,
            boards,
            baud,
            ..SimBoardOptions::default()
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => report(e),
        },
        Command::Ports => match fleet_station::jig::list_ports() {
            Ok(ports) => {
                if ports.is_empty() {
                    println!("no serial ports found");
                }
                for p in ports {
                    println!("{p}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => report(e),
        },
    }
}
