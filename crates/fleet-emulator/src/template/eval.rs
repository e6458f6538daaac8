//! Evaluating a loaded template for one RegisterThing request: resolves every property of
//! every resource and the device configuration against the request, checks the results
//! against AWS IoT's naming rules, and assembles the [`Provisioned`] result.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::error::{EvalError, EvalErrorKind};
use super::expr::Env;
use super::names::{self, Rule};
use super::parse::{
    CertificateRes, DocNode, ListSlot, PolicyRes, PolicySource, Slot, ThingRes, canonical_policy,
    parse_policy_text,
};
use super::provisioned::{CertificateSpec, CertificateStatus, PolicySpec, Provisioned, ThingSpec};
use super::{EvalContext, Template};

pub(crate) fn evaluate(t: &Template, ctx: &EvalContext<'_>) -> Result<Provisioned, EvalError> {
    let env = Env {
        parameters: ctx.parameters,
        certificate_id: ctx.certificate_id,
        subject: ctx.certificate_subject,
        mappings: &t.mappings,
    };
    let thing = t.thing.as_ref().map(|r| thing(r, &env)).transpose()?;
    let certificate = t
        .certificate
        .as_ref()
        .map(|r| certificate(r, &env))
        .transpose()?;
    let policies = t
        .policies
        .iter()
        .map(|r| policy(r, &env))
        .collect::<Result<Vec<_>, _>>()?;
    let mut device_configuration = BTreeMap::new();
    for (key, slot) in &t.device_configuration {
        device_configuration.insert(key.clone(), text(slot, &env)?.into_owned());
    }
    Ok(Provisioned {
        thing,
        certificate,
        policies,
        device_configuration,
    })
}

fn text<'s>(slot: &'s Slot, env: &Env<'s>) -> Result<Cow<'s, str>, EvalError> {
    slot.expr
        .eval(env)
        .map_err(|kind| EvalError::at(kind, &slot.path))
}

fn checked(slot: &Slot, env: &Env<'_>, rule: &Rule) -> Result<String, EvalError> {
    let value = text(slot, env)?;
    check(rule, &value, &slot.path)?;
    Ok(value.into_owned())
}

fn check(rule: &Rule, value: &str, path: &str) -> Result<(), EvalError> {
    if rule.accepts(value) {
        Ok(())
    } else {
        Err(EvalError::at(
            EvalErrorKind::InvalidValue {
                what: rule.what,
                value: value.to_string(),
                rule: rule.description,
            },
            path,
        ))
    }
}

fn list(slot: &ListSlot, env: &Env<'_>, rule: &Rule) -> Result<Vec<String>, EvalError> {
    let items = slot
        .expr
        .eval(env)
        .map_err(|kind| EvalError::at(kind, &slot.path))?;
    items
        .into_iter()
        // Thing group lists are compiled without null elements.
        .flatten()
        .map(|item| {
            check(rule, &item, &slot.path)?;
            Ok(item.into_owned())
        })
        .collect()
}

fn thing(r: &ThingRes, env: &Env<'_>) -> Result<ThingSpec, EvalError> {
    let name = checked(&r.name, env, &names::THING_NAME)?;
    let mut attributes = BTreeMap::new();
    for (key, slot) in &r.attributes {
        check(&names::ATTRIBUTE_NAME, key, &slot.path)?;
        attributes.insert(key.clone(), checked(slot, env, &names::ATTRIBUTE_VALUE)?);
    }
    let thing_type = r
        .thing_type
        .as_ref()
        .map(|s| checked(s, env, &names::THING_TYPE_NAME))
        .transpose()?;
    let thing_groups = match &r.thing_groups {
        Some(slot) => list(slot, env, &names::THING_GROUP_NAME)?,
        None => Vec::new(),
    };
    let billing_group = r
        .billing_group
        .as_ref()
        .map(|s| checked(s, env, &names::BILLING_GROUP_NAME))
        .transpose()?;
    Ok(ThingSpec {
        logical_id: r.logical_id.clone(),
        name,
        attributes,
        thing_type,
        thing_groups,
        billing_group,
        overrides: r.overrides,
    })
}

fn certificate(r: &CertificateRes, env: &Env<'_>) -> Result<CertificateSpec, EvalError> {
    let certificate_id = checked(&r.certificate_id, env, &names::CERTIFICATE_ID)?;
    let status = match &r.status {
        None => CertificateStatus::Active,
        Some(slot) => {
            let value = text(slot, env)?;
            CertificateStatus::parse(&value).ok_or_else(|| {
                EvalError::at(
                    EvalErrorKind::InvalidStatus {
                        value: value.into_owned(),
                    },
                    &slot.path,
                )
            })?
        }
    };
    Ok(CertificateSpec {
        logical_id: r.logical_id.clone(),
        certificate_id,
        status,
        status_override: r.status_override,
    })
}

fn policy(r: &PolicyRes, env: &Env<'_>) -> Result<PolicySpec, EvalError> {
    let (name, document) = match &r.source {
        PolicySource::Name(slot) => (checked(slot, env, &names::POLICY_NAME)?, None),
        PolicySource::Static { name, document } => (name.clone(), Some(document.clone())),
        PolicySource::Tree { path, node } => {
            let doc = doc_value(node, env).map_err(|kind| EvalError::at(kind, path))?;
            let (name, document) = canonical_policy(&doc);
            sized(&document, path)?;
            (name, Some(document))
        }
        PolicySource::Text(slot) => {
            let value = text(slot, env)?;
            let doc = parse_policy_text(&value).map_err(|reason| {
                EvalError::at(EvalErrorKind::InvalidPolicyDocument { reason }, &slot.path)
            })?;
            let (name, document) = canonical_policy(&doc);
            sized(&document, &slot.path)?;
            (name, Some(document))
        }
    };
    Ok(PolicySpec {
        logical_id: r.logical_id.clone(),
        name,
        document,
    })
}

/// A computed policy document must fit AWS's size limit (see `names`).
fn sized(document: &str, path: &str) -> Result<(), EvalError> {
    names::check_policy_document_size(document)
        .map_err(|reason| EvalError::at(EvalErrorKind::InvalidPolicyDocument { reason }, path))
}

fn doc_value(node: &DocNode, env: &Env<'_>) -> Result<Value, EvalErrorKind> {
    Ok(match node {
        DocNode::Lit(v) => v.clone(),
        DocNode::Str(e) => Value::String(e.eval(env)?.into_owned()),
        DocNode::List(e) => Value::Array(
            e.eval(env)?
                .into_iter()
                .map(|item| item.map_or(Value::Null, |s| Value::String(s.into_owned())))
                .collect(),
        ),
        DocNode::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| doc_value(item, env))
                .collect::<Result<_, _>>()?,
        ),
        DocNode::Object(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                map.insert(k.clone(), doc_value(v, env)?);
            }
            Value::Object(map)
        }
    })
}
