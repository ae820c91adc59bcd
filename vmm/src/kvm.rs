//! Opening `/dev/kvm` and checking what this host's KVM can do.
//!
//! Every capability Vireo relies on is checked up front, so a host that
//! lacks one fails with a [`KvmError`] naming it instead of a confusing
//! ioctl failure later.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};
use thiserror::Error;

/// The only KVM API version that exists (and the one Vireo speaks).
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities the VMM cannot run without, with their names for errors.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

/// Why KVM could not be used.
#[derive(Debug, Error)]
pub enum KvmError {
    /// `/dev/kvm` does not exist.
    #[error(
        "/dev/kvm does not exist: KVM is not available on this host (is the kvm module loaded?)"
    )]
    NotPresent,
    /// `/dev/kvm` exists but this user may not open it.
    #[error("permission denied opening /dev/kvm: run as root or add this user to the kvm group")]
    PermissionDenied,
    /// Any other failure to open `/dev/kvm`.
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] kvm_ioctls::Error),
    /// The kernel speaks a KVM API version other than 12.
    #[error("KVM API version {0} is not supported (expected {KVM_API_VERSION})")]
    ApiVersion(i32),
    /// A capability Vireo needs is missing.
    #[error("KVM on this host lacks the required capability {0}")]
    MissingCapability(&'static str),
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("cannot read the CPUID KVM supports: {0}")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
}

/// An open, checked `/dev/kvm`.
#[derive(Debug)]
pub struct KvmContext {
    kvm: Kvm,
    max_vcpus: usize,
}

impl KvmContext {
    /// Opens `/dev/kvm` and checks the API version and required capabilities.
    pub fn open() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(|e| match e.errno() {
            libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::NotPresent,
            libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
            _ => KvmError::Open(e),
        })?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(KvmError::ApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(KvmError::MissingCapability(name));
            }
        }
        let max_vcpus = kvm.get_max_vcpus();
        Ok(Self { kvm, max_vcpus })
    }

    /// The underlying handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The most vCPUs one VM may have on this host.
    pub fn max_vcpus(&self) -> usize {
        self.max_vcpus
    }

    /// Whether this host's KVM supports the dirty ring (used for migration).
    pub fn has_dirty_ring(&self) -> bool {
        self.kvm.check_extension(Cap::DirtyLogRing)
    }

    /// The CPUID entries KVM can present to guests on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)
    }
}
