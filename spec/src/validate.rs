//! What makes a launch spec usable: the checks the launcher applies before it builds a VM and the
//! controller applies before it creates a launcher pod (the same code, so they cannot drift).
//!
//! [`VmConfig::validate`] needs nothing but the spec; [`VmConfig::validate_on`] adds the limits
//! of the host the VM is about to run on. Every error names the spec field it is about
//! ([`ConfigError::field`]) so a front door can translate it into its own words (a flag, a VMI
//! field).

use std::fmt;
use std::path::Path;

use crate::config::{DirtyLogMode, SerialConfig, VmConfig, SPEC_VERSION};
use crate::tap::check_tap_name;
use crate::vnc::{VncConfig, VncListen, MAX_VNC_PIXELS, MAX_VNC_SIDE, MIN_VNC_SIDE};

/// Most vCPUs a VM can have: xAPIC IDs are one byte and 0xff is the broadcast ID.
pub const MAX_VCPUS: u8 = 254;
/// Most disks plus NICs a VM can have: PCI bus 0 has 32 slots and the host bridge takes one.
pub const MAX_PCI_DEVICES: usize = 31;
/// Smallest guest memory accepted, in MiB.
pub const MIN_MEMORY_MIB: u64 = 8;
/// Largest guest memory accepted, in MiB (64 TiB: what a guest with 4-level paging can map).
pub const MAX_MEMORY_MIB: u64 = 64 << 20;
/// Longest unix socket path `bind(2)` takes (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// A field of the launch spec, as a typed JSON path (`disks[1].format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `version`.
    Version,
    /// `vcpus`.
    Vcpus,
    /// `memory_mib`.
    MemoryMib,
    /// `payload.kernel`.
    Kernel,
    /// `serial.path`.
    SerialPath,
    /// `disks`, the list as a whole (with `nets`: the device count).
    Disks,
    /// `disks[i].path`.
    DiskPath(usize),
    /// `nets[i].tap`.
    NetTap(usize),
    /// `nets[i].mac`.
    NetMac(usize),
    /// `api_socket`.
    ApiSocket,
    /// `vnc`.
    Vnc,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Version => f.write_str("version"),
            Field::Vcpus => f.write_str("vcpus"),
            Field::MemoryMib => f.write_str("memory_mib"),
            Field::Kernel => f.write_str("payload.kernel"),
            Field::SerialPath => f.write_str("serial.path"),
            Field::Disks => f.write_str("disks"),
            Field::DiskPath(i) => write!(f, "disks[{i}].path"),
            Field::NetTap(i) => write!(f, "nets[{i}].tap"),
            Field::NetMac(i) => write!(f, "nets[{i}].mac"),
            Field::ApiSocket => f.write_str("api_socket"),
            Field::Vnc => f.write_str("vnc"),
        }
    }
}

