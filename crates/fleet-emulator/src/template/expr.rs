//! Template expressions: literal values and the intrinsic functions `Ref`, `Fn::Join`,
//! `Fn::Select`, `Fn::Split`, `Fn::FindInMap` and `Fn::Sub`, compiled once from JSON into a
//! typed tree (string-valued or list-valued) and evaluated per request.
//!
//! Compilation checks each function's shape and result type, resolves every `Ref` target
//! (parameter, pseudo-parameter, or a name provisioning can never resolve) and pre-splits
//! `Fn::Sub` strings, so evaluation only looks values up and concatenates. Evaluation returns
//! `Cow`s that borrow from the template or the request wherever no new string is needed.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::error::{EvalErrorKind, TemplateError};
use super::{ParameterDecl, SubjectFields};

/// `Mappings`: map name → top-level key → second-level key → value.
pub(crate) type Mappings = BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>;

/// The functions this engine evaluates, for error messages.
pub(crate) const SUPPORTED_FUNCTIONS: &str =
    "Ref, Fn::Join, Fn::Select, Fn::Split, Fn::FindInMap, Fn::Sub";

/// The certificate-subject pseudo-parameters (docs/aws-fleet-provisioning.md §3.5), with the field
/// each reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubjectField {
    CommonName,
    Country,
    Organization,
    OrganizationalUnit,
    DistinguishedNameQualifier,
    StateName,
    SerialNumber,
}

pub(crate) const CERTIFICATE_ID_PSEUDO: &str = "AWS::IoT::Certificate::Id";

impl SubjectField {
    pub(crate) fn from_pseudo(name: &str) -> Option<SubjectField> {
        Some(match name.strip_prefix("AWS::IoT::Certificate::")? {
            "CommonName" => SubjectField::CommonName,
            "Country" => SubjectField::Country,
            "Organization" => SubjectField::Organization,
            "OrganizationalUnit" => SubjectField::OrganizationalUnit,
            "DistinguishedNameQualifier" => SubjectField::DistinguishedNameQualifier,
            "StateName" => SubjectField::StateName,
            "SerialNumber" => SubjectField::SerialNumber,
            _ => return None,
        })
    }

    fn pseudo_name(self) -> &'static str {
        match self {
            SubjectField::CommonName => "AWS::IoT::Certificate::CommonName",
            SubjectField::Country => "AWS::IoT::Certificate::Country",
            SubjectField::Organization => "AWS::IoT::Certificate::Organization",
            SubjectField::OrganizationalUnit => "AWS::IoT::Certificate::OrganizationalUnit",
            SubjectField::DistinguishedNameQualifier => {
                "AWS::IoT::Certificate::DistinguishedNameQualifier"
            }
            SubjectField::StateName => "AWS::IoT::Certificate::StateName",
            SubjectField::SerialNumber => "AWS::IoT::Certificate::SerialNumber",
        }
    }

    fn read(self, s: &SubjectFields) -> Option<&str> {
        match self {
            SubjectField::CommonName => s.common_name.as_deref(),
            SubjectField::Country => s.country.as_deref(),
            SubjectField::Organization => s.organization.as_deref(),
            SubjectField::OrganizationalUnit => s.organizational_unit.as_deref(),
            SubjectField::DistinguishedNameQualifier => s.dn_qualifier.as_deref(),
            SubjectField::StateName => s.state_name.as_deref(),
            SubjectField::SerialNumber => s.serial_number.as_deref(),
        }
    }
}

/// True for pseudo-parameters this engine resolves.
pub(crate) fn is_supported_pseudo(name: &str) -> bool {
    name == CERTIFICATE_ID_PSEUDO || SubjectField::from_pseudo(name).is_some()
}

/// What a `Ref` name points at, decided when the template is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RefTarget {
    /// `AWS::IoT::Certificate::Id`.
    CertificateId,
    /// A certificate-subject pseudo-parameter.
    Subject(SubjectField),
    /// An `AWS::` name provisioning never resolves (`AWS::Region`, `AWS::AccountId`, ...).
    Never(Box<str>),
    /// A request parameter: declared (with its `Default`, if any) or, in lenient mode,
    /// undeclared (no default).
    Parameter {
        name: Box<str>,
        default: Option<Box<str>>,
    },
}

