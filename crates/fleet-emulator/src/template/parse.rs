//! Loading a template body: the size limit, JSON parsing, and the validation and compilation
//! of each section (`Parameters`, `Mappings`, `Resources` with their `OverrideSettings`,
//! `DeviceConfiguration`) into the structures [`super::Template`] evaluates.

use serde_json::{Map, Value};

use super::error::{MAX_BODY_CHARS, TemplateError};
use super::expr::{self, ListExpr, Mappings, Scope, StrExpr, intrinsic, join_path, scalar_text};
use super::names::{self, Rule};
use super::provisioned::{CertificateStatus, Override, ThingOverrides};
use super::{ParameterDecl, ParameterType, ParseOptions, Template};

/// A compiled string-valued property and the JSON path it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    pub path: Box<str>,
    pub expr: StrExpr,
}

/// A compiled list-valued property and the JSON path it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListSlot {
    pub path: Box<str>,
    pub expr: ListExpr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ThingRes {
    pub logical_id: String,
    pub name: Slot,
    pub attributes: Vec<(String, Slot)>,
    pub thing_type: Option<Slot>,
    pub thing_groups: Option<ListSlot>,
    pub billing_group: Option<Slot>,
    pub overrides: ThingOverrides,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertificateRes {
    pub logical_id: String,
    pub certificate_id: Slot,
    pub status: Option<Slot>,
    pub status_override: Option<Override>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PolicyRes {
    pub logical_id: String,
    pub source: PolicySource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PolicySource {
    /// `PolicyName`: an existing policy.
    Name(Slot),
    /// A `PolicyDocument` with no intrinsic functions: canonical text and name computed once.
    Static { name: String, document: String },
    /// A `PolicyDocument` object with intrinsic functions inside.
    Tree { path: Box<str>, node: DocNode },
    /// A `PolicyDocument` computed as a string (`Ref`, `Fn::Sub`, ...), parsed per request.
    Text(Slot),
}

/// A policy document object with intrinsic functions in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DocNode {
    Lit(Value),
    Str(StrExpr),
    List(ListExpr),
    Array(Vec<DocNode>),
    Object(Vec<(String, DocNode)>),
}

const SECTIONS: &str = "Parameters, Mappings, Resources, DeviceConfiguration";
const RESOURCE_TYPES: &str = "AWS::IoT::Thing, AWS::IoT::Certificate, AWS::IoT::Policy";

/// Parses and validates a template body.
pub(crate) fn parse(body: &str, options: ParseOptions) -> Result<Template, TemplateError> {
    if body.len() > MAX_BODY_CHARS {
        let chars = body.chars().count();
        if chars > MAX_BODY_CHARS {
            return Err(TemplateError::TooLarge { chars });
        }
    }
    let root: Value = serde_json::from_str(body).map_err(|e| TemplateError::Json {
        message: json_message(&e),
        line: e.line(),
        column: e.column(),
    })?;
    let Value::Object(root) = root else {
        return Err(TemplateError::invalid(
            "",
            "a provisioning template must be a JSON object",
        ));
    };
    for key in root.keys() {
        check_section_name(key)?;
    }

    let parameters = match root.get("Parameters") {
        Some(v) => parse_parameters(v)?,
        None => Vec::new(),
    };
    let mappings = match root.get("Mappings") {
        Some(v) => parse_mappings(v)?,
        None => Mappings::new(),
    };
    let scope = Scope {
        parameters: &parameters,
        mappings: &mappings,
        strict: options.strict,
    };
    let resources = parse_resources(root.get("Resources"), &scope)?;
    let device_configuration = match root.get("DeviceConfiguration") {
        Some(v) => parse_device_configuration(v, &scope)?,
        None => Vec::new(),
    };

    Ok(Template {
        parameters,
        mappings,
        thing: resources.thing,
        certificate: resources.certificate,
        policies: resources.policies,
        device_configuration,
    })
}

/// serde_json appends " at line L column C"; the error carries those separately.
fn json_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(cut) => full[..cut].to_string(),
        None => full,
    }
}

