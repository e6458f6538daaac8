//! `station sim-board`: one virtual jig with a board on a pty, served until Ctrl-C, so the
//! station (or a person with a terminal program) can be pointed at it like a real jig.

use std::path::PathBuf;

use crossbeam_channel::Receiver;

use super::board::BoardParams;
use super::faults::FaultConfig;
use super::serials::SerialGenerator;
use super::virtual_jig::{VirtualJig, VirtualJigConfig};
use crate::error::JigError;

/// Options of `station sim-board`.
#[derive(Debug, Clone)]
pub struct SimBoardOptions {
    /// Where board flash files go.
    pub flash_dir: PathBuf,
    /// Serial prefix; the first board is `{prefix}{first:06}`.
    pub serial_prefix: String,
    pub first: u64,
    /// Boards to serve one after the other (a board is taken off after RESET once it holds an
    /// identity); 0 = an endless supply.
    pub boards: u64,
    pub hw_rev: String,
    /// Emulated line rate; 0 = unpaced.
    pub baud: u32,
    pub params: BoardParams,
    pub faults: FaultConfig,
}

impl Default for SimBoardOptions {
    fn default() -> Self {
        SimBoardOptions {
            flash_dir: PathBuf::from("sim-flash"),
            serial_prefix: "SIM-".to_string(),
            first: 1,
            boards: 1,
            hw_rev: "A".to_string(),
            baud: 115_200,
            params: BoardParams::default(),
            faults: FaultConfig::default(),
        }
    }
}

/// Serves a virtual board until Ctrl-C. Prints the pty path to open on stdout.
pub fn run_sim_board(options: &SimBoardOptions) -> Result<(), JigError> {
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    std::thread::Builder::new()
        .name("sim-board ctrl-c".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                let _ = stop_tx.send(());
            }
        })
        .map_err(|e| JigError::Fixture {
            detail: format!("cannot start the Ctrl-C listener: {e}"),
        })?;
    serve_sim_board(options, stop_rx, |jig| {
        println!(
            "virtual jig ready: open {} (flash files in {}); Ctrl-C to stop",
            jig.path(),
            options.flash_dir.display()
        );
    })
}

/// Serves a virtual board until `stop` receives a message or is disconnected. `ready` is
/// called once the pty exists.
pub fn serve_sim_board(
    options: &SimBoardOptions,
    stop: Receiver<()>,
    ready: impl FnOnce(&VirtualJig),
) -> Result<(), JigError> {
    let mut config = VirtualJigConfig::new(&options.flash_dir);
    config.baud = options.baud;
    config.params = options.params;
    config.faults = options.faults.clone();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let generator =
        SerialGenerator::new(&options.serial_prefix, 6, options.first).hw_rev(&options.hw_rev);
    let count = if options.boards == 0 {
        u64::MAX
    } else {
        options.boards
    };
    // Feeds boards as the jig takes them; ends when the jig is gone or the supply is done.
    std::thread::Builder::new()
        .name("sim-board supply".into())
        .spawn(move || {
            for spec in generator.take(count.min(usize::MAX as u64) as usize) {
                if tx.send(spec).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| JigError::Fixture {
            detail: format!("cannot start the board supply: {e}"),
        })?;
    let jig = VirtualJig::spawn(config, rx)?;
    ready(&jig);
    let _ = stop.recv();
    let stats = jig.stats();
    tracing::info!(
        boards = stats.boards_placed,
        frames = stats.frames_received,
        "virtual jig stopped"
    );
    // Dropping the jig closes the board channel, which ends the supply thread.
    jig.shutdown();
    Ok(())
}
