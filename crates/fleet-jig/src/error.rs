//! `JigError`: everything that can go wrong between the station and a board on a jig, each
//! variant saying what happened and, in `help`, what the operator should do. Its diagnostic
//! codes are `station::jig::<kind>`; [`JigError::failure`] gives the kind as a
//! [`JigFailure`], whose [`as_str`](JigFailure::as_str) is that last segment (what reports
//! and the ledger record).
//!
//! No variant carries slot contents: errors name slots, lengths and codes only.

use std::path::PathBuf;

use miette::Diagnostic;

use super::wire::protocol::{ErrorCode, Slot};

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum JigError {
    #[error("cannot open serial port {port}: {source}")]
    #[diagnostic(
        code(station::jig::open),
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
        code(station::jig::list_ports),
        help("the system did not let us enumerate serial ports; check /sys/class/tty is readable")
    )]
    ListPorts {
        #[source]
        source: serialport::Error,
    },

    #[error("serial I/O on {port} failed: {source}")]
    #[diagnostic(
        code(station::jig::io),
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
        code(station::jig::no_board),
        help(
            "place a board on jig {port} and check that it is seated on the pogo pins and powered; \
             if a board is there, check the jig's USB cable and the baud rate in the station config"
        )
    )]
    NoBoard { port: String, tries: u32 },

    #[error("the board on jig {port} stopped answering {command} after {tries} tries")]
    #[diagnostic(
        code(station::jig::timeout),
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
        code(station::jig::garbled),
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
        code(station::jig::nak),
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
        code(station::jig::commit_hash_mismatch),
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
        code(station::jig::commit_refused),
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
        code(station::jig::board_rebooted),
        help(
            "the board reset itself (power glitch, watchdog or a loose contact on jig {port}); \
             its committed identity is intact: run the write again (a board-generated key needs \
             a new GEN_CSR)"
        )
    )]
    BoardRebooted { port: String },

    #[error("slot {slot} on jig {port} may not be read back")]
    #[diagnostic(
        code(station::jig::access_denied),
        help("the private-key slot is never readable; verify it by HASH instead")
    )]
    AccessDenied { port: String, slot: Slot },

    #[error(
        "read-back of slot {slot} on jig {port} does not match what was written \
         (board has {found_len} bytes, expected {expected_len})"
    )]
    #[diagnostic(
        code(station::jig::verify_mismatch),
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

    #[error("the modem on jig {port} refused {command}: {}{meaning}", code.map(|c| format!("+CME ERROR: {c}, ")).unwrap_or_default())]
    #[diagnostic(
        code(station::jig::at_refused),
        help(
            "the board's AT host or modem refused the command: check the board runs an nRF91 \
             image with the AT host (CONFIG_AT_HOST_LIBRARY) or the Serial Modem application, \
             modem firmware 1.3.2 or later, and the security tag configured for the port"
        )
    )]
    AtRefused {
        port: String,
        command: String,
        code: Option<u32>,
        meaning: &'static str,
    },

    #[error("the modem on jig {port} is not offline: {detail}")]
    #[diagnostic(
        code(station::jig::modem_not_offline),
        help(
            "credentials are written and deleted only while the modem is not activated \
             (AT+CFUN=4): check that the firmware does not switch the modem back on while the \
             jig works, then retry the board"
        )
    )]
    ModemNotOffline { port: String, detail: String },

    #[error(
        "slot {slot} already exists on the board on jig {port} and could not be replaced: {detail}"
    )]
    #[diagnostic(
        code(station::jig::item_exists),
        help(
            "the board refuses to overwrite a stored credential and refused to delete it: \
             retry the board; if it repeats, clear the security tag by hand (AT%CMNG=3) or \
             set the board aside"
        )
    )]
    ItemExists {
        port: String,
        slot: Slot,
        detail: String,
    },

    #[error("the digest of slot {slot} on jig {port} does not match what was sent: {detail}")]
    #[diagnostic(
        code(station::jig::digest_mismatch),
        help(
            "the board holds different bytes than the station wrote: the board is not \
             verified; retry it, and if it repeats, set it aside"
        )
    )]
    DigestMismatch {
        port: String,
        slot: Slot,
        detail: String,
    },

    #[error("the board on jig {port} speaks jig protocol v{found}, the station speaks v{expected}")]
    #[diagnostic(
        code(station::jig::version),
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
        code(station::jig::protocol),
        help("the board firmware does not follow jig protocol v1; check its version (HELLO)")
    )]
    Protocol {
        port: String,
        command: &'static str,
        detail: String,
    },

    #[error("cannot write {len} bytes to slot {slot}: {reason}")]
    #[diagnostic(
        code(station::jig::bad_request),
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
        code(station::jig::no_gen_csr),
        help("set the station to generate keys itself (key pool) for this board type")
    )]
    NoGenCsr { port: String },

    #[error(
        "the board on jig {port} has no room for slot {slot} in its credential buffer \
         ({needed} characters of base64 to buffer): {text}"
    )]
    #[diagnostic(
        code(station::jig::cred_buffer_too_small),
        help(
            "rebuild the board's firmware with CONFIG_TLS_CREDENTIALS_SHELL_CRED_BUF_SIZE of at \
             least {needed} + 1 (Zephyr's default 1024 cannot take Amazon Root CA 1, whose \
             base64 is 1584 characters; 2048 is enough for a root CA), or bake the root CA into \
             the firmware so the station finds it held and skips it"
        )
    )]
    CredBufferTooSmall {
        port: String,
        slot: Slot,
        needed: usize,
        text: String,
    },

    #[error("the board on jig {port} refused `{command}`: {text}")]
    #[diagnostic(
        code(station::jig::shell_refused),
        help(
            "the board's Zephyr shell answered with an error: check that the firmware has \
             CONFIG_TLS_CREDENTIALS_SHELL (and CONFIG_HWINFO_SHELL for the device id), room for \
             one more credential (CONFIG_TLS_MAX_CREDENTIALS_NUMBER) and a working credential \
             backend; nothing not verified is recorded as verified"
        )
    )]
    ShellRefused {
        port: String,
        command: String,
        text: String,
    },

    #[error("the line to the board on jig {port} lost or garbled `{command}`: {detail}")]
    #[diagnostic(
        code(station::jig::shell_line_lost),
        help(
            "characters were lost between the station and the board's shell (its RX ring \
             overflowed, or the line is noisy): the station waits for each answer, so check \
             the cable and baud rate, or raise CONFIG_SHELL_BACKEND_SERIAL_RX_RING_BUFFER_SIZE"
        )
    )]
    ShellLineLost {
        port: String,
        command: String,
        detail: String,
    },

    #[error("virtual board flash {path}: {detail}")]
    #[diagnostic(
        code(station::jig::flash),
        help("check that the flash directory exists, is writable, and the disk is not full")
    )]
    Flash { path: PathBuf, detail: String },

    #[error("cannot create the virtual jig: {detail}")]
    #[diagnostic(
        code(station::jig::fixture),
        help("pseudo-terminals must be available (/dev/ptmx); check the container allows them")
    )]
    Fixture { detail: String },
}

