//! The template store: the emulator's provisioning templates, loaded from a directory that
//! holds one `NAME.json` per template.
//!
//! A file is either a bare template body, or the envelope of AWS's `CreateProvisioningTemplate`
//! request (recognised by its `templateBody` key), so a file can also be sent to AWS with
//! `aws iot create-provisioning-template --cli-input-json file://NAME.json`:
//!
//! | Envelope field | Rule |
//! |---|---|
//! | `templateName` | optional; must equal `NAME` when present |
//! | `templateBody` | required; the body as a JSON string (as AWS takes it) or, for convenience, as an object. The 10240-character limit applies to the string, or to the object's compact JSON text. |
//! | `enabled` | optional boolean; **defaults to `false`**, as `CreateProvisioningTemplate` does, so an envelope without `"enabled": true` loads a disabled template |
//! | `provisioningRoleArn` | required, as AWS requires it (20-2048 characters); kept, not used |
//! | `preProvisioningHook` | optional `{targetArn, payloadVersion}`; `targetArn` is a Lambda ARN (`arn:<partition>:lambda:...`) — or, emulator only, `command:PATH ARGS` or `http://URL` — and `payloadVersion` defaults to `2020-04-01` |
//! | `description` | optional, at most 500 characters, no control characters |
//! | `type` | optional; `FLEET_PROVISIONING` (the default). `JITP` is refused: it is not served over MQTT. |
//! | `tags` | optional list of `{Key, Value}`; checked and ignored |
//!
//! A bare body is loaded **enabled**: the file's presence is the operator's intent, and there
//! is nowhere in a bare body to say otherwise.
//!
//! `NAME` must be a valid AWS template name (1-36 of `[0-9A-Za-z_-]`). Files not ending in
//! `.json`, hidden files (leading `.`) and directories are ignored. Files are read in name
//! order, and the first bad file stops the load with a [`StoreError`] naming the file, the
//! problem and the fix.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{MAX_BODY_CHARS, ParseOptions, Template, TemplateError};
use crate::fleet::validate_template_name;

/// The hook payload version AWS documents, and the default when an envelope omits it.
pub(crate) const DEFAULT_HOOK_PAYLOAD_VERSION: &str = "2020-04-01";

/// The largest file the loader reads. A template body is at most 10240 characters; an
/// envelope adds a few short fields, and an object-form body may be indented.
pub(crate) const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The emulator's templates, by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct TemplateStore {
    templates: BTreeMap<String, StoredTemplate>,
}

/// One template and its AWS attributes.
#[derive(Debug, Clone)]
pub(crate) struct StoredTemplate {
    pub name: String,
    pub template: Template,
    /// A disabled template cannot be used for provisioning.
    pub enabled: bool,
    /// The pre-provisioning hook, if the template has one.
    pub hook: Option<HookConfig>,
    /// The envelope's `description`: checked at load as AWS checks it, kept for the record
    /// (the tests read it; nothing the emulator answers depends on it).
    #[cfg_attr(not(test), expect(dead_code))]
    pub description: Option<String>,
    /// The envelope's `provisioningRoleArn` (`None` for a bare body): kept for the record,
    /// as `description`.
    #[cfg_attr(not(test), expect(dead_code))]
    pub provisioning_role_arn: Option<String>,
}

/// A template's `preProvisioningHook` (docs/aws-fleet-provisioning.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HookConfig {
    /// The Lambda function's ARN.
    pub target_arn: String,
    /// `2020-04-01` unless the envelope says otherwise.
    pub payload_version: String,
}

