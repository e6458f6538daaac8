//! A virtual production line's board supply: `SerialGenerator` makes `BoardSpec`s with
//! serial numbers `prefix` + zero-padded counter and matching locally administered MACs.

use super::board::BoardSpec;
use crate::wire::protocol::Slot;

/// An endless supply of boards for a virtual line (an iterator of [`BoardSpec`]s).
#[derive(Debug, Clone)]
pub struct SerialGenerator {
    prefix: String,
    width: usize,
    next: u64,
    hw_rev: String,
    fw_version: String,
    can_gen_csr: bool,
    firmware_slots: Vec<(Slot, Vec<u8>)>,
}

impl SerialGenerator {
    /// Serials `prefix` + `first` zero-padded to `width` digits, counting up.
    pub fn new(prefix: &str, width: usize, first: u64) -> SerialGenerator {
        SerialGenerator {
            prefix: prefix.to_string(),
            width,
            next: first,
            hw_rev: "A".to_string(),
            fw_version: "1.0.0".to_string(),
            can_gen_csr: true,
            firmware_slots: Vec::new(),
        }
    }

    /// Boards whose firmware image carries `data` in `slot` (a root CA baked in): a blank
    /// board starts with it live.
    pub fn firmware_slot(mut self, slot: Slot, data: &[u8]) -> SerialGenerator {
        self.firmware_slots.retain(|(s, _)| *s != slot);
        self.firmware_slots.push((slot, data.to_vec()));
        self
    }

    /// Boards of hardware revision `hw_rev` (default `A`).
    pub(crate) fn hw_rev(mut self, hw_rev: &str) -> SerialGenerator {
        self.hw_rev = hw_rev.to_string();
        self
    }
}

impl Iterator for SerialGenerator {
    type Item = BoardSpec;

    fn next(&mut self) -> Option<BoardSpec> {
        let n = self.next;
        self.next = self.next.checked_add(1)?;
        let c = (n as u32).to_be_bytes();
        Some(BoardSpec {
            serial: format!("{}{:0width$}", self.prefix, n, width = self.width),
            hw_rev: self.hw_rev.clone(),
            fw_version: self.fw_version.clone(),
            // 0x02: locally administered, unicast; 0x46 = 'F' for fleet-station.
            mac: [0x02, 0x46, c[0], c[1], c[2], c[3]],
            can_gen_csr: self.can_gen_csr,
            firmware_slots: self.firmware_slots.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_padded_and_macs_unique() {
        let specs: Vec<BoardSpec> = SerialGenerator::new("VB-", 6, 9)
            .hw_rev("C")
            .take(3)
            .collect();
        let serials: Vec<&str> = specs.iter().map(|s| s.serial.as_str()).collect();
        assert_eq!(serials, ["VB-000009", "VB-000010", "VB-000011"]);
        assert_eq!(specs[0].mac, [0x02, 0x46, 0, 0, 0, 9]);
        assert_ne!(specs[0].mac, specs[1].mac);
        assert_eq!(specs[2].hw_rev, "C");
    }
}