/// A string-valued expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StrExpr {
    Lit(Box<str>),
    Ref(RefTarget),
    Join {
        delimiter: Box<StrExpr>,
        items: ListExpr,
    },
    Select {
        index: IndexExpr,
        list: ListExpr,
    },
    FindInMap {
        map: Box<StrExpr>,
        key: Box<StrExpr>,
        value_key: Box<StrExpr>,
    },
    Sub {
        parts: Vec<SubPart>,
        variables: Vec<StrExpr>,
    },
}

/// A list-valued expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListExpr {
    /// A literal JSON array. `None` is a `null` element, allowed only in `Fn::Select` lists
    /// (AWS: selecting it makes provisioning fail).
    Lit(Vec<Option<StrExpr>>),
    Split {
        delimiter: Box<StrExpr>,
        source: Box<StrExpr>,
    },
}

/// The index of `Fn::Select`: a literal integer, or a string evaluated per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IndexExpr {
    Lit(usize),
    Dyn(Box<StrExpr>),
}

/// One piece of a pre-split `Fn::Sub` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubPart {
    Lit(Box<str>),
    /// `${Name}` naming an entry of the `Fn::Sub` variable map (index into `variables`).
    Var(usize),
    /// `${Name}` resolved like `Ref`.
    Ref(RefTarget),
}

/// What compiling expressions needs to know about the rest of the template.
pub(crate) struct Scope<'t> {
    pub parameters: &'t [ParameterDecl],
    pub mappings: &'t Mappings,
    pub strict: bool,
}

/// The intrinsic function an object spells, if it is one: exactly one key, `Ref` or `Fn::*`.
pub(crate) fn intrinsic(map: &Map<String, Value>) -> Option<(&str, &Value)> {
    if map.len() != 1 {
        return None;
    }
    let (k, v) = map.iter().next()?;
    (k == "Ref" || k.starts_with("Fn::")).then_some((k.as_str(), v))
}

