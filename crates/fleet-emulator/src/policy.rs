//! AWS IoT policy evaluation for the emulator's broker (docs/aws-fleet-provisioning.md §6).
//!
//! A request is an action (`iot:Connect`, `iot:Publish`, `iot:Subscribe`, `iot:Receive`) on a
//! resource ARN (`client/<id>`, `topic/<name>`, `topicfilter/<filter>`). It is allowed when some
//! `Allow` statement of an attached policy matches and no `Deny` statement does. Actions and
//! resources match IAM-style: `*` is any run of characters (including `/`), `?` is one
//! character, and MQTT's `+` and `#` are literal. The policy variables `${iot:ClientId}` and
//! `${iot:Connection.Thing.ThingName}` are substituted before matching. `Condition`,
//! `NotAction` and `NotResource` are not evaluated: a statement that uses them never matches
//! (so a `Deny` with a condition does not deny, and an `Allow` with one does not allow).

use serde_json::Value;

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

/// What policy variables resolve to for one connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Variables<'a> {
    pub client_id: &'a str,
    pub thing_name: Option<&'a str>,
}

/// Evaluates `action` on `name` (client id, topic or topic filter) against the documents.
pub(crate) fn is_allowed(
    documents: &[Value],
    action: Action,
    name: &str,
    vars: &Variables<'_>,
) -> bool {
    let arn = action.resource_arn(name);
    let mut allowed = false;
    for doc in documents {
        for st in statements(doc) {
            if st.get("Condition").is_some()
                || st.get("NotAction").is_some()
                || st.get("NotResource").is_some()
            {
                continue;
            }
            let actions_match = strings(st.get("Action")).any(|a| {
                wildcard_match(&a.to_ascii_lowercase(), &action.name().to_ascii_lowercase())
            });
            if !actions_match {
                continue;
            }
            let resource_match =
                strings(st.get("Resource")).any(|r| wildcard_match(&substitute(r, vars), &arn));
            if !resource_match {
                continue;
            }
            match st.get("Effect").and_then(Value::as_str) {
                Some("Deny") => return false,
                Some("Allow") => allowed = true,
                _ => {}
            }
        }
    }
    allowed
}

fn statements(doc: &Value) -> impl Iterator<Item = &Value> {
    match doc.get("Statement") {
        Some(Value::Array(a)) => a.iter().collect::<Vec<_>>().into_iter(),
        Some(v @ Value::Object(_)) => vec![v].into_iter(),
        _ => Vec::new().into_iter(),
    }
}

fn strings(v: Option<&Value>) -> impl Iterator<Item = &str> {
    let list: Vec<&str> = match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    list.into_iter()
}

fn substitute(pattern: &str, vars: &Variables<'_>) -> String {
    if !pattern.contains("${") {
        return pattern.to_string();
    }
    let mut out = pattern.replace("${iot:ClientId}", vars.client_id);
    if let Some(thing) = vars.thing_name {
        out = out.replace("${iot:Connection.Thing.ThingName}", thing);
    }
    out
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

    fn vars() -> Variables<'static> {
        Variables {
            client_id: "dev-1",
            thing_name: Some("thing-1"),
        }
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
        let docs = [default_claim_policy()];
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
        let docs = [
            json!({"Statement": [{"Effect": "Allow", "Action": "iot:Publish",
            "Resource": "arn:aws:iot:*:*:topic/$aws/certificates/create/*"}]}),
        ];
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
        let docs = [json!({"Statement": [
            {"Effect": "Allow", "Action": "iot:*", "Resource": "arn:aws:iot:us-east-1:123456789012:topic/things/${iot:Connection.Thing.ThingName}/*"},
            {"Effect": "Deny", "Action": "iot:Publish", "Resource": "*:topic/things/*/secret"}
        ]})];
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
}