/// The kind of a [`JigError`], without its details: one variant per `JigError` variant. Its
/// [`as_str`](Self::as_str) is the last segment of the error's diagnostic code, the short
/// name failure reports and the ledger record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JigFailure {
    /// `open`: the serial port could not be opened.
    Open,
    /// `list_ports`: the serial ports could not be listed.
    ListPorts,
    /// `io`: serial I/O failed (the adapter is gone).
    Io,
    /// `no_board`: nothing answered HELLO: no board on the jig.
    NoBoard,
    /// `timeout`: the board stopped answering.
    Timeout,
    /// `garbled`: the line garbled frames until the tries ran out.
    Garbled,
    /// `nak`: the board refused a command.
    Nak,
    /// `commit_hash_mismatch`: the board kept finding its staged data incomplete or different at COMMIT.
    CommitHashMismatch,
    /// `commit_refused`: the board refused to commit.
    CommitRefused,
    /// `board_rebooted`: the board rebooted during the operation.
    BoardRebooted,
    /// `access_denied`: the slot may not be read back.
    AccessDenied,
    /// `verify_mismatch`: the board holds other bytes than were written.
    VerifyMismatch,
    /// `at_refused`: the modem answered `ERROR` or `+CME ERROR`.
    AtRefused,
    /// `modem_not_offline`: the modem could not be taken offline for a credential write.
    ModemNotOffline,
    /// `item_exists`: a stored credential could not be deleted to be written again.
    ItemExists,
    /// `digest_mismatch`: the digest the board computes differs from the station's.
    DigestMismatch,
    /// `version`: station and board speak different protocol versions.
    Version,
    /// `protocol`: the board sent a malformed or unexpected answer.
    Protocol,
    /// `bad_request`: the station asked for a write the board would refuse.
    BadRequest,
    /// `no_gen_csr`: the board cannot make its own key.
    NoGenCsr,
    /// `cred_buffer_too_small`: an item does not fit the Zephyr shell's credential buffer.
    CredBufferTooSmall,
    /// `shell_refused`: the Zephyr shell answered a command with an error.
    ShellRefused,
    /// `shell_line_lost`: characters were lost on the way to the Zephyr shell.
    ShellLineLost,
    /// `flash`: a virtual board's flash file could not be used.
    Flash,
    /// `fixture`: a virtual jig could not be set up.
    Fixture,
}

