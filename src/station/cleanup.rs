//! `station loadtest --cleanup-plan DIR`: reads the ledger a load test kept in its report
//! folder DIR (read-only) and writes into DIR `cleanup.sh` (the AWS CLI commands that remove
//! every certificate and thing the load test created, in an order AWS accepts) and
//! `cleanup.json` (the same plan as data). The plan itself is `ledger::cleanup::loadtest`.

use std::path::{Path, PathBuf};

use crate::ledger::LedgerView;
use crate::ledger::cleanup::loadtest::loadtest_plan;
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
#[error("{dir} holds no load-test ledger (ledger.db)")]
#[diagnostic(
    code(station::loadtest::no_ledger),
    help(
        "pass the report folder a `station loadtest` wrote (it printed `report: DIR/summary.json`); it holds ledger.db with every certificate and thing the load test created"
    )
)]
pub struct NoLoadtestLedger {
    pub dir: PathBuf,
}

/// Writes `cleanup.sh` and `cleanup.json` into the load test's report folder `dir`.
pub fn write_cleanup_plan(dir: &Path) -> crate::Result<CleanupFiles> {
    let ledger_path = dir.join("ledger.db");
    if !ledger_path.is_file() {
        return Err(NoLoadtestLedger {
            dir: dir.to_path_buf(),
        }
        .into());
    }
    let ledger = LedgerView::open(&ledger_path)?;
    let plan = loadtest_plan(&ledger.devices()?, &ledger.orphans()?);
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
