//! Opening `/dev/kvm` and checking what this host's KVM can do.
//!
//! Every capability Vireo relies on is checked up front, so a host that
//! lacks one fails with a [`KvmError`] naming it instead of a confusing
//! ioctl failure later.
//!
//! The device is `/dev/kvm` unless [`KVM_DEVICE_ENV`] names another path (for tests and
//! preflight checks). Why opening it failed is told apart by errno ([`open_error`]): a missing
//! device, a device cgroup or seccomp filter refusing it (`EPERM`, which a container gets even
//! as root), and file permissions (`EACCES`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};
use thiserror::Error;

/// The KVM device opened when [`KVM_DEVICE_ENV`] is unset.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// Environment variable naming another path for the KVM device (tests, preflight checks).
pub const KVM_DEVICE_ENV: &str = "VIREO_KVM_DEVICE";

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
    /// The KVM device does not exist.
    #[error(
        "{} does not exist: KVM is not available on this host (is the kvm module loaded?)",
        .0.display()
    )]
    NotPresent(PathBuf),
    /// Opening the device failed with `EPERM`: not file permissions but a device cgroup or a
    /// seccomp filter (what a container whose cgroup lacks `c 10:232 rwm` gets, even as root).
    #[error(
        "{} exists but this process may not open it (EPERM): a container's device cgroup must \
         allow c 10:232 rwm (Kubernetes: a device plugin, or containerd's base_runtime_spec)",
        .0.display()
    )]
    DeviceCgroup(PathBuf),
    /// Opening the device failed with `EACCES` for a user other than root.
    #[error(
        "permission denied opening {}: run as root or add this user to the kvm group",
        .0.display()
    )]
    PermissionDenied(PathBuf),
    /// Opening the device failed with `EACCES` for root: the file's mode (or a security module)
    /// forbids it, which is unusual.
    #[error(
        "permission denied opening {} even as root (EACCES): the device file's mode or a \
         security module (SELinux, AppArmor) forbids it; expected crw-rw---- root:kvm or wider",
        .0.display()
    )]
    ModeForbidsRoot(PathBuf),
    /// Any other failure to open the device.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The device.
        path: PathBuf,
        /// What `open` returned.
        #[source]
        source: kvm_ioctls::Error,
    },
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

/// The KVM device to open: [`KVM_DEVICE_ENV`] if set and not empty, else [`KVM_DEVICE`].
pub fn device_path() -> PathBuf {
    match std::env::var_os(KVM_DEVICE_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(KVM_DEVICE),
    }
}

/// The error for a failed open of the KVM device at `path` by a process that is root
/// (`is_root`, effective uid 0) or not.
pub fn open_error(e: kvm_ioctls::Error, path: &Path, is_root: bool) -> KvmError {
    let path = path.to_path_buf();
    match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::NotPresent(path),
        libc::EPERM => KvmError::DeviceCgroup(path),
        libc::EACCES if is_root => KvmError::ModeForbidsRoot(path),
        libc::EACCES => KvmError::PermissionDenied(path),
        _ => KvmError::Open { path, source: e },
    }
}

/// An open, checked KVM device.
#[derive(Debug)]
pub struct KvmContext {
    kvm: Kvm,
    max_vcpus: usize,
}

impl KvmContext {
    /// Opens the KVM device ([`device_path`]) and checks the API version and required
    /// capabilities.
    pub fn open() -> Result<Self, KvmError> {
        let path = device_path();
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| KvmError::Open {
            path: path.clone(),
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let is_root = unsafe { libc::geteuid() } == 0;
        let kvm = Kvm::new_with_path(&c_path).map_err(|e| open_error(e, &path, is_root))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn err(errno: i32, is_root: bool) -> KvmError {
        open_error(
            kvm_ioctls::Error::new(errno),
            Path::new("/dev/kvm"),
            is_root,
        )
    }

    #[test]
    fn eperm_is_the_device_cgroup_for_root_and_others() {
        for is_root in [true, false] {
            let e = err(libc::EPERM, is_root);
            assert!(matches!(e, KvmError::DeviceCgroup(_)), "{e:?}");
            let text = e.to_string();
            assert!(text.contains("/dev/kvm exists but this process may not open it (EPERM)"));
            assert!(text.contains("c 10:232 rwm"), "{text}");
            assert!(text.contains("base_runtime_spec"), "{text}");
        }
    }

    #[test]
    fn eacces_depends_on_who_asks() {
        let user = err(libc::EACCES, false);
        assert!(matches!(user, KvmError::PermissionDenied(_)), "{user:?}");
        assert!(user.to_string().contains("add this user to the kvm group"));
        let root = err(libc::EACCES, true);
        assert!(matches!(root, KvmError::ModeForbidsRoot(_)), "{root:?}");
        assert!(root.to_string().contains("even as root"), "{root}");
        assert!(!root.to_string().contains("run as root"), "{root}");
    }

    #[test]
    fn a_missing_device_and_other_errors_name_the_path() {
        for errno in [libc::ENOENT, libc::ENODEV, libc::ENXIO] {
            let e = err(errno, true);
            assert!(matches!(e, KvmError::NotPresent(_)), "{e:?}");
            assert!(e.to_string().starts_with("/dev/kvm does not exist"), "{e}");
        }
        let e = open_error(
            kvm_ioctls::Error::new(libc::EMFILE),
            Path::new("/x/kvm"),
            false,
        );
        assert!(matches!(e, KvmError::Open { .. }), "{e:?}");
        assert!(e.to_string().starts_with("cannot open /x/kvm: "), "{e}");
    }
}
