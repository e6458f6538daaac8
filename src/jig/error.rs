//! `JigError`: everything that can go wrong between the station and a board on a jig, each
//! variant saying what happened and, in `help`, what the operator should do.
//!
//! No variant carries slot contents: errors name slots, lengths and codes only.

use std::path::PathBuf;
use std::time::Duration;

use miette::Diagnostic;

use super::wire::protocol::{ErrorCode, Slot};

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum JigError {
    #[error("cannot open serial port {port}: {source}")]
    #[diagnostic(
        code(jig::open),
        help(
            "check that the jig's USB cable is plugged in and that {port} is the jig's port \
             (list the machine's serial ports to find it); on Linux the user needs to be in \
             the `dialout` group, and no other program may hold the port open"
        )
    )]
    Open {
        port: String,
        #[source]
        source: serialport::Error,
    },

    #[error("cannot list serial ports: {source}")]
    #[diagnostic(
        code(jig::list_ports),
        help("the system did not let us enumerate serial ports; check /sys/class/tty is readable")
    )]
    ListPorts {
        #[source]
        source: serialport::Error,
    },

    #[error("serial I/O on {port} failed: {source}")]
    #[diagnostic(
        code(jig::io),
        help(
            "the connection to jig {port} was lost: check its USB cable and hub, then reopen the port"
        )
    )]
    Io {
        port: String,
        #[source]
        source: std::io::Error,
    },

    #[error("no board answers on jig {port} (HELLO unanswered {tries} times)")]
    #[diagnostic(
        code(jig::no_board),
        help(
            "place a board on jig {port} and check that it is seated on the pogo pins and powered; \
             if a board is there, check the jig's USB cable and the baud rate in the station config"
        )
    )]
    NoBoard { port: String, tries: u32 },

    #[error("the board on jig {port} stopped answering {command} after {tries} tries")]
    #[diagnostic(
        code(jig::timeout),
        help(
            "the board was removed, lost power or crashed: reseat it on jig {port} and retry; \
             committed data is intact (COMMIT is atomic)"
        )
    )]
    Timeout {
        port: String,
        command: &'static str,
        tries: u32,
    },

    #[error(
        "the link to jig {port} is garbling frames: {command} failed {tries} times ({crc_errors} CRC errors)"
    )]
    #[diagnostic(
        code(jig::garbled),
        help(
            "the serial line is noisy: check the USB cable and jig wiring, lower the baud rate, \
             or check that station and board use the same baud rate"
        )
    )]
    Garbled {
        port: String,
        command: &'static str,
        tries: u32,
        crc_errors: u64,
    },

    #[error("the board on jig {port} refused {command}: {code} (slot {detail}): {text}")]
    #[diagnostic(
        code(jig::nak),
        help(
            "the board rejected the request; if it repeats, take the board off the line for analysis"
        )
    )]
    Nak {
        port: String,
        command: &'static str,
        code: ErrorCode,
        detail: u8,
        text: String,
    },

    #[error(
        "the board on jig {port} refused COMMIT {tries} times: its staged data was {code} \
         (frames lost or garbled on the line)"
    )]
    #[diagnostic(
        code(jig::commit_hash_mismatch),
        help(
            "the bytes the board received differ from what was sent, even after resending them \
             (line noise or a board fault); nothing was committed, the previous identity is \
             intact: retry the write, and if it repeats, check the jig's cable and baud rate"
        )
    )]
    CommitHashMismatch {
        port: String,
        /// INCOMPLETE or HASH_MISMATCH, as the board said the last time.
        code: ErrorCode,
        tries: u32,
    },

    #[error("the board on jig {port} refused COMMIT ({code}{slot_text}): {text}")]
    #[diagnostic(
        code(jig::commit_refused),
        help(
            "nothing was committed and the previous identity is intact; the board may be \
             write-protected or already provisioned: set it aside for analysis"
        )
    )]
    CommitRefused {
        port: String,
        code: ErrorCode,
        slot_text: String,
        text: String,
    },

    #[error("the board on jig {port} rebooted during the operation: staged data was lost")]
    #[diagnostic(
        code(jig::board_rebooted),
        help(
            "the board reset itself (power glitch, watchdog or a loose contact on jig {port}); \
             its committed identity is intact: run the write again (a board-generated key needs \
             a new GEN_CSR)"
        )
    )]
    BoardRebooted { port: String },

    #[error("slot {slot} on jig {port} may not be read back")]
    #[diagnostic(
        code(jig::access_denied),
        help("the private-key slot is never readable; verify it by HASH instead")
    )]
    AccessDenied { port: String, slot: Slot },

    #[error(
        "read-back of slot {slot} on jig {port} does not match what was written \
         (board has {found_len} bytes, expected {expected_len})"
    )]
    #[diagnostic(
        code(jig::verify_mismatch),
        help(
            "the board holds different data in slot {slot} than the station wrote: do not ship \
             this board; erase and rewrite it, and if it repeats, set it aside (flash fault)"
        )
    )]
    VerifyMismatch {
        port: String,
        slot: Slot,
        expected_len: usize,
        found_len: usize,
    },

    #[error("the board on jig {port} speaks jig protocol v{found}, the station speaks v{expected}")]
    #[diagnostic(
        code(jig::version),
        help("update the board firmware or the station so both speak the same protocol version")
    )]
    Version {
        port: String,
        found: u8,
        expected: u8,
    },

    #[error(
        "the board on jig {port} sent a malformed or unexpected response to {command}: {detail}"
    )]
    #[diagnostic(
        code(jig::protocol),
        help("the board firmware does not follow jig protocol v1; check its version (HELLO)")
    )]
    Protocol {
        port: String,
        command: &'static str,
        detail: String,
    },

    #[error("cannot write {len} bytes to slot {slot}: {reason}")]
    #[diagnostic(
        code(jig::bad_request),
        help(
            "this is a station-side input problem: check what the pipeline hands to the jig writer"
        )
    )]
    BadRequest {
        slot: Slot,
        len: usize,
        reason: &'static str,
    },

    #[error("the board on jig {port} cannot generate a key and CSR")]
    #[diagnostic(
        code(jig::no_gen_csr),
        help("set the station to generate keys itself (key pool) for this board type")
    )]
    NoGenCsr { port: String },

    #[error("virtual board flash {path}: {detail}")]
    #[diagnostic(
        code(jig::flash),
        help("check that the flash directory exists, is writable, and the disk is not full")
    )]
    Flash { path: PathBuf, detail: String },

    #[error("cannot create the virtual jig: {detail}")]
    #[diagnostic(
        code(jig::fixture),
        help("pseudo-terminals must be available (/dev/ptmx); check the container allows them")
    )]
    Fixture { detail: String },
}

impl JigError {
    /// How long the station may reasonably wait before retrying the whole operation, when
    /// the error is transient; `None` when an operator must act first.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            JigError::BoardRebooted { .. }
            | JigError::CommitHashMismatch { .. }
            | JigError::Garbled { .. } => Some(Duration::from_millis(100)),
            _ => None,
        }
    }
}
