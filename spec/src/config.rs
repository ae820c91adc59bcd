//! The launch spec: one serde type that `vireo run` builds from flags, the controller renders into
//! a launcher pod, and embedders build in code.
//!
//! ```json
//! { "version": 1, "vcpus": 2, "memory_mib": 512,
//!   "payload": { "kernel": "/k", "initramfs": null, "cmdline": "console=ttyS0" },
//!   "serial": { "mode": "unix", "path": "/run/vireo/serial.sock", "stdout": true } }
//! ```
//! Unknown fields are rejected at every level. Disks become virtio-blk and NICs virtio-net
//! functions on PCI bus 0, disks first, each list in order, from slot 1.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::disk::DiskFormat;
use crate::mac::MacAddr;
use crate::vnc::VncConfig;

/// The launch-spec version this crate reads and writes. A spec without `version` is version 1;
/// a spec of another version is refused by [`VmConfig::from_json`] before any other field is
/// looked at, so an old launcher names the version instead of tripping over a new field.
pub const SPEC_VERSION: u32 = 1;

fn spec_version() -> u32 {
    SPEC_VERSION
}

/// Everything needed to build a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The spec's version, [`SPEC_VERSION`] (1 when absent).
    #[serde(default = "spec_version")]
    pub version: u32,
    /// Number of vCPUs, 1 to [`crate::MAX_VCPUS`].
    pub vcpus: u8,
    /// Guest RAM in MiB, [`crate::MIN_MEMORY_MIB`] to [`crate::MAX_MEMORY_MIB`].
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
    /// Unix socket on which `vireo` serves the control API (HTTP/1.1 + JSON, see [`crate::api`]);
    /// none when absent.
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// What backs guest RAM: anonymous memory, or a memfd that a live migration to a `vireo` on
    /// the same host can hand over instead of copying (absent: anonymous).
    #[serde(default, skip_serializing_if = "is_default")]
    pub memory_backing: MemoryBacking,
    /// How KVM tracks the pages the guest writes while a live migration runs (absent: `auto`).
    /// Fixed when the VM is built: the dirty ring must be set up before the vCPUs exist.
    #[serde(default, skip_serializing_if = "is_default")]
    pub dirty_log: DirtyLogMode,
    /// The VNC console: framebuffer, keyboard, tablet and RFB server (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc: Option<VncConfig>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// What backs guest RAM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum MemoryBacking {
    /// Private anonymous memory (`MAP_NORESERVE`): pages never touched cost nothing.
    #[default]
    Anonymous,
    /// A memfd mapped shared: costs the same, and a live migration to a `vireo` on this host
    /// hands the memfd over (`local`), so no page is copied.
    Memfd,
}

/// Dirty-page tracking for live migration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum DirtyLogMode {
    /// The KVM dirty ring where the host offers it, the bitmap otherwise.
    #[default]
    Auto,
    /// The KVM dirty ring (per-vCPU rings of written pages); refused where the host lacks it.
    Ring,
    /// `KVM_GET_DIRTY_LOG` bitmaps, one per memory slot, read each pass.
    Bitmap,
}

/// A disk in the launch spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Image path.
    pub path: PathBuf,
    /// The image's format; probed from the image's first bytes when absent (never from its
    /// name).
    #[serde(default)]
    pub format: Option<DiskFormat>,
    /// Attach read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// A network interface in the launch spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Tap device name; opened, or created when absent (needs CAP_NET_ADMIN).
    pub tap: String,
    /// MAC address (`aa:bb:cc:dd:ee:ff`, unicast); a random locally administered one when
    /// absent.
    #[serde(default)]
    pub mac: Option<MacAddr>,
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
///
/// In JSON, `{"mode": "stdio" | "off"}`, `{"mode": "file", "path": …}` or
/// `{"mode": "unix", "path": …, "stdout": true}` (`stdout` optional, default false, and left out
/// when false); any other field is refused, also next to `stdio` and `off`, and `stdout` is
/// refused next to any mode but `unix` (serde's internally tagged enums would let an unknown
/// field through there, so reading goes through [`SerialWire`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", try_from = "SerialWire")]
pub enum SerialConfig {
    /// The VMM's stdin and stdout.
    #[default]
    Stdio,
    /// Output to a file (created or truncated at boot; appended to by a VM restored or
    /// received by live migration, which continues the same log); no input.
    File {
        /// The file.
        path: PathBuf,
    },
    /// A unix socket the VMM listens on; one client at a time reads output and writes input.
    Unix {
        /// Socket path.
        path: PathBuf,
        /// Also copy the guest's output to the VMM's stdout (so a pod's log shows it while the
        /// console stays reachable through the socket). The copy has its own queue: a stdout
        /// nobody reads never delays the socket's client, nor the other way round.
        #[serde(default, skip_serializing_if = "is_false")]
        stdout: bool,
    },
    /// Disconnected: output is discarded.
    Off,
}

/// The JSON form of [`SerialConfig`] as read: a mode and the fields any mode may have.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialWire {
    mode: SerialMode,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    stdout: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum SerialMode {
    Stdio,
    File,
    Unix,
    Off,
}

impl TryFrom<SerialWire> for SerialConfig {
    type Error = &'static str;

    fn try_from(w: SerialWire) -> Result<Self, Self::Error> {
        if w.stdout.is_some() && !matches!(w.mode, SerialMode::Unix) {
            return Err("unknown field `stdout`: only serial mode unix takes stdout");
        }
        match (w.mode, w.path) {
            (SerialMode::Stdio, None) => Ok(SerialConfig::Stdio),
            (SerialMode::Off, None) => Ok(SerialConfig::Off),
            (SerialMode::File, Some(path)) => Ok(SerialConfig::File { path }),
            (SerialMode::Unix, Some(path)) => Ok(SerialConfig::Unix {
                path,
                stdout: w.stdout.unwrap_or(false),
            }),
            (SerialMode::Stdio | SerialMode::Off, Some(_)) => {
                Err("unknown field `path`: serial modes stdio and off take no path")
            }
            (SerialMode::File | SerialMode::Unix, None) => {
                Err("missing field `path`: serial modes file and unix need one")
            }
        }
    }
}

impl VmConfig {
    /// A configuration with one vCPU, 512 MiB and serial on stdio.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            version: SPEC_VERSION,
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
            memory_backing: MemoryBacking::Anonymous,
            dirty_log: DirtyLogMode::Auto,
            vnc: None,
        }
    }

    /// Guest memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib.saturating_mul(1 << 20)
    }
}