fn check_section_name(key: &str) -> Result<(), TemplateError> {
    let message = match key {
        "Parameters" | "Mappings" | "Resources" | "DeviceConfiguration" => return Ok(()),
        "OverrideSettings" => {
            "OverrideSettings is not a top-level section; put it inside the resource it \
             applies to (Resources.<name>.OverrideSettings)"
                .to_string()
        }
        "Conditions" | "Outputs" | "Transform" | "Metadata" | "Rules" => format!(
            "the {key} section is not part of the provisioning template language; \
             sections are {SECTIONS}"
        ),
        _ => format!("unknown section {key:?}; sections are {SECTIONS}"),
    };
    Err(TemplateError::invalid(key, message))
}

fn object<'v>(
    v: &'v Value,
    path: &str,
    what: &str,
) -> Result<&'v Map<String, Value>, TemplateError> {
    match v {
        Value::Object(map) => Ok(map),
        _ => Err(TemplateError::invalid(
            path,
            format!("{what} must be a JSON object"),
        )),
    }
}

fn parse_parameters(v: &Value) -> Result<Vec<ParameterDecl>, TemplateError> {
    let map = object(v, "Parameters", "Parameters")?;
    let mut out = Vec::with_capacity(map.len());
    for (name, decl) in map {
        let path = join_path("Parameters", name);
        if name.is_empty() {
            return Err(TemplateError::invalid(&path, "parameter name is empty"));
        }
        let decl = object(decl, &path, "a parameter declaration")?;
        let mut param_type = None;
        let mut default = None;
        for (key, value) in decl {
            let kpath = join_path(&path, key);
            match key.as_str() {
                "Type" => match value.as_str() {
                    Some("String") => param_type = Some(ParameterType::String),
                    _ => {
                        return Err(TemplateError::invalid(
                            &kpath,
                            format!(
                                "parameter Type must be \"String\" (the only type provisioning \
                                 parameters have; request parameters are strings), found {value}"
                            ),
                        ));
                    }
                },
                "Default" => match scalar_text(value) {
                    Some(text) => default = Some(text),
                    None => {
                        return Err(TemplateError::invalid(
                            &kpath,
                            "a parameter Default must be a literal string",
                        ));
                    }
                },
                "Description" => {
                    if !value.is_string() {
                        return Err(TemplateError::invalid(
                            &kpath,
                            "a parameter Description must be a string",
                        ));
                    }
                }
                other => {
                    return Err(TemplateError::invalid(
                        &kpath,
                        format!(
                            "unsupported parameter attribute {other:?}; provisioning templates \
                             support Type, Default and Description"
                        ),
                    ));
                }
            }
        }
        let Some(param_type) = param_type else {
            return Err(TemplateError::invalid(
                &path,
                "a parameter needs a Type (\"String\")",
            ));
        };
        if default.is_some() && expr::is_supported_pseudo(name) {
            return Err(TemplateError::invalid(
                &join_path(&path, "Default"),
                format!(
                    "{name} is a pseudo-parameter: its value comes from the certificate, \
                     so it cannot have a Default"
                ),
            ));
        }
        out.push(ParameterDecl {
            name: name.clone(),
            param_type,
            default,
        });
    }
    Ok(out)
}

