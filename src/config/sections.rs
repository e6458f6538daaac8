//! The sections of `station.toml` other than the jigs: `[station]`, `[endpoint]`,
//! `[provision]`, `[keys]` and `[telemetry]`, with their defaults. Checks that need the whole
//! file are in the parent module.

use std::path::PathBuf;

use serde::Deserialize;

use crate::fleet::{Format, MqttVersion};
use crate::keys::{KeyAlgorithm, KeySource};

use super::validate_endpoint_host;

/// `[telemetry]`: what the station shows to the outside while it runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// `HOST:PORT` to serve Prometheus `/metrics` on during `run` and `loadtest` (port 0: any
    /// free port); off unless set. `--metrics-addr` overrides it.
    #[serde(default)]
    pub metrics_addr: Option<String>,
    /// Where `metrics_addr` came from (`telemetry.metrics_addr` or `--metrics-addr`), for
    /// messages.
    #[serde(skip, default = "default_metrics_addr_key")]
    pub metrics_addr_key: &'static str,
}

fn default_metrics_addr_key() -> &'static str {
    "telemetry.metrics_addr"
}

impl Default for TelemetrySection {
    fn default() -> Self {
        TelemetrySection {
            metrics_addr: None,
            metrics_addr_key: default_metrics_addr_key(),
        }
    }
}

/// Checks a `HOST:PORT` listen address (an IP address or a host name, and a port; 0 = any
/// free port); returns what is wrong.
pub fn validate_listen_addr(addr: &str) -> Result<(), String> {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("is {addr:?}, which has no port"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "is {addr:?}, whose port {port:?} is not a number 0–65535"
        ));
    }
    if host.starts_with('[') || host.contains(':') {
        return Err(format!(
            "is {addr:?}, which is not a valid IPv6 address and port"
        ));
    }
    validate_endpoint_host(host).map_err(|problem| format!("is {addr:?}: the host {problem}"))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationSection {
    /// Identifies this station in client ids (`<id>-<n>`), the ledger and reports.
    #[serde(default = "default_station_id")]
    pub id: String,
    /// The journal of every device: a SQLite file (the embedded default), or a PostgreSQL
    /// database many stations share (`postgres://user@host/db?sslmode=require`).
    #[serde(default = "default_ledger")]
    pub ledger: PathBuf,
    /// A PostgreSQL ledger only: this station's key file, which seals the private keys of its
    /// unfinished devices (default `state/ledger-<station.id>.key`). A file ledger keeps its
    /// key beside it (`<ledger>.key`).
    #[serde(default)]
    pub ledger_key: Option<PathBuf>,
    /// A PostgreSQL ledger only: how long this station's lease on a board's serial lasts
    /// unless renewed (the station renews every third of it while it runs). A station that
    /// dies leaves its leases behind; they expire after this, and another station may then
    /// take its boards over. A file ledger has one station: no leases.
    #[serde(default = "default_lease_s")]
    pub lease_s: u64,
    /// Parent directory of run reports (`<report_dir>/<timestamp>/summary.json`).
    #[serde(default = "default_report_dir")]
    pub report_dir: PathBuf,
}

fn default_station_id() -> String {
    "station-1".into()
}
fn default_lease_s() -> u64 {
    crate::ledger::DEFAULT_LEASE.as_secs()
}
fn default_ledger() -> PathBuf {
    PathBuf::from("state/ledger.db")
}
fn default_report_dir() -> PathBuf {
    PathBuf::from("reports")
}

impl Default for StationSection {
    fn default() -> Self {
        StationSection {
            id: default_station_id(),
            ledger: default_ledger(),
            ledger_key: None,
            lease_s: default_lease_s(),
            report_dir: default_report_dir(),
        }
    }
}

impl StationSection {
    /// Where this station's ledger is (`ledger`, and `ledger_key` for PostgreSQL).
    pub fn ledger_location(&self) -> crate::ledger::LedgerLocation {
        crate::ledger::LedgerLocation::of(&self.ledger, self.ledger_key.as_deref(), &self.id)
    }

    /// `lease_s` as a duration.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_s)
    }
}

