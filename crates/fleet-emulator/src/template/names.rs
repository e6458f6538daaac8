//! AWS IoT naming rules that the template engine applies to evaluated values: thing, thing
//! type, thing group, billing group and policy names, attribute keys and values, certificate
//! ids. Each rule is the length and pattern constraint of the AWS IoT API reference
//! (`ThingAttribute`, `CreateThingGroup`, `CreatePolicy`, `Certificate.certificateId`).
//! Also the size limit of a policy document ([`check_policy_document_size`]).

/// One AWS naming rule: what it names, how a person reads it, and the check itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rule {
    /// What the value is, for error messages ("thing name").
    pub what: &'static str,
    /// The rule in words, for error messages.
    pub description: &'static str,
    min: usize,
    max: usize,
    allowed: fn(u8) -> bool,
    /// Certificate ids may carry a `0x` prefix (pattern `(0x)?[a-fA-F0-9]+`).
    hex_prefix: bool,
}

impl Rule {
    /// True when `value` satisfies the rule. Every allowed character is ASCII, so byte
    /// length equals character length for any value that passes the character check.
    pub(crate) fn accepts(&self, value: &str) -> bool {
        let body = if self.hex_prefix {
            value.strip_prefix("0x").unwrap_or(value)
        } else {
            value
        };
        (self.min..=self.max).contains(&value.len())
            && (!self.hex_prefix || !body.is_empty())
            && body.bytes().all(self.allowed)
    }
}

fn registry_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-')
}

fn attribute_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b',' | b'@' | b'/' | b':' | b'#' | b'-')
}

fn attribute_value_char(b: u8) -> bool {
    attribute_name_char(b) || matches!(b, b'=' | b'[' | b']')
}

fn policy_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'=' | b',' | b'.' | b'@' | b'-')
}

fn hex_char(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

const REGISTRY_NAME: &str = "1-128 characters from a-z A-Z 0-9 : _ -";

pub(crate) const THING_NAME: Rule = Rule {
    what: "thing name",
    description: REGISTRY_NAME,
    min: 1,
    max: 128,
    allowed: registry_char,
    hex_prefix: false,
};

pub(crate) const THING_TYPE_NAME: Rule = Rule {
    what: "thing type name",
    ..THING_NAME
};

pub(crate) const THING_GROUP_NAME: Rule = Rule {
    what: "thing group name",
    ..THING_NAME
};

pub(crate) const BILLING_GROUP_NAME: Rule = Rule {
    what: "billing group name",
    ..THING_NAME
};

pub(crate) const ATTRIBUTE_NAME: Rule = Rule {
    what: "attribute name",
    description: "1-128 characters from a-z A-Z 0-9 _ . , @ / : # -",
    min: 1,
    max: 128,
    allowed: attribute_name_char,
    hex_prefix: false,
};

pub(crate) const ATTRIBUTE_VALUE: Rule = Rule {
    what: "attribute value",
    description: "at most 800 characters from a-z A-Z 0-9 _ . , @ / : # = [ ] - (no spaces)",
    min: 0,
    max: 800,
    allowed: attribute_value_char,
    hex_prefix: false,
};

pub(crate) const POLICY_NAME: Rule = Rule {
    what: "policy name",
    description: "1-128 characters from a-z A-Z 0-9 _ + = , . @ -",
    min: 1,
    max: 128,
    allowed: policy_name_char,
    hex_prefix: false,
};

pub(crate) const CERTIFICATE_ID: Rule = Rule {
    what: "certificate id",
    description: "exactly 64 characters: hexadecimal digits, optionally after 0x",
    min: 64,
    max: 64,
    allowed: hex_char,
    hex_prefix: true,
};

/// AWS IoT Core quotas (policy limits): a policy document is at most 2048 characters,
/// white space excluded.
pub(crate) const MAX_POLICY_DOCUMENT_CHARS: usize = 2048;

/// Checks a policy document against [`MAX_POLICY_DOCUMENT_CHARS`], counting every character
/// that is not white space (the emulator counts the document as it stores it: compact JSON).
pub(crate) fn check_policy_document_size(document: &str) -> Result<(), String> {
    let chars = document.chars().filter(|c| !c.is_whitespace()).count();
    if chars > MAX_POLICY_DOCUMENT_CHARS {
        Err(format!(
            "the policy document has {chars} characters excluding white space; AWS IoT allows \
             at most {MAX_POLICY_DOCUMENT_CHARS}"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thing_names_follow_the_registry_pattern() {
        assert!(THING_NAME.accepts("ThingPrefix_1"));
        assert!(THING_NAME.accepts("a:b-c_d"));
        assert!(THING_NAME.accepts(&"x".repeat(128)));
        assert!(!THING_NAME.accepts(""));
        assert!(!THING_NAME.accepts(&"x".repeat(129)));
        assert!(!THING_NAME.accepts("has space"));
        assert!(!THING_NAME.accepts("dot.ted"));
        assert!(!THING_NAME.accepts("ünï"));
    }

    #[test]
    fn attribute_values_may_be_empty_but_not_spaced() {
        assert!(ATTRIBUTE_VALUE.accepts(""));
        assert!(ATTRIBUTE_VALUE.accepts("v1"));
        assert!(ATTRIBUTE_VALUE.accepts("a=[b]"));
        assert!(!ATTRIBUTE_VALUE.accepts("two words"));
        assert!(!ATTRIBUTE_VALUE.accepts(&"v".repeat(801)));
        assert!(ATTRIBUTE_NAME.accepts("serial.Number@site/a#1"));
        assert!(!ATTRIBUTE_NAME.accepts(""));
        assert!(!ATTRIBUTE_NAME.accepts("a=b"));
    }

    #[test]
    fn policy_documents_are_limited_to_2048_characters_without_white_space() {
        let at_limit = format!("{{\"a\":\"{}\"}}", "x".repeat(2048 - 8));
        assert_eq!(at_limit.len(), 2048);
        assert!(check_policy_document_size(&at_limit).is_ok());
        let over = format!("{{\"a\":\"{}\"}}", "x".repeat(2048 - 7));
        let e = check_policy_document_size(&over).unwrap_err();
        assert!(e.contains("2049 characters") && e.contains("2048"), "{e}");
        // White space does not count.
        let spaced = format!("{{\"a\":\"{} \n\t\"}}", "x".repeat(2048 - 8));
        assert!(check_policy_document_size(&spaced).is_ok());
    }

    #[test]
    fn policy_names_and_certificate_ids() {
        assert!(POLICY_NAME.accepts("demo_thing_policy"));
        assert!(POLICY_NAME.accepts("a+b=c,d.e@f-g"));
        assert!(!POLICY_NAME.accepts("<provisioned-thing-policy>"));
        assert!(CERTIFICATE_ID.accepts(&"ab".repeat(32)));
        assert!(CERTIFICATE_ID.accepts(&format!("0x{}", "f".repeat(62))));
        assert!(!CERTIFICATE_ID.accepts(&"g".repeat(64)));
        assert!(!CERTIFICATE_ID.accepts(&"a".repeat(63)));
        assert!(!CERTIFICATE_ID.accepts(&format!("0x{}", "f".repeat(64))));
    }
}
