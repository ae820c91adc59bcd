//! The guest's physical memory map (E820), shared by the Linux boot protocol
//! (zero page) and PVH (memory map table).
//!
//! RAM below the EBDA, RAM from 1 MiB to the PCI hole, RAM above 4 GiB; the
//! area between the EBDA and 1 MiB (ACPI tables) and the PCIe ECAM window are
//! reserved; the rest of the hole is a gap that the guest's PCI code may
//! assign to BARs.

use super::layout::{EBDA_START, HIGH_MEMORY_START, PCI_ECAM_SIZE, PCI_ECAM_START};
use crate::memory::ram_ranges;

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One E820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_RAM` or `E820_RESERVED`.
    pub kind: u32,
}

/// The memory map of a guest with `memory_size` bytes of RAM.
pub fn memory_map(memory_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIGH_MEMORY_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ram_ranges(memory_size) {
        let (addr, end) = (start.0.max(HIGH_MEMORY_START), start.0 + len);
        if end > addr {
            map.push(E820Entry {
                addr,
                size: end - addr,
                kind: E820_RAM,
            });
        }
    }
    map.push(E820Entry {
        addr: PCI_ECAM_START,
        size: PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    map.sort_by_key(|e| e.addr);
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MIB, MMIO_HOLE_END, MMIO_HOLE_START};

    #[test]
    fn map_shows_the_pci_hole_as_a_gap_with_ecam_reserved() {
        let map = memory_map(6144 * MIB);
        let ram: Vec<_> = map.iter().filter(|e| e.kind == E820_RAM).collect();
        assert_eq!(ram[1].addr, HIGH_MEMORY_START);
        assert_eq!(ram[1].addr + ram[1].size, MMIO_HOLE_START);
        assert_eq!(ram[2].addr, MMIO_HOLE_END);
        assert_eq!(ram[2].size, 6144 * MIB - MMIO_HOLE_START);
        assert!(map
            .iter()
            .any(|e| e.kind == E820_RESERVED && e.addr == PCI_ECAM_START));
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr, "no overlaps: {map:?}");
        }
    }
}
