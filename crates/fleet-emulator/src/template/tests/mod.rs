//! Behaviour tests of the template engine: every intrinsic function (happy paths and each
//! error), parameters and defaults, mappings, pseudo-parameters, resources, OverrideSettings,
//! the size limit, the fixture templates, and randomised inputs that must never panic.
//!
//! - `structure`: sections, size, and the thing, certificate and policy resources.
//! - `expressions`: `Ref` and parameters, the intrinsic functions, `DeviceConfiguration`.
//! - `fixtures`: the fixture templates (AWS's examples) evaluate as their documents say.
//! - `robustness`: mutated bodies, random expressions and deep nesting never panic.
//!
//! This file holds the helpers they share.

pub(super) use std::collections::BTreeMap;

pub(super) use super::*;

pub(super) const CERT_ID: &str = "770c2b3b0a8f1d0e5c6b7a8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a1217d0";

pub(super) fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn eval_subject(
    body: &str,
    p: &[(&str, &str)],
    subject: &SubjectFields,
) -> Result<Provisioned, EvalError> {
    let template = Template::parse(body).unwrap_or_else(|e| panic!("parse: {e}\n{body}"));
    let parameters = params(p);
    template.evaluate(&EvalContext {
        parameters: &parameters,
        certificate_id: CERT_ID,
        certificate_subject: subject,
    })
}

pub(super) fn eval(body: &str, p: &[(&str, &str)]) -> Result<Provisioned, EvalError> {
    eval_subject(body, p, &SubjectFields::default())
}

pub(super) fn parse_err(body: &str) -> TemplateError {
    match Template::parse(body) {
        Ok(_) => panic!("expected a parse error for {body}"),
        Err(e) => e,
    }
}

pub(super) fn strict_err(body: &str) -> TemplateError {
    match Template::parse_with(body, ParseOptions::STRICT) {
        Ok(_) => panic!("expected a strict parse error for {body}"),
        Err(e) => e,
    }
}

pub(super) const POLICY_ONLY: &str =
    r#"{"p":{"Type":"AWS::IoT::Policy","Properties":{"PolicyName":"P"}}}"#;

/// A template whose only output is `DeviceConfiguration.V = expr`.
pub(super) fn dc_body(parameters: &str, mappings: &str, expr: &str) -> String {
    format!(
        r#"{{"Parameters":{parameters},"Mappings":{mappings},"Resources":{POLICY_ONLY},
            "DeviceConfiguration":{{"V":{expr}}}}}"#
    )
}

pub(super) fn value_of(expr: &str, p: &[(&str, &str)]) -> Result<String, EvalError> {
    value_with("{}", "{}", expr, p)
}

pub(super) fn value_with(
    parameters: &str,
    mappings: &str,
    expr: &str,
    p: &[(&str, &str)],
) -> Result<String, EvalError> {
    let out = eval(&dc_body(parameters, mappings, expr), p)?;
    Ok(out.device_configuration["V"].clone())
}

pub(super) fn dc_parse_err(expr: &str) -> TemplateError {
    parse_err(&dc_body("{}", "{}", expr))
}

pub(super) fn message(r: Result<String, EvalError>) -> String {
    match r {
        Ok(v) => panic!("expected an evaluation error, got {v:?}"),
        Err(e) => {
            assert_eq!(e.status_code(), 400);
            assert_eq!(e.error_code(), "InvalidParameters");
            e.error_message()
        }
    }
}

pub(super) fn invalid_message(e: &TemplateError) -> (&str, &str) {
    match e {
        TemplateError::Invalid { path, message } => (path, message),
        other => panic!("expected TemplateError::Invalid, got {other:?}"),
    }
}

mod expressions;
mod fixtures;
mod robustness;
mod structure;

use fixtures::fixture;
use structure::{policy_body, sha256_hex, thing_body};
