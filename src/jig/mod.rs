//! Serial jigs: the jig protocol, the station's serial link to a board, and a virtual board
//! on a pseudo-terminal for tests and the demo.
//!
//! # Layout
//!
//! - [`codec`]: frame layout, CRC-32, COBS framing, the streaming frame assembler.
//! - [`protocol`]: commands, responses, slots, error codes and their byte layouts.
//! - [`window`]: the PUT send window (in-flight frames, RX-buffer budget), no I/O.
//! - [`link`]: [`JigLink`], the station side: blocking, one OS thread per port.
//! - [`port`]: port settings, the byte transport, port listing.
//! - [`error`]: [`JigError`], what went wrong and what the operator should do.

pub mod codec;
pub mod error;
pub mod link;
mod pem;
pub mod port;
pub mod protocol;
pub mod window;

pub use error::JigError;
pub use link::{BoardInfo, JigLink, LinkStats, SlotWrite, WriteReport};
pub use port::{DataBits, FlowControl, Parity, PortInfo, PortSettings, StopBits, list_ports};
pub use protocol::{CsrSubject, ErrorCode, Slot};
