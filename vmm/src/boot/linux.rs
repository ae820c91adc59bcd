//! Booting Linux: bzImage through the x86 Linux boot protocol (64-bit
//! entry), and ELF `vmlinux` through PVH — or, for an ELF without a PVH note,
//! through the 64-bit boot protocol at its ELF entry, as Firecracker does.
//!
//! Guest memory after loading:
//! ```text
//!  0x6000 PVH start info, module list, memory map   0x7000 zero page
//!  0x9000 identity page tables (4 GiB, 2 MiB pages)  0x2_0000 command line
//!  0xe_0000 ACPI tables                              1 MiB+ kernel
//!  highest fitting address below the kernel's initrd limit: initramfs
//! ```

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::Error as ElfError;
use linux_loader::loader::{BzImage, Elf, Error as LoaderError, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress};

use super::{BootError, BootPlan, KernelFormat};
use crate::acpi;
use crate::arch::x86_64::e820::memory_map;
use crate::arch::x86_64::gdt::gdt_bytes;
use crate::arch::x86_64::layout::{
    FRAMEBUFFER_ADDR, GDT_ADDR, HIGH_MEMORY_START, LINUX_BOOT_STACK, LINUX_CMDLINE_ADDR,
    LINUX_CMDLINE_SIZE, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR, PVH_START_INFO_ADDR, RESET_VECTOR_ADDR,
    ZERO_PAGE_ADDR,
};
use crate::arch::x86_64::{paging, InitialCpuState};
use crate::config::PayloadConfig;
use crate::memory::{GuestMemory, MMIO_HOLE_END, MMIO_HOLE_START};

/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// `setup_header.type_of_loader`: "other / undefined".
const LOADER_TYPE_OTHER: u8 = 0xff;
/// The 64-bit entry of a bzImage is 0x200 bytes into the protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Boot protocol version that introduced `cmdline_size`.
const PROTOCOL_CMDLINE_SIZE: u16 = 0x0206;
/// Most E820 entries the zero page holds.
const ZERO_PAGE_E820_MAX: usize = 128;
const PAGE: u64 = 4096;
/// Firmware stand-in at the reset vector: `mov al, 0xfe; out 0x64, al;
/// hlt; jmp $-3`. A guest that reboots by jumping to the reset vector (Linux's
/// default "BIOS" method on a platform without firmware) thereby pulses the
/// i8042 reset line, as real firmware would reset the machine.
const RESET_VECTOR_STUB: [u8; 7] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];
const NO_ENTRY: &str = "no PVH note and no 64-bit entry point inside the image";

/// What the loaders hand to the common boot-data writer.
struct Loaded {
    kernel_end: u64,
    /// Highest address the kernel accepts for the initramfs end (inclusive).
    initrd_addr_max: u64,
    cmdline_max: usize,
}

fn write_err(what: &'static str) -> impl Fn(vm_memory::GuestMemoryError) -> BootError {
    move |source| BootError::GuestWrite { what, source }
}

/// Loads a bzImage and prepares the 64-bit Linux boot protocol.
pub fn load_bzimage(
    mem: &GuestMemory,
    memory_size: u64,
    payload: &PayloadConfig,
    vcpus: u8,
) -> Result<BootPlan, BootError> {
    let path = payload.kernel.as_path();
    let mut file = open(path)?;
    check_bzimage_size(path, &mut file)?;
    let result = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIGH_MEMORY_START)))
        .map_err(|e| BootError::InvalidKernel {
            path: path.to_owned(),
            what: "bzImage",
            reason: e.to_string(),
        })?;
    let Some(hdr) = result.setup_header else {
        return Err(BootError::InvalidKernel {
            path: path.to_owned(),
            what: "bzImage",
            reason: "no setup header".into(),
        });
    };
    let cmdline_max = if hdr.version >= PROTOCOL_CMDLINE_SIZE {
        hdr.cmdline_size as usize
    } else {
        LINUX_CMDLINE_SIZE as usize - 1
    };
    let loaded = Loaded {
        kernel_end: result.kernel_end,
        initrd_addr_max: u64::from(hdr.initrd_addr_max),
        cmdline_max,
    };
    let common = write_common(mem, memory_size, payload, vcpus, &loaded)?;

    write_zero_page(mem, memory_size, hdr, payload, &common)?;

    let entry = result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET;
    Ok(BootPlan {
        boot_cpu: InitialCpuState::linux_long(entry, LINUX_BOOT_STACK, common.cr3, ZERO_PAGE_ADDR),
        debug_exit: false,
        format: KernelFormat::BzImage,
    })
}

