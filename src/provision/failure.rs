//! Why a device failed, as a type: the short stable code counted in reports and written at
//! the head of the ledger's reason (`register_thing:InvalidParameters`, `jig:verify_mismatch`, …),
//! with the message that says which exchange failed and how.

use std::fmt;

use crate::fleet::ApiKind;
use crate::jig::JigFailure;

/// The stable code of a device failure. Its text (`Display`) is what `summary.json`'s
/// `failures` and the ledger's `reason` carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureCode {
    /// AWS rejected a call (`<api>:<AWS errorCode>`).
    Rejected { api: ApiKind, error_code: String },
    /// A call's attempts ran out (`<api>:gave_up`).
    GaveUp(ApiKind),
    /// The device's deadline passed during a call (`<api>:deadline`).
    Deadline(ApiKind),
    /// A template parameter needs a value the board did not report (`parameter:<name>`).
    MissingBoardValue(String),
    /// The key pool could not make a key (`keygen`).
    KeyGeneration,
    /// The board's CSR does not parse or verify (`board_csr`).
    BoardCsr,
    /// A resumed board holds a committed key whose certificate cannot be used
    /// (`resume:needs_new_key`).
    NeedsNewKey,
    /// Certificates in a row could not be registered (`certificate:rounds`).
    CertificateRounds,
    /// RegisterThing was accepted without a thing (`register_thing:no_thing_name`).
    NoThingName,
    /// The new identity could not be loaded for the post-provision check (`post_check:tls`).
    PostCheckTls,
    /// The new certificate could not connect (`post_check:connect`).
    PostCheckConnect,
    /// The board failed at the jig (`jig:<kind>`).
    Jig(JigFailure),
    /// The board already holds a verified identity (`already_provisioned`).
    AlreadyProvisioned,
    /// Another station sharing the ledger holds the board's serial (`held_by_station`).
    HeldElsewhere,
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureCode::Rejected { api, error_code } => write!(f, "{}:{error_code}", api.code()),
            FailureCode::GaveUp(api) => write!(f, "{}:gave_up", api.code()),
            FailureCode::Deadline(api) => write!(f, "{}:deadline", api.code()),
            FailureCode::MissingBoardValue(name) => write!(f, "parameter:{name}"),
            FailureCode::KeyGeneration => f.write_str("keygen"),
            FailureCode::BoardCsr => f.write_str("board_csr"),
            FailureCode::NeedsNewKey => f.write_str("resume:needs_new_key"),
            FailureCode::CertificateRounds => f.write_str("certificate:rounds"),
            FailureCode::NoThingName => f.write_str("register_thing:no_thing_name"),
            FailureCode::PostCheckTls => f.write_str("post_check:tls"),
            FailureCode::PostCheckConnect => f.write_str("post_check:connect"),
            FailureCode::Jig(kind) => write!(f, "jig:{kind}"),
            FailureCode::AlreadyProvisioned => f.write_str("already_provisioned"),
            FailureCode::HeldElsewhere => f.write_str("held_by_station"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_as_reports_and_ledgers_have_always_written_them() {
        let cases = [
            (
                FailureCode::Rejected {
                    api: ApiKind::RegisterThing,
                    error_code: "InvalidParameters".into(),
                },
                "register_thing:InvalidParameters",
            ),
            (
                FailureCode::GaveUp(ApiKind::CreateCertificateFromCsr),
                "create_certificate:gave_up",
            ),
            (
                FailureCode::Deadline(ApiKind::CreateKeysAndCertificate),
                "create_keys:deadline",
            ),
            (
                FailureCode::MissingBoardValue("mac".into()),
                "parameter:mac",
            ),
            (FailureCode::NeedsNewKey, "resume:needs_new_key"),
            (
                FailureCode::Jig(JigFailure::VerifyMismatch),
                "jig:verify_mismatch",
            ),
            (FailureCode::AlreadyProvisioned, "already_provisioned"),
            (FailureCode::HeldElsewhere, "held_by_station"),
        ];
        for (code, text) in cases {
            assert_eq!(code.to_string(), text);
        }
    }
}
