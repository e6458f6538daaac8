//! `station loadtest --cleanup-plan DIR`: reads the ledger a load test kept in its report
//! folder DIR (read-only) — or, for a load test that journaled to a shared PostgreSQL ledger,
//! the load test's devices in that ledger, which `DIR/ledger.json` names — and writes into DIR `cleanup.sh` (the AWS CLI commands that remove
//! every certificate and thing the load test created, in an order AWS accepts) and
//! `cleanup.json` (the same plan as data). The plan itself is `ledger::cleanup::loadtest`.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::ledger::cleanup::loadtest::loadtest_plan;
use crate::ledger::{LedgerLocation, LedgerView};
use crate::telemetry::report::ReportError;

/// What `--cleanup-plan` wrote.
#[derive(Debug, Clone)]
pub struct CleanupFiles {
    pub script: PathBuf,
    pub json: PathBuf,
    /// Certificates the plan removes (or finds gone).
    pub certificates: usize,
    /// Things it deletes.
    pub things: usize,
    /// Things it keeps, each with why in `cleanup.json`.
    pub kept: usize,
}

/// A folder that is not a load test's report folder.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{dir} holds no load-test ledger (ledger.db, or ledger.json naming a shared one)")]
#[diagnostic(
    code(station::loadtest::no_ledger),
    help(
        "pass the report folder a `station loadtest` wrote (it printed `report: DIR/summary.json`); it holds ledger.db with every certificate and thing the load test created"
    )
)]
pub struct NoLoadtestLedger {
    pub dir: PathBuf,
}

/// A load test that journaled to a shared ledger other than the configuration's.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error(
    "the load test in {dir} journaled to ledger {recorded}, but the configuration's station.ledger is {configured}"
)]
#[diagnostic(
    code(station::loadtest::other_ledger),
    help(
        "pass --config with the configuration the load test ran with (its station.ledger is the database that holds the load test's devices)"
    )
)]
pub struct LoadtestOtherLedger {
    pub dir: PathBuf,
    pub recorded: String,
    pub configured: String,
}

/// The file in a load test's report folder naming the shared ledger it journaled to.
const POINTER: &str = "ledger.json";

/// What `ledger.json` says: the ledger (its URL without password) and the prefix of the load
/// test's serials in it.
#[derive(serde::Serialize, serde::Deserialize)]
struct LedgerPointer {
    ledger: String,
    serials: String,
}

/// Writes `ledger.json` into a load test's report folder `dir`: the load test journals to the
/// shared ledger `at`, its devices' serials start with `serials`.
pub(crate) fn write_ledger_pointer(
    dir: &Path,
    at: &LedgerLocation,
    serials: &str,
) -> crate::Result<()> {
    let path = dir.join(POINTER);
    let text = serde_json::to_string_pretty(&LedgerPointer {
        ledger: at.display(),
        serials: serials.to_string(),
    })
    .expect("two strings");
    crate::files::write_atomic(&path, text.as_bytes())
        .map_err(|source| ReportError::Write { path, source })?;
    Ok(())
}

/// Writes `cleanup.sh` and `cleanup.json` into the load test's report folder `dir`. A load
/// test that journaled to a shared ledger is read from the ledger of the configuration at
/// `config` (which must be the one `ledger.json` names), keeping only its own serials.
pub fn write_cleanup_plan(dir: &Path, config: &Path) -> crate::Result<CleanupFiles> {
    let ledger_path = dir.join("ledger.db");
    let pointer = dir.join(POINTER);
    let (devices, orphans) = if ledger_path.is_file() {
        let ledger = LedgerView::open(&ledger_path)?;
        (ledger.devices()?, ledger.orphans()?)
    } else if pointer.is_file() {
        let no_ledger = || NoLoadtestLedger {
            dir: dir.to_path_buf(),
        };
        let p: LedgerPointer = std::fs::read(&pointer)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(no_ledger)?;
        let at = Config::load(config)?.station.ledger_location();
        if at.display() != p.ledger {
            return Err(LoadtestOtherLedger {
                dir: dir.to_path_buf(),
                recorded: p.ledger,
                configured: at.display(),
            }
            .into());
        }
        let ledger = LedgerView::open_at(&at)?;
        let mut devices = ledger.devices()?;
        devices.retain(|d| d.serial.starts_with(&p.serials));
        let mut orphans = ledger.orphans()?;
        orphans.retain(|o| o.serial.starts_with(&p.serials));
        (devices, orphans)
    } else {
        return Err(NoLoadtestLedger {
            dir: dir.to_path_buf(),
        }
        .into());
    };
    let plan = loadtest_plan(&devices, &orphans);
    let script = dir.join("cleanup.sh");
    let json = dir.join("cleanup.json");
    let write = |path: &Path, text: &str| {
        crate::files::write_atomic(path, text.as_bytes()).map_err(|source| ReportError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    write(&script, &plan.script())?;
    write(&json, &plan.json())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).map_err(
            |source| ReportError::Write {
                path: script.clone(),
                source,
            },
        )?;
    }
    Ok(CleanupFiles {
        script,
        json,
        certificates: plan.certificates.len(),
        things: plan.things.iter().filter(|t| !t.steps.is_empty()).count(),
        kept: plan.things.iter().filter(|t| t.steps.is_empty()).count(),
    })
}
