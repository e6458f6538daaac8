//! The two ways a template fails: [`TemplateError`] when a body is loaded (it names the
//! JSON path of the problem) and [`EvalError`] when a RegisterThing request is evaluated
//! (always 400 `InvalidParameters` on the wire, with an AWS-style message).

#[cfg(test)]
use crate::fleet::ErrorResponse;

/// The longest body AWS accepts: 10 KiB, 10240 characters (docs/aws-fleet-provisioning.md §3.1).
pub const MAX_BODY_CHARS: usize = 10_240;

/// Why a template body cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum TemplateError {
    /// The body is longer than AWS allows.
    #[error("template body is {chars} characters long; AWS allows at most {MAX_BODY_CHARS}")]
    #[diagnostic(
        code(station::emulator::template::too_large),
        help("shorten the template: AWS rejects provisioning template bodies over 10 KiB")
    )]
    TooLarge { chars: usize },

    /// The body is not JSON.
    #[error("template body is not valid JSON: {message} (line {line}, column {column})")]
    #[diagnostic(
        code(station::emulator::template::json),
        help("fix the JSON syntax at the line and column shown")
    )]
    Json {
        message: String,
        line: usize,
        column: usize,
    },

    /// The body is JSON but not a valid provisioning template.
    #[error("{}: {message}", display_path(path))]
    #[diagnostic(
        code(station::emulator::template::invalid),
        help(
            "fix the template at the JSON path shown; the template language is described in \
             the emulator's template module docs and in docs/aws-fleet-provisioning.md §3"
        )
    )]
    Invalid { path: String, message: String },
}

impl TemplateError {
    pub(crate) fn invalid(path: &str, message: impl Into<String>) -> TemplateError {
        TemplateError::Invalid {
            path: path.to_string(),
            message: message.into(),
        }
    }

    /// The JSON path of the problem (`Resources.thing.Properties.ThingName`), when the
    /// body parsed as JSON.
    #[cfg(test)]
    pub(crate) fn path(&self) -> Option<&str> {
        match self {
            TemplateError::Invalid { path, .. } => Some(path),
            _ => None,
        }
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() { "template" } else { path }
}

/// Why evaluating a template for one request failed. Every evaluation failure is answered
/// with status 400 and errorCode `InvalidParameters` (docs/aws-fleet-provisioning.md §1.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {}", self.error_message())]
pub struct EvalError {
    /// What went wrong.
    pub kind: EvalErrorKind,
    /// The JSON path of the template property being evaluated
    /// (`DeviceConfiguration.LocationUrl`). It is for logs; AWS's message does not name it.
    pub path: String,
}

/// The kinds of evaluation failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalErrorKind {
    /// A `Ref` (or `${Name}` in `Fn::Sub`) has no value: an undeclared name missing from
    /// the request, a declared parameter with neither a value nor a `Default`, a
    /// certificate-subject pseudo-parameter the certificate lacks, or an `AWS::` name that
    /// provisioning cannot resolve (`AWS::Region`).
    UnresolvedReference { name: String },
    /// `Fn::Select` index past the end of the list.
    SelectIndexOutOfRange { index: usize, len: usize },
    /// `Fn::Select` index that is not a non-negative integer.
    SelectIndexInvalid { value: String },
    /// `Fn::Select` picked a `null` list element.
    SelectNull { index: usize },
    /// `Fn::FindInMap` names a mapping the template does not declare.
    MappingNotFound { map: String },
    /// `Fn::FindInMap` top-level key absent from the mapping.
    MappingKeyNotFound { map: String, key: String },
    /// `Fn::FindInMap` second-level key absent.
    MappingValueNotFound {
        map: String,
        key: String,
        value_key: String,
    },
    /// `Fn::Split` with an empty delimiter.
    EmptySplitDelimiter,
    /// The certificate `Status` is neither ACTIVE nor INACTIVE (any case).
    InvalidStatus { value: String },
    /// A computed `PolicyDocument` is not a JSON object.
    InvalidPolicyDocument { reason: String },
    /// An evaluated name or value breaks the AWS IoT naming rule for it.
    InvalidValue {
        what: &'static str,
        value: String,
        rule: &'static str,
    },
}

impl EvalError {
    pub(crate) fn at(kind: EvalErrorKind, path: &str) -> EvalError {
        EvalError {
            kind,
            path: path.to_string(),
        }
    }

