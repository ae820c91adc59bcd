//! The interface between a device model and the VMM's port-I/O and MMIO buses.

/// A device that answers guest accesses to an address range on a bus.
///
/// The bus translates the guest's absolute address into an `offset` from the
/// start of the range the device was registered at, so a model does not need
/// to know where it lives. Implementations must accept any offset and any
/// access size the guest chooses (the guest controls both) without panicking:
/// unknown registers read as all-ones or zero and ignore writes.
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes at `offset`; fills `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}
