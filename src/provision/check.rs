//! `station check`: the first thing to run on line day. Connects with the claim certificate,
//! subscribes to the template's topics one API at a time, then sends requests that create
//! nothing and reads the answers — and says plainly what it could not check.
//!
//! - TLS handshake and CONNECT (a refusal is mapped to what the claim policy must allow).
//! - SUBSCRIBE to each API's accepted/rejected topics.
//! - `CreateCertificateFromCsr` with a payload that is not a CSR: a 4xx answer on the rejected
//!   topic proves iot:Publish on the request topic and iot:Receive on its replies, and no
//!   certificate is created.
//! - `RegisterThing` with a token that is not a token: "template not found" (404) says the
//!   template does not exist; a refused token says the template topic works. (AWS may check
//!   the token before the template; the check says so.)
//! - `CreateKeysAndCertificate` cannot be tried without creating a certificate: not checked.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::health::LineError;
use super::session::{ErrorClass, Reply, Session, SessionConfig, SessionError, Verdict};
use crate::fleet::payloads::encode;
use crate::fleet::{
    Api, CreateCertificateFromCsrRequest, Format, MqttVersion, RegisterThingRequest,
};

/// How a step came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// The check cannot try this without side effects; it says what remains to be seen.
    NotChecked,
}

/// One step of the check.
#[derive(Debug, Clone)]
pub struct Step {
    pub what: String,
    pub status: Status,
    pub detail: String,
    /// What to do when it failed.
    pub help: Option<String>,
}

impl Step {
    pub fn ok(&self) -> bool {
        self.status != Status::Fail
    }

    fn pass(what: impl Into<String>, detail: impl Into<String>) -> Step {
        Step {
            what: what.into(),
            status: Status::Pass,
            detail: detail.into(),
            help: None,
        }
    }

    fn fail(what: impl Into<String>, detail: impl Into<String>, help: impl Into<String>) -> Step {
        Step {
            what: what.into(),
            status: Status::Fail,
            detail: detail.into(),
            help: Some(help.into()),
        }
    }

    fn unchecked(what: impl Into<String>, detail: impl Into<String>) -> Step {
        Step {
            what: what.into(),
            status: Status::NotChecked,
            detail: detail.into(),
            help: None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Pass => " ok ",
            Status::Fail => "FAIL",
            Status::NotChecked => " -- ",
        };
        write!(f, "[{tag}] {}: {}", self.what, self.detail)?;
        if let Some(h) = &self.help {
            write!(f, "\n       help: {h}")?;
        }
        Ok(())
    }
}

/// What to check.
pub struct CheckConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// The APIs the station will call (their reply topics are subscribed).
    pub apis: Vec<Api>,
    pub format: Format,
    pub mqtt_version: MqttVersion,
    pub timeout: Duration,
}

/// The help for a failed step: the line error's help where the failure is one.
fn help_for(e: &SessionError, client_id: &str) -> String {
    use miette::Diagnostic;
    let line = match e.class() {
        ErrorClass::Permanent => Some(super::call::line_error(e, client_id)),
        _ => None,
    };
    match (line, e) {
        (Some(l), _) => l.help().map(|h| h.to_string()).unwrap_or_default(),
        (None, SessionError::Unreachable { .. } | SessionError::Refused { .. }) => {
            "check endpoint.endpoint and endpoint.port (8883, or 443 with ALPN) and that this machine reaches it".into()
        }
        (None, SessionError::Closed { .. }) => {
            "the claim policy must allow iot:Subscribe on the topic filters above and iot:Publish/iot:Receive on their topics (MQTT 3.1.1 connections are closed on a policy violation; --mqtt-version 5 gets a reason code)".into()
        }
        (None, SessionError::Timeout { .. }) => {
            "no answer came: the claim policy must allow iot:Receive on the /accepted and /rejected reply topics, and the endpoint must be an AWS IoT data endpoint".into()
        }
        _ => "see the message".into(),
    }
}

