//! Identity page tables built by the VMM for guests it starts in long mode.
//!
//! Maps guest-physical `[0, end)` one to one with 2 MiB pages, present,
//! writable and user-accessible, including the MMIO hole, so a guest started
//! in ring 3 can reach RAM and device registers at their physical addresses.
//! (1 GiB pages are not used: hosts whose KVM offers only baseline CPUID,
//! such as PVM, fault on them.)

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{PDPT_ADDR, PD_END, PD_START, PML4_ADDR};
use crate::memory::GuestMemory;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;
const GIB: u64 = 1 << 30;
const TWO_MIB: u64 = 2 << 20;

/// Why page tables could not be built.
#[derive(Debug, Error)]
pub enum PagingError {
    /// More memory than the page-directory area can map.
    #[error("identity page tables can map at most {max_gib} GiB, {requested_gib} GiB requested")]
    TooMuchMemory {
        /// GiB asked for.
        requested_gib: u64,
        /// GiB the layout allows.
        max_gib: u64,
    },
    /// Writing a table into guest memory failed.
    #[error("cannot write page tables into guest memory: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Writes identity page tables covering `[0, end)` (rounded up to 1 GiB) and
/// returns the value for CR3.
pub fn write_identity_tables(mem: &GuestMemory, end: u64) -> Result<u64, PagingError> {
    let gibs = end.div_ceil(GIB).max(1);
    let max_gib = (PD_END - PD_START) / 0x1000;
    if gibs > max_gib {
        return Err(PagingError::TooMuchMemory {
            requested_gib: gibs,
            max_gib,
        });
    }
    let w = |addr: u64, val: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(PagingError::Write)
    };
    w(PML4_ADDR, PDPT_ADDR | PRESENT | WRITABLE | USER)?;
    for gib in 0..gibs {
        let pd = PD_START + gib * 0x1000;
        w(PDPT_ADDR + gib * 8, pd | PRESENT | WRITABLE | USER)?;
        let mut table = [0u8; 4096];
        for (i, entry) in table.chunks_exact_mut(8).enumerate() {
            let phys = gib * GIB + i as u64 * TWO_MIB;
            entry.copy_from_slice(&(phys | PRESENT | WRITABLE | USER | HUGE).to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(pd))
            .map_err(PagingError::Write)?;
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, MIB};

    #[test]
    fn maps_four_gib_with_user_2mib_pages() {
        let mem = create_guest_memory(16 * MIB).expect("mem");
        let cr3 = write_identity_tables(&mem, 1 << 32).expect("tables");
        assert_eq!(cr3, PML4_ADDR);
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 3 * 8)).expect("read");
        assert_eq!(pdpte & !0xfff, PD_START + 3 * 0x1000);
        // The last 2 MiB page below 4 GiB (LAPIC/IOAPIC area) is user-mapped.
        let pde: u64 = mem
            .read_obj(GuestAddress(PD_START + 3 * 0x1000 + 511 * 8))
            .expect("read");
        assert_eq!(pde, (4 * GIB - TWO_MIB) | PRESENT | WRITABLE | USER | HUGE);
    }

    #[test]
    fn refuses_more_than_the_layout_holds() {
        let mem = create_guest_memory(16 * MIB).expect("mem");
        let err = write_identity_tables(&mem, 1 << 40).expect_err("too big");
        assert!(matches!(err, PagingError::TooMuchMemory { .. }));
    }
}
