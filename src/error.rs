//! The operator-facing error type. Every variant says what happened; every diagnostic has a
//! code and a help line that says what to do (the espflash style). Errors of the stages are
//! wrapped transparently so their own code and help reach the operator unchanged.

use miette::Diagnostic;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum Error {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Config(#[from] crate::config::ConfigError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Emulator(#[from] crate::emulator::EmulatorError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Tls(#[from] crate::provision::tls::TlsSetupError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Jig(#[from] crate::jig::JigError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Line(#[from] crate::provision::health::LineError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Metrics(#[from] crate::telemetry::http::BindError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Report(#[from] crate::telemetry::report::ReportError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    NoLoadtestLedger(#[from] crate::station::cleanup::NoLoadtestLedger),
    #[error(transparent)]
    #[diagnostic(transparent)]
    LoadtestOtherLedger(#[from] crate::station::cleanup::LoadtestOtherLedger),

    #[error("cannot make a temporary directory for the load test's embedded emulator: {0}")]
    #[diagnostic(
        code(station::loadtest::scratch),
        help(
            "set TMPDIR to a writable directory, or pass --keep-emulator-state to use emulator.state_dir"
        )
    )]
    LoadtestScratch(std::io::Error),

    #[error(
        "provision.shared_quota is true, and the open-loop load-test modes (--rate, --ramp, --find-knee) offer their load unpaced to measure the account's quotas: they do not take the shared quota's tokens"
    )]
    #[diagnostic(
        code(station::loadtest::shared_quota),
        help(
            "run them with a configuration of their own where provision.shared_quota = false, and not while the factory's stations provision on the same account (their throttles would cut the factory's shared rate); or use --devices N, which takes the shared quota's tokens"
        )
    )]
    SharedQuotaOpenLoop,

    #[error("the line has no jig to work with")]
    #[diagnostic(
        code(station::no_jigs),
        help("set [jigs] count ≥ 1 (virtual) or list [[jigs.ports]] (serial)")
    )]
    NoJigs,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
