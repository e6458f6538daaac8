//! Request, response and error payloads of the three fleet-provisioning APIs
//! (docs/aws-fleet-provisioning.md §1.2).
//!
//! JSON field names are camelCase; CBOR payloads are maps with the same text keys. Unknown
//! request keys are ignored (older SDKs send extra ones). Secret fields (the private key of
//! `CreateKeysAndCertificate`, the ownership token) are [`Secret`]s: redacted in `Debug`,
//! zeroized on drop.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::Format;

/// A string that must never reach a log, a metric or an error message.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret value; callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// `CreateKeysAndCertificate` accepted payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateKeysAndCertificateResponse {
    pub certificate_id: String,
    pub certificate_pem: String,
    pub private_key: Secret,
    pub certificate_ownership_token: Secret,
}

/// `CreateCertificateFromCsr` request payload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateCertificateFromCsrRequest {
    /// PEM CSR. Optional in the type so that a missing field is reported as an invalid CSR
    /// rather than a parse failure.
    #[serde(default)]
    pub certificate_signing_request: Option<String>,
}

/// `CreateCertificateFromCsr` accepted payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateCertificateFromCsrResponse {
    pub certificate_id: String,
    pub certificate_pem: String,
    pub certificate_ownership_token: Secret,
}

/// `RegisterThing` request payload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterThingRequest {
    #[serde(default)]
    pub certificate_ownership_token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, String>>,
}

/// `RegisterThing` accepted payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterThingResponse {
    #[serde(default)]
    pub device_configuration: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thing_name: Option<String>,
}

/// The rejected payload of all three APIs: `{statusCode, errorCode, errorMessage}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResponse {
    pub status_code: u16,
    #[serde(default)]
    pub error_code: String,
    #[serde(default)]
    pub error_message: String,
}

impl fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status_code, self.error_code, self.error_message
        )
    }
}

/// A payload that could not be decoded in the topic's format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {format} payload: {reason}")]
pub struct DecodeError {
    pub format: &'static str,
    pub reason: String,
}

/// Encodes a payload in the topic's format.
pub fn encode<T: Serialize>(format: Format, value: &T) -> Vec<u8> {
    match format {
        // Serializing these plain structs cannot fail.
        Format::Json => {
            // Sized for a certificate answer at once: growing by doubling copies the PEM
            // several times over.
            let mut out = Vec::with_capacity(2048);
            serde_json::to_writer(&mut out, value).expect("JSON encoding of a payload struct");
            out
        }
        Format::Cbor => {
            let mut out = Vec::new();
            ciborium::into_writer(value, &mut out).expect("CBOR encoding into a Vec");
            out
        }
    }
}

/// Decodes a payload in the topic's format.
pub fn decode<T: DeserializeOwned>(format: Format, bytes: &[u8]) -> Result<T, DecodeError> {
    match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| DecodeError {
            format: "JSON",
            reason: e.to_string(),
        }),
        Format::Cbor => ciborium::from_reader(bytes).map_err(|e| DecodeError {
            format: "CBOR",
            reason: e.to_string(),
        }),
    }
}

/// Decodes a request whose payload may legitimately be empty (AWS accepts an empty payload
/// as well as `{}` for `CreateKeysAndCertificate`, docs/aws-fleet-provisioning.md §1.2).
pub fn decode_or_default<T: DeserializeOwned + Default>(
    format: Format,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    decode(format, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_field_names_are_the_documented_ones() {
        let e = ErrorResponse {
            status_code: 400,
            error_code: "InvalidParameters".into(),
            error_message: "x".into(),
        };
        assert_eq!(
            String::from_utf8(encode(Format::Json, &e)).unwrap(),
            r#"{"statusCode":400,"errorCode":"InvalidParameters","errorMessage":"x"}"#
        );
        let r: RegisterThingRequest = decode(
            Format::Json,
            br#"{"certificateOwnershipToken":"t","parameters":{"A":"1"},"certificateId":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(r.certificate_ownership_token.unwrap().expose(), "t");
        assert_eq!(r.parameters.unwrap()["A"], "1");
    }

    #[test]
    fn register_response_accepts_empty_device_configuration() {
        let r: RegisterThingResponse = decode(
            Format::Json,
            br#"{"deviceConfiguration":{},"thingName":"MAS-999999999"}"#,
        )
        .unwrap();
        assert!(r.device_configuration.is_empty());
        assert_eq!(r.thing_name.as_deref(), Some("MAS-999999999"));
    }

    #[test]
    fn cbor_round_trip_keeps_integer_status() {
        let e = ErrorResponse {
            status_code: 429,
            error_code: "ThrottlingException".into(),
            error_message: "slow down".into(),
        };
        let bytes = encode(Format::Cbor, &e);
        // A CBOR map whose "statusCode" value is an unsigned integer (major type 0).
        let v: ciborium::Value = ciborium::from_reader(&bytes[..]).unwrap();
        let map = v.as_map().unwrap();
        let status = map
            .iter()
            .find(|(k, _)| k.as_text() == Some("statusCode"))
            .unwrap();
        assert!(status.1.is_integer());
        assert_eq!(decode::<ErrorResponse>(Format::Cbor, &bytes).unwrap(), e);
    }

    #[test]
    fn empty_payload_decodes_to_default() {
        let r: CreateCertificateFromCsrRequest = decode_or_default(Format::Json, b"").unwrap();
        assert!(r.certificate_signing_request.is_none());
        assert!(decode::<RegisterThingRequest>(Format::Json, b"{not json").is_err());
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Secret::new("-----BEGIN PRIVATE KEY-----abc");
        assert!(!format!("{s:?}").contains("BEGIN"));
    }
}
