//! One API call with retries, shared by the flow's steps: what each failure means (an
//! outage waits, a throttle slows down, a lost answer is noted, a problem no retry can fix
//! stops the line) and the grace a request already sent gets when the station stops.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::SessionSlot;
use super::flow::FlowContext;
use super::health::LineError;
use super::rate::RateLimiter;
use super::session::{CloseCause, ErrorClass, PubAckRefusal, Reply, SessionError, Verdict};
use super::{DeviceFailure, FailureCode, NotProvisioned};
use crate::fleet::{Api, ApiKind, ErrorResponse, ReplyKind};
use crate::telemetry::{ApiResult, Event};

/// How long a request already sent may still be answered after the station was told to stop.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Full-jitter exponential backoff: uniform in [0, min(cap, base · 2^attempt)].
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100);
    let cap = Duration::from_secs(5);
    let ceiling = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    Duration::from_micros(fastrand::u64(0..=ceiling.as_micros() as u64))
}

/// One API call to make.
pub(super) struct CallSpec<'a> {
    /// Ledger id of the device.
    pub device: i64,
    /// The board's serial (telemetry counts its attempts).
    pub serial: &'a str,
    pub api: &'a Api,
    pub limiter: &'a RateLimiter,
    pub payload: Vec<u8>,
    pub deadline: Instant,
}

/// An accepted call.
pub(super) struct Call<T> {
    pub value: T,
}

/// Why a call gave up.
pub(super) enum CallFailure {
    /// A rejection that retrying cannot fix.
    Rejected {
        message: String,
        error: ErrorResponse,
        api: ApiKind,
        lost: u32,
    },
    /// Retries or the deadline ran out. `lost`: requests sent whose answers never came.
    GaveUp {
        code: FailureCode,
        message: String,
        lost: u32,
    },
    /// The station stopped, or the line was stopped (the cause is raised on the halt).
    /// `sent`: a request of this call may have been acted on (its answer never came).
    Interrupted { sent: bool },
}

impl CallFailure {
    /// What a failed call means for the device, and for the line: before the line's first
    /// device got through, a rejection is the configuration's fault and stops the line; a
    /// missing template always does.
    pub(super) fn into_outcome(self, ctx: &FlowContext, serial: &str) -> NotProvisioned {
        match self {
            CallFailure::Rejected { error, .. } if error.status_code == 404 => {
                ctx.stop_line(LineError::TemplateNotFound {
                    template: ctx.cfg.template.clone(),
                    message: error.to_string(),
                })
            }
            CallFailure::Rejected { message, .. } if !ctx.health.proven() => {
                ctx.stop_line(LineError::FirstDeviceRejected {
                    serial: serial.to_string(),
                    message,
                })
            }
            CallFailure::Rejected {
                message,
                error,
                api,
                ..
            } => NotProvisioned::Failed(DeviceFailure::new(
                FailureCode::Rejected {
                    api,
                    error_code: error.error_code,
                },
                message,
            )),
            CallFailure::GaveUp { code, message, .. } => {
                NotProvisioned::Failed(DeviceFailure::new(code, message))
            }
            CallFailure::Interrupted { .. } => NotProvisioned::Interrupted,
        }
    }
}

/// The line-stopping error for a failure retrying cannot fix.
pub(super) fn line_error(e: &SessionError, client_id: &str) -> LineError {
    use super::down::TlsProblem;
    match e {
        SessionError::Tls {
            endpoint,
            reason,
            problem: TlsProblem::ServerCertificate,
            ..
        } => LineError::ServerCertificate {
            endpoint: endpoint.clone(),
            reason: reason.clone(),
        },
        SessionError::Tls {
            endpoint, reason, ..
        } => LineError::ClaimCertificate {
            endpoint: endpoint.clone(),
            reason: reason.clone(),
        },
        SessionError::Refused { endpoint, code, .. } => LineError::ConnectRefused {
            endpoint: endpoint.clone(),
            client_id: client_id.to_string(),
            code: code.clone(),
        },
        SessionError::SubscribeRefused { filter, code } => LineError::SubscribeRefused {
            filter: filter.clone(),
            code: code.clone(),
        },
        SessionError::PublishRefused { api, topic, .. } => LineError::PublishNotAuthorized {
            api,
            topic: topic.clone(),
        },
        // A connection closed as not authorized right after a request (MQTT 5 DISCONNECT).
        other => LineError::PublishNotAuthorized {
            api: "request",
            topic: other.to_string(),
        },
    }
}

