//! AWS IoT policy evaluation for the emulator's broker (docs/aws-fleet-provisioning.md §6).
//!
//! A request is an action (`iot:Connect`, `iot:Publish`, `iot:Subscribe`, `iot:Receive`,
//! `iot:RetainPublish`) on a resource ARN (`client/<id>`, `topic/<name>`,
//! `topicfilter/<filter>`). It is allowed when some `Allow` statement of an attached policy
//! matches and no `Deny` statement does. A statement matches when its action is in `Action`
//! (or not in `NotAction`), its resource is in `Resource` (or not in `NotResource`) and every
//! entry of its `Condition` holds (`condition.rs`). Actions and resources match IAM-style:
//! `*` is any run of characters (including `/`), `?` is one character, and MQTT's `+` and
//! `#` are literal.
//!
//! Policy variables (`${iot:ClientId}`, `${iot:Connection.Thing.*}`, `${iot:Certificate.*}`,
//! `${aws:SourceIp}`; `facts.rs` lists them) are substituted in `Resource`, `NotResource`
//! and condition values; a substituted value is literal (its `*` is not a wildcard), as are
//! `${*}`, `${?}` and `${$}`. A variable that does not resolve (no thing attached, no such
//! attribute or certificate field) makes the resource entry it is in match nothing; in
//! `NotResource` or a condition it makes the whole statement not match (AWS IoT "Thing policy
//! examples": "If the device certificate is not associated with the thing, this variable
//! won't be resolved and will result in an access denied error").
//!
//! A document is checked when it is loaded ([`PolicyDocument::parse`]: the claim policy at
//! start, a template's policy at RegisterThing): an unknown operator, condition key or policy
//! variable, a statement without `Effect`, with both or neither of `Action`/`NotAction` or
//! `Resource`/`NotResource`, is a [`PolicyError`] naming the JSON path, never a silent allow
//! or deny.
//!
//! - `facts.rs`: the keys and variables, and what they resolve to for a connection.
//! - `condition.rs`: the `Condition` operators and strings with variables.

mod condition;
mod facts;

use serde_json::Value;

use self::condition::{Condition, Template, tokens_match};
pub(crate) use self::facts::{CertFacts, Facts, ThingFacts};

/// The region and account the emulator pretends to be in (used to build resource ARNs).
pub const REGION: &str = "us-east-1";
pub const ACCOUNT: &str = "123456789012";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Connect,
    Publish,
    Subscribe,
    Receive,
    /// Publishing with the RETAIN flag (needed in addition to `iot:Publish`).
    RetainPublish,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Connect => "iot:Connect",
            Action::Publish => "iot:Publish",
            Action::Subscribe => "iot:Subscribe",
            Action::Receive => "iot:Receive",
            Action::RetainPublish => "iot:RetainPublish",
        }
    }

    /// The ARN of the resource the action applies to.
    pub(crate) fn resource_arn(self, name: &str) -> String {
        let kind = match self {
            Action::Connect => "client",
            Action::Publish | Action::Receive | Action::RetainPublish => "topic",
            Action::Subscribe => "topicfilter",
        };
        format!("arn:aws:iot:{REGION}:{ACCOUNT}:{kind}/{name}")
    }
}

/// Why a policy document cannot be loaded (AWS refuses such a document with
/// `MalformedPolicyException`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[error("policy document: {path}: {message}")]
#[diagnostic(
    code(station::emulator::policy::malformed),
    help(
        "fix the policy at the JSON path shown; the emulator evaluates the IAM condition \
         operators and AWS IoT keys listed in docs/emulator.md (\"Policies\")"
    )
)]
pub struct PolicyError {
    /// Where in the document (`Statement[1].Condition.Bool.iot:Connection.Thing.IsAttached`).
    pub path: String,
    pub message: String,
}

fn malformed(path: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        path: path.into(),
        message: message.into(),
    }
}

/// A policy document, checked and ready to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDocument {
    statements: Vec<Statement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    allow: bool,
    /// Lowercased action patterns (of `NotAction` when `not_action`).
    actions: Vec<String>,
    not_action: bool,
    resources: Vec<Template>,
    not_resource: bool,
    conditions: Vec<Condition>,
}

