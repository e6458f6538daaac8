//! The wire: jig protocol v1 as bytes, shared by the station's link and the board simulator.
//! Nothing here does I/O; the protocol is specified for firmware teams in
//! `docs/jig-protocol.md`.
//!
//! # Layout
//!
//! - [`codec`]: frame layout, CRC-32, COBS framing, the streaming frame assembler.
//! - [`protocol`]: commands, responses, slots, error codes and their byte layouts.
//! - `doc_examples` (tests only): the hex examples in `docs/jig-protocol.md` are the bytes
//!   this code produces.

pub mod codec;
#[cfg(test)]
mod doc_examples;
pub mod protocol;
