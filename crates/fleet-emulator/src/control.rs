//! AWS IoT control-plane operations on the emulator's registry, the ones a station's orphan
//! and load-test cleanup uses: `DescribeCertificate`, `ListPrincipalThings`,
//! `ListThingPrincipals`, `DetachThingPrincipal`, `UpdateCertificate`, `DeleteCertificate` and
//! `DeleteThing`, with AWS's documented preconditions and exception names ([`ControlError`]).
//!
//! They are plain functions on a [`Registry`], so a test can apply a station's cleanup steps to
//! the registry of an emulator that has stopped (or was killed):
//!
//! ```no_run
//! # use fleet_emulator::{control, registry::{CertStatus, Registry}};
//! let registry = Registry::open_state_dir("state/emulator".as_ref()).unwrap();
//! let id = "0f".repeat(32);
//! control::update_certificate(&registry, &id, CertStatus::Inactive).unwrap();
//! control::delete_certificate(&registry, &id, true).unwrap();
//! ```
//!
//! Every change is committed (on disk) before the function returns, as the reply of the API
//! would be; the functions block for that, so async code calls them from `spawn_blocking`.
//! Opening the registry of a running emulator gives a second, separate copy: use these on a
//! registry the emulator is not using.
//!
//! Where AWS is silent, the emulator chooses (and `docs/emulator.md` says so):
//! - a principal is the certificate's ARN, `arn:aws:iot:us-east-1:123456789012:cert/<id>`
//!   (AWS requires the ARN); anything else is `InvalidRequestException`;
//! - `DetachThingPrincipal` of a certificate that is not attached to the thing succeeds and
//!   changes nothing; on AWS the detach is asynchronous ("it might take several seconds for
//!   the detachment to propagate"), here it takes effect at once;
//! - `UpdateCertificate` to `PENDING_ACTIVATION` ("will result in an exception", AWS) is
//!   `InvalidRequestException`; a `REVOKED` certificate cannot change status ("Once a
//!   certificate is revoked, its status can't be changed") and gets
//!   `CertificateStateException`; setting the status a certificate already has succeeds (AWS:
//!   "This operation is idempotent"). Connected devices are not disconnected when their
//!   certificate leaves `ACTIVE` (AWS does so "within a few minutes"); they cannot reconnect;
//! - `DeleteCertificate` checks, in this order: `ACTIVE` → `CertificateStateException`; a
//!   thing attached → `DeleteConflictException`; a policy attached without `force_delete` →
//!   `DeleteConflictException`. With `force_delete` the policies are detached (the policies
//!   themselves stay). The certificate's ownership tokens go with it;
//! - `ListPrincipalThings` and `ListThingPrincipals` return everything at once, sorted (no
//!   paging);
//! - `DeleteThing` of a thing that does not exist succeeds (AWS: "Returns successfully with no
//!   error if the deletion is successful or you specify a thing that doesn't exist"); a thing
//!   with a principal attached is refused with `InvalidRequestException` (AWS documents no
//!   such rule; its cleanup guides detach first, and the station's cleanup does).

use super::policy::{ACCOUNT, REGION};
use super::registry::{CertStatus, CommitError, Registry, RegistryError, Txn};

/// `arn:aws:iot:REGION:ACCOUNT:cert/ID`, the ARN AWS gives a certificate.
pub fn certificate_arn(certificate_id: &str) -> String {
    format!("arn:aws:iot:{REGION}:{ACCOUNT}:cert/{certificate_id}")
}

/// The certificate id of a certificate ARN of this emulator's region and account.
pub(crate) fn certificate_id_of_arn(principal: &str) -> Option<&str> {
    principal
        .strip_prefix(&format!("arn:aws:iot:{REGION}:{ACCOUNT}:cert/"))
        .filter(|id| valid_certificate_id(id))
}