/// Where to provision: the embedded emulator or a real AWS IoT endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    /// `"embedded"` starts the emulator in-process and uses its CA and claim identity;
    /// anything else is the host name of an AWS IoT data endpoint
    /// (`xxxx-ats.iot.REGION.amazonaws.com`).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Claim certificate (PEM). Required for a real endpoint.
    #[serde(default)]
    pub claim_cert: Option<PathBuf>,
    /// Claim private key (PEM). Required for a real endpoint.
    #[serde(default)]
    pub claim_key: Option<PathBuf>,
    /// CA that signs the endpoint's server certificate (Amazon Root CA 1 for AWS).
    #[serde(default)]
    pub root_ca: Option<PathBuf>,
}

fn default_endpoint() -> String {
    "embedded".into()
}
fn default_port() -> u16 {
    8883
}

impl Default for EndpointSection {
    fn default() -> Self {
        EndpointSection {
            endpoint: default_endpoint(),
            port: default_port(),
            claim_cert: None,
            claim_key: None,
            root_ca: None,
        }
    }
}

impl EndpointSection {
    pub fn is_embedded(&self) -> bool {
        self.endpoint == "embedded"
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionSection {
    /// Provisioning template name.
    #[serde(default = "default_template")]
    pub template_name: String,
    /// Number of MQTT sessions provisioning in parallel.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Seconds to wait for an accepted/rejected reply.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_s: u64,
    /// Attempts per API call before the device fails (throttles and timeouts are retried).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Payload format: `json` or `cbor`.
    #[serde(default)]
    pub format: Format,
    /// MQTT protocol version: 3 (3.1.1) or 5.
    #[serde(default)]
    pub mqtt_version: MqttVersion,
    /// Account quota for CreateCertificateFromCsr, requests/s (0 = no limit until throttled).
    #[serde(default)]
    pub create_certificate_tps: f64,
    /// Account quota for CreateKeysAndCertificate, requests/s (0 = no limit until throttled).
    #[serde(default)]
    pub create_keys_tps: f64,
    /// Account quota for RegisterThing, requests/s (0 = no limit until throttled).
    #[serde(default)]
    pub register_thing_tps: f64,
    /// CONNECTs per second across all sessions (AWS account default: 500).
    #[serde(default = "default_connect_rate")]
    pub connects_per_s: f64,
    /// A device that is not provisioned after this many seconds fails. Must stay inside the
    /// ownership token's hour.
    #[serde(default = "default_device_deadline")]
    pub device_deadline_s: u64,
    /// After provisioning, connect once with the device's new certificate (station-made keys
    /// only) to prove the identity is live before the board leaves.
    #[serde(default)]
    pub post_provision_check: bool,
    /// Take the API tokens from one bucket per API in the PostgreSQL ledger, shared by every
    /// station there, at the account quota `*_tps` gives (needs a PostgreSQL
    /// `station.ledger`, and the quota of each API the line calls).
    #[serde(default)]
    pub shared_quota: bool,
}

fn default_template() -> String {
    "FleetTemplate".into()
}
fn default_sessions() -> usize {
    16
}
fn default_request_timeout() -> u64 {
    30
}
fn default_attempts() -> u32 {
    5
}
fn default_connect_rate() -> f64 {
    100.0
}
fn default_device_deadline() -> u64 {
    1800
}

impl Default for ProvisionSection {
    fn default() -> Self {
        ProvisionSection {
            template_name: default_template(),
            sessions: default_sessions(),
            request_timeout_s: default_request_timeout(),
            max_attempts: default_attempts(),
            format: Format::default(),
            mqtt_version: MqttVersion::default(),
            create_certificate_tps: 0.0,
            create_keys_tps: 0.0,
            register_thing_tps: 0.0,
            connects_per_s: default_connect_rate(),
            device_deadline_s: default_device_deadline(),
            post_provision_check: false,
            shared_quota: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// `pool` (default), `device` or `aws`.
    #[serde(default = "default_key_source")]
    pub source: KeySource,
    #[serde(default = "default_algorithm")]
    pub algorithm: KeyAlgorithm,
    /// Worker threads generating keys and CSRs.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Ready key pairs kept in stock.
    #[serde(default = "default_stock")]
    pub stock: usize,
}

fn default_key_source() -> KeySource {
    KeySource::Pool
}
fn default_algorithm() -> KeyAlgorithm {
    KeyAlgorithm::P256
}
fn default_workers() -> usize {
    2
}
fn default_stock() -> usize {
    64
}

impl Default for KeysSection {
    fn default() -> Self {
        KeysSection {
            source: default_key_source(),
            algorithm: default_algorithm(),
            workers: default_workers(),
            stock: default_stock(),
        }
    }
}
