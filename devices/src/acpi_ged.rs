//! ACPI Generic Event Device (GED, `ACPI0013`): how a hardware-reduced ACPI
//! platform tells the guest about events such as a power-button press.
//!
//! The VMM calls [`AcpiGed::press_power_button`]; the device latches the
//! event bit and raises its (edge-triggered) interrupt. The guest's GED
//! driver runs `_EVT`, which reads the event register at
//! [`GED_EVENT_PORT`] (reading clears it) and notifies the power button
//! device `\_SB.PWRB` (`PNP0C0C`), so the guest shuts down as it would when a
//! real button is pressed.

use std::io;

use crate::{BusDevice, IrqLine};

/// I/O port of the event register.
pub const GED_EVENT_PORT: u64 = 0x3c4;
/// Ports covered.
pub const GED_EVENT_PORT_SIZE: u64 = 1;
/// The GED's interrupt line (GSI).
pub const GED_IRQ: u32 = 5;
/// Event bit: the power button was pressed.
pub const EVENT_POWER_BUTTON: u8 = 1 << 0;

/// The Generic Event Device.
#[derive(Debug)]
pub struct AcpiGed {
    irq: IrqLine,
    pub(crate) pending: u8,
}

impl AcpiGed {
    /// A GED raising `irq`.
    pub fn new(irq: IrqLine) -> Self {
        Self { irq, pending: 0 }
    }

    /// Latches a power-button press and interrupts the guest.
    pub fn press_power_button(&mut self) -> io::Result<()> {
        self.pending |= EVENT_POWER_BUTTON;
        self.irq.trigger()
    }
}

impl BusDevice for AcpiGed {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = std::mem::take(&mut self.pending);
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn press_latches_until_read_and_interrupts() {
        let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let mut ged = AcpiGed::new(IrqLine::new(evt.try_clone().expect("clone")));
        let mut b = [0xffu8; 1];
        ged.read(0, &mut b);
        assert_eq!(b, [0]);
        ged.press_power_button().expect("press");
        assert_eq!(evt.read().expect("irq"), 1);
        ged.read(0, &mut b);
        assert_eq!(b, [EVENT_POWER_BUTTON]);
        ged.read(0, &mut b);
        assert_eq!(b, [0], "reading clears the event");
    }
}