    /// The HTTP-style status on the rejected topic: always 400.
    #[cfg(test)]
    pub(crate) fn status_code(&self) -> u16 {
        400
    }

    /// The errorCode on the rejected topic: always `InvalidParameters`.
    #[cfg(test)]
    pub(crate) fn error_code(&self) -> &'static str {
        "InvalidParameters"
    }

    /// The errorMessage on the rejected topic, in AWS's style. An unresolved reference
    /// gives AWS's observed wording, `Cannot resolve reference value: AWS::Region`.
    pub(crate) fn error_message(&self) -> String {
        match &self.kind {
            EvalErrorKind::UnresolvedReference { name } => {
                format!("Cannot resolve reference value: {name}")
            }
            EvalErrorKind::SelectIndexOutOfRange { index, len } => {
                format!("Fn::Select index {index} is out of bounds for a list of {len} values")
            }
            EvalErrorKind::SelectIndexInvalid { value } => format!(
                "Fn::Select index '{}' is not a non-negative integer",
                clip(value)
            ),
            EvalErrorKind::SelectNull { index } => {
                format!("Fn::Select index {index} selects a null value")
            }
            EvalErrorKind::MappingNotFound { map } => {
                format!("Fn::FindInMap cannot find mapping '{}'", clip(map))
            }
            EvalErrorKind::MappingKeyNotFound { map, key } => format!(
                "Fn::FindInMap cannot find key '{}' in mapping '{}'",
                clip(key),
                clip(map)
            ),
            EvalErrorKind::MappingValueNotFound {
                map,
                key,
                value_key,
            } => format!(
                "Fn::FindInMap cannot find key '{}' under '{}' in mapping '{}'",
                clip(value_key),
                clip(key),
                clip(map)
            ),
            EvalErrorKind::EmptySplitDelimiter => "Fn::Split delimiter is empty".to_string(),
            EvalErrorKind::InvalidStatus { value } => format!(
                "Certificate status '{}' is invalid; expected ACTIVE or INACTIVE",
                clip(value)
            ),
            EvalErrorKind::InvalidPolicyDocument { reason } => {
                format!("Policy document is invalid: {reason}")
            }
            EvalErrorKind::InvalidValue { what, value, rule } => {
                format!("Invalid {what} '{}': {rule}", clip(value))
            }
        }
    }

    /// The payload for the rejected topic.
    #[cfg(test)]
    pub(crate) fn to_error_response(&self) -> ErrorResponse {
        ErrorResponse {
            status_code: self.status_code(),
            error_code: self.error_code().to_string(),
            error_message: self.error_message(),
        }
    }
}

/// Values in messages come from device parameters; keep messages short whatever they hold.
fn clip(value: &str) -> String {
    const MAX: usize = 80;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &value[..cut]),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unresolved_reference_uses_the_observed_aws_wording() {
        let e = EvalError::at(
            EvalErrorKind::UnresolvedReference {
                name: "AWS::Region".into(),
            },
            "DeviceConfiguration.Region",
        );
        assert_eq!(
            e.error_message(),
            "Cannot resolve reference value: AWS::Region"
        );
        let wire = e.to_error_response();
        assert_eq!(wire.status_code, 400);
        assert_eq!(wire.error_code, "InvalidParameters");
        assert_eq!(
            wire.error_message,
            "Cannot resolve reference value: AWS::Region"
        );
        assert_eq!(
            e.to_string(),
            "DeviceConfiguration.Region: Cannot resolve reference value: AWS::Region"
        );
    }

    #[test]
    fn long_values_are_clipped_in_messages() {
        let e = EvalError::at(
            EvalErrorKind::InvalidValue {
                what: "thing name",
                value: "x".repeat(1000),
                rule: "r",
            },
            "p",
        );
        let m = e.error_message();
        assert!(m.len() < 120, "{m}");
        assert!(m.contains("..."));
    }

    #[test]
    fn template_errors_name_the_path() {
        let e = TemplateError::invalid(
            "Resources.thing.Properties.ThingName",
            "Fn::Join expects [delimiter, [values]]",
        );
        assert_eq!(
            e.to_string(),
            "Resources.thing.Properties.ThingName: Fn::Join expects [delimiter, [values]]"
        );
        assert_eq!(e.path(), Some("Resources.thing.Properties.ThingName"));
        assert_eq!(
            TemplateError::invalid("", "the template must be a JSON object").to_string(),
            "template: the template must be a JSON object"
        );
    }
}
