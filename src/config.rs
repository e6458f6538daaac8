//! The `station.toml` schema and its validation.
//!
//! Every error names the key and the fix: a TOML or type error points at the offending text
//! (with the file shown by miette), and semantic checks (`sessions = 0`, a placeholder nobody
//! fills, ...) name the key path, e.g. `provision.sessions`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use miette::{NamedSource, SourceSpan};
use serde::Deserialize;

use crate::emulator::EmulatorConfig;
use crate::fleet::{Format, MqttVersion, validate_template_name};
use crate::jig::{
    DataBits, DriverKind, DriverOptions, FlowControl, NRF91_DEFAULT_SEC_TAG, Nrf91Options, Parity,
    PortSettings, StopBits, ZEPHYR_DEFAULT_SEC_TAG, ZEPHYR_MAX_CHUNK, ZephyrOptions,
};
use crate::keys::{KeyAlgorithm, KeySource};

/// Placeholders a parameter value may use, filled per board.
pub const PLACEHOLDERS: &[&str] = &["serial", "mac", "hw_rev", "station_id", "jig"];

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub station: StationSection,
    #[serde(default)]
    pub endpoint: EndpointSection,
    #[serde(default)]
    pub provision: ProvisionSection,
    /// Template parameters: name → literal or placeholder text such as `"{serial}"`.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub keys: KeysSection,
    #[serde(default)]
    pub jigs: JigsSection,
    #[serde(default)]
    pub emulator: EmulatorConfig,
    #[serde(default)]
    pub telemetry: TelemetrySection,
}

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

/// The serial jigs: virtual boards on pseudo-terminals, or real ports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JigsSection {
    /// `"virtual"` (boards on ptys, the demo) or `"serial"` (the `ports` list).
    #[serde(default)]
    pub mode: JigMode,
    /// Number of virtual jigs.
    #[serde(default = "default_jig_count")]
    pub count: usize,
    /// Boards fed to the virtual line (`--boards` overrides).
    #[serde(default = "default_boards")]
    pub boards: usize,
    /// Line rate in baud (virtual boards emulate it; 0 = memory speed).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Milliseconds to wait for a board's answer before retrying a frame.
    #[serde(default = "default_jig_timeout")]
    pub timeout_ms: u64,
    /// Serial-number prefix of virtual boards.
    #[serde(default = "default_serial_prefix")]
    pub serial_prefix: String,
    /// Stamp virtual serials with the run's start time (`<prefix>-<stamp>-<n>`), so every run
    /// gets new boards. With `false` serials are `<prefix>-<n>` in every run and boards the
    /// ledger shows verified are not placed again — a restarted station finds the boards of
    /// the interrupted run where it left them.
    #[serde(default = "default_true")]
    pub stamp_serials: bool,
    /// Where virtual boards keep their flash files.
    #[serde(default = "default_flash_dir")]
    pub flash_dir: PathBuf,
    /// Real serial ports (`mode = "serial"`).
    #[serde(default)]
    pub ports: Vec<PortEntry>,
    /// Root CA written into each board's root-CA slot (PEM). Default: the endpoint's root CA.
    #[serde(default)]
    pub board_root_ca: Option<PathBuf>,
    /// Before writing, ask the board for the digests of the slots that are the same from board
    /// to board (root CA, device configuration) and leave out those it already holds (one
    /// HASH round trip). `false` writes every slot every time.
    #[serde(default = "default_true")]
    pub skip_held: bool,
    /// Virtual boards come with the board root CA already in flash, as firmware that bakes
    /// it in (`mode = "virtual"` only).
    #[serde(default)]
    pub boards_hold_root_ca: bool,
    /// The driver of the virtual line's jigs (`--driver` overrides): `"fleet-jig"` (our jig
    /// protocol, the default) or `"nrf91-at"` (emulated nRF91 modems behind their AT host).
    /// Real ports name theirs in `[[jigs.ports]] driver`.
    #[serde(default)]
    pub driver: DriverKind,
    /// `nrf91-at` on the virtual line: the security tag the credentials go to (default
    /// 16842753, nRF Cloud Utils' default). Real ports set theirs in `[[jigs.ports]]`.
    #[serde(default)]
    pub sec_tag: Option<u32>,
    /// `nrf91-at` on the virtual line: write the root CA (type 0) too (default `true`).
    #[serde(default)]
    pub write_root_ca: Option<bool>,
}

