//! Serial jigs: the jig protocol, the station's serial link to a board, and a board simulator
//! (a virtual board on a pseudo-terminal) for tests and the demo.
//!
//! The protocol is specified for firmware teams in `docs/jig-protocol.md`.
//!
//! # Layout
//!
//! Three jobs in three folders, which share only the wire and [`error`]:
//!
//! - [`wire`]: the protocol as bytes: framing (`codec`) and messages (`protocol`), no I/O.
//! - [`link`]: [`JigLink`], the station side: blocking, one OS thread per port; its port
//!   settings and port listing.
//! - [`sim`]: the board simulator: the board's state machine, its flash, the virtual jig
//!   ([`VirtualJig`]) with its line model and faults, the serial-number supply, and
//!   `station sim-board`.
//! - [`error`]: [`JigError`], what went wrong and what the operator should do.

pub mod error;
pub mod link;
pub mod sim;
pub mod wire;

pub use error::{JigError, JigFailure};
pub use link::port::{DataBits, FlowControl, Parity, PortInfo, PortSettings, StopBits, list_ports};
pub use link::{BoardInfo, JigLink, LinkStats, SlotWrite, WriteReport};
pub use sim::{
    BoardParams, BoardSpec, FaultConfig, Flash, JigStats, SerialGenerator, SimBoardOptions,
    VirtualJig, VirtualJigConfig, run_sim_board, serve_sim_board,
};
pub use wire::protocol::{CsrSubject, ErrorCode, Slot};
