//! The per-device flow: key → certificate (`CreateCertificateFromCsr`, or
//! `CreateKeysAndCertificate` when AWS makes the key) → `RegisterThing`, each state in the
//! ledger before the next step runs, resuming where an earlier run stopped.
//!
//! Retries: a throttled (429) or internal (500) rejection, a timeout, a lost connection or a
//! stale reply is retried with full-jitter exponential backoff, up to `max_attempts` per call
//! and never past the device's deadline. Transport failures rebuild the session first; 429s
//! also slow the shared rate limiter down. A RegisterThing retry reuses the token it holds.
//! Only when that token can no longer be used (expired, or refused) is the certificate
//! abandoned — the ledger lists it as an orphan — and a new one requested. Any other
//! rejection fails the device at once with the API and the service's `errorCode`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::rate::RateLimiter;
use super::session::{Reply, Session, SessionConfig};
use super::{
    BoardIdentity, Credentials, DeviceFailure, DeviceJob, EngineConfig, KeyPlan, SessionSlot,
};
use crate::config::fill_placeholders;
use crate::fleet::payloads::{Secret, decode, encode};
use crate::fleet::{
    Api, CreateCertificateFromCsrRequest, CreateCertificateFromCsrResponse,
    CreateKeysAndCertificateResponse, ErrorResponse, RegisterThingRequest, RegisterThingResponse,
    ReplyKind,
};
use crate::keys::{KeyPool, certificate_public_key, csr_public_key, public_key_sha256};
use crate::ledger::{DeviceState, KeySource, Ledger, OrphanStatus, Resume, Transition, now_ms};
use crate::shutdown::Shutdown;
use crate::telemetry::{Event, Stage, Telemetry};

/// How long the station trusts an ownership token: AWS's hour minus a safety margin.
pub const TOKEN_TRUST: Duration = Duration::from_secs(55 * 60);

/// New certificates a device may need in one run (each one after an unusable token).
const CERTIFICATE_ROUNDS: u32 = 3;

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

/// What the device holds so far.
enum Have {
    Nothing,
    Issued(Issued),
    Registered(Issued, String, BTreeMap<String, String>),
}

struct Issued {
    certificate_id: String,
    certificate_pem: String,
    token: Secret,
    token_expires_ms: i64,
    private_key: Option<Secret>,
    source: KeySource,
}

/// Provisions one device on `slot`'s session.
pub async fn provision(
    ctx: &FlowContext,
    slot: &mut SessionSlot,
    job: &mut DeviceJob,
) -> Result<Credentials, DeviceFailure> {
    let cfg = &ctx.cfg;
    let deadline = Instant::now() + cfg.device_deadline;
    let id = job.device_id;
    let parameters = board_parameters(&cfg.parameters, &job.board, &cfg.station_id)?;

    // Could a RegisterThing have used the current token? (Then an abandoned certificate
    // may be active.)
    let mut tried_register = job.resume.is_some();
    let mut have = match job.resume.take() {
        Some(r) => resume_point(ctx, id, r).await?,
        None => Have::Nothing,
    };
    let mut rounds = 0;
    loop {
        have = match have {
            Have::Nothing => {
                rounds += 1;
                if rounds > CERTIFICATE_ROUNDS {
                    return Err(fail(
                        "certificate:rounds",
                        format!(
                            "{CERTIFICATE_ROUNDS} certificates in a row could not be registered"
                        ),
                    ));
                }
                tried_register = false;
                Have::Issued(new_certificate(ctx, slot, id, &job.key, deadline).await?)
            }
            Have::Issued(issued) if now_ms() >= issued.token_expires_ms => {
                let status = if tried_register {
                    OrphanStatus::Unknown
                } else {
                    OrphanStatus::Pending
                };
                let reason = "its ownership token expired before RegisterThing";
                abandon(ctx, id, reason, status).await?;
                Have::Nothing
            }
            Have::Issued(issued) => {
                tried_register = true;
                match register(ctx, slot, &issued, &parameters, deadline).await? {
                    Some(r) => {
                        let thing = r.thing_name.clone().ok_or_else(|| {
                            fail(
                                "register_thing:no_thing_name",
                                "RegisterThing was accepted but named no thing; the template needs an AWS::IoT::Thing resource",
                            )
                        })?;
                        ctx.ledger
                            .record(
                                id,
                                Transition::Registered {
                                    thing_name: thing.clone(),
                                    device_configuration: r.device_configuration.clone(),
                                },
                            )
                            .await
                            .map_err(ledger_failure)?;
                        Have::Registered(issued, thing, r.device_configuration)
                    }
                    None => {
                        // Refused: an earlier attempt whose answer was lost may have used it.
                        let reason = "RegisterThing refused its ownership token";
                        abandon(ctx, id, reason, OrphanStatus::Unknown).await?;
                        Have::Nothing
                    }
                }
            }
            Have::Registered(issued, thing, config) => {
                return finish(ctx, id, issued, thing, config).await;
            }
        };
    }
}

