//! The `Condition` element of an IoT policy statement, and strings with policy variables.
//!
//! IAM's rules ("IAM JSON policy elements: Condition operators", "Creating a condition with
//! multiple keys or values"), as the emulator applies them:
//! - all operators of a `Condition` block, and all keys under one operator, must hold (AND);
//!   the values listed for a key are alternatives (OR); a negated operator
//!   (`StringNotEquals`, `StringNotLike`, `NotIpAddress`, …) holds when none of them matches;
//! - a key absent from the request: the operator is false, except a negated operator, which
//!   is true ("If the key … is not present in the request context, the values do not match
//!   and the condition is false. If the policy condition requires that the key is not
//!   matched, such as StringNotLike …, and the right key is not present, the condition is
//!   true"); `…IfExists` is true when the key is absent;
//! - `ForAnyValue:` holds when some value of the key matches (false when absent);
//!   `ForAllValues:` when every value does (true when absent);
//! - `Null` is true when the key's presence is the opposite of the value (`"true"`: absent);
//! - policy variables in a value are substituted; a variable that does not resolve makes the
//!   statement not match (AWS IoT: "this variable won't be resolved and will result in an
//!   access denied error").
//!
//! The operators: `StringEquals`, `StringNotEquals`, `StringEqualsIgnoreCase`,
//! `StringNotEqualsIgnoreCase`, `StringLike`, `StringNotLike`, `Bool`, `Null`, `IpAddress`,
//! `NotIpAddress` (for `aws:SourceIp`). IAM has no `StringLikeIgnoreCase`. Numeric, date,
//! ARN and binary operators are refused at load: no AWS IoT key the emulator knows is a
//! number, date, ARN or binary (`aws:CurrentTime`/`aws:EpochTime` are not emulated).

use std::net::IpAddr;

use serde_json::Value;

use super::facts::{Facts, Key};

/// A piece of a string that may hold policy variables.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Text as written (IAM wildcards keep their meaning where the text is a pattern).
    Text(String),
    /// `${*}`, `${?}`, `${$}`: the character itself, never a wildcard.
    Literal(char),
    Var(Key),
}

/// A string with policy variables, parsed when the policy is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template(Vec<Piece>);

/// One character of a substituted pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok {
    Char(char),
    /// `*`: any run of characters, including none and including `/`.
    AnyRun,
    /// `?`: exactly one character.
    AnyOne,
}

impl Template {
    /// Parses `${…}` variables. An unterminated `${`, or a variable that is not an AWS IoT
    /// policy variable the emulator knows, is an error.
    pub(crate) fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(at) = rest.find("${") {
            if at > 0 {
                pieces.push(Piece::Text(rest[..at].to_string()));
            }
            let after = &rest[at + 2..];
            let Some(end) = after.find('}') else {
                return Err(format!(
                    "`{s}` opens a policy variable `${{` that is never closed with `}}`"
                ));
            };
            let name = &after[..end];
            let piece = match name {
                "*" => Piece::Literal('*'),
                "?" => Piece::Literal('?'),
                "$" => Piece::Literal('$'),
                _ => {
                    let key = Key::parse(name.trim())?;
                    if key.is_list() {
                        return Err(format!(
                            "`${{{name}}}`: a `.List` key holds several values; use it as a \
                             condition key with ForAnyValue or ForAllValues, not as a variable"
                        ));
                    }
                    Piece::Var(key)
                }
            };
            pieces.push(piece);
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template(pieces))
    }

    /// The text with variables substituted, or `None` if one does not resolve.
    pub(crate) fn text(&self, facts: &Facts) -> Option<String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Literal(c) => out.push(*c),
                Piece::Var(k) => out.push_str(&facts.resolve(k)?.into_iter().next()?),
            }
        }
        Some(out)
    }

    /// The pattern with variables substituted: `*` and `?` of the text are wildcards,
    /// substituted values and `${*}`/`${?}` are literal. `None` if a variable does not
    /// resolve.
    pub(crate) fn pattern(&self, facts: &Facts) -> Option<Vec<Tok>> {
        let mut out = Vec::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.extend(t.chars().map(|c| match c {
                    '*' => Tok::AnyRun,
                    '?' => Tok::AnyOne,
                    c => Tok::Char(c),
                })),
                Piece::Literal(c) => out.push(Tok::Char(*c)),
                Piece::Var(k) => {
                    let v = facts.resolve(k)?.into_iter().next()?;
                    out.extend(v.chars().map(Tok::Char));
                }
            }
        }
        Some(out)
    }
}

