//! fleet-station: a factory-line station for AWS IoT fleet provisioning by claim, with an
//! embedded emulator of the AWS side.
//!
//! # Layout
//!
//! The crate has two sides that share only the wire contract in [`fleet`]:
//!
//! **The station** (what runs on the line):
//! - [`config`]: the `station.toml` schema and its validation; errors name the key and the fix.
//! - [`keys`]: key pairs and CSRs, made ahead of time by a crossbeam worker pool.
//! - [`provision`]: MQTT sessions with the claim certificate (rumqttc + rustls), the session pool
//!   and the per-device `CreateCertificateFromCsr` → `RegisterThing` flow.
//! - [`jig`]: the jig protocol (frames, commands), the serial link to a board, and the virtual
//!   board on a pseudo-terminal used by tests and the demo.
//! - [`ledger`]: the SQLite journal; every state change of a device is durable before the next
//!   step acts on it.
//! - [`telemetry`]: events from every stage, latency histograms, the progress printer and the
//!   run summary (`summary.json`).
//! - [`station`]: wires the stages into the pipeline behind `station run`.
//!
//! **The emulator** ([`emulator`]): AWS IoT Core's fleet-provisioning API on one machine: an
//! MQTT broker over mutual TLS, a CA, the template engine, the registry.
//!
//! Shared plumbing: [`error`] (the operator-facing error type), [`files`] (atomic and private
//! file writes), [`shutdown`], [`halt`] (why a run stopped early) and [`token_bucket`].

pub mod config;
pub mod emulator;
pub mod error;
pub mod files;
pub mod fleet;
pub mod halt;
pub mod jig;
pub mod keys;
pub mod ledger;
pub mod provision;
pub mod shutdown;
pub mod station;
pub mod telemetry;
pub mod token_bucket;

pub use error::{Error, Result};
