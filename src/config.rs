//! The `station.toml` schema and its validation.
//!
//! Every error names the key and the fix: a TOML or type error points at the offending text
//! (with the file shown by miette), and semantic checks (`sessions = 0`, a placeholder nobody
//! fills, ...) name the key path, e.g. `provision.sessions`.
//!
//! - this file: [`Config`], parsing, the checks that need the whole file, command-line
//!   [`Overrides`], [`ConfigError`], parameter placeholders;
//! - `sections`: `[station]`, `[endpoint]`, `[provision]`, `[keys]`, `[telemetry]` and their
//!   defaults;
//! - `jigs`: `[jigs]`, its ports' serial settings and drivers, and their defaults;
//! - `tests`: parsing, defaults and validation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use miette::{NamedSource, SourceSpan};
use serde::Deserialize;

use crate::emulator::EmulatorConfig;
use crate::fleet::{MqttVersion, validate_template_name};
use crate::jig::{DriverKind, ZEPHYR_MAX_CHUNK};
use crate::keys::KeySource;

mod jigs;
mod sections;

pub use self::jigs::*;
pub use self::sections::*;

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
