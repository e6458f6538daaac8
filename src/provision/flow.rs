//! The per-device flow: key → certificate (`CreateCertificateFromCsr`, or
//! `CreateKeysAndCertificate` when AWS makes the key) → `RegisterThing`, each state in the
//! ledger before the next step runs, resuming where an earlier run stopped.
//!
//! Retries (each call: `call::call_with_retry`):
//! - a throttle (429, an MQTT 5 PUBACK "quota exceeded", or a connection the server closed
//!   after the request and before its reply) slows the shared rate limiter and the request
//!   is sent again; it does not use up an attempt;
//! - an endpoint that cannot be reached pauses the device until it is back (or the device's
//!   deadline passes); no attempt is used, the operator is told once;
//! - a 500, a timeout or an unusable reply is a failed attempt (up to `max_attempts`);
//! - a problem no retry can fix (an untrusted server certificate, a refused claim
//!   certificate, CONNECT or PUBLISH not authorized, a missing template, a silent endpoint,
//!   or any rejection before the line's first device got through) stops the line
//!   ([`super::health`]) and the device is interrupted, not failed;
//! - any other rejection fails the device with the API and the service's `errorCode`.
//!
//! A RegisterThing retry reuses the token it holds. When the token is refused within its hour
//! after a request whose answer was lost (or by a resumed device), the first registration went
//! through: the certificate is ACTIVE on the thing, recorded as such, and the device gets one
//! new certificate. Until the line's first device passed RegisterThing only one device at a
//! time creates a certificate. When the station stops, a request already sent gets a short
//! grace for its answer; the device then keeps its state and resumes on the next run.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::OwnedMutexGuard;

use super::call::{CallFailure, CallSpec, call_with_retry};
use super::health::LineHealth;
use super::session::{Session, SessionConfig, Verdict};
use super::{
    BoardIdentity, Credentials, DeviceFailure, DeviceJob, EngineConfig, FailureCode, KeyPlan,
    NotProvisioned, SessionSlot,
};
use crate::config::fill_placeholders;
use crate::fleet::payloads::{Secret, decode, encode};
use crate::fleet::{
    Api, CreateCertificateFromCsrRequest, CreateCertificateFromCsrResponse,
    CreateKeysAndCertificateResponse, RegisterThingRequest, RegisterThingResponse,
};
use crate::halt::Halt;
use crate::keys::{KeyPool, certificate_public_key, csr_public_key, public_key_sha256};
use crate::ledger::{
    DeviceState, KeySource, Ledger, LedgerError, OrphanStatus, Resume, Transition, now_ms,
};
use crate::telemetry::{Event, Stage, Telemetry};

/// How long the station trusts an ownership token: AWS's hour minus a safety margin.
pub const TOKEN_TRUST: Duration = Duration::from_secs(55 * 60);

/// Certificates a device may get in one run: its first, and one more after a token that can
/// no longer be used.
const CERTIFICATE_ROUNDS: u32 = 2;

/// What a session task needs to run a device's flow.
#[derive(Clone)]
pub struct FlowContext {
    pub cfg: Arc<EngineConfig>,
    pub keys: Arc<KeyPool>,
    pub ledger: Ledger,
    pub telemetry: Telemetry,
    /// Stops the line (and carries the station's stop signal).
    pub halt: Halt,
    pub health: Arc<LineHealth>,
}

impl FlowContext {
    pub(super) fn limits(&self) -> &super::rate::Limits {
        &self.cfg.limits
    }

    pub(super) fn stopping(&self) -> bool {
        self.halt.shutdown().is_triggered()
    }

    /// Stops the line for `e`; the device in flight is interrupted.
    pub(super) fn stop_line(&self, e: impl Into<crate::Error>) -> NotProvisioned {
        self.halt.raise(e);
        NotProvisioned::Interrupted
    }

    /// A ledger that cannot record a step stops the line: nothing may run ahead of it.
    fn ledger_failed(&self, e: LedgerError) -> NotProvisioned {
        self.stop_line(e)
    }
}

