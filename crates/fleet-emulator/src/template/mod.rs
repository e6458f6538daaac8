//! The emulator's provisioning template engine and template store: AWS IoT fleet provisioning
//! templates (docs/aws-fleet-provisioning.md §3) parsed and validated once at load, then evaluated
//! per RegisterThing request in microseconds.
//!
//! - [`Template::parse`] checks a body (≤ 10240 characters) and compiles it; problems are a
//!   [`TemplateError`] naming the JSON path (`Resources.thing.Properties.ThingName: Fn::Join
//!   expects [delimiter, [values]]`).
//! - [`Template::evaluate`] resolves it against one request ([`EvalContext`]) into a
//!   [`Provisioned`]: the thing, certificate and policies to create or update, their
//!   override rules, and the device configuration. Failures are an [`EvalError`], which is
//!   always status 400, errorCode `InvalidParameters` on the wire.
//! - `store::TemplateStore` loads every `NAME.json` of a directory, as a bare body or as
//!   the envelope of AWS's `CreateProvisioningTemplate` request.
//!
//! # Modules
//!
//! - `parse`: loading a body: size limit, JSON, and each section checked and compiled.
//! - `expr`: expressions (literals and the intrinsic functions) compiled to a typed tree and
//!   evaluated per request.
//! - `eval`: evaluating a loaded template for one request into a [`Provisioned`].
//! - `provisioned`: what evaluation yields ([`Provisioned`], [`ThingSpec`],
//!   [`CertificateSpec`], [`PolicySpec`], the override rules).
//! - `names`: AWS IoT's naming rules applied to evaluated names and values.
//! - `error`: [`TemplateError`] (load) and [`EvalError`] (evaluation).
//! - `store`: the template directory (`TemplateStore`) and its file errors ([`StoreError`]).
//! - `tests`: behaviour tests of the engine, one file per concern.
//!
//! # The language
//!
//! | Part | Supported |
//! |---|---|
//! | Sections | `Parameters`, `Mappings`, `Resources` (required, non-empty), `DeviceConfiguration`. Any other top-level key is an error. |
//! | Parameters | `Type` (required; only `"String"`), optional `Default` (a literal), optional `Description`. |
//! | Mappings | two levels, literal string values; no intrinsic functions inside. |
//! | `AWS::IoT::Thing` | `ThingName` (required), `AttributePayload`, `ThingTypeName`, `ThingGroups`, `BillingGroup`; `OverrideSettings` for `AttributePayload`, `ThingTypeName`, `ThingGroups`. |
//! | `AWS::IoT::Certificate` | `CertificateId` (the only way fleet provisioning allows), `Status`; `OverrideSettings` for `Status`. |
//! | `AWS::IoT::Policy` | exactly one of `PolicyName` or `PolicyDocument` (JSON object or JSON-escaped string); no `OverrideSettings`. |
//! | Intrinsics | `Ref`, `Fn::Join`, `Fn::Select`, `Fn::Split`, `Fn::FindInMap`, `Fn::Sub` (string form and `[string, {vars}]` form, `${!Literal}` escape), anywhere except `Mappings`. |
//! | Pseudo-parameters | `AWS::IoT::Certificate::Id`, and from the new certificate's subject `::CommonName`, `::Country`, `::Organization`, `::OrganizationalUnit`, `::DistinguishedNameQualifier`, `::StateName`, `::SerialNumber`. |
//!
//! # Choices where AWS is silent
//!
//! - **Undeclared `Ref` names** (AWS's own hook example refs an undeclared `SerialNumber`):
//!   by default they resolve from the request parameters, like declared parameters without a
//!   `Default`. `ParseOptions::strict` rejects them at load instead. Strict mode also
//!   rejects, at load, anything that can only fail at evaluation: a `Ref` to an unsupported
//!   `AWS::` name, an `Fn::FindInMap` whose literal map or keys are missing, an `Fn::Select`
//!   whose literal index is out of range of its literal list, and literal names or values
//!   that break AWS IoT's naming rules. In the default mode those fail per request, as AWS
//!   documents for `Fn::Select` ("an invalid index makes provisioning fail").
//! - **Pseudo-parameters** resolve whether or not `Parameters` declares them (AWS's example
//!   (a) uses the certificate id undeclared) and win over a request parameter of the same
//!   name, so a device cannot choose its certificate id. A `Default` on one is rejected. A
//!   subject field the certificate lacks fails the request, as JITP documents.
//! - **Other `AWS::` names** (`AWS::Region`, `AWS::AccountId`, ...) never resolve, even when
//!   declared or sent as request parameters: `Cannot resolve reference value: AWS::Region`,
//!   the message observed from AWS. Every unresolved reference uses that wording.
//! - **Parameters are needed only when used**: a declared parameter with neither a request
//!   value nor a `Default` fails the request only if evaluation reaches a `Ref` to it.
//! - **Literal numbers and booleans** in a string position (a `DeviceConfiguration` value, an
//!   attribute value, a mapping value) stand for their JSON text: `8883` is `"8883"`, since
//!   the device receives a map of strings. `null` is an error, except as an element of an
//!   `Fn::Select` list, where selecting it fails the request (AWS: "does not check for null
//!   values").
//! - **Lists are typed**: `Fn::Split` is the only list-valued function; it may stand where a
//!   list is expected (`Fn::Join`, `Fn::Select`, `ThingGroups`, inside a `PolicyDocument`).
//!   A list where a string is needed, or a string where a list is needed, is a load error.
//!   `Fn::Select` evaluates its whole list before picking, as CloudFormation does; its index
//!   is an integer, a string holding one, or a function returning one.
//! - **`Fn::Sub`**: a name in the variable map wins over a parameter of the same name; an
//!   unclosed `${`, an empty `${}` and `${a.b}` (an `Fn::GetAtt` reference) are load errors.
//! - **Resources**: at most one thing and one certificate; any number of policies, listed by
//!   logical id. A template without a thing evaluates to `thing: None`, and the caller decides what
//!   `thingName` to send (AWS's behaviour is unconfirmed, docs/aws-fleet-provisioning.md §3.6).
//!   `PackageVersions` (current AWS docs only, shape not in docs/aws-fleet-provisioning.md) is
//!   rejected.
//! - **Names and values are checked at evaluation** against the AWS IoT API patterns (thing,
//!   thing type, group and billing-group names: 1-128 of `[a-zA-Z0-9:_-]`; attribute names and
//!   values; policy names; a 64-hex-digit certificate id). A violation fails the request with
//!   400 `InvalidParameters` rather than later in the registry. So does a computed policy
//!   document over AWS's 2048 characters (white space not counted); a literal one over it
//!   is a load error. The attribute count (3 without a thing type, 50 with one) depends on
//!   the thing as stored after `OverrideSettings`, so RegisterThing checks it
//!   (`api::registry_rules`).
//! - **Policy documents** are returned as canonical JSON (compact, keys sorted), whichever
//!   form the template used, and the default name AWS describes as "a hash of the policy
//!   document" is the lowercase hex SHA-256 of that canonical text. Intrinsic functions inside
//!   a `PolicyDocument` object are evaluated; text inside a JSON-escaped document is literal.
//! - **OverrideSettings** values are the exact upper-case AWS spellings; thing keys may be
//!   written `AttributePayload` or `ATTRIBUTE_PAYLOAD` (the docs use both). An absent setting
//!   is `None`: AWS does not document the default, so the registry decides.
//! - **Certificate `Status`** is case-insensitive (`Active` and `ACTIVE` both appear in AWS
//!   examples) and defaults to `ACTIVE`; `CertificateID` is accepted as a spelling of
//!   `CertificateId` (AWS's property list writes it so).
//! - **Size**: the 10240 limit counts characters, as the `templateBody` constraint does.
//!   Duplicate keys in a JSON object keep the last value.

