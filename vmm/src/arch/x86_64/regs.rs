//! The initial architectural state of a vCPU: a public, documented feature.
//!
//! Boot loaders in this crate (the Linux boot protocols, the ring-3 user-mode
//! protocol) describe where a vCPU starts as an [`InitialCpuState`]; firmware
//! loaders and unit-test loaders written by embedders can do the same and
//! hand it to [`crate::VmBuilder::initial_cpu_state`] to start the boot vCPU
//! in any mode: real mode, 32-bit protected mode, or 64-bit long mode at any
//! privilege level. The state is applied on top of the vCPU's reset state,
//! so fields it does not name (APIC base, pending interrupts) keep KVM's
//! values.

use kvm_bindings::{kvm_dtable, kvm_fpu, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;

use super::gdt::{self, GDT};
use super::layout::GDT_ADDR;

/// CR0: protection enable.
pub const CR0_PE: u64 = 1 << 0;
/// CR0: monitor coprocessor.
pub const CR0_MP: u64 = 1 << 1;
/// CR0: extension type (always 1).
pub const CR0_ET: u64 = 1 << 4;
/// CR0: numeric error.
pub const CR0_NE: u64 = 1 << 5;
/// CR0: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4: OS supports FXSAVE/FXRSTOR (enables SSE).
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4: OS supports unmasked SIMD exceptions.
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS: reserved bit 1, always set.
pub const RFLAGS_RESERVED: u64 = 1 << 1;
/// RFLAGS: I/O privilege level 3 (port I/O allowed from ring 3).
pub const RFLAGS_IOPL3: u64 = 3 << 12;

/// Segment and descriptor-table registers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SegmentRegisters {
    /// Code segment.
    pub cs: kvm_segment,
    /// Data segment (also used for ES, FS and GS).
    pub ds: kvm_segment,
    /// Stack segment.
    pub ss: kvm_segment,
    /// Global descriptor table register.
    pub gdt: kvm_dtable,
    /// Interrupt descriptor table register (limit 0: no IDT).
    pub idt: kvm_dtable,
}

/// Control registers and EFER.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlRegisters {
    /// CR0.
    pub cr0: u64,
    /// CR3 (page-table root).
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

/// Where and how a vCPU starts executing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InitialCpuState {
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segment registers and descriptor tables.
    pub segments: SegmentRegisters,
    /// Control registers.
    pub control: ControlRegisters,
}

impl InitialCpuState {
    /// A vCPU in 64-bit long mode at CPL 3 with IOPL 3 and interrupts off,
    /// using the VMM's GDT (which must be written at [`GDT_ADDR`]) and the
    /// page tables at `cr3`. `args` go to RDI, RSI, RDX, RCX (the System V
    /// argument registers), so `entry` can be an `extern "C"` function.
    pub fn user_mode_long(entry: u64, stack_top: u64, cr3: u64, args: [u64; 4]) -> Self {
        let cs = gdt::segment_from_gdt(3);
        let ds = gdt::segment_from_gdt(4);
        let regs = kvm_regs {
            rip: entry,
            // As if `entry` had been called: RSP + 8 is 16-byte aligned.
            rsp: (stack_top & !0xf).saturating_sub(8),
            rflags: RFLAGS_RESERVED | RFLAGS_IOPL3,
            rdi: args[0],
            rsi: args[1],
            rdx: args[2],
            rcx: args[3],
            ..Default::default()
        };
        Self {
            regs,
            segments: SegmentRegisters {
                cs,
                ds,
                ss: ds,
                gdt: kvm_dtable {
                    base: GDT_ADDR,
                    limit: (GDT.len() * 8 - 1) as u16,
                    padding: [0; 3],
                },
                idt: kvm_dtable::default(),
            },
            control: ControlRegisters {
                cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG,
                cr3,
                cr4: CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT,
                efer: EFER_LME | EFER_LMA,
            },
        }
    }

    /// A vCPU at the 64-bit entry of the Linux boot protocol: long mode,
    /// CPL 0, paging on with the identity tables at `cr3`, RSI = zero page.
    pub fn linux_long(entry: u64, stack: u64, cr3: u64, zero_page: u64) -> Self {
        let mut s = Self::user_mode_long(entry, stack + 8, cr3, [0; 4]);
        s.segments.cs = gdt::segment_from_gdt(1);
        s.segments.ds = gdt::segment_from_gdt(2);
        s.segments.ss = s.segments.ds;
        s.regs.rflags = RFLAGS_RESERVED;
        s.regs.rsi = zero_page;
        s.regs.rsp = stack;
        s.regs.rbp = stack;
        s
    }

    /// A vCPU at a PVH entry point: 32-bit protected mode, paging off,
    /// flat segments, EBX = physical address of `hvm_start_info`.
    pub fn pvh(entry: u64, start_info: u64) -> Self {
        let mut s = Self::linux_long(entry, 0, 0, 0);
        s.segments.cs = gdt::segment_from_gdt(5);
        s.regs = kvm_regs {
            rip: entry,
            rbx: start_info,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        };
        s.control = ControlRegisters {
            cr0: CR0_PE | CR0_ET,
            cr3: 0,
            cr4: 0,
            efer: 0,
        };
        s
    }

    /// Loads this state into `vcpu`, keeping KVM's values for anything not
    /// described here. The FPU is reset to its power-on state.
    pub fn apply(&self, vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
        let mut sregs = vcpu.get_sregs()?;
        let s = &self.segments;
        sregs.cs = s.cs;
        sregs.ds = s.ds;
        sregs.es = s.ds;
        sregs.fs = s.ds;
        sregs.gs = s.ds;
        sregs.ss = s.ss;
        sregs.gdt = s.gdt;
        sregs.idt = s.idt;
        sregs.cr0 = self.control.cr0;
        sregs.cr3 = self.control.cr3;
        sregs.cr4 = self.control.cr4;
        sregs.efer = self.control.efer;
        vcpu.set_sregs(&sregs)?;
        vcpu.set_regs(&self.regs)?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        vcpu.set_fpu(&fpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_mode_state_is_ring3_long_mode_with_iopl3() {
        let s = InitialCpuState::user_mode_long(0x20_0000, 0x9_f000, 0x9000, [1, 2, 3, 4]);
        assert_eq!(s.segments.cs.dpl, 3);
        assert_eq!(s.segments.cs.l, 1);
        assert_eq!(s.regs.rflags & RFLAGS_IOPL3, RFLAGS_IOPL3);
        assert_eq!(s.regs.rflags & (1 << 9), 0, "interrupts disabled");
        assert_eq!((s.regs.rsp + 8) % 16, 0);
        assert_eq!(
            [s.regs.rdi, s.regs.rsi, s.regs.rdx, s.regs.rcx],
            [1, 2, 3, 4]
        );
        assert_eq!(s.control.efer, EFER_LME | EFER_LMA);
    }

    #[test]
    fn linux_entries_run_in_ring0() {
        let l = InitialCpuState::linux_long(0x100_0200, 0x8ff0, 0x9000, 0x7000);
        assert_eq!((l.segments.cs.dpl, l.segments.cs.l), (0, 1));
        assert_eq!((l.regs.rsi, l.regs.rsp, l.regs.rflags), (0x7000, 0x8ff0, 2));
        let p = InitialCpuState::pvh(0x100_0000, 0x6000);
        assert_eq!(
            (p.segments.cs.l, p.segments.cs.db, p.segments.cs.dpl),
            (0, 1, 0)
        );
        assert_eq!(
            (p.regs.rbx, p.control.cr0 & CR0_PG, p.control.efer),
            (0x6000, 0, 0)
        );
    }
}