/// The nRF91 options from a port's (or the virtual line's) keys.
fn nrf91_options(sec_tag: Option<u32>, write_root_ca: Option<bool>) -> Nrf91Options {
    Nrf91Options {
        sec_tag: sec_tag.unwrap_or(NRF91_DEFAULT_SEC_TAG),
        write_root_ca: write_root_ca.unwrap_or(true),
    }
}

/// Largest security tag a station may use (larger ones are reserved for the modem).
const MAX_SEC_TAG: u32 = 2_147_483_647;

/// One real jig: a named serial port and its line settings (default 8N1, no flow control,
/// `jigs.baud`, `jigs.timeout_ms`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortEntry {
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub baud: Option<u32>,
    #[serde(default)]
    pub parity: Option<ParityConfig>,
    #[serde(default)]
    pub flow_control: Option<FlowControlConfig>,
    /// 5, 6, 7 or 8.
    #[serde(default)]
    pub data_bits: Option<u8>,
    /// 1 or 2.
    #[serde(default)]
    pub stop_bits: Option<u8>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// How the station talks to the board's firmware: `"fleet-jig"` (default) or
    /// `"nrf91-at"` or `"zephyr-cred"` (see docs/jig-drivers.md).
    #[serde(default)]
    pub driver: DriverKind,
    /// `nrf91-at`, `zephyr-cred`: the security tag the credentials go to (default 16842753,
    /// the default of nRF Cloud Utils and of Zephyr's `tls_creds_installer.py`).
    #[serde(default)]
    pub sec_tag: Option<u32>,
    /// `nrf91-at`, `zephyr-cred`: write the root CA too (default `true`); `false` when the
    /// firmware provides it.
    #[serde(default)]
    pub write_root_ca: Option<bool>,
    /// `zephyr-cred`: the shell command whose output names the board (default
    /// `"hwinfo devid"`, whose `ID: 0x…` is the device id; another command's first line).
    #[serde(default)]
    pub identity_command: Option<String>,
    /// `zephyr-cred`: base64 characters per `cred buf` line (default 48, a multiple of 4).
    #[serde(default)]
    pub chunk: Option<usize>,
    /// `zephyr-cred`: send raw PEM with `cred buf load` where the shell has it (default
    /// `true`; a shell without it is noticed and sent base64 chunks).
    #[serde(default)]
    pub buf_load: Option<bool>,
}

impl JigsSection {
    /// The options of the virtual line's driver (`jigs.driver`), from this section.
    pub fn driver_options(&self) -> DriverOptions {
        match self.driver {
            DriverKind::FleetJig => DriverOptions::default(),
            DriverKind::Nrf91At => DriverOptions {
                nrf91: nrf91_options(self.sec_tag, self.write_root_ca),
                ..DriverOptions::default()
            },
            DriverKind::ZephyrCred => DriverOptions {
                zephyr: ZephyrOptions {
                    sec_tag: self.sec_tag.unwrap_or(ZEPHYR_DEFAULT_SEC_TAG),
                    write_root_ca: self.write_root_ca.unwrap_or(true),
                    ..ZephyrOptions::default()
                },
                ..DriverOptions::default()
            },
        }
    }

    /// Port settings for a jig at `baud`, with this section's answer timeout.
    pub fn port_settings(&self, baud: u32) -> PortSettings {
        PortSettings {
            baud,
            timeout: Duration::from_millis(self.timeout_ms),
            ..PortSettings::default()
        }
    }
}

