//! The ACPI sleep control and status registers of a hardware-reduced ACPI
//! platform (FADT `SLEEP_CONTROL_REG` / `SLEEP_STATUS_REG`).
//!
//! The guest powers off by writing `SLP_EN | SLP_TYP(5)` to the control
//! register (Linux does this after reading `\_S5_` from the DSDT); that is
//! reported as [`GuestExitRequest::PowerOff`]. The status register reads 0.

use std::sync::Arc;

use crate::{BusDevice, ExitHandler, GuestExitRequest};

/// I/O port of the sleep control register; the status register follows.
pub const ACPI_SLEEP_PORT: u64 = 0x3c0;
/// Ports covered: control and status.
pub const ACPI_SLEEP_PORT_SIZE: u64 = 2;
/// The S5 (soft off) sleep type, as `\_S5_` in the DSDT declares it.
pub const SLP_TYP_S5: u8 = 5;
const SLP_EN: u8 = 1 << 5;

/// The sleep control/status registers.
pub struct AcpiSleep {
    exit: Arc<dyn ExitHandler>,
}

impl std::fmt::Debug for AcpiSleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpiSleep").finish_non_exhaustive()
    }
}

impl AcpiSleep {
    /// Creates the registers; an S5 request is reported to `exit`.
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if offset == 0 && value & SLP_EN != 0 && (value >> 2) & 7 == SLP_TYP_S5 {
            self.exit.request_exit(GuestExitRequest::PowerOff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Rec(Mutex<Vec<GuestExitRequest>>);
    impl ExitHandler for Rec {
        fn request_exit(&self, r: GuestExitRequest) {
            if let Ok(mut v) = self.0.lock() {
                v.push(r);
            }
        }
    }

    #[test]
    fn only_slp_en_with_s5_powers_off() {
        let rec = Arc::new(Rec::default());
        let mut dev = AcpiSleep::new(rec.clone());
        dev.write(0, &[SLP_TYP_S5 << 2]); // no SLP_EN
        dev.write(0, &[SLP_EN | (3 << 2)]); // S3: not supported, ignored
        dev.write(1, &[SLP_EN | (SLP_TYP_S5 << 2)]); // status register
        assert!(rec.0.lock().expect("lock").is_empty());
        dev.write(0, &[SLP_EN | (SLP_TYP_S5 << 2)]);
        assert_eq!(
            *rec.0.lock().expect("lock"),
            vec![GuestExitRequest::PowerOff]
        );
    }
}