async fn abandon(
    ctx: &FlowContext,
    id: i64,
    reason: &str,
    status: OrphanStatus,
) -> Result<(), DeviceFailure> {
    ctx.ledger
        .record(
            id,
            Transition::CertificateAbandoned {
                reason: reason.to_string(),
                status,
            },
        )
        .await
        .map_err(ledger_failure)
}

/// Where an unfinished device from an earlier run continues.
async fn resume_point(ctx: &FlowContext, id: i64, r: Resume) -> Result<Have, DeviceFailure> {
    let source = r.key_source.unwrap_or(KeySource::Pool);
    let usable = |r: &Resume| -> Option<Issued> {
        Some(Issued {
            certificate_id: r.certificate_id.clone()?,
            certificate_pem: r.certificate_pem.clone()?,
            token: r.token.clone().unwrap_or_default(),
            token_expires_ms: r.token_expires_ms.unwrap_or(0),
            private_key: r.private_key.clone(),
            source,
        })
    };
    let reason = match r.state {
        DeviceState::KeyReserved => {
            "the station stopped while its certificate request was in flight"
        }
        _ if source == KeySource::Device && r.state != DeviceState::Written => {
            "the station stopped before the board committed the key it made for this certificate"
        }
        _ if source != KeySource::Device && r.private_key.is_none() => {
            "the station stopped and the private key for this certificate cannot be recovered"
        }
        DeviceState::CertificateIssued => match usable(&r) {
            Some(issued) => return Ok(Have::Issued(issued)),
            None => "the ledger lacks the certificate or its token",
        },
        DeviceState::Registered | DeviceState::Written => match (usable(&r), &r.thing_name) {
            (Some(issued), Some(thing)) => {
                return Ok(Have::Registered(
                    issued,
                    thing.clone(),
                    r.device_configuration.clone(),
                ));
            }
            _ => "the ledger lacks the certificate or the thing name",
        },
        _ => return Ok(Have::Nothing),
    };
    // Before the stop a request may have been answered without the station hearing it.
    abandon(ctx, id, reason, OrphanStatus::Unknown).await?;
    Ok(Have::Nothing)
}

async fn finish(
    ctx: &FlowContext,
    id: i64,
    issued: Issued,
    thing_name: String,
    device_configuration: BTreeMap<String, String>,
) -> Result<Credentials, DeviceFailure> {
    if ctx.cfg.post_provision_check
        && let Some(key) = &issued.private_key
    {
        post_provision_check(ctx, id, &issued.certificate_pem, key, &thing_name).await?;
    }
    Ok(Credentials {
        certificate_id: issued.certificate_id,
        certificate_pem: issued.certificate_pem,
        private_key: issued.private_key,
        key_source: issued.source,
        thing_name,
        device_configuration,
    })
}