impl PortEntry {
    /// The options of this port's driver.
    pub fn driver_options(&self) -> DriverOptions {
        match self.driver {
            DriverKind::FleetJig => DriverOptions::default(),
            DriverKind::Nrf91At => DriverOptions {
                nrf91: nrf91_options(self.sec_tag, self.write_root_ca),
                ..DriverOptions::default()
            },
            DriverKind::ZephyrCred => {
                let d = ZephyrOptions::default();
                DriverOptions {
                    zephyr: ZephyrOptions {
                        sec_tag: self.sec_tag.unwrap_or(d.sec_tag),
                        write_root_ca: self.write_root_ca.unwrap_or(d.write_root_ca),
                        identity_command: self
                            .identity_command
                            .clone()
                            .unwrap_or(d.identity_command),
                        chunk: self.chunk.unwrap_or(d.chunk),
                        buf_load: self.buf_load.unwrap_or(d.buf_load),
                        prompt: d.prompt,
                    },
                    ..DriverOptions::default()
                }
            }
        }
    }

    /// The settings this port is opened with: its own line settings over `jigs`' defaults.
    /// `data_bits` and `stop_bits` were checked when the configuration was loaded.
    pub fn settings(&self, jigs: &JigsSection) -> PortSettings {
        let mut s = jigs.port_settings(self.baud.unwrap_or(jigs.baud));
        if let Some(t) = self.timeout_ms {
            s.timeout = Duration::from_millis(t);
        }
        s.parity = match self.parity.unwrap_or(ParityConfig::None) {
            ParityConfig::None => Parity::None,
            ParityConfig::Even => Parity::Even,
            ParityConfig::Odd => Parity::Odd,
        };
        s.flow_control = match self.flow_control.unwrap_or(FlowControlConfig::None) {
            FlowControlConfig::None => FlowControl::None,
            FlowControlConfig::Software => FlowControl::Software,
            FlowControlConfig::Hardware => FlowControl::Hardware,
        };
        s.data_bits = match self.data_bits {
            Some(5) => DataBits::Five,
            Some(6) => DataBits::Six,
            Some(7) => DataBits::Seven,
            _ => DataBits::Eight,
        };
        s.stop_bits = match self.stop_bits {
            Some(2) => StopBits::Two,
            _ => StopBits::One,
        };
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParityConfig {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControlConfig {
    None,
    Software,
    Hardware,
}

fn default_jig_count() -> usize {
    8
}
fn default_boards() -> usize {
    200
}
fn default_baud() -> u32 {
    921_600
}
fn default_jig_timeout() -> u64 {
    250
}
fn default_true() -> bool {
    true
}
fn default_serial_prefix() -> String {
    "SN".into()
}
fn default_flash_dir() -> PathBuf {
    PathBuf::from("state/boards")
}

impl Default for JigsSection {
    fn default() -> Self {
        JigsSection {
            mode: JigMode::default(),
            count: default_jig_count(),
            boards: default_boards(),
            baud: default_baud(),
            timeout_ms: default_jig_timeout(),
            serial_prefix: default_serial_prefix(),
            stamp_serials: true,
            flash_dir: default_flash_dir(),
            ports: Vec::new(),
            board_root_ca: None,
            skip_held: true,
            boards_hold_root_ca: false,
            driver: DriverKind::default(),
            sec_tag: None,
            write_root_ca: None,
        }
    }
}

/// Where the jigs are (`jigs.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JigMode {
    /// Virtual boards on pseudo-terminals (the demo, tests).
    #[default]
    Virtual,
    /// The ports of `[[jigs.ports]]`.
    Serial,
}

impl JigsSection {
    pub fn is_virtual(&self) -> bool {
        self.mode == JigMode::Virtual
    }
}

/// A configuration problem, with the key and the fix.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    #[diagnostic(
        code(station::config::read),
        help(
            "pass an existing file with --config, or run from the directory holding station.toml"
        )
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Syntax(Box<SyntaxError>),
    #[error("{path}: `{key}` {problem}")]
    #[diagnostic(code(station::config::invalid))]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
        #[help]
        help: String,
    },
}