/// Why the template directory or one of its files cannot be loaded.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StoreError {
    #[error("cannot read the template directory {}: {source}", dir.display())]
    #[diagnostic(
        code(station::emulator::templates::read_dir),
        help(
            "check that the directory exists and is readable; it holds one NAME.json per provisioning template"
        )
    )]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot read template file {}: {source}", path.display())]
    #[diagnostic(
        code(station::emulator::templates::read_file),
        help("check the file's permissions, or move it out of the template directory")
    )]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("template file {} is {size} bytes; the loader reads at most {max} bytes", path.display())]
    #[diagnostic(
        code(station::emulator::templates::file_too_large),
        help("a template body is at most 10240 characters; check that this is the right file")
    )]
    FileTooLarge { path: PathBuf, size: u64, max: u64 },

    #[error("template file {}: {reason}", path.display())]
    #[diagnostic(
        code(station::emulator::templates::bad_file_name),
        help(
            "rename the file to NAME.json, where NAME is the template name: 1-36 characters from A-Z a-z 0-9 _ -"
        )
    )]
    BadFileName { path: PathBuf, reason: String },

    #[error(
        "template file {}: templateName {template_name:?} does not match the file name {file_name:?}",
        path.display()
    )]
    #[diagnostic(
        code(station::emulator::templates::name_mismatch),
        help(
            "rename the file to {template_name}.json, or set \"templateName\" to {file_name:?} (or remove it)"
        )
    )]
    NameMismatch {
        path: PathBuf,
        file_name: String,
        template_name: String,
    },

    #[error("template file {} is not valid JSON: {message} (line {line}, column {column})", path.display())]
    #[diagnostic(
        code(station::emulator::templates::json),
        help("fix the JSON syntax at the line and column shown")
    )]
    Json {
        path: PathBuf,
        message: String,
        line: usize,
        column: usize,
    },

    #[error("template file {}: {field}: {message}", path.display())]
    #[diagnostic(code(station::emulator::templates::envelope), help("{fix}"))]
    Envelope {
        path: PathBuf,
        field: String,
        message: String,
        fix: String,
    },

    #[error("template file {}: {source}", path.display())]
    #[diagnostic(
        code(station::emulator::templates::template),
        help(
            "fix the template body at the JSON path shown (for an envelope, the path is inside templateBody)"
        )
    )]
    Template {
        path: PathBuf,
        #[source]
        source: TemplateError,
    },
}

impl TemplateStore {
    /// An empty store.
    pub(crate) fn new() -> TemplateStore {
        TemplateStore::default()
    }

    /// Loads every `NAME.json` in `dir` with the default (lenient) parse options.
    pub(crate) fn load_dir(dir: &Path) -> Result<TemplateStore, StoreError> {
        TemplateStore::load_dir_with(dir, ParseOptions::default())
    }

    /// Loads every `NAME.json` in `dir`.
    pub(crate) fn load_dir_with(
        dir: &Path,
        options: ParseOptions,
    ) -> Result<TemplateStore, StoreError> {
        let read_dir = |source| StoreError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir).map_err(read_dir)? {
            let path = entry.map_err(read_dir)?.path();
            let Some(file_name) = path.file_name() else {
                continue;
            };
            let file_name = file_name.to_string_lossy();
            if file_name.starts_with('.') || !file_name.ends_with(".json") || path.is_dir() {
                continue;
            }
            paths.push(path);
        }
        paths.sort();
        let mut store = TemplateStore::new();
        for path in paths {
            store.insert(StoredTemplate::load_file(&path, options)?);
        }
        Ok(store)
    }

    /// Adds a template, returning the one it replaces.
    pub(crate) fn insert(&mut self, template: StoredTemplate) -> Option<StoredTemplate> {
        self.templates.insert(template.name.clone(), template)
    }

    /// The template called `name`, enabled or not.
    pub(crate) fn get(&self, name: &str) -> Option<&StoredTemplate> {
        self.templates.get(name)
    }

    /// Template names in order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.templates.keys().map(String::as_str)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.templates.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }
}

impl StoredTemplate {
    /// An enabled template without a hook, as a bare body file gives.
    pub(crate) fn new(name: impl Into<String>, template: Template) -> StoredTemplate {
        StoredTemplate {
            name: name.into(),
            template,
            enabled: true,
            hook: None,
            description: None,
            provisioning_role_arn: None,
        }
    }

    /// Loads one `NAME.json` file.
    pub(crate) fn load_file(
        path: &Path,
        options: ParseOptions,
    ) -> Result<StoredTemplate, StoreError> {
        let name = file_template_name(path)?;
        let text = read_limited(path)?;
        StoredTemplate::from_text(path, &name, &text, options)
    }

