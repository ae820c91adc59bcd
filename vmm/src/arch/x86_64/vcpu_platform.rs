//! Per-vCPU platform state a Linux guest expects from firmware: boot MSRs
//! and the local APIC's LINT0/LINT1 wiring (ExtINT from the PIC, NMI).
//!
//! Some hosts (PVM) refuse individual MSRs; a refused MSR is logged and
//! skipped, because none of them is required for a correct boot.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;
use tracing::warn;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// LAPIC register offsets of LVT LINT0 and LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7 << 8;
const APIC_MODE_NMI: u32 = 0x4 << 8;

/// The MSR values a Linux boot vCPU starts with.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

/// Sets the boot MSRs and LINT0/LINT1 on `vcpu`.
pub fn setup_linux_vcpu(index: u8, vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    for (index_msr, data) in boot_msrs() {
        let entry = kvm_msr_entry {
            index: index_msr,
            data,
            ..Default::default()
        };
        let set = Msrs::from_entries(&[entry])
            .map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))
            .and_then(|msrs| vcpu.set_msrs(&msrs));
        if !matches!(set, Ok(1)) {
            warn!(
                vcpu = index,
                msr = format_args!("{index_msr:#x}"),
                "host refused a boot MSR"
            );
        }
    }
    let mut lapic = vcpu.get_lapic()?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let reg = &mut lapic.regs[offset..offset + 4];
        let old = u32::from_le_bytes([reg[0] as u8, reg[1] as u8, reg[2] as u8, reg[3] as u8]);
        // Keep everything but the delivery mode (bits 8-10) and unmask.
        let new = (old & !0x0001_0700) | mode;
        for (dst, b) in reg.iter_mut().zip(new.to_le_bytes()) {
            *dst = b as _;
        }
    }
    vcpu.set_lapic(&lapic)
}
