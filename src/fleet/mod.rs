//! The wire contract of AWS IoT fleet provisioning by claim: topic names and payloads.
//!
//! This is the only module shared by the station and the emulator. Everything here follows
//! `shared/reference/aws-fleet-provisioning.md` §1 (topics, payloads, rejected responses).
//!
//! - [`topics`]: building and parsing the reserved `$aws/...` topics, template-name rules.
//! - [`payloads`]: request/response/error payloads and their encoding per topic format.

pub mod payloads;
pub mod topics;

pub use payloads::{
    CreateCertificateFromCsrRequest, CreateCertificateFromCsrResponse,
    CreateKeysAndCertificateResponse, DecodeError, ErrorResponse, RegisterThingRequest,
    RegisterThingResponse,
};
pub use topics::{
    Api, ApiKind, Format, MqttVersion, ReplyKind, ReservedTopic, TemplateNameError,
    validate_template_name,
};
