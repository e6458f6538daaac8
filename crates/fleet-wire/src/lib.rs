//! The wire contract of AWS IoT fleet provisioning by claim: topic names and payloads.
//!
//! This crate is the only code the station and the emulator share besides `fleet-util`'s
//! small utilities. Everything here follows
//! `docs/aws-fleet-provisioning.md` §1 (topics, payloads, rejected responses).
//!
//! - [`topics`]: building and parsing the reserved `$aws/...` topics, template-name rules.
//! - [`payloads`]: request/response/error payloads and their encoding per topic format.

#![warn(unreachable_pub)]

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