fn parse_mappings(v: &Value) -> Result<Mappings, TemplateError> {
    let maps = object(v, "Mappings", "Mappings")?;
    let mut out = Mappings::new();
    for (map_name, table) in maps {
        let mpath = join_path("Mappings", map_name);
        let table = object(table, &mpath, "a mapping")?;
        let mut rows = std::collections::BTreeMap::new();
        for (key, row) in table {
            let kpath = join_path(&mpath, key);
            let row = object(
                row,
                &kpath,
                "a mapping entry (two levels: key, then named values)",
            )?;
            let mut values = std::collections::BTreeMap::new();
            for (value_key, value) in row {
                let vpath = join_path(&kpath, value_key);
                let text = match value {
                    Value::Object(m) if intrinsic(m).is_some() => {
                        return Err(TemplateError::invalid(
                            &vpath,
                            "intrinsic functions, parameters and pseudo-parameters are not \
                             allowed in Mappings",
                        ));
                    }
                    other => scalar_text(other).ok_or_else(|| {
                        TemplateError::invalid(&vpath, "a Mappings value must be a literal string")
                    })?,
                };
                values.insert(value_key.clone(), text);
            }
            rows.insert(key.clone(), values);
        }
        out.insert(map_name.clone(), rows);
    }
    Ok(out)
}

#[derive(Default)]
struct Resources {
    thing: Option<ThingRes>,
    certificate: Option<CertificateRes>,
    policies: Vec<PolicyRes>,
}

fn parse_resources(v: Option<&Value>, scope: &Scope<'_>) -> Result<Resources, TemplateError> {
    let Some(v) = v else {
        return Err(TemplateError::invalid(
            "Resources",
            "the Resources section is required",
        ));
    };
    let map = object(v, "Resources", "Resources")?;
    if map.is_empty() {
        return Err(TemplateError::invalid(
            "Resources",
            "the Resources section declares no resources",
        ));
    }
    let mut out = Resources::default();
    for (logical_id, resource) in map {
        let path = join_path("Resources", logical_id);
        let resource = object(resource, &path, "a resource")?;
        let mut rtype = None;
        let mut properties = None;
        let mut overrides = None;
        for (key, value) in resource {
            let kpath = join_path(&path, key);
            match key.as_str() {
                "Type" => {
                    rtype = Some(value.as_str().ok_or_else(|| {
                        TemplateError::invalid(&kpath, "a resource Type must be a string")
                    })?)
                }
                "Properties" => properties = Some(object(value, &kpath, "Properties")?),
                "OverrideSettings" => overrides = Some(object(value, &kpath, "OverrideSettings")?),
                other => {
                    return Err(TemplateError::invalid(
                        &kpath,
                        format!(
                            "unsupported resource attribute {other:?}; a resource has Type, \
                             Properties and optionally OverrideSettings"
                        ),
                    ));
                }
            }
        }
        let Some(rtype) = rtype else {
            return Err(TemplateError::invalid(
                &path,
                format!("a resource needs a Type: one of {RESOURCE_TYPES}"),
            ));
        };
        let Some(properties) = properties else {
            return Err(TemplateError::invalid(&path, "a resource needs Properties"));
        };
        let ppath = join_path(&path, "Properties");
        let opath = join_path(&path, "OverrideSettings");
        match rtype {
            "AWS::IoT::Thing" => {
                if let Some(first) = &out.thing {
                    return Err(TemplateError::invalid(
                        &path,
                        format!(
                            "a template declares at most one AWS::IoT::Thing; {:?} is one already",
                            first.logical_id
                        ),
                    ));
                }
                let overrides = match overrides {
                    Some(o) => thing_overrides(o, &opath)?,
                    None => ThingOverrides::default(),
                };
                out.thing = Some(parse_thing(
                    logical_id, properties, &ppath, overrides, scope,
                )?);
            }
            "AWS::IoT::Certificate" => {
                if let Some(first) = &out.certificate {
                    return Err(TemplateError::invalid(
                        &path,
                        format!(
                            "a template declares at most one AWS::IoT::Certificate; {:?} is one \
                             already",
                            first.logical_id
                        ),
                    ));
                }
                let status_override = match overrides {
                    Some(o) => certificate_overrides(o, &opath)?,
                    None => None,
                };
                out.certificate = Some(parse_certificate(
                    logical_id,
                    properties,
                    &ppath,
                    status_override,
                    scope,
                )?);
            }
            "AWS::IoT::Policy" => {
                if overrides.is_some() {
                    return Err(TemplateError::invalid(
                        &opath,
                        "OverrideSettings are not available for policy resources",
                    ));
                }
                out.policies
                    .push(parse_policy(logical_id, properties, &ppath, scope)?);
            }
            other => {
                return Err(TemplateError::invalid(
                    &join_path(&path, "Type"),
                    format!("unknown resource Type {other:?}; use one of {RESOURCE_TYPES}"),
                ));
            }
        }
    }
    Ok(out)
}