pub(super) fn fail(code: FailureCode, message: impl Into<String>) -> DeviceFailure {
    DeviceFailure::new(code, message)
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
                        FailureCode::MissingBoardValue(missing.to_string()),
                        format!(
                            "template parameter {name} needs {{{missing}}}, which board {} did not report",
                            board.serial
                        ),
                    )
                })
        })
        .collect()
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
) -> Result<Credentials, NotProvisioned> {
    let cfg = &ctx.cfg;
    let deadline = Instant::now() + cfg.device_deadline;
    let id = job.device_id;
    let serial = job.board.serial.clone();
    let parameters = board_parameters(&cfg.parameters, &job.board, &cfg.station_id)?;

    // Could an earlier run have sent RegisterThing with the token held now?
    let mut resumed_issued = job
        .resume
        .as_ref()
        .is_some_and(|r| r.state == DeviceState::CertificateIssued);
    let mut have = match job.resume.take() {
        Some(r) => resume_point(ctx, id, r).await?,
        None => Have::Nothing,
    };
    // Held while this device is the line's probe (see `LineHealth::probe`).
    let mut probe: Option<OwnedMutexGuard<()>> = None;
    let mut rounds = 0;
    loop {
        have = match have {
            Have::Nothing => {
                rounds += 1;
                if rounds > CERTIFICATE_ROUNDS {
                    return Err(fail(
                        FailureCode::CertificateRounds,
                        format!(
                            "{CERTIFICATE_ROUNDS} certificates in a row could not be registered"
                        ),
                    )
                    .into());
                }
                resumed_issued = false;
                if probe.is_none() {
                    probe = tokio::select! {
                        p = ctx.health.probe() => p,
                        _ = ctx.halt.shutdown().wait() => return Err(NotProvisioned::Interrupted),
                    };
                }
                // The probe before this one may have stopped the line.
                if ctx.stopping() {
                    return Err(NotProvisioned::Interrupted);
                }
                Have::Issued(new_certificate(ctx, slot, id, &serial, &job.key, deadline).await?)
            }
            Have::Issued(issued) if now_ms() >= issued.token_expires_ms => {
                let status = if resumed_issued {
                    OrphanStatus::Unknown
                } else {
                    OrphanStatus::Pending
                };
                let reason = "its ownership token expired before RegisterThing";
                abandon(ctx, id, reason, status).await?;
                Have::Nothing
            }
            Have::Issued(issued) => {
                match register(ctx, slot, id, &issued, &parameters, &serial, deadline).await? {
                    Registration::Accepted(r) => {
                        let thing = r.thing_name.clone().ok_or_else(|| {
                            fail(
                                FailureCode::NoThingName,
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
                            .map_err(|e| ctx.ledger_failed(e))?;
                        ctx.health.registered();
                        probe = None;
                        Have::Registered(issued, thing, r.device_configuration)
                    }
                    Registration::TokenRefused { earlier_lost } => {
                        // Only this station held the token, and it is within its hour: a
                        // refusal after a request whose answer was lost means that request
                        // registered the certificate. It is ACTIVE on the thing the next
                        // registration names.
                        let (status, reason) = if earlier_lost || resumed_issued {
                            (
                                OrphanStatus::Active,
                                "RegisterThing refused its ownership token: an earlier RegisterThing whose answer was lost registered it",
                            )
                        } else {
                            (
                                OrphanStatus::Unknown,
                                "RegisterThing refused its ownership token",
                            )
                        };
                        abandon(ctx, id, reason, status).await?;
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
) -> Result<(), NotProvisioned> {
    ctx.ledger
        .record(
            id,
            Transition::CertificateAbandoned {
                reason: reason.to_string(),
                status,
            },
        )
        .await
        .map_err(|e| ctx.ledger_failed(e))
}

/// Where an unfinished device from an earlier run continues.
async fn resume_point(ctx: &FlowContext, id: i64, r: Resume) -> Result<Have, NotProvisioned> {
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
) -> Result<Credentials, NotProvisioned> {
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
) -> Result<(), NotProvisioned> {
    let cfg = &ctx.cfg;
    let tls = super::tls::client_config_from_pem(
        cfg.roots.clone(),
        certificate_pem.as_bytes(),
        key.expose().as_bytes(),
        cfg.port == 443,
    )
    .map_err(|e| fail(FailureCode::PostCheckTls, e.to_string()))?;
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
                .map_err(|e| ctx.ledger_failed(e))
        }
        Err(e) => Err(fail(
            FailureCode::PostCheckConnect,
            format!("the new certificate could not connect as {thing_name}: {e}"),
        )
        .into()),
    }
}

/// Gets a new certificate for the device's key plan and records it.
async fn new_certificate(
    ctx: &FlowContext,
    slot: &mut SessionSlot,
    id: i64,
    serial: &str,
    plan: &KeyPlan,
    deadline: Instant,
) -> Result<Issued, NotProvisioned> {
    let cfg = &ctx.cfg;
    let format = cfg.format;
    let t = Instant::now();
    let reserve = |source, public_key_sha256, private_key| async move {
        ctx.ledger
            .record(
                id,
                Transition::KeyReserved {
                    source,
                    public_key_sha256,
                    private_key,
                },
            )
            .await
            .map_err(|e| ctx.ledger_failed(e))
    };
    let issued = match plan {
        KeyPlan::Pool => {
            let key = tokio::select! {
                k = ctx.keys.take() => k.map_err(|e| fail(FailureCode::KeyGeneration, e.to_string()))?,
                _ = ctx.halt.shutdown().wait() => return Err(NotProvisioned::Interrupted),
            };
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
            reserve(
                KeySource::Pool,
                Some(key.public_key_sha256()),
                Some(private_key.clone()),
            )
            .await?;
            let created = create_from_csr(
                ctx,
                slot,
                id,
                serial,
                key.csr_pem(),
                key.spki_der(),
                deadline,
            )
            .await?;
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
                    FailureCode::BoardCsr,
                    "the CSR the board made does not parse or its signature does not verify",
                )
            })?;
            reserve(KeySource::Device, Some(public_key_sha256(&spki)), None).await?;
            let created = create_from_csr(ctx, slot, id, serial, csr_pem, &spki, deadline).await?;
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
                FailureCode::NeedsNewKey,
                "the board holds a committed key whose certificate cannot be used; take the board off and place it again to start over",
            )
            .into());
        }
        KeyPlan::Aws => {
            reserve(KeySource::Aws, None, None).await?;
            let recent = slot.recent_certificates();
            let created = call_with_retry::<CreateKeysAndCertificateResponse>(
                ctx,
                slot,
                CallSpec {
                    device: id,
                    serial,
                    api: &Api::CreateKeysAndCertificate,
                    limiter: &ctx.limits().create_keys,
                    payload: encode(format, &serde_json::Map::new()),
                    deadline,
                },
                &|bytes| stale_certificate(format, bytes, &recent),
                |bytes| {
                    let r: CreateKeysAndCertificateResponse =
                        decode(format, bytes).map_err(|e| e.to_string())?;
                    if r.certificate_ownership_token.is_empty() || r.private_key.is_empty() {
                        return Err("the reply lacks the ownership token or the private key".into());
                    }
                    Ok(r)
                },
            )
            .await;
            // The snapshot goes before the slot adds to it, so nothing is copied.
            drop(recent);
            let created = match created {
                Ok(call) => call.value,
                Err(f) => return Err(creation_failed(ctx, id, serial, f).await),
            };
            slot.remember_certificate(&created.certificate_id);
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
        .map_err(|e| ctx.ledger_failed(e))?;
    Ok(Issued {
        token_expires_ms,
        ..issued
    })
}

/// A CreateCertificate answer this slot already took for another device: a late duplicate.
fn stale_certificate(
    format: crate::fleet::Format,
    bytes: &Bytes,
    recent: &VecDeque<String>,
) -> Verdict {
    #[derive(serde::Deserialize)]
    struct Id {
        #[serde(rename = "certificateId")]
        certificate_id: String,
    }
    match decode::<Id>(format, bytes) {
        Ok(r) if recent.contains(&r.certificate_id) => Verdict::Stale,
        _ => Verdict::Take,
    }
}

async fn create_from_csr(
    ctx: &FlowContext,
    slot: &mut SessionSlot,
    id: i64,
    serial: &str,
    csr_pem: &str,
    spki: &[u8],
    deadline: Instant,
) -> Result<CreateCertificateFromCsrResponse, NotProvisioned> {
    let format = ctx.cfg.format;
    let request = encode(
        format,
        &CreateCertificateFromCsrRequest {
            certificate_signing_request: Some(csr_pem.to_string()),
        },
    );
    let recent = slot.recent_certificates();
    let created = call_with_retry::<CreateCertificateFromCsrResponse>(
        ctx,
        slot,
        CallSpec {
            device: id,
            serial,
            api: &Api::CreateCertificateFromCsr,
            limiter: &ctx.limits().create_certificate,
            payload: request,
            deadline,
        },
        &|bytes| stale_certificate(format, bytes, &recent),
        |bytes| {
            let r: CreateCertificateFromCsrResponse =
                decode(format, bytes).map_err(|e| e.to_string())?;
            // A certificate for another key is a foreign reply: never use it.
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
    .await;
    // The snapshot goes before the slot adds to it, so nothing is copied.
    drop(recent);
    let created = match created {
        Ok(call) => call.value,
        Err(f) => return Err(creation_failed(ctx, id, serial, f).await),
    };
    slot.remember_certificate(&created.certificate_id);
    Ok(created)
}

/// A certificate request that did not get its certificate. Stopped before any request went
/// out, the key reserved for it is given back: nothing can have been issued, so the next run
/// does not list it as a possible orphan.
async fn creation_failed(
    ctx: &FlowContext,
    id: i64,
    serial: &str,
    f: CallFailure,
) -> NotProvisioned {
    if let CallFailure::Interrupted { sent: false } = f {
        let released = ctx
            .ledger
            .record(
                id,
                Transition::KeyReleased {
                    reason: "the station stopped before the certificate request was sent".into(),
                },
            )
            .await;
        if let Err(e) = released {
            return ctx.ledger_failed(e);
        }
    }
    f.into_outcome(ctx, serial)
}

/// How a RegisterThing ended, short of a failure.
enum Registration {
    Accepted(RegisterThingResponse),
    /// `InvalidCertificateOwnershipToken`: the token can no longer register this certificate.
    /// `earlier_lost`: an earlier request of this call was sent and its answer lost.
    TokenRefused {
        earlier_lost: bool,
    },
}

/// RegisterThing with the token held.
async fn register(
    ctx: &FlowContext,
    slot: &mut SessionSlot,
    id: i64,
    issued: &Issued,
    parameters: &BTreeMap<String, String>,
    serial: &str,
    deadline: Instant,
) -> Result<Registration, NotProvisioned> {
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
    // A RegisterThing answer naming a thing this session delivered to another board is a
    // late duplicate of that board's answer (AWS answers on the requesting connection, and
    // two boards never get one thing).
    let recent = slot.recent_things();
    let format = cfg.format;
    let result = call_with_retry(
        ctx,
        slot,
        CallSpec {
            device: id,
            serial,
            api: &api,
            limiter: &ctx.limits().register_thing,
            payload: request,
            deadline: deadline.min(token_deadline),
        },
        &|bytes| match decode::<RegisterThingResponse>(format, bytes) {
            Ok(r) => match r.thing_name {
                Some(t) if recent.iter().any(|(s, thing)| *thing == t && s != serial) => {
                    Verdict::Stale
                }
                _ => Verdict::Take,
            },
            Err(_) => Verdict::Take,
        },
        |bytes| decode::<RegisterThingResponse>(format, bytes).map_err(|e| e.to_string()),
    )
    .await;
    // The snapshot goes before the slot adds to it, so nothing is copied.
    drop(recent);
    ctx.telemetry
        .emit(Event::StageTime {
            stage: Stage::RegisterThing,
            elapsed: t.elapsed(),
        })
        .await;
    match result {
        Ok(call) => {
            if let Some(thing) = &call.value.thing_name {
                slot.remember_thing(serial, thing);
            }
            Ok(Registration::Accepted(call.value))
        }
        Err(CallFailure::Rejected { error, lost, .. })
            if error.status_code == 400
                && error.error_code == "InvalidCertificateOwnershipToken" =>
        {
            Ok(Registration::TokenRefused {
                earlier_lost: lost > 0,
            })
        }
        // Answers were lost and the device gives up: one of those requests may have
        // registered the certificate. It is listed as possibly active, not as pending.
        Err(
            f @ (CallFailure::GaveUp { lost: 1.., .. } | CallFailure::Rejected { lost: 1.., .. }),
        ) => {
            let reason = "RegisterThing's answers were lost before the device gave up: one of them may have registered it";
            abandon(ctx, id, reason, OrphanStatus::Unknown).await?;
            Err(f.into_outcome(ctx, serial))
        }
        Err(f) => Err(f.into_outcome(ctx, serial)),
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
        assert_eq!(e.code, FailureCode::MissingBoardValue("mac".into()));
        assert!(e.message.contains("SN1"));
    }
}