/// Why a launch spec cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A spec version this build does not know.
    #[error(
        "launch spec version {found} is not supported (this Vireo reads version {SPEC_VERSION})"
    )]
    UnsupportedVersion {
        /// The version in the spec.
        found: u64,
    },
    /// Zero vCPUs.
    #[error("a VM needs at least 1 vCPU (got 0)")]
    NoVcpus,
    /// More vCPUs than Vireo supports ([`MAX_VCPUS`]) or the host's KVM allows.
    #[error("{requested} vCPUs requested, but at most {max} are allowed{}", if *.host { " by KVM on this host" } else { "" })]
    TooManyVcpus {
        /// Requested count.
        requested: u64,
        /// The limit.
        max: u64,
        /// Whether the limit is the host's rather than Vireo's.
        host: bool,
    },
    /// Less memory than a guest can boot with.
    #[error("guest memory of {mib} MiB is too small (at least {MIN_MEMORY_MIB} MiB)")]
    MemoryTooSmall {
        /// Requested MiB.
        mib: u64,
    },
    /// More memory than Vireo supports ([`MAX_MEMORY_MIB`]).
    #[error("guest memory of {mib} MiB is too large (at most {MAX_MEMORY_MIB} MiB)")]
    MemoryTooLarge {
        /// Requested MiB.
        mib: u64,
    },
    /// More memory than the host has.
    #[error("guest memory of {mib} MiB exceeds this host's {host_mib} MiB of RAM")]
    MemoryExceedsHost {
        /// Requested MiB.
        mib: u64,
        /// Host RAM in MiB.
        host_mib: u64,
    },
    /// A path that must name a file is empty.
    #[error("{field}: the path is empty")]
    EmptyPath {
        /// Which path.
        field: Field,
    },
    /// A unix socket path longer than `bind(2)` takes.
    #[error("{field}: socket path is {len} bytes, longer than the {MAX_SOCKET_PATH_LEN} a unix socket allows")]
    SocketPathTooLong {
        /// Which path.
        field: Field,
        /// Its length in bytes.
        len: usize,
    },
    /// More disks and NICs than PCI bus 0 has slots for.
    #[error("{count} disks and NICs requested, but at most {MAX_PCI_DEVICES} fit on the PCI bus")]
    TooManyDevices {
        /// Disks plus NICs.
        count: usize,
    },
    /// The same image attached twice (two writers would corrupt it).
    #[error("disk {index}: {path} is already attached as disk {first}")]
    DuplicateDisk {
        /// Position in `disks`.
        index: usize,
        /// Position of the first use.
        first: usize,
        /// The image path.
        path: String,
    },
    /// A tap name the kernel would refuse or misread.
    #[error("network interface {index}: {source}")]
    InvalidTapName {
        /// Position in `nets`.
        index: usize,
        /// What is wrong.
        source: crate::tap::TapNameError,
    },
    /// The same tap given to two interfaces.
    #[error("network interface {index}: tap {tap} is already used by interface {first}")]
    DuplicateTap {
        /// Position in `nets`.
        index: usize,
        /// Position of the first use.
        first: usize,
        /// The tap name.
        tap: String,
    },
    /// A VNC screen size the framebuffer cannot have.
    #[error(
        "vnc: a {width}x{height} screen is not supported: each side must be \
         {MIN_VNC_SIDE}..={MAX_VNC_SIDE} pixels, the width a multiple of 8, and at most \
         {MAX_VNC_PIXELS} pixels in all"
    )]
    VncScreenSize {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
    /// A VNC console asked for together with the KVM dirty ring.
    #[error(
        "vnc: the screen is refreshed from KVM's dirty-page bitmap, which the dirty ring \
         replaces on this kind of host: use dirty_log auto or bitmap with vnc"
    )]
    VncWithDirtyRing,
    /// The same MAC address given to two interfaces.
    #[error("network interface {index}: MAC {mac} is already used by interface {first}")]
    DuplicateMac {
        /// Position in `nets`.
        index: usize,
        /// Position of the first use.
        first: usize,
        /// The address.
        mac: String,
    },
}

impl ConfigError {
    /// The spec field the error is about.
    pub fn field(&self) -> Field {
        match self {
            ConfigError::UnsupportedVersion { .. } => Field::Version,
            ConfigError::NoVcpus | ConfigError::TooManyVcpus { .. } => Field::Vcpus,
            ConfigError::MemoryTooSmall { .. }
            | ConfigError::MemoryTooLarge { .. }
            | ConfigError::MemoryExceedsHost { .. } => Field::MemoryMib,
            ConfigError::EmptyPath { field } | ConfigError::SocketPathTooLong { field, .. } => {
                *field
            }
            ConfigError::TooManyDevices { .. } => Field::Disks,
            ConfigError::DuplicateDisk { index, .. } => Field::DiskPath(*index),
            ConfigError::InvalidTapName { index, .. } | ConfigError::DuplicateTap { index, .. } => {
                Field::NetTap(*index)
            }
            ConfigError::DuplicateMac { index, .. } => Field::NetMac(*index),
            ConfigError::VncScreenSize { .. } | ConfigError::VncWithDirtyRing => Field::Vnc,
        }
    }
}

/// Facts about the host that bound a configuration (the VMM reads them from KVM and the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// vCPUs per VM allowed by KVM.
    pub max_vcpus: usize,
    /// Physical RAM in MiB.
    pub ram_mib: u64,
}

