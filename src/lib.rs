//! fleet-station: a factory-line station for AWS IoT fleet provisioning by claim, with an
//! embedded emulator of the AWS side.
//!
//! # Layout
//!
//! The workspace has two sides that share only the wire contract. The crates enforce it:
//!
//! - `fleet-wire` ([`fleet`]): reserved topics and payloads of the three APIs.
//! - `fleet-util` ([`shutdown`], [`token_bucket`], [`files`]): small utilities both sides use.
//! - `fleet-emulator` ([`emulator`]): AWS IoT Core's fleet-provisioning API on one machine (an
//!   MQTT broker over mutual TLS, a CA, the template engine, the registry); it depends on the
//!   two crates above and on nothing of the station.
//! - `fleet-jig` ([`jig`]): the jig protocol (frames, commands), the serial link to a board,
//!   and the board simulator on pseudo-terminals used by tests and the demo; it depends on
//!   nothing of the rest.
//! - `fleet-station` (this crate): the station and the `station` binary.
//!
//! **The station** (what runs on the line), this crate's modules:
//! - [`config`]: the `station.toml` schema and its validation; errors name the key and the fix.
//! - [`keys`]: key pairs and CSRs, made ahead of time by a crossbeam worker pool; the key
//!   source and algorithm types.
//! - [`provision`]: MQTT sessions with the claim certificate (rumqttc + rustls), the session pool
//!   and the per-device `CreateCertificateFromCsr` → `RegisterThing` flow.
//! - [`ledger`]: the journal of every device, a SQLite file or a PostgreSQL database stations
//!   share (one serial leased to one station at a time); every state change of a device is
//!   durable before the next step acts on it.
//! - [`telemetry`]: events from every stage, latency histograms, the progress printer and the
//!   run summary (`summary.json`).
//! - [`station`]: wires the stages into the pipeline behind `station run`, and the operator's
//!   command channel (pause, stop feeding, retry failed boards).
//! - [`dashboard`]: the operator's terminal dashboard; it reads telemetry snapshots and sends
//!   operator commands, nothing else.
//! - [`error`]: the operator-facing error type; [`halt`]: why a run stopped early.
//! - [`allocator`]: the binary's memory allocator (mimalloc, no transparent huge pages).
//!
//! The station uses the emulator only to start it as its embedded endpoint; the other crates
//! are re-exported here under the names the station and the tests use.

pub mod allocator;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod halt;
pub mod keys;
pub mod ledger;
pub mod provision;
pub mod station;
pub mod telemetry;

pub use fleet_emulator as emulator;
pub use fleet_jig as jig;
pub use fleet_util::{files, shutdown, token_bucket};
pub use fleet_wire as fleet;

pub use error::{Error, Result};
