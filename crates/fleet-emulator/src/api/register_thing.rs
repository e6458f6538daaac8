//! `RegisterThing`: redeem the ownership token, ask the pre-provisioning hook, evaluate the
//! template and apply its resources to the registry (docs/aws-fleet-provisioning.md §1.2, §3, §4).
//!
//! Order: payload → token present → template exists and is enabled → token valid (looked
//! up, not consumed) → hook, when the template has one → parameters merged (request, then
//! the hook's `parameterOverrides` over them; the engine fills `Default`s for what is still
//! missing, docs/aws-fleet-provisioning.md §9.5) → template evaluated → resources applied.
//!
//! Application, all under one registry transaction so a token is redeemed at most once, and
//! answered only once that transaction is committed (a failed commit is 500):
//! - the thing is created, or updated per its `OverrideSettings` (see below), and must then
//!   meet AWS's registry constraints (`registry_rules`: at most 3 attributes without a thing
//!   type, 50 with one; optionally, its thing type and groups must exist);
//! - policies named by `PolicyName` must exist; a `PolicyDocument` policy is created under
//!   its hash name if missing; each is attached to the certificate;
//! - the certificate is attached to the thing and gets the template's `Status`;
//! - the token is consumed (single use).
//!
//! Choices where AWS is silent (documented in `docs/emulator.md`):
//! - a key with no `OverrideSettings` entry keeps the existing value (`DO_NOTHING`);
//! - `FAIL` fails only when the template's value differs from the existing one, so an
//!   identical re-registration is not a conflict;
//! - `CertificateId` must evaluate to the certificate the token was issued for;
//! - a template without a certificate resource leaves the certificate `PENDING_ACTIVATION`
//!   (it is deleted when its token's hour is over, as AWS does);
//! - a token is not consumed by a rejected request (hook denial included), so the device may
//!   retry with it until it expires;
//! - a token is not bound to the connection or claim certificate that obtained it: any
//!   claim connection may redeem it, for its own certificate only.

use std::collections::BTreeMap;

use super::{ApiRequest, ApiService, RegistryRules, durable};
use crate::errors::Rejection;
use crate::fleet::payloads::decode_or_default;
use crate::fleet::{RegisterThingRequest, RegisterThingResponse};
use crate::hook::{HookInput, HookOutcome, template_arn};
use crate::registry::{CertStatus, Policy, Thing, TokenProblem, Txn, now_ms};
use crate::template::{CertificateStatus, EvalContext, Override, Provisioned, ThingSpec};

pub(super) async fn handle(
    svc: &ApiService,
    template_name: &str,
    req: &ApiRequest,
) -> Result<RegisterThingResponse, Rejection> {
    let body: RegisterThingRequest = decode_or_default(req.format, &req.payload)
        .map_err(|e| Rejection::InvalidPayload(e.to_string()))?;
    let token = body
        .certificate_ownership_token
        .filter(|t| !t.is_empty())
        .ok_or(Rejection::TokenMissing)?;
    let stored = svc
        .templates
        .get(template_name)
        .ok_or_else(|| Rejection::TemplateNotFound(template_name.to_string()))?;
    if !stored.enabled {
        return Err(Rejection::TemplateDisabled(template_name.to_string()));
    }

    // Look the token up first (without consuming it) to evaluate the template.
    let (certificate_id, subject, certificate_pem) = {
        let mut txn = svc.registry.txn();
        let rec = txn
            .check_token(token.expose(), now_ms())?
            .map_err(|_| Rejection::TokenInvalid)?;
        let cert = txn
            .certificate(&rec.certificate_id)?
            .ok_or(Rejection::TokenInvalid)?;
        (rec.certificate_id, cert.subject.clone(), cert.pem.clone())
    };

    let mut parameters = body.parameters.unwrap_or_default();
    if let Some(hook) = &stored.hook {
        let input = HookInput {
            claim_certificate_id: &req.principal,
            certificate_id: &certificate_id,
            certificate_pem: &certificate_pem,
            template_arn: template_arn(template_name),
            client_id: &req.client_id,
            parameters: &parameters,
        };
        match svc.hooks.invoke(&hook.target_arn, &input).await {
            Ok(HookOutcome::Allow(overrides)) => parameters.extend(overrides),
            Ok(HookOutcome::Deny) => {
                tracing::info!(template = template_name, client = %req.client_id, "emulator: pre-provisioning hook denied");
                return Err(Rejection::HookDenied);
            }
            Err(failure) => {
                tracing::warn!(template = template_name, client = %req.client_id, %failure, "emulator: pre-provisioning hook failed");
                return Err(Rejection::HookFailed(failure.to_string()));
            }
        }
    }
    let provisioned = stored
        .template
        .evaluate(&EvalContext {
            parameters: &parameters,
            certificate_id: &certificate_id,
            certificate_subject: &subject,
        })
        .map_err(|e| Rejection::InvalidParameters(e.error_message()))?;

    let commit = {
        let mut txn = svc.registry.txn();
        // Re-check under the same lock that applies: a concurrent request may have used it.
        match txn.check_token(token.expose(), now_ms())? {
            Ok(rec) if rec.certificate_id == certificate_id => {}
            Ok(_)
            | Err(TokenProblem::Unknown | TokenProblem::Expired | TokenProblem::AlreadyUsed) => {
                return Err(Rejection::TokenInvalid);
            }
        }
        apply(
            &mut txn,
            &certificate_id,
            &provisioned,
            &svc.settings.registry_rules,
        )?;
        txn.consume_token(token.expose())?;
        txn.commit()
    };
    // The reply goes out only once the thing, its policy and the activation are on disk.
    durable(commit, "registration", &certificate_id).await?;

    let thing_name = provisioned.thing_name().map(str::to_string);
    Ok(RegisterThingResponse {
        device_configuration: provisioned.device_configuration,
        thing_name,
    })
}

