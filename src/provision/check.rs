//! `station check`: the first thing to run on line day. Connects with the claim certificate,
//! subscribes to the template's topics one API at a time and reports what works — TLS
//! handshake, CONNACK, each SUBACK — without provisioning anything.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::session::{Session, SessionConfig, SessionError};
use crate::fleet::{Api, Format};

/// One step of the check.
#[derive(Debug, Clone)]
pub struct Step {
    pub what: String,
    pub ok: bool,
    pub detail: String,
    /// What to do when it failed.
    pub help: Option<String>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {}: {}",
            if self.ok { " ok " } else { "FAIL" },
            self.what,
            self.detail
        )?;
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
    pub mqtt_version: u8,
    pub timeout: Duration,
}

fn help_for(e: &SessionError) -> String {
    match e {
        SessionError::Connect { reason, .. } if reason.contains("certificate") || reason.contains("Certificate") => {
            "the TLS handshake failed: check endpoint.root_ca (Amazon Root CA 1 for AWS) and that the claim certificate is registered and ACTIVE in this account and region".into()
        }
        SessionError::Connect { .. } => {
            "check endpoint.endpoint and endpoint.port (8883, or 443 with ALPN) and that this machine reaches it".into()
        }
        SessionError::Refused { .. } => {
            "the claim policy must allow iot:Connect for this client id (client ids are <station.id>-<n>)".into()
        }
        SessionError::SubscribeRefused { .. } | SessionError::Disconnected { .. } => {
            "the claim policy must allow iot:Subscribe on the topic filters above and iot:Publish/iot:Receive on their topics (MQTT 3.1.1 connections are closed on a policy violation)".into()
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
    let mut session = match Session::connect_only(&session_cfg).await {
        Ok(s) => {
            steps.push(Step {
                what: "TLS handshake and CONNECT".into(),
                ok: true,
                detail: format!(
                    "{endpoint} accepted the claim certificate; CONNACK success for client id {} (MQTT {})",
                    cfg.client_id,
                    if cfg.mqtt_version == 5 { "5" } else { "3.1.1" }
                ),
                help: None,
            });
            s
        }
        Err(e) => {
            steps.push(Step {
                what: "TLS handshake and CONNECT".into(),
                ok: false,
                detail: e.to_string(),
                help: Some(help_for(&e)),
            });
            return steps;
        }
    };
    for api in &cfg.apis {
        match session.subscribe_api(api).await {
            Ok(granted) => steps.push(Step {
                what: format!("SUBSCRIBE {} replies", api.name()),
                ok: true,
                detail: granted
                    .iter()
                    .map(|(f, q)| format!("{f} (QoS {q})"))
                    .collect::<Vec<_>>()
                    .join(", "),
                help: None,
            }),
            Err(e) => {
                steps.push(Step {
                    what: format!("SUBSCRIBE {} replies", api.name()),
                    ok: false,
                    detail: e.to_string(),
                    help: Some(help_for(&e)),
                });
                return steps;
            }
        }
    }
    session.close().await;
    steps
}