/// Compiles a string-valued property; in strict mode a literal value must already satisfy
/// `rule`, since it could never succeed at evaluation.
fn slot(
    v: &Value,
    path: &str,
    scope: &Scope<'_>,
    rule: Option<&Rule>,
) -> Result<Slot, TemplateError> {
    let expr = scope.string_expr(v, path)?;
    if scope.strict
        && let (Some(rule), StrExpr::Lit(text)) = (rule, &expr)
    {
        check_literal(rule, text, path)?;
    }
    Ok(Slot {
        path: path.into(),
        expr,
    })
}

fn check_literal(rule: &Rule, text: &str, path: &str) -> Result<(), TemplateError> {
    if rule.accepts(text) {
        Ok(())
    } else {
        Err(TemplateError::invalid(
            path,
            format!("invalid {} {text:?}: {}", rule.what, rule.description),
        ))
    }
}

fn parse_thing(
    logical_id: &str,
    props: &Map<String, Value>,
    path: &str,
    overrides: ThingOverrides,
    scope: &Scope<'_>,
) -> Result<ThingRes, TemplateError> {
    let mut name = None;
    let mut attributes = Vec::new();
    let mut thing_type = None;
    let mut thing_groups = None;
    let mut billing_group = None;
    for (key, value) in props {
        let kpath = join_path(path, key);
        match key.as_str() {
            "ThingName" => name = Some(slot(value, &kpath, scope, Some(&names::THING_NAME))?),
            "AttributePayload" => attributes = parse_attributes(value, &kpath, scope)?,
            "ThingTypeName" => {
                thing_type = Some(slot(value, &kpath, scope, Some(&names::THING_TYPE_NAME))?)
            }
            "ThingGroups" => {
                let expr = scope.list_expr(value, &kpath, false)?;
                if scope.strict
                    && let ListExpr::Lit(items) = &expr
                {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(StrExpr::Lit(text)) = item {
                            check_literal(
                                &names::THING_GROUP_NAME,
                                text,
                                &format!("{kpath}[{i}]"),
                            )?;
                        }
                    }
                }
                thing_groups = Some(ListSlot {
                    path: kpath.into(),
                    expr,
                });
            }
            "BillingGroup" => {
                billing_group = Some(slot(
                    value,
                    &kpath,
                    scope,
                    Some(&names::BILLING_GROUP_NAME),
                )?)
            }
            "PackageVersions" => {
                return Err(TemplateError::invalid(
                    &kpath,
                    "PackageVersions is not supported by this emulator: its shape is not in \
                     the protocol reference; remove it from the template",
                ));
            }
            other => {
                return Err(TemplateError::invalid(
                    &kpath,
                    format!(
                        "unknown AWS::IoT::Thing property {other:?}; properties are ThingName, \
                         AttributePayload, ThingTypeName, ThingGroups, BillingGroup"
                    ),
                ));
            }
        }
    }
    let Some(name) = name else {
        return Err(TemplateError::invalid(
            path,
            "AWS::IoT::Thing needs a ThingName (it becomes thingName in the RegisterThing \
             response)",
        ));
    };
    Ok(ThingRes {
        logical_id: logical_id.to_string(),
        name,
        attributes,
        thing_type,
        thing_groups,
        billing_group,
        overrides,
    })
}