/// Loads an ELF `vmlinux`: PVH when it carries the PVH note, otherwise the
/// 64-bit boot protocol at its entry point.
pub fn load_elf(
    mem: &GuestMemory,
    memory_size: u64,
    payload: &PayloadConfig,
    vcpus: u8,
) -> Result<BootPlan, BootError> {
    let path = payload.kernel.as_path();
    let mut file = open(path)?;
    let result =
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIGH_MEMORY_START))).map_err(|e| {
            BootError::InvalidKernel {
                path: path.to_owned(),
                what: "ELF kernel",
                reason: match e {
                    // linux-loader checks the ELF entry before looking at notes;
                    // an image whose entry is unusable can only boot through PVH.
                    LoaderError::Elf(ElfError::InvalidEntryAddress) => NO_ENTRY.to_string(),
                    other => other.to_string(),
                },
            }
        })?;
    let loaded = Loaded {
        kernel_end: result.kernel_end,
        initrd_addr_max: u64::from(u32::MAX),
        cmdline_max: LINUX_CMDLINE_SIZE as usize - 1,
    };
    match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => {
            let common = write_common(mem, memory_size, payload, vcpus, &loaded)?;
            write_pvh_start_info(mem, memory_size, &common)?;
            Ok(BootPlan {
                boot_cpu: InitialCpuState::pvh(entry.0, PVH_START_INFO_ADDR),
                debug_exit: false,
                format: KernelFormat::Elf,
            })
        }
        _ => {
            // linux-loader only loads x86_64 ELF64 images, so a 64-bit
            // entry exists if the entry lies in the loaded image.
            let entry = result.kernel_load.0;
            if !(HIGH_MEMORY_START..result.kernel_end).contains(&entry) {
                return Err(BootError::InvalidKernel {
                    path: path.to_owned(),
                    what: "ELF kernel",
                    reason: NO_ENTRY.into(),
                });
            }
            let common = write_common(mem, memory_size, payload, vcpus, &loaded)?;
            // A vmlinux has no setup header; describe the boot like a bzImage's.
            let hdr = setup_header {
                boot_flag: 0xaa55,
                header: 0x5372_6448,
                kernel_alignment: 0x100_0000,
                ..Default::default()
            };
            write_zero_page(mem, memory_size, hdr, payload, &common)?;
            Ok(BootPlan {
                boot_cpu: InitialCpuState::linux_long(
                    entry,
                    LINUX_BOOT_STACK,
                    common.cr3,
                    ZERO_PAGE_ADDR,
                ),
                debug_exit: false,
                format: KernelFormat::Elf,
            })
        }
    }
}

/// Writes the zero page (`boot_params`) for the 64-bit Linux boot protocol:
/// the setup header completed with the command line and initramfs, the RSDP
/// address and the E820 map.
fn write_zero_page(
    mem: &GuestMemory,
    memory_size: u64,
    mut hdr: setup_header,
    payload: &PayloadConfig,
    common: &Common,
) -> Result<(), BootError> {
    hdr.type_of_loader = LOADER_TYPE_OTHER;
    hdr.cmd_line_ptr = LINUX_CMDLINE_ADDR as u32;
    hdr.cmdline_size = payload.cmdline.len() as u32;
    if let Some((addr, size)) = common.initramfs {
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }
    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: common.rsdp,
        ..Default::default()
    };
    let map = memory_map(memory_size);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len().min(ZERO_PAGE_E820_MAX) as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|e| BootError::BootParams(e.to_string()))
}

/// `screen_info.orig_video_isVGA` for a firmware-provided linear framebuffer
/// (`VIDEO_TYPE_EFI` in Linux's `uapi/linux/screen_info.h`): Linux's efifb drives it.
const VIDEO_TYPE_EFI: u8 = 0x70;

