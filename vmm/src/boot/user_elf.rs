//! Vireo's ring-3 user-mode boot protocol.
//!
//! Some hosts (KVM on PVM) run guest ring 3 natively but emulate guest ring
//! 0 slowly, so test guests and firmware tests are started directly in ring
//! 3. An image opts in with an ELF note: name `"Vireo"`, type
//! [`VIREO_NOTE_USER_MODE`], a 4-byte little-endian protocol version (1).
//!
//! The protocol, version 1:
//! - `PT_LOAD` segments are copied to their physical addresses (`p_paddr`),
//!   which must lie in RAM at or above 1 MiB and below the MMIO hole; the
//!   rest of each segment (`p_memsz - p_filesz`) is zeroed.
//! - Guest-physical memory `[0, max(4 GiB, end of RAM))` is identity-mapped
//!   with user-accessible 2 MiB pages, so RAM and device registers are
//!   reachable from ring 3.
//! - vCPU 0 starts at the ELF entry in 64-bit mode, CPL 3, IOPL 3, interrupts
//!   disabled, no IDT, RSP just below 0x9_f000, with RDI = address of the
//!   NUL-terminated command line, RSI = its length, RDX = guest RAM size in
//!   bytes, RCX = 0 (the vCPU index). Other vCPUs wait for INIT/SIPI, which
//!   ring-3 code cannot send, so they stay parked.
//! - The debug exit port (0xf4) is present: writing a byte ends the VM with
//!   that status.

use std::path::Path;

use goblin::elf::program_header::PT_LOAD;
use goblin::elf::Elf;
use vm_memory::{Bytes, GuestAddress};

use super::{BootError, BootPlan, KernelFormat};
use crate::arch::x86_64::gdt::gdt_bytes;
use crate::arch::x86_64::layout::{
    CMDLINE_ADDR, CMDLINE_MAX, GDT_ADDR, PAYLOAD_MIN_ADDR, STACK_TOP,
};
use crate::arch::x86_64::{paging, InitialCpuState};
use crate::memory::{ram_end, GuestMemory, MMIO_HOLE_END, MMIO_HOLE_START};

/// ELF note type that marks an image for the user-mode boot protocol.
pub const VIREO_NOTE_USER_MODE: u32 = 1;
/// Protocol version implemented here.
pub const PROTOCOL_VERSION: u32 = 1;
const NOTE_NAME: &str = "Vireo";

/// Whether `bytes` is an ELF with the Vireo user-mode note.
pub fn has_vireo_note(bytes: &[u8]) -> bool {
    parse_program(bytes)
        .ok()
        .and_then(|elf| note_version(&elf, bytes))
        .is_some()
}

/// Parses what the user-mode protocol reads — the ELF header and the program headers — and not
/// the section, symbol and string tables, which are most of a debug build's file (and of the
/// time a full parse takes at every start).
fn parse_program(bytes: &[u8]) -> goblin::error::Result<Elf<'_>> {
    use goblin::container::{Container, Ctx, Endian};
    use goblin::elf::header::{EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB};
    use goblin::elf::ProgramHeader;
    let header = Elf::parse_header(bytes)?;
    let container = if header.e_ident[EI_CLASS] == ELFCLASS64 {
        Container::Big
    } else {
        Container::Little
    };
    let endian = Endian::from(header.e_ident[EI_DATA] == ELFDATA2LSB);
    let mut elf = Elf::lazy_parse(header)?;
    elf.program_headers = ProgramHeader::parse(
        bytes,
        usize::try_from(header.e_phoff)
            .map_err(|_| goblin::error::Error::Malformed("e_phoff".into()))?,
        usize::from(header.e_phnum),
        Ctx::new(container, endian),
    )?;
    Ok(elf)
}