mod error;
mod eval;
mod expr;
pub(crate) mod names;
mod parse;
mod provisioned;
pub(crate) mod store;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use error::{EvalError, EvalErrorKind, MAX_BODY_CHARS, TemplateError};
pub use provisioned::{
    CertificateSpec, CertificateStatus, Override, PolicySpec, Provisioned, ThingOverrides,
    ThingSpec,
};
pub use store::StoreError;
pub(crate) use store::TemplateStore;

/// A provisioning template, parsed and validated once, ready to evaluate per request.
#[derive(Debug, Clone)]
pub struct Template {
    /// Read by the tests only ([`Template::declared_parameters`]): evaluation uses the
    /// compiled expressions.
    #[cfg_attr(not(test), expect(dead_code))]
    parameters: Vec<ParameterDecl>,
    mappings: expr::Mappings,
    thing: Option<parse::ThingRes>,
    certificate: Option<parse::CertificateRes>,
    policies: Vec<parse::PolicyRes>,
    device_configuration: Vec<(String, parse::Slot)>,
}

/// How strictly [`Template::parse_with`] checks a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ParseOptions {
    /// Reject `Ref`s to undeclared names, and anything else that could only fail at
    /// evaluation, when the template is loaded. Off by default (see the module docs).
    pub strict: bool,
}

