//! The per-device flow: key → `CreateCertificateFromCsr` → `RegisterThing`, each state in the
//! ledger before the next step runs.
//!
//! Retries: a throttled (429) or internal (500) rejection, a timeout, a lost connection or a
//! stale reply is retried with full-jitter exponential backoff, up to `max_attempts` per API.
//! Transport failures rebuild the session first. Any other rejection fails the device at
//! once with the API and the service's `errorCode` in its reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::session::Reply;
use super::{BoardIdentity, Credentials, DeviceFailure, EngineConfig, SessionSlot};
use crate::config::fill_placeholders;
use crate::fleet::payloads::{Secret, decode, encode};
use crate::fleet::{
    Api, CreateCertificateFromCsrRequest, CreateCertificateFromCsrResponse, RegisterThingRequest,
    RegisterThingResponse,
};
use crate::keys::{KeyPool, certificate_matches_key};
use crate::ledger::{Ledger, Transition};
use crate::shutdown::Shutdown;
use crate::telemetry::{Event, Stage, Telemetry};

/// How long the station trusts an ownership token: AWS's hour minus a safety margin.
const TOKEN_TRUST: Duration = Duration::from_secs(55 * 60);

/// What a session task needs to run a device's flow.
#[derive(Clone)]
pub struct FlowContext {
    pub cfg: Arc<EngineConfig>,
    pub keys: Arc<KeyPool>,
    pub ledger: Ledger,
    pub telemetry: Telemetry,
    pub shutdown: Shutdown,
}

fn fail(code: impl Into<String>, message: impl Into<String>) -> DeviceFailure {
    DeviceFailure {
        code: code.into(),
        message: message.into(),
    }
}

fn ledger_failure(e: crate::ledger::LedgerError) -> DeviceFailure {
    fail("ledger", format!("the ledger could not record a step: {e}"))
}

/// Fills the configured template parameters for one board.
pub fn board_parameters(
    configured: &BTreeMap<String, String>,
    board: &BoardIdentity,
    station_id: &str,
) -> Result<BTreeMap<String, String>, DeviceFailure> {
    let lookup = |name: &str| -> Option<String> {
        match name {
            "serial" => Some(board.serial.clone()),
            "mac" => board.mac.clone(),
            "hw_rev" => board.hw_rev.clone(),
            "station_id" => Some(station_id.to_string()),
            "jig" => Some(board.jig.clone()),
            _ => None,
        }
    };
    configured
        .iter()
        .map(|(name, value)| {
            fill_placeholders(value, &lookup)
                .map(|v| (name.clone(), v))
                .map_err(|missing| {
                    fail(
                        format!("parameter:{missing}"),
                        format!(
                            "template parameter {name} needs {{{missing}}}, which board {} did not report",
                            board.serial
                        ),
                    )
                })
        })
        .collect()
}

/// Full-jitter exponential backoff: uniform in [0, min(cap, base · 2^attempt)].
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100);
    let cap = Duration::from_secs(5);
    let ceiling = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    Duration::from_micros(fastrand::u64(0..=ceiling.as_micros() as u64))
}

/// Provisions one device on `slot`'s session.
pub async fn provision(
    ctx: &FlowContext,
    slot: &mut SessionSlot,
    device_id: i64,
    board: &BoardIdentity,
) -> Result<Credentials, DeviceFailure> {
    let cfg = &ctx.cfg;
    let parameters = board_parameters(&cfg.parameters, board, &cfg.station_id)?;

    let t = Instant::now();
    let key = ctx
        .keys
        .take()
        .await
        .map_err(|e| fail("keygen", e.to_string()))?;
    ctx.telemetry
        .emit(Event::StageTime {
            stage: Stage::Keygen,
            elapsed: t.elapsed(),
        })
        .await;
    ctx.telemetry
        .emit(Event::KeyStock {
            level: ctx.keys.stock(),
            capacity: ctx.keys.capacity(),
        })
        .await;
    ctx.ledger
        .record(device_id, Transition::KeyReserved)
        .await
        .map_err(ledger_failure)?;

    // CreateCertificateFromCsr.
    let t = Instant::now();
    let request = encode(
        cfg.format,
        &CreateCertificateFromCsrRequest {
            certificate_signing_request: Some(key.csr_pem().to_string()),
        },
    );
    let api = Api::CreateCertificateFromCsr;
    let created: CreateCertificateFromCsrResponse =
        call_with_retry(ctx, slot, &api, request, |bytes| {
            let r: CreateCertificateFromCsrResponse =
                decode(cfg.format, bytes).map_err(|e| e.to_string())?;
            // A certificate for another key is a stale or foreign reply: never use it.
            if !certificate_matches_key(&r.certificate_pem, key.spki_der()) {
                return Err(
                    "the certificate does not carry the CSR's public key (stale or foreign reply)"
                        .into(),
                );
            }
            if r.certificate_ownership_token.is_empty() {
                return Err("the reply has no certificateOwnershipToken".into());
            }
            Ok(r)
        })
        .await?;
    ctx.telemetry
        .emit(Event::StageTime {
            stage: Stage::CreateCertificate,
            elapsed: t.elapsed(),
        })
        .await;
    let token_expires_ms = crate::ledger::now_ms() as u64 + TOKEN_TRUST.as_millis() as u64;
    ctx.ledger
        .record(
            device_id,
            Transition::CertificateIssued {
                certificate_id: created.certificate_id.clone(),
                token: created.certificate_ownership_token.expose().to_string(),
                token_expires_ms,
            },
        )
        .await
        .map_err(ledger_failure)?;

    // RegisterThing, with the token just issued (retries reuse it).
    let t = Instant::now();
    let api = Api::RegisterThing {
        template: cfg.template.clone(),
    };
    let request = encode(
        cfg.format,
        &RegisterThingRequest {
            certificate_ownership_token: Some(Secret::new(
                created.certificate_ownership_token.expose(),
            )),
            parameters: Some(parameters),
        },
    );
    let registered: RegisterThingResponse = call_with_retry(ctx, slot, &api, request, |bytes| {
        decode(cfg.format, bytes).map_err(|e| e.to_string())
    })
    .await?;
    ctx.telemetry
        .emit(Event::StageTime {
            stage: Stage::RegisterThing,
            elapsed: t.elapsed(),
        })
        .await;
    let thing_name = registered.thing_name.clone().ok_or_else(|| {
        fail(
            "register_thing:no_thing_name",
            "RegisterThing was accepted but named no thing; the template needs an AWS::IoT::Thing resource",
        )
    })?;
    ctx.ledger
        .record(
            device_id,
            Transition::Registered {
                thing_name: thing_name.clone(),
            },
        )
        .await
        .map_err(ledger_failure)?;

    Ok(Credentials {
        certificate_id: created.certificate_id,
        certificate_pem: created.certificate_pem,
        key,
        thing_name,
        device_configuration: registered.device_configuration,
    })
}