/// The text a scalar JSON value stands for in a string position: strings as they are,
/// numbers and booleans as their JSON text. `None` for null, arrays and objects.
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(crate) fn join_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index_path(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Scope<'_> {
    /// Compiles a value in a string position.
    pub(crate) fn string_expr(&self, v: &Value, path: &str) -> Result<StrExpr, TemplateError> {
        match v {
            Value::Object(map) => match intrinsic(map) {
                Some((name, args)) => self.string_function(name, args, path),
                None => Err(TemplateError::invalid(
                    path,
                    "expected a string or an intrinsic function that returns one, \
                     found an object",
                )),
            },
            Value::Array(_) => Err(TemplateError::invalid(
                path,
                "expected a string or an intrinsic function that returns one, found a list",
            )),
            Value::Null => Err(TemplateError::invalid(
                path,
                "expected a string or an intrinsic function that returns one, found null",
            )),
            scalar => Ok(StrExpr::Lit(
                scalar_text(scalar).unwrap_or_default().into_boxed_str(),
            )),
        }
    }

    /// Compiles a value in a list position: a JSON array of strings, or `Fn::Split`.
    pub(crate) fn list_expr(
        &self,
        v: &Value,
        path: &str,
        allow_null: bool,
    ) -> Result<ListExpr, TemplateError> {
        match v {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    if item.is_null() && allow_null {
                        out.push(None);
                    } else {
                        out.push(Some(self.string_expr(item, &index_path(path, i))?));
                    }
                }
                Ok(ListExpr::Lit(out))
            }
            Value::Object(map) => match intrinsic(map) {
                Some(("Fn::Split", args)) => self.split(args, path),
                Some((name, _)) if is_string_function(name) => Err(TemplateError::invalid(
                    path,
                    format!("{name} returns a string, but a list is needed here"),
                )),
                Some((name, _)) => Err(unsupported_function(name, path)),
                None => Err(TemplateError::invalid(
                    path,
                    "expected a list or Fn::Split, found an object",
                )),
            },
            other => Err(TemplateError::invalid(
                path,
                format!("expected a list or Fn::Split, found {}", kind_of(other)),
            )),
        }
    }

    fn string_function(
        &self,
        name: &str,
        args: &Value,
        path: &str,
    ) -> Result<StrExpr, TemplateError> {
        match name {
            "Ref" => self.reference(args, path),
            "Fn::Join" => self.join(args, path),
            "Fn::Select" => self.select(args, path),
            "Fn::FindInMap" => self.find_in_map(args, path),
            "Fn::Sub" => self.sub(args, path),
            "Fn::Split" => Err(TemplateError::invalid(
                path,
                "Fn::Split returns a list, but a string is needed here \
                 (select an element with Fn::Select or join it with Fn::Join)",
            )),
            other => Err(unsupported_function(other, path)),
        }
    }

    fn reference(&self, args: &Value, path: &str) -> Result<StrExpr, TemplateError> {
        match args {
            Value::String(name) if !name.is_empty() => Ok(StrExpr::Ref(self.resolve(name, path)?)),
            _ => Err(TemplateError::invalid(
                path,
                "Ref expects the name of a parameter or pseudo-parameter (a non-empty string)",
            )),
        }
    }

    /// Decides what a `Ref` name points at. Pseudo-parameters win over request parameters of
    /// the same name, so a device cannot choose its own certificate id.
    pub(crate) fn resolve(&self, name: &str, path: &str) -> Result<RefTarget, TemplateError> {
        if name == CERTIFICATE_ID_PSEUDO {
            return Ok(RefTarget::CertificateId);
        }
        if let Some(field) = SubjectField::from_pseudo(name) {
            return Ok(RefTarget::Subject(field));
        }
        if name.starts_with("AWS::") {
            if self.strict {
                return Err(TemplateError::invalid(
                    path,
                    format!(
                        "{name} is not a pseudo-parameter fleet provisioning resolves \
                         (AWS rejects the request with \"Cannot resolve reference value: \
                         {name}\"); only AWS::IoT::Certificate::Id and the certificate-subject \
                         pseudo-parameters are available"
                    ),
                ));
            }
            return Ok(RefTarget::Never(name.into()));
        }
        match self.parameters.iter().find(|p| p.name == name) {
            Some(p) => Ok(RefTarget::Parameter {
                name: name.into(),
                default: p.default.as_deref().map(Into::into),
            }),
            None if self.strict => Err(TemplateError::invalid(
                path,
                format!(
                    "Ref to undeclared parameter {name}; declare it in Parameters \
                     (strict mode rejects undeclared names)"
                ),
            )),
            None => Ok(RefTarget::Parameter {
                name: name.into(),
                default: None,
            }),
        }
    }

    fn join(&self, args: &Value, path: &str) -> Result<StrExpr, TemplateError> {
        const SHAPE: &str = "Fn::Join expects [delimiter, [values]]";
        let [delimiter, items] = pair(args, path, SHAPE)?;
        let fpath = join_path(path, "Fn::Join");
        Ok(StrExpr::Join {
            delimiter: Box::new(self.string_expr(delimiter, &index_path(&fpath, 0))?),
            items: self.list_expr(items, &index_path(&fpath, 1), false)?,
        })
    }

    fn select(&self, args: &Value, path: &str) -> Result<StrExpr, TemplateError> {
        const SHAPE: &str = "Fn::Select expects [index, [values]]";
        let [index, list] = pair(args, path, SHAPE)?;
        let fpath = join_path(path, "Fn::Select");
        let ipath = index_path(&fpath, 0);
        let index = match index {
            Value::Number(n) => match n.as_u64().and_then(|i| usize::try_from(i).ok()) {
                Some(i) => IndexExpr::Lit(i),
                None => {
                    return Err(TemplateError::invalid(
                        &ipath,
                        format!("Fn::Select index must be a non-negative integer, found {n}"),
                    ));
                }
            },
            Value::String(s) => match s.parse::<usize>() {
                Ok(i) => IndexExpr::Lit(i),
                Err(_) => {
                    return Err(TemplateError::invalid(
                        &ipath,
                        format!("Fn::Select index must be a non-negative integer, found {s:?}"),
                    ));
                }
            },
            Value::Object(_) => IndexExpr::Dyn(Box::new(self.string_expr(index, &ipath)?)),
            other => {
                return Err(TemplateError::invalid(
                    &ipath,
                    format!(
                        "Fn::Select index must be a non-negative integer or an intrinsic \
                         function that returns one, found {}",
                        kind_of(other)
                    ),
                ));
            }
        };
        let list = self.list_expr(list, &index_path(&fpath, 1), true)?;
        if self.strict
            && let (IndexExpr::Lit(i), ListExpr::Lit(items)) = (&index, &list)
        {
            match items.get(*i) {
                None => {
                    return Err(TemplateError::invalid(
                        path,
                        format!(
                            "Fn::Select index {i} is out of bounds for a list of {} values",
                            items.len()
                        ),
                    ));
                }
                Some(None) => {
                    return Err(TemplateError::invalid(
                        path,
                        format!("Fn::Select index {i} selects a null value"),
                    ));
                }
                Some(Some(_)) => {}
            }
        }
        Ok(StrExpr::Select { index, list })
    }

    fn split(&self, args: &Value, path: &str) -> Result<ListExpr, TemplateError> {
        const SHAPE: &str = "Fn::Split expects [delimiter, string]";
        let [delimiter, source] = pair(args, path, SHAPE)?;
        let fpath = join_path(path, "Fn::Split");
        let delimiter = self.string_expr(delimiter, &index_path(&fpath, 0))?;
        if matches!(&delimiter, StrExpr::Lit(d) if d.is_empty()) {
            return Err(TemplateError::invalid(
                &index_path(&fpath, 0),
                "Fn::Split delimiter is empty",
            ));
        }
        Ok(ListExpr::Split {
            delimiter: Box::new(delimiter),
            source: Box::new(self.string_expr(source, &index_path(&fpath, 1))?),
        })
    }

    fn find_in_map(&self, args: &Value, path: &str) -> Result<StrExpr, TemplateError> {
        const SHAPE: &str = "Fn::FindInMap expects [MapName, TopLevelKey, SecondLevelKey]";
        let items = match args {
            Value::Array(items) if items.len() == 3 => items,
            _ => return Err(TemplateError::invalid(path, SHAPE)),
        };
        let fpath = join_path(path, "Fn::FindInMap");
        let map = self.string_expr(&items[0], &index_path(&fpath, 0))?;
        let key = self.string_expr(&items[1], &index_path(&fpath, 1))?;
        let value_key = self.string_expr(&items[2], &index_path(&fpath, 2))?;
        if self.strict {
            self.check_static_lookup(&map, &key, &value_key, path)?;
        }
        Ok(StrExpr::FindInMap {
            map: Box::new(map),
            key: Box::new(key),
            value_key: Box::new(value_key),
        })
    }

    /// Strict mode: a lookup whose literal parts already miss can never succeed.
    fn check_static_lookup(
        &self,
        map: &StrExpr,
        key: &StrExpr,
        value_key: &StrExpr,
        path: &str,
    ) -> Result<(), TemplateError> {
        let StrExpr::Lit(map) = map else {
            return Ok(());
        };
        let Some(table) = self.mappings.get(&**map) else {
            return Err(TemplateError::invalid(
                path,
                format!("Fn::FindInMap names mapping {map:?}, which Mappings does not declare"),
            ));
        };
        let StrExpr::Lit(key) = key else {
            return Ok(());
        };
        let Some(row) = table.get(&**key) else {
            return Err(TemplateError::invalid(
                path,
                format!("Fn::FindInMap: mapping {map:?} has no key {key:?}"),
            ));
        };
        if let StrExpr::Lit(value_key) = value_key
            && !row.contains_key(&**value_key)
        {
            return Err(TemplateError::invalid(
                path,
                format!("Fn::FindInMap: mapping {map:?} has no key {value_key:?} under {key:?}"),
            ));
        }
        Ok(())
    }

    fn sub(&self, args: &Value, path: &str) -> Result<StrExpr, TemplateError> {
        const SHAPE: &str = "Fn::Sub expects a string or [string, {variables}]";
        let fpath = join_path(path, "Fn::Sub");
        let (text, vars) = match args {
            Value::String(s) => (s.as_str(), None),
            Value::Array(items) if items.len() == 2 => match (&items[0], &items[1]) {
                (Value::String(s), Value::Object(vars)) => (s.as_str(), Some(vars)),
                _ => return Err(TemplateError::invalid(path, SHAPE)),
            },
            _ => return Err(TemplateError::invalid(path, SHAPE)),
        };
        let mut names = Vec::new();
        let mut variables = Vec::new();
        if let Some(vars) = vars {
            let vpath = index_path(&fpath, 1);
            for (name, value) in vars {
                variables.push(self.string_expr(value, &join_path(&vpath, name))?);
                names.push(name.as_str());
            }
        }
        let spath = if vars.is_some() {
            index_path(&fpath, 0)
        } else {
            fpath
        };
        let mut parts = Vec::new();
        for piece in split_sub(text).map_err(|m| TemplateError::invalid(&spath, m))? {
            parts.push(match piece {
                SubPiece::Text(t) => SubPart::Lit(t.into_boxed_str()),
                SubPiece::Name(n) => match names.iter().position(|v| *v == n) {
                    Some(i) => SubPart::Var(i),
                    None => SubPart::Ref(self.resolve(n, &spath)?),
                },
            });
        }
        if let [SubPart::Lit(t)] = parts.as_slice() {
            return Ok(StrExpr::Lit(t.clone()));
        }
        Ok(StrExpr::Sub { parts, variables })
    }
}