impl ParseOptions {
    /// The default: undeclared `Ref` names resolve from the request parameters.
    #[cfg(test)]
    pub(crate) const LENIENT: ParseOptions = ParseOptions { strict: false };
    /// Undeclared `Ref` names and statically failing lookups are load errors.
    #[cfg(test)]
    pub(crate) const STRICT: ParseOptions = ParseOptions { strict: true };
}

/// One entry of the `Parameters` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParameterDecl {
    pub name: String,
    pub param_type: ParameterType,
    /// Used when the request (after hook overrides) does not supply the parameter.
    pub default: Option<String>,
}

/// A parameter `Type`. Only `String` is accepted: it is the only type AWS documents, and
/// request parameters are a map of strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParameterType {
    String,
}

/// Subject fields of the certificate being registered, read by the
/// `AWS::IoT::Certificate::<Field>` pseudo-parameters. Absent fields stay `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubjectFields {
    /// CN, for `AWS::IoT::Certificate::CommonName`.
    pub common_name: Option<String>,
    /// O, for `AWS::IoT::Certificate::Organization`.
    pub organization: Option<String>,
    /// OU, for `AWS::IoT::Certificate::OrganizationalUnit`.
    pub organizational_unit: Option<String>,
    /// C, for `AWS::IoT::Certificate::Country`.
    pub country: Option<String>,
    /// ST, for `AWS::IoT::Certificate::StateName`.
    pub state_name: Option<String>,
    /// serialNumber, for `AWS::IoT::Certificate::SerialNumber`.
    pub serial_number: Option<String>,
    /// dnQualifier, for `AWS::IoT::Certificate::DistinguishedNameQualifier`.
    pub dn_qualifier: Option<String>,
}

/// What one RegisterThing request gives the template.
#[derive(Debug, Clone, Copy)]
pub struct EvalContext<'a> {
    /// The request's `parameters`, already merged with the pre-provisioning hook's
    /// `parameterOverrides` by the caller. The engine applies `Default`s for missing ones.
    pub parameters: &'a BTreeMap<String, String>,
    /// `AWS::IoT::Certificate::Id`: the id of the certificate being registered.
    pub certificate_id: &'a str,
    /// The subject of the certificate being registered.
    pub certificate_subject: &'a SubjectFields,
}

impl Template {
    /// Parses and validates a body with the default (lenient) options.
    pub fn parse(body: &str) -> Result<Template, TemplateError> {
        Template::parse_with(body, ParseOptions::default())
    }

    /// Parses and validates a body.
    pub(crate) fn parse_with(body: &str, options: ParseOptions) -> Result<Template, TemplateError> {
        parse::parse(body, options)
    }

    /// Evaluates the template for one request.
    pub fn evaluate(&self, ctx: &EvalContext<'_>) -> Result<Provisioned, EvalError> {
        eval::evaluate(self, ctx)
    }

    /// The `Parameters` section, ordered by name.
    #[cfg(test)]
    pub(crate) fn declared_parameters(&self) -> &[ParameterDecl] {
        &self.parameters
    }
}
