//! The launch spec: one serde type that `vireo run` builds from flags, the
//! controller renders into a pod, and embedders build in code.
//!
//! ```json
//! { "vcpus": 2, "memory_mib": 512,
//!   "payload": { "kernel": "/k", "initramfs": null, "cmdline": "console=ttyS0" },
//!   "serial": { "mode": "unix", "path": "/run/vireo/serial.sock" } }
//! ```
//! Unknown fields are rejected. Disks become virtio-blk and NICs virtio-net
//! functions on PCI bus 0, disks first, each list in order, from slot 1.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::memory::MIB;

/// Most disks plus NICs a VM can have: PCI bus 0 has 32 slots and the host
/// bridge takes one.
pub const MAX_PCI_DEVICES: usize = 31;

/// Smallest guest memory accepted, in MiB.
pub const MIN_MEMORY_MIB: u64 = 8;

/// Everything needed to build a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Number of vCPUs (1 or more).
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// What to boot.
    pub payload: PayloadConfig,
    /// Where COM1 goes.
    #[serde(default)]
    pub serial: SerialConfig,
    /// Disks (virtio-blk), in the order the guest enumerates them.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Network interfaces (virtio-net), after the disks on the PCI bus.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// Unix socket for the control API. The endpoint is not served yet; the
    /// launcher warns when one is requested.
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
}

/// A disk in the launch spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Image path.
    pub path: PathBuf,
    /// `raw` or `qcow2`; probed from the image when absent.
    #[serde(default)]
    pub format: Option<String>,
    /// Attach read-only.
    #[serde(default)]
    pub readonly: bool,
}

impl DiskConfig {
    /// The image format `format` names, or `None` to probe the image.
    ///
    /// # Errors
    /// The name, when it is neither `raw` nor `qcow2`.
    pub fn image_format(&self) -> Result<Option<vireo_block::Format>, &str> {
        match self.format.as_deref() {
            None => Ok(None),
            Some("raw") => Ok(Some(vireo_block::Format::Raw)),
            Some("qcow2") => Ok(Some(vireo_block::Format::Qcow2)),
            Some(other) => Err(other),
        }
    }
}

/// A network interface in the launch spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Tap device name; opened, or created when absent (needs CAP_NET_ADMIN).
    pub tap: String,
    /// MAC address (`aa:bb:cc:dd:ee:ff`, unicast); a random locally
    /// administered one when absent.
    #[serde(default)]
    pub mac: Option<String>,
}

/// A direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    /// Kernel image: bzImage, ELF vmlinux, or a Vireo user-mode ELF.
    pub kernel: PathBuf,
    /// Optional initramfs.
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
}

/// Where the guest's first serial port is connected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum SerialConfig {
    /// The VMM's stdin and stdout.
    #[default]
    Stdio,
    /// Output appended to a file; no input.
    File {
        /// The file.
        path: PathBuf,
    },
    /// A unix socket the VMM listens on; one client at a time reads output
    /// and writes input.
    Unix {
        /// Socket path.
        path: PathBuf,
    },
    /// Disconnected: output is discarded.
    Off,
}

