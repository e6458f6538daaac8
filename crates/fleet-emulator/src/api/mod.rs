//! The fleet-provisioning APIs the broker routes reserved topics to, one file per API (as
//! mini-redis keeps one file per command): each decodes its request in the topic's format,
//! applies itself to the CA and registry, and answers with an accepted payload or a
//! [`Rejection`] from the error table.
//!
//! - `create_keys_and_certificate`: RSA-2048 key from the [`KeyStock`], certificate, token.
//! - `create_certificate_from_csr`: CSR checked and signed, certificate, token.
//! - `register_thing`: token redeemed, pre-provisioning hook ([`Hooks`]), template applied.
//! - `registry_rules`: what RegisterThing checks on the thing it stores (attribute count,
//!   and optionally that its thing type and groups exist).

mod create_certificate_from_csr;
mod create_keys_and_certificate;
mod register_thing;
mod registry_rules;

pub(crate) use registry_rules::{Existing, RegistryRules};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};

use super::ca::{CertificateAuthority, IssuedCertificate};
use super::errors::Rejection;
use super::faults::Faults;
use super::hook::Hooks;
use super::key_stock::KeyStock;
use super::quota::{QuotaConfig, Quotas};
use super::registry::{
    CertStatus, Certificate, Commit, Registry, RegistryError, TokenRecord, now_ms,
};
use super::template::TemplateStore;
use crate::fleet::payloads::encode;
use crate::fleet::{Api, Format, ReplyKind};

/// One request as the broker received it.
#[derive(Debug, Clone)]
pub(crate) struct ApiRequest {
    pub api: Api,
    pub format: Format,
    pub payload: Bytes,
    /// MQTT client id of the requesting connection.
    pub client_id: String,
    /// Certificate id of the requesting connection's client certificate.
    pub principal: String,
}

/// The answer: which reply topic and the encoded payload.
#[derive(Debug, Clone)]
pub(crate) struct ApiReply {
    pub topic: String,
    pub payload: Bytes,
    /// Fault injection (`duplicate_reply_after_ms`): publish this reply once more on the
    /// same connection this long after the first.
    pub duplicate_after: Option<Duration>,
}

/// Settings of the API layer.
#[derive(Debug, Clone)]
pub(crate) struct ApiSettings {
    /// How long an ownership token stays valid (AWS: one hour).
    pub token_ttl: Duration,
    /// What RegisterThing checks on the thing it stores.
    pub registry_rules: RegistryRules,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            token_ttl: Duration::from_secs(3600),
            registry_rules: RegistryRules::default(),
        }
    }
}

/// RSA keys kept ready by default (see [`KeyStock`]).
pub(crate) const DEFAULT_RSA_STOCK: usize = 8;

/// The fleet-provisioning service behind the broker.
pub(crate) struct ApiService {
    pub(crate) ca: Arc<CertificateAuthority>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) templates: Arc<TemplateStore>,
    pub(crate) settings: ApiSettings,
    pub(crate) keys: KeyStock,
    pub(crate) hooks: Hooks,
    pub(crate) quotas: Quotas,
    pub(crate) faults: Faults,
    /// errorCode renames (`[emulator.error_codes]`).
    pub(crate) error_codes: BTreeMap<String, String>,
    rng: SystemRandom,
    /// Counts the tokens issued, for their ordering prefix.
    token_seq: AtomicU64,
}

impl ApiService {
    /// A service with the default key stock (one worker) and no Lambda ARN mapped for hooks.
    pub(crate) fn new(
        ca: Arc<CertificateAuthority>,
        registry: Arc<Registry>,
        templates: Arc<TemplateStore>,
        settings: ApiSettings,
    ) -> ApiService {
        ApiService {
            ca,
            registry,
            templates,
            settings,
            keys: KeyStock::new(DEFAULT_RSA_STOCK, 1),
            hooks: Hooks::default(),
            quotas: Quotas::new(&QuotaConfig::default()),
            faults: Faults::default(),
            error_codes: BTreeMap::new(),
            rng: SystemRandom::new(),
            token_seq: AtomicU64::new(0),
        }
    }

    /// Enforces these account quotas.
    pub(crate) fn with_quotas(mut self, quotas: Quotas) -> ApiService {
        self.quotas = quotas;
        self
    }

    /// Injects these faults.
    pub(crate) fn with_faults(mut self, faults: Faults) -> ApiService {
        self.faults = faults;
        self
    }

    /// Renames errorCodes of the error table (where AWS's exact strings are unconfirmed).
    pub(crate) fn with_error_codes(mut self, codes: BTreeMap<String, String>) -> ApiService {
        self.error_codes = codes;
        self
    }

    /// The fault plan (tests change it while the emulator runs).
    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Uses this stock of RSA keys for `CreateKeysAndCertificate`.
    pub(crate) fn with_key_stock(mut self, keys: KeyStock) -> ApiService {
        self.keys = keys;
        self
    }

    /// Calls pre-provisioning hooks through this table and deadline.
    pub(crate) fn with_hooks(mut self, hooks: Hooks) -> ApiService {
        self.hooks = hooks;
        self
    }

