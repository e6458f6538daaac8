//! `[jigs]` of `station.toml`: virtual boards or real ports, each port's serial settings and
//! credential driver, with their defaults. Checks that need the whole file are in the parent
//! module.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::jig::{
    DataBits, DriverKind, DriverOptions, FlowControl, NRF91_DEFAULT_SEC_TAG, Nrf91Options, Parity,
    PortSettings, StopBits, ZEPHYR_DEFAULT_SEC_TAG, ZephyrOptions,
};

/// The serial jigs: virtual boards on pseudo-terminals, or real ports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JigsSection {
    /// `"virtual"` (boards on ptys, the demo) or `"serial"` (the `ports` list).
    #[serde(default)]
    pub mode: JigMode,
    /// Number of virtual jigs.
    #[serde(default = "default_jig_count")]
    pub count: usize,
    /// Boards fed to the virtual line (`--boards` overrides).
    #[serde(default = "default_boards")]
    pub boards: usize,
    /// Line rate in baud (virtual boards emulate it; 0 = memory speed).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Milliseconds to wait for a board's answer before retrying a frame.
    #[serde(default = "default_jig_timeout")]
    pub timeout_ms: u64,
    /// Serial-number prefix of virtual boards.
    #[serde(default = "default_serial_prefix")]
    pub serial_prefix: String,
    /// Stamp virtual serials with the run's start time (`<prefix>-<stamp>-<n>`), so every run
    /// gets new boards. With `false` serials are `<prefix>-<n>` in every run and boards the
    /// ledger shows verified are not placed again — a restarted station finds the boards of
    /// the interrupted run where it left them.
    #[serde(default = "default_true")]
    pub stamp_serials: bool,
    /// Where virtual boards keep their flash files.
    #[serde(default = "default_flash_dir")]
    pub flash_dir: PathBuf,
    /// Real serial ports (`mode = "serial"`).
    #[serde(default)]
    pub ports: Vec<PortEntry>,
    /// Root CA written into each board's root-CA slot (PEM). Default: the endpoint's root CA.
    #[serde(default)]
    pub board_root_ca: Option<PathBuf>,
    /// Before writing, ask the board for the digests of the slots that are the same from board
    /// to board (root CA, device configuration) and leave out those it already holds (one
    /// HASH round trip). `false` writes every slot every time.
    #[serde(default = "default_true")]
    pub skip_held: bool,
    /// Virtual boards come with the board root CA already in flash, as firmware that bakes
    /// it in (`mode = "virtual"` only).
    #[serde(default)]
    pub boards_hold_root_ca: bool,
    /// The driver of the virtual line's jigs (`--driver` overrides): `"fleet-jig"` (our jig
    /// protocol, the default) or `"nrf91-at"` (emulated nRF91 modems behind their AT host).
    /// Real ports name theirs in `[[jigs.ports]] driver`.
    #[serde(default)]
    pub driver: DriverKind,
    /// `nrf91-at` on the virtual line: the security tag the credentials go to (default
    /// 16842753, nRF Cloud Utils' default). Real ports set theirs in `[[jigs.ports]]`.
    #[serde(default)]
    pub sec_tag: Option<u32>,
    /// `nrf91-at` on the virtual line: write the root CA (type 0) too (default `true`).
    #[serde(default)]
    pub write_root_ca: Option<bool>,
}

/// The nRF91 options from a port's (or the virtual line's) keys.
fn nrf91_options(sec_tag: Option<u32>, write_root_ca: Option<bool>) -> Nrf91Options {
    Nrf91Options {
        sec_tag: sec_tag.unwrap_or(NRF91_DEFAULT_SEC_TAG),
        write_root_ca: write_root_ca.unwrap_or(true),
    }
}

/// Largest security tag a station may use (larger ones are reserved for the modem).
pub(super) const MAX_SEC_TAG: u32 = 2_147_483_647;

/// One real jig: a named serial port and its line settings (default 8N1, no flow control,
/// `jigs.baud`, `jigs.timeout_ms`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortEntry {
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub baud: Option<u32>,
    #[serde(default)]
    pub parity: Option<ParityConfig>,
    #[serde(default)]
    pub flow_control: Option<FlowControlConfig>,
    /// 5, 6, 7 or 8.
    #[serde(default)]
    pub data_bits: Option<u8>,
    /// 1 or 2.
    #[serde(default)]
    pub stop_bits: Option<u8>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// How the station talks to the board's firmware: `"fleet-jig"` (default) or
    /// `"nrf91-at"` or `"zephyr-cred"` (see docs/jig-drivers.md).
    #[serde(default)]
    pub driver: DriverKind,
    /// `nrf91-at`, `zephyr-cred`: the security tag the credentials go to (default 16842753,
    /// the default of nRF Cloud Utils and of Zephyr's `tls_creds_installer.py`).
    #[serde(default)]
    pub sec_tag: Option<u32>,
    /// `nrf91-at`, `zephyr-cred`: write the root CA too (default `true`); `false` when the
    /// firmware provides it.
    #[serde(default)]
    pub write_root_ca: Option<bool>,
    /// `zephyr-cred`: the shell command whose output names the board (default
    /// `"hwinfo devid"`, whose `ID: 0x…` is the device id; another command's first line).
    #[serde(default)]
    pub identity_command: Option<String>,
    /// `zephyr-cred`: base64 characters per `cred buf` line (default 48, a multiple of 4).
    #[serde(default)]
    pub chunk: Option<usize>,
    /// `zephyr-cred`: send raw PEM with `cred buf load` where the shell has it (default
    /// `true`; a shell without it is noticed and sent base64 chunks).
    #[serde(default)]
    pub buf_load: Option<bool>,
}