/// IAM wildcard match of a substituted pattern (`*` any run, `?` one character).
pub(crate) fn tokens_match(p: &[Tok], text: &str, ignore_case: bool) -> bool {
    let t: Vec<char> = text.chars().collect();
    let same = |a: char, b: char| {
        if ignore_case {
            a.to_lowercase().eq(b.to_lowercase())
        } else {
            a == b
        }
    };
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(Tok::AnyOne) => {
                pi += 1;
                ti += 1;
            }
            Some(Tok::Char(c)) if same(*c, t[ti]) => {
                pi += 1;
                ti += 1;
            }
            Some(Tok::AnyRun) => {
                star = Some((pi, ti));
                pi += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    while p.get(pi) == Some(&Tok::AnyRun) {
        pi += 1;
    }
    pi == p.len()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrOp {
    Equals,
    EqualsIgnoreCase,
    Like,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Values {
    Strings(StrOp, Vec<Template>),
    Bool(Vec<bool>),
    /// `Null`: `true` means "the key is absent".
    Null(Vec<bool>),
    Ip(Vec<(IpAddr, u8)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quantifier {
    /// No set operator: the key's value (a single-valued key).
    Single,
    AnyValue,
    AllValues,
}

/// One `"<Operator>": { "<key>": <values> }` entry of a `Condition` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Condition {
    quantifier: Quantifier,
    negated: bool,
    if_exists: bool,
    key: Key,
    values: Values,
}

/// Parses a statement's `Condition` object. `path` names where it is, for errors.
pub(crate) fn parse_block(v: &Value, path: &str) -> Result<Vec<Condition>, (String, String)> {
    let Value::Object(ops) = v else {
        return Err((
            path.to_string(),
            "Condition must be an object of operators".into(),
        ));
    };
    let mut out = Vec::new();
    for (op, keys) in ops {
        let op_path = format!("{path}.{op}");
        let Value::Object(keys) = keys else {
            return Err((op_path, "an operator maps condition keys to values".into()));
        };
        for (key, values) in keys {
            let key_path = format!("{op_path}.{key}");
            out.push(parse_one(op, key, values).map_err(|m| (key_path, m))?);
        }
    }
    Ok(out)
}

fn parse_one(op: &str, key_name: &str, values: &Value) -> Result<Condition, String> {
    let (quantifier, base) = if let Some(b) = op.strip_prefix("ForAnyValue:") {
        (Quantifier::AnyValue, b)
    } else if let Some(b) = op.strip_prefix("ForAllValues:") {
        (Quantifier::AllValues, b)
    } else {
        (Quantifier::Single, op)
    };
    let (if_exists, base) = match base.strip_suffix("IfExists") {
        Some(b) => (true, b),
        None => (false, base),
    };
    let key = Key::parse(key_name)?;
    if key.is_list() && quantifier == Quantifier::Single {
        return Err(format!(
            "`{key_name}` holds several values: use it with ForAnyValue:{base} or \
             ForAllValues:{base}"
        ));
    }
    let raw = value_list(values)?;
    let strings = |op: StrOp| -> Result<Values, String> {
        let t = raw
            .iter()
            .map(|s| Template::parse(s))
            .collect::<Result<_, _>>()?;
        Ok(Values::Strings(op, t))
    };
    let bools = || -> Result<Vec<bool>, String> {
        raw.iter()
            .map(|s| match s.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(format!("`{op}` takes \"true\" or \"false\", not \"{s}\"")),
            })
            .collect()
    };
    let (negated, values) = match base {
        "StringEquals" => (false, strings(StrOp::Equals)?),
        "StringNotEquals" => (true, strings(StrOp::Equals)?),
        "StringEqualsIgnoreCase" => (false, strings(StrOp::EqualsIgnoreCase)?),
        "StringNotEqualsIgnoreCase" => (true, strings(StrOp::EqualsIgnoreCase)?),
        "StringLike" => (false, strings(StrOp::Like)?),
        "StringNotLike" => (true, strings(StrOp::Like)?),
        "Bool" => (false, Values::Bool(bools()?)),
        "Null" if quantifier == Quantifier::Single && !if_exists => (false, Values::Null(bools()?)),
        "Null" => {
            return Err(format!(
                "`{op}`: Null takes neither ForAnyValue/ForAllValues nor IfExists"
            ));
        }
        "IpAddress" | "NotIpAddress" => {
            let nets = raw
                .iter()
                .map(|s| parse_cidr(s))
                .collect::<Result<_, _>>()?;
            (base == "NotIpAddress", Values::Ip(nets))
        }
        b if b.starts_with("Numeric")
            || b.starts_with("Date")
            || b.starts_with("Arn")
            || b == "BinaryEquals" =>
        {
            return Err(format!(
                "the emulator does not evaluate `{op}`: none of the AWS IoT keys it knows is \
                 a number, date, ARN or binary value (use a String or Bool operator)"
            ));
        }
        _ => {
            return Err(format!(
                "`{op}` is not an IAM condition operator (StringEquals, StringNotEquals, \
                 StringEqualsIgnoreCase, StringNotEqualsIgnoreCase, StringLike, StringNotLike, \
                 Bool, Null, IpAddress, NotIpAddress, with ForAnyValue:/ForAllValues: or \
                 IfExists)"
            ));
        }
    };
    Ok(Condition {
        quantifier,
        negated,
        if_exists,
        key,
        values,
    })
}

/// A condition's values: a string, a boolean, a number, or a list of them.
fn value_list(v: &Value) -> Result<Vec<String>, String> {
    let one = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err("condition values are strings (or a list of them)".to_string()),
    };
    match v {
        Value::Array(a) if a.is_empty() => Err("the list of condition values is empty".into()),
        Value::Array(a) => a.iter().map(one).collect(),
        v => Ok(vec![one(v)?]),
    }
}

fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("`{s}` is not an IP address or CIDR block (203.0.113.0/24, ::1/128)");
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad)?,
        None => max,
    };
    Ok((ip, len))
}

