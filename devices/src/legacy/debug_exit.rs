//! The debug exit port: a guest writes one status byte to end the VM.
//!
//! It plays the part of QEMU's `isa-debug-exit` for Vireo's test guests and
//! firmware tests: status 0 means the guest's checks passed, anything else is
//! a failure code chosen by the guest. It is only placed on the bus when the
//! VM configuration asks for it, so production guests never see it.

use std::sync::Arc;

use crate::{BusDevice, ExitHandler, GuestExitRequest};

/// I/O port of the debug exit device.
pub const DEBUG_EXIT_PORT: u64 = 0xf4;
/// Ports covered (a single byte register).
pub const DEBUG_EXIT_PORT_SIZE: u64 = 1;

/// The debug exit device.
pub struct DebugExit {
    exit: Arc<dyn ExitHandler>,
}

impl std::fmt::Debug for DebugExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugExit").finish_non_exhaustive()
    }
}

impl DebugExit {
    /// Creates the device; every write is reported to `exit`.
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        Self { exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&status) = data.first() {
            self.exit.request_exit(GuestExitRequest::DebugExit(status));
        }
    }
}