fn is_string_function(name: &str) -> bool {
    matches!(
        name,
        "Ref" | "Fn::Join" | "Fn::Select" | "Fn::FindInMap" | "Fn::Sub"
    )
}

fn unsupported_function(name: &str, path: &str) -> TemplateError {
    TemplateError::invalid(
        path,
        format!(
            "{name} is not an intrinsic function of provisioning templates; \
             supported: {SUPPORTED_FUNCTIONS}"
        ),
    )
}

fn pair<'v>(args: &'v Value, path: &str, shape: &str) -> Result<[&'v Value; 2], TemplateError> {
    match args {
        Value::Array(items) if items.len() == 2 => Ok([&items[0], &items[1]]),
        _ => Err(TemplateError::invalid(path, shape)),
    }
}

enum SubPiece<'s> {
    Text(String),
    Name(&'s str),
}

/// Splits an `Fn::Sub` string into literal text and `${Name}` references. `${!Literal}`
/// stands for the text `${Literal}`, as in CloudFormation.
fn split_sub(text: &str) -> Result<Vec<SubPiece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        literal.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        if let Some(escaped) = after.strip_prefix('!') {
            literal.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(end) = after.find('}') else {
            let at = text.len() - rest.len() + start;
            return Err(format!(
                "Fn::Sub: \"${{\" at character {} is not closed by \"}}\" \
                 (write \"${{!\" for a literal \"${{\")",
                text[..at].chars().count()
            ));
        };
        let name = &after[..end];
        if name.is_empty() {
            return Err("Fn::Sub: empty variable name \"${}\"".to_string());
        }
        if name.contains('.') {
            return Err(format!(
                "Fn::Sub: ${{{name}}} is an attribute reference (Fn::GetAtt), which \
                 provisioning templates do not support; write ${{!{name}}} for literal text"
            ));
        }
        if !literal.is_empty() {
            pieces.push(SubPiece::Text(std::mem::take(&mut literal)));
        }
        pieces.push(SubPiece::Name(name));
        rest = &after[end + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() || pieces.is_empty() {
        pieces.push(SubPiece::Text(literal));
    }
    Ok(pieces)
}

/// What evaluation reads: the request and the template's mappings.
pub(crate) struct Env<'s> {
    pub parameters: &'s BTreeMap<String, String>,
    pub certificate_id: &'s str,
    pub subject: &'s SubjectFields,
    pub mappings: &'s Mappings,
}