fn parse_attributes(
    v: &Value,
    path: &str,
    scope: &Scope<'_>,
) -> Result<Vec<(String, Slot)>, TemplateError> {
    let map = match v {
        Value::Object(map) if intrinsic(map).is_none() => map,
        _ => {
            return Err(TemplateError::invalid(
                path,
                "AttributePayload must be an object of attribute names to values",
            ));
        }
    };
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let kpath = join_path(path, key);
        if scope.strict {
            check_literal(&names::ATTRIBUTE_NAME, key, &kpath)?;
        }
        out.push((
            key.clone(),
            slot(value, &kpath, scope, Some(&names::ATTRIBUTE_VALUE))?,
        ));
    }
    Ok(out)
}

fn override_value(v: &Value, path: &str) -> Result<Override, TemplateError> {
    v.as_str().and_then(Override::parse).ok_or_else(|| {
        TemplateError::invalid(
            path,
            format!("an override must be one of DO_NOTHING, REPLACE, FAIL, MERGE; found {v}"),
        )
    })
}

fn thing_overrides(map: &Map<String, Value>, path: &str) -> Result<ThingOverrides, TemplateError> {
    let mut out = ThingOverrides::default();
    for (key, value) in map {
        let kpath = join_path(path, key);
        let o = override_value(value, &kpath)?;
        let slot = match key.as_str() {
            "AttributePayload" | "ATTRIBUTE_PAYLOAD" => &mut out.attribute_payload,
            "ThingGroups" | "THING_GROUPS" => &mut out.thing_groups,
            "ThingTypeName" | "THING_TYPE_NAME" => {
                if o == Override::Merge {
                    return Err(TemplateError::invalid(
                        &kpath,
                        "MERGE is valid only for a thing's AttributePayload and ThingGroups",
                    ));
                }
                &mut out.thing_type_name
            }
            other => {
                return Err(TemplateError::invalid(
                    &kpath,
                    format!(
                        "a thing's OverrideSettings cover AttributePayload, ThingTypeName and \
                         ThingGroups, not {other:?}"
                    ),
                ));
            }
        };
        if slot.replace(o).is_some() {
            return Err(TemplateError::invalid(
                &kpath,
                "this property's override is given twice (camel case and upper case)",
            ));
        }
    }
    Ok(out)
}

fn certificate_overrides(
    map: &Map<String, Value>,
    path: &str,
) -> Result<Option<Override>, TemplateError> {
    let mut status = None;
    for (key, value) in map {
        let kpath = join_path(path, key);
        if key != "Status" {
            return Err(TemplateError::invalid(
                &kpath,
                format!("a certificate's OverrideSettings cover only Status, not {key:?}"),
            ));
        }
        let o = override_value(value, &kpath)?;
        if o == Override::Merge {
            return Err(TemplateError::invalid(
                &kpath,
                "MERGE is valid only for a thing's AttributePayload and ThingGroups",
            ));
        }
        status = Some(o);
    }
    Ok(status)
}

