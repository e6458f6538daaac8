//! The emulated nRF91 AT host on a pty: [`VirtualModem`] serves nRF91 modems (one placed at
//! a time, from a queue) on a pseudo-terminal, as `VirtualJig` serves our own boards, so the
//! `nrf91-at` driver runs end to end against it through a real serial port.
//!
//! # Layout
//!
//! - `modem`: the modem and its AT commands as a state machine without I/O ([`ModemSpec`],
//!   [`ModemFaults`]).
//! - `host`: the pty thread: the AT host's line handling (terminator outside quotes, the
//!   4096-byte line limit), the line paced at the baud rate, boards on and off the jig.
//! - `imei`: IMEIs for a virtual line (new each run, or the same with
//!   `jigs.stamp_serials = false`).

mod host;
mod imei;
mod modem;

pub use host::{ModemStore, VirtualModem, VirtualModemConfig};
pub use imei::imeis;
pub use modem::{ModemFaults, ModemSpec};
