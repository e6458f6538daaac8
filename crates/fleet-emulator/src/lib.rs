//! An embedded emulator of AWS IoT Core's fleet-provisioning API.
//!
//! It is the station's default endpoint (so `station run` works on one machine) and the test
//! bed for load tests. It depends only on the wire contract (`fleet-wire`, here
//! `crate::fleet`) and three small utilities (`fleet-util`: `crate::shutdown`,
//! `crate::token_bucket`, `crate::files`); nothing of the station, and the compiler holds it
//! to that. Where AWS documents a behaviour it does exactly that; where AWS is silent, the
//! choice is stated where it is made (see `docs/emulator.md` at the repository root). The
//! facts it follows are in `docs/aws-fleet-provisioning.md`, cited by section (§N).
//!
//! This file holds [`Emulator`] (start, live fault changes, stop) and [`EmulatorError`]. The
//! modules:
//!
//! - `config`: the `[emulator]` section ([`EmulatorConfig`]) and its typed check error
//!   ([`InvalidSetting`]).
//! - [`broker`]: MQTT over mutual TLS, client table, topic routing.
//! - `api`: one file per fleet-provisioning API.
//! - [`ca`]: root CA, server and claim identities, signing from CSRs and for emulator keys.
//! - [`key_stock`]: RSA-2048 keys made ahead by worker threads for CreateKeysAndCertificate.
//! - [`hook`]: the pre-provisioning hook (command, HTTP, Lambda ARN table).
//! - [`template`]: the provisioning template engine and the template store.
//! - [`registry`]: certificates, tokens, things and policies, persisted in SQLite; a reply
//!   that follows a change waits until the change is committed.
//! - [`control`]: AWS IoT control-plane operations on the registry (describe, list, detach,
//!   update and delete certificates), for orphan cleanup.
//! - [`faults`]: fault injection (delays, errors, throttling, slow disk, duplicate replies).
//! - [`quota`]: account TPS quotas per API.
//! - [`policy`]: IoT policy evaluation for CONNECT/PUBLISH/SUBSCRIBE/RECEIVE.
//! - `errors`: the table of every rejected response the emulator sends.

#![warn(unreachable_pub)]

pub(crate) mod api;
pub mod broker;
pub mod ca;
mod config;
pub mod control;
pub(crate) mod errors;
pub mod faults;
pub mod hook;
pub mod key_stock;
pub mod policy;
pub mod quota;
pub mod registry;
pub mod template;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use self::api::{ApiService, ApiSettings};
use self::broker::{Broker, BrokerLimits};
use self::ca::{CaPaths, CertificateAuthority};
use self::faults::{FaultConfig, Faults};
use self::hook::Hooks;
use self::key_stock::KeyStock;
use self::quota::Quotas;
use self::registry::{CertStatus, Certificate, Policy, Registry, now_ms};
use self::template::TemplateStore;
use crate::shutdown::Shutdown;

pub use self::config::{EmulatorConfig, InvalidSetting};

// The wire contract and the utilities under the names the emulator's modules use.
pub(crate) use fleet_util::{files, shutdown, token_bucket};
pub(crate) use fleet_wire as fleet;

/// The name under which the claim policy is registered.
pub(crate) const CLAIM_POLICY_NAME: &str = "FleetStationClaimPolicy";

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum EmulatorError {
    #[error("emulator state directory {path}: {source}")]
    #[diagnostic(
        code(station::emulator::state_dir),
        help("set [emulator] state_dir to a directory the station can create and write")
    )]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("emulator CA: {0}")]
    #[diagnostic(
        code(station::emulator::ca),
        help("delete the CA files in [emulator] state_dir to let the emulator create new ones")
    )]
    Ca(#[from] ca::CaError),
    #[error("emulator registry: {0}")]
    #[diagnostic(
        code(station::emulator::registry),
        help("check that [emulator] state_dir is writable; delete registry.db to start empty")
    )]
    Registry(#[from] registry::RegistryError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Templates(#[from] template::StoreError),
    #[error("claim policy {path}: {reason}")]
    #[diagnostic(
        code(station::emulator::claim_policy),
        help(
            "[emulator] claim_policy must name a JSON IoT policy document with a Statement \
             list whose conditions the emulator evaluates (docs/emulator.md, \"Policies\")"
        )
    )]
    ClaimPolicy { path: PathBuf, reason: String },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Hooks(#[from] hook::HookConfigError),
    #[error("[emulator] `{key}`: {0}", key = .0.key())]
    #[diagnostic(transparent)]
    Config(#[from] InvalidSetting),
    #[error("emulator TLS setup: {0}")]
    #[diagnostic(
        code(station::emulator::tls),
        help(
            "the CA or server identity in [emulator] state_dir cannot serve TLS; delete its .pem \
             files to let the emulator create new ones (devices then need new certificates)"
        )
    )]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on {listen}: {source}")]
    #[diagnostic(
        code(station::emulator::listen),
        help("choose a free address in [emulator] listen (port 0 picks any free port)")
    )]
    Listen {
        listen: String,
        source: std::io::Error,
    },
}

