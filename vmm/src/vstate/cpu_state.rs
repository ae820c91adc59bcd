//! A vCPU's complete KVM state, read from a parked vCPU and written into a fresh one.
//!
//! What is saved: CPUID, MP state, general and special registers, XSAVE (which holds the FPU
//! and SSE/AVX state), XCRs, debug registers, the local APIC, every MSR this host lets KVM
//! save (`KVM_GET_MSR_INDEX_LIST` plus those the VMM sets itself that the list omits here:
//! the MTRRs including `MTRRdefType` 0x2ff, EFER, APIC base, SPEC_CTRL 0x48, TSC_AUX) and the
//! pending-event state.
//!
//! Order matters to KVM, and follows Firecracker's documented order. Saving: MP state,
//! registers, special registers, XSAVE, XCRs, debug registers, LAPIC, MSRs, vCPU events last
//! (reading the others must not change what is pending). Restoring: CPUID first, then MP
//! state, registers, special registers, XSAVE, XCRs, debug registers, LAPIC before the MSRs
//! (the TSC-deadline MSR is only accepted by a LAPIC in TSC-deadline mode), MSRs with the TSC
//! before `TSC_DEADLINE`, vCPU events last. Once the VM's clock is restored too, the restorer
//! calls `KVMCLOCK_CTRL` on each vCPU to tell a kvmclock guest it was stopped, so its
//! soft-lockup watchdog does not fire.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// MSRs the VMM sets or the guest relies on that `KVM_GET_MSR_INDEX_LIST` omits on some hosts.
const EXTRA_MSRS: &[u32] = &[
    0x10,        // IA32_TSC
    0x1b,        // IA32_APIC_BASE
    0x48,        // IA32_SPEC_CTRL
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x1a0,       // IA32_MISC_ENABLE
    0x200,       // MTRRphysBase0 … MTRRphysMask7 (0x200..=0x20f)
    0x250,       // MTRRfix64K_00000
    0x258,       // MTRRfix16K_80000
    0x259,       // MTRRfix16K_A0000
    0x268,       // MTRRfix4K_C0000 … MTRRfix4K_F8000 (0x268..=0x26f)
    0x277,       // IA32_PAT
    0x2ff,       // MTRRdefType
    0x6e0,       // IA32_TSC_DEADLINE
    0xc000_0080, // EFER
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SYSCALL_MASK
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
];
const MSR_TSC: u32 = 0x10;
const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// How many MSRs one `KVM_GET_MSRS` / `KVM_SET_MSRS` call carries.
const MSR_CHUNK: usize = 64;

/// Why a vCPU's state could not be read or written.
#[derive(Debug, Error)]
pub enum VcpuStateError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {index}: cannot {what}: {source}")]
    Ioctl {
        /// The vCPU.
        index: u8,
        /// What was being read or written.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only part of the saved MSRs.
    #[error("vCPU {index}: this host refused MSR {msr:#x} from the snapshot")]
    MsrRefused {
        /// The vCPU.
        index: u8,
        /// The first MSR KVM did not accept.
        msr: u32,
    },
    /// The saved state is not a valid vCPU state.
    #[error("vCPU {index}: invalid saved state: {reason}")]
    Invalid {
        /// The vCPU.
        index: u8,
        /// What is wrong.
        reason: String,
    },
}

/// Everything KVM holds for one vCPU. Serialized as the kernel's own structures (byte images
/// of `kvm_regs`, `kvm_sregs`, …), so it is only meaningful on x86_64 KVM.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's index (its APIC ID).
    pub index: u8,
    /// The CPUID the vCPU was given.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Running, halted, waiting for SIPI, …
    pub mp_state: kvm_mp_state,
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// The XSAVE area: x87 FPU, SSE, AVX and the other XSAVE components.
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The local APIC's register page.
    pub lapic: kvm_lapic_state,
    /// MSRs, TSC first and TSC_DEADLINE last.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub vcpu_events: kvm_vcpu_events,
}

/// The MSRs to save on this host, in restore order: the TSC first, TSC_DEADLINE last.
pub fn msrs_to_save(kvm: &Kvm) -> Vec<u32> {
    let mut list: Vec<u32> = kvm
        .get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .unwrap_or_default();
    list.extend(EXTRA_MSRS);
    list.extend(0x201..=0x20f);
    list.extend(0x269..=0x26f);
    list.sort_unstable();
    list.dedup();
    let rank = |m: &u32| match *m {
        MSR_TSC => 0,
        MSR_TSC_DEADLINE => 2,
        _ => 1,
    };
    list.sort_by_key(rank);
    list
}

fn ioctl(index: u8, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Ioctl {
        index,
        what,
        source,
    }
}

