//! Fixed guest-physical addresses of the structures the VMM writes at boot.
//!
//! ```text
//!  0x0000_0500  GDT
//!  0x0000_9000  PML4            (user-mode boot page tables)
//!  0x0000_a000  PDPT
//!  0x0001_0000  page directories, one 4 KiB page per mapped GiB
//!  0x0007_0000  command line    (up to 64 KiB)
//!  0x0009_f000  initial stack top, growing down to 0x8_0000
//!  0x0010_0000  lowest address a payload segment may occupy
//!  0xc000_0000  PCI MMIO hole (see `memory`)
//!  0xfec0_0000  IOAPIC (in-kernel)        0xfee0_0000  LAPIC (in-kernel)
//!  0xfffb_c000  KVM identity-map page     0xfffb_d000  KVM TSS (3 pages)
//! ```

/// Where the GDT is written.
pub const GDT_ADDR: u64 = 0x500;
/// Root of the identity page tables (PML4).
pub const PML4_ADDR: u64 = 0x9000;
/// The single page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// First page directory; one follows per GiB mapped.
pub const PD_START: u64 = 0x1_0000;
/// End (exclusive) of the page-directory area.
pub const PD_END: u64 = 0x7_0000;
/// Where the command line is written.
pub const CMDLINE_ADDR: u64 = 0x7_0000;
/// The most bytes of command line the user-mode boot accepts (with NUL).
pub const CMDLINE_MAX: u64 = 0x1_0000;
/// Initial stack pointer (16-byte aligned) for user-mode boot.
pub const STACK_TOP: u64 = 0x9_f000;
/// Lowest address a loaded payload segment may occupy.
pub const PAYLOAD_MIN_ADDR: u64 = 0x10_0000;
/// Address KVM uses for its real-mode TSS (three pages).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// Address of KVM's identity-map page.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// Base of the in-kernel IOAPIC.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;

/// PVH `hvm_start_info`.
pub const PVH_START_INFO_ADDR: u64 = 0x6000;
/// PVH module list (the initramfs).
pub const PVH_MODLIST_ADDR: u64 = 0x6100;
/// PVH memory map (up to 128 entries).
pub const PVH_MEMMAP_ADDR: u64 = 0x6200;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack of a Linux boot vCPU.
pub const LINUX_BOOT_STACK: u64 = 0x8ff0;
/// Where the Linux command line is written.
pub const LINUX_CMDLINE_ADDR: u64 = 0x2_0000;
/// Linux's `COMMAND_LINE_SIZE` on x86 (including the NUL): the limit for
/// PVH and for bzImages older than boot protocol 2.06.
pub const LINUX_CMDLINE_SIZE: u64 = 2048;
/// Start of the extended BIOS data area; RAM below it is usable.
pub const EBDA_START: u64 = 0x9_fc00;
/// Where the kernel and everything above 1 MiB start.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// RSDP, followed by the other ACPI tables up to 1 MiB.
pub const ACPI_RSDP_ADDR: u64 = 0xe_0000;
/// The x86 reset vector (F000:FFF0), where a CPU starts after reset and
/// where Linux's BIOS reboot method jumps.
pub const RESET_VECTOR_ADDR: u64 = 0xf_fff0;
/// PCIe ECAM window (256 buses × 1 MiB), inside the MMIO hole.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Size of the ECAM window.
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// 32-bit PCI MMIO window (the host bridge's, in the DSDT): from the hole's start up to the
/// ECAM. BARs take its first part, up to [`FRAMEBUFFER_ADDR`].
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
/// The linear framebuffer of a VM with a VNC console: its own memory slot, outside the E820
/// map, announced to bzImage guests through `screen_info` (and to the ring-3 test guest on
/// its command line).
pub const FRAMEBUFFER_ADDR: u64 = 0xd000_0000;
/// Room for the largest framebuffer (8 Mi pixels of 4 bytes).
pub const FRAMEBUFFER_MAX_SIZE: u64 = 32 << 20;
/// The KVM memory slot of the framebuffer (guest RAM takes slots 0 and 1).
pub const FRAMEBUFFER_SLOT: u32 = 8;