/// A running emulator.
pub struct Emulator {
    broker: Broker,
    api: Arc<ApiService>,
    registry: Arc<Registry>,
    paths: CaPaths,
    shutdown: Shutdown,
}

impl Emulator {
    /// Loads or creates the CA, registry and templates, then starts the broker.
    pub async fn start(
        cfg: &EmulatorConfig,
        shutdown: Shutdown,
    ) -> Result<Emulator, EmulatorError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.state_dir).map_err(|source| EmulatorError::StateDir {
            path: cfg.state_dir.clone(),
            source,
        })?;
        let ca = Arc::new(CertificateAuthority::load_or_create(&cfg.state_dir)?);
        let registry = Registry::open_state_dir(&cfg.state_dir)?;
        registry.set_storage_delay(Duration::from_millis(cfg.faults.storage_delay_ms));
        let templates = Arc::new(TemplateStore::load_dir(&cfg.templates)?);
        let claim_policy = load_claim_policy(cfg.claim_policy.as_deref())?;
        register_claim(&registry, &ca, claim_policy);

        let hooks = Hooks::new(&cfg.hooks, Duration::from_millis(cfg.hook_timeout_ms))?;
        for t in templates.names().filter_map(|n| templates.get(n)) {
            if let Some(h) = t.hook.as_ref().filter(|h| !hooks.is_mapped(&h.target_arn)) {
                tracing::info!(
                    template = %t.name,
                    target = %h.target_arn,
                    "emulator: this template's pre-provisioning hook is not mapped in \
                     [emulator.hooks]; its RegisterThing requests will be rejected (403)"
                );
            }
        }
        let api = Arc::new(
            ApiService::new(
                ca.clone(),
                registry.clone(),
                templates,
                ApiSettings {
                    token_ttl: Duration::from_secs(cfg.token_ttl_s),
                    registry_rules: registry_rules(cfg),
                },
            )
            .with_key_stock(KeyStock::new(cfg.rsa_stock, cfg.rsa_workers))
            .with_hooks(hooks)
            .with_quotas(Quotas::new(&cfg.quotas))
            .with_faults(Faults::new(cfg.faults.clone()))
            .with_error_codes(cfg.error_codes.clone()),
        );
        let tls = broker::server_tls_config(&ca)?;
        let broker = Broker::start(
            &cfg.listen,
            cfg.alpn_listen.as_deref(),
            tls,
            registry.clone(),
            api.clone(),
            BrokerLimits::resolve(cfg.broker_profile, &cfg.broker_limits),
            shutdown.clone(),
        )
        .await
        .map_err(|e| EmulatorError::Listen {
            listen: e.addr,
            source: e.source,
        })?;
        tokio::spawn(expire_tokens(
            registry.clone(),
            Duration::from_secs(cfg.token_ttl_s.clamp(1, 60)),
            shutdown.clone(),
        ));
        Ok(Emulator {
            broker,
            api,
            registry,
            paths: ca.paths().clone(),
            shutdown,
        })
    }

    /// Replaces the fault plan while the emulator runs.
    pub fn set_faults(&self, faults: FaultConfig) {
        self.registry
            .set_storage_delay(Duration::from_millis(faults.storage_delay_ms));
        self.api.faults().set(faults);
    }

    /// The address the broker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.broker.local_addr()
    }

    /// The address of the listener that requires ALPN `x-amzn-mqtt-ca`, if `alpn_listen`
    /// is set.
    pub fn alpn_addr(&self) -> Option<SocketAddr> {
        self.broker.alpn_addr()
    }

    /// Paths of `ca.pem`, `claim-cert.pem` and `claim-key.pem`.
    pub fn paths(&self) -> &CaPaths {
        &self.paths
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn connected_clients(&self) -> usize {
        self.broker.connected_clients()
    }

    /// Stops accepting and closes every connection; the registry is flushed to disk.
    pub fn stop(&self) {
        self.shutdown.trigger();
        if let Err(e) = self.registry.flush() {
            tracing::error!(error = %e, "emulator: the registry could not be saved at stop");
        }
    }
}

/// `require_thing_types_and_groups` and the names that exist, as RegisterThing checks them.
fn registry_rules(cfg: &EmulatorConfig) -> api::RegistryRules {
    let set = |names: &[String]| names.iter().cloned().collect();
    api::RegistryRules {
        existing: cfg.require_thing_types_and_groups.then(|| api::Existing {
            thing_types: set(&cfg.thing_types),
            thing_groups: set(&cfg.thing_groups),
            billing_groups: set(&cfg.billing_groups),
        }),
    }
}

