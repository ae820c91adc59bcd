//! The launch spec as the VMM sees it: the types of [`vireo_spec`] (one definition, shared with
//! the `vireo` launcher and the Kubernetes controller; re-exported here so embedders need one
//! dependency) and the one thing only the VMM can know, this host's limits.

pub use vireo_spec::{
    ConfigError, DirtyLogMode, DiskConfig, DiskFormat, HostLimits, MemoryBacking, NetConfig,
    PayloadConfig, SerialConfig, VmConfig, MAX_PCI_DEVICES, MIN_MEMORY_MIB, SPEC_VERSION,
};

use crate::memory::MIB;

/// This host's limits: `max_vcpus` as KVM reports it, and the physical RAM the kernel reports
/// (unbounded if `sysinfo(2)` fails, so a failed probe never refuses a VM).
pub fn probe_host_limits(max_vcpus: usize) -> HostLimits {
    // SAFETY: sysinfo only writes into the zeroed struct we pass.
    let ram_mib = unsafe {
        let mut info: libc::sysinfo = std::mem::zeroed();
        if libc::sysinfo(&mut info) == 0 {
            (info.totalram as u64).saturating_mul(u64::from(info.mem_unit)) / MIB
        } else {
            u64::MAX
        }
    };
    HostLimits { max_vcpus, ram_mib }
}