/// What `DescribeCertificate` answers (the fields a cleanup needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateDescription {
    pub certificate_arn: String,
    pub certificate_id: String,
    pub status: CertStatus,
    pub certificate_pem: String,
    /// Milliseconds since the Unix epoch.
    pub creation_date_ms: u64,
}

/// The exceptions of the control-plane API, named as AWS names them.
#[allow(clippy::enum_variant_names)] // AWS's exception names, verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum ControlError {
    /// HTTP 404.
    #[error("ResourceNotFoundException: {0}")]
    #[diagnostic(
        code(station::emulator::control::resource_not_found),
        help(
            "list the registry's certificates and things; the id or name may be mistyped or already deleted"
        )
    )]
    ResourceNotFoundException(String),
    /// HTTP 409.
    #[error("DeleteConflictException: {0}")]
    #[diagnostic(
        code(station::emulator::control::delete_conflict),
        help(
            "detach the certificate from its things (DetachThingPrincipal) first; pass force_delete to detach its policies"
        )
    )]
    DeleteConflictException(String),
    /// HTTP 406.
    #[error("CertificateStateException: {0}")]
    #[diagnostic(
        code(station::emulator::control::certificate_state),
        help(
            "set the certificate INACTIVE (UpdateCertificate) before deleting it; a REVOKED certificate keeps its status"
        )
    )]
    CertificateStateException(String),
    /// HTTP 400.
    #[error("InvalidRequestException: {0}")]
    #[diagnostic(
        code(station::emulator::control::invalid_request),
        help(
            "a certificate id is 64 hex characters; a principal is the certificate's ARN, arn:aws:iot:us-east-1:123456789012:cert/<id>"
        )
    )]
    InvalidRequestException(String),
    /// HTTP 500: the change could not be committed, so it is not acknowledged.
    #[error("InternalFailureException: {0}")]
    #[diagnostic(
        code(station::emulator::control::internal_failure),
        help(
            "the registry database could not be written; check the state directory's disk and permissions"
        )
    )]
    InternalFailureException(String),
}

impl ControlError {
    /// AWS's HTTP status code of the exception.
    pub fn status_code(&self) -> u16 {
        match self {
            ControlError::ResourceNotFoundException(_) => 404,
            ControlError::DeleteConflictException(_) => 409,
            ControlError::CertificateStateException(_) => 406,
            ControlError::InvalidRequestException(_) => 400,
            ControlError::InternalFailureException(_) => 500,
        }
    }
}

/// A registry that could not be read (a corrupt row, a failing disk): 500, as a failed commit.
impl From<RegistryError> for ControlError {
    fn from(e: RegistryError) -> Self {
        tracing::error!(error = %e, "emulator: a control-plane request could not read the registry");
        ControlError::InternalFailureException(e.to_string())
    }
}

impl From<CommitError> for ControlError {
    fn from(e: CommitError) -> Self {
        tracing::error!(error = %e, "emulator: a control-plane change could not be committed");
        ControlError::InternalFailureException(e.to_string())
    }
}

fn valid_certificate_id(id: &str) -> bool {
    // AWS: "Length Constraints: Fixed length of 64. Pattern: (0x)?[a-fA-F0-9]+".
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_certificate_id(id: &str) -> Result<(), ControlError> {
    if valid_certificate_id(id) {
        Ok(())
    } else {
        Err(ControlError::InvalidRequestException(format!(
            "certificateId {id:?} is not 64 hexadecimal characters"
        )))
    }
}

fn check_principal(principal: &str) -> Result<&str, ControlError> {
    certificate_id_of_arn(principal).ok_or_else(|| {
        ControlError::InvalidRequestException(format!(
            "principal {principal:?} is not a certificate ARN (arn:aws:iot:{REGION}:{ACCOUNT}:cert/<id>)"
        ))
    })
}

fn check_thing_name(name: &str) -> Result<(), ControlError> {
    // AWS: "Length Constraints: Minimum length of 1. Maximum length of 128. Pattern:
    // [a-zA-Z0-9:_-]+".
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ControlError::InvalidRequestException(format!(
            "thingName {name:?} must be 1 to 128 characters of [a-zA-Z0-9:_-]"
        )))
    }
}

