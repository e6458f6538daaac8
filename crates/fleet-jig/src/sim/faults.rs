//! Fault injection for the virtual jig: what can go wrong on a real line (noise, lost
//! bytes, a stalled or busy board, a refused commit, a board pulled off or rebooting
//! mid-write, power lost during a flash write, a weak flash cell). All off by default.
//! (Pulling the jig's USB adapter is not a fault of the line: see `VirtualJig::unplug`.)
//!
//! Faults addressed "at" an index apply to the frame with that index among the frames the
//! board receives (0-based, corrupt frames included), counted from the jig's start or the
//! last `VirtualJig::set_faults`.

use std::time::Duration;

use crate::wire::protocol::{ErrorCode, Slot};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// Seed for the probabilistic faults: the same seed gives the same faults.
    pub seed: u64,
    /// Probability that the board's answer to a frame goes out with a bad CRC.
    pub corrupt_tx_probability: f64,
    /// The answer to this frame goes out with a bad CRC.
    pub corrupt_tx_at: Option<u64>,
    /// Probability that a received frame is taken as corrupt (the board answers NAK BAD_CRC).
    pub corrupt_rx_probability: f64,
    /// This received frame is taken as corrupt (NAK BAD_CRC).
    pub corrupt_rx_at: Option<u64>,
    /// This received frame is lost on the line (bytes dropped): no answer at all.
    pub drop_rx_at: Option<u64>,
    /// A few bytes are dropped from the middle of the answer to this frame.
    pub drop_tx_bytes_at: Option<u64>,
    /// Before handling this frame the board stalls for the duration.
    pub stall: Option<(u64, Duration)>,
    /// This frame is answered with a NAK of this code instead of being handled.
    pub nak_at: Option<(u64, ErrorCode)>,
    /// Every COMMIT is refused (COMMIT_REFUSED).
    pub refuse_commit: bool,
    /// The board is pulled off the jig when this frame arrives (it is not handled). The jig
    /// then takes the next board from its queue, if any.
    pub unplug_at: Option<u64>,
    /// The board reboots when this frame arrives (it is not handled; staged data is lost).
    pub reboot_at: Option<u64>,
    /// Power is lost half-way through the next COMMIT's flash write; the board is gone after.
    pub power_cut_in_commit: bool,
    /// A weak flash cell: every COMMIT stores this slot with one bit flipped, so the digest
    /// the board reads back differs from what the station sent.
    pub flip_bit_in: Option<Slot>,
}

/// What to do with one received frame, decided before the board sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RxFault {
    None,
    Unplug,
    Reboot,
    Drop,
    Corrupt,
    Nak(ErrorCode),
}

/// What to do with the board's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxFault {
    None,
    Corrupt,
    DropBytes,
}

/// The fault schedule in force: config + frame counter + random source.
#[derive(Debug)]
pub(crate) struct FaultPlan {
    config: FaultConfig,
    index: u64,
    rng: fastrand::Rng,
}

impl FaultPlan {
    pub(crate) fn new(config: FaultConfig) -> FaultPlan {
        let rng = fastrand::Rng::with_seed(config.seed);
        FaultPlan {
            config,
            index: 0,
            rng,
        }
    }

    pub(crate) fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// Called once per received frame; returns its index, the fault to apply on receipt and
    /// how long to stall before handling it.
    pub(crate) fn on_receive(&mut self) -> (u64, RxFault, Duration) {
        let i = self.index;
        self.index += 1;
        let c = &self.config;
        let at = |o: Option<u64>| o == Some(i);
        let fault = if at(c.unplug_at) {
            RxFault::Unplug
        } else if at(c.reboot_at) {
            RxFault::Reboot
        } else if at(c.drop_rx_at) {
            RxFault::Drop
        } else if at(c.corrupt_rx_at) || self.chance(self.config.corrupt_rx_probability) {
            RxFault::Corrupt
        } else if let Some((n, code)) = self.config.nak_at
            && n == i
        {
            RxFault::Nak(code)
        } else {
            RxFault::None
        };
        let stall = match self.config.stall {
            Some((n, d)) if n == i => d,
            _ => Duration::ZERO,
        };
        (i, fault, stall)
    }

    /// The fault to apply to the answer to frame `index`.
    pub(crate) fn on_transmit(&mut self, index: u64) -> TxFault {
        if self.config.drop_tx_bytes_at == Some(index) {
            TxFault::DropBytes
        } else if self.config.corrupt_tx_at == Some(index)
            || self.chance(self.config.corrupt_tx_probability)
        {
            TxFault::Corrupt
        } else {
            TxFault::None
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.f64() < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexed_faults_fire_once_at_their_frame() {
        let mut plan = FaultPlan::new(FaultConfig {
            reboot_at: Some(2),
            corrupt_tx_at: Some(1),
            stall: Some((0, Duration::from_millis(5))),
            nak_at: Some((3, ErrorCode::Busy)),
            ..FaultConfig::default()
        });
        let got: Vec<_> = (0..5).map(|_| plan.on_receive()).collect();
        assert_eq!(got[0], (0, RxFault::None, Duration::from_millis(5)));
        assert_eq!(got[2].1, RxFault::Reboot);
        assert_eq!(got[3].1, RxFault::Nak(ErrorCode::Busy));
        assert_eq!(got[4].1, RxFault::None);
        assert_eq!(plan.on_transmit(1), TxFault::Corrupt);
        assert_eq!(plan.on_transmit(2), TxFault::None);
    }

    #[test]
    fn probabilities_are_seeded() {
        let cfg = FaultConfig {
            corrupt_tx_probability: 0.3,
            seed: 42,
            ..FaultConfig::default()
        };
        let run = |cfg: &FaultConfig| {
            let mut p = FaultPlan::new(cfg.clone());
            (0..200).map(|i| p.on_transmit(i)).collect::<Vec<_>>()
        };
        let a = run(&cfg);
        assert_eq!(a, run(&cfg));
        let n = a.iter().filter(|f| **f == TxFault::Corrupt).count();
        assert!((30..90).contains(&n), "{n} of 200");
        assert!(
            run(&FaultConfig::default())
                .iter()
                .all(|f| *f == TxFault::None)
        );
    }
}
