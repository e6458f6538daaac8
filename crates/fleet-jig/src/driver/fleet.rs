//! The `fleet-jig` driver: [`JigDriver`] over [`JigLink`], our own jig protocol. HELLO gives
//! the serial, HASH says what the board holds, GEN_CSR makes the key on the board, and the
//! pipelined PUT/COMMIT write is proven by the digest the board reads back after COMMIT.

use super::{BoardIdentity, DriverKind, DriverWrite, JigDriver};
use crate::error::JigError;
use crate::link::{JigLink, SlotWrite};
use crate::wire::protocol::{CsrSubject, Slot};

impl JigDriver for JigLink {
    fn kind(&self) -> DriverKind {
        DriverKind::FleetJig
    }

    fn identify(&mut self) -> Result<BoardIdentity, JigError> {
        let info = self.hello()?;
        Ok(BoardIdentity {
            mac: Some(info.mac_string()),
            hw_rev: Some(info.hw_rev.clone()),
            fw_version: info.fw_version,
            serial: info.serial,
        })
    }

    fn gen_csr(&mut self, subject: &CsrSubject) -> Result<String, JigError> {
        JigLink::gen_csr(self, subject)
    }

    fn held(&mut self, items: &[SlotWrite<'_>]) -> Result<Vec<Slot>, JigError> {
        JigLink::held(self, items)
    }

    fn write_and_verify(
        &mut self,
        items: &[SlotWrite<'_>],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<DriverWrite, JigError> {
        let report = JigLink::write_and_verify(self, items, progress)?;
        Ok(DriverWrite {
            bytes: report.bytes,
        })
    }

    fn retransmissions(&self) -> u64 {
        self.stats().retransmissions
    }

    fn release(&mut self) -> Result<(), JigError> {
        self.reset()
    }
}