impl JigFailure {
    /// The short name: `no_board`, `verify_mismatch`, `timeout`, ….
    pub const fn as_str(self) -> &'static str {
        match self {
            JigFailure::Open => "open",
            JigFailure::ListPorts => "list_ports",
            JigFailure::Io => "io",
            JigFailure::NoBoard => "no_board",
            JigFailure::Timeout => "timeout",
            JigFailure::Garbled => "garbled",
            JigFailure::Nak => "nak",
            JigFailure::CommitHashMismatch => "commit_hash_mismatch",
            JigFailure::CommitRefused => "commit_refused",
            JigFailure::BoardRebooted => "board_rebooted",
            JigFailure::AccessDenied => "access_denied",
            JigFailure::VerifyMismatch => "verify_mismatch",
            JigFailure::AtRefused => "at_refused",
            JigFailure::ModemNotOffline => "modem_not_offline",
            JigFailure::ItemExists => "item_exists",
            JigFailure::DigestMismatch => "digest_mismatch",
            JigFailure::Version => "version",
            JigFailure::Protocol => "protocol",
            JigFailure::BadRequest => "bad_request",
            JigFailure::NoGenCsr => "no_gen_csr",
            JigFailure::CredBufferTooSmall => "cred_buffer_too_small",
            JigFailure::ShellRefused => "shell_refused",
            JigFailure::ShellLineLost => "shell_line_lost",
            JigFailure::Flash => "flash",
            JigFailure::Fixture => "fixture",
        }
    }
}

