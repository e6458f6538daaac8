//! What the engine knows about the line as a whole, shared by every session: whether any
//! device got through yet, whether the endpoint is reachable, and the errors that stop the
//! line because retrying cannot fix them.
//!
//! Rules (issue 8):
//! - **One certificate until the line is proven.** Until one device has passed RegisterThing,
//!   only one device at a time may create a certificate (the probe). A bad template or
//!   parameter then costs one certificate, not one per board.
//! - **Before the first success, a rejection is the configuration's fault.** A 4xx answer to
//!   the probe stops the line with [`LineError::FirstDeviceRejected`]; afterwards it fails only
//!   its device. A missing template (404) stops the line at any time.
//! - **Silence and closes before the first answer are the configuration's fault**: as many
//!   unanswered requests of an API in a row as a device may try (`max_attempts`: one device
//!   gave up on them), or three closed connections right after a request, while that API has
//!   never been answered, stop the line ([`LineError::SilentEndpoint`],
//!   [`LineError::ClosedAtRequest`]); later they are timeouts and throttles of one device. (A
//!   slow endpoint answers some requests in time; a silent one, e.g. a claim policy without
//!   iot:Receive, answers none.)
//! - **An outage pauses, it does not fail.** While the endpoint cannot be reached, devices
//!   wait (until their deadline); the operator is told once when it goes and once when it
//!   comes back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

/// Connections closed right after a request of one API, before any answer, that stop it.
const CLOSED_LIMIT: u32 = 3;

/// Problems that stop the line: every board would fail the same way.
#[derive(Debug, Clone, thiserror::Error, miette::Diagnostic)]
pub enum LineError {
    #[error("{endpoint} presented a server certificate the station does not trust: {reason}")]
    #[diagnostic(
        code(station::line::server_certificate),
        help(
            "endpoint.root_ca must hold the CA that signs the endpoint's certificate (for AWS: Amazon Root CA 1 and Amazon Root CA 3 in one PEM file), and endpoint.endpoint must be the data endpoint's exact host name (aws iot describe-endpoint --endpoint-type iot:Data-ATS)"
        )
    )]
    ServerCertificate { endpoint: String, reason: String },

    #[error("{endpoint} refused the TLS handshake: {reason}")]
    #[diagnostic(
        code(station::line::claim_certificate),
        help(
            "the claim certificate must be registered and ACTIVE in this account and region, and its CA registered if it is not AWS-issued; check endpoint.claim_cert and endpoint.claim_key (and port 443 needs ALPN, which the station sets)"
        )
    )]
    ClaimCertificate { endpoint: String, reason: String },

    #[error("{endpoint} refused CONNECT for client id {client_id}: {code}")]
    #[diagnostic(
        code(station::line::connect_refused),
        help(
            "the claim policy must allow iot:Connect for this client id (resource arn:aws:iot:REGION:ACCOUNT:client/<station.id>-*; client ids are <station.id>-<n>)"
        )
    )]
    ConnectRefused {
        endpoint: String,
        client_id: String,
        code: String,
    },

    #[error("SUBSCRIBE to {filter} was refused: {code}")]
    #[diagnostic(
        code(station::line::subscribe_refused),
        help(
            "the claim policy must allow iot:Subscribe on topicfilter/{filter} (README shows a claim policy for each key source)"
        )
    )]
    SubscribeRefused { filter: String, code: String },

    #[error(
        "the endpoint closed the connection at SUBSCRIBE {closes} times and never accepted one"
    )]
    #[diagnostic(
        code(station::line::subscribe_closed),
        help(
            "on MQTT 3.1.1 AWS closes the connection when the policy denies a SUBSCRIBE: the claim policy must allow iot:Subscribe on the reply topic filters (README shows one); --mqtt-version 5 gets a reason code instead"
        )
    )]
    SubscribeClosed { closes: u32 },

    #[error("{api}: PUBLISH to {topic} is not authorized")]
    #[diagnostic(
        code(station::line::publish_not_authorized),
        help(
            "the claim policy must allow iot:Publish and iot:Receive on topic/{topic} and its /accepted and /rejected replies (README shows a claim policy for each key source)"
        )
    )]
    PublishNotAuthorized { api: &'static str, topic: String },

    #[error(
        "the endpoint closed the connection right after {closes} {api} requests and never answered one"
    )]
    #[diagnostic(
        code(station::line::closed_at_request),
        help(
            "on MQTT 3.1.1 AWS closes the connection when the policy denies a PUBLISH: the claim policy must allow iot:Publish on the request topic and iot:Receive on its replies; --mqtt-version 5 gets a reason code instead"
        )
    )]
    ClosedAtRequest { api: &'static str, closes: u32 },

    #[error(
        "no reply to {api} within {secs} s, {tries} times, and the endpoint has never answered one"
    )]
    #[diagnostic(
        code(station::line::silent_endpoint),
        help(
            "the claim policy must allow iot:Receive on the /accepted and /rejected reply topics, and endpoint.endpoint must be an AWS IoT data endpoint (xxxx-ats.iot.REGION.amazonaws.com); if the endpoint is only slow, raise provision.request_timeout_s"
        )
    )]
    SilentEndpoint {
        api: &'static str,
        secs: u64,
        tries: u32,
    },

    #[error("provisioning template {template} does not exist: {message}")]
    #[diagnostic(
        code(station::line::template_not_found),
        help(
            "create the template in this account and region (aws iot create-provisioning-template), or fix provision.template_name / --template-name"
        )
    )]
    TemplateNotFound { template: String, message: String },

    #[error("the line's first device (board {serial}) was refused: {message}")]
    #[diagnostic(
        code(station::line::first_device_rejected),
        help(
            "no device has been provisioned yet, so the station stopped rather than spend a certificate on every board: fix the template or [parameters] (or the claim policy) and run again — the board resumes with the certificate it has. If only this board is at fault, take it off the jig first"
        )
    )]
    FirstDeviceRejected { serial: String, message: String },
}

