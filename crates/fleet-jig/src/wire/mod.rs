//! The wire: jig protocol v1 as bytes, shared by the station's link and the board simulator.
//! Nothing here does I/O; the protocol is specified for firmware teams in
//! `docs/jig-protocol.md`.
//!
//! # Layout
//!
//! - [`codec`]: frame layout, CRC-32, COBS framing, the streaming frame assembler.
//! - [`protocol`]: the vocabulary: codes, slots, error codes, capabilities, digests.
//! - `message`: [`Message`], what commands and responses share: framing a message and
//!   parsing one from a frame, written once, and the payload reader.
//! - `command`: [`Command`] (station → board) and its payload layouts.
//! - `response`: [`Response`] (board → station), [`HelloAck`], and their payload layouts.
//! - `doc_examples` (tests only): the hex examples in `docs/jig-protocol.md` are the bytes
//!   this code produces.

pub mod codec;
mod command;
#[cfg(test)]
mod doc_examples;
mod message;
pub mod protocol;
mod response;

pub use command::Command;
#[cfg(test)]
pub(crate) use message::testing;
pub use message::{Message, PayloadError, PayloadReader};
pub use response::{HelloAck, Response};
