//! What a connection's policies can ask about it: the condition keys and policy variables of
//! AWS IoT ("AWS IoT Core policy variables", "Thing policy variables", "X.509 Certificate AWS
//! IoT Core policy variables" in the AWS IoT Developer Guide) that the emulator can know, how
//! their names parse ([`Key::parse`]) and what they resolve to for one connection
//! ([`Facts::resolve`]).
//!
//! Everything here is fixed once a connection is accepted: the client id, the peer address,
//! the certificate, and the thing (read from the registry at CONNECT). So a policy decision of
//! a connection never changes while it lives, and the connection may cache it.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// AWS: "certificate attributes that contain arrays are limited to five items. Additional
/// items are ignored." (Using X.509 certificate policy variables, limitations.)
const MAX_CERT_VALUES: usize = 5;

/// AWS: "All string values are limited to 1024 characters. If a certificate attribute contains
/// a string longer than 1024 characters, the certificate policy variable is not replaced."
const MAX_CERT_VALUE_CHARS: usize = 1024;

/// A distinguished-name attribute AWS IoT exposes as `iot:Certificate.Subject.<Field>` and
/// `iot:Certificate.Issuer.<Field>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DnField {
    DistinguishedNameQualifier,
    Country,
    Organization,
    OrganizationalUnit,
    State,
    CommonName,
    SerialNumber,
    Title,
    Surname,
    GivenName,
    Initials,
    Pseudonym,
    GenerationQualifier,
}

impl DnField {
    const ALL: [DnField; 13] = [
        DnField::DistinguishedNameQualifier,
        DnField::Country,
        DnField::Organization,
        DnField::OrganizationalUnit,
        DnField::State,
        DnField::CommonName,
        DnField::SerialNumber,
        DnField::Title,
        DnField::Surname,
        DnField::GivenName,
        DnField::Initials,
        DnField::Pseudonym,
        DnField::GenerationQualifier,
    ];

    fn name(self) -> &'static str {
        match self {
            DnField::DistinguishedNameQualifier => "DistinguishedNameQualifier",
            DnField::Country => "Country",
            DnField::Organization => "Organization",
            DnField::OrganizationalUnit => "OrganizationalUnit",
            DnField::State => "State",
            DnField::CommonName => "CommonName",
            DnField::SerialNumber => "SerialNumber",
            DnField::Title => "Title",
            DnField::Surname => "Surname",
            DnField::GivenName => "GivenName",
            DnField::Initials => "Initials",
            DnField::Pseudonym => "Pseudonym",
            DnField::GenerationQualifier => "GenerationQualifier",
        }
    }

    /// The X.520 attribute type of the field.
    fn oid(self) -> &'static str {
        match self {
            DnField::DistinguishedNameQualifier => "2.5.4.46",
            DnField::Country => "2.5.4.6",
            DnField::Organization => "2.5.4.10",
            DnField::OrganizationalUnit => "2.5.4.11",
            DnField::State => "2.5.4.8",
            DnField::CommonName => "2.5.4.3",
            DnField::SerialNumber => "2.5.4.5",
            DnField::Title => "2.5.4.12",
            DnField::Surname => "2.5.4.4",
            DnField::GivenName => "2.5.4.42",
            DnField::Initials => "2.5.4.43",
            DnField::Pseudonym => "2.5.4.65",
            DnField::GenerationQualifier => "2.5.4.44",
        }
    }
}

/// Which of a multi-valued certificate attribute's values a key reads. AWS: "By default, the
/// policy variables for each multi-value attribute return the first value"; `.N` (from 1)
/// reads the N-th; `.List` is every value, for `ForAnyValue`/`ForAllValues` conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    First,
    Index(usize),
    List,
}