    fn from_text(
        path: &Path,
        name: &str,
        text: &str,
        options: ParseOptions,
    ) -> Result<StoredTemplate, StoreError> {
        let value: Value = serde_json::from_str(text).map_err(|e| StoreError::Json {
            path: path.to_path_buf(),
            message: e
                .to_string()
                .split(" at line ")
                .next()
                .unwrap_or("")
                .to_string(),
            line: e.line(),
            column: e.column(),
        })?;
        let template_error = |source| StoreError::Template {
            path: path.to_path_buf(),
            source,
        };
        match &value {
            Value::Object(map) if map.contains_key("templateBody") => {
                Envelope { path, name }.load(map, options)
            }
            Value::Object(map) => {
                if let Some(key) = map.keys().find(|k| ENVELOPE_FIELDS.contains(&k.as_str())) {
                    return Err(StoreError::Envelope {
                        path: path.to_path_buf(),
                        field: "templateBody".into(),
                        message: format!(
                            "the file has the envelope field {key:?} but no templateBody"
                        ),
                        fix: "put the template in \"templateBody\", or remove the \
                              CreateProvisioningTemplate fields to make the file a bare body"
                            .into(),
                    });
                }
                let template = Template::parse_with(text, options).map_err(template_error)?;
                Ok(StoredTemplate::new(name, template))
            }
            // Not an object: let the template parser say so, with its path conventions.
            _ => Err(template_error(
                Template::parse_with(text, options)
                    .err()
                    .unwrap_or_else(|| {
                        TemplateError::invalid("", "a template must be a JSON object")
                    }),
            )),
        }
    }
}

const ENVELOPE_FIELDS: &[&str] = &[
    "templateName",
    "templateBody",
    "enabled",
    "provisioningRoleArn",
    "preProvisioningHook",
    "description",
    "type",
    "tags",
];

fn file_template_name(path: &Path) -> Result<String, StoreError> {
    let bad = |reason: String| StoreError::BadFileName {
        path: path.to_path_buf(),
        reason,
    };
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("the file name is not valid UTF-8".into()))?;
    let stem = file_name
        .strip_suffix(".json")
        .ok_or_else(|| bad("the file name does not end in .json".into()))?;
    validate_template_name(stem).map_err(|e| bad(e.to_string()))?;
    Ok(stem.to_string())
}

fn read_limited(path: &Path) -> Result<String, StoreError> {
    let read_err = |source| StoreError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        let size = fs::metadata(path)
            .map(|m| m.len())
            .unwrap_or(bytes.len() as u64);
        return Err(StoreError::FileTooLarge {
            path: path.to_path_buf(),
            size,
            max: MAX_FILE_BYTES,
        });
    }
    String::from_utf8(bytes).map_err(|_| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is not UTF-8 text",
        ))
    })
}

/// Loading the `CreateProvisioningTemplate` envelope of one file.
struct Envelope<'a> {
    path: &'a Path,
    name: &'a str,
}