fn no_certificate(id: &str) -> ControlError {
    ControlError::ResourceNotFoundException(format!("The certificate {id} does not exist."))
}

fn certificate_in<'a>(
    txn: &'a mut Txn<'_>,
    id: &str,
) -> Result<&'a super::registry::Certificate, ControlError> {
    txn.certificate(id)?.ok_or_else(|| no_certificate(id))
}

/// `DescribeCertificate`.
pub fn describe_certificate(
    registry: &Registry,
    certificate_id: &str,
) -> Result<CertificateDescription, ControlError> {
    check_certificate_id(certificate_id)?;
    let c = registry
        .certificate(certificate_id)?
        .ok_or_else(|| no_certificate(certificate_id))?;
    Ok(CertificateDescription {
        certificate_arn: certificate_arn(&c.id),
        certificate_id: c.id,
        status: c.status,
        certificate_pem: c.pem,
        creation_date_ms: c.created_ms,
    })
}

/// `ListPrincipalThings`: the names of the things the certificate `principal` (its ARN) is
/// attached to.
pub fn list_principal_things(
    registry: &Registry,
    principal: &str,
) -> Result<Vec<String>, ControlError> {
    let id = check_principal(principal)?;
    let c = registry
        .certificate(id)?
        .ok_or_else(|| no_certificate(id))?;
    Ok(c.things.into_iter().collect())
}

/// `DetachThingPrincipal`: detaches the certificate `principal` (its ARN) from `thing_name`.
pub fn detach_thing_principal(
    registry: &Registry,
    thing_name: &str,
    principal: &str,
) -> Result<(), ControlError> {
    check_thing_name(thing_name)?;
    let id = check_principal(principal)?;
    let mut txn = registry.txn();
    let Some(mut thing) = txn.thing(thing_name)?.cloned() else {
        return Err(ControlError::ResourceNotFoundException(format!(
            "The thing {thing_name} does not exist."
        )));
    };
    let mut cert = certificate_in(&mut txn, id)?.clone();
    if !thing.principals.remove(id) && !cert.things.contains(thing_name) {
        return Ok(());
    }
    cert.things.remove(thing_name);
    txn.put_thing(thing);
    txn.put_certificate(cert);
    Ok(txn.commit_blocking()?)
}

/// `ListThingPrincipals`: the ARNs of the certificates attached to `thing_name`.
pub fn list_thing_principals(
    registry: &Registry,
    thing_name: &str,
) -> Result<Vec<String>, ControlError> {
    check_thing_name(thing_name)?;
    let thing = registry.thing(thing_name)?.ok_or_else(|| {
        ControlError::ResourceNotFoundException(format!("The thing {thing_name} does not exist."))
    })?;
    Ok(thing
        .principals
        .iter()
        .map(|id| certificate_arn(id))
        .collect())
}

/// `DeleteThing`: deletes a thing no principal is attached to; a thing that does not exist is
/// not an error.
pub fn delete_thing(registry: &Registry, thing_name: &str) -> Result<(), ControlError> {
    check_thing_name(thing_name)?;
    let mut txn = registry.txn();
    let Some(thing) = txn.thing(thing_name)? else {
        return Ok(());
    };
    if !thing.principals.is_empty() {
        return Err(ControlError::InvalidRequestException(format!(
            "The thing {thing_name} has principals attached; detach them first."
        )));
    }
    txn.delete_thing(thing_name);
    Ok(txn.commit_blocking()?)
}