/// Runs the check; every step is reported, the first failure ends it.
pub async fn run(cfg: &CheckConfig) -> Vec<Step> {
    let mut steps = Vec::new();
    let session_cfg = SessionConfig {
        host: cfg.host.clone(),
        port: cfg.port,
        client_id: cfg.client_id.clone(),
        tls: cfg.tls.clone(),
        format: cfg.format,
        apis: Vec::new(),
        connect_timeout: cfg.timeout,
        keep_alive: Duration::from_secs(60),
        mqtt_version: cfg.mqtt_version,
    };
    let endpoint = format!("{}:{}", cfg.host, cfg.port);
    let what = "TLS handshake and CONNECT";
    let mut session = match Session::connect_only(&session_cfg).await {
        Ok(s) => {
            steps.push(Step::pass(
                what,
                format!(
                    "{endpoint} accepted the claim certificate; CONNACK success for client id {} (MQTT {})",
                    cfg.client_id, cfg.mqtt_version
                ),
            ));
            s
        }
        Err(e) => {
            steps.push(Step::fail(
                what,
                e.to_string(),
                help_for(&e, &cfg.client_id),
            ));
            return steps;
        }
    };
    for api in &cfg.apis {
        let what = format!("SUBSCRIBE {} replies", api.name());
        match session.subscribe_api(api).await {
            Ok(granted) => steps.push(Step::pass(
                what,
                granted
                    .iter()
                    .map(|(f, q)| format!("{f} (QoS {q})"))
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
            Err(e) => {
                steps.push(Step::fail(
                    what,
                    e.to_string(),
                    help_for(&e, &cfg.client_id),
                ));
                return steps;
            }
        }
    }
    for api in &cfg.apis {
        let step = probe(&mut session, api, cfg).await;
        let failed = step.status == Status::Fail;
        steps.push(step);
        if failed {
            return steps;
        }
    }
    steps.push(Step::unchecked(
        "not checked",
        "that the template accepts the parameters of real boards and its policy is what devices need, the pre-provisioning hook, and the account's quotas: the first device of `station run` tries them, and the line stops with a clear error if it is refused",
    ));
    session.close().await;
    steps
}

/// Sends a request of `api` that creates nothing and reads the answer.
async fn probe(session: &mut Session, api: &Api, cfg: &CheckConfig) -> Step {
    let what = format!("{} request and reply", api.name());
    let payload = match api {
        Api::CreateKeysAndCertificate => {
            return Step::unchecked(
                what,
                "any CreateKeysAndCertificate request creates a certificate, so publishing on $aws/certificates/create and receiving its replies is first tried by the first device",
            );
        }
        Api::CreateCertificateFromCsr => encode(
            cfg.format,
            &CreateCertificateFromCsrRequest {
                certificate_signing_request: Some("station check: this is not a CSR".into()),
            },
        ),
        Api::RegisterThing { .. } => encode(
            cfg.format,
            &RegisterThingRequest {
                certificate_ownership_token: Some(crate::fleet::payloads::Secret::new(
                    "station-check-not-a-token",
                )),
                parameters: Some(Default::default()),
            },
        ),
    };
    let topic = api.request_topic(cfg.format);
    match session
        .call(api, payload, cfg.timeout, &|_| Verdict::Take)
        .await
    {
        Ok(Reply::Rejected(err)) if err.status_code == 404 => {
            let template = match api {
                Api::RegisterThing { template } => template.clone(),
                _ => String::new(),
            };
            let line = LineError::TemplateNotFound {
                template,
                message: err.to_string(),
            };
            Step::fail(
                what,
                line.to_string(),
                miette::Diagnostic::help(&line)
                    .map(|h| h.to_string())
                    .unwrap_or_default(),
            )
        }
        Ok(Reply::Rejected(err)) if matches!(api, Api::RegisterThing { .. }) => Step::pass(
            what,
            format!(
                "{topic} answered a token that is not one with {err}: publishing and receiving work and nothing was created. The template exists unless AWS checks the token before the template (the emulator checks the template first)"
            ),
        ),
        Ok(Reply::Rejected(err)) => Step::pass(
            what,
            format!(
                "{topic} answered a request that is not a CSR with {err}: publishing and receiving work and nothing was created"
            ),
        ),
        Ok(Reply::Accepted(_)) => Step::fail(
            what,
            format!("{topic} accepted a request that should have been refused"),
            "this is not how AWS IoT answers: check that endpoint.endpoint is an AWS IoT data endpoint",
        ),
        Err(e) => Step::fail(what, e.to_string(), help_for(&e, &cfg.client_id)),
    }
}
