//! Requests from guest-visible devices to end or restart the VM.

/// Something the guest asked for through a device that ends the current run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExitRequest {
    /// The guest asked for a system reset (i8042 reset line, ACPI reset).
    Reset,
    /// The guest asked to power off (ACPI S5).
    PowerOff,
    /// The guest wrote a status byte to the debug exit port; 0 means success.
    DebugExit(u8),
}

/// Receives exit requests from devices; implemented by the VMM's lifecycle.
///
/// Called on a vCPU thread in the middle of an I/O exit, so implementations
/// must only record the request and kick vCPUs, never block on them.
pub trait ExitHandler: Send + Sync {
    /// Records `request`; the first request of a run wins.
    fn request_exit(&self, request: GuestExitRequest);
}
