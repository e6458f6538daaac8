//! The emulator's error table: every `{statusCode, errorCode, errorMessage}` it can send on a
//! `.../rejected` topic is built here and nowhere else (docs/aws-fleet-provisioning.md §1.3).
//!
//! | status | errorCode                          | when                                         | evidence  |
//! |--------|------------------------------------|----------------------------------------------|-----------|
//! | 400    | `InvalidPayload`                   | request payload is not valid JSON/CBOR       | UNCONFIRMED (v4 SDK test string) |
//! | 400    | `InvalidCSR`                       | CSR unparsable, bad signature, weak key      | UNCONFIRMED (third-party fixture) |
//! | 400    | `InvalidCertificateOwnershipToken` | token missing/empty, unknown, expired, used  | OBSERVED for empty |
//! | 400    | `InvalidParameters`                | template cannot resolve a value              | OBSERVED  |
//! | 400    | `InvalidRequest`                   | template exists but is disabled              | UNCONFIRMED |
//! | 404    | `ResourceNotFound`                 | no template of that name                     | UNCONFIRMED (v4 SDK enum) |
//! | 403    | `AccessDenied`                     | pre-provisioning hook denied/failed/timed out| UNCONFIRMED (docs: ACCESS_DENIED) |
//! | 500    | `InternalFailure`                  | no RSA key could be made (CreateKeysAndCertificate) | UNCONFIRMED |
//! | 409    | `ResourceConflict`                 | OverrideSettings `FAIL` on an existing value | UNCONFIRMED |
//! | 429    | `Throttling`                       | account quota for the API exceeded           | UNCONFIRMED (v4 SDK enum) |
//! | 500    | `InternalFailure`                  | the emulator failed (or fault injection)     | UNCONFIRMED (v4 SDK enum) |

use crate::fleet::ErrorResponse;

/// Every reason the emulator rejects a fleet-provisioning request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    InvalidPayload(String),
    InvalidCsr(String),
    TokenMissing,
    TokenInvalid,
    InvalidParameters(String),
    TemplateDisabled(String),
    TemplateNotFound(String),
    /// The hook answered without `"allowProvisioning": true`.
    HookDenied,
    /// The hook could not be called, failed, answered badly or too late; the reason names
    /// what went wrong (never the hook's own output, which may echo secrets).
    HookFailed(String),
    Conflict(String),
    Throttled(&'static str),
    Internal(String),
}

/// Every errorCode the table can send (the keys `[emulator.error_codes]` may rename).
pub(crate) const ERROR_CODES: &[&str] = &[
    "InvalidPayload",
    "InvalidCSR",
    "InvalidCertificateOwnershipToken",
    "InvalidParameters",
    "InvalidRequest",
    "ResourceNotFound",
    "AccessDenied",
    "ResourceConflict",
    "Throttling",
    "InternalFailure",
];

impl Rejection {
    /// The payload with errorCodes renamed per `renames` (default code → configured code).
    pub(crate) fn to_response_with(
        &self,
        renames: &std::collections::BTreeMap<String, String>,
    ) -> ErrorResponse {
        let mut r = self.to_response();
        if let Some(code) = renames.get(&r.error_code) {
            r.error_code = code.clone();
        }
        r
    }

    /// The payload sent on the rejected topic.
    pub(crate) fn to_response(&self) -> ErrorResponse {
        let (status, code, message) = match self {
            Rejection::InvalidPayload(m) => (400, "InvalidPayload", m.clone()),
            Rejection::InvalidCsr(m) => (400, "InvalidCSR", m.clone()),
            Rejection::TokenMissing => (
                400,
                "InvalidCertificateOwnershipToken",
                "Certificate ownership token cannot be empty.".to_string(),
            ),
            Rejection::TokenInvalid => (
                400,
                "InvalidCertificateOwnershipToken",
                "Certificate ownership token is invalid or has expired.".to_string(),
            ),
            Rejection::InvalidParameters(m) => (400, "InvalidParameters", m.clone()),
            Rejection::TemplateDisabled(name) => (
                400,
                "InvalidRequest",
                format!("Provisioning template {name} is disabled."),
            ),
            Rejection::TemplateNotFound(name) => (
                404,
                "ResourceNotFound",
                format!("Provisioning template {name} does not exist."),
            ),
            Rejection::HookDenied => (
                403,
                "AccessDenied",
                "The pre-provisioning hook did not allow provisioning.".to_string(),
            ),
            Rejection::HookFailed(reason) => (
                403,
                "AccessDenied",
                format!("The pre-provisioning hook failed: {reason}."),
            ),
            Rejection::Conflict(m) => (409, "ResourceConflict", m.clone()),
            Rejection::Throttled(api) => (429, "Throttling", format!("Rate exceeded for {api}.")),
            Rejection::Internal(m) => (500, "InternalFailure", m.clone()),
        };
        ErrorResponse {
            status_code: status,
            error_code: code.to_string(),
            error_message: message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_token_message_is_the_observed_one() {
        let r = Rejection::TokenMissing.to_response();
        assert_eq!(r.status_code, 400);
        assert_eq!(r.error_code, "InvalidCertificateOwnershipToken");
        assert_eq!(
            r.error_message,
            "Certificate ownership token cannot be empty."
        );
    }

    #[test]
    fn statuses_follow_the_table() {
        assert_eq!(
            Rejection::Throttled("RegisterThing")
                .to_response()
                .status_code,
            429
        );
        assert_eq!(Rejection::HookDenied.to_response().status_code, 403);
        let failed = Rejection::HookFailed("it did not answer within 5 s".into()).to_response();
        assert_eq!(
            (failed.status_code, failed.error_code.as_str()),
            (403, "AccessDenied")
        );
        assert_eq!(
            failed.error_message,
            "The pre-provisioning hook failed: it did not answer within 5 s."
        );
        assert_eq!(
            Rejection::TemplateNotFound("x".into())
                .to_response()
                .status_code,
            404
        );
        assert_eq!(
            Rejection::Internal("x".into()).to_response().status_code,
            500
        );
    }
}
