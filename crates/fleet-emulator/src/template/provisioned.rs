//! What evaluating a template yields: the thing, certificate and policies the registry must
//! create or update for one RegisterThing request, the override rules that apply when they
//! already exist, and the device configuration returned to the device.

use std::collections::BTreeMap;
use std::fmt;

/// The result of evaluating a template for one RegisterThing request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Provisioned {
    /// The template's `AWS::IoT::Thing` resource, if it declares one.
    pub thing: Option<ThingSpec>,
    /// The template's `AWS::IoT::Certificate` resource, if it declares one.
    pub certificate: Option<CertificateSpec>,
    /// The template's `AWS::IoT::Policy` resources, ordered by logical id.
    pub policies: Vec<PolicySpec>,
    /// The evaluated `DeviceConfiguration` section; empty when the template has none
    /// (AWS then answers `"deviceConfiguration":{}`, docs/aws-fleet-provisioning.md §1.2).
    pub device_configuration: BTreeMap<String, String>,
}

impl Provisioned {
    /// The `thingName` of the RegisterThing response: the evaluated `ThingName` of the thing
    /// resource (docs/aws-fleet-provisioning.md §3.6), or `None` when the template declares no
    /// thing.
    pub(crate) fn thing_name(&self) -> Option<&str> {
        self.thing.as_ref().map(|t| t.name.as_str())
    }
}

/// An evaluated `AWS::IoT::Thing` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThingSpec {
    /// The resource's logical id in the template (`"thing"` in every AWS example).
    pub logical_id: String,
    /// `ThingName`.
    pub name: String,
    /// `AttributePayload`; empty when the template gives none.
    pub attributes: BTreeMap<String, String>,
    /// `ThingTypeName`.
    pub thing_type: Option<String>,
    /// `ThingGroups`, in template order; empty when the template gives none.
    pub thing_groups: Vec<String>,
    /// `BillingGroup`.
    pub billing_group: Option<String>,
    /// The thing's `OverrideSettings`.
    pub overrides: ThingOverrides,
}

/// A thing's `OverrideSettings`, per key. `None` means the template names no setting for that key;
/// AWS does not document the default (docs/aws-fleet-provisioning.md §3.3), so the registry
/// chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThingOverrides {
    /// `AttributePayload`: any [`Override`], including `MERGE`.
    pub attribute_payload: Option<Override>,
    /// `ThingTypeName`: any [`Override`] except `MERGE`.
    pub thing_type_name: Option<Override>,
    /// `ThingGroups`: any [`Override`], including `MERGE`.
    pub thing_groups: Option<Override>,
}

/// An evaluated `AWS::IoT::Certificate` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSpec {
    /// The resource's logical id in the template.
    pub logical_id: String,
    /// The evaluated `CertificateId`; normally the certificate being registered
    /// (`{"Ref": "AWS::IoT::Certificate::Id"}`).
    pub certificate_id: String,
    /// The evaluated `Status`; `ACTIVE` when the template gives none.
    pub status: CertificateStatus,
    /// The certificate's `OverrideSettings` for `Status`, if any.
    pub status_override: Option<Override>,
}

/// The status RegisterThing gives the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateStatus {
    Active,
    Inactive,
}

impl CertificateStatus {
    /// The AWS spelling: `ACTIVE` or `INACTIVE`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CertificateStatus::Active => "ACTIVE",
            CertificateStatus::Inactive => "INACTIVE",
        }
    }

    /// Parses a status case-insensitively (AWS's own examples write both `Active` and
    /// `ACTIVE`, docs/aws-fleet-provisioning.md §3.2).
    pub(crate) fn parse(value: &str) -> Option<CertificateStatus> {
        if value.eq_ignore_ascii_case("ACTIVE") {
            Some(CertificateStatus::Active)
        } else if value.eq_ignore_ascii_case("INACTIVE") {
            Some(CertificateStatus::Inactive)
        } else {
            None
        }
    }
}

impl fmt::Display for CertificateStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An evaluated `AWS::IoT::Policy` resource: attach the policy named `name` to the
/// certificate, creating it from `document` first when the template gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// The resource's logical id in the template.
    pub logical_id: String,
    /// `PolicyName`, or for a `PolicyDocument` resource the default name AWS documents as
    /// "a hash of the policy document": here the lowercase hex SHA-256 of [`Self::document`].
    pub name: String,
    /// The policy document as canonical JSON (compact, object keys sorted), when the
    /// resource gives `PolicyDocument`; `None` when it names an existing policy.
    pub document: Option<String>,
}

/// An `OverrideSettings` value: what to do when the resource already exists
/// (docs/aws-fleet-provisioning.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Override {
    /// `DO_NOTHING`: leave the existing resource as it is.
    DoNothing,
    /// `REPLACE`: replace it with the template's version.
    Replace,
    /// `FAIL`: fail the request (`ResourceConflictsException`).
    Fail,
    /// `MERGE`: merge with the existing value; only for a thing's `AttributePayload` and
    /// `ThingGroups`.
    Merge,
}

impl Override {
    /// The AWS spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Override::DoNothing => "DO_NOTHING",
            Override::Replace => "REPLACE",
            Override::Fail => "FAIL",
            Override::Merge => "MERGE",
        }
    }

    /// Parses the AWS spelling exactly (upper case, as every AWS document writes it).
    pub(crate) fn parse(value: &str) -> Option<Override> {
        match value {
            "DO_NOTHING" => Some(Override::DoNothing),
            "REPLACE" => Some(Override::Replace),
            "FAIL" => Some(Override::Fail),
            "MERGE" => Some(Override::Merge),
            _ => None,
        }
    }
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_case_insensitive() {
        for s in ["ACTIVE", "Active", "active", "aCtIvE"] {
            assert_eq!(CertificateStatus::parse(s), Some(CertificateStatus::Active));
        }
        for s in ["INACTIVE", "Inactive", "inactive"] {
            assert_eq!(
                CertificateStatus::parse(s),
                Some(CertificateStatus::Inactive)
            );
        }
        for s in ["", "ENABLED", "PENDING_ACTIVATION", " ACTIVE"] {
            assert_eq!(CertificateStatus::parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn overrides_round_trip_their_aws_spelling() {
        for o in [
            Override::DoNothing,
            Override::Replace,
            Override::Fail,
            Override::Merge,
        ] {
            assert_eq!(Override::parse(o.as_str()), Some(o));
        }
        assert_eq!(Override::parse("merge"), None);
        assert_eq!(Override::parse("DONOTHING"), None);
    }
}