/// Announces the VNC framebuffer (at [`FRAMEBUFFER_ADDR`], `width` × `height`, 32 bits per
/// pixel, red/green/blue at bits 16/8/0) in the zero page written by [`load_bzimage`], the
/// way EFI firmware does for its GOP framebuffer, so Linux's built-in efifb uses it without
/// firmware. Only the 64-bit boot protocol has a zero page: PVH guests get no `screen_info`.
pub fn announce_framebuffer(mem: &GuestMemory, width: u32, height: u32) -> Result<(), BootError> {
    let addr = GuestAddress(ZERO_PAGE_ADDR);
    let mut params: boot_params = mem.read_obj(addr).map_err(write_err("the zero page"))?;
    let too_big = || BootError::BootParams(format!("a {width}x{height} framebuffer is too large"));
    let line = width.checked_mul(4).ok_or_else(too_big)?;
    let si = &mut params.screen_info;
    si.orig_video_isVGA = VIDEO_TYPE_EFI;
    si.lfb_width = u16::try_from(width).map_err(|_| too_big())?;
    si.lfb_height = u16::try_from(height).map_err(|_| too_big())?;
    si.lfb_depth = 32;
    si.lfb_base = FRAMEBUFFER_ADDR as u32;
    si.ext_lfb_base = 0;
    si.lfb_size = line.checked_mul(height).ok_or_else(too_big)?;
    si.lfb_linelength = u16::try_from(line).map_err(|_| too_big())?;
    (si.red_size, si.red_pos) = (8, 16);
    (si.green_size, si.green_pos) = (8, 8);
    (si.blue_size, si.blue_pos) = (8, 0);
    (si.rsvd_size, si.rsvd_pos) = (8, 24);
    mem.write_obj(params, addr)
        .map_err(write_err("the zero page"))
}

/// Refuses a bzImage shorter than its own header says (`setup_sects` at
/// 0x1f1, `syssize` in 16-byte units at 0x1f4): a truncated download.
fn check_bzimage_size(path: &Path, file: &mut File) -> Result<(), BootError> {
    use std::io::Read;
    let invalid = |reason: String| BootError::InvalidKernel {
        path: path.to_owned(),
        what: "bzImage",
        reason,
    };
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|e| invalid(e.to_string()))?;
    let mut hdr = [0u8; 7];
    file.seek(SeekFrom::Start(0x1f1))
        .and_then(|_| file.read_exact(&mut hdr))
        .map_err(|_| {
            invalid(format!(
                "truncated: {len} bytes is shorter than the setup header"
            ))
        })?;
    let setup_sects = if hdr[0] == 0 { 4 } else { u64::from(hdr[0]) };
    let syssize = u64::from(u32::from_le_bytes([hdr[3], hdr[4], hdr[5], hdr[6]]));
    let expected = (setup_sects + 1) * 512 + syssize * 16;
    if len < expected {
        return Err(invalid(format!(
            "truncated: the header describes {expected} bytes but the file has {len}"
        )));
    }
    file.rewind().map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

fn open(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::KernelRead {
        path: path.to_owned(),
        source,
    })
}

/// Boot data common to every Linux entry.
struct Common {
    cr3: u64,
    rsdp: u64,
    initramfs: Option<(u64, u64)>,
}

fn write_common(
    mem: &GuestMemory,
    memory_size: u64,
    payload: &PayloadConfig,
    vcpus: u8,
    loaded: &Loaded,
) -> Result<Common, BootError> {
    if payload.cmdline.len() > loaded.cmdline_max || payload.cmdline.contains('\0') {
        return Err(BootError::CmdlineTooLong {
            len: payload.cmdline.len(),
            max: loaded.cmdline_max,
        });
    }
    let mut cmdline = payload.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(LINUX_CMDLINE_ADDR))
        .map_err(write_err("the command line"))?;
    mem.write_slice(&gdt_bytes(), GuestAddress(GDT_ADDR))
        .map_err(write_err("the GDT"))?;
    mem.write_slice(&RESET_VECTOR_STUB, GuestAddress(RESET_VECTOR_ADDR))
        .map_err(write_err("the reset vector"))?;
    let cr3 = paging::write_identity_tables(mem, MMIO_HOLE_END)?;
    let rsdp = acpi::write_tables(mem, vcpus).map_err(BootError::Acpi)?;
    let initramfs = match &payload.initramfs {
        Some(path) => Some(load_initramfs(mem, memory_size, path, loaded)?),
        None => None,
    };
    Ok(Common {
        cr3,
        rsdp,
        initramfs,
    })
}