#[derive(Default)]
struct ApiHealth {
    succeeded: bool,
    silent: u32,
    closed: u32,
}

struct Outage {
    since: Instant,
}

/// The line's shared state; see the module docs.
pub struct LineHealth {
    /// Unanswered requests of one API in a row, before any answer, that stop the line.
    silent_limit: u32,
    registered_once: AtomicBool,
    probe: Arc<tokio::sync::Mutex<()>>,
    apis: Mutex<HashMap<&'static str, ApiHealth>>,
    subscribed_once: AtomicBool,
    subscribe_closes: Mutex<u32>,
    outage: Mutex<Option<Outage>>,
    last_outage_end: Mutex<Option<Instant>>,
}

impl LineHealth {
    /// `silent_limit`: a device's attempts (`provision.max_attempts`).
    pub fn new(silent_limit: u32) -> LineHealth {
        LineHealth {
            silent_limit: silent_limit.max(1),
            registered_once: AtomicBool::new(false),
            probe: Arc::new(tokio::sync::Mutex::new(())),
            apis: Mutex::new(HashMap::new()),
            subscribed_once: AtomicBool::new(false),
            subscribe_closes: Mutex::new(0),
            outage: Mutex::new(None),
            last_outage_end: Mutex::new(None),
        }
    }

    /// Whether a device has passed RegisterThing (the line is proven).
    pub fn proven(&self) -> bool {
        self.registered_once.load(Ordering::SeqCst)
    }

    /// Until the line is proven: waits to be the one device that may create a certificate.
    /// `None` once the line is proven (no waiting).
    pub async fn probe(&self) -> Option<OwnedMutexGuard<()>> {
        if self.proven() {
            return None;
        }
        let guard = self.probe.clone().lock_owned().await;
        // Proven while this device waited: everyone goes.
        (!self.proven()).then_some(guard)
    }

    /// A device passed RegisterThing.
    pub fn registered(&self) {
        self.registered_once.store(true, Ordering::SeqCst);
    }

    fn api<R>(&self, api: &'static str, f: impl FnOnce(&mut ApiHealth) -> R) -> R {
        let mut apis = self.apis.lock().unwrap_or_else(|p| p.into_inner());
        f(apis.entry(api).or_default())
    }

