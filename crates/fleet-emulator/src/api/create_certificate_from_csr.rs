//! `CreateCertificateFromCsr`: sign the device's CSR, register the certificate as
//! `PENDING_ACTIVATION` and hand out an ownership token valid for the configured TTL
//! (docs/aws-fleet-provisioning.md §1.2, §2).

use super::{ApiRequest, ApiService, register_new_certificate};
use crate::errors::Rejection;
use crate::fleet::payloads::{Secret, decode_or_default};
use crate::fleet::{CreateCertificateFromCsrRequest, CreateCertificateFromCsrResponse};

pub(super) async fn handle(
    svc: &ApiService,
    req: &ApiRequest,
    foreign: bool,
) -> Result<CreateCertificateFromCsrResponse, Rejection> {
    let body: CreateCertificateFromCsrRequest = decode_or_default(req.format, &req.payload)
        .map_err(|e| Rejection::InvalidPayload(e.to_string()))?;
    let csr = body
        .certificate_signing_request
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| Rejection::InvalidCsr("certificateSigningRequest is required".into()))?;

    // Verifying the CSR and signing the certificate take ~75 µs of CPU: done here, on the
    // worker that handles the request. Handing it to a blocking thread and back cost more (a
    // thread wake-up each way, ~2 context switches per certificate) than the reactor loses by
    // waiting for it.
    let issued = svc
        .ca
        .sign_csr(csr.as_bytes())
        .map_err(|e| Rejection::InvalidCsr(e.to_string()))?;

    if foreign {
        return foreign_reply(svc).await;
    }
    let token = register_new_certificate(svc, &issued).await?;
    Ok(CreateCertificateFromCsrResponse {
        certificate_id: issued.id,
        certificate_pem: issued.pem,
        certificate_ownership_token: Secret::new(token),
    })
}

/// Fault injection: a reply meant for another device — a certificate for a key the requester
/// does not hold, with a token for it. Nothing is registered: the certificate belongs to
/// whoever the reply was really for.
async fn foreign_reply(svc: &ApiService) -> Result<CreateCertificateFromCsrResponse, Rejection> {
    let ca = svc.ca.clone();
    let issued = tokio::task::spawn_blocking(move || {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        ca.issue_for_key(&rcgen::PublicKeyData::subject_public_key_info(&key))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| Rejection::Internal(format!("signing task failed: {e}")))?
    .map_err(Rejection::Internal)?;
    Ok(CreateCertificateFromCsrResponse {
        certificate_id: issued.id,
        certificate_pem: issued.pem,
        certificate_ownership_token: Secret::new(svc.new_token()),
    })
}
