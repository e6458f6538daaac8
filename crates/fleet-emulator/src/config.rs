//! The `[emulator]` section of `station.toml` ([`EmulatorConfig`]) and the typed error its
//! checks return ([`InvalidSetting`]): the dotted key of the bad value and what is wrong.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::broker::{BrokerLimitOverrides, BrokerProfile};
use super::errors::ERROR_CODES;
use super::faults::{FaultConfig, MAX_DELAY_MS};
use super::quota::QuotaConfig;
use super::template::names;

/// The `[emulator]` section of `station.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatorConfig {
    /// Address to listen on. Port 0 picks a free port (the embedded default).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Directory for the CA, the claim identity and the registry database.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Directory of provisioning templates (`NAME.json`).
    #[serde(default = "default_templates")]
    pub templates: PathBuf,
    /// Path to the claim certificate's IoT policy document; the default allows the
    /// fleet-provisioning topics of every template.
    #[serde(default)]
    pub claim_policy: Option<PathBuf>,
    /// Ownership-token lifetime in seconds (AWS: 3600).
    #[serde(default = "default_token_ttl")]
    pub token_ttl_s: u64,

    // --- API layer: CreateKeysAndCertificate key stock and the pre-provisioning hook ---
    /// RSA-2048 keys kept ready for CreateKeysAndCertificate, made by background workers
    /// from the first such request on. 0: each request makes its key (tens of ms).
    #[serde(default = "default_rsa_stock")]
    pub rsa_stock: usize,
    /// Worker threads that keep the RSA key stock full (at least 1).
    #[serde(default = "default_rsa_workers")]
    pub rsa_workers: usize,
    /// Deadline of one pre-provisioning hook call in milliseconds (AWS: 5000); a hook that
    /// has not answered by then fails the RegisterThing with 403.
    #[serde(default = "default_hook_timeout_ms")]
    pub hook_timeout_ms: u64,
    /// `[emulator.hooks]`: Lambda ARN of a template's `preProvisioningHook` → what to call
    /// instead: `"command:/path/to/program ARGS"` or `"http://host:port/path"`.
    #[serde(default)]
    pub hooks: BTreeMap<String, String>,

    // --- Quotas, fault injection, errorCode names ---
    /// `[emulator.quotas]`: account TPS per API (`profile = "unlimited" | "aws"`).
    #[serde(default)]
    pub quotas: QuotaConfig,
    /// `[emulator.faults]`: fault injection, all off by default.
    #[serde(default)]
    pub faults: FaultConfig,
    /// `[emulator.error_codes]`: rename errorCodes whose AWS spelling is unconfirmed, e.g.
    /// `Throttling = "ThrottlingException"`.
    #[serde(default)]
    pub error_codes: BTreeMap<String, String>,

    // --- MQTT broker ---
    /// Optional second listener, AWS's port-443 style: clients must negotiate the TLS ALPN
    /// protocol `x-amzn-mqtt-ca` or are refused. Same broker as `listen`. Port 0 picks a
    /// free port. Unset: no such listener.
    #[serde(default)]
    pub alpn_listen: Option<String>,
    /// Broker limits to start from: `"unlimited"` (default: no quotas, 128 KB payload) or
    /// `"aws"` (AWS IoT Core's message-broker quotas).
    #[serde(default)]
    pub broker_profile: BrokerProfile,
    /// `[emulator.broker_limits]`: per-limit overrides on top of `broker_profile`
    /// (`0` lifts an optional limit). Keys: see `BrokerLimits`.
    #[serde(default)]
    pub broker_limits: BrokerLimitOverrides,

    // --- Registry ---
    /// Make RegisterThing require, as AWS does, that the thing type, thing groups and billing
    /// group a template names exist: those listed in `thing_types`, `thing_groups` and
    /// `billing_groups`. `false` (the default): every name is taken as existing (created on
    /// first use).
    #[serde(default)]
    pub require_thing_types_and_groups: bool,
    /// Thing types that exist in the emulated account (read with
    /// `require_thing_types_and_groups`).
    #[serde(default)]
    pub thing_types: Vec<String>,
    /// Thing groups that exist (read with `require_thing_types_and_groups`).
    #[serde(default)]
    pub thing_groups: Vec<String>,
    /// Billing groups that exist (read with `require_thing_types_and_groups`).
    #[serde(default)]
    pub billing_groups: Vec<String>,
}