/// Applies evaluated resources; on error nothing has been changed.
fn apply(
    txn: &mut Txn<'_>,
    certificate_id: &str,
    p: &Provisioned,
    rules: &RegistryRules,
) -> Result<(), Rejection> {
    // Validate everything before changing anything.
    if let Some(cert) = &p.certificate
        && cert.certificate_id != certificate_id
    {
        return Err(Rejection::InvalidParameters(format!(
            "CertificateId {} is not the certificate being registered",
            cert.certificate_id
        )));
    }
    for policy in &p.policies {
        if policy.document.is_none() && !txn.has_policy(&policy.name)? {
            return Err(Rejection::InvalidParameters(format!(
                "Policy {} does not exist",
                policy.name
            )));
        }
        // A new policy's document is checked as AWS's CreatePolicy checks one: a document
        // it cannot evaluate (unknown condition operator, key or policy variable) is refused
        // with MalformedPolicyException ("The policy document is not valid"); on
        // RegisterThing that is a 400 rejection.
        if let Some(doc) = &policy.document
            && !txn.has_policy(&policy.name)?
        {
            let document: serde_json::Value = serde_json::from_str(doc)
                .map_err(|e| Rejection::InvalidParameters(format!("Policy document: {e}")))?;
            crate::policy::PolicyDocument::parse(&document).map_err(|e| {
                Rejection::InvalidParameters(format!(
                    "MalformedPolicyException: policy {}: {e}",
                    policy.name
                ))
            })?;
        }
    }
    let thing = match &p.thing {
        Some(spec) => Some(merged_thing(txn.thing(&spec.name)?, spec)?),
        None => None,
    };
    // AWS's registry constraints apply to the thing as stored (after OverrideSettings).
    if let Some(thing) = &thing {
        rules.check(thing)?;
    }

    let Some(mut cert) = txn.certificate(certificate_id)?.cloned() else {
        return Err(Rejection::TokenInvalid);
    };
    for policy in &p.policies {
        if let Some(doc) = &policy.document
            && !txn.has_policy(&policy.name)?
        {
            let document = serde_json::from_str(doc)
                .map_err(|e| Rejection::InvalidParameters(format!("Policy document: {e}")))?;

            txn.put_policy(Policy {
                name: policy.name.clone(),
                document,
            });
        }
        cert.policies.insert(policy.name.clone());
    }
    if let Some(mut thing) = thing {
        thing.principals.insert(certificate_id.to_string());
        cert.things.insert(thing.name.clone());
        txn.put_thing(thing);
    }
    if let Some(spec) = &p.certificate {
        cert.status = match spec.status {
            CertificateStatus::Active => CertStatus::Active,
            CertificateStatus::Inactive => CertStatus::Inactive,
        };
    }
    txn.put_certificate(cert);
    Ok(())
}

