//! The fleet-provisioning APIs the broker routes reserved topics to, one file per API (as
//! mini-redis keeps one file per command): each decodes its request in the topic's format,
//! applies itself to the CA and registry, and answers with an accepted payload or a
//! [`Rejection`] from the error table.

mod create_certificate_from_csr;
mod register_thing;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};

use super::ca::CertificateAuthority;
use super::errors::Rejection;
use super::registry::Registry;
use super::template::TemplateStore;
use crate::fleet::payloads::encode;
use crate::fleet::{Api, Format, ReplyKind};

/// One request as the broker received it.
#[derive(Debug, Clone)]
pub struct ApiRequest {
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
pub struct ApiReply {
    pub topic: String,
    pub kind: ReplyKind,
    pub payload: Bytes,
}

/// Settings of the API layer.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// How long an ownership token stays valid (AWS: one hour).
    pub token_ttl: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            token_ttl: Duration::from_secs(3600),
        }
    }
}

/// The fleet-provisioning service behind the broker.
pub struct ApiService {
    pub(crate) ca: Arc<CertificateAuthority>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) templates: Arc<TemplateStore>,
    pub(crate) settings: ApiSettings,
    rng: SystemRandom,
}

impl ApiService {
    pub fn new(
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
            rng: SystemRandom::new(),
        }
    }

    /// Handles one request and builds the reply.
    pub async fn handle(&self, req: ApiRequest) -> ApiReply {
        let format = req.format;
        let result = match &req.api {
            Api::CreateCertificateFromCsr => create_certificate_from_csr::handle(self, &req)
                .await
                .map(|r| encode(format, &r)),
            Api::RegisterThing { template } => register_thing::handle(self, template, &req)
                .await
                .map(|r| encode(format, &r)),
            Api::CreateKeysAndCertificate => Err(Rejection::InvalidPayload(
                "CreateKeysAndCertificate is not served by this emulator build".into(),
            )),
        };
        let (kind, payload) = match result {
            Ok(p) => (ReplyKind::Accepted, p),
            Err(rejection) => {
                tracing::debug!(api = req.api.name(), client = %req.client_id, ?rejection, "rejected");
                (
                    ReplyKind::Rejected,
                    encode(format, &rejection.to_response()),
                )
            }
        };
        ApiReply {
            topic: req.api.reply_topic(format, kind),
            kind,
            payload: Bytes::from(payload),
        }
    }

    /// A fresh opaque ownership token (48 random bytes, hex).
    fn new_token(&self) -> String {
        let mut bytes = [0u8; 48];
        self.rng
            .fill(&mut bytes)
            .expect("the system random source is available");
        hex::encode(bytes)
    }
}
