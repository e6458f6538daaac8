//! Jig drivers: how the station talks to the firmware of a board on a jig. One trait,
//! [`JigDriver`], and one implementation per protocol, picked per port by [`DriverKind`]
//! (`[[jigs.ports]] driver`, `jigs.driver` / `--driver` for a virtual line):
//!
//! - `fleet-jig` (default): our own jig protocol ([`JigLink`], `docs/jig-protocol.md`).
//! - `nrf91-at`: the Nordic nRF91 modem's AT commands (`AT%CMNG`, `AT%KEYGEN`), as
//!   Nordic's nRF Cloud Utils and `nrfcredstore` drive them ([`Nrf91At`]).
//! - `zephyr-cred`: Zephyr's TLS-credentials shell (`cred buf`, `cred add`, `cred list`)
//!   ([`ZephyrCred`]).
//!
//! A driver reports the board's identity, says which items it already holds (skip), writes
//! the credential set and proves the write with a digest the board computes, and, where the
//! board can, returns a CSR for a key made on the board. The station's jig cycle
//! (`src/station/jig_cycle.rs`) talks to this trait only. `docs/jig-drivers.md` describes
//! each driver's exchange and what it does not support.
//!
//! # Layout
//!
//! - this file: the trait, [`DriverKind`], [`BoardIdentity`], [`DriverOptions`].
//! - `fleet`: the trait over [`JigLink`].
//! - `nrf91`: [`Nrf91At`], the AT-command driver, and its line handling.
//! - `zephyr/`: [`ZephyrCred`], the Zephyr shell driver, and the shell's text (shared with
//!   the emulated shell).

use std::fmt;

use crate::error::JigError;
use crate::link::{JigLink, PortSettings, SlotWrite};
use crate::wire::protocol::{CsrSubject, Slot};

mod fleet;
mod nrf91;

pub(crate) use nrf91::cmng_type;
pub use nrf91::{NRF91_DEFAULT_SEC_TAG, Nrf91At, Nrf91Options};
pub(crate) mod zephyr;

pub use zephyr::{
    ZEPHYR_DEFAULT_PROMPT, ZEPHYR_DEFAULT_SEC_TAG, ZEPHYR_MAX_CHUNK, ZephyrCred, ZephyrOptions,
};

/// Which driver a port uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriverKind {
    /// Our jig protocol (`docs/jig-protocol.md`).
    #[default]
    FleetJig,
    /// Nordic nRF91 modem AT commands.
    Nrf91At,
    /// Zephyr's TLS-credentials shell.
    ZephyrCred,
}

impl DriverKind {
    /// Every driver, by its name.
    pub const ALL: [DriverKind; 3] = [
        DriverKind::FleetJig,
        DriverKind::Nrf91At,
        DriverKind::ZephyrCred,
    ];

    /// `fleet-jig`, `nrf91-at`, `zephyr-cred`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DriverKind::FleetJig => "fleet-jig",
            DriverKind::Nrf91At => "nrf91-at",
            DriverKind::ZephyrCred => "zephyr-cred",
        }
    }

    /// The driver named `name`.
    pub fn parse(name: &str) -> Option<DriverKind> {
        DriverKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The items this driver writes; the others have no place in the board's store (see
    /// `docs/jig-drivers.md`: the firmware derives them).
    pub fn writes(self, slot: Slot) -> bool {
        match self {
            DriverKind::FleetJig => true,
            // The modem's and Zephyr's credential stores hold certificates and keys only.
            DriverKind::Nrf91At | DriverKind::ZephyrCred => {
                matches!(slot, Slot::Certificate | Slot::PrivateKey | Slot::RootCa)
            }
        }
    }

    /// Opens the port at `path` with this driver.
    pub fn open(
        self,
        path: &str,
        settings: &PortSettings,
        options: &DriverOptions,
    ) -> Result<Box<dyn JigDriver>, JigError> {
        Ok(match self {
            DriverKind::FleetJig => Box::new(JigLink::open(path, settings)?),
            DriverKind::Nrf91At => Box::new(Nrf91At::open(path, settings, options.nrf91.clone())?),
            DriverKind::ZephyrCred => {
                Box::new(ZephyrCred::open(path, settings, options.zephyr.clone())?)
            }
        })
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-port options of the drivers that have any.
#[derive(Debug, Clone, Default)]
pub struct DriverOptions {
    pub nrf91: Nrf91Options,
    pub zephyr: ZephyrOptions,
}

/// Who the board on the jig is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardIdentity {
    /// The board's serial number, or the modem's IMEI: the ledger's key.
    pub serial: String,
    /// The board's MAC address, where it has one.
    pub mac: Option<String>,
    /// Hardware revision, where the board says.
    pub hw_rev: Option<String>,
    /// Firmware (or modem firmware) version.
    pub fw_version: String,
}

/// What a verified write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverWrite {
    /// Item bytes sent (each once, retransmissions excluded).
    pub bytes: usize,
}

/// One protocol's way of provisioning a board on a jig. Blocking; one OS thread a port.
pub trait JigDriver: Send {
    /// Which driver this is.
    fn kind(&self) -> DriverKind;

    /// Identifies the board on the jig. `Err(JigError::NoBoard)` when nothing answers.
    fn identify(&mut self) -> Result<BoardIdentity, JigError>;

    /// Has the board make a key that never leaves it and returns a CSR for it (PEM). The next
    /// write goes with that key.
    fn gen_csr(&mut self, subject: &CsrSubject) -> Result<String, JigError>;

    /// Which of `items` the board already holds, byte for byte, by the digest it computes.
    fn held(&mut self, items: &[SlotWrite<'_>]) -> Result<Vec<Slot>, JigError>;

    /// Writes `items` and proves them with digests the board computes: `Ok` only when every
    /// item the board holds is what was sent. `progress(done, total)` in item bytes.
    fn write_and_verify(
        &mut self,
        items: &[SlotWrite<'_>],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<DriverWrite, JigError>;

    /// Retransmissions (frames or commands sent again) since the port was opened.
    fn retransmissions(&self) -> u64;

    /// Lets the board go (reboot into its new identity, or back into its normal mode).
    fn release(&mut self) -> Result<(), JigError>;
}
