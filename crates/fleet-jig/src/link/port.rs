//! Serial port plumbing for the station side: port settings, the byte transport the link
//! runs over (a real serial port, a pty, or anything `Read + Write` in tests), and port
//! listing (like `espflash --list-all-ports`).

use std::io::{self, Read, Write};
use std::time::Duration;

pub use serialport::{DataBits, FlowControl, Parity, StopBits};

use crate::error::JigError;

/// How to open and drive a jig's serial port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSettings {
    /// Line rate in bits per second (8N1 frames are 10 bits per byte on the wire).
    pub baud: u32,
    /// How long to wait for the answer to a command, beyond the time its bytes need on the
    /// line. After this the command is retransmitted.
    pub timeout: Duration,
    /// The same for slow commands: GEN_CSR (key generation), COMMIT and ERASE (flash writes).
    pub long_timeout: Duration,
    /// Retransmissions of one command before giving up (so `retries + 1` tries in all).
    pub retries: u32,
    pub data_bits: DataBits,
    pub parity: Parity,
    pub stop_bits: StopBits,
    pub flow_control: FlowControl,
}

impl Default for PortSettings {
    fn default() -> Self {
        PortSettings {
            baud: 115_200,
            timeout: Duration::from_millis(300),
            long_timeout: Duration::from_secs(3),
            retries: 3,
            data_bits: DataBits::Eight,
            parity: Parity::None,
            stop_bits: StopBits::One,
            flow_control: FlowControl::None,
        }
    }
}

/// Time `bytes` take on a line at `baud`, at 10 bits per byte. Zero when `baud` is 0.
pub fn line_time(bytes: usize, baud: u32) -> Duration {
    if baud == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos((bytes as u64).saturating_mul(10_000_000_000) / baud as u64)
}

/// A byte pipe to a board. Reads block at most the last timeout set.
pub trait Transport: Read + Write + Send {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()>;
    /// Drops bytes received but not yet read (stale answers from before a reopen).
    fn discard_input(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Box<dyn serialport::SerialPort> {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_timeout(timeout).map_err(io::Error::from)
    }

    fn discard_input(&mut self) -> io::Result<()> {
        self.clear(serialport::ClearBuffer::Input)
            .map_err(io::Error::from)
    }
}

/// Opens a serial port (a USB adapter, or a virtual jig's pty) with `settings`.
pub fn open_port(
    path: &str,
    settings: &PortSettings,
) -> Result<Box<dyn serialport::SerialPort>, JigError> {
    serialport::new(path, settings.baud)
        .data_bits(settings.data_bits)
        .parity(settings.parity)
        .stop_bits(settings.stop_bits)
        .flow_control(settings.flow_control)
        .timeout(settings.timeout)
        .open()
        .map_err(|source| JigError::Open {
            port: path.to_string(),
            source,
        })
}

/// One serial port found on the machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PortInfo {
    /// Device path, e.g. `/dev/ttyUSB0`.
    pub path: String,
    /// `usb`, `pci`, `bluetooth` or `unknown`.
    pub kind: &'static str,
    /// USB vendor and product ids as `vvvv:pppp`, when USB.
    pub usb_id: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial_number: Option<String>,
}

impl std::fmt::Display for PortInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}", self.path, self.kind)?;
        for s in [
            &self.usb_id,
            &self.manufacturer,
            &self.product,
            &self.serial_number,
        ]
        .into_iter()
        .flatten()
        {
            write!(f, ", {s}")?;
        }
        f.write_str(")")
    }
}

/// Every serial port the system knows, USB adapters and built-in UARTs alike.
pub fn list_ports() -> Result<Vec<PortInfo>, JigError> {
    let ports = serialport::available_ports().map_err(|source| JigError::ListPorts { source })?;
    let mut out: Vec<PortInfo> = ports
        .into_iter()
        .map(|p| {
            let mut info = PortInfo {
                path: p.port_name,
                kind: "unknown",
                usb_id: None,
                manufacturer: None,
                product: None,
                serial_number: None,
            };
            match p.port_type {
                serialport::SerialPortType::UsbPort(usb) => {
                    info.kind = "usb";
                    info.usb_id = Some(format!("{:04x}:{:04x}", usb.vid, usb.pid));
                    info.manufacturer = usb.manufacturer;
                    info.product = usb.product;
                    info.serial_number = usb.serial_number;
                }
                serialport::SerialPortType::PciPort => info.kind = "pci",
                serialport::SerialPortType::BluetoothPort => info.kind = "bluetooth",
                serialport::SerialPortType::Unknown => {}
            }
            info
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_time_is_ten_bits_per_byte() {
        assert_eq!(line_time(11_520, 115_200), Duration::from_secs(1));
        assert_eq!(line_time(1, 1_000_000), Duration::from_micros(10));
        assert_eq!(line_time(1000, 0), Duration::ZERO);
    }

    #[test]
    fn list_ports_does_not_fail() {
        // The machine may have no serial ports; listing must still work.
        let ports = list_ports().unwrap();
        for p in ports {
            assert!(!p.path.is_empty());
            assert!(!p.to_string().is_empty());
        }
    }
}