fn default_listen() -> String {
    "127.0.0.1:0".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("state/emulator")
}
fn default_templates() -> PathBuf {
    PathBuf::from("fixtures/templates")
}
fn default_token_ttl() -> u64 {
    3600
}
fn default_rsa_stock() -> usize {
    super::api::DEFAULT_RSA_STOCK
}
fn default_rsa_workers() -> usize {
    1
}
fn default_hook_timeout_ms() -> u64 {
    super::hook::DEFAULT_TIMEOUT.as_millis() as u64
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: default_listen(),
            state_dir: default_state_dir(),
            templates: default_templates(),
            claim_policy: None,
            token_ttl_s: default_token_ttl(),
            rsa_stock: default_rsa_stock(),
            rsa_workers: default_rsa_workers(),
            hook_timeout_ms: default_hook_timeout_ms(),
            hooks: BTreeMap::new(),
            quotas: QuotaConfig::default(),
            faults: FaultConfig::default(),
            error_codes: BTreeMap::new(),
            alpn_listen: None,
            broker_profile: BrokerProfile::default(),
            broker_limits: BrokerLimitOverrides::default(),
            require_thing_types_and_groups: false,
            thing_types: Vec::new(),
            thing_groups: Vec::new(),
            billing_groups: Vec::new(),
        }
    }
}

impl EmulatorConfig {
    /// Checks quotas, faults and errorCode renames (the values serde cannot check); the
    /// error names the first bad key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.quotas.validate()?;
        self.faults.validate()?;
        for (key, names, rule) in [
            ("thing_types", &self.thing_types, &names::THING_TYPE_NAME),
            ("thing_groups", &self.thing_groups, &names::THING_GROUP_NAME),
            (
                "billing_groups",
                &self.billing_groups,
                &names::BILLING_GROUP_NAME,
            ),
        ] {
            if let Some(name) = names.iter().find(|n| !rule.accepts(n)) {
                return Err(InvalidSetting::RegistryName {
                    key,
                    name: name.clone(),
                    rule: rule.description,
                });
            }
        }
        match self
            .error_codes
            .keys()
            .find(|code| !ERROR_CODES.contains(&code.as_str()))
        {
            Some(code) => Err(InvalidSetting::UnknownErrorCode(code.clone())),
            None => Ok(()),
        }
    }
}