/// Waits out a backoff; false when the station stopped meanwhile.
async fn pause(ctx: &FlowContext, wait: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = ctx.halt.shutdown().wait() => false,
    }
}

/// What to do after the session could not be (re)built.
enum ConnectOutcome {
    /// Try again after the backoff; `counts` when it uses up an attempt.
    Retry {
        counts: bool,
    },
    Stop,
}

/// Handles a failure to connect or subscribe: an outage pauses, a configuration problem
/// stops the line.
async fn connect_failed(ctx: &FlowContext, slot: &SessionSlot, e: &SessionError) -> ConnectOutcome {
    match (e.class(), e) {
        (ErrorClass::Outage, _) => {
            if ctx.health.unreachable() {
                tracing::warn!(
                    "the endpoint cannot be reached ({e}); devices wait until it is back (at most provision.device_deadline_s)"
                );
                ctx.telemetry
                    .emit(Event::EndpointUnreachable {
                        reason: e.to_string(),
                    })
                    .await;
            }
            ConnectOutcome::Retry { counts: false }
        }
        (ErrorClass::Permanent, _) => {
            ctx.halt.raise(line_error(e, slot.client_id()));
            ConnectOutcome::Stop
        }
        // MQTT 3.1.1 answers a SUBSCRIBE the policy denies by closing the connection.
        (
            _,
            SessionError::Closed {
                after_request: true,
                ..
            },
        ) => match ctx.health.closed_at_subscribe() {
            Some(line) => {
                ctx.halt.raise(line);
                ConnectOutcome::Stop
            }
            None => ConnectOutcome::Retry { counts: false },
        },
        (ErrorClass::Reconnect, _) => ConnectOutcome::Retry { counts: false },
        _ => ConnectOutcome::Retry { counts: true },
    }
}

