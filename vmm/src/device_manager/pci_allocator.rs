//! Addresses for PCI BARs, handed out from the 32-bit MMIO window between
//! the start of the hole and the framebuffer (vm-allocator's first-fit allocator).

use vm_allocator::{AddressAllocator, AllocPolicy};

use super::DeviceError;
use crate::arch::x86_64::layout::{FRAMEBUFFER_ADDR, PCI_MMIO32_START};

/// Allocator of naturally aligned BAR ranges.
#[derive(Debug)]
pub struct BarAllocator {
    inner: AddressAllocator,
}

impl BarAllocator {
    /// An allocator over the 32-bit PCI MMIO window below the framebuffer (256 MiB).
    pub fn new() -> Result<Self, DeviceError> {
        AddressAllocator::new(PCI_MMIO32_START, FRAMEBUFFER_ADDR - PCI_MMIO32_START)
            .map(|inner| Self { inner })
            .map_err(|e| DeviceError::Bar(e.to_string()))
    }

    /// Reserves `size` bytes (a power of two) aligned to their size, as a
    /// BAR requires; returns the base address.
    pub fn allocate(&mut self, size: u64) -> Result<u64, DeviceError> {
        if !size.is_power_of_two() {
            return Err(DeviceError::Bar(format!(
                "BAR size {size:#x} is not a power of two"
            )));
        }
        self.inner
            .allocate(size, size.max(4096), AllocPolicy::FirstMatch)
            .map(|r| r.start())
            .map_err(|e| DeviceError::Bar(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_aligned_disjoint_and_inside_the_window() {
        let mut a = BarAllocator::new().expect("allocator");
        let x = a.allocate(0x4000).expect("x");
        let y = a.allocate(0x10_0000).expect("y");
        assert_eq!(x % 0x4000, 0);
        assert_eq!(y % 0x10_0000, 0);
        assert!(x + 0x4000 <= y || y + 0x10_0000 <= x);
        assert!(x >= PCI_MMIO32_START && y + 0x10_0000 <= FRAMEBUFFER_ADDR);
        assert!(a.allocate(3000).is_err());
        assert!(a.allocate(1 << 29).is_err(), "larger than the window");
    }
}