/// A TOML or type error, pointing at the offending text.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{path} is not a valid station configuration: {message}")]
#[diagnostic(code(station::config::syntax))]
pub struct SyntaxError {
    pub path: PathBuf,
    pub message: String,
    #[source_code]
    pub src: NamedSource<String>,
    #[label("here")]
    pub span: Option<SourceSpan>,
    #[help]
    pub help: String,
}

/// Checks that an endpoint is a bare host name (or `embedded`): no scheme, port, path or
/// spaces; returns what is wrong.
fn validate_endpoint_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("is empty".into());
    }
    if let Some((scheme, _)) = host.split_once("://") {
        return Err(format!(
            "is {host:?}, a URL with the scheme {scheme}://; the station connects with MQTT over TLS itself"
        ));
    }
    if host.contains(':') {
        return Err(format!("is {host:?}, which carries a port"));
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(format!(
            "is {host:?}, which has {c:?}: a host name has only letters, digits, '-' and '.'"
        ));
    }
    if host.starts_with('.') || host.ends_with('.') || host.contains("..") {
        return Err(format!("is {host:?}, which is not a host name"));
    }
    Ok(())
}

/// Command-line overrides of the endpoint settings, named like the AWS SDK samples'
/// arguments (`--endpoint`, `--port`, `--cert`, … `--template_name`,
/// `--template_parameters`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub endpoint: Option<String>,
    pub port: Option<u16>,
    pub claim_cert: Option<PathBuf>,
    pub claim_key: Option<PathBuf>,
    pub root_ca: Option<PathBuf>,
    pub template_name: Option<String>,
    /// A JSON object of string values, merged over `[parameters]`.
    pub template_parameters: Option<String>,
    pub mqtt_version: Option<MqttVersion>,
    /// `--metrics-addr`: overrides `telemetry.metrics_addr`.
    pub metrics_addr: Option<String>,
}