/// Calls `api` until it is accepted and `accept` takes the reply, retrying what can be
/// retried (see the module docs). `verdict` drops provably stale duplicates while waiting.
pub(super) async fn call_with_retry<T>(
    ctx: &FlowContext,
    slot: &mut SessionSlot,
    spec: CallSpec<'_>,
    verdict: &(dyn Fn(&Bytes) -> Verdict + Sync),
    accept: impl Fn(&Bytes) -> Result<T, String>,
) -> Result<Call<T>, CallFailure> {
    let cfg = &ctx.cfg;
    let CallSpec {
        device,
        serial,
        api,
        limiter,
        payload,
        deadline,
    } = spec;
    let name = api.name();
    let kind = api.kind();
    let creates_certificate = matches!(api, Api::CreateCertificateFromCsr);
    let mut last = String::from("not tried");
    // Failures count against `max_attempts`; throttles, outages and reconnects do not (they
    // mean "slower" or "later", not "broken"), but every retry backs off further and none
    // goes past the device's deadline.
    let mut failures = 0;
    let mut tries: u32 = 0;
    // Requests sent whose answers never came: AWS may have acted on them.
    let mut lost = 0;
    while failures < cfg.max_attempts {
        let sent = lost > 0;
        if ctx.stopping() {
            return Err(CallFailure::Interrupted { sent });
        }
        if tries > 0 {
            ctx.telemetry.emit(Event::Retry { api: kind.code() }).await;
            let wait =
                backoff(tries.min(6)).min(deadline.saturating_duration_since(Instant::now()));
            if !pause(ctx, wait).await {
                return Err(CallFailure::Interrupted { sent });
            }
        }
        tries += 1;
        if Instant::now() >= deadline {
            return Err(CallFailure::GaveUp {
                code: FailureCode::Deadline(kind),
                message: format!("{last} (the device's deadline passed)"),
                lost,
            });
        }
        tokio::select! {
            _ = limiter.acquire() => {}
            _ = ctx.halt.shutdown().wait() => return Err(CallFailure::Interrupted { sent }),
        }
        let client_id = slot.client_id().to_string();
        let session = match slot.get(&cfg.limits.connect).await {
            Ok(s) => s,
            Err(e) => {
                last = format!("{name}: {e}");
                match connect_failed(ctx, slot, &e).await {
                    ConnectOutcome::Retry { counts } => {
                        failures += u32::from(counts);
                        continue;
                    }
                    ConnectOutcome::Stop => return Err(CallFailure::Interrupted { sent }),
                }
            }
        };
        let wait = cfg
            .request_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        // A request already sent when the station is told to stop gets a short grace for its
        // answer, so a certificate AWS issued is not left behind without need.
        let result = {
            let call = session.call(api, payload.clone(), wait, verdict);
            tokio::pin!(call);
            tokio::select! {
                r = &mut call => Some(r),
                _ = ctx.halt.shutdown().wait() => {
                    tokio::time::timeout(STOP_GRACE.min(wait), &mut call).await.ok()
                }
            }
        };
        if slot.take_fresh() {
            ctx.health.subscribed();
            if let Some(away) = ctx.health.reachable() {
                tracing::info!(
                    "the endpoint is back after {:.1} s; devices continue",
                    away.as_secs_f64()
                );
                ctx.telemetry
                    .emit(Event::EndpointReachable { after: away })
                    .await;
            }
        }
        let Some(result) = result else {
            // No answer within the grace: AWS may have acted on the request.
            if creates_certificate {
                note_lost(ctx, device, "the station stopped before the answer came").await;
            }
            return Err(CallFailure::Interrupted { sent: true });
        };
        let counted = |result: ApiResult| Event::ApiCall {
            api: kind,
            result,
            serial: serial.to_string(),
        };
        let outcome = match &result {
            Ok(Reply::Accepted(_)) => None,
            Ok(Reply::Rejected(err)) => Some(ApiResult::Rejected {
                status: err.status_code,
                error_code: err.error_code.clone(),
            }),
            Err(SessionError::Timeout { .. }) => Some(ApiResult::Timeout),
            Err(SessionError::PublishRefused { .. }) => Some(ApiResult::PublishRefused),
            Err(_) => Some(ApiResult::ConnectionLost),
        };
        if let Some(outcome) = outcome {
            ctx.telemetry.emit(counted(outcome)).await;
        }
        match result {
            Ok(Reply::Accepted(bytes)) => {
                ctx.health.answered(name);
                let accepted = accept(&bytes);
                let outcome = match accepted {
                    Ok(_) => ApiResult::Accepted,
                    Err(_) => ApiResult::Unusable,
                };
                ctx.telemetry.emit(counted(outcome)).await;
                match accepted {
                    Ok(value) => {
                        limiter.on_success();
                        return Ok(Call { value });
                    }
                    Err(reason) => {
                        // Unusable reply: start over on a fresh connection.
                        last = format!("{name} accepted reply refused: {reason}");
                        slot.reset();
                        failures += 1;
                    }
                }
            }
            Ok(Reply::Rejected(err)) => {
                ctx.health.answered(name);
                let topic = api.reply_topic(cfg.format, ReplyKind::Rejected);
                last = format!("{name} rejected on {topic}: {err}");
                if err.status_code == 429 {
                    limiter.on_throttle();
                    ctx.telemetry.emit(Event::Throttled { api: kind }).await;
                    if !limiter.retries_throttled() {
                        // A load test measuring quotas: not sent again (see `rate`).
                        return Err(throttled(kind, err.error_code, last, lost));
                    }
                } else if err.status_code < 500 {
                    return Err(CallFailure::Rejected {
                        message: last,
                        error: err,
                        api: kind,
                        lost,
                    });
                } else {
                    failures += 1;
                }
            }
            Err(e) => {
                last = format!("{name}: {e}");
                let after_request = matches!(
                    e,
                    SessionError::Timeout { .. }
                        | SessionError::Closed {
                            after_request: true,
                            ..
                        }
                );
                if after_request {
                    // The request may have been acted on without the station hearing it.
                    lost += 1;
                    if creates_certificate {
                        note_lost(ctx, device, &last).await;
                    }
                }
                match e.class() {
                    ErrorClass::Permanent => {
                        ctx.halt.raise(line_error(&e, &client_id));
                        return Err(CallFailure::Interrupted { sent });
                    }
                    ErrorClass::Throttle => {
                        if let SessionError::Closed { .. } = e {
                            slot.reset();
                            if let Some(line) = ctx.health.closed_at_request(name) {
                                ctx.halt.raise(line);
                                return Err(CallFailure::Interrupted { sent });
                            }
                        }
                        limiter.on_throttle();
                        ctx.telemetry.emit(Event::Throttled { api: kind }).await;
                        if !limiter.retries_throttled() {
                            let code = match e {
                                SessionError::PublishRefused { .. } => "publish_refused",
                                _ => "connection_closed",
                            };
                            return Err(throttled(kind, code.into(), last, lost));
                        }
                    }
                    ErrorClass::Reconnect | ErrorClass::Outage => {
                        slot.reset();
                        let taken_over = match &e {
                            SessionError::Closed {
                                cause: CloseCause::TakenOver,
                                ..
                            } => true,
                            SessionError::Closed {
                                after_request: false,
                                ..
                            } => slot.closed_while_idle(&ctx.health),
                            _ => false,
                        };
                        if taken_over {
                            taken_over_warning(ctx, &client_id).await;
                        }
                    }
                    ErrorClass::Attempt => {
                        if let SessionError::Timeout { secs, .. } = e
                            && let Some(line) = ctx.health.unanswered(name, secs)
                        {
                            ctx.halt.raise(line);
                            return Err(CallFailure::Interrupted { sent });
                        }
                        if !matches!(
                            e,
                            SessionError::PublishRefused {
                                code: PubAckRefusal::Other(_),
                                ..
                            }
                        ) {
                            slot.reset();
                        }
                        failures += 1;
                    }
                }
            }
        }
    }
    Err(CallFailure::GaveUp {
        code: FailureCode::GaveUp(kind),
        message: format!("{last} (gave up after {failures} failed attempts)"),
        lost,
    })
}