impl RefTarget {
    pub(crate) fn eval<'s>(&'s self, env: &Env<'s>) -> Result<&'s str, EvalErrorKind> {
        let found = match self {
            RefTarget::CertificateId => return Ok(env.certificate_id),
            RefTarget::Subject(field) => field.read(env.subject),
            RefTarget::Never(_) => None,
            RefTarget::Parameter { name, default } => env
                .parameters
                .get(&**name)
                .map(String::as_str)
                .or(default.as_deref()),
        };
        found.ok_or_else(|| EvalErrorKind::UnresolvedReference {
            name: self.name().to_string(),
        })
    }

    fn name(&self) -> &str {
        match self {
            RefTarget::CertificateId => CERTIFICATE_ID_PSEUDO,
            RefTarget::Subject(field) => field.pseudo_name(),
            RefTarget::Never(name) | RefTarget::Parameter { name, .. } => name,
        }
    }
}

impl StrExpr {
    pub(crate) fn eval<'s>(&'s self, env: &Env<'s>) -> Result<Cow<'s, str>, EvalErrorKind> {
        match self {
            StrExpr::Lit(s) => Ok(Cow::Borrowed(s)),
            StrExpr::Ref(target) => target.eval(env).map(Cow::Borrowed),
            StrExpr::Join { delimiter, items } => {
                let delimiter = delimiter.eval(env)?;
                let items = items.eval(env)?;
                let mut out = String::new();
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&delimiter);
                    }
                    // A null element (only possible in Fn::Select lists) never reaches here:
                    // Join lists are compiled without nulls.
                    out.push_str(item.as_deref().unwrap_or(""));
                }
                Ok(Cow::Owned(out))
            }
            StrExpr::Select { index, list } => {
                let index = match index {
                    IndexExpr::Lit(i) => *i,
                    IndexExpr::Dyn(e) => {
                        let text = e.eval(env)?;
                        text.parse::<usize>()
                            .map_err(|_| EvalErrorKind::SelectIndexInvalid {
                                value: text.into_owned(),
                            })?
                    }
                };
                let mut items = list.eval(env)?;
                let len = items.len();
                match items.get_mut(index) {
                    None => Err(EvalErrorKind::SelectIndexOutOfRange { index, len }),
                    Some(slot) => slot.take().ok_or(EvalErrorKind::SelectNull { index }),
                }
            }
            StrExpr::FindInMap {
                map,
                key,
                value_key,
            } => {
                let map = map.eval(env)?;
                let key = key.eval(env)?;
                let value_key = value_key.eval(env)?;
                let table =
                    env.mappings
                        .get(&*map)
                        .ok_or_else(|| EvalErrorKind::MappingNotFound {
                            map: map.to_string(),
                        })?;
                let row = table
                    .get(&*key)
                    .ok_or_else(|| EvalErrorKind::MappingKeyNotFound {
                        map: map.to_string(),
                        key: key.to_string(),
                    })?;
                row.get(&*value_key)
                    .map(|v| Cow::Borrowed(v.as_str()))
                    .ok_or_else(|| EvalErrorKind::MappingValueNotFound {
                        map: map.into_owned(),
                        key: key.into_owned(),
                        value_key: value_key.into_owned(),
                    })
            }
            StrExpr::Sub { parts, variables } => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        SubPart::Lit(t) => out.push_str(t),
                        SubPart::Var(i) => out.push_str(&variables[*i].eval(env)?),
                        SubPart::Ref(target) => out.push_str(target.eval(env)?),
                    }
                }
                Ok(Cow::Owned(out))
            }
        }
    }
}

impl ListExpr {
    /// Evaluates every element (so an unresolvable element fails the request even when
    /// `Fn::Select` would not pick it, as CloudFormation resolves a list before selecting).
    pub(crate) fn eval<'s>(
        &'s self,
        env: &Env<'s>,
    ) -> Result<Vec<Option<Cow<'s, str>>>, EvalErrorKind> {
        match self {
            ListExpr::Lit(items) => items
                .iter()
                .map(|item| item.as_ref().map(|e| e.eval(env)).transpose())
                .collect(),
            ListExpr::Split { delimiter, source } => {
                let delimiter = delimiter.eval(env)?;
                if delimiter.is_empty() {
                    return Err(EvalErrorKind::EmptySplitDelimiter);
                }
                Ok(match source.eval(env)? {
                    Cow::Borrowed(s) => s
                        .split(&*delimiter)
                        .map(|p| Some(Cow::Borrowed(p)))
                        .collect(),
                    Cow::Owned(s) => s
                        .split(&*delimiter)
                        .map(|p| Some(Cow::Owned(p.to_string())))
                        .collect(),
                })
            }
        }
    }
}