    /// `api` was answered (accepted or rejected: the endpoint hears and answers).
    pub fn answered(&self, api: &'static str) {
        self.api(api, |h| {
            h.succeeded = true;
            h.silent = 0;
            h.closed = 0;
        });
    }

    /// A request of `api` was never answered; the error that stops the line, if this is
    /// the configuration's fault.
    pub fn unanswered(&self, api: &'static str, secs: u64) -> Option<LineError> {
        let limit = self.silent_limit;
        self.api(api, |h| {
            h.silent += 1;
            (!h.succeeded && h.silent >= limit).then_some(LineError::SilentEndpoint {
                api,
                secs,
                tries: h.silent,
            })
        })
    }

    /// The connection closed right after a request of `api`; the error that stops the
    /// line, if this is the configuration's fault.
    pub fn closed_at_request(&self, api: &'static str) -> Option<LineError> {
        self.api(api, |h| {
            h.closed += 1;
            (!h.succeeded && h.closed >= CLOSED_LIMIT).then_some(LineError::ClosedAtRequest {
                api,
                closes: h.closed,
            })
        })
    }

    /// A SUBSCRIBE was granted.
    pub fn subscribed(&self) {
        self.subscribed_once.store(true, Ordering::SeqCst);
    }

    /// The connection closed right after a SUBSCRIBE.
    pub fn closed_at_subscribe(&self) -> Option<LineError> {
        let mut n = self
            .subscribe_closes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *n += 1;
        (!self.subscribed_once.load(Ordering::SeqCst) && *n >= CLOSED_LIMIT)
            .then_some(LineError::SubscribeClosed { closes: *n })
    }

    /// The endpoint could not be reached; true when this starts an outage (tell the
    /// operator once).
    pub fn unreachable(&self) -> bool {
        let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if o.is_some() {
            return false;
        }
        *o = Some(Outage {
            since: Instant::now(),
        });
        true
    }

    /// A connection succeeded; the length of the outage this ends, if one was going on.
    pub fn reachable(&self) -> Option<Duration> {
        let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        let ended = o.take()?;
        *self
            .last_outage_end
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Some(ended.since.elapsed())
    }

    /// Whether the endpoint was away at some time after `t` (or is away now).
    pub fn outage_since(&self, t: Instant) -> bool {
        self.outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
            || self
                .last_outage_end
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|end| end >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_probe_at_a_time_until_a_device_registers() {
        let h = Arc::new(LineHealth::new(5));
        let first = h.probe().await.expect("the first device probes");
        let waiting = tokio::spawn({
            let h = h.clone();
            async move { h.probe().await.is_some() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a second certificate waits");
        h.registered();
        drop(first);
        assert!(!waiting.await.unwrap(), "proven: nobody holds a probe");
        assert!(h.probe().await.is_none());
    }

    #[test]
    fn silence_and_closes_stop_the_line_only_before_a_first_answer() {
        let h = LineHealth::new(2);
        assert!(h.unanswered("RegisterThing", 30).is_none());
        assert!(matches!(
            h.unanswered("RegisterThing", 30),
            Some(LineError::SilentEndpoint { tries: 2, .. })
        ));
        h.answered("CreateCertificateFromCsr");
        for _ in 0..10 {
            assert!(h.unanswered("CreateCertificateFromCsr", 30).is_none());
            assert!(h.closed_at_request("CreateCertificateFromCsr").is_none());
        }
        assert!(h.closed_at_request("RegisterThing").is_none());
        assert!(h.closed_at_request("RegisterThing").is_none());
        assert!(h.closed_at_request("RegisterThing").is_some());
    }

    #[test]
    fn an_outage_is_reported_once_and_its_end_once() {
        let h = LineHealth::new(5);
        let before = Instant::now();
        assert!(!h.outage_since(before));
        assert!(h.unreachable());
        assert!(!h.unreachable());
        assert!(h.outage_since(before));
        assert!(h.reachable().is_some());
        assert!(h.reachable().is_none());
        assert!(h.outage_since(before));
        assert!(!h.outage_since(Instant::now() + Duration::from_secs(1)));
    }
}