/// A throttled call that is not sent again (an open limiter): the device fails as
/// `<api>:<errorCode>` (without stopping the line, unlike a rejection before the first
/// device got through).
fn throttled(api: ApiKind, error_code: String, message: String, lost: u32) -> CallFailure {
    CallFailure::GaveUp {
        code: FailureCode::Rejected { api, error_code },
        message: format!("{message} (throttled; a load test measuring quotas does not retry)"),
        lost,
    }
}

/// A CreateCertificate request was sent and its answer lost: AWS may hold a certificate for
/// this key that the station never saw. The ledger lists it for cleanup.
async fn note_lost(ctx: &FlowContext, device: i64, reason: &str) {
    if let Err(e) = ctx.ledger.note_lost_request(device, reason).await {
        ctx.halt.raise(e);
    }
}

/// Another client connected with this session's client id and took the session over.
async fn taken_over_warning(ctx: &FlowContext, client_id: &str) {
    tracing::warn!(
        client_id,
        "the endpoint closed this session because another connection uses client id {client_id}: \
         is another station running with station.id = {:?}? Give each station its own station.id",
        ctx.cfg.station_id
    );
    ctx.telemetry
        .emit(Event::SessionTakenOver {
            client_id: client_id.to_string(),
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        for attempt in 0..40 {
            assert!(backoff(attempt) <= Duration::from_secs(5));
        }
    }
}
