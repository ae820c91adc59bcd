//! How a virtio device interrupts its driver, and the MSI sink the VMM provides.
//!
//! Devices call [`Interrupt`] (implemented by the transport); the transport
//! maps a queue to its MSI-X vector, applies masking, and fires the vector
//! through [`MsiVectors`] (implemented by the VMM with KVM irqfds and GSI
//! routes, so delivery never leaves the kernel once the eventfd is written).

use std::io;

/// An MSI message as the guest programmed it into an MSI-X table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (64-bit).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// A group of MSI vectors belonging to one PCI function.
pub trait MsiVectors: Send + Sync {
    /// Number of vectors in the group.
    fn count(&self) -> usize;
    /// Routes vector `index` to `message`, or removes its route (`None`).
    fn set_route(&self, index: usize, message: Option<MsiMessage>) -> io::Result<()>;
    /// Fires vector `index` once.
    fn fire(&self, index: usize) -> io::Result<()>;
}

/// The device's side of interrupt delivery.
pub trait Interrupt: Send + Sync {
    /// The device put buffers in the used ring of queue `queue`.
    fn signal_used(&self, queue: u16);
    /// The device configuration changed (or the device needs a reset).
    fn signal_config(&self);
    /// The device hit an unrecoverable error: sets `DEVICE_NEEDS_RESET` in
    /// the device status and tells the driver.
    fn set_needs_reset(&self);
}
