//! Saved state of the ACPI devices: the sleep registers and the Generic
//! Event Device. Their exit handler and interrupt line are not state (the
//! VMM rebuilds them).

use serde::{Deserialize, Serialize};

use crate::acpi_ged::AcpiGed;
use crate::acpi_pm::AcpiSleep;
use crate::persist::PersistError;

/// The sleep control/status registers' state. They keep nothing today (the
/// status register reads 0 and a control write acts at once); fields added
/// later take defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AcpiSleepState {}

impl AcpiSleep {
    /// The registers' state.
    pub fn save(&self) -> AcpiSleepState {
        AcpiSleepState {}
    }

    /// Applies `state` (nothing to apply today).
    pub fn restore(&mut self, _state: &AcpiSleepState) -> Result<(), PersistError> {
        Ok(())
    }
}

/// The GED's event register: events latched but not yet read by the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AcpiGedState {
    /// Pending event bits (e.g. [`crate::acpi_ged::EVENT_POWER_BUTTON`]).
    pub pending: u8,
}

impl AcpiGed {
    /// The pending events.
    pub fn save(&self) -> AcpiGedState {
        AcpiGedState {
            pending: self.pending,
        }
    }

    /// Applies `state`. The interrupt for a pending event was sent before
    /// the save (it is edge-triggered), so none is raised again.
    pub fn restore(&mut self, state: &AcpiGedState) -> Result<(), PersistError> {
        self.pending = state.pending;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi_ged::EVENT_POWER_BUTTON;
    use crate::{BusDevice, ExitHandler, GuestExitRequest, IrqLine};
    use std::sync::Arc;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    struct NoExit;
    impl ExitHandler for NoExit {
        fn request_exit(&self, _: GuestExitRequest) {}
    }

    fn ged() -> AcpiGed {
        AcpiGed::new(IrqLine::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")))
    }

    #[test]
    fn sleep_state_round_trips() {
        let mut dev = AcpiSleep::new(Arc::new(NoExit));
        let s = serde_json::to_string(&dev.save()).expect("serialize");
        let back: AcpiSleepState = serde_json::from_str(&s).expect("deserialize");
        dev.restore(&back).expect("restore");
        assert_eq!(back, dev.save());
    }

    #[test]
    fn ged_pending_event_survives() {
        let mut a = ged();
        a.press_power_button().expect("press");
        let s = serde_json::to_string(&a.save()).expect("serialize");
        let state: AcpiGedState = serde_json::from_str(&s).expect("deserialize");
        assert_eq!(state.pending, EVENT_POWER_BUTTON);
        let mut b = ged();
        b.restore(&state).expect("restore");
        let mut byte = [0u8];
        b.read(0, &mut byte);
        assert_eq!(byte[0], EVENT_POWER_BUTTON);
        let empty: AcpiGedState = serde_json::from_str("{}").expect("defaults");
        assert_eq!(empty.pending, 0);
    }
}