impl PolicyDocument {
    /// Checks a document: a `Statement` object or list, each with an `Effect` of `Allow` or
    /// `Deny`, exactly one of `Action`/`NotAction` and of `Resource`/`NotResource`, and a
    /// `Condition` the emulator can evaluate.
    pub fn parse(doc: &Value) -> Result<PolicyDocument, PolicyError> {
        let list: Vec<&Value> = match doc.get("Statement") {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v @ Value::Object(_)) => vec![v],
            _ => return Err(malformed("Statement", "the document has no Statement list")),
        };
        let statements = list
            .into_iter()
            .enumerate()
            .map(|(i, st)| parse_statement(st, &format!("Statement[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(PolicyDocument { statements })
    }
}

fn parse_statement(st: &Value, path: &str) -> Result<Statement, PolicyError> {
    if !st.is_object() {
        return Err(malformed(path, "a statement is an object"));
    }
    let allow = match st.get("Effect") {
        Some(Value::String(e)) if e == "Allow" => true,
        Some(Value::String(e)) if e == "Deny" => false,
        _ => {
            return Err(malformed(
                format!("{path}.Effect"),
                "Effect must be \"Allow\" or \"Deny\"",
            ));
        }
    };
    let one_of = |a: &str, b: &str| -> Result<(&Value, bool, String), PolicyError> {
        match (st.get(a), st.get(b)) {
            (Some(v), None) => Ok((v, false, format!("{path}.{a}"))),
            (None, Some(v)) => Ok((v, true, format!("{path}.{b}"))),
            (Some(_), Some(_)) => Err(malformed(
                path,
                format!("a statement has {a} or {b}, not both"),
            )),
            (None, None) => Err(malformed(
                path,
                format!("the statement has neither {a} nor {b}"),
            )),
        }
    };
    let (actions, not_action, apath) = one_of("Action", "NotAction")?;
    let actions = strings(actions, &apath)?
        .into_iter()
        .map(|a| a.to_ascii_lowercase())
        .collect();
    let (resources, not_resource, rpath) = one_of("Resource", "NotResource")?;
    let resources = strings(resources, &rpath)?
        .into_iter()
        .enumerate()
        .map(|(i, r)| Template::parse(&r).map_err(|m| malformed(format!("{rpath}[{i}]"), m)))
        .collect::<Result<_, _>>()?;
    let conditions = match st.get("Condition") {
        None => Vec::new(),
        Some(c) => condition::parse_block(c, &format!("{path}.Condition"))
            .map_err(|(p, m)| malformed(p, m))?,
    };
    Ok(Statement {
        allow,
        actions,
        not_action,
        resources,
        not_resource,
        conditions,
    })
}

fn strings(v: &Value, path: &str) -> Result<Vec<String>, PolicyError> {
    let bad = || malformed(path, "must be a string or a list of strings");
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

impl Statement {
    /// Whether the statement applies to `action` on `arn` for this connection.
    fn applies(&self, action: &str, arn: &str, facts: &Facts) -> bool {
        let listed = self.actions.iter().any(|a| wildcard_match(a, action));
        if listed == self.not_action {
            return false;
        }
        let resource_ok = if self.not_resource {
            let Some(pats) = self
                .resources
                .iter()
                .map(|r| r.pattern(facts))
                .collect::<Option<Vec<_>>>()
            else {
                return false;
            };
            !pats.iter().any(|p| tokens_match(p, arn, false))
        } else {
            self.resources.iter().any(|r| {
                r.pattern(facts)
                    .is_some_and(|p| tokens_match(&p, arn, false))
            })
        };
        resource_ok
            && self
                .conditions
                .iter()
                .all(|c| c.holds(facts).unwrap_or(false))
    }
}

/// Evaluates `action` on `name` (client id, topic or topic filter) against the documents:
/// allowed when an `Allow` statement applies and no `Deny` statement does.
pub(crate) fn is_allowed(
    documents: &[PolicyDocument],
    action: Action,
    name: &str,
    facts: &Facts,
) -> bool {
    let arn = action.resource_arn(name);
    let action = action.name().to_ascii_lowercase();
    let mut allowed = false;
    for st in documents.iter().flat_map(|d| &d.statements) {
        if st.applies(&action, &arn, facts) {
            if !st.allow {
                return false;
            }
            allowed = true;
        }
    }
    allowed
}

/// IAM wildcard match: `*` any run (including empty), `?` exactly one character.
pub(crate) fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// The default claim policy: connect, and use the fleet-provisioning topics of every template
/// (the §6 example of docs/aws-fleet-provisioning.md with the template name widened to `*`).
pub(crate) fn default_claim_policy() -> Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            { "Effect": "Allow", "Action": ["iot:Connect"], "Resource": "*" },
            { "Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
              "Resource": [
                "arn:aws:iot:*:*:topic/$aws/certificates/create/*",
                "arn:aws:iot:*:*:topic/$aws/certificates/create-from-csr/*",
                "arn:aws:iot:*:*:topic/$aws/provisioning-templates/*/provision/*" ] },
            { "Effect": "Allow", "Action": "iot:Subscribe",
              "Resource": [
                "arn:aws:iot:*:*:topicfilter/$aws/certificates/create/*",
                "arn:aws:iot:*:*:topicfilter/$aws/certificates/create-from-csr/*",
                "arn:aws:iot:*:*:topicfilter/$aws/provisioning-templates/*/provision/*" ] }
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> Facts {
        Facts {
            client_id: "dev-1".into(),
            thing: Some(ThingFacts {
                name: "thing-1".into(),
                type_name: None,
                attributes: [("line".to_string(), "L2".to_string())].into(),
            }),
            ..Facts::default()
        }
    }

    fn parse(docs: &[Value]) -> Vec<PolicyDocument> {
        docs.iter()
            .map(|d| PolicyDocument::parse(d).unwrap())
            .collect()
    }

    #[test]
    fn wildcards_are_iam_style() {
        assert!(wildcard_match("a*c", "abbbc"));
        assert!(wildcard_match("a*", "a/b/c"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "ac"));
        assert!(!wildcard_match("a+", "ab"));
        assert!(wildcard_match("a+", "a+"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("abc", "abcd"));
    }

    #[test]
    fn default_claim_policy_covers_fleet_topics_only() {
        let docs = parse(&[default_claim_policy()]);
        let v = vars();
        assert!(is_allowed(&docs, Action::Connect, "anything", &v));
        assert!(is_allowed(
            &docs,
            Action::Publish,
            "$aws/certificates/create-from-csr/json",
            &v
        ));
        assert!(is_allowed(
            &docs,
            Action::Subscribe,
            "$aws/provisioning-templates/T/provision/json/accepted",
            &v
        ));
        assert!(!is_allowed(
            &docs,
            Action::Publish,
            "devices/1/telemetry",
            &v
        ));
        assert!(!is_allowed(&docs, Action::Subscribe, "#", &v));
        // iot:Receive is not iot:Subscribe.
        assert!(!is_allowed(&docs, Action::Receive, "devices/x", &v));
    }

    #[test]
    fn the_create_wildcard_does_not_cover_create_from_csr() {
        // docs/aws-fleet-provisioning.md §6: `.../create/*` does not match
        // `.../create-from-csr/...`.
        let docs = parse(&[
            json!({"Statement": [{"Effect": "Allow", "Action": "iot:Publish",
            "Resource": "arn:aws:iot:*:*:topic/$aws/certificates/create/*"}]}),
        ]);
        assert!(!is_allowed(
            &docs,
            Action::Publish,
            "$aws/certificates/create-from-csr/json",
            &vars()
        ));
        assert!(is_allowed(
            &docs,
            Action::Publish,
            "$aws/certificates/create/json",
            &vars()
        ));
    }

    #[test]
    fn deny_wins_and_variables_substitute() {
        let docs = parse(&[json!({"Statement": [
            {"Effect": "Allow", "Action": "iot:*", "Resource": "arn:aws:iot:us-east-1:123456789012:topic/things/${iot:Connection.Thing.ThingName}/*"},
            {"Effect": "Deny", "Action": "iot:Publish", "Resource": "*:topic/things/*/secret"}
        ]})]);
        assert!(is_allowed(
            &docs,
            Action::Publish,
            "things/thing-1/data",
            &vars()
        ));
        assert!(!is_allowed(
            &docs,
            Action::Publish,
            "things/thing-2/data",
            &vars()
        ));
        assert!(!is_allowed(
            &docs,
            Action::Publish,
            "things/thing-1/secret",
            &vars()
        ));
        assert!(!is_allowed(&[], Action::Connect, "x", &vars()));
    }

    #[test]
    fn not_action_and_not_resource_match_everything_else() {
        let docs = parse(&[json!({"Statement": [
            {"Effect": "Allow", "NotAction": "iot:Subscribe", "Resource": "*"},
            {"Effect": "Deny", "Action": "iot:Publish", "NotResource": "*:topic/ok/*"}
        ]})]);
        let v = vars();
        assert!(is_allowed(&docs, Action::Connect, "dev-1", &v));
        assert!(is_allowed(&docs, Action::Publish, "ok/1", &v));
        assert!(!is_allowed(&docs, Action::Publish, "other/1", &v));
        assert!(!is_allowed(&docs, Action::Subscribe, "ok/1", &v));
    }

    #[test]
    fn a_variable_that_does_not_resolve_matches_nothing() {
        let docs = parse(&[json!({"Statement": [
            {"Effect": "Allow", "Action": "iot:Publish",
             "Resource": ["*:topic/a/${iot:Connection.Thing.Attributes[missing]}", "*:topic/b/*"]},
            {"Effect": "Deny", "Action": "iot:Publish",
             "NotResource": "*:topic/${iot:Connection.Thing.Attributes[missing]}"},
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": "*:topicfilter/line/${iot:Connection.Thing.Attributes[line]}/*"}
        ]})]);
        let v = vars();
        // The entry with the unresolved variable matches nothing; the other entry still does,
        // and the Deny whose NotResource does not resolve does not apply.
        assert!(!is_allowed(&docs, Action::Publish, "a/", &v));
        assert!(is_allowed(&docs, Action::Publish, "b/1", &v));
        assert!(is_allowed(&docs, Action::Subscribe, "line/L2/x", &v));
        assert!(!is_allowed(&docs, Action::Subscribe, "line/L3/x", &v));
        let unattached = Facts {
            client_id: "dev-1".into(),
            ..Facts::default()
        };
        assert!(!is_allowed(
            &docs,
            Action::Subscribe,
            "line//x",
            &unattached
        ));
    }

    #[test]
    fn the_aws_connect_example_needs_an_attached_thing() {
        // AWS IoT "Thing policy examples": connect only if the certificate is attached.
        let docs = parse(&[json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["iot:Connect"],
             "Resource": "arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}",
             "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": ["true"]}}}
        ]})]);
        assert!(is_allowed(&docs, Action::Connect, "thing-1", &vars()));
        assert!(!is_allowed(&docs, Action::Connect, "thing-2", &vars()));
        let unattached = Facts {
            client_id: "thing-1".into(),
            ..Facts::default()
        };
        assert!(!is_allowed(&docs, Action::Connect, "thing-1", &unattached));
    }

    #[test]
    fn malformed_documents_are_refused_with_the_path() {
        let err = |v: Value| PolicyDocument::parse(&v).unwrap_err();
        let e = err(json!({"Version": "2012-10-17"}));
        assert_eq!(e.path, "Statement");
        let e = err(json!({"Statement": [{"Effect": "Permit", "Action": "*", "Resource": "*"}]}));
        assert_eq!(e.path, "Statement[0].Effect");
        let e = err(
            json!({"Statement": [{"Effect": "Allow", "Action": "*", "NotAction": "x", "Resource": "*"}]}),
        );
        assert!(e.message.contains("not both"), "{e}");
        let e = err(json!({"Statement": [{"Effect": "Allow", "Action": "*"}]}));
        assert!(
            e.message.contains("neither Resource nor NotResource"),
            "{e}"
        );
        let e = err(json!({"Statement": [{"Effect": "Allow", "Action": "*",
            "Resource": ["*", "*:client/${iot:Thing}"]}]}));
        assert_eq!(e.path, "Statement[0].Resource[1]");
        let e = err(
            json!({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*",
            "Condition": {"StringEquals": {"iot:Connection.Thing.Colour": "red"}}}]}),
        );
        assert_eq!(
            e.path,
            "Statement[0].Condition.StringEquals.iot:Connection.Thing.Colour"
        );
        assert!(
            e.to_string().starts_with("policy document: Statement[0]"),
            "{e}"
        );
    }
}