impl Envelope<'_> {
    fn error(&self, field: &str, message: impl Into<String>, fix: impl Into<String>) -> StoreError {
        StoreError::Envelope {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
            fix: fix.into(),
        }
    }

    fn string<'v>(
        &self,
        map: &'v Map<String, Value>,
        field: &str,
    ) -> Result<Option<&'v str>, StoreError> {
        match map.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.error(
                field,
                format!("must be a string, found {other}"),
                format!("write \"{field}\" as a JSON string"),
            )),
        }
    }

    fn load(
        &self,
        map: &Map<String, Value>,
        options: ParseOptions,
    ) -> Result<StoredTemplate, StoreError> {
        if let Some(key) = map.keys().find(|k| !ENVELOPE_FIELDS.contains(&k.as_str())) {
            return Err(self.error(
                key,
                "unknown CreateProvisioningTemplate field",
                format!(
                    "remove it, or correct its spelling; the fields are {}",
                    ENVELOPE_FIELDS.join(", ")
                ),
            ));
        }

        if let Some(declared) = self.string(map, "templateName")?
            && declared != self.name
        {
            return Err(StoreError::NameMismatch {
                path: self.path.to_path_buf(),
                file_name: self.name.to_string(),
                template_name: declared.to_string(),
            });
        }

        let body = match map.get("templateBody") {
            Some(Value::String(s)) => s.clone(),
            // The object form: its compact text is what AWS would be sent.
            Some(body @ Value::Object(_)) => serde_json::to_string(body).unwrap_or_default(),
            _ => {
                return Err(self.error(
                    "templateBody",
                    "must be the template as a JSON string or a JSON object",
                    "set \"templateBody\" to the template body",
                ));
            }
        };
        let template =
            Template::parse_with(&body, options).map_err(|source| StoreError::Template {
                path: self.path.to_path_buf(),
                source: match source {
                    TemplateError::Invalid { path, message } => TemplateError::Invalid {
                        path: format!(
                            "templateBody: {}",
                            if path.is_empty() { "template" } else { &path }
                        ),
                        message,
                    },
                    other => other,
                },
            })?;

        let enabled = match map.get("enabled") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(self.error(
                    "enabled",
                    format!("must be true or false, found {other}"),
                    "write \"enabled\": true to let devices provision with this template",
                ));
            }
        };

        let provisioning_role_arn = match self.string(map, "provisioningRoleArn")? {
            Some(arn) if (20..=2048).contains(&arn.chars().count()) => arn.to_string(),
            Some(arn) => {
                return Err(self.error(
                    "provisioningRoleArn",
                    format!("{arn:?} is not a role ARN (AWS takes 20-2048 characters)"),
                    "give the IAM role ARN, e.g. arn:aws:iam::123456789012:role/Provisioning \
                     (the emulator records it but does not use it)",
                ));
            }
            None => {
                return Err(self.error(
                    "provisioningRoleArn",
                    "is required: CreateProvisioningTemplate needs the provisioning role",
                    "add \"provisioningRoleArn\": \"arn:aws:iam::123456789012:role/Provisioning\" \
                     (the emulator records it but does not use it)",
                ));
            }
        };

        let description = match self.string(map, "description")? {
            Some(d) if d.chars().count() > 500 || d.chars().any(char::is_control) => {
                return Err(self.error(
                    "description",
                    "AWS allows at most 500 characters and no control characters",
                    "shorten the description and remove line breaks and tabs",
                ));
            }
            d => d.map(str::to_string),
        };

        match self.string(map, "type")? {
            None | Some("FLEET_PROVISIONING") => {}
            Some("JITP") => {
                return Err(self.error(
                    "type",
                    "JITP templates are not served over the fleet-provisioning MQTT API",
                    "set \"type\" to \"FLEET_PROVISIONING\", or move the file out of the \
                     template directory",
                ));
            }
            Some(other) => {
                return Err(self.error(
                    "type",
                    format!("unknown template type {other:?}"),
                    "set \"type\" to \"FLEET_PROVISIONING\" or remove it",
                ));
            }
        }

        if let Some(tags) = map.get("tags") {
            self.check_tags(tags)?;
        }

        let hook = match map.get("preProvisioningHook") {
            None => None,
            Some(hook) => Some(self.hook(hook)?),
        };

        Ok(StoredTemplate {
            name: self.name.to_string(),
            template,
            enabled,
            hook,
            description,
            provisioning_role_arn: Some(provisioning_role_arn),
        })
    }

    fn hook(&self, v: &Value) -> Result<HookConfig, StoreError> {
        const FIELD: &str = "preProvisioningHook";
        const FIX: &str = "write the hook as {\"targetArn\": \"arn:aws:lambda:REGION:ACCOUNT:function:NAME\", \
                           \"payloadVersion\": \"2020-04-01\"}";
        let Value::Object(map) = v else {
            return Err(self.error(FIELD, "must be an object", FIX));
        };
        if let Some(key) = map
            .keys()
            .find(|k| *k != "targetArn" && *k != "payloadVersion")
        {
            return Err(self.error(
                &format!("{FIELD}.{key}"),
                "unknown field; a hook has targetArn and payloadVersion",
                FIX,
            ));
        }
        let target_arn = match map.get("targetArn") {
            // AWS takes only Lambda ARNs; the emulator also takes a local command or an
            // HTTP URL directly (for templates that never go to AWS).
            Some(Value::String(arn))
                if is_lambda_arn(arn)
                    || arn.starts_with("command:")
                    || arn.starts_with("http://") =>
            {
                arn.clone()
            }
            Some(other) => {
                return Err(self.error(
                    &format!("{FIELD}.targetArn"),
                    format!(
                        "{other} is not a Lambda function ARN (nor, for the emulator only, `command:…` or `http://…`)"
                    ),
                    FIX,
                ));
            }
            None => {
                return Err(self.error(&format!("{FIELD}.targetArn"), "is required", FIX));
            }
        };
        let payload_version = match map.get("payloadVersion") {
            None => DEFAULT_HOOK_PAYLOAD_VERSION.to_string(),
            Some(Value::String(v))
                if v.len() == 10 && v.bytes().all(|b| b.is_ascii_digit() || b == b'-') =>
            {
                v.clone()
            }
            Some(other) => {
                return Err(self.error(
                    &format!("{FIELD}.payloadVersion"),
                    format!("{other} is not a payload version (a date such as 2020-04-01)"),
                    FIX,
                ));
            }
        };
        Ok(HookConfig {
            target_arn,
            payload_version,
        })
    }

    fn check_tags(&self, v: &Value) -> Result<(), StoreError> {
        const FIX: &str = "write tags as [{\"Key\": \"k\", \"Value\": \"v\"}, ...] or remove them";
        let Value::Array(tags) = v else {
            return Err(self.error("tags", "must be a list", FIX));
        };
        for (i, tag) in tags.iter().enumerate() {
            let ok = matches!(tag, Value::Object(t)
                if matches!(t.get("Key"), Some(Value::String(k)) if !k.is_empty())
                    && t.get("Value").is_none_or(Value::is_string)
                    && t.keys().all(|k| k == "Key" || k == "Value"));
            if !ok {
                return Err(self.error(&format!("tags[{i}]"), "must be {Key, Value} strings", FIX));
            }
        }
        Ok(())
    }
}

