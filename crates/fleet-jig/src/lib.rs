//! Serial jigs: the jig protocol, the station's serial link to a board, and a board simulator
//! (a virtual board on a pseudo-terminal) for tests and the demo.
//!
//! The protocol is specified for firmware teams in `docs/jig-protocol.md`.
//!
//! # Layout
//!
//! Three jobs in three folders, which share only the wire and the error type:
//!
//! - [`wire`] (`wire/`): the protocol as bytes, no I/O: framing (`codec`), the vocabulary
//!   (`protocol`: codes, slots, error codes, digests), the [`wire::Command`] and
//!   [`wire::Response`] messages and the [`wire::Message`] trait that frames and parses both.
//! - `link/`: [`JigLink`], the station side: blocking, one OS thread per port; the
//!   retransmission rules as state machines without I/O, the send window of a pipelined
//!   write, the blocking I/O that feeds them, and the port ([`PortSettings`],
//!   [`list_ports`]).
//! - `sim/`: the board simulator: the board's state machine, its flash ([`Flash`]), the
//!   virtual jig ([`VirtualJig`]) with its UART model and faults ([`FaultConfig`]), the
//!   serial-number supply ([`SerialGenerator`]), and `station sim-board` ([`run_sim_board`]).
//! - `driver/`: [`JigDriver`], the station's one way to provision a board on a jig, and a
//!   driver per protocol ([`DriverKind`]): our own (`fleet-jig`, over [`JigLink`]), the
//!   nRF91 modem's AT commands (`nrf91-at`, [`Nrf91At`]) and Zephyr's TLS-credentials shell
//!   (`zephyr-cred`, [`ZephyrCred`]; its emulated board is [`VirtualZephyr`]).
//! - `error.rs`: [`JigError`], what went wrong and what the operator should do, and its kind
//!   [`JigFailure`].
//!
//! Everything the station, the tests and the benches use is re-exported here; `wire` is
//! public for those that speak the protocol byte by byte (tests, benches, tools).

#![warn(unreachable_pub)]

mod driver;
mod error;
mod link;
mod sim;
pub mod wire;

pub use driver::{
    BoardIdentity, DriverKind, DriverOptions, DriverWrite, JigDriver, NRF91_DEFAULT_SEC_TAG,
    Nrf91At, Nrf91Options, ZEPHYR_DEFAULT_PROMPT, ZEPHYR_DEFAULT_SEC_TAG, ZEPHYR_MAX_CHUNK,
    ZephyrCred, ZephyrOptions,
};
pub use error::{JigError, JigFailure};
pub use link::{
    BoardInfo, DataBits, FlowControl, JigLink, LinkStats, Parity, PortInfo, PortSettings,
    SlotWrite, StopBits, Transport, WriteReport, line_time, list_ports, open_port,
};
pub use sim::{
    BoardParams, BoardSpec, FaultConfig, Flash, JigStats, ModemFaults, ModemSpec, ModemStore,
    SerialGenerator, SimBoardOptions, VirtualJig, VirtualJigConfig, VirtualModem,
    VirtualModemConfig, VirtualZephyr, VirtualZephyrConfig, ZephyrSpec, ZephyrStats, devids, imeis,
    run_sim_board, serve_sim_board,
};
pub use wire::protocol::{CsrSubject, ErrorCode, Slot};
