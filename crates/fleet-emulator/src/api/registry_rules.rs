//! Registry constraints that RegisterThing checks on the thing it is about to store, after
//! its `OverrideSettings` are applied: AWS's attribute count per thing, and (optionally) that
//! the thing type, thing groups and billing group the template names exist.
//!
//! - Attributes: a thing with a thing type can have up to 50 attributes, a thing without one
//!   up to three (AWS IoT developer guide, "Thing types"; the AWS IoT Core quotas page;
//!   CloudFormation's `AttributePayload` "specifies up to three attributes"). The names and
//!   values themselves are checked by the template engine (`template::names`).
//! - Existence: AWS creates none of these on RegisterThing; a template naming a thing type or
//!   group the account lacks fails. The emulator, by default, treats every name as existing
//!   (the demo and its tests rely on that); `require_thing_types_and_groups = true` makes it
//!   check against the `thing_types`, `thing_groups` and `billing_groups` of `[emulator]`.
//!
//! Every violation is answered 400 `InvalidParameters`, as the emulator answers a named policy
//! that does not exist (docs/aws-fleet-provisioning.md §1.3); AWS's exact message for these is
//! not documented, so the wording is the emulator's.

use std::collections::BTreeSet;

use crate::errors::Rejection;
use crate::registry::Thing;

/// Most attributes of a thing without a thing type (AWS: three).
pub(crate) const MAX_ATTRIBUTES_WITHOUT_TYPE: usize = 3;
/// Most attributes of a thing with a thing type (AWS: 50).
pub(crate) const MAX_ATTRIBUTES_WITH_TYPE: usize = 50;

/// What exists in the emulated account, when the emulator is told to check it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RegistryRules {
    /// `None`: thing types and groups are created on first use (the default).
    pub existing: Option<Existing>,
}

/// The thing types, thing groups and billing groups that exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Existing {
    pub thing_types: BTreeSet<String>,
    pub thing_groups: BTreeSet<String>,
    pub billing_groups: BTreeSet<String>,
}

impl RegistryRules {
    /// Checks the thing as it will be stored.
    pub(crate) fn check(&self, thing: &Thing) -> Result<(), Rejection> {
        let (max, which) = match thing.thing_type {
            Some(_) => (MAX_ATTRIBUTES_WITH_TYPE, "with a thing type"),
            None => (MAX_ATTRIBUTES_WITHOUT_TYPE, "without a thing type"),
        };
        if thing.attributes.len() > max {
            return Err(Rejection::InvalidParameters(format!(
                "Thing {} would have {} attributes; a thing {which} can have at most {max}",
                thing.name,
                thing.attributes.len()
            )));
        }
        let Some(existing) = &self.existing else {
            return Ok(());
        };
        let missing = |what: &str, name: &str| {
            Rejection::InvalidParameters(format!("{what} {name} does not exist"))
        };
        if let Some(t) = thing
            .thing_type
            .as_ref()
            .filter(|t| !existing.thing_types.contains(*t))
        {
            return Err(missing("Thing type", t));
        }
        if let Some(g) = thing
            .groups
            .iter()
            .find(|g| !existing.thing_groups.contains(*g))
        {
            return Err(missing("Thing group", g));
        }
        if let Some(b) = thing
            .billing_group
            .as_ref()
            .filter(|b| !existing.billing_groups.contains(*b))
        {
            return Err(missing("Billing group", b));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thing(attributes: usize, thing_type: Option<&str>) -> Thing {
        Thing {
            name: "t1".into(),
            attributes: (0..attributes)
                .map(|i| (format!("a{i}"), "v".to_string()))
                .collect(),
            thing_type: thing_type.map(str::to_string),
            groups: Default::default(),
            billing_group: None,
            principals: Default::default(),
            version: 1,
        }
    }

    fn message(r: Rejection) -> String {
        let wire = r.to_response();
        assert_eq!(
            (wire.status_code, wire.error_code.as_str()),
            (400, "InvalidParameters")
        );
        wire.error_message
    }

    #[test]
    fn three_attributes_without_a_type_fifty_with_one() {
        let rules = RegistryRules::default();
        assert_eq!(rules.check(&thing(3, None)), Ok(()));
        let m = message(rules.check(&thing(4, None)).unwrap_err());
        assert_eq!(
            m,
            "Thing t1 would have 4 attributes; a thing without a thing type can have at most 3"
        );
        assert_eq!(rules.check(&thing(50, Some("T"))), Ok(()));
        let m = message(rules.check(&thing(51, Some("T"))).unwrap_err());
        assert!(m.contains("with a thing type can have at most 50"), "{m}");
    }

    #[test]
    fn existence_is_checked_only_when_required() {
        let mut t = thing(1, Some("Sensor"));
        t.groups = ["g1".to_string(), "g2".to_string()].into();
        t.billing_group = Some("b1".into());
        assert_eq!(RegistryRules::default().check(&t), Ok(()));

        let mut existing = Existing::default();
        let rules = |e: &Existing| RegistryRules {
            existing: Some(e.clone()),
        };
        assert_eq!(
            message(rules(&existing).check(&t).unwrap_err()),
            "Thing type Sensor does not exist"
        );
        existing.thing_types.insert("Sensor".into());
        existing.thing_groups.insert("g1".into());
        assert_eq!(
            message(rules(&existing).check(&t).unwrap_err()),
            "Thing group g2 does not exist"
        );
        existing.thing_groups.insert("g2".into());
        assert_eq!(
            message(rules(&existing).check(&t).unwrap_err()),
            "Billing group b1 does not exist"
        );
        existing.billing_groups.insert("b1".into());
        assert_eq!(rules(&existing).check(&t), Ok(()));
        // A thing without type or groups needs nothing to exist.
        assert_eq!(rules(&Existing::default()).check(&thing(2, None)), Ok(()));
    }
}