/// A value of the `[emulator]` section that the emulator cannot use. [`key`](Self::key) is
/// the dotted key as written in `station.toml`; the `Display` form says what is wrong with
/// its value, to follow the key (e.g. "is 1.5; it must be between 0 and 1").
#[derive(Debug, Clone, PartialEq, thiserror::Error, miette::Diagnostic)]
#[diagnostic(
    code(station::emulator::config),
    help("fix the value in the [emulator] section; README.md lists the keys")
)]
pub enum InvalidSetting {
    /// `emulator.quotas.profile` is neither `unlimited` nor `aws`.
    #[error("{0:?} is not \"unlimited\" or \"aws\"")]
    QuotaProfile(String),
    /// A quota of `emulator.quotas` (`api`: its key there) is negative or not finite.
    #[error("must be a non-negative number of requests per second")]
    Quota { api: &'static str },
    /// A fraction of `emulator.faults` (`key`: its key there) is outside 0..=1.
    #[error("is {value}; it must be between 0 and 1")]
    FaultFraction { key: &'static str, value: f64 },
    /// `drop_after_messages` or `throttle_burst_every` of `emulator.faults` is 0.
    #[error("counts must be at least 1")]
    FaultCount,
    /// A delay of `emulator.faults` (`key`: its key there) is over [`MAX_DELAY_MS`].
    #[error("is {ms}; it must be at most {MAX_DELAY_MS} (ten minutes)")]
    FaultDelay { key: &'static str, ms: u64 },
    /// A name in `emulator.thing_types`, `thing_groups` or `billing_groups` (`key`) breaks
    /// AWS's naming rule for it.
    #[error("holds {name:?}, which is not a valid name: {rule}")]
    RegistryName {
        key: &'static str,
        name: String,
        rule: &'static str,
    },
    /// A key of `emulator.error_codes` is not one of the emulator's errorCodes.
    #[error("{0} is not an errorCode of the emulator; known: {known}", known = ERROR_CODES.join(", "))]
    UnknownErrorCode(String),
}

impl InvalidSetting {
    /// The dotted key of the bad value, e.g. `emulator.faults.error_500_fraction`.
    pub fn key(&self) -> String {
        match self {
            InvalidSetting::QuotaProfile(_) => "emulator.quotas.profile".into(),
            InvalidSetting::Quota { api } => format!("emulator.quotas.{api}"),
            InvalidSetting::FaultFraction { key, .. } | InvalidSetting::FaultDelay { key, .. } => {
                format!("emulator.faults.{key}")
            }
            // Either of two counts; the problem names them both.
            InvalidSetting::FaultCount => "emulator.faults".into(),
            InvalidSetting::UnknownErrorCode(code) => format!("emulator.error_codes.{code}"),
            InvalidSetting::RegistryName { key, .. } => format!("emulator.{key}"),
        }
    }

    /// What is wrong with the value (the `Display` form).
    pub fn problem(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_error_code_is_named_with_the_known_ones() {
        let cfg = EmulatorConfig {
            error_codes: BTreeMap::from([("Slow".to_string(), "SlowDown".to_string())]),
            ..EmulatorConfig::default()
        };
        let e = cfg.validate().unwrap_err();
        assert_eq!(e, InvalidSetting::UnknownErrorCode("Slow".into()));
        assert_eq!(e.key(), "emulator.error_codes.Slow");
        assert!(
            e.problem()
                .starts_with("Slow is not an errorCode of the emulator; known: "),
            "{e}"
        );
        assert_eq!(EmulatorConfig::default().validate(), Ok(()));
    }

    #[test]
    fn registry_names_are_read_and_checked() {
        let cfg: EmulatorConfig = toml::from_str(
            r#"
            require_thing_types_and_groups = true
            thing_types = ["Sensor"]
            thing_groups = ["fleet-a", "fleet:b"]
            "#,
        )
        .unwrap();
        assert!(cfg.require_thing_types_and_groups);
        assert_eq!(cfg.thing_types, ["Sensor"]);
        assert_eq!(cfg.validate(), Ok(()));
        assert!(!EmulatorConfig::default().require_thing_types_and_groups);

        let bad = EmulatorConfig {
            thing_groups: vec!["ok".into(), "has space".into()],
            ..EmulatorConfig::default()
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.key(), "emulator.thing_groups");
        assert_eq!(
            e.problem(),
            "holds \"has space\", which is not a valid name: 1-128 characters from a-z A-Z \
             0-9 : _ -"
        );
    }

    #[test]
    fn the_start_error_names_the_key_with_the_config_code_and_help() {
        use miette::Diagnostic;
        let e = super::super::EmulatorError::from(InvalidSetting::FaultFraction {
            key: "error_500_fraction",
            value: 2.0,
        });
        assert_eq!(
            e.to_string(),
            "[emulator] `emulator.faults.error_500_fraction`: is 2; it must be between 0 and 1"
        );
        assert_eq!(e.code().unwrap().to_string(), "station::emulator::config");
        assert!(e.help().unwrap().to_string().contains("[emulator] section"));
    }
}
