//! Reserved fleet-provisioning topics (docs/aws-fleet-provisioning.md §1.1).
//!
//! | Operation                | request topic                                           |
//! |--------------------------|---------------------------------------------------------|
//! | CreateKeysAndCertificate | `$aws/certificates/create/<fmt>`                        |
//! | CreateCertificateFromCsr | `$aws/certificates/create-from-csr/<fmt>`               |
//! | RegisterThing            | `$aws/provisioning-templates/<name>/provision/<fmt>`    |
//!
//! Replies come on `<request topic>/accepted` and `<request topic>/rejected`.

use std::fmt;

/// Payload encoding named by the last segment of the request topic (`provision.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Cbor,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Cbor => "cbor",
        }
    }

    fn parse(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "cbor" => Some(Format::Cbor),
            _ => None,
        }
    }
}

/// The MQTT protocol version of a connection (`provision.mqtt_version`: 3 or 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(try_from = "u8")]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4).
    #[default]
    V311,
    V5,
}

impl TryFrom<u8> for MqttVersion {
    type Error = String;

    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            3 | 4 => Ok(MqttVersion::V311),
            5 => Ok(MqttVersion::V5),
            other => Err(format!(
                "MQTT version {other} is not one AWS IoT speaks: use 3 (MQTT 3.1.1) or 5"
            )),
        }
    }
}

impl std::str::FromStr for MqttVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<u8>()
            .map_err(|_| format!("{s:?} is not 3 or 5"))
            .and_then(MqttVersion::try_from)
    }
}

impl fmt::Display for MqttVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MqttVersion::V311 => "3.1.1",
            MqttVersion::V5 => "5",
        })
    }
}

/// One fleet-provisioning MQTT API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Api {
    CreateKeysAndCertificate,
    CreateCertificateFromCsr,
    RegisterThing { template: String },
}

impl Api {
    /// Short, stable name used in logs, metrics and ledger reasons.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Which API, without the template.
    pub fn kind(&self) -> ApiKind {
        match self {
            Api::CreateKeysAndCertificate => ApiKind::CreateKeysAndCertificate,
            Api::CreateCertificateFromCsr => ApiKind::CreateCertificateFromCsr,
            Api::RegisterThing { .. } => ApiKind::RegisterThing,
        }
    }

    /// The topic a device publishes the request to.
    pub fn request_topic(&self, format: Format) -> String {
        match self {
            Api::CreateKeysAndCertificate => {
                format!("$aws/certificates/create/{}", format.as_str())
            }
            Api::CreateCertificateFromCsr => {
                format!("$aws/certificates/create-from-csr/{}", format.as_str())
            }
            Api::RegisterThing { template } => format!(
                "$aws/provisioning-templates/{template}/provision/{}",
                format.as_str()
            ),
        }
    }

    /// The topic the service answers on.
    pub fn reply_topic(&self, format: Format, kind: ReplyKind) -> String {
        format!("{}/{}", self.request_topic(format), kind.as_str())
    }
}

/// One of the three APIs, without a template: what failure codes and report keys name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApiKind {
    CreateKeysAndCertificate,
    CreateCertificateFromCsr,
    RegisterThing,
}

impl ApiKind {
    /// The API's name as AWS writes it.
    pub fn name(self) -> &'static str {
        match self {
            ApiKind::CreateKeysAndCertificate => "CreateKeysAndCertificate",
            ApiKind::CreateCertificateFromCsr => "CreateCertificateFromCsr",
            ApiKind::RegisterThing => "RegisterThing",
        }
    }

    /// The API in failure codes and report keys (`create_keys`, `create_certificate`,
    /// `register_thing`).
    pub fn code(self) -> &'static str {
        match self {
            ApiKind::CreateKeysAndCertificate => "create_keys",
            ApiKind::CreateCertificateFromCsr => "create_certificate",
            ApiKind::RegisterThing => "register_thing",
        }
    }
}

/// Which of the two reply topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    Accepted,
    Rejected,
}

impl ReplyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyKind::Accepted => "accepted",
            ReplyKind::Rejected => "rejected",
        }
    }
}

/// A parsed reserved topic: the API, the format and whether it is the request or a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedTopic {
    pub api: Api,
    pub format: Format,
    /// `None` for the request topic, `Some` for a reply topic.
    pub reply: Option<ReplyKind>,
}

