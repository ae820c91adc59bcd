//! A minimal i8042 keyboard controller: enough for the guest's reset line.
//!
//! Linux (`reboot=k`) and other guests reset the machine by writing command
//! 0xFE ("pulse output line 0") to the command port. Everything else reads as
//! an idle controller with an empty output buffer.

use std::sync::Arc;

use crate::{BusDevice, ExitHandler, GuestExitRequest};

/// Base I/O port of the i8042 (data port 0x60; the command port is 0x64).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Number of ports covered, 0x60..=0x64.
pub const I8042_PORT_SIZE: u64 = 5;
/// Offset of the command/status port from the base.
const COMMAND_OFFSET: u64 = 4;
/// The "pulse reset line" command.
const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 controller, wired to the VM's reset handling.
pub struct I8042 {
    exit: Arc<dyn ExitHandler>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042").finish_non_exhaustive()
    }
}

impl I8042 {
    /// Creates the controller; a reset command is reported to `exit`.
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(offset, ?data, "i8042 write");
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.request_exit(GuestExitRequest::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<GuestExitRequest>>);
    impl ExitHandler for Recorder {
        fn request_exit(&self, request: GuestExitRequest) {
            if let Ok(mut v) = self.0.lock() {
                v.push(request);
            }
        }
    }

    #[test]
    fn reset_command_requests_reset_only_on_command_port() {
        let rec = Arc::new(Recorder::default());
        let mut dev = I8042::new(rec.clone());
        dev.write(0, &[CMD_RESET_CPU]); // data port: not a command
        dev.write(COMMAND_OFFSET, &[0xad]); // another command
        assert!(rec.0.lock().expect("lock").is_empty());
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(*rec.0.lock().expect("lock"), vec![GuestExitRequest::Reset]);
    }
}