/// Why a configuration cannot be used on this host.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Zero vCPUs.
    #[error("a VM needs at least 1 vCPU (got 0)")]
    NoVcpus,
    /// More vCPUs than KVM allows.
    #[error("{requested} vCPUs requested, but KVM on this host allows at most {max}")]
    TooManyVcpus {
        /// Requested count.
        requested: u8,
        /// Host limit.
        max: usize,
    },
    /// Less memory than a guest can boot with.
    #[error("guest memory of {mib} MiB is too small (at least {MIN_MEMORY_MIB} MiB)")]
    MemoryTooSmall {
        /// Requested MiB.
        mib: u64,
    },
    /// More disks and NICs than PCI bus 0 has slots for.
    #[error("{count} disks and NICs requested, but at most {MAX_PCI_DEVICES} fit on the PCI bus")]
    TooManyDevices {
        /// Disks plus NICs.
        count: usize,
    },
    /// A disk format other than `raw` or `qcow2`.
    #[error("disk {index}: unknown format '{format}' (expected raw or qcow2)")]
    InvalidDiskFormat {
        /// Position in `disks`.
        index: usize,
        /// The format given.
        format: String,
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
    /// A MAC address that does not parse or is not a unicast address.
    #[error("network interface {index}: {reason}")]
    InvalidMac {
        /// Position in `nets`.
        index: usize,
        /// What is wrong.
        reason: String,
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
    /// More memory than the host has.
    #[error("guest memory of {mib} MiB exceeds this host's {host_mib} MiB of RAM")]
    MemoryExceedsHost {
        /// Requested MiB.
        mib: u64,
        /// Host RAM in MiB.
        host_mib: u64,
    },
}

/// Facts about the host that bound a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// vCPUs per VM allowed by KVM.
    pub max_vcpus: usize,
    /// Physical RAM in MiB.
    pub ram_mib: u64,
}

impl HostLimits {
    /// Reads the host's RAM size; `max_vcpus` comes from KVM.
    pub fn probe(max_vcpus: usize) -> Self {
        // SAFETY: sysinfo only writes into the zeroed struct we pass.
        let ram_mib = unsafe {
            let mut info: libc::sysinfo = std::mem::zeroed();
            if libc::sysinfo(&mut info) == 0 {
                (info.totalram as u64).saturating_mul(u64::from(info.mem_unit)) / MIB
            } else {
                u64::MAX
            }
        };
        Self { max_vcpus, ram_mib }
    }
}

impl VmConfig {
    /// A configuration with one vCPU, 512 MiB and serial on stdio.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            vcpus: 1,
            memory_mib: 512,
            payload: PayloadConfig {
                kernel: kernel.into(),
                initramfs: None,
                cmdline: String::new(),
            },
            serial: SerialConfig::Stdio,
            disks: Vec::new(),
            nets: Vec::new(),
            api_socket: None,
        }
    }

    /// Guest memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib.saturating_mul(MIB)
    }

    /// Checks the configuration against the host's limits.
    pub fn validate(&self, host: &HostLimits) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if usize::from(self.vcpus) > host.max_vcpus {
            return Err(ConfigError::TooManyVcpus {
                requested: self.vcpus,
                max: host.max_vcpus,
            });
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall {
                mib: self.memory_mib,
            });
        }
        self.validate_devices()?;
        if self.memory_mib > host.ram_mib {
            return Err(ConfigError::MemoryExceedsHost {
                mib: self.memory_mib,
                host_mib: host.ram_mib,
            });
        }
        Ok(())
    }
}