/// Calls `api` until it is accepted and `accept` takes the reply, retrying what can be retried.
async fn call_with_retry<T>(
    ctx: &FlowContext,
    slot: &mut SessionSlot,
    api: &Api,
    payload: Vec<u8>,
    accept: impl Fn(&Bytes) -> Result<T, String>,
) -> Result<T, DeviceFailure> {
    let cfg = &ctx.cfg;
    let name = api.name();
    let mut last = String::new();
    for attempt in 0..cfg.max_attempts {
        if attempt > 0 {
            ctx.telemetry.emit(Event::Retry { api: name }).await;
            tokio::select! {
                _ = tokio::time::sleep(backoff(attempt)) => {}
                _ = ctx.shutdown.wait() => break,
            }
        }
        let session = match slot.get().await {
            Ok(s) => s,
            Err(e) => {
                last = format!("{name}: {e}");
                continue;
            }
        };
        match session
            .call(api, payload.clone(), cfg.request_timeout)
            .await
        {
            Ok(Reply::Accepted(bytes)) => match accept(&bytes) {
                Ok(v) => return Ok(v),
                Err(reason) => {
                    // Unusable reply: start over on a fresh connection.
                    last = format!("{name} accepted reply refused: {reason}");
                    slot.reset();
                }
            },
            Ok(Reply::Rejected(err)) => {
                let retryable = err.status_code == 429 || err.status_code >= 500;
                if err.status_code == 429 {
                    ctx.telemetry.emit(Event::Throttled { api: name }).await;
                }
                last = format!(
                    "{name} rejected on {}: {err}",
                    api.reply_topic(cfg.format, crate::fleet::ReplyKind::Rejected)
                );
                if !retryable {
                    return Err(fail(format!("{}:{}", snake(name), err.error_code), last));
                }
            }
            Err(e) => {
                last = format!("{name}: {e}");
                slot.reset();
            }
        }
    }
    Err(fail(
        format!("{}:gave_up", snake(name)),
        format!("{last} (gave up after {} attempts)", cfg.max_attempts),
    ))
}

fn snake(api_name: &str) -> &'static str {
    match api_name {
        "CreateCertificateFromCsr" => "create_certificate",
        "CreateKeysAndCertificate" => "create_keys",
        _ => "register_thing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_fill_from_the_board_or_name_what_is_missing() {
        let mut configured = BTreeMap::new();
        configured.insert("ThingName".to_string(), "dev-{serial}".to_string());
        configured.insert("Jig".to_string(), "{station_id}/{jig}".to_string());
        let board = BoardIdentity {
            serial: "SN1".into(),
            jig: "jig-3".into(),
            ..Default::default()
        };
        let p = board_parameters(&configured, &board, "st").unwrap();
        assert_eq!(p["ThingName"], "dev-SN1");
        assert_eq!(p["Jig"], "st/jig-3");
        configured.insert("Mac".to_string(), "{mac}".to_string());
        let e = board_parameters(&configured, &board, "st").unwrap_err();
        assert_eq!(e.code, "parameter:mac");
        assert!(e.message.contains("SN1"));
    }

    #[test]
    fn backoff_is_bounded() {
        for attempt in 0..40 {
            assert!(backoff(attempt) <= Duration::from_secs(5));
        }
    }
}
