//! The emulated Zephyr board on a pty for the `zephyr-cred` driver: [`VirtualZephyr`]
//! serves Zephyr boards (one placed at a time, from a queue) behind a stable path, each
//! running the shell with the TLS-credentials commands, as `VirtualJig` serves our own boards.
//!
//! # Layout
//!
//! - `shell`: the board: its shell and `cred` commands as a state machine without I/O
//!   ([`ZephyrSpec`]: what its firmware was built with).
//! - `host`: the pty thread: the line paced at the baud rate, the serial backend's RX ring
//!   and its overruns, faults per command line, boards on and off the jig; [`devids`].

mod host;
mod shell;

pub use host::{VirtualZephyr, VirtualZephyrConfig, ZephyrStats, devids};
pub use shell::ZephyrSpec;
