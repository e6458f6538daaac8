//! The board simulator: a board's side of the protocol, its flash, and the virtual jig that
//! serves boards on a pseudo-terminal for tests, the demo and `station sim-board`.
//!
//! # Layout
//!
//! - [`board`]: the board side as a state machine, no I/O.
//! - [`flash`]: a virtual board's committed slots in a file, written atomically.
//! - [`virtual_jig`]: [`VirtualJig`], boards served on a pty behind a stable path (with
//!   unplug/replug of the adapter), by a board thread that runs the UART model.
//! - `uart`: the UART model of the virtual jig: the serial line each way at the baud rate
//!   exactly, and the board's bounded RX buffer; no I/O.
//! - [`faults`]: fault injection for the virtual jig.
//! - [`serials`]: [`SerialGenerator`], the board supply of a virtual line.
//! - [`sim_board`]: `station sim-board` ([`run_sim_board`]).
//! - `nrf91`: the emulated nRF91 AT host on a pty ([`VirtualModem`]) for the `nrf91-at`
//!   driver.
//! - `served`: the pty thread and stable path of the other drivers' emulated boards.
//! - `zephyr`: the emulated Zephyr shell on a pty ([`VirtualZephyr`]) for the `zephyr-cred`
//!   driver.

mod board;
mod faults;
mod flash;
mod nrf91;
mod serials;
mod served;
mod sim_board;
mod uart;
mod virtual_jig;
mod zephyr;

pub use board::{BoardParams, BoardSpec};
pub use faults::FaultConfig;
pub use flash::Flash;
pub use nrf91::{ModemFaults, ModemSpec, ModemStore, VirtualModem, VirtualModemConfig, imeis};
pub use serials::SerialGenerator;
pub use sim_board::{SimBoardOptions, run_sim_board, serve_sim_board};
pub use virtual_jig::{JigStats, VirtualJig, VirtualJigConfig};
pub use zephyr::{VirtualZephyr, VirtualZephyrConfig, ZephyrSpec, ZephyrStats, devids};