/// A condition key or policy variable the emulator evaluates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    /// `iot:ClientId`.
    ClientId,
    /// `aws:SourceIp`: the client's address as the emulator sees it (loopback in tests).
    SourceIp,
    /// `iot:Connection.Thing.ThingName`.
    ThingName,
    /// `iot:Connection.Thing.ThingTypeName`.
    ThingTypeName,
    /// `iot:Connection.Thing.IsAttached`: `true` or `false`, always present.
    IsAttached,
    /// `iot:Connection.Thing.Attributes[name]` (the name is case-sensitive, as attribute
    /// names are).
    Attribute(String),
    /// `iot:Certificate.Subject.<Field>` / `iot:Certificate.Issuer.<Field>`, with `.N` or
    /// `.List`.
    Cert {
        issuer: bool,
        field: DnField,
        pick: Pick,
    },
    /// `iot:Certificate.SerialNumber`: the serial number in decimal (AWS's example shows
    /// `92:12:85:cb:b7:a5:e0:86` as `10525622389124227206`).
    SerialNumber,
}

/// Documented AWS IoT keys the emulator does not evaluate: a policy using one is refused when
/// it is loaded rather than evaluated wrongly (docs/emulator.md, "Not emulated").
const NOT_EMULATED: &[&str] = &[
    "iot:certificate.subjectalternativename.",
    "iot:certificate.issuer.alternativename.",
    "iot:certificate.availablekeys",
    "iot:domainname",
    "iot:connectattributes",
    "iot:lastwilltopic",
    "iot:clientmode",
    "aws:sourcevpc",
    "aws:vpcsourceip",
    "aws:currenttime",
    "aws:epochtime",
    "aws:securetransport",
    "iot:connection.thing.",
    "iot:certificate.",
];

impl Key {
    /// Parses a condition key or policy variable name. Key names are case-insensitive (as in
    /// IAM); an attribute name in `Attributes[...]` keeps its case. The error says why the
    /// name is refused.
    pub(crate) fn parse(name: &str) -> Result<Key, String> {
        let lower = name.to_ascii_lowercase();
        let simple = match lower.as_str() {
            "iot:clientid" => Some(Key::ClientId),
            "aws:sourceip" => Some(Key::SourceIp),
            "iot:connection.thing.thingname" => Some(Key::ThingName),
            "iot:connection.thing.thingtypename" => Some(Key::ThingTypeName),
            "iot:connection.thing.isattached" => Some(Key::IsAttached),
            "iot:certificate.serialnumber" => Some(Key::SerialNumber),
            _ => None,
        };
        if let Some(k) = simple {
            return Ok(k);
        }
        const ATTR: &str = "iot:connection.thing.attributes[";
        if lower.starts_with(ATTR) && lower.ends_with(']') && name.len() > ATTR.len() + 1 {
            let attr = &name[ATTR.len()..name.len() - 1];
            return Ok(Key::Attribute(attr.to_string()));
        }
        for (prefix, issuer) in [
            ("iot:certificate.subject.", false),
            ("iot:certificate.issuer.", true),
        ] {
            let Some(rest) = lower.strip_prefix(prefix) else {
                continue;
            };
            let (field, pick) = match rest.split_once('.') {
                None => (rest, Pick::First),
                Some((f, "list")) => (f, Pick::List),
                Some((f, n)) => match n.parse::<usize>() {
                    Ok(i) if i >= 1 => (f, Pick::Index(i)),
                    _ => {
                        return Err(format!(
                            "`{name}`: after the attribute comes `.List` or a position \
                             from 1 (`.1`, `.2`, …)"
                        ));
                    }
                },
            };
            if let Some(field) = DnField::ALL
                .into_iter()
                .find(|f| f.name().eq_ignore_ascii_case(field))
            {
                return Ok(Key::Cert {
                    issuer,
                    field,
                    pick,
                });
            }
        }
        if NOT_EMULATED.iter().any(|p| lower.starts_with(p)) {
            return Err(format!(
                "`{name}` is an AWS IoT key the emulator does not evaluate (it evaluates \
                 iot:ClientId, aws:SourceIp, iot:Connection.Thing.ThingName, ThingTypeName, \
                 IsAttached, Attributes[name], iot:Certificate.Subject.*, \
                 iot:Certificate.Issuer.* and iot:Certificate.SerialNumber)"
            ));
        }
        Err(format!(
            "`{name}` is not an AWS IoT condition key or policy variable (keys are \
             iot:ClientId, aws:SourceIp, iot:Connection.Thing.*, iot:Certificate.*)"
        ))
    }

