//! The Vireo test guest, built by this crate's `build.rs` and embedded here.
//!
//! It is a small freestanding x86_64 ELF (source in `guest/main.rs`) that the
//! VMM starts directly in ring 3 through its user-mode boot protocol, because
//! on hosts whose KVM emulates guest ring 0 (PVM) a ring-3 guest still runs
//! natively. It drives real devices (UART, i8042 and its keyboard, MMIO)
//! and reports over serial, ending with a status byte on the debug exit port.
//!
//! The scenario is chosen by the kernel command line: `hello`, `count N
//! [GAP]`, `echo`, `spew BYTES`, `idle`, `reset`, `pci`, `triple-fault`,
//! `emulation-failure`, `exit N`, `kbd COUNT` (prints each byte the i8042
//! keyboard sends after `kbd ready`, for key-injection tests),
//! and, through the guest's own polling virtio 1.2 driver (modern virtio-pci),
//! `virtio-list`, `blk-rw`, `blk-edge`, `blk-bench`, `net-ping`, `net-bench`,
//! `input-events COUNT` (prints `input name=…`, `input ready`, then each event
//! of the first virtio-input device as `input type=… code=… value=…`, then
//! `input done`) (arguments and output lines are listed in `guest/main.rs`).
//!
//! `churn PAGES [EVERY [BLK-SECTORS [LIMIT [RATE]]]]` is for pause/resume,
//! snapshot/restore and live-migration tests (RATE paces it to RATE MiB/s): it keeps rewriting a working set of PAGES pages
//! (and, when present, sectors of the first virtio-blk disk and frames on
//! the first virtio-net NIC), verifies all of it itself, and every EVERY
//! iterations prints `churn i=<i> sum=<hex16>[ blk=<writes>][ tx=<sent>
//! rx=<received>]`, a pure function of `i` except for `rx`. A corrupted
//! page or sector prints `churn MISMATCH …` / `churn BLK-MISMATCH …` and
//! exits with status 1; a gap in received sequence numbers prints `churn
//! RX-GAP …`. Frames use ethertype 0x88b5: every 16 iterations the guest
//! sends payload `churn-tx` + BE u64 sequence number (from 0) + BE u64
//! iteration, and counts received payloads `churn-rx` + BE u64 sequence
//! number.

/// The colours of the framebuffer scenarios (`fb-pattern`, `fb-anim`): the guest's own code.
#[path = "../guest/fb_colors.rs"]
pub mod fb_colors;

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