/// Where the data an ELF loader reads ends in the file: the end of its program header table
/// and of every loadable or note segment's file data. `None` if `head` does not hold the ELF
/// and program headers.
pub fn data_end(head: &[u8]) -> Option<u64> {
    use goblin::elf::program_header::PT_NOTE;
    let elf = parse_program(head).ok()?;
    let phdrs_end = elf
        .header
        .e_phoff
        .checked_add(u64::from(elf.header.e_phnum) * u64::from(elf.header.e_phentsize))?;
    elf.program_headers
        .iter()
        .filter(|ph| ph.p_type == PT_LOAD || ph.p_type == PT_NOTE)
        .map(|ph| ph.p_offset.saturating_add(ph.p_filesz))
        .chain([phdrs_end])
        .max()
}

fn note_version(elf: &Elf<'_>, bytes: &[u8]) -> Option<u32> {
    // goblin iterates PT_NOTE segments; stop at the first malformed note.
    let notes = elf.iter_note_headers(bytes)?;
    for note in notes {
        let note = note.ok()?;
        if note.n_type == VIREO_NOTE_USER_MODE && note.name == NOTE_NAME {
            let desc: [u8; 4] = note.desc.get(..4)?.try_into().ok()?;
            return Some(u32::from_le_bytes(desc));
        }
    }
    None
}