fn parse_certificate(
    logical_id: &str,
    props: &Map<String, Value>,
    path: &str,
    status_override: Option<Override>,
    scope: &Scope<'_>,
) -> Result<CertificateRes, TemplateError> {
    let mut certificate_id = None;
    let mut status = None;
    for (key, value) in props {
        let kpath = join_path(path, key);
        match key.as_str() {
            // AWS's property list spells it CertificateID; every example writes CertificateId.
            "CertificateId" | "CertificateID" => {
                if certificate_id.is_some() {
                    return Err(TemplateError::invalid(
                        &kpath,
                        "CertificateId is given twice (CertificateId and CertificateID)",
                    ));
                }
                certificate_id = Some(slot(value, &kpath, scope, Some(&names::CERTIFICATE_ID))?);
            }
            "Status" => {
                let s = slot(value, &kpath, scope, None)?;
                if let StrExpr::Lit(text) = &s.expr
                    && CertificateStatus::parse(text).is_none()
                {
                    return Err(TemplateError::invalid(
                        &kpath,
                        format!("Status must be ACTIVE or INACTIVE (any case), found {text:?}"),
                    ));
                }
                status = Some(s);
            }
            "CertificateSigningRequest" | "CertificatePem" | "CACertificatePem" => {
                return Err(TemplateError::invalid(
                    &kpath,
                    format!(
                        "fleet provisioning templates can specify the certificate only by \
                         CertificateId, not {key} (use {{\"Ref\": \"AWS::IoT::Certificate::Id\"}})"
                    ),
                ));
            }
            other => {
                return Err(TemplateError::invalid(
                    &kpath,
                    format!(
                        "unknown AWS::IoT::Certificate property {other:?}; properties are \
                         CertificateId and Status"
                    ),
                ));
            }
        }
    }
    let Some(certificate_id) = certificate_id else {
        return Err(TemplateError::invalid(
            path,
            "AWS::IoT::Certificate needs CertificateId, normally \
             {\"Ref\": \"AWS::IoT::Certificate::Id\"}",
        ));
    };
    Ok(CertificateRes {
        logical_id: logical_id.to_string(),
        certificate_id,
        status,
        status_override,
    })
}

fn parse_policy(
    logical_id: &str,
    props: &Map<String, Value>,
    path: &str,
    scope: &Scope<'_>,
) -> Result<PolicyRes, TemplateError> {
    let mut source = None;
    for (key, value) in props {
        let kpath = join_path(path, key);
        let this = match key.as_str() {
            "PolicyName" => {
                PolicySource::Name(slot(value, &kpath, scope, Some(&names::POLICY_NAME))?)
            }
            "PolicyDocument" => policy_document(value, &kpath, scope)?,
            other => {
                return Err(TemplateError::invalid(
                    &kpath,
                    format!(
                        "unknown AWS::IoT::Policy property {other:?}; give exactly one of \
                         PolicyName or PolicyDocument"
                    ),
                ));
            }
        };
        if source.replace(this).is_some() {
            return Err(TemplateError::invalid(
                path,
                "a policy gives PolicyName or PolicyDocument, not both",
            ));
        }
    }
    let Some(source) = source else {
        return Err(TemplateError::invalid(
            path,
            "a policy needs exactly one of PolicyName (an existing policy) or PolicyDocument",
        ));
    };
    Ok(PolicyRes {
        logical_id: logical_id.to_string(),
        source,
    })
}

fn policy_document(
    v: &Value,
    path: &str,
    scope: &Scope<'_>,
) -> Result<PolicySource, TemplateError> {
    match v {
        Value::String(text) => {
            let doc = parse_policy_text(text).map_err(|m| TemplateError::invalid(path, m))?;
            check_static_policy(&doc, path, scope)?;
            static_policy(&doc, path)
        }
        Value::Object(map) => match intrinsic(map) {
            Some(("Fn::Split", _)) => Err(TemplateError::invalid(
                path,
                "PolicyDocument must be a JSON object or a string, not a list (Fn::Split)",
            )),
            Some(_) => Ok(PolicySource::Text(slot(v, path, scope, None)?)),
            None => match doc_node(v, path, scope)? {
                DocNode::Lit(doc) => {
                    check_static_policy(&doc, path, scope)?;
                    static_policy(&doc, path)
                }
                node => Ok(PolicySource::Tree {
                    path: path.into(),
                    node,
                }),
            },
        },
        _ => Err(TemplateError::invalid(
            path,
            "PolicyDocument must be a JSON object or a JSON-escaped string holding one",
        )),
    }
}