/// Connects once with the new identity: proves it is live before the board leaves.
async fn post_provision_check(
    ctx: &FlowContext,
    id: i64,
    certificate_pem: &str,
    key: &Secret,
    thing_name: &str,
) -> Result<(), DeviceFailure> {
    let cfg = &ctx.cfg;
    let tls = super::tls::client_config_from_pem(
        cfg.roots.clone(),
        certificate_pem.as_bytes(),
        key.expose().as_bytes(),
        cfg.port == 443,
    )
    .map_err(|e| fail("post_check:tls", e.to_string()))?;
    let session = SessionConfig {
        host: cfg.host.clone(),
        port: cfg.port,
        client_id: thing_name.to_string(),
        tls: Arc::new(tls),
        format: cfg.format,
        apis: Vec::new(),
        connect_timeout: cfg.request_timeout,
        keep_alive: Duration::from_secs(30),
        mqtt_version: cfg.mqtt_version,
    };
    ctx.limits().connect.acquire().await;
    match Session::connect(&session).await {
        Ok(s) => {
            s.close().await;
            ctx.ledger
                .note(
                    id,
                    "post_provision_check",
                    "connected with the new certificate",
                )
                .await
                .map_err(ledger_failure)
        }
        Err(e) => Err(fail(
            "post_check:connect",
            format!("the new certificate could not connect as {thing_name}: {e}"),
        )),
    }
}

impl FlowContext {
    fn limits(&self) -> &super::rate::Limits {
        &self.cfg.limits
    }
}

/// Gets a new certificate for the device's key plan and records it.
async fn new_certificate(
    ctx: &FlowContext,
    slot: &mut SessionSlot,
    id: i64,
    plan: &KeyPlan,
    deadline: Instant,
) -> Result<Issued, DeviceFailure> {
    let cfg = &ctx.cfg;
    let format = cfg.format;
    let t = Instant::now();
    let issued = match plan {
        KeyPlan::Pool => {
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
            let private_key = Secret::new(key.private_key_pem());
            ctx.ledger
                .record(
                    id,
                    Transition::KeyReserved {
                        source: KeySource::Pool,
                        public_key_sha256: Some(key.public_key_sha256()),
                        private_key: Some(private_key.clone()),
                    },
                )
                .await
                .map_err(ledger_failure)?;
            let created =
                create_from_csr(ctx, slot, key.csr_pem(), key.spki_der(), deadline).await?;
            Issued {
                certificate_id: created.certificate_id,
                certificate_pem: created.certificate_pem,
                token: created.certificate_ownership_token,
                token_expires_ms: 0,
                private_key: Some(private_key),
                source: KeySource::Pool,
            }
        }
        KeyPlan::Device { csr_pem } => {
            let spki = csr_public_key(csr_pem).ok_or_else(|| {
                fail(
                    "board_csr",
                    "the CSR the board made does not parse or its signature does not verify",
                )
            })?;
            ctx.ledger
                .record(
                    id,
                    Transition::KeyReserved {
                        source: KeySource::Device,
                        public_key_sha256: Some(public_key_sha256(&spki)),
                        private_key: None,
                    },
                )
                .await
                .map_err(ledger_failure)?;
            let created = create_from_csr(ctx, slot, csr_pem, &spki, deadline).await?;
            Issued {
                certificate_id: created.certificate_id,
                certificate_pem: created.certificate_pem,
                token: created.certificate_ownership_token,
                token_expires_ms: 0,
                private_key: None,
                source: KeySource::Device,
            }
        }
        KeyPlan::Committed => {
            return Err(fail(
                "resume:needs_new_key",
                "the board holds a committed key whose certificate cannot be used; take the board off and place it again to start over",
            ));
        }
        KeyPlan::Aws => {
            ctx.ledger
                .record(
                    id,
                    Transition::KeyReserved {
                        source: KeySource::Aws,
                        public_key_sha256: None,
                        private_key: None,
                    },
                )
                .await
                .map_err(ledger_failure)?;
            let created: CreateKeysAndCertificateResponse = call_with_retry(
                ctx,
                slot,
                &Api::CreateKeysAndCertificate,
                &ctx.limits().create_keys,
                encode(format, &serde_json::Map::new()),
                deadline,
                |bytes| {
                    let r: CreateKeysAndCertificateResponse =
                        decode(format, bytes).map_err(|e| e.to_string())?;
                    if r.certificate_ownership_token.is_empty() || r.private_key.is_empty() {
                        return Err("the reply lacks the ownership token or the private key".into());
                    }
                    Ok(r)
                },
            )
            .await
            .map_err(CallFailure::into_failure)?;
            Issued {
                certificate_id: created.certificate_id,
                certificate_pem: created.certificate_pem,
                token: created.certificate_ownership_token,
                token_expires_ms: 0,
                private_key: Some(created.private_key),
                source: KeySource::Aws,
            }
        }
    };
    ctx.telemetry
        .emit(Event::StageTime {
            stage: Stage::CreateCertificate,
            elapsed: t.elapsed(),
        })
        .await;
    let token_expires_ms = now_ms() + TOKEN_TRUST.as_millis() as i64;
    let aws_key = (issued.source == KeySource::Aws)
        .then(|| issued.private_key.clone())
        .flatten();
    ctx.ledger
        .record(
            id,
            Transition::CertificateIssued {
                certificate_id: issued.certificate_id.clone(),
                certificate_pem: issued.certificate_pem.clone(),
                token: issued.token.clone(),
                token_expires_ms: token_expires_ms as u64,
                public_key_sha256: aws_key
                    .as_ref()
                    .and_then(|_| certificate_public_key(&issued.certificate_pem))
                    .map(|k| public_key_sha256(&k)),
                private_key: aws_key,
            },
        )
        .await
        .map_err(ledger_failure)?;
    Ok(Issued {
        token_expires_ms,
        ..issued
    })
}