/// Reads the state of vCPU `index` (which must not be in `KVM_RUN`), saving those of `msrs`
/// this host can read (an MSR KVM refuses to read is not saved: it has no state here).
pub fn save(fd: &VcpuFd, index: u8, msrs: &[u32]) -> Result<VcpuState, VcpuStateError> {
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl(index, "read CPUID"))?
        .as_slice()
        .to_vec();
    let mp_state = fd.get_mp_state().map_err(ioctl(index, "read MP state"))?;
    let regs = fd.get_regs().map_err(ioctl(index, "read registers"))?;
    let sregs = fd
        .get_sregs()
        .map_err(ioctl(index, "read special registers"))?;
    let xsave = fd.get_xsave().map_err(ioctl(index, "read XSAVE state"))?;
    let xcrs = fd.get_xcrs().map_err(ioctl(index, "read XCRs"))?;
    let debug_regs = fd
        .get_debug_regs()
        .map_err(ioctl(index, "read debug registers"))?;
    let lapic = fd.get_lapic().map_err(ioctl(index, "read the LAPIC"))?;
    let msrs = read_msrs(fd, index, msrs)?;
    let vcpu_events = fd
        .get_vcpu_events()
        .map_err(ioctl(index, "read vCPU events"))?;
    Ok(VcpuState {
        index,
        cpuid,
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        msrs,
        vcpu_events,
    })
}

/// Reads `wanted` in chunks; `KVM_GET_MSRS` stops at the first MSR it cannot read, which is
/// then skipped.
fn read_msrs(fd: &VcpuFd, index: u8, wanted: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(wanted.len());
    let mut pos = 0;
    while pos < wanted.len() {
        let chunk = &wanted[pos..(pos + MSR_CHUNK).min(wanted.len())];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&m| kvm_msr_entry {
                index: m,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| VcpuStateError::Invalid {
            index,
            reason: format!("MSR list: {e:?}"),
        })?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(ioctl(index, "read MSRs"))?
            .min(chunk.len());
        out.extend_from_slice(&msrs.as_slice()[..n]);
        pos += n;
        if n < chunk.len() {
            // KVM stopped at an MSR it cannot read: skip it.
            pos += 1;
        }
    }
    Ok(out)
}

/// Writes `state` into a vCPU that has not run yet, in KVM's required order.
pub fn restore(fd: &VcpuFd, state: &VcpuState) -> Result<(), VcpuStateError> {
    let index = state.index;
    if state.cpuid.is_empty() || state.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
        return Err(VcpuStateError::Invalid {
            index,
            reason: format!("{} CPUID entries", state.cpuid.len()),
        });
    }
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|e| VcpuStateError::Invalid {
        index,
        reason: format!("CPUID: {e:?}"),
    })?;
    fd.set_cpuid2(&cpuid).map_err(ioctl(index, "set CPUID"))?;
    fd.set_mp_state(state.mp_state)
        .map_err(ioctl(index, "set MP state"))?;
    fd.set_regs(&state.regs)
        .map_err(ioctl(index, "set registers"))?;
    fd.set_sregs(&state.sregs)
        .map_err(ioctl(index, "set special registers"))?;
    // SAFETY: `kvm_xsave` is the legacy 4 KiB area this host's KVM produced with
    // KVM_GET_XSAVE (snapshots are refused on hosts whose XSAVE area is larger).
    unsafe { fd.set_xsave(&state.xsave) }.map_err(ioctl(index, "set XSAVE state"))?;
    // A host without XSAVE (e.g. a nested L1 VM run with `-cpu max,-xsave`) saves no XCRs
    // (KVM_GET_XCRS answers nr_xcrs = 0) and refuses KVM_SET_XCRS with EINVAL whatever it is
    // given: there is nothing to restore then.
    if state.xcrs.nr_xcrs > 0 {
        fd.set_xcrs(&state.xcrs).map_err(ioctl(index, "set XCRs"))?;
    }
    fd.set_debug_regs(&state.debug_regs)
        .map_err(ioctl(index, "set debug registers"))?;
    fd.set_lapic(&state.lapic)
        .map_err(ioctl(index, "set the LAPIC"))?;
    for chunk in state.msrs.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk).map_err(|e| VcpuStateError::Invalid {
            index,
            reason: format!("MSR list: {e:?}"),
        })?;
        let n = fd.set_msrs(&msrs).map_err(ioctl(index, "set MSRs"))?;
        if n < chunk.len() {
            return Err(VcpuStateError::MsrRefused {
                index,
                msr: chunk[n].index,
            });
        }
    }
    fd.set_vcpu_events(&state.vcpu_events)
        .map_err(ioctl(index, "set vCPU events"))?;
    Ok(())
}