fn load_claim_policy(path: Option<&Path>) -> Result<serde_json::Value, EmulatorError> {
    let Some(path) = path else {
        return Ok(policy::default_claim_policy());
    };
    let bad = |reason: String| EmulatorError::ClaimPolicy {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    // Checked as AWS checks a policy document it is given (an unknown condition operator or
    // key is refused here, not evaluated as a silent allow or deny).
    policy::PolicyDocument::parse(&doc).map_err(|e| bad(e.to_string()))?;
    Ok(doc)
}

/// Registers the claim certificate as ACTIVE with the claim policy attached.
fn register_claim(registry: &Registry, ca: &CertificateAuthority, policy_doc: serde_json::Value) {
    let id = ca.claim_certificate_id();
    let mut txn = registry.txn();
    txn.put_policy(Policy {
        name: CLAIM_POLICY_NAME.into(),
        document: policy_doc,
    });
    let mut policies = std::collections::BTreeSet::new();
    policies.insert(CLAIM_POLICY_NAME.to_string());
    let pem = std::fs::read_to_string(&ca.paths().claim_cert).unwrap_or_default();
    txn.put_certificate(Certificate {
        id,
        pem,
        status: CertStatus::Active,
        created_ms: now_ms(),
        policies,
        things: Default::default(),
        claim: true,
        subject: Default::default(),
        token_key: None,
    });
}

async fn expire_tokens(registry: Arc<Registry>, every: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        match registry.expire_tokens(now_ms()) {
            Ok(deleted) if !deleted.is_empty() => tracing::info!(
                count = deleted.len(),
                "emulator: deleted certificates whose ownership token expired"
            ),
            Ok(_) => {}
            // Nothing was changed; the next tick tries again.
            Err(e) => {
                tracing::error!(error = %e, "emulator: token expiry could not read the registry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use miette::Diagnostic;

    use super::control::ControlError;
    use super::template::{StoreError, TemplateError};
    use super::*;

    /// Every operator-facing error of the emulator: its code is under `station::emulator::`
    /// and it says what to do.
    #[test]
    fn every_diagnostic_has_a_station_emulator_code_and_a_help() {
        let io = || std::io::Error::other("denied");
        let path = PathBuf::from("x");
        let template = TemplateError::invalid("Resources", "bad");
        let errors: Vec<Box<dyn Diagnostic>> = vec![
            Box::new(EmulatorError::StateDir {
                path: path.clone(),
                source: io(),
            }),
            Box::new(EmulatorError::Ca(ca::CaError::BadPem {
                path: path.clone(),
                reason: "r".into(),
            })),
            Box::new(EmulatorError::Registry(registry::RegistryError::Sqlite {
                path: "x".into(),
                source: rusqlite::Error::InvalidQuery,
            })),
            Box::new(EmulatorError::ClaimPolicy {
                path: path.clone(),
                reason: "r".into(),
            }),
            Box::new(EmulatorError::Config(InvalidSetting::FaultCount)),
            Box::new(EmulatorError::Tls(rustls::Error::NoCertificatesPresented)),
            Box::new(EmulatorError::Listen {
                listen: "x".into(),
                source: io(),
            }),
            Box::new(EmulatorError::Hooks(hook::HookConfigError {
                arn: "a".into(),
                reason: "r".into(),
            })),
            Box::new(StoreError::ReadDir {
                dir: path.clone(),
                source: io(),
            }),
            Box::new(StoreError::ReadFile {
                path: path.clone(),
                source: io(),
            }),
            Box::new(StoreError::FileTooLarge {
                path: path.clone(),
                size: 1,
                max: 0,
            }),
            Box::new(StoreError::BadFileName {
                path: path.clone(),
                reason: "r".into(),
            }),
            Box::new(StoreError::NameMismatch {
                path: path.clone(),
                file_name: "a".into(),
                template_name: "b".into(),
            }),
            Box::new(StoreError::Json {
                path: path.clone(),
                message: "m".into(),
                line: 1,
                column: 1,
            }),
            Box::new(StoreError::Envelope {
                path: path.clone(),
                field: "f".into(),
                message: "m".into(),
                fix: "do this".into(),
            }),
            Box::new(StoreError::Template {
                path,
                source: template.clone(),
            }),
            Box::new(TemplateError::TooLarge { chars: 1 }),
            Box::new(TemplateError::Json {
                message: "m".into(),
                line: 1,
                column: 1,
            }),
            Box::new(template),
            Box::new(ControlError::ResourceNotFoundException("x".into())),
            Box::new(ControlError::DeleteConflictException("x".into())),
            Box::new(ControlError::CertificateStateException("x".into())),
            Box::new(ControlError::InvalidRequestException("x".into())),
            Box::new(ControlError::InternalFailureException("x".into())),
        ];
        for e in &errors {
            let code = e.code().map(|c| c.to_string()).unwrap_or_default();
            assert!(
                code.starts_with("station::emulator::"),
                "{e}: code {code:?}"
            );
            let help = e.help().map(|h| h.to_string()).unwrap_or_default();
            assert!(!help.is_empty(), "{code}: no help");
        }
    }
}