async fn create_from_csr(
    ctx: &FlowContext,
    slot: &mut SessionSlot,
    csr_pem: &str,
    spki: &[u8],
    deadline: Instant,
) -> Result<CreateCertificateFromCsrResponse, DeviceFailure> {
    let format = ctx.cfg.format;
    let request = encode(
        format,
        &CreateCertificateFromCsrRequest {
            certificate_signing_request: Some(csr_pem.to_string()),
        },
    );
    call_with_retry(
        ctx,
        slot,
        &Api::CreateCertificateFromCsr,
        &ctx.limits().create_certificate,
        request,
        deadline,
        |bytes| {
            let r: CreateCertificateFromCsrResponse =
                decode(format, bytes).map_err(|e| e.to_string())?;
            // A certificate for another key is a stale or foreign reply: never use it.
            if certificate_public_key(&r.certificate_pem).as_deref() != Some(spki) {
                return Err(
                    "the certificate does not carry the CSR's public key (stale or foreign reply)"
                        .into(),
                );
            }
            if r.certificate_ownership_token.is_empty() {
                return Err("the reply has no certificateOwnershipToken".into());
            }
            Ok(r)
        },
    )
    .await
    .map_err(CallFailure::into_failure)
}

/// RegisterThing with the token held. `Ok(None)`: the token was refused (it can no longer
/// register this certificate).
async fn register(
    ctx: &FlowContext,
    slot: &mut SessionSlot,
    issued: &Issued,
    parameters: &BTreeMap<String, String>,
    deadline: Instant,
) -> Result<Option<RegisterThingResponse>, DeviceFailure> {
    let cfg = &ctx.cfg;
    let t = Instant::now();
    let api = Api::RegisterThing {
        template: cfg.template.clone(),
    };
    let request = encode(
        cfg.format,
        &RegisterThingRequest {
            certificate_ownership_token: Some(issued.token.clone()),
            parameters: Some(parameters.clone()),
        },
    );
    // Never past the token's trust window.
    let token_deadline =
        Instant::now() + Duration::from_millis((issued.token_expires_ms - now_ms()).max(0) as u64);
    let result = call_with_retry(
        ctx,
        slot,
        &api,
        &ctx.limits().register_thing,
        request,
        deadline.min(token_deadline),
        |bytes| decode::<RegisterThingResponse>(cfg.format, bytes).map_err(|e| e.to_string()),
    )
    .await;
    ctx.telemetry
        .emit(Event::StageTime {
            stage: Stage::RegisterThing,
            elapsed: t.elapsed(),
        })
        .await;
    match result {
        Ok(r) => Ok(Some(r)),
        Err(CallFailure::Rejected { error, .. })
            if error.status_code == 400
                && error.error_code == "InvalidCertificateOwnershipToken" =>
        {
            Ok(None)
        }
        Err(f) => Err(f.into_failure()),
    }
}

