//! Serial jigs: the jig protocol, the station's serial link to a board, and a virtual board
//! on a pseudo-terminal for tests and the demo.
//!
//! # Layout
//!
//! - [`codec`]: frame layout, CRC-32, COBS framing, the streaming frame assembler.
//! - [`protocol`]: commands, responses, slots, error codes and their byte layouts.

pub mod codec;
pub mod protocol;