/// Why a launch spec could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not JSON, or not the launch spec's shape (a wrong type, an unknown field).
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// Well-formed, but not usable.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl VmConfig {
    /// Reads a launch spec from JSON and validates it: the one parser of launch specs, used by
    /// `vireo launch` and by the controller's tests of what it renders.
    ///
    /// The version is checked first, so a spec from a newer writer is refused by its version,
    /// not by whichever new field comes first.
    pub fn from_json(text: &str) -> Result<Self, LoadError> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        match value.get("version") {
            None => {}
            Some(v) if v.as_u64() == Some(u64::from(SPEC_VERSION)) => {}
            Some(v) => {
                return Err(ConfigError::UnsupportedVersion {
                    found: v.as_u64().unwrap_or(u64::MAX),
                }
                .into())
            }
        }
        let config: VmConfig = serde_json::from_value(value)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything that does not depend on the host: version, vCPU and memory bounds,
    /// paths, device count, duplicate disks, taps and MACs, tap names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version != SPEC_VERSION {
            return Err(ConfigError::UnsupportedVersion {
                found: u64::from(self.version),
            });
        }
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if self.vcpus > MAX_VCPUS {
            return Err(ConfigError::TooManyVcpus {
                requested: u64::from(self.vcpus),
                max: u64::from(MAX_VCPUS),
                host: false,
            });
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall {
                mib: self.memory_mib,
            });
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(ConfigError::MemoryTooLarge {
                mib: self.memory_mib,
            });
        }
        non_empty(&self.payload.kernel, Field::Kernel)?;
        match &self.serial {
            SerialConfig::File { path } => non_empty(path, Field::SerialPath)?,
            SerialConfig::Unix { path, .. } => socket_path(path, Field::SerialPath)?,
            SerialConfig::Stdio | SerialConfig::Off => {}
        }
        if let Some(path) = &self.api_socket {
            socket_path(path, Field::ApiSocket)?;
        }
        if let Some(vnc) = &self.vnc {
            self.validate_vnc(vnc)?;
        }
        self.validate_devices()
    }

    /// [`VmConfig::validate`], then the host's limits: KVM's vCPU maximum and physical RAM.
    pub fn validate_on(&self, host: &HostLimits) -> Result<(), ConfigError> {
        self.validate()?;
        if usize::from(self.vcpus) > host.max_vcpus {
            return Err(ConfigError::TooManyVcpus {
                requested: u64::from(self.vcpus),
                max: host.max_vcpus as u64,
                host: true,
            });
        }
        if self.memory_mib > host.ram_mib {
            return Err(ConfigError::MemoryExceedsHost {
                mib: self.memory_mib,
                host_mib: host.ram_mib,
            });
        }
        Ok(())
    }

    fn validate_vnc(&self, vnc: &VncConfig) -> Result<(), ConfigError> {
        let side = |s: u32| (MIN_VNC_SIDE..=MAX_VNC_SIDE).contains(&s);
        if !side(vnc.width)
            || !side(vnc.height)
            || !vnc.width.is_multiple_of(8)
            || vnc.width * vnc.height > MAX_VNC_PIXELS
        {
            return Err(ConfigError::VncScreenSize {
                width: vnc.width,
                height: vnc.height,
            });
        }
        if self.dirty_log == DirtyLogMode::Ring {
            return Err(ConfigError::VncWithDirtyRing);
        }
        if let VncListen::Unix(path) = &vnc.listen {
            socket_path(path, Field::Vnc)?;
        }
        if let Some(path) = &vnc.password_file {
            non_empty(path, Field::Vnc)?;
        }
        Ok(())
    }

    fn validate_devices(&self) -> Result<(), ConfigError> {
        let count = self.disks.len() + self.nets.len();
        if count > MAX_PCI_DEVICES {
            return Err(ConfigError::TooManyDevices { count });
        }
        for (index, disk) in self.disks.iter().enumerate() {
            non_empty(&disk.path, Field::DiskPath(index))?;
            if let Some(first) = self.disks[..index].iter().position(|d| d.path == disk.path) {
                return Err(ConfigError::DuplicateDisk {
                    index,
                    first,
                    path: disk.path.display().to_string(),
                });
            }
        }
        for (index, net) in self.nets.iter().enumerate() {
            check_tap_name(&net.tap)
                .map_err(|source| ConfigError::InvalidTapName { index, source })?;
            let earlier = &self.nets[..index];
            if let Some(first) = earlier.iter().position(|n| n.tap == net.tap) {
                return Err(ConfigError::DuplicateTap {
                    index,
                    first,
                    tap: net.tap.clone(),
                });
            }
            if let Some(mac) = net.mac {
                if let Some(first) = earlier.iter().position(|n| n.mac == Some(mac)) {
                    return Err(ConfigError::DuplicateMac {
                        index,
                        first,
                        mac: mac.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn non_empty(path: &Path, field: Field) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::EmptyPath { field });
    }
    Ok(())
}

fn socket_path(path: &Path, field: Field) -> Result<(), ConfigError> {
    non_empty(path, field)?;
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_LEN {
        return Err(ConfigError::SocketPathTooLong { field, len });
    }
    Ok(())
}