/// The thing as it will be stored: new, or the existing one updated per OverrideSettings.
fn merged_thing(existing: Option<&Thing>, spec: &ThingSpec) -> Result<Thing, Rejection> {
    let groups: std::collections::BTreeSet<String> = spec.thing_groups.iter().cloned().collect();
    let Some(old) = existing else {
        return Ok(Thing {
            name: spec.name.clone(),
            attributes: spec.attributes.clone(),
            thing_type: spec.thing_type.clone(),
            groups,
            billing_group: spec.billing_group.clone(),
            principals: Default::default(),
            version: 1,
        });
    };
    let conflict = |what: &str| {
        Rejection::Conflict(format!(
            "Thing {} already exists with a different {what} and its OverrideSettings is FAIL",
            spec.name
        ))
    };
    let mut t = old.clone();
    let o = &spec.overrides;
    t.attributes = match o.attribute_payload.unwrap_or(Override::DoNothing) {
        Override::DoNothing => old.attributes.clone(),
        Override::Replace => spec.attributes.clone(),
        Override::Merge => merge_maps(&old.attributes, &spec.attributes),
        Override::Fail if old.attributes != spec.attributes => {
            return Err(conflict("AttributePayload"));
        }
        Override::Fail => old.attributes.clone(),
    };
    t.thing_type = match o.thing_type_name.unwrap_or(Override::DoNothing) {
        Override::DoNothing => old.thing_type.clone(),
        Override::Replace | Override::Merge => spec.thing_type.clone(),
        Override::Fail if old.thing_type != spec.thing_type => {
            return Err(conflict("ThingTypeName"));
        }
        Override::Fail => old.thing_type.clone(),
    };
    t.groups = match o.thing_groups.unwrap_or(Override::DoNothing) {
        Override::DoNothing => old.groups.clone(),
        Override::Replace => groups,
        Override::Merge => old.groups.union(&groups).cloned().collect(),
        Override::Fail if old.groups != groups => return Err(conflict("ThingGroups")),
        Override::Fail => old.groups.clone(),
    };
    if spec.billing_group.is_some() {
        t.billing_group = spec.billing_group.clone();
    }
    t.version = old.version + 1;
    Ok(t)
}

fn merge_maps(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut m = old.clone();
    m.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::ThingOverrides;

    fn spec(
        attrs: &[(&str, &str)],
        ty: Option<&str>,
        groups: &[&str],
        o: ThingOverrides,
    ) -> ThingSpec {
        ThingSpec {
            logical_id: "thing".into(),
            name: "t1".into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            thing_type: ty.map(str::to_string),
            thing_groups: groups.iter().map(|g| g.to_string()).collect(),
            billing_group: None,
            overrides: o,
        }
    }

    fn existing() -> Thing {
        merged_thing(
            None,
            &spec(
                &[("a", "1"), ("b", "2")],
                Some("T1"),
                &["g1"],
                ThingOverrides::default(),
            ),
        )
        .unwrap()
    }

    #[test]
    fn new_thing_takes_everything() {
        let t = existing();
        assert_eq!(t.attributes.len(), 2);
        assert_eq!(t.thing_type.as_deref(), Some("T1"));
        assert_eq!(t.version, 1);
    }

    #[test]
    fn override_settings_apply_per_key() {
        let old = existing();
        let o = ThingOverrides {
            attribute_payload: Some(Override::Merge),
            thing_type_name: Some(Override::Replace),
            thing_groups: Some(Override::DoNothing),
        };
        let t = merged_thing(
            Some(&old),
            &spec(&[("b", "9"), ("c", "3")], Some("T2"), &["g2"], o),
        )
        .unwrap();
        assert_eq!(t.attributes["a"], "1");
        assert_eq!(t.attributes["b"], "9");
        assert_eq!(t.attributes["c"], "3");
        assert_eq!(t.thing_type.as_deref(), Some("T2"));
        assert_eq!(t.groups.iter().collect::<Vec<_>>(), ["g1"]);
        assert_eq!(t.version, 2);

        let o = ThingOverrides {
            thing_groups: Some(Override::Merge),
            attribute_payload: Some(Override::Replace),
            ..Default::default()
        };
        let t = merged_thing(Some(&old), &spec(&[("z", "0")], None, &["g2"], o)).unwrap();
        assert_eq!(t.groups.len(), 2);
        assert_eq!(t.attributes.len(), 1);
        // No setting: the existing value stays.
        assert_eq!(t.thing_type.as_deref(), Some("T1"));
    }

    #[test]
    fn fail_conflicts_only_on_a_difference() {
        let old = existing();
        let o = ThingOverrides {
            thing_type_name: Some(Override::Fail),
            ..Default::default()
        };
        assert!(merged_thing(Some(&old), &spec(&[], Some("T1"), &[], o)).is_ok());
        let err = merged_thing(Some(&old), &spec(&[], Some("T9"), &[], o)).unwrap_err();
        assert_eq!(err.to_response().status_code, 409);
    }
}