/// `arn:<partition>:lambda:<region>:<account>:function:<name>[:qualifier]`, loosely: the
/// partition and service are checked, and the ARN fits AWS's 2048-character limit.
fn is_lambda_arn(arn: &str) -> bool {
    let mut parts = arn.splitn(4, ':');
    arn.len() <= 2048
        && parts.next() == Some("arn")
        && parts.next().is_some_and(|p| p.starts_with("aws"))
        && parts.next() == Some("lambda")
        && parts.next().is_some_and(|rest| !rest.is_empty())
}

const _: () = assert!(MAX_BODY_CHARS as u64 <= MAX_FILE_BYTES);

#[cfg(test)]
mod tests {
    use super::*;
    use miette::Diagnostic;

    const BODY: &str = r#"{"Parameters":{"SerialNumber":{"Type":"String"}},
        "Resources":{"thing":{"Type":"AWS::IoT::Thing","Properties":{
            "ThingName":{"Fn::Join":["",["dev_",{"Ref":"SerialNumber"}]]}}}}}"#;
    const ROLE: &str = "arn:aws:iam::123456789012:role/Provisioning";

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn load(files: &[(&str, &str)]) -> Result<TemplateStore, StoreError> {
        let dir = dir_with(files);
        TemplateStore::load_dir(dir.path())
    }

    fn load_err(files: &[(&str, &str)]) -> StoreError {
        match load(files) {
            Ok(_) => panic!("expected a store error"),
            Err(e) => e,
        }
    }

    fn envelope(fields: serde_json::Value) -> String {
        serde_json::to_string_pretty(&fields).unwrap()
    }

    #[test]
    fn loads_the_fixture_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/templates");
        let store = TemplateStore::load_dir(&dir).unwrap();
        let names: Vec<_> = store.names().collect();
        assert_eq!(
            names,
            [
                "AttachedThingTemplate",
                "EmbeddedCDemoTemplate",
                "FleetTemplate",
                "HookedTemplate",
                "PySampleTemplate"
            ]
        );
        let fleet = store.get("FleetTemplate").unwrap();
        assert!(fleet.enabled);
        assert_eq!(fleet.hook, None);
        assert_eq!(fleet.provisioning_role_arn, None);

        let hooked = store.get("HookedTemplate").unwrap();
        assert!(hooked.enabled);
        assert_eq!(
            hooked.hook,
            Some(HookConfig {
                target_arn: "arn:aws:lambda:us-east-1:765219403047:function:pre_provisioning_test"
                    .into(),
                payload_version: "2020-04-01".into(),
            })
        );
        assert!(hooked.description.is_some());
        // AWS's hook example refs SerialNumber without declaring it: it resolves from the
        // request (after hook overrides) in the default mode...
        let params: BTreeMap<String, String> =
            [("SerialNumber", "77"), ("DeviceLocation", "Seattle")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let out = hooked
            .template
            .evaluate(&super::super::EvalContext {
                parameters: &params,
                certificate_id: &"a".repeat(64),
                certificate_subject: &Default::default(),
            })
            .unwrap();
        assert_eq!(out.thing_name(), Some("ThingPrefix_77"));
        assert_eq!(
            out.thing.unwrap().thing_type.as_deref(),
            Some("ThingTypePrefix_77")
        );
        // ...and is refused in strict mode.
        let e = TemplateStore::load_dir_with(&dir, ParseOptions::STRICT).unwrap_err();
        assert!(
            matches!(&e, StoreError::Template { path, .. } if path.ends_with("HookedTemplate.json"))
        );
        assert!(e.to_string().contains("SerialNumber"), "{e}");
        assert!(store.get("Nope").is_none());
        assert_eq!(store.len(), 5);
    }

    #[test]
    fn bare_bodies_are_enabled_and_other_files_ignored() {
        let dir = dir_with(&[
            ("Bare.json", BODY),
            ("README.md", "not a template"),
            (".hidden.json", "not json at all"),
            ("Bare.json~", "editor backup"),
        ]);
        fs::create_dir(dir.path().join("sub.json")).unwrap();
        let store = TemplateStore::load_dir(dir.path()).unwrap();
        assert_eq!(store.names().collect::<Vec<_>>(), ["Bare"]);
        let t = store.get("Bare").unwrap();
        assert!(t.enabled);
        assert_eq!(t.hook, None);
        assert_eq!(t.template.declared_parameters()[0].name, "SerialNumber");
    }

    #[test]
    fn envelope_enabled_defaults_to_false_like_aws() {
        let store = load(&[(
            "Env.json",
            &envelope(serde_json::json!({
                "templateBody": BODY,
                "provisioningRoleArn": ROLE,
            })),
        )])
        .unwrap();
        let t = store.get("Env").unwrap();
        assert!(!t.enabled);
        assert_eq!(t.hook, None);
        assert_eq!(t.provisioning_role_arn.as_deref(), Some(ROLE));
    }

    #[test]
    fn envelope_accepts_an_object_body_and_defaults_the_hook_payload_version() {
        let body: serde_json::Value = serde_json::from_str(BODY).unwrap();
        let store = load(&[(
            "Env.json",
            &envelope(serde_json::json!({
                "templateName": "Env",
                "templateBody": body,
                "enabled": true,
                "provisioningRoleArn": ROLE,
                "preProvisioningHook": {"targetArn": "arn:aws:lambda:eu-west-1:123456789012:function:check"},
                "description": "test template",
                "type": "FLEET_PROVISIONING",
                "tags": [{"Key": "team", "Value": "factory"}],
            })),
        )])
        .unwrap();
        let t = store.get("Env").unwrap();
        assert!(t.enabled);
        assert_eq!(
            t.hook,
            Some(HookConfig {
                target_arn: "arn:aws:lambda:eu-west-1:123456789012:function:check".into(),
                payload_version: DEFAULT_HOOK_PAYLOAD_VERSION.into(),
            })
        );
        assert_eq!(t.description.as_deref(), Some("test template"));
    }

    #[test]
    fn the_emulator_also_takes_a_command_or_an_http_hook_directly() {
        for target in ["command:/usr/bin/true --flag", "http://127.0.0.1:9/hook"] {
            let store = load(&[(
                "Env.json",
                &envelope(serde_json::json!({
                    "templateBody": BODY,
                    "enabled": true,
                    "provisioningRoleArn": ROLE,
                    "preProvisioningHook": {"targetArn": target},
                })),
            )])
            .unwrap();
            assert_eq!(
                store.get("Env").unwrap().hook.as_ref().unwrap().target_arn,
                target
            );
        }
    }

    #[test]
    fn bad_file_names_are_refused() {
        for name in [
            "bad name.json",
            "dot.ted.json",
            &format!("{}.json", "x".repeat(37)),
        ] {
            let e = load_err(&[(name, BODY)]);
            assert!(
                matches!(&e, StoreError::BadFileName { path, .. } if path.ends_with(name)),
                "{e}"
            );
            assert!(e.code().unwrap().to_string().ends_with("bad_file_name"));
            assert!(e.help().unwrap().to_string().contains("rename the file"));
        }
    }

    #[test]
    fn template_name_must_match_the_file() {
        let e = load_err(&[(
            "Fleet.json",
            &envelope(serde_json::json!({
                "templateName": "Other",
                "templateBody": BODY,
                "provisioningRoleArn": ROLE,
            })),
        )]);
        match &e {
            StoreError::NameMismatch {
                file_name,
                template_name,
                ..
            } => assert_eq!(
                (file_name.as_str(), template_name.as_str()),
                ("Fleet", "Other")
            ),
            other => panic!("{other:?}"),
        }
        assert!(e.help().unwrap().to_string().contains("Other.json"));
    }

    #[test]
    fn bad_json_names_the_file_and_position() {
        let e = load_err(&[("Broken.json", "{\n  \"Resources\": \n}")]);
        match &e {
            StoreError::Json {
                path, line, column, ..
            } => {
                assert!(path.ends_with("Broken.json"));
                assert_eq!((*line, *column), (3, 1));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("Broken.json"));
        assert!(e.code().is_some() && e.help().is_some());
    }

    #[test]
    fn bad_templates_name_the_file_and_json_path() {
        let e = load_err(&[(
            "T.json",
            r#"{"Resources":{"x":{"Type":"AWS::IoT::Widget","Properties":{}}}}"#,
        )]);
        assert!(matches!(&e, StoreError::Template { .. }));
        let text = e.to_string();
        assert!(
            text.contains("T.json") && text.contains("Resources.x.Type"),
            "{text}"
        );

        let e = load_err(&[(
            "Env.json",
            &envelope(serde_json::json!({
                "templateBody": r#"{"Resources":{}}"#,
                "provisioningRoleArn": ROLE,
            })),
        )]);
        assert!(e.to_string().contains("templateBody: Resources"), "{e}");

        let e = load_err(&[(
            "Env.json",
            &envelope(serde_json::json!({
                "templateBody": "{not json",
                "provisioningRoleArn": ROLE,
            })),
        )]);
        assert!(
            matches!(
                &e,
                StoreError::Template {
                    source: TemplateError::Json { .. },
                    ..
                }
            ),
            "{e:?}"
        );

        let big = format!("{}{}", BODY, " ".repeat(MAX_BODY_CHARS));
        let e = load_err(&[("Big.json", &big)]);
        assert!(matches!(
            &e,
            StoreError::Template {
                source: TemplateError::TooLarge { .. },
                ..
            }
        ));

        let e = load_err(&[("List.json", "[1]")]);
        assert!(e.to_string().contains("JSON object"), "{e}");
    }

    #[test]
    fn envelope_fields_are_checked() {
        let base = || {
            serde_json::json!({
                "templateBody": BODY,
                "provisioningRoleArn": ROLE,
            })
        };
        let with = |key: &str, value: serde_json::Value| {
            let mut v = base();
            v.as_object_mut().unwrap().insert(key.into(), value);
            envelope(v)
        };
        let without_role = envelope(serde_json::json!({"templateBody": BODY}));
        for (text, field, needle) in [
            (without_role, "provisioningRoleArn", "is required"),
            (
                with("provisioningRoleArn", "arn:short".into()),
                "provisioningRoleArn",
                "not a role ARN",
            ),
            (with("enabled", "yes".into()), "enabled", "true or false"),
            (
                with("Enabled", true.into()),
                "Enabled",
                "unknown CreateProvisioningTemplate field",
            ),
            (with("type", "JITP".into()), "type", "JITP"),
            (
                with("type", "OTHER".into()),
                "type",
                "unknown template type",
            ),
            (
                with("templateBody", 5.into()),
                "templateBody",
                "JSON string or a JSON object",
            ),
            (
                with("templateName", 5.into()),
                "templateName",
                "must be a string",
            ),
            (with("description", "a\nb".into()), "description", "500"),
            (
                with("tags", serde_json::json!([{"Key": 1}])),
                "tags[0]",
                "{Key, Value}",
            ),
            (
                with(
                    "preProvisioningHook",
                    serde_json::json!({"targetArn": "arn:aws:sns:us-east-1:1:topic"}),
                ),
                "preProvisioningHook.targetArn",
                "not a Lambda function ARN",
            ),
            (
                with(
                    "preProvisioningHook",
                    serde_json::json!({"payloadVersion": "2020-04-01"}),
                ),
                "preProvisioningHook.targetArn",
                "is required",
            ),
            (
                with(
                    "preProvisioningHook",
                    serde_json::json!({"targetArn": "arn:aws:lambda:us-east-1:1:function:f", "payloadVersion": "v1"}),
                ),
                "preProvisioningHook.payloadVersion",
                "not a payload version",
            ),
            (
                with(
                    "preProvisioningHook",
                    serde_json::json!({"targetArn": "arn:aws:lambda:us-east-1:1:function:f", "TargetArn": "x"}),
                ),
                "preProvisioningHook.TargetArn",
                "unknown field",
            ),
            (
                envelope(serde_json::json!({"enabled": true, "Resources": {}})),
                "templateBody",
                "no templateBody",
            ),
        ] {
            let e = load_err(&[("Env.json", &text)]);
            match &e {
                StoreError::Envelope {
                    field: f,
                    message,
                    fix,
                    ..
                } => {
                    assert_eq!(f, field, "{text}");
                    assert!(message.contains(needle), "{text}: {message}");
                    assert!(!fix.is_empty());
                    assert_eq!(e.help().unwrap().to_string(), *fix);
                    assert!(e.code().unwrap().to_string().ends_with("envelope"));
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn unreadable_inputs_are_errors() {
        let missing = Path::new("/nonexistent/fleet-station/templates");
        let e = TemplateStore::load_dir(missing).unwrap_err();
        assert!(matches!(e, StoreError::ReadDir { .. }));
        assert!(e.help().is_some());

        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Latin1.json"), b"{\"a\":\"\xe9\"}").unwrap();
        let e = TemplateStore::load_dir(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::ReadFile { .. }), "{e:?}");

        let dir = tempfile::tempdir().unwrap();
        let file = fs::File::create(dir.path().join("Huge.json")).unwrap();
        file.set_len(MAX_FILE_BYTES + 10).unwrap();
        let e = TemplateStore::load_dir(dir.path()).unwrap_err();
        assert!(
            matches!(e, StoreError::FileTooLarge { size, .. } if size == MAX_FILE_BYTES + 10),
            "{e:?}"
        );
    }

    #[test]
    fn an_empty_directory_is_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore::load_dir(dir.path()).unwrap();
        assert!(store.is_empty());
        let mut store = store;
        let t = Template::parse(BODY).unwrap();
        assert!(
            store
                .insert(StoredTemplate::new("Manual", t.clone()))
                .is_none()
        );
        assert!(store.insert(StoredTemplate::new("Manual", t)).is_some());
        assert_eq!(store.names().collect::<Vec<_>>(), ["Manual"]);
    }
}