impl JigsSection {
    /// The options of the virtual line's driver (`jigs.driver`), from this section.
    pub fn driver_options(&self) -> DriverOptions {
        match self.driver {
            DriverKind::FleetJig => DriverOptions::default(),
            DriverKind::Nrf91At => DriverOptions {
                nrf91: nrf91_options(self.sec_tag, self.write_root_ca),
                ..DriverOptions::default()
            },
            DriverKind::ZephyrCred => DriverOptions {
                zephyr: ZephyrOptions {
                    sec_tag: self.sec_tag.unwrap_or(ZEPHYR_DEFAULT_SEC_TAG),
                    write_root_ca: self.write_root_ca.unwrap_or(true),
                    ..ZephyrOptions::default()
                },
                ..DriverOptions::default()
            },
        }
    }

    /// Port settings for a jig at `baud`, with this section's answer timeout.
    pub fn port_settings(&self, baud: u32) -> PortSettings {
        PortSettings {
            baud,
            timeout: Duration::from_millis(self.timeout_ms),
            ..PortSettings::default()
        }
    }
}

impl PortEntry {
    /// The options of this port's driver.
    pub fn driver_options(&self) -> DriverOptions {
        match self.driver {
            DriverKind::FleetJig => DriverOptions::default(),
            DriverKind::Nrf91At => DriverOptions {
                nrf91: nrf91_options(self.sec_tag, self.write_root_ca),
                ..DriverOptions::default()
            },
            DriverKind::ZephyrCred => {
                let d = ZephyrOptions::default();
                DriverOptions {
                    zephyr: ZephyrOptions {
                        sec_tag: self.sec_tag.unwrap_or(d.sec_tag),
                        write_root_ca: self.write_root_ca.unwrap_or(d.write_root_ca),
                        identity_command: self
                            .identity_command
                            .clone()
                            .unwrap_or(d.identity_command),
                        chunk: self.chunk.unwrap_or(d.chunk),
                        buf_load: self.buf_load.unwrap_or(d.buf_load),
                        prompt: d.prompt,
                    },
                    ..DriverOptions::default()
                }
            }
        }
    }

    /// The settings this port is opened with: its own line settings over `jigs`' defaults.
    /// `data_bits` and `stop_bits` were checked when the configuration was loaded.
    pub fn settings(&self, jigs: &JigsSection) -> PortSettings {
        let mut s = jigs.port_settings(self.baud.unwrap_or(jigs.baud));
        if let Some(t) = self.timeout_ms {
            s.timeout = Duration::from_millis(t);
        }
        s.parity = match self.parity.unwrap_or(ParityConfig::None) {
            ParityConfig::None => Parity::None,
            ParityConfig::Even => Parity::Even,
            ParityConfig::Odd => Parity::Odd,
        };
        s.flow_control = match self.flow_control.unwrap_or(FlowControlConfig::None) {
            FlowControlConfig::None => FlowControl::None,
            FlowControlConfig::Software => FlowControl::Software,
            FlowControlConfig::Hardware => FlowControl::Hardware,
        };
        s.data_bits = match self.data_bits {
            Some(5) => DataBits::Five,
            Some(6) => DataBits::Six,
            Some(7) => DataBits::Seven,
            _ => DataBits::Eight,
        };
        s.stop_bits = match self.stop_bits {
            Some(2) => StopBits::Two,
            _ => StopBits::One,
        };
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParityConfig {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControlConfig {
    None,
    Software,
    Hardware,
}

fn default_jig_count() -> usize {
    8
}
fn default_boards() -> usize {
    200
}
fn default_baud() -> u32 {
    921_600
}
fn default_jig_timeout() -> u64 {
    250
}
fn default_true() -> bool {
    true
}
fn default_serial_prefix() -> String {
    "SN".into()
}
fn default_flash_dir() -> PathBuf {
    PathBuf::from("state/boards")
}

impl Default for JigsSection {
    fn default() -> Self {
        JigsSection {
            mode: JigMode::default(),
            count: default_jig_count(),
            boards: default_boards(),
            baud: default_baud(),
            timeout_ms: default_jig_timeout(),
            serial_prefix: default_serial_prefix(),
            stamp_serials: true,
            flash_dir: default_flash_dir(),
            ports: Vec::new(),
            board_root_ca: None,
            skip_held: true,
            boards_hold_root_ca: false,
            driver: DriverKind::default(),
            sec_tag: None,
            write_root_ca: None,
        }
    }
}

/// Where the jigs are (`jigs.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JigMode {
    /// Virtual boards on pseudo-terminals (the demo, tests).
    #[default]
    Virtual,
    /// The ports of `[[jigs.ports]]`.
    Serial,
}

impl JigsSection {
    pub fn is_virtual(&self) -> bool {
        self.mode == JigMode::Virtual
    }
}