impl std::fmt::Display for JigFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JigError {
    /// What kind of failure this is, for counting and reporting it.
    pub fn failure(&self) -> JigFailure {
        match self {
            JigError::Open { .. } => JigFailure::Open,
            JigError::ListPorts { .. } => JigFailure::ListPorts,
            JigError::Io { .. } => JigFailure::Io,
            JigError::NoBoard { .. } => JigFailure::NoBoard,
            JigError::Timeout { .. } => JigFailure::Timeout,
            JigError::Garbled { .. } => JigFailure::Garbled,
            JigError::Nak { .. } => JigFailure::Nak,
            JigError::CommitHashMismatch { .. } => JigFailure::CommitHashMismatch,
            JigError::CommitRefused { .. } => JigFailure::CommitRefused,
            JigError::BoardRebooted { .. } => JigFailure::BoardRebooted,
            JigError::AccessDenied { .. } => JigFailure::AccessDenied,
            JigError::VerifyMismatch { .. } => JigFailure::VerifyMismatch,
            JigError::AtRefused { .. } => JigFailure::AtRefused,
            JigError::ModemNotOffline { .. } => JigFailure::ModemNotOffline,
            JigError::ItemExists { .. } => JigFailure::ItemExists,
            JigError::DigestMismatch { .. } => JigFailure::DigestMismatch,
            JigError::Version { .. } => JigFailure::Version,
            JigError::Protocol { .. } => JigFailure::Protocol,
            JigError::BadRequest { .. } => JigFailure::BadRequest,
            JigError::NoGenCsr { .. } => JigFailure::NoGenCsr,
            JigError::CredBufferTooSmall { .. } => JigFailure::CredBufferTooSmall,
            JigError::ShellRefused { .. } => JigFailure::ShellRefused,
            JigError::ShellLineLost { .. } => JigFailure::ShellLineLost,
            JigError::Flash { .. } => JigFailure::Flash,
            JigError::Fixture { .. } => JigFailure::Fixture,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One error of every kind.
    fn one_of_each() -> Vec<JigError> {
        let port = || "/dev/ttyUSB0".to_string();
        let serial = || serialport::Error::new(serialport::ErrorKind::NoDevice, "gone");
        vec![
            JigError::Open {
                port: port(),
                source: serial(),
            },
            JigError::ListPorts { source: serial() },
            JigError::Io {
                port: port(),
                source: std::io::Error::other("gone"),
            },
            JigError::NoBoard {
                port: port(),
                tries: 4,
            },
            JigError::Timeout {
                port: port(),
                command: "PUT",
                tries: 4,
            },
            JigError::Garbled {
                port: port(),
                command: "PUT",
                tries: 4,
                crc_errors: 2,
            },
            JigError::Nak {
                port: port(),
                command: "READ",
                code: ErrorCode::OutOfRange,
                detail: 1,
                text: "no".into(),
            },
            JigError::CommitHashMismatch {
                port: port(),
                code: ErrorCode::Incomplete,
                tries: 4,
            },
            JigError::CommitRefused {
                port: port(),
                code: ErrorCode::CommitRefused,
                slot_text: String::new(),
                text: "locked".into(),
            },
            JigError::BoardRebooted { port: port() },
            JigError::AccessDenied {
                port: port(),
                slot: Slot::PrivateKey,
            },
            JigError::VerifyMismatch {
                port: port(),
                slot: Slot::RootCa,
                expected_len: 2,
                found_len: 2,
            },
            JigError::AtRefused {
                port: port(),
                command: "AT+CFUN=4".into(),
                code: Some(528),
                meaning: "power-off warning active",
            },
            JigError::ModemNotOffline {
                port: port(),
                detail: "518".into(),
            },
            JigError::ItemExists {
                port: port(),
                slot: Slot::RootCa,
                detail: "514".into(),
            },
            JigError::DigestMismatch {
                port: port(),
                slot: Slot::Certificate,
                detail: "differs".into(),
            },
            JigError::Version {
                port: port(),
                found: 2,
                expected: 1,
            },
            JigError::Protocol {
                port: port(),
                command: "HELLO",
                detail: "short".into(),
            },
            JigError::BadRequest {
                slot: Slot::ThingName,
                len: 0,
                reason: "no content",
            },
            JigError::NoGenCsr { port: port() },
            JigError::CredBufferTooSmall {
                port: port(),
                slot: Slot::RootCa,
                needed: 1584,
                text: "Not enough room".into(),
            },
            JigError::ShellRefused {
                port: port(),
                command: "cred add 1 CA DEFAULT bint".into(),
                text: "Failed to add".into(),
            },
            JigError::ShellLineLost {
                port: port(),
                command: "cred buf".into(),
                detail: "echo differs".into(),
            },
            JigError::Flash {
                path: PathBuf::from("x.flash.json"),
                detail: "unreadable".into(),
            },
            JigError::Fixture {
                detail: "no pty".into(),
            },
        ]
    }

    #[test]
    fn every_error_has_a_station_jig_code_ending_in_its_failure_and_a_help_line() {
        let errors = one_of_each();
        let mut kinds: Vec<JigFailure> = errors.iter().map(JigError::failure).collect();
        for e in &errors {
            let code = e.code().map(|c| c.to_string()).unwrap_or_default();
            assert_eq!(code, format!("station::jig::{}", e.failure()), "{e:?}");
            let help = e.help().map(|h| h.to_string()).unwrap_or_default();
            assert!(!help.is_empty(), "{code} has no help");
        }
        kinds.sort_by_key(|k| k.as_str());
        kinds.dedup();
        assert_eq!(kinds.len(), errors.len(), "one error per kind");
    }

    /// The short names are what reports and ledgers already hold (`jig:<name>`): they do
    /// not change.
    #[test]
    fn failure_names_are_the_established_ones() {
        let names: Vec<&str> = one_of_each().iter().map(|e| e.failure().as_str()).collect();
        assert_eq!(
            names,
            [
                "open",
                "list_ports",
                "io",
                "no_board",
                "timeout",
                "garbled",
                "nak",
                "commit_hash_mismatch",
                "commit_refused",
                "board_rebooted",
                "access_denied",
                "verify_mismatch",
                "at_refused",
                "modem_not_offline",
                "item_exists",
                "digest_mismatch",
                "version",
                "protocol",
                "bad_request",
                "no_gen_csr",
                "cred_buffer_too_small",
                "shell_refused",
                "shell_line_lost",
                "flash",
                "fixture",
            ]
        );
    }
}
