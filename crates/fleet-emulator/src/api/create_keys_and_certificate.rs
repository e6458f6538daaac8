//! `CreateKeysAndCertificate`: hand out an RSA-2048 key pair the emulator made (PKCS#1 PEM)
//! and a certificate for it (`CN=AWS IoT Certificate`, AWS issuer, expiry 2049), registered
//! as `PENDING_ACTIVATION`, with an ownership token valid for the configured TTL
//! (docs/aws-fleet-provisioning.md §1.2, §1.4, §2).
//!
//! The request is empty in AWS's docs; an empty payload, `{}` and an empty CBOR map (`0xA0`)
//! are all accepted, and unknown keys are ignored. A payload that is not a map (or not valid
//! in the topic's format) is rejected with 400 `InvalidPayload`. Keys come from the
//! [`KeyStock`](crate::key_stock::KeyStock), never from the reactor.

use super::{ApiRequest, ApiService, register_new_certificate};
use crate::errors::Rejection;
use crate::fleet::payloads::Secret;
use crate::fleet::{CreateKeysAndCertificateResponse, Format};

pub(super) async fn handle(
    svc: &ApiService,
    req: &ApiRequest,
) -> Result<CreateKeysAndCertificateResponse, Rejection> {
    check_request(req.format, &req.payload)?;

    let key = svc.keys.take().await.map_err(|e| {
        tracing::error!(error = %e, "emulator: no RSA key for CreateKeysAndCertificate");
        Rejection::Internal("The service could not create a key pair.".into())
    })?;
    // Signing is CPU work: keep it off the reactor.
    let ca = svc.ca.clone();
    let (key, issued) = tokio::task::spawn_blocking(move || {
        let issued = ca.issue_for_key(key.spki_der());
        (key, issued)
    })
    .await
    .map_err(|e| Rejection::Internal(format!("signing task failed: {e}")))?;
    let issued = issued.map_err(|e| Rejection::Internal(format!("signing failed: {e}")))?;

    let token = register_new_certificate(svc, &issued).await?;
    Ok(CreateKeysAndCertificateResponse {
        certificate_id: issued.id,
        certificate_pem: issued.pem,
        private_key: Secret::new(key.private_pem()),
        certificate_ownership_token: Secret::new(token),
    })
}

/// Accepts an empty payload or a map (JSON object, CBOR map) with any keys.
fn check_request(format: Format, payload: &[u8]) -> Result<(), Rejection> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let is_map = match format {
        Format::Json => serde_json::from_slice::<serde_json::Value>(payload)
            .map(|v| v.is_object())
            .map_err(|e| format!("malformed JSON payload: {e}")),
        Format::Cbor => ciborium::from_reader::<ciborium::Value, _>(payload)
            .map(|v| v.is_map())
            .map_err(|e| format!("malformed CBOR payload: {e}")),
    };
    match is_map {
        Ok(true) => Ok(()),
        Ok(false) => Err(Rejection::InvalidPayload(format!(
            "the {} payload must be empty or a map",
            format.as_str().to_uppercase()
        ))),
        Err(reason) => Err(Rejection::InvalidPayload(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_payloads_and_maps_are_accepted() {
        for (format, payload) in [
            (Format::Json, &b""[..]),
            (Format::Json, b" \n"),
            (Format::Json, b"{}"),
            (Format::Json, br#"{"certificateId":"ignored","x":[1]}"#),
            (Format::Cbor, b""),
            (Format::Cbor, b"\xa0"),
            // {"x": 1}
            (Format::Cbor, b"\xa1\x61x\x01"),
        ] {
            assert_eq!(check_request(format, payload), Ok(()), "{payload:?}");
        }
    }

    #[test]
    fn anything_else_is_invalid_payload() {
        for (format, payload) in [
            (Format::Json, &b"[]"[..]),
            (Format::Json, b"null"),
            (Format::Json, b"{"),
            (Format::Json, b"\xa0"),
            (Format::Cbor, b"\x80"),
            (Format::Cbor, b"{}"),
            (Format::Cbor, b"\xa1"),
        ] {
            let e = check_request(format, payload).unwrap_err();
            assert_eq!(e.to_response().error_code, "InvalidPayload", "{payload:?}");
        }
    }
}