    /// True for keys that may hold several values (only `….List`).
    pub(crate) fn is_list(&self) -> bool {
        matches!(
            self,
            Key::Cert {
                pick: Pick::List,
                ..
            }
        )
    }
}

/// The thing a connection is for: the registry thing whose name is the client id and to
/// which the connection's certificate is attached (AWS: "the value of clientId in the MQTT
/// connect message … must exactly match the thing name").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ThingFacts {
    pub name: String,
    pub type_name: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// The certificate a connection authenticated with: subject and issuer attributes in the
/// order they appear, and the serial number in decimal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CertFacts {
    subject: Vec<(String, String)>,
    issuer: Vec<(String, String)>,
    serial: Option<String>,
}

impl CertFacts {
    /// Reads a DER certificate; one that does not parse gives no certificate facts (its keys
    /// do not resolve), which cannot happen after a successful TLS handshake.
    pub(crate) fn from_der(der: &[u8]) -> CertFacts {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return CertFacts::default();
        };
        let attrs = |name: &x509_parser::x509::X509Name<'_>| {
            name.iter_attributes()
                .filter_map(|a| {
                    let value = a.as_str().ok()?;
                    Some((a.attr_type().to_id_string(), value.to_string()))
                })
                .collect()
        };
        CertFacts {
            subject: attrs(cert.subject()),
            issuer: attrs(cert.issuer()),
            serial: Some(cert.tbs_certificate.serial.to_str_radix(10)),
        }
    }

    /// Facts for tests: `(oid, value)` pairs.
    #[cfg(test)]
    pub(crate) fn new(
        subject: &[(&str, &str)],
        issuer: &[(&str, &str)],
        serial: Option<&str>,
    ) -> CertFacts {
        let own = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(o, s)| (o.to_string(), s.to_string()))
                .collect()
        };
        CertFacts {
            subject: own(subject),
            issuer: own(issuer),
            serial: serial.map(str::to_string),
        }
    }

    /// The values of one field, as AWS hands them to a policy: at most five; a value with a
    /// wildcard character or over 1024 characters is not substituted ("the policy variable
    /// is not replaced"), so it is left out; the special characters `, " \ + = < > ;` are
    /// prefixed with a backslash (AWS's limitations list).
    fn values(&self, issuer: bool, field: DnField) -> Vec<String> {
        let list = if issuer { &self.issuer } else { &self.subject };
        list.iter()
            .filter(|(oid, _)| oid == field.oid())
            .take(MAX_CERT_VALUES)
            .map(|(_, v)| v)
            .filter(|v| !v.contains(['*', '?']) && v.chars().count() <= MAX_CERT_VALUE_CHARS)
            .map(|v| escape_special(v))
            .collect()
    }
}

fn escape_special(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, ',' | '"' | '\\' | '+' | '=' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Everything a policy can ask about one connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    pub client_id: String,
    pub source_ip: Option<IpAddr>,
    pub thing: Option<ThingFacts>,
    pub certificate: CertFacts,
}

