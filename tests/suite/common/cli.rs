//! The `station` binary as tests drive it: its command, a station configuration written as
//! dotted keys over defaults (ledger, reports, boards and emulator state in the test's temp
//! dir), read-only counts from a ledger the station is writing, and waiting on them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use super::{StandaloneEmulator, fixtures};

pub fn station() -> Command {
    Command::new(env!("CARGO_BIN_EXE_station"))
}

/// The stdout of a command that must have succeeded (else fails, showing stdout and stderr).
pub fn succeeded(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `station ledger --config <config> <what…>`, run to its end.
pub fn ledger(config: &Path, what: &[&str]) -> Output {
    station()
        .arg("ledger")
        .arg("--config")
        .arg(config)
        .args(what)
        .output()
        .unwrap()
}

/// A `station.toml` for a test: keys (as TOML values) over the defaults.
pub struct StationConfig {
    dir: PathBuf,
    keys: BTreeMap<String, String>,
}

fn quoted(s: impl AsRef<str>) -> String {
    format!("{:?}", s.as_ref())
}

impl StationConfig {
    /// The embedded emulator and two unpaced virtual jigs, all state in `dir`.
    pub fn embedded(dir: &Path) -> StationConfig {
        StationConfig::base(dir)
            .set("jigs.count", "2")
            .set("jigs.baud", "0")
            .set_str(
                "emulator.state_dir",
                dir.join("emulator").display().to_string(),
            )
            .set_str(
                "emulator.templates",
                fixtures().join("templates").display().to_string(),
            )
    }

    /// A standalone emulator as the endpoint (as a real AWS endpoint is configured).
    pub fn endpoint(dir: &Path, emu: &StandaloneEmulator) -> StationConfig {
        StationConfig::base(dir)
            .set_str("endpoint.endpoint", "localhost")
            .set("endpoint.port", &emu.port.to_string())
            .set_str("endpoint.claim_cert", emu.cert.display().to_string())
            .set_str("endpoint.claim_key", emu.key.display().to_string())
            .set_str("endpoint.root_ca", emu.ca.display().to_string())
    }

    fn base(dir: &Path) -> StationConfig {
        StationConfig {
            dir: dir.to_path_buf(),
            keys: BTreeMap::new(),
        }
        .set_str(
            "station.ledger",
            dir.join("ledger.db").display().to_string(),
        )
        .set_str(
            "station.report_dir",
            dir.join("reports").display().to_string(),
        )
        .set_str("parameters.ThingName", "{serial}")
        .set_str("parameters.SerialNumber", "{serial}")
        .set_str("parameters.DeviceLocation", "Seattle")
        .set_str("jigs.flash_dir", dir.join("boards").display().to_string())
    }

    /// Sets `key` (dotted) to a TOML value as written (`"16"`, `"true"`, `"\"text\""`).
    pub fn set(mut self, key: &str, value: &str) -> StationConfig {
        self.keys.insert(key.to_string(), value.to_string());
        self
    }

    /// Sets `key` to a string.
    pub fn set_str(self, key: &str, value: impl AsRef<str>) -> StationConfig {
        let v = quoted(value);
        self.set(key, &v)
    }

    /// The file's text.
    pub fn text(&self) -> String {
        self.keys
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    }

    /// Writes `station.toml` into the test's dir; returns its path.
    pub fn write(&self) -> PathBuf {
        let path = self.dir.join("station.toml");
        std::fs::write(&path, self.text()).unwrap();
        path
    }
}

/// A count from a SQLite file through a read-only connection (0 while it has no tables).
pub fn count(db: &Path, sql: &str) -> usize {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .ok()
        .and_then(|c| c.query_row(sql, [], |r| r.get::<_, i64>(0)).ok())
        .unwrap_or(0) as usize
}

/// Polls `ready` (an observable state of the station) until it holds, while `child` runs;
/// fails the test if the station exits first or after two minutes.
pub fn wait_for(child: &mut Child, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the station exited ({status}) before {what}");
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