fn in_network(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    let (a, b, bits) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let shift = bits - u32::from(len);
    if shift >= 128 {
        return true;
    }
    (a >> shift) == (b >> shift)
}

impl Condition {
    /// Whether the condition holds; `None` if a policy variable in its values does not
    /// resolve (the statement does not match).
    pub(crate) fn holds(&self, facts: &Facts) -> Option<bool> {
        let present = facts.resolve(&self.key).filter(|v| !v.is_empty());
        if let Values::Null(wanted) = &self.values {
            return Some(wanted.iter().any(|absent| *absent == present.is_none()));
        }
        // Substitute variables in the values first: an unresolved one fails the statement
        // even if the key is absent.
        let test: Box<dyn Fn(&str) -> bool + '_> = match &self.values {
            Values::Strings(op, templates) => {
                let op = *op;
                match op {
                    StrOp::Like => {
                        let pats = templates
                            .iter()
                            .map(|t| t.pattern(facts))
                            .collect::<Option<Vec<_>>>()?;
                        Box::new(move |v| pats.iter().any(|p| tokens_match(p, v, false)))
                    }
                    StrOp::Equals | StrOp::EqualsIgnoreCase => {
                        let texts = templates
                            .iter()
                            .map(|t| t.text(facts))
                            .collect::<Option<Vec<_>>>()?;
                        Box::new(move |v| {
                            texts.iter().any(|t| {
                                if op == StrOp::EqualsIgnoreCase {
                                    t.to_lowercase() == v.to_lowercase()
                                } else {
                                    t == v
                                }
                            })
                        })
                    }
                }
            }
            Values::Bool(b) => Box::new(move |v| {
                b.iter()
                    .any(|b| v.eq_ignore_ascii_case(if *b { "true" } else { "false" }))
            }),
            Values::Ip(nets) => Box::new(move |v| {
                v.parse::<IpAddr>()
                    .is_ok_and(|ip| nets.iter().any(|n| in_network(ip, *n)))
            }),
            Values::Null(_) => unreachable!("handled above"),
        };
        let Some(values) = present else {
            return Some(match self.quantifier {
                _ if self.if_exists => true,
                Quantifier::AllValues => true,
                Quantifier::AnyValue => false,
                Quantifier::Single => self.negated,
            });
        };
        let one = |v: &String| test(v) != self.negated;
        Some(match self.quantifier {
            Quantifier::AllValues => values.iter().all(one),
            Quantifier::AnyValue | Quantifier::Single => values.iter().any(one),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::facts::{CertFacts, ThingFacts};
    use serde_json::json;

    fn facts(attached: bool) -> Facts {
        Facts {
            client_id: "dev-1".into(),
            source_ip: Some("127.0.0.1".parse().unwrap()),
            thing: attached.then(|| ThingFacts {
                name: "dev-1".into(),
                type_name: Some("Board".into()),
                attributes: [("line".to_string(), "L2".to_string())].into(),
            }),
            certificate: CertFacts::new(&[("2.5.4.6", "US"), ("2.5.4.6", "CA")], &[], None),
        }
    }

    fn holds(block: Value, f: &Facts) -> Option<bool> {
        let conds = parse_block(&block, "Condition").unwrap();
        conds
            .iter()
            .map(|c| c.holds(f))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.into_iter().all(|b| b))
    }

    #[test]
    fn string_operators_and_absent_keys() {
        let on = facts(true);
        let off = facts(false);
        let eq = json!({"StringEquals": {"iot:Connection.Thing.Attributes[line]": "L2"}});
        assert_eq!(holds(eq.clone(), &on), Some(true));
        assert_eq!(holds(eq, &off), Some(false));
        // Negated: true when no value matches, and when the key is absent.
        let ne =
            json!({"StringNotEquals": {"iot:Connection.Thing.Attributes[line]": ["L1", "L3"]}});
        assert_eq!(holds(ne.clone(), &on), Some(true));
        assert_eq!(holds(ne, &off), Some(true));
        let ne =
            json!({"StringNotEquals": {"iot:Connection.Thing.Attributes[line]": ["L1", "L2"]}});
        assert_eq!(holds(ne, &on), Some(false));
        let ic = json!({"StringEqualsIgnoreCase": {"iot:Connection.Thing.ThingTypeName": "BOARD"}});
        assert_eq!(holds(ic, &on), Some(true));
        let eq_case = json!({"StringEquals": {"iot:Connection.Thing.ThingTypeName": "BOARD"}});
        assert_eq!(holds(eq_case, &on), Some(false));
        let like = json!({"StringLike": {"iot:ClientId": "dev-?"}});
        assert_eq!(holds(like, &on), Some(true));
        let not_like = json!({"StringNotLike": {"iot:ClientId": ["x*", "dev-*"]}});
        assert_eq!(holds(not_like, &on), Some(false));
        let if_exists =
            json!({"StringEqualsIfExists": {"iot:Connection.Thing.ThingTypeName": "X"}});
        assert_eq!(holds(if_exists.clone(), &off), Some(true));
        assert_eq!(holds(if_exists, &on), Some(false));
    }

    #[test]
    fn variables_in_values_substitute_or_fail_the_statement() {
        let on = facts(true);
        let same = json!({"StringEquals": {"iot:ClientId": "${iot:Connection.Thing.ThingName}"}});
        assert_eq!(holds(same.clone(), &on), Some(true));
        assert_eq!(holds(same, &facts(false)), None);
        // A substituted value is literal even under StringLike; `${*}` is a literal star.
        let f = Facts {
            client_id: "a*".into(),
            ..facts(true)
        };
        let lit = json!({"StringLike": {"iot:ClientId": "a${*}"}});
        assert_eq!(holds(lit.clone(), &f), Some(true));
        assert_eq!(holds(lit, &on), Some(false));
    }

    #[test]
    fn bool_null_ip_and_set_operators() {
        let on = facts(true);
        let off = facts(false);
        let att = json!({"Bool": {"iot:Connection.Thing.IsAttached": ["true"]}});
        assert_eq!(holds(att.clone(), &on), Some(true));
        assert_eq!(holds(att, &off), Some(false));
        let att = json!({"Bool": {"iot:Connection.Thing.IsAttached": false}});
        assert_eq!(holds(att, &off), Some(true));
        let null = json!({"Null": {"iot:Connection.Thing.ThingTypeName": "true"}});
        assert_eq!(holds(null.clone(), &off), Some(true));
        assert_eq!(holds(null, &on), Some(false));
        let ip = json!({"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "127.0.0.0/8"]}});
        assert_eq!(holds(ip, &on), Some(true));
        let not_ip = json!({"NotIpAddress": {"aws:SourceIp": "127.0.0.1"}});
        assert_eq!(holds(not_ip, &on), Some(false));
        let v6 = json!({"IpAddress": {"aws:SourceIp": "::1/128"}});
        assert_eq!(holds(v6, &on), Some(false));
        let any =
            json!({"ForAnyValue:StringEquals": {"iot:Certificate.Subject.Country.List": ["CA"]}});
        assert_eq!(holds(any, &on), Some(true));
        let all =
            json!({"ForAllValues:StringEquals": {"iot:Certificate.Subject.Country.List": ["CA"]}});
        assert_eq!(holds(all, &on), Some(false));
        let all = json!({"ForAllValues:StringEquals": {"iot:Certificate.Subject.Country.List": ["CA", "US"]}});
        assert_eq!(holds(all, &on), Some(true));
        // Absent key: ForAllValues holds, ForAnyValue does not.
        let all =
            json!({"ForAllValues:StringEquals": {"iot:Certificate.Issuer.Country.List": ["CA"]}});
        assert_eq!(holds(all, &on), Some(true));
        let any =
            json!({"ForAnyValue:StringEquals": {"iot:Certificate.Issuer.Country.List": ["CA"]}});
        assert_eq!(holds(any, &on), Some(false));
    }

    #[test]
    fn bad_conditions_are_refused_with_the_reason() {
        let err = |v: Value| parse_block(&v, "Condition").unwrap_err();
        let (path, msg) = err(json!({"StringLikeIgnoreCase": {"iot:ClientId": "a"}}));
        assert_eq!(path, "Condition.StringLikeIgnoreCase.iot:ClientId");
        assert!(msg.contains("not an IAM condition operator"), "{msg}");
        let (_, msg) = err(json!({"NumericLessThan": {"iot:ClientId": "1"}}));
        assert!(msg.contains("does not evaluate"), "{msg}");
        let (_, msg) = err(json!({"StringEquals": {"iot:Nope": "a"}}));
        assert!(msg.contains("not an AWS IoT condition key"), "{msg}");
        let (_, msg) = err(json!({"Bool": {"iot:Connection.Thing.IsAttached": "yes"}}));
        assert!(msg.contains("\"true\" or \"false\""), "{msg}");
        let (_, msg) = err(json!({"IpAddress": {"aws:SourceIp": "10.0.0.0/33"}}));
        assert!(msg.contains("CIDR"), "{msg}");
        let (_, msg) = err(json!({"StringEquals": {"iot:Certificate.Subject.Country.List": "US"}}));
        assert!(msg.contains("ForAnyValue"), "{msg}");
        let (_, msg) = err(json!({"StringEquals": {"iot:ClientId": "${iot:ClientId"}}));
        assert!(msg.contains("never closed"), "{msg}");
        let (_, msg) = err(json!({"StringEquals": {"iot:ClientId": []}}));
        assert!(msg.contains("empty"), "{msg}");
        let (_, msg) = err(json!({"ForAnyValue:Null": {"iot:ClientId": "true"}}));
        assert!(msg.contains("Null takes"), "{msg}");
    }
}