impl VmConfig {
    fn validate_devices(&self) -> Result<(), ConfigError> {
        let count = self.disks.len() + self.nets.len();
        if count > MAX_PCI_DEVICES {
            return Err(ConfigError::TooManyDevices { count });
        }
        for (index, disk) in self.disks.iter().enumerate() {
            if let Err(format) = disk.image_format() {
                return Err(ConfigError::InvalidDiskFormat {
                    index,
                    format: format.to_owned(),
                });
            }
            if let Some(first) = self.disks[..index].iter().position(|d| d.path == disk.path) {
                return Err(ConfigError::DuplicateDisk {
                    index,
                    first,
                    path: disk.path.display().to_string(),
                });
            }
        }
        for (index, net) in self.nets.iter().enumerate() {
            if let Some(mac) = &net.mac {
                mac.parse::<vireo_net::MacAddr>()
                    .map_err(|e| ConfigError::InvalidMac {
                        index,
                        reason: e.to_string(),
                    })?;
            }
            if let Some(first) = self.nets[..index].iter().position(|n| n.tap == net.tap) {
                return Err(ConfigError::DuplicateTap {
                    index,
                    first,
                    tap: net.tap.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostLimits = HostLimits {
        max_vcpus: 8,
        ram_mib: 4096,
    };

    #[test]
    fn spec_json_round_trips_in_the_documented_shape() {
        let json = r#"{"vcpus":2,"memory_mib":512,
            "payload":{"kernel":"/k","cmdline":"console=ttyS0"},
            "serial":{"mode":"unix","path":"/run/s.sock"}}"#;
        let cfg: VmConfig = serde_json::from_str(json).expect("parse");
        assert_eq!(cfg.vcpus, 2);
        assert_eq!(
            cfg.serial,
            SerialConfig::Unix {
                path: "/run/s.sock".into()
            }
        );
        let again: VmConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).expect("ser")).expect("de");
        assert_eq!(again, cfg);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json = r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"floppies":[]}"#;
        let err = serde_json::from_str::<VmConfig>(json).expect_err("unknown field");
        assert!(err.to_string().contains("floppies"), "{err}");
    }

    /// The exact shape the Kubernetes controller renders
    /// (controller/src/launch_spec.rs) parses, and device lists are checked.
    #[test]
    fn controller_rendered_spec_parses() {
        let json = r#"{"vcpus":2,"memory_mib":1024,
            "payload":{"kernel":"/boot/vmlinuz","initramfs":"/boot/initrd.img","cmdline":"console=ttyS0"},
            "disks":[],"nets":[],
            "serial":{"mode":"unix","path":"/var/run/vireo/serial.sock"},
            "api_socket":"/var/run/vireo/api.sock"}"#;
        let mut cfg: VmConfig = serde_json::from_str(json).expect("parse");
        assert_eq!(cfg.validate(&HOST), Ok(()));
        cfg.disks.push(DiskConfig {
            path: "/d.qcow2".into(),
            format: Some("qcow2".into()),
            readonly: false,
        });
        assert_eq!(cfg.validate(&HOST), Ok(()));
        cfg.disks.push(cfg.disks[0].clone());
        assert!(matches!(
            cfg.validate(&HOST),
            Err(ConfigError::DuplicateDisk {
                index: 1,
                first: 0,
                ..
            })
        ));
        cfg.disks.truncate(1);
        cfg.disks[0].format = Some("vmdk".into());
        assert!(matches!(
            cfg.validate(&HOST),
            Err(ConfigError::InvalidDiskFormat { index: 0, .. })
        ));
        cfg.disks[0].format = None;
        cfg.nets.push(NetConfig {
            tap: "vt0".into(),
            mac: Some("01:00:5e:00:00:01".into()),
        });
        assert!(matches!(
            cfg.validate(&HOST),
            Err(ConfigError::InvalidMac { index: 0, .. })
        ));
        cfg.nets[0].mac = Some("52:54:00:12:34:56".into());
        assert_eq!(cfg.validate(&HOST), Ok(()));
        cfg.nets.push(cfg.nets[0].clone());
        assert!(matches!(
            cfg.validate(&HOST),
            Err(ConfigError::DuplicateTap { index: 1, .. })
        ));
    }

    #[test]
    fn validation_names_each_problem() {
        let mut c = VmConfig::new("/k");
        assert_eq!(c.validate(&HOST), Ok(()));
        c.vcpus = 0;
        assert_eq!(c.validate(&HOST), Err(ConfigError::NoVcpus));
        c.vcpus = 9;
        assert!(matches!(
            c.validate(&HOST),
            Err(ConfigError::TooManyVcpus { .. })
        ));
        c.vcpus = 1;
        c.memory_mib = 0;
        assert_eq!(
            c.validate(&HOST),
            Err(ConfigError::MemoryTooSmall { mib: 0 })
        );
        c.memory_mib = 8192;
        assert!(matches!(
            c.validate(&HOST),
            Err(ConfigError::MemoryExceedsHost { .. })
        ));
    }
}