fn invalid(path: &Path, reason: impl Into<String>) -> BootError {
    BootError::InvalidElf {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Loads a user-mode ELF and returns the boot plan for it.
pub fn load(
    mem: &GuestMemory,
    memory_size: u64,
    path: &Path,
    bytes: &[u8],
    cmdline: &str,
) -> Result<BootPlan, BootError> {
    let elf = parse_program(bytes).map_err(|e| invalid(path, e.to_string()))?;
    if !elf.is_64 || elf.header.e_machine != goblin::elf::header::EM_X86_64 {
        return Err(invalid(path, "not an x86_64 ELF64 image"));
    }
    if elf.header.e_type != goblin::elf::header::ET_EXEC {
        return Err(invalid(path, "not an executable (ET_EXEC) image"));
    }
    match note_version(&elf, bytes) {
        Some(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(invalid(
                path,
                format!("unsupported user-mode protocol version {v}"),
            ))
        }
        None => return Err(invalid(path, "no Vireo user-mode note")),
    }

    let load_limit = ram_end(memory_size).min(MMIO_HOLE_START);
    let entry = elf.entry;
    let mut entry_in_code = false;
    let mut loaded_any = false;
    for ph in elf.program_headers.iter().filter(|ph| ph.p_type == PT_LOAD) {
        let start = ph.p_paddr;
        let end = start
            .checked_add(ph.p_memsz)
            .ok_or_else(|| invalid(path, "segment address overflows"))?;
        if ph.p_filesz > ph.p_memsz {
            return Err(invalid(path, "segment file size exceeds its memory size"));
        }
        if start < PAYLOAD_MIN_ADDR || end > load_limit {
            return Err(invalid(
                path,
                format!(
                    "segment {start:#x}..{end:#x} lies outside loadable RAM \
                     {PAYLOAD_MIN_ADDR:#x}..{load_limit:#x}"
                ),
            ));
        }
        let file_range = usize::try_from(ph.p_offset)
            .ok()
            .zip(usize::try_from(ph.p_filesz).ok())
            .and_then(|(off, len)| Some(off..off.checked_add(len)?))
            .filter(|r| r.end <= bytes.len())
            .ok_or_else(|| invalid(path, "segment data lies outside the file"))?;
        let guest_write = |source| BootError::GuestWrite {
            what: "an ELF segment",
            source,
        };
        mem.write_slice(&bytes[file_range], GuestAddress(start))
            .map_err(guest_write)?;
        // The rest of the segment (its BSS) is left alone: guest memory is freshly mapped
        // anonymous memory, so it reads as zero without being written (writing it would
        // back every BSS page with host memory before the guest touches it).
        loaded_any = true;
        if ph.is_executable() && (start..end).contains(&entry) {
            entry_in_code = true;
        }
    }
    if !loaded_any {
        return Err(invalid(path, "no loadable segments"));
    }
    if !entry_in_code {
        return Err(invalid(
            path,
            format!("entry point {entry:#x} is not in an executable segment"),
        ));
    }
    let max = (CMDLINE_MAX - 1) as usize;
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut cmd = cmdline.as_bytes().to_vec();
    cmd.push(0);
    mem.write_slice(&cmd, GuestAddress(CMDLINE_ADDR))
        .map_err(|source| BootError::GuestWrite {
            what: "the command line",
            source,
        })?;
    mem.write_slice(&gdt_bytes(), GuestAddress(GDT_ADDR))
        .map_err(|source| BootError::GuestWrite {
            what: "the GDT",
            source,
        })?;
    let cr3 = paging::write_identity_tables(mem, ram_end(memory_size).max(MMIO_HOLE_END))?;
    let boot_cpu = InitialCpuState::user_mode_long(
        entry,
        STACK_TOP,
        cr3,
        [CMDLINE_ADDR, cmdline.len() as u64, memory_size, 0],
    );
    Ok(BootPlan {
        boot_cpu,
        debug_exit: true,
        format: KernelFormat::UserModeElf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::probe;
    use crate::memory::{create_guest_memory, MIB};

    fn load_bytes(bytes: &[u8], mem_mib: u64) -> Result<BootPlan, BootError> {
        let mem = create_guest_memory(mem_mib * MIB).expect("mem");
        load(&mem, mem_mib * MIB, Path::new("guest.elf"), bytes, "hello")
    }

    #[test]
    fn loads_the_test_guest_and_starts_at_its_entry() {
        let elf = vireo_testguest::ELF;
        assert_eq!(probe(elf), Some(KernelFormat::UserModeElf));
        let plan = load_bytes(elf, 16).expect("load");
        let parsed = Elf::parse(elf).expect("parse");
        assert_eq!(plan.boot_cpu.regs.rip, parsed.entry);
        assert_eq!(plan.boot_cpu.regs.rsi, 5);
        assert!(plan.debug_exit);
    }

    #[test]
    fn too_little_memory_for_the_segments_is_an_error() {
        // 2 MiB of RAM cannot hold segments linked at 2 MiB.
        let err = load_bytes(vireo_testguest::ELF, 2).expect_err("must fail");
        assert!(err.to_string().contains("outside loadable RAM"), "{err}");
    }

    #[test]
    fn truncated_and_corrupted_images_are_errors_not_panics() {
        let elf = vireo_testguest::ELF;
        // Cut anywhere before the end of the last loadable segment's data. (Past it the file
        // holds only section and symbol tables, which the loader does not read.)
        let segments_end = parse_program(elf)
            .expect("parse")
            .program_headers
            .iter()
            .filter(|ph| ph.p_type == PT_LOAD)
            .map(|ph| (ph.p_offset + ph.p_filesz) as usize)
            .max()
            .expect("segments");
        for len in [0, 4, 63, 64, 100, 200, segments_end / 2, segments_end - 1] {
            let _ = load_bytes(&elf[..len], 16)
                .map(|_| ())
                .expect_err("truncated");
        }
        load_bytes(&elf[..segments_end], 16).expect("the loader reads nothing past the segments");
        // Flip bytes throughout the headers; every outcome must be an Ok or a
        // typed error.
        for i in 0..256 {
            let mut bad = elf.to_vec();
            bad[i] ^= 0xff;
            let _ = load_bytes(&bad, 16);
        }
    }

    #[test]
    fn overlong_command_line_is_refused() {
        let mem = create_guest_memory(16 * MIB).expect("mem");
        let long = "x".repeat(CMDLINE_MAX as usize);
        let err = load(&mem, 16 * MIB, Path::new("g"), vireo_testguest::ELF, &long)
            .expect_err("too long");
        assert!(matches!(err, BootError::CmdlineTooLong { .. }));
    }
}
