//! The launch spec: one serde type that `vireo run` builds from flags, the
//! controller renders into a pod, and embedders build in code.
//!
//! ```json
//! { "vcpus": 2, "memory_mib": 512,
//!   "payload": { "kernel": "/k", "initramfs": null, "cmdline": "console=ttyS0" },
//!   "serial": { "mode": "unix", "path": "/run/vireo/serial.sock" } }
//! ```
//! Unknown fields are rejected, and devices this build cannot attach yet
//! (disks, NICs) fail validation, so a spec never boots a VM without them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::memory::MIB;

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
    /// Disks (virtio-blk). Accepted in the spec; attaching them is not
    /// implemented yet, so a non-empty list is refused by [`VmConfig::validate`].
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Network interfaces (virtio-net); refused when non-empty, as `disks`.
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

/// A network interface in the launch spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Tap device name.
    pub tap: String,
    /// MAC address.
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
    /// A device the spec asks for that this build cannot attach yet.
    #[error(
        "{what} are not supported yet ({count} requested): virtio devices are not implemented"
    )]
    UnsupportedDevices {
        /// Which kind of device.
        what: &'static str,
        /// How many were requested.
        count: usize,
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
        for (what, count) in [
            ("disks", self.disks.len()),
            ("network interfaces", self.nets.len()),
        ] {
            if count > 0 {
                return Err(ConfigError::UnsupportedDevices { what, count });
            }
        }
        if self.memory_mib > host.ram_mib {
            return Err(ConfigError::MemoryExceedsHost {
                mib: self.memory_mib,
                host_mib: host.ram_mib,
            });
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
    /// (controller/src/launch_spec.rs) parses, and devices are refused until
    /// they can be attached.
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
        assert_eq!(
            cfg.validate(&HOST),
            Err(ConfigError::UnsupportedDevices {
                what: "disks",
                count: 1
            })
        );
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
