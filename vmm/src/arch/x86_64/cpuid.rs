//! The CPUID a vCPU sees: what KVM supports on this host, with per-vCPU
//! topology filled in and the KVM signature leaf kept.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf of the hypervisor signature ("KVMKVMKVM").
pub const KVM_SIGNATURE_LEAF: u32 = 0x4000_0000;
const HYPERVISOR_BIT: u32 = 1 << 31;

/// Builds the CPUID of vCPU `index` of `count` from the host's supported set.
///
/// Sets the initial APIC ID (leaf 1 EBX, leaf 0xB EDX) and the logical CPU
/// count, marks the CPU as running under a hypervisor, and adds the KVM
/// signature leaf if the host's list lacks it, so guests find KVM's
/// paravirtual features.
pub fn vcpu_cpuid(supported: &CpuId, index: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    let mut has_signature = false;
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                entry.ecx |= HYPERVISOR_BIT;
            }
            0xb => entry.edx = u32::from(index),
            KVM_SIGNATURE_LEAF => has_signature = true,
            _ => {}
        }
    }
    if !has_signature {
        let sig = kvm_cpuid_entry2 {
            function: KVM_SIGNATURE_LEAF,
            eax: KVM_SIGNATURE_LEAF + 1,
            ebx: u32::from_le_bytes(*b"KVMK"),
            ecx: u32::from_le_bytes(*b"VMKV"),
            edx: u32::from_le_bytes(*b"M\0\0\0"),
            ..Default::default()
        };
        // A full list keeps its entries; the signature is then simply absent.
        let _ = cpuid.push(sig);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_apic_id_and_adds_signature() {
        let leaf1 = kvm_cpuid_entry2 {
            function: 1,
            ebx: 0x1234_5678,
            ..Default::default()
        };
        let base = CpuId::from_entries(&[leaf1]).expect("cpuid");
        let c = vcpu_cpuid(&base, 3, 4);
        let e1 = c
            .as_slice()
            .iter()
            .find(|e| e.function == 1)
            .expect("leaf 1");
        assert_eq!(e1.ebx >> 24, 3);
        assert_eq!((e1.ebx >> 16) & 0xff, 4);
        assert_eq!(e1.ebx & 0xffff, 0x5678);
        assert_ne!(e1.ecx & HYPERVISOR_BIT, 0);
        let sig = c
            .as_slice()
            .iter()
            .find(|e| e.function == KVM_SIGNATURE_LEAF)
            .expect("signature");
        assert_eq!(sig.ebx.to_le_bytes(), *b"KVMK");
    }
}