impl Config {
    /// Applies command-line overrides and validates the result again.
    pub fn with_overrides(mut self, o: &Overrides, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: &str, problem: String, help: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            problem,
            help: help.to_string(),
        };
        if let Some(e) = &o.endpoint {
            self.endpoint.endpoint = e.clone();
        }
        if let Some(p) = o.port {
            self.endpoint.port = p;
        }
        if let Some(c) = &o.claim_cert {
            self.endpoint.claim_cert = Some(c.clone());
        }
        if let Some(k) = &o.claim_key {
            self.endpoint.claim_key = Some(k.clone());
        }
        if let Some(r) = &o.root_ca {
            self.endpoint.root_ca = Some(r.clone());
        }
        if let Some(t) = &o.template_name {
            self.provision.template_name = t.clone();
        }
        if let Some(v) = o.mqtt_version {
            self.provision.mqtt_version = v;
        }
        if let Some(a) = &o.metrics_addr {
            self.telemetry.metrics_addr = Some(a.clone());
            self.telemetry.metrics_addr_key = "--metrics-addr";
        }
        if let Some(json) = &o.template_parameters {
            let map: BTreeMap<String, serde_json::Value> =
                serde_json::from_str(json).map_err(|e| {
                    invalid(
                        "--template-parameters",
                        format!("is not a JSON object: {e}"),
                        "pass an object of strings, e.g. '{\"SerialNumber\":\"{serial}\",\"DeviceLocation\":\"Seattle\"}'",
                    )
                })?;
            for (k, v) in map {
                let serde_json::Value::String(v) = v else {
                    return Err(invalid(
                        "--template-parameters",
                        format!("has a non-string value for {k}"),
                        "template parameters are strings: quote every value",
                    ));
                };
                self.parameters.insert(k, v);
            }
        }
        self.validate(path)?;
        Ok(self)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let mut message = e.message().trim().to_string();
            if let Some(key) = e.span().and_then(|r| key_at(text, r.start)) {
                message = format!("`{key}`: {message}");
            }
            let help = if message.contains("unknown field") {
                "remove or rename the key; the accepted keys are listed in the message and in README.md".to_string()
            } else if message.contains("unknown variant") {
                "use one of the values listed in the message".to_string()
            } else {
                "fix the value at the marked place; README.md lists every key with its type".to_string()
            };
            ConfigError::Syntax(Box::new(SyntaxError {
                path: path.to_path_buf(),
                message,
                src: NamedSource::new(path.display().to_string(), text.to_string()),
                span: e.span().map(|r| SourceSpan::from(r.start..r.end)),
                help,
            }))
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Board-made keys (`keys.source = "device"`) need a driver whose boards make keys: the
    /// Zephyr TLS-credentials shell has no key generation. Checked on load and again after
    /// `--driver` (`path` names the configuration in the error).
    pub fn check_key_source_and_drivers(&self, path: &Path) -> Result<(), ConfigError> {
        if self.keys.source != KeySource::Device {
            return Ok(());
        }
        let zephyr = if self.jigs.is_virtual() {
            (self.jigs.driver == DriverKind::ZephyrCred).then(|| "jigs.driver".to_string())
        } else {
            self.jigs
                .ports
                .iter()
                .position(|p| p.driver == DriverKind::ZephyrCred)
                .map(|i| format!("jigs.ports[{i}].driver"))
        };
        match zephyr {
            Some(key) => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                problem: "is \"zephyr-cred\" but keys.source is \"device\": Zephyr's TLS-credentials shell cannot make a key or a CSR".into(),
                help: "set keys.source = \"pool\" (station-made keys) or \"aws\" for zephyr-cred boards".into(),
            }),
            None => Ok(()),
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String, help: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            problem,
            help: help.to_string(),
        };
        let s = &self.station;
        if s.id.is_empty() || s.id.len() > 100 || s.id.contains(['#', '+', '/', '$']) {
            return Err(invalid(
                "station.id",
                format!("is {:?}, which cannot start an MQTT client id", s.id),
                "use 1–100 characters without '#', '+', '/' or '$', e.g. \"line3-station1\"",
            ));
        }
        match self.station.ledger_location() {
            crate::ledger::LedgerLocation::Postgres { url, .. } => {
                if let Err(problem) = crate::ledger::check_url(&url) {
                    return Err(invalid(
                        "station.ledger",
                        format!(
                            "is {:?}, which is not a PostgreSQL URL: {problem}",
                            crate::ledger::LedgerLocation::of(&s.ledger, None, &s.id).display()
                        ),
                        "write it as postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=require&sslrootcert=/path/ca.pem]",
                    ));
                }
            }
            crate::ledger::LedgerLocation::File(_) if s.ledger_key.is_some() => {
                return Err(invalid(
                    "station.ledger_key",
                    "is set, but station.ledger is a file".into(),
                    "remove station.ledger_key: a file ledger keeps its key beside it (<ledger>.key); ledger_key is for a PostgreSQL ledger",
                ));
            }
            crate::ledger::LedgerLocation::File(_) => {}
        }
        if !(1..=3600).contains(&s.lease_s) {
            return Err(invalid(
                "station.lease_s",
                format!("is {}; it must be between 1 and 3600 seconds", s.lease_s),
                "set it to how long a station that died may hold its boards' serials before another station can take them over, e.g. 60",
            ));
        }
        if let Err(e) = validate_template_name(&self.provision.template_name) {
            return Err(invalid(
                "provision.template_name",
                e.to_string(),
                "use the name of the provisioning template as AWS shows it (1–36 of A-Z a-z 0-9 _ -)",
            ));
        }
        let p = &self.provision;
        if p.sessions == 0 || p.sessions > 4096 {
            return Err(invalid(
                "provision.sessions",
                format!("is {}; it must be between 1 and 4096", p.sessions),
                "set it to the number of devices to provision in parallel, e.g. 16",
            ));
        }
        if p.request_timeout_s == 0 {
            return Err(invalid(
                "provision.request_timeout_s",
                "is 0".into(),
                "give AWS time to answer: 10–30 seconds is typical",
            ));
        }
        if p.max_attempts == 0 {
            return Err(invalid(
                "provision.max_attempts",
                "is 0".into(),
                "set at least 1 (5 rides out short throttling)",
            ));
        }
        for (key, v) in [
            ("provision.create_certificate_tps", p.create_certificate_tps),
            ("provision.create_keys_tps", p.create_keys_tps),
            ("provision.register_thing_tps", p.register_thing_tps),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(
                    key,
                    format!("is {v}"),
                    "give the account's quota in requests per second, or 0 for no limit",
                ));
            }
        }
        if p.shared_quota {
            if !matches!(
                self.station.ledger_location(),
                crate::ledger::LedgerLocation::Postgres { .. }
            ) {
                return Err(invalid(
                    "provision.shared_quota",
                    format!(
                        "is true, but station.ledger is a file ({}): the shared quota lives in the PostgreSQL ledger the stations share",
                        s.ledger.display()
                    ),
                    "point station.ledger at the factory's PostgreSQL (postgres://USER@HOST/DATABASE), or set provision.shared_quota = false for a station of its own",
                ));
            }
            let certificate = if self.keys.source == crate::keys::KeySource::Aws {
                ("provision.create_keys_tps", p.create_keys_tps)
            } else {
                ("provision.create_certificate_tps", p.create_certificate_tps)
            };
            for (key, v) in [
                certificate,
                ("provision.register_thing_tps", p.register_thing_tps),
            ] {
                if v <= 0.0 {
                    return Err(invalid(
                        key,
                        "is 0 (no limit), but provision.shared_quota is true: the stations share the account's quota, which must be given".into(),
                        "set it to the account's quota for this API in requests per second (AWS: RegisterThing 10, CreateCertificateFromCsr 15 unless raised)",
                    ));
                }
            }
        }
        if !(p.connects_per_s.is_finite() && p.connects_per_s > 0.0) {
            return Err(invalid(
                "provision.connects_per_s",
                format!("is {}", p.connects_per_s),
                "give CONNECTs per second across all sessions, e.g. 100 (AWS allows 500 per account)",
            ));
        }
        if p.device_deadline_s == 0 || p.device_deadline_s > 55 * 60 {
            return Err(invalid(
                "provision.device_deadline_s",
                format!("is {} s", p.device_deadline_s),
                "choose 1–3300 s: a device must finish inside its ownership token's hour",
            ));
        }
        for (name, value) in &self.parameters {
            for ph in placeholders(value) {
                if !PLACEHOLDERS.contains(&ph) {
                    return Err(invalid(
                        &format!("parameters.{name}"),
                        format!("uses the placeholder {{{ph}}}, which nothing fills"),
                        "use one of {serial}, {mac}, {hw_rev}, {station_id}, {jig}, or write a literal value",
                    ));
                }
            }
        }
        let k = &self.keys;
        if k.workers == 0 || k.workers > 64 {
            return Err(invalid(
                "keys.workers",
                format!("is {}; it must be between 1 and 64", k.workers),
                "one worker per spare core is plenty: a P-256 key and CSR take ~40 µs",
            ));
        }
        if k.stock == 0 {
            return Err(invalid(
                "keys.stock",
                "is 0".into(),
                "keep at least a few keys ready, e.g. 64",
            ));
        }
        let e = &self.endpoint;
        if let Err(problem) = validate_endpoint_host(&e.endpoint) {
            return Err(invalid(
                "endpoint.endpoint",
                problem,
                "give the host name alone, e.g. \"abcdefghij1234-ats.iot.eu-west-1.amazonaws.com\" (aws iot describe-endpoint --endpoint-type iot:Data-ATS), the port in endpoint.port; or \"embedded\"",
            ));
        }
        if e.port == 0 {
            return Err(invalid(
                "endpoint.port",
                "is 0".into(),
                "use 8883 (MQTT over TLS) or 443 (with ALPN x-amzn-mqtt-ca)",
            ));
        }
        if !e.is_embedded() {
            for (key, v) in [
                ("endpoint.claim_cert", &e.claim_cert),
                ("endpoint.claim_key", &e.claim_key),
                ("endpoint.root_ca", &e.root_ca),
            ] {
                if v.is_none() {
                    return Err(invalid(
                        key,
                        format!("is missing but endpoint.endpoint is {:?}", e.endpoint),
                        "a real endpoint needs the claim certificate, its key and Amazon Root CA 1 (PEM paths); or set endpoint = \"embedded\"",
                    ));
                }
            }
        }
        if let Err(e) = self.emulator.validate() {
            return Err(invalid(
                &e.key(),
                e.problem(),
                "see the [emulator] keys in README.md (quotas, faults, error_codes)",
            ));
        }
        if let Some(addr) = &self.telemetry.metrics_addr
            && let Err(problem) = validate_listen_addr(addr)
        {
            return Err(invalid(
                self.telemetry.metrics_addr_key,
                problem,
                "give HOST:PORT to serve /metrics on, e.g. \"127.0.0.1:9100\" or \"0.0.0.0:9100\" (port 0: any free port)",
            ));
        }
        let j = &self.jigs;
        if j.sec_tag.is_some_and(|t| t > MAX_SEC_TAG) {
            return Err(invalid(
                "jigs.sec_tag",
                format!("is {}", j.sec_tag.unwrap_or(0)),
                "use 0 to 2147483647 (larger tags are reserved for the modem)",
            ));
        }
        match j.mode {
            JigMode::Virtual => {
                if j.count == 0 || j.count > 512 {
                    return Err(invalid(
                        "jigs.count",
                        format!("is {}; it must be between 1 and 512", j.count),
                        "set the number of virtual jigs, e.g. 8",
                    ));
                }
                if j.serial_prefix.is_empty()
                    || !j
                        .serial_prefix
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(invalid(
                        "jigs.serial_prefix",
                        format!("is {:?}", j.serial_prefix),
                        "use letters, digits, '-' or '_' (serials become thing names)",
                    ));
                }
            }
            JigMode::Serial => {
                if j.boards_hold_root_ca {
                    return Err(invalid(
                        "jigs.boards_hold_root_ca",
                        "is true but jigs.mode is \"serial\": it sets up virtual boards only"
                            .into(),
                        "remove it; real boards hold what their firmware holds, and jigs.skip_held finds it",
                    ));
                }
                if j.ports.is_empty() {
                    return Err(invalid(
                        "jigs.ports",
                        "is empty but jigs.mode is \"serial\"".into(),
                        "add [[jigs.ports]] entries with name and path (see `station ports`)",
                    ));
                }
                let mut names = std::collections::HashSet::new();
                for (i, p) in j.ports.iter().enumerate() {
                    if p.name.is_empty() || !names.insert(p.name.as_str()) {
                        return Err(invalid(
                            &format!("jigs.ports[{i}].name"),
                            format!("{:?} is empty or used twice", p.name),
                            "give every jig its own name (it appears in the ledger and reports)",
                        ));
                    }
                    if p.data_bits.is_some_and(|b| !(5..=8).contains(&b)) {
                        return Err(invalid(
                            &format!("jigs.ports[{i}].data_bits"),
                            format!("is {}", p.data_bits.unwrap_or(0)),
                            "use 5, 6, 7 or 8 (8 is usual)",
                        ));
                    }
                    if !matches!(p.driver, DriverKind::Nrf91At | DriverKind::ZephyrCred)
                        && (p.sec_tag.is_some() || p.write_root_ca.is_some())
                    {
                        let key = if p.sec_tag.is_some() {
                            "sec_tag"
                        } else {
                            "write_root_ca"
                        };
                        return Err(invalid(
                            &format!("jigs.ports[{i}].{key}"),
                            format!("is set but the port's driver is {:?}", p.driver.as_str()),
                            "sec_tag and write_root_ca are nrf91-at and zephyr-cred options: set the port's driver or remove them",
                        ));
                    }
                    if p.sec_tag.is_some_and(|t| t > MAX_SEC_TAG) {
                        return Err(invalid(
                            &format!("jigs.ports[{i}].sec_tag"),
                            format!("is {}", p.sec_tag.unwrap_or(0)),
                            "use 0 to 2147483647 (larger tags are reserved for the modem)",
                        ));
                    }
                    let zephyr_only = [
                        ("identity_command", p.identity_command.is_some()),
                        ("chunk", p.chunk.is_some()),
                        ("buf_load", p.buf_load.is_some()),
                    ];
                    if let Some((key, _)) = zephyr_only
                        .iter()
                        .find(|(_, set)| *set && p.driver != DriverKind::ZephyrCred)
                    {
                        return Err(invalid(
                            &format!("jigs.ports[{i}].{key}"),
                            format!("is set but the port's driver is {:?}", p.driver.as_str()),
                            "it is a zephyr-cred option: set driver = \"zephyr-cred\" or remove it",
                        ));
                    }
                    if p.chunk
                        .is_some_and(|c| c == 0 || c % 4 != 0 || c > ZEPHYR_MAX_CHUNK)
                    {
                        return Err(invalid(
                            &format!("jigs.ports[{i}].chunk"),
                            format!("is {}", p.chunk.unwrap_or(0)),
                            "use a multiple of 4 from 4 to 244 (`cred buf <chunk>` must fit the shell's 256-byte command buffer); 48 is what Zephyr's own installer sends",
                        ));
                    }
                    if p.identity_command
                        .as_deref()
                        .is_some_and(|c| c.trim().is_empty() || c.chars().any(|ch| ch.is_control()))
                    {
                        return Err(invalid(
                            &format!("jigs.ports[{i}].identity_command"),
                            "is empty or holds control characters".into(),
                            "give one shell command line, e.g. \"hwinfo devid\"",
                        ));
                    }
                    if p.stop_bits.is_some_and(|b| b != 1 && b != 2) {
                        return Err(invalid(
                            &format!("jigs.ports[{i}].stop_bits"),
                            format!("is {}", p.stop_bits.unwrap_or(0)),
                            "use 1 or 2",
                        ));
                    }
                }
            }
        }
        self.check_key_source_and_drivers(path)?;
        if j.timeout_ms < 10 {
            return Err(invalid(
                "jigs.timeout_ms",
                format!("is {} ms", j.timeout_ms),
                "allow the board at least 10 ms to answer a frame; 250 ms is a safe default",
            ));
        }
        Ok(())
    }
}

/// The dotted key path (`section.key`) of the line holding `offset`, if that line is a
/// `key = value` line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let line = &text[line_start..line_end];
    let key = line.split_once('=')?.0.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let section = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    })
}

/// The `{name}` placeholders used in a parameter value.
pub fn placeholders(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                out.push(&after[..end]);
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out
}

/// Fills `{name}` placeholders from `values`; returns the first placeholder with no value.
pub fn fill_placeholders<'a>(
    value: &'a str,
    values: &dyn Fn(&str) -> Option<String>,
) -> Result<String, &'a str> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        out.push_str(&values(name).ok_or(name)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests;