impl ReservedTopic {
    /// Parses a concrete topic name. Returns `None` when the topic is not one of the
    /// fleet-provisioning topics (including an unknown format or an invalid template name).
    pub fn parse(topic: &str) -> Option<ReservedTopic> {
        let parts: Vec<&str> = topic.split('/').collect();
        let (api, rest) = match parts.as_slice() {
            ["$aws", "certificates", "create", rest @ ..] => (Api::CreateKeysAndCertificate, rest),
            ["$aws", "certificates", "create-from-csr", rest @ ..] => {
                (Api::CreateCertificateFromCsr, rest)
            }
            [
                "$aws",
                "provisioning-templates",
                name,
                "provision",
                rest @ ..,
            ] => {
                validate_template_name(name).ok()?;
                (
                    Api::RegisterThing {
                        template: (*name).to_string(),
                    },
                    rest,
                )
            }
            _ => return None,
        };
        let (format, reply) = match rest {
            [fmt] => (Format::parse(fmt)?, None),
            [fmt, "accepted"] => (Format::parse(fmt)?, Some(ReplyKind::Accepted)),
            [fmt, "rejected"] => (Format::parse(fmt)?, Some(ReplyKind::Rejected)),
            _ => return None,
        };
        Some(ReservedTopic { api, format, reply })
    }
}

/// Why a provisioning template name is not acceptable to AWS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateNameError {
    Empty,
    TooLong(usize),
    BadCharacter(char),
}

impl fmt::Display for TemplateNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateNameError::Empty => write!(f, "template name is empty"),
            TemplateNameError::TooLong(n) => {
                write!(
                    f,
                    "template name is {n} characters long; AWS allows at most 36"
                )
            }
            TemplateNameError::BadCharacter(c) => write!(
                f,
                "template name contains {c:?}; AWS allows only letters, digits, '_' and '-'"
            ),
        }
    }
}

impl std::error::Error for TemplateNameError {}

/// AWS: 1–36 characters matching `^[0-9A-Za-z_-]+$` (docs/aws-fleet-provisioning.md §1.1).
pub fn validate_template_name(name: &str) -> Result<(), TemplateNameError> {
    if name.is_empty() {
        return Err(TemplateNameError::Empty);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(TemplateNameError::BadCharacter(c));
    }
    if name.len() > 36 {
        return Err(TemplateNameError::TooLong(name.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_documented_topics() {
        let csr = Api::CreateCertificateFromCsr;
        assert_eq!(
            csr.request_topic(Format::Json),
            "$aws/certificates/create-from-csr/json"
        );
        assert_eq!(
            csr.reply_topic(Format::Cbor, ReplyKind::Rejected),
            "$aws/certificates/create-from-csr/cbor/rejected"
        );
        let reg = Api::RegisterThing {
            template: "FleetTemplate".into(),
        };
        assert_eq!(
            reg.reply_topic(Format::Json, ReplyKind::Accepted),
            "$aws/provisioning-templates/FleetTemplate/provision/json/accepted"
        );
        assert_eq!(
            Api::CreateKeysAndCertificate.request_topic(Format::Json),
            "$aws/certificates/create/json"
        );
    }

    #[test]
    fn parses_round_trip() {
        for api in [
            Api::CreateKeysAndCertificate,
            Api::CreateCertificateFromCsr,
            Api::RegisterThing {
                template: "a-b_C9".into(),
            },
        ] {
            for format in [Format::Json, Format::Cbor] {
                let t = ReservedTopic::parse(&api.request_topic(format)).unwrap();
                assert_eq!(
                    (t.api.clone(), t.format, t.reply),
                    (api.clone(), format, None)
                );
                for kind in [ReplyKind::Accepted, ReplyKind::Rejected] {
                    let t = ReservedTopic::parse(&api.reply_topic(format, kind)).unwrap();
                    assert_eq!(t.reply, Some(kind));
                }
            }
        }
    }

    #[test]
    fn rejects_foreign_topics() {
        for t in [
            "$aws/certificates/create/xml",
            "$aws/certificates/create",
            "$aws/certificates/create/json/other",
            "$aws/provisioning-templates/bad name/provision/json",
            "$aws/things/x/shadow/update",
            "devices/1",
        ] {
            assert_eq!(ReservedTopic::parse(t), None, "{t}");
        }
    }

    #[test]
    fn template_names_follow_aws_rules() {
        assert!(validate_template_name("Fleet_Template-1").is_ok());
        assert_eq!(validate_template_name(""), Err(TemplateNameError::Empty));
        assert_eq!(
            validate_template_name(&"a".repeat(37)),
            Err(TemplateNameError::TooLong(37))
        );
        assert_eq!(
            validate_template_name("a.b"),
            Err(TemplateNameError::BadCharacter('.'))
        );
    }
}