/// `UpdateCertificate`: sets the certificate's status.
pub fn update_certificate(
    registry: &Registry,
    certificate_id: &str,
    new_status: CertStatus,
) -> Result<(), ControlError> {
    check_certificate_id(certificate_id)?;
    if new_status == CertStatus::PendingActivation {
        return Err(ControlError::InvalidRequestException(
            "PENDING_ACTIVATION is a status used internally by AWS IoT; it cannot be set.".into(),
        ));
    }
    let mut txn = registry.txn();
    let mut cert = certificate_in(&mut txn, certificate_id)?.clone();
    if cert.status == new_status {
        return Ok(());
    }
    if cert.status == CertStatus::Revoked {
        return Err(ControlError::CertificateStateException(format!(
            "The certificate {certificate_id} is REVOKED; its status cannot be changed."
        )));
    }
    cert.status = new_status;
    txn.put_certificate(cert);
    Ok(txn.commit_blocking()?)
}

/// `DeleteCertificate`: deletes a certificate that is not `ACTIVE` and attached to no thing;
/// attached policies block it unless `force_delete`, which detaches them.
pub fn delete_certificate(
    registry: &Registry,
    certificate_id: &str,
    force_delete: bool,
) -> Result<(), ControlError> {
    check_certificate_id(certificate_id)?;
    let mut txn = registry.txn();
    let cert = certificate_in(&mut txn, certificate_id)?;
    let arn = certificate_arn(certificate_id);
    if cert.status == CertStatus::Active {
        return Err(ControlError::CertificateStateException(format!(
            "Certificate must be deactivated (not ACTIVE) before deletion. Id: {certificate_id}"
        )));
    }
    if !cert.things.is_empty() {
        return Err(ControlError::DeleteConflictException(format!(
            "Things must be detached before deletion (arn: {arn})"
        )));
    }
    if !cert.policies.is_empty() && !force_delete {
        return Err(ControlError::DeleteConflictException(format!(
            "Certificate policies must be detached before deletion (arn: {arn})"
        )));
    }
    txn.delete_tokens_of(certificate_id)?;
    txn.delete_certificate(certificate_id);
    Ok(txn.commit_blocking()?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use crate::registry::{Certificate, Policy, Thing, TokenRecord};

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const MISSING: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    /// A registry with certificate A (ACTIVE, on thing `t1`, policy `p1`, a token) and B
    /// (PENDING_ACTIVATION, nothing attached).
    fn registry(dir: &tempfile::TempDir) -> Arc<Registry> {
        let reg = Registry::open_state_dir(dir.path()).unwrap();
        let mut t = reg.txn();
        t.put_policy(Policy {
            name: "p1".into(),
            document: serde_json::json!({"Statement": []}),
        });
        for (id, status) in [(A, CertStatus::Active), (B, CertStatus::PendingActivation)] {
            t.put_certificate(Certificate {
                id: id.into(),
                pem: "PEM".into(),
                status,
                created_ms: 7,
                policies: BTreeSet::new(),
                things: BTreeSet::new(),
                claim: false,
                subject: Default::default(),
                token_key: None,
            });
        }
        let mut a = t.certificate(A).unwrap().unwrap().clone();
        a.policies.insert("p1".into());
        a.things.insert("t1".into());
        t.put_certificate(a);
        t.put_thing(Thing {
            name: "t1".into(),
            principals: BTreeSet::from([A.to_string()]),
            ..Thing::default()
        });
        t.put_token(
            "token-a",
            TokenRecord {
                certificate_id: A.into(),
                expires_ms: u64::MAX,
                used: true,
            },
        );
        t.commit_blocking().unwrap();
        reg
    }

    fn code(r: Result<impl std::fmt::Debug, ControlError>) -> u16 {
        r.unwrap_err().status_code()
    }

    #[test]
    fn describe_gives_the_arn_and_status_and_refuses_bad_or_unknown_ids() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(&dir);
        let d = describe_certificate(&reg, A).unwrap();
        assert_eq!(
            d.certificate_arn,
            format!("arn:aws:iot:us-east-1:123456789012:cert/{A}")
        );
        assert_eq!(d.status, CertStatus::Active);
        assert_eq!((d.certificate_pem.as_str(), d.creation_date_ms), ("PEM", 7));
        assert_eq!(code(describe_certificate(&reg, MISSING)), 404);
        for bad in ["", "abc", &A[1..], &format!("{A}0"), &A.replace('a', "g")] {
            assert!(
                matches!(
                    describe_certificate(&reg, bad),
                    Err(ControlError::InvalidRequestException(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn list_principal_things_takes_the_certificate_arn() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(&dir);
        assert_eq!(
            list_principal_things(&reg, &certificate_arn(A)).unwrap(),
            ["t1"]
        );
        assert!(
            list_principal_things(&reg, &certificate_arn(B))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            code(list_principal_things(&reg, &certificate_arn(MISSING))),
            404
        );
        // The id alone, or another account's ARN, is not a principal.
        assert_eq!(code(list_principal_things(&reg, A)), 400);
        assert_eq!(
            code(list_principal_things(
                &reg,
                &format!("arn:aws:iot:us-east-1:000000000000:cert/{A}")
            )),
            400
        );
    }

    #[test]
    fn detach_thing_principal_detaches_both_ways_and_checks_its_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(&dir);
        let arn = certificate_arn(A);
        assert_eq!(code(detach_thing_principal(&reg, "nope", &arn)), 404);
        assert_eq!(
            code(detach_thing_principal(
                &reg,
                "t1",
                &certificate_arn(MISSING)
            )),
            404
        );
        assert_eq!(code(detach_thing_principal(&reg, "t1", A)), 400);
        assert_eq!(code(detach_thing_principal(&reg, "bad name!", &arn)), 400);
        assert_eq!(code(detach_thing_principal(&reg, "", &arn)), 400);
        assert_eq!(
            code(detach_thing_principal(&reg, &"t".repeat(129), &arn)),
            400
        );

        detach_thing_principal(&reg, "t1", &arn).unwrap();
        assert!(reg.thing("t1").unwrap().unwrap().principals.is_empty());
        assert!(reg.certificate(A).unwrap().unwrap().things.is_empty());
        // Not attached (any more): nothing to do, no error.
        detach_thing_principal(&reg, "t1", &arn).unwrap();
        detach_thing_principal(&reg, "t1", &certificate_arn(B)).unwrap();
    }

    #[test]
    fn a_thing_lists_its_principals_and_is_deleted_only_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(&dir);
        let arn = certificate_arn(A);
        assert_eq!(
            list_thing_principals(&reg, "t1").unwrap(),
            std::slice::from_ref(&arn)
        );
        assert_eq!(code(list_thing_principals(&reg, "nope")), 404);
        assert_eq!(code(list_thing_principals(&reg, "bad name!")), 400);
        // Attached: refused, and nothing changed.
        assert_eq!(code(delete_thing(&reg, "t1")), 400);
        assert!(reg.thing("t1").unwrap().is_some());
        detach_thing_principal(&reg, "t1", &arn).unwrap();
        assert!(list_thing_principals(&reg, "t1").unwrap().is_empty());
        delete_thing(&reg, "t1").unwrap();
        assert!(reg.thing("t1").unwrap().is_none());
        // Gone (or never there): success, as AWS documents.
        delete_thing(&reg, "t1").unwrap();
        assert_eq!(code(delete_thing(&reg, "")), 400);
        // On disk: a second reader of the file no longer finds it.
        reg.close();
        let again = Registry::open_state_dir(dir.path()).unwrap();
        assert!(again.thing("t1").unwrap().is_none());
    }

    #[test]
    fn update_certificate_follows_the_documented_transitions() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(&dir);
        assert_eq!(
            code(update_certificate(&reg, MISSING, CertStatus::Inactive)),
            404
        );
        assert_eq!(
            code(update_certificate(&reg, "x", CertStatus::Inactive)),
            400
        );
        // PENDING_ACTIVATION is internal to AWS and cannot be set, not even on itself.
        assert_eq!(
            code(update_certificate(&reg, A, CertStatus::PendingActivation)),
            400
        );
        assert_eq!(
            code(update_certificate(&reg, B, CertStatus::PendingActivation)),
            400
        );
        // From PENDING_ACTIVATION (a certificate a device never registered) it may move.
        update_certificate(&reg, B, CertStatus::Inactive).unwrap();
        assert_eq!(
            reg.certificate(B).unwrap().unwrap().status,
            CertStatus::Inactive
        );
        update_certificate(&reg, A, CertStatus::Inactive).unwrap();
        update_certificate(&reg, A, CertStatus::Active).unwrap();
        // Idempotent.
        update_certificate(&reg, A, CertStatus::Active).unwrap();
        update_certificate(&reg, A, CertStatus::Revoked).unwrap();
        update_certificate(&reg, A, CertStatus::Revoked).unwrap();
        // Revoked is final.
        for s in [CertStatus::Active, CertStatus::Inactive] {
            assert!(matches!(
                update_certificate(&reg, A, s),
                Err(ControlError::CertificateStateException(_))
            ));
        }
        assert_eq!(
            reg.certificate(A).unwrap().unwrap().status,
            CertStatus::Revoked
        );
    }

    #[test]
    fn delete_certificate_refuses_active_then_attached_things_then_policies_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(&dir);
        assert_eq!(code(delete_certificate(&reg, MISSING, false)), 404);
        assert_eq!(code(delete_certificate(&reg, "0x12", false)), 400);

        let e = delete_certificate(&reg, A, true).unwrap_err();
        assert!(
            matches!(&e, ControlError::CertificateStateException(m) if m.contains("not ACTIVE")),
            "{e}"
        );
        update_certificate(&reg, A, CertStatus::Inactive).unwrap();
        let e = delete_certificate(&reg, A, true).unwrap_err();
        assert!(
            matches!(&e, ControlError::DeleteConflictException(m) if m.contains("Things")),
            "{e}"
        );
        detach_thing_principal(&reg, "t1", &certificate_arn(A)).unwrap();
        let e = delete_certificate(&reg, A, false).unwrap_err();
        assert!(
            matches!(&e, ControlError::DeleteConflictException(m) if m.contains("policies")),
            "{e}"
        );
        assert!(
            reg.certificate(A).unwrap().is_some(),
            "a refused delete changes nothing"
        );

        delete_certificate(&reg, A, true).unwrap();
        assert!(reg.certificate(A).unwrap().is_none());
        assert!(
            reg.policy("p1").unwrap().is_some(),
            "force detaches policies, keeps them"
        );
        assert!(
            reg.tokens_of(A).unwrap().is_empty(),
            "its tokens went with it"
        );
        assert_eq!(code(delete_certificate(&reg, A, true)), 404);

        // A never-registered certificate (PENDING_ACTIVATION, nothing attached) deletes as is.
        delete_certificate(&reg, B, false).unwrap();
        assert!(reg.certificate(B).unwrap().is_none());
    }

    #[test]
    fn changes_are_on_disk_when_the_call_returns() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(&dir);
        update_certificate(&reg, A, CertStatus::Inactive).unwrap();
        detach_thing_principal(&reg, "t1", &certificate_arn(A)).unwrap();
        delete_certificate(&reg, B, false).unwrap();
        // A second reader of the same file sees it all, without the first closing.
        let c =
            rusqlite::Connection::open(dir.path().join(crate::registry::REGISTRY_FILE)).unwrap();
        let json = |table: &str, key: &str| -> Option<String> {
            c.query_row(
                &format!("SELECT json FROM {table} WHERE key = ?1"),
                [key],
                |r| r.get(0),
            )
            .ok()
        };
        let a: Certificate = serde_json::from_str(&json("certificates", A).unwrap()).unwrap();
        assert_eq!(a.status, CertStatus::Inactive);
        assert!(a.things.is_empty());
        let t: Thing = serde_json::from_str(&json("things", "t1").unwrap()).unwrap();
        assert!(t.principals.is_empty());
        assert_eq!(json("certificates", B), None);
    }
}