    /// Handles one request and builds the reply.
    pub(crate) async fn handle(&self, req: ApiRequest) -> ApiReply {
        let format = req.format;
        let fault = self.faults.decide(&req.api);
        if !fault.delay.is_zero() {
            tokio::time::sleep(fault.delay).await;
        }
        let admitted = if fault.throttle {
            Err(Rejection::Throttled(req.api.name()))
        } else if fault.error_500 {
            Err(Rejection::Internal(
                "Internal failure (injected by the emulator's fault plan).".into(),
            ))
        } else {
            self.quotas.admit(&req.api)
        };
        let result = match (&req.api, admitted) {
            (_, Err(rejection)) => Err(rejection),
            (Api::CreateCertificateFromCsr, Ok(())) => {
                create_certificate_from_csr::handle(self, &req, fault.foreign_certificate)
                    .await
                    .map(|r| encode(format, &r))
            }
            (Api::RegisterThing { template }, Ok(())) => {
                register_thing::handle(self, template, &req)
                    .await
                    .map(|r| encode(format, &r))
            }
            (Api::CreateKeysAndCertificate, Ok(())) => {
                create_keys_and_certificate::handle(self, &req)
                    .await
                    .map(|r| encode(format, &r))
            }
        };
        let (kind, payload) = match result {
            Ok(p) => (ReplyKind::Accepted, p),
            Err(rejection) => {
                tracing::debug!(api = req.api.name(), client = %req.client_id, ?rejection, "rejected");
                (
                    ReplyKind::Rejected,
                    encode(format, &rejection.to_response_with(&self.error_codes)),
                )
            }
        };
        ApiReply {
            topic: req.api.reply_topic(format, kind),
            payload: Bytes::from(payload),
            duplicate_after: fault
                .duplicate_after
                .filter(|_| kind == ReplyKind::Accepted),
        }
    }

    /// A fresh opaque ownership token, hex: 8 bytes that order tokens by issue time (the
    /// milliseconds, then a counter; nothing secret), then 48 random bytes.
    ///
    /// Only its hash is stored, after the ordering prefix ([`token_key`](crate::registry::token_key)).
    /// It is bound to the one certificate it was issued with.
    fn new_token(&self) -> String {
        let mut bytes = [0u8; 8 + 48];
        let order = (now_ms() << 16) | (self.token_seq.fetch_add(1, Ordering::Relaxed) & 0xffff);
        bytes[..8].copy_from_slice(&order.to_be_bytes());
        self.rng
            .fill(&mut bytes[8..])
            .expect("the system random source is available");
        hex::encode(bytes)
    }
}

/// Registers a just-issued certificate as `PENDING_ACTIVATION` with a new ownership token
/// (valid for the configured TTL), and returns the token once both are committed. A commit
/// that fails is not acknowledged: 500 `InternalFailure`.
async fn register_new_certificate(
    svc: &ApiService,
    issued: &IssuedCertificate,
) -> Result<String, Rejection> {
    let token = svc.new_token();
    let now = now_ms();
    let ttl_ms = u64::try_from(svc.settings.token_ttl.as_millis()).unwrap_or(u64::MAX);
    let commit = {
        let mut txn = svc.registry.txn();
        let token_key = txn.put_token(
            &token,
            TokenRecord {
                certificate_id: issued.id.clone(),
                expires_ms: now.saturating_add(ttl_ms),
                used: false,
            },
        );
        txn.put_certificate(Certificate {
            id: issued.id.clone(),
            pem: issued.pem.clone(),
            status: CertStatus::PendingActivation,
            created_ms: now,
            policies: Default::default(),
            things: Default::default(),
            claim: false,
            subject: issued.subject.clone(),
            token_key: Some(token_key),
        });
        txn.commit()
    };
    durable(commit, "certificate", &issued.id).await?;
    Ok(token)
}

/// A registry that could not be read (a corrupt row, a failing disk; the registry logged it,
/// with table and key) fails the request as a failed commit does: 500 `InternalFailure`.
impl From<RegistryError> for Rejection {
    fn from(e: RegistryError) -> Self {
        tracing::error!(error = %e, "emulator: the registry could not be read; answering 500");
        Rejection::Internal("The service could not read its registry.".into())
    }
}

/// Waits for a commit; a failed one is logged and answered 500 `InternalFailure`.
async fn durable(commit: Commit, what: &str, id: &str) -> Result<(), Rejection> {
    commit.durable().await.map_err(|e| {
        tracing::error!(error = %e, %what, %id, "emulator: a change could not be committed; answering 500");
        Rejection::Internal(format!("The service could not store the {what}."))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::registry::{ORDERED_TOKEN_LEN, TOKEN_ORDER_HEX, token_key};

    #[test]
    fn tokens_follow_their_issue_order_and_so_do_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let svc = ApiService::new(
            Arc::new(CertificateAuthority::load_or_create(dir.path()).unwrap()),
            Registry::open_state_dir(dir.path()).unwrap(),
            Arc::new(TemplateStore::new()),
            ApiSettings::default(),
        );
        let tokens: Vec<String> = (0..2000).map(|_| svc.new_token()).collect();
        for t in &tokens {
            assert_eq!(t.len(), ORDERED_TOKEN_LEN, "{t}");
            assert!(t.bytes().all(|b| b.is_ascii_hexdigit()), "{t}");
        }
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "issue order");
        let randoms: HashSet<&str> = tokens.iter().map(|t| &t[TOKEN_ORDER_HEX..]).collect();
        assert_eq!(randoms.len(), tokens.len(), "the random part differs");
        let keys: Vec<String> = tokens.iter().map(|t| token_key(t)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys in issue order");
        for (t, k) in tokens.iter().zip(&keys) {
            assert!(k.starts_with(&t[..TOKEN_ORDER_HEX]));
            assert!(
                !k.contains(&t[TOKEN_ORDER_HEX..]),
                "the secret part is not stored"
            );
        }
    }
}
