//! The Vireo test guest, built by this crate's `build.rs` and embedded here.
//!
//! It is a small freestanding x86_64 ELF (source in `guest/main.rs`) that the
//! VMM starts directly in ring 3 through its user-mode boot protocol, because
//! on hosts whose KVM emulates guest ring 0 (PVM) a ring-3 guest still runs
//! natively. It drives real devices (UART, i8042, MMIO) and reports over
//! serial, ending with a status byte on the debug exit port.
//!
//! The scenario is chosen by the kernel command line: `hello`, `count N
//! [GAP]`, `echo`, `spew BYTES`, `idle`, `reset`, `pci`, `triple-fault`,
//! `emulation-failure`, `exit N`,
//! and, through the guest's own polling virtio 1.2 driver (modern virtio-pci),
//! `virtio-list`, `blk-rw`, `blk-edge`, `blk-bench`, `net-ping`, `net-bench`
//! (arguments and output lines are listed in `guest/main.rs`).

use std::io;
use std::path::Path;

/// The test guest ELF image.
pub const ELF: &[u8] = include_bytes!(env!("VIREO_TESTGUEST_ELF"));

/// Writes the ELF to `path` (for `vireo run --kernel PATH`).
pub fn write_to(path: &Path) -> io::Result<()> {
    std::fs::write(path, ELF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_an_x86_64_elf_with_the_vireo_note() {
        assert_eq!(&ELF[..4], b"\x7fELF");
        assert_eq!(ELF[4], 2, "ELFCLASS64");
        let has_note = ELF.windows(6).any(|w| w == b"Vireo\0");
        assert!(has_note, "the Vireo user-mode note is present");
    }
}