/// Places the initramfs at the highest page-aligned address that ends below
/// both low RAM's end and the kernel's limit, above the kernel.
fn load_initramfs(
    mem: &GuestMemory,
    memory_size: u64,
    path: &Path,
    loaded: &Loaded,
) -> Result<(u64, u64), BootError> {
    let read_err = |source| BootError::InitramfsRead {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.seek(SeekFrom::End(0)).map_err(read_err)?;
    file.rewind().map_err(read_err)?;
    let limit = memory_size
        .min(MMIO_HOLE_START)
        .min(loaded.initrd_addr_max.saturating_add(1));
    let floor = loaded.kernel_end.div_ceil(PAGE) * PAGE;
    let available = limit.saturating_sub(floor);
    if size > available {
        return Err(BootError::InitramfsTooLarge {
            path: path.to_owned(),
            size,
            available,
        });
    }
    let addr = (limit - size) / PAGE * PAGE;
    let len = usize::try_from(size).map_err(|_| BootError::InitramfsTooLarge {
        path: path.to_owned(),
        size,
        available,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| BootError::InitramfsRead {
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok((addr, size))
}

fn write_pvh_start_info(
    mem: &GuestMemory,
    memory_size: u64,
    common: &Common,
) -> Result<(), BootError> {
    let map: Vec<hvm_memmap_table_entry> = memory_map(memory_size)
        .into_iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: LINUX_CMDLINE_ADDR,
        rsdp_paddr: common.rsdp,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_START_INFO_ADDR));
    if let Some((paddr, size)) = common.initramfs {
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_ADDR;
        params = BootParams::new(&start_info, GuestAddress(PVH_START_INFO_ADDR));
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_ADDR));
    }
    params.set_sections(&map, GuestAddress(PVH_MEMMAP_ADDR));
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem)
        .map_err(|e| BootError::BootParams(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, MIB};

    #[test]
    fn the_framebuffer_is_announced_as_an_efi_framebuffer() {
        let mem = create_guest_memory(64 * MIB).expect("mem");
        announce_framebuffer(&mem, 1024, 768).expect("announce");
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).expect("read");
        let si = params.screen_info;
        assert_eq!(si.orig_video_isVGA, 0x70);
        assert_eq!({ si.lfb_base }, 0xd000_0000);
        assert_eq!(
            ({ si.lfb_width }, { si.lfb_height }, { si.lfb_depth }),
            (1024, 768, 32)
        );
        assert_eq!({ si.lfb_linelength }, 4096);
        assert_eq!({ si.lfb_size }, 4096 * 768);
        assert_eq!((si.red_pos, si.green_pos, si.blue_pos), (16, 8, 0));
        assert!(
            announce_framebuffer(&mem, 70_000, 768).is_err(),
            "too wide for screen_info"
        );
    }

    #[test]
    fn initramfs_goes_as_high_as_allowed_and_too_large_is_an_error() {
        let mem = create_guest_memory(64 * MIB).expect("mem");
        let dir = tempfile::tempdir().expect("dir");
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, vec![0x5au8; 10_000]).expect("write");
        let loaded = Loaded {
            kernel_end: 8 * MIB,
            initrd_addr_max: 0x37ff_ffff,
            cmdline_max: 2047,
        };
        let (addr, size) = load_initramfs(&mem, 64 * MIB, &initrd, &loaded).expect("fits");
        assert_eq!(size, 10_000);
        assert_eq!(addr % PAGE, 0);
        assert!(addr + size <= 64 * MIB && addr + size > 64 * MIB - PAGE);
        let byte: u8 = mem.read_obj(GuestAddress(addr + 9_999)).expect("read");
        assert_eq!(byte, 0x5a);

        std::fs::write(&initrd, vec![0u8; 57 * MIB as usize]).expect("write");
        let err = load_initramfs(&mem, 64 * MIB, &initrd, &loaded).expect_err("too big");
        assert!(matches!(err, BootError::InitramfsTooLarge { .. }), "{err}");
    }
}
