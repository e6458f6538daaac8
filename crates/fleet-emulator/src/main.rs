//! `fleet-emulator`: the emulator on its own, for teams that test their devices or tools against
//! it in CI without the station (`cargo install --path crates/fleet-emulator`). It reads the
//! `[emulator]` section of a TOML file (a `station.toml` works as it is), starts the emulator,
//! prints where it listens and where its CA and claim identity are, and runs until SIGINT or
//! SIGTERM. `station emulate` does the same inside the station binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use fleet_emulator::{Emulator, EmulatorConfig, InvalidSetting};
use fleet_util::shutdown::{self, Shutdown};

/// An emulator of AWS IoT Core's fleet-provisioning API (MQTT over mutual TLS).
#[derive(Parser)]
#[command(name = "fleet-emulator", version)]
struct Cli {
    /// TOML file whose `[emulator]` section configures the emulator (a station.toml works as
    /// it is). Without it, the defaults: a free port on 127.0.0.1, state in `state/emulator`,
    /// templates in `fixtures/templates`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, over the file's `listen` (e.g. `127.0.0.1:8883`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Directory for the CA, the claim identity and the registry, over the file's `state_dir`.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Directory of provisioning templates (`NAME.json`), over the file's `templates`.
    #[arg(long, value_name = "DIR")]
    templates: Option<PathBuf>,
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
enum ConfigFileError {
    #[error("cannot read {}: {source}", path.display())]
    #[diagnostic(
        code(station::emulator::config_file),
        help("pass an existing TOML file with --config, or leave --config out for the defaults")
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    #[diagnostic(
        code(station::emulator::config_file),
        help(
            "the file must be TOML with an [emulator] section of the keys docs/emulator.md lists"
        )
    )]
    Parse { path: PathBuf, message: String },
    #[error("{}: {key} {source}", path.display(), key = source.key())]
    #[diagnostic(
        code(station::emulator::config),
        help("fix the value in the [emulator] section; docs/emulator.md lists the keys")
    )]
    Invalid {
        path: PathBuf,
        source: InvalidSetting,
    },
}

/// The `[emulator]` section of `path`; the defaults when the file has none.
fn load(path: &Path) -> Result<EmulatorConfig, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parse_error = |message: String| ConfigFileError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| parse_error(e.message().to_string()))?;
    let cfg = match table.remove("emulator") {
        Some(section) => section
            .try_into::<EmulatorConfig>()
            .map_err(|e| parse_error(format!("[emulator]: {}", e.message())))?,
        None => EmulatorConfig::default(),
    };
    cfg.validate().map_err(|source| ConfigFileError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(cfg)
}

fn report(e: impl miette::Diagnostic + Send + Sync + 'static) -> ExitCode {
    eprintln!("{:?}", miette::Report::new(e));
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut cfg = match cli.config.as_deref().map(load) {
        Some(Ok(cfg)) => cfg,
        Some(Err(e)) => return report(e),
        None => EmulatorConfig::default(),
    };
    if let Some(listen) = cli.listen {
        cfg.listen = listen;
    }
    if let Some(dir) = cli.state_dir {
        cfg.state_dir = dir;
    }
    if let Some(dir) = cli.templates {
        cfg.templates = dir;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let stop = Shutdown::new();
        shutdown::trigger_on_signals(&stop);
        let emu = match Emulator::start(&cfg, stop.clone()).await {
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