/// In strict mode, a policy document without intrinsic functions that RegisterThing would
/// refuse (`MalformedPolicyException`: an operator, condition key or policy variable the
/// emulator cannot evaluate) is a load error, since it could never succeed at evaluation.
fn check_static_policy(doc: &Value, path: &str, scope: &Scope<'_>) -> Result<(), TemplateError> {
    if scope.strict {
        crate::policy::PolicyDocument::parse(doc)
            .map_err(|e| TemplateError::invalid(path, format!("MalformedPolicyException: {e}")))?;
    }
    Ok(())
}

/// Parses a JSON-escaped policy document; it must hold a JSON object.
pub(crate) fn parse_policy_text(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(doc @ Value::Object(_)) => Ok(doc),
        Ok(_) => Err("PolicyDocument must hold a JSON object".to_string()),
        Err(e) => Err(format!("PolicyDocument is not valid JSON: {e}")),
    }
}

/// A literal policy document, compiled once; one over AWS's size limit is a load error.
fn static_policy(doc: &Value, path: &str) -> Result<PolicySource, TemplateError> {
    let (name, document) = canonical_policy(doc);
    names::check_policy_document_size(&document).map_err(|m| TemplateError::invalid(path, m))?;
    Ok(PolicySource::Static { name, document })
}

/// The canonical text of a policy document (compact JSON, keys sorted) and its default name,
/// the lowercase hex SHA-256 of that text.
pub(crate) fn canonical_policy(doc: &Value) -> (String, String) {
    // Serialising a `Value` cannot fail: its keys are strings and it has no non-finite floats.
    let document = serde_json::to_string(doc).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, document.as_bytes());
    (hex::encode(digest.as_ref()), document)
}

/// Compiles a policy document value; subtrees without intrinsic functions stay literal.
fn doc_node(v: &Value, path: &str, scope: &Scope<'_>) -> Result<DocNode, TemplateError> {
    match v {
        Value::Object(map) => {
            if let Some((name, _)) = intrinsic(map) {
                return if name == "Fn::Split" {
                    Ok(DocNode::List(scope.list_expr(v, path, false)?))
                } else {
                    Ok(DocNode::Str(scope.string_expr(v, path)?))
                };
            }
            let mut children = Vec::with_capacity(map.len());
            for (k, child) in map {
                children.push((k.clone(), doc_node(child, &join_path(path, k), scope)?));
            }
            if children.iter().all(|(_, c)| matches!(c, DocNode::Lit(_))) {
                Ok(DocNode::Lit(v.clone()))
            } else {
                Ok(DocNode::Object(children))
            }
        }
        Value::Array(items) => {
            let mut children = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                children.push(doc_node(item, &format!("{path}[{i}]"), scope)?);
            }
            if children.iter().all(|c| matches!(c, DocNode::Lit(_))) {
                Ok(DocNode::Lit(v.clone()))
            } else {
                Ok(DocNode::Array(children))
            }
        }
        other => Ok(DocNode::Lit(other.clone())),
    }
}

fn parse_device_configuration(
    v: &Value,
    scope: &Scope<'_>,
) -> Result<Vec<(String, Slot)>, TemplateError> {
    const PATH: &str = "DeviceConfiguration";
    let map = match v {
        Value::Object(map) if intrinsic(map).is_none() => map,
        _ => {
            return Err(TemplateError::invalid(
                PATH,
                "DeviceConfiguration must be an object of keys to string values",
            ));
        }
    };
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let kpath = join_path(PATH, key);
        match value {
            Value::Object(m) if intrinsic(m).is_none() => {
                return Err(TemplateError::invalid(
                    &kpath,
                    "nested objects are not supported in DeviceConfiguration; the device \
                     receives a flat map of strings",
                ));
            }
            Value::Array(_) => {
                return Err(TemplateError::invalid(
                    &kpath,
                    "lists are not supported in DeviceConfiguration; the device receives a \
                     flat map of strings (join the values with Fn::Join)",
                ));
            }
            _ => {}
        }
        out.push((key.clone(), slot(value, &kpath, scope, None)?));
    }
    Ok(out)
}
