//! Serial jigs: the jig protocol, the station's serial link to a board, and a virtual board
//! on a pseudo-terminal for tests and the demo.
//!
//! The protocol is specified for firmware teams in `docs/jig-protocol.md`.
//!
//! # Layout
//!
//! - [`codec`]: frame layout, CRC-32, COBS framing, the streaming frame assembler.
//! - [`protocol`]: commands, responses, slots, error codes and their byte layouts.
//! - [`window`]: the send window of a pipelined write (PUTs and the COMMIT behind them, their
//!   RX-buffer budget), no I/O.
//! - [`link`]: [`JigLink`], the station side: blocking, one OS thread per port.
//! - [`port`]: port settings, the byte transport, port listing.
//! - [`error`]: [`JigError`], what went wrong and what the operator should do.
//! - [`board`]: the board side as a state machine, no I/O.
//! - [`flash`]: a virtual board's committed slots in a file, written atomically.
//! - [`virtual_board`]: [`VirtualJig`], boards served on a pty behind a stable path (with
//!   unplug/replug of the adapter), an exact line model and faults.
//! - [`faults`], [`pacing`]: fault injection and the exact line-rate model for the virtual jig.
//! - [`line`](mod@line): serial-number generator for a virtual line.
//! - [`sim`]: `station sim-board` ([`run_sim_board`]).

pub mod board;
pub mod codec;
#[cfg(test)]
mod doc_examples;
pub mod error;
pub mod faults;
pub mod flash;
pub mod line;
pub mod link;
pub mod pacing;
mod pem;
pub mod port;
pub mod protocol;
pub mod sim;
pub mod virtual_board;
pub mod window;

pub use board::{BoardParams, BoardSpec};
pub use error::JigError;
pub use faults::FaultConfig;
pub use flash::Flash;
pub use line::SerialGenerator;
pub use link::{BoardInfo, JigLink, LinkStats, SlotWrite, WriteReport};
pub use port::{DataBits, FlowControl, Parity, PortInfo, PortSettings, StopBits, list_ports};
pub use protocol::{CsrSubject, ErrorCode, Slot};
pub use sim::{SimBoardOptions, run_sim_board, serve_sim_board};
pub use virtual_board::{JigStats, VirtualJig, VirtualJigConfig};