impl Facts {
    /// The values of a key, or `None` when the key is absent for this connection (no
    /// attached thing, no such attribute, no such certificate field).
    pub(crate) fn resolve(&self, key: &Key) -> Option<Vec<String>> {
        let one = |v: Option<&String>| v.map(|s| vec![s.clone()]);
        match key {
            Key::ClientId => Some(vec![self.client_id.clone()]),
            Key::SourceIp => self.source_ip.map(|ip| vec![ip.to_string()]),
            Key::ThingName => one(self.thing.as_ref().map(|t| &t.name)),
            Key::ThingTypeName => one(self.thing.as_ref().and_then(|t| t.type_name.as_ref())),
            Key::IsAttached => Some(vec![self.thing.is_some().to_string()]),
            Key::Attribute(name) => one(self.thing.as_ref().and_then(|t| t.attributes.get(name))),
            Key::Cert {
                issuer,
                field,
                pick,
            } => {
                let mut values = self.certificate.values(*issuer, *field);
                match pick {
                    Pick::List if values.is_empty() => None,
                    Pick::List => Some(values),
                    Pick::First => values.drain(..).next().map(|v| vec![v]),
                    Pick::Index(i) => values.drain(..).nth(i - 1).map(|v| vec![v]),
                }
            }
            Key::SerialNumber => one(self.certificate.serial.as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_parse_case_insensitively_and_unknown_ones_are_refused() {
        assert_eq!(Key::parse("iot:ClientId"), Ok(Key::ClientId));
        assert_eq!(
            Key::parse("IOT:Connection.Thing.IsAttached"),
            Ok(Key::IsAttached)
        );
        assert_eq!(
            Key::parse("iot:Connection.Thing.Attributes[Line]"),
            Ok(Key::Attribute("Line".into()))
        );
        assert_eq!(
            Key::parse("iot:Certificate.Issuer.CommonName.2"),
            Ok(Key::Cert {
                issuer: true,
                field: DnField::CommonName,
                pick: Pick::Index(2)
            })
        );
        assert!(
            Key::parse("iot:Certificate.Subject.Country.List")
                .unwrap()
                .is_list()
        );
        let e = Key::parse("iot:Certificate.Subject.Country.0").unwrap_err();
        assert!(e.contains("from 1"), "{e}");
        let e = Key::parse("aws:CurrentTime").unwrap_err();
        assert!(e.contains("does not evaluate"), "{e}");
        let e = Key::parse("iot:Connection.Thing.Colour").unwrap_err();
        assert!(e.contains("does not evaluate"), "{e}");
        let e = Key::parse("iot:Bogus").unwrap_err();
        assert!(e.contains("not an AWS IoT condition key"), "{e}");
    }

    #[test]
    fn certificate_values_follow_aws_limits() {
        let cn = DnField::CommonName.oid();
        let c = DnField::Country.oid();
        let long = "x".repeat(1025);
        let facts = Facts {
            certificate: CertFacts::new(
                &[
                    (cn, "a=b,c"),
                    (c, "US"),
                    (c, "CA"),
                    (c, "D*"),
                    (c, &long),
                    (c, "FR"),
                    (c, "DE"),
                ],
                &[],
                Some("42"),
            ),
            ..Facts::default()
        };
        let key = |s: &str| Key::parse(s).unwrap();
        assert_eq!(
            facts.resolve(&key("iot:Certificate.Subject.CommonName")),
            Some(vec![r"a\=b\,c".to_string()])
        );
        // Five values at most; the wildcard and the over-long one are not substituted.
        assert_eq!(
            facts.resolve(&key("iot:Certificate.Subject.Country.List")),
            Some(vec!["US".into(), "CA".into(), "FR".into()])
        );
        assert_eq!(
            facts.resolve(&key("iot:Certificate.Subject.Country.2")),
            Some(vec!["CA".into()])
        );
        assert_eq!(
            facts.resolve(&key("iot:Certificate.Subject.Country.4")),
            None
        );
        assert_eq!(
            facts.resolve(&key("iot:Certificate.Issuer.CommonName")),
            None
        );
        assert_eq!(
            facts.resolve(&key("iot:Certificate.SerialNumber")),
            Some(vec!["42".into()])
        );
        assert_eq!(
            facts.resolve(&key("iot:Connection.Thing.IsAttached")),
            Some(vec!["false".into()])
        );
        assert_eq!(facts.resolve(&key("iot:Connection.Thing.ThingName")), None);
    }
}