/// Why a call gave up.
enum CallFailure {
    /// A rejection that retrying cannot fix.
    Rejected {
        code: String,
        message: String,
        error: ErrorResponse,
    },
    /// Retries, the deadline or the station's stop ran out.
    GaveUp { code: String, message: String },
}

impl CallFailure {
    fn into_failure(self) -> DeviceFailure {
        match self {
            CallFailure::Rejected { code, message, .. } | CallFailure::GaveUp { code, message } => {
                fail(code, message)
            }
        }
    }
}

/// Calls `api` until it is accepted and `accept` takes the reply, retrying what can be retried.
async fn call_with_retry<T>(
    ctx: &FlowContext,
    slot: &mut SessionSlot,
    api: &Api,
    limiter: &RateLimiter,
    payload: Vec<u8>,
    deadline: Instant,
    accept: impl Fn(&Bytes) -> Result<T, String>,
) -> Result<T, CallFailure> {
    let cfg = &ctx.cfg;
    let name = api.name();
    let code = snake(name);
    let mut last = String::from("not tried");
    // Failures count against `max_attempts`; throttles do not (a 429 means "slower", not
    // "broken": the shared limiter slows down and the call waits its turn), but every retry
    // backs off further and none goes past the device's deadline.
    let mut failures = 0;
    let mut tries: u32 = 0;
    while failures < cfg.max_attempts {
        if tries > 0 {
            ctx.telemetry.emit(Event::Retry { api: name }).await;
            let wait =
                backoff(tries.min(6)).min(deadline.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.shutdown.wait() => break,
            }
        }
        tries += 1;
        if Instant::now() >= deadline {
            return Err(CallFailure::GaveUp {
                code: format!("{code}:deadline"),
                message: format!("{last} (the device's deadline passed)"),
            });
        }
        tokio::select! {
            _ = limiter.acquire() => {}
            _ = ctx.shutdown.wait() => break,
        }
        let session = match slot.get(&cfg.limits.connect).await {
            Ok(s) => s,
            Err(e) => {
                last = format!("{name}: {e}");
                failures += 1;
                continue;
            }
        };
        let wait = cfg
            .request_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        match session.call(api, payload.clone(), wait).await {
            Ok(Reply::Accepted(bytes)) => match accept(&bytes) {
                Ok(v) => {
                    limiter.on_success();
                    return Ok(v);
                }
                Err(reason) => {
                    // Unusable reply: start over on a fresh connection.
                    last = format!("{name} accepted reply refused: {reason}");
                    slot.reset();
                    failures += 1;
                }
            },
            Ok(Reply::Rejected(err)) => {
                let topic = api.reply_topic(cfg.format, ReplyKind::Rejected);
                last = format!("{name} rejected on {topic}: {err}");
                if err.status_code == 429 {
                    limiter.on_throttle();
                    ctx.telemetry.emit(Event::Throttled { api: name }).await;
                } else if err.status_code < 500 {
                    return Err(CallFailure::Rejected {
                        code: format!("{code}:{}", err.error_code),
                        message: last,
                        error: err,
                    });
                } else {
                    failures += 1;
                }
            }
            Err(e) => {
                last = format!("{name}: {e}");
                slot.reset();
                failures += 1;
            }
        }
    }
    Err(CallFailure::GaveUp {
        code: format!("{code}:gave_up"),
        message: format!("{last} (gave up after {failures} failed attempts)"),
    })
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
