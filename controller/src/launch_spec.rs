//! The launch spec: the JSON the `vireo launch` process in a launcher pod reads to build its VM.
//!
//! This mirrors `VmConfig` of the `vmm` crate field for field (the controller must not link the
//! VMM). [`render`] turns a validated VMI spec into it. Disk paths follow the pod layout of
//! `pod.rs`: every volume is mounted at `/var/run/vireo/disks/<volume>/`, with the image at
//! `disk.img` inside it (hostDisk volumes point at their node path directly).

use serde::{Deserialize, Serialize};

use crate::crd::vmi::{VirtualMachineInstanceSpec, Volume};
use crate::crd::vmruntime::ImageFormat;
use crate::validation::{parse_quantity, ValidationError};

/// Directory inside the pod holding sockets, disks and the spec.
pub const RUN_DIR: &str = "/var/run/vireo";
/// Where the spec file appears in the pod (downward-API projection of an annotation).
pub const SPEC_PATH: &str = "/var/run/vireo/spec/spec.json";
/// Serial console socket inside the pod.
pub const SERIAL_SOCKET: &str = "/var/run/vireo/serial.sock";
/// Control API socket inside the pod.
pub const API_SOCKET: &str = "/var/run/vireo/api.sock";
/// Mount root of disk volumes inside the pod.
pub const DISKS_DIR: &str = "/var/run/vireo/disks";

/// `VmConfig`, as the launcher reads it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    /// vCPU count.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// What to boot.
    pub payload: Payload,
    /// Block devices in guest order.
    pub disks: Vec<DiskSpec>,
    /// NICs in guest order.
    pub nets: Vec<NetSpec>,
    /// Serial console wiring.
    pub serial: SerialSpec,
    /// Control API socket.
    pub api_socket: Option<String>,
}

/// Direct kernel boot payload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Kernel path in the pod.
    pub kernel: String,
    /// Initramfs path in the pod.
    pub initramfs: Option<String>,
    /// Kernel command line.
    pub cmdline: String,
}

/// One disk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// Image path in the pod.
    pub path: String,
    /// Declared format; the launcher still probes and refuses a mismatch.
    pub format: Option<DiskFormat>,
    /// Attach read-only.
    pub readonly: bool,
}

/// Disk image format as the launcher names it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// Raw image.
    Raw,
    /// qcow2 image.
    Qcow2,
}

impl From<ImageFormat> for DiskFormat {
    fn from(f: ImageFormat) -> Self {
        match f {
            ImageFormat::Raw => Self::Raw,
            ImageFormat::Qcow2 => Self::Qcow2,
        }
    }
}

/// One NIC.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    /// Tap device the launcher creates in the pod network namespace.
    pub tap: String,
    /// Guest MAC.
    pub mac: Option<String>,
}

/// Serial console.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum SerialSpec {
    /// The launcher's stdio (container log).
    Stdio,
    /// Appended to a file.
    File {
        /// File path.
        path: String,
    },
    /// A unix socket `vireo console` connects to.
    Unix {
        /// Socket path.
        path: String,
    },
}

/// Path of the image of `volume` inside the pod.
pub fn disk_path(volume: &Volume) -> String {
    match &volume.host_disk {
        Some(h) => h.path.clone(),
        None => format!("{DISKS_DIR}/{}/disk.img", volume.name),
    }
}

/// Renders the launch spec of a VMI. `default_format` is the VMRuntime's `vmImageFormat`.
///
/// Fails with the same errors as `validation::validate_vmi_spec` (call that first for the full
/// list); this function only reports the first problem it trips on.
pub fn render(
    spec: &VirtualMachineInstanceSpec,
    default_format: ImageFormat,
) -> Result<LaunchSpec, ValidationError> {
    let field = "spec.domain.memory.guest";
    let bytes =
        parse_quantity(&spec.domain.memory.guest).map_err(|m| ValidationError::new(field, m))?;
    let memory_mib = bytes.div_ceil(1024 * 1024);
    let kb = spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
        .ok_or_else(|| {
            ValidationError::new(
                "spec.domain.firmware.kernelBoot",
                "required: disk boot without a kernel is not supported yet",
            )
        })?;
    let mut disks = Vec::with_capacity(spec.domain.devices.disks.len());
    for (i, d) in spec.domain.devices.disks.iter().enumerate() {
        let volume = spec
            .volumes
            .iter()
            .find(|v| v.name == d.name)
            .ok_or_else(|| {
                ValidationError::new(
                    format!("spec.domain.devices.disks[{i}].name"),
                    format!("no volume named {:?}", d.name),
                )
            })?;
        let format = match d.format.as_deref() {
            None => default_format.into(),
            Some("raw") => DiskFormat::Raw,
            Some("qcow2") => DiskFormat::Qcow2,
            Some(other) => {
                return Err(ValidationError::new(
                    format!("spec.domain.devices.disks[{i}].format"),
                    format!("unknown disk format {other:?} (expected raw or qcow2)"),
                ))
            }
        };
        disks.push(DiskSpec {
            path: disk_path(volume),
            format: Some(format),
            readonly: d.readonly.unwrap_or(false),
        });
    }
    let nets = spec
        .domain
        .devices
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, n)| NetSpec {
            tap: format!("tap{i}"),
            mac: n.mac_address.clone(),
        })
        .collect();
    let serial = if spec.domain.devices.autoattach_serial_console == Some(false) {
        SerialSpec::Stdio
    } else {
        SerialSpec::Unix {
            path: SERIAL_SOCKET.to_owned(),
        }
    };
    Ok(LaunchSpec {
        vcpus: spec.domain.cpu.cores,
        memory_mib,
        payload: Payload {
            kernel: kb.kernel.clone(),
            initramfs: kb.initrd.clone(),
            cmdline: kb.cmdline.clone().unwrap_or_default(),
        },
        disks,
        nets,
        serial,
        api_socket: Some(API_SOCKET.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::vmi::*;

    fn sample() -> VirtualMachineInstanceSpec {
        VirtualMachineInstanceSpec {
            domain: DomainSpec {
                cpu: CpuSpec { cores: 2 },
                memory: MemorySpec {
                    guest: "1Gi".into(),
                },
                firmware: Some(Firmware {
                    kernel_boot: Some(KernelBoot {
                        kernel: "/path/vmlinuz".into(),
                        initrd: Some("/path/initrd.img".into()),
                        cmdline: Some("console=ttyS0".into()),
                    }),
                }),
                devices: Devices {
                    disks: vec![Disk {
                        name: "root".into(),
                        format: Some("qcow2".into()),
                        ..Default::default()
                    }],
                    interfaces: vec![Interface {
                        name: "default".into(),
                        masquerade: Some(Binding {}),
                        mac_address: Some("52:54:00:12:34:56".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            },
            volumes: vec![Volume {
                name: "root".into(),
                container_disk: Some(ContainerDisk {
                    image: "example/root".into(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn json_shape_matches_vm_config() {
        let spec = render(&sample(), ImageFormat::Raw).expect("render");
        let got = serde_json::to_value(&spec).expect("json");
        let want = serde_json::json!({
            "vcpus": 2,
            "memory_mib": 1024,
            "payload": { "kernel": "/path/vmlinuz", "initramfs": "/path/initrd.img",
                         "cmdline": "console=ttyS0" },
            "disks": [ { "path": "/var/run/vireo/disks/root/disk.img", "format": "qcow2",
                         "readonly": false } ],
            "nets": [ { "tap": "tap0", "mac": "52:54:00:12:34:56" } ],
            "serial": { "mode": "unix", "path": "/var/run/vireo/serial.sock" },
            "api_socket": "/var/run/vireo/api.sock"
        });
        assert_eq!(got, want);
        let back: LaunchSpec = serde_json::from_value(got).expect("round trip");
        assert_eq!(back, spec);
    }

    #[test]
    fn default_format_comes_from_runtime_and_host_disk_keeps_path() {
        let mut s = sample();
        s.domain.devices.disks[0].format = None;
        s.volumes[0] = Volume {
            name: "root".into(),
            host_disk: Some(HostDisk {
                path: "/images/a.img".into(),
            }),
            ..Default::default()
        };
        let spec = render(&s, ImageFormat::Qcow2).expect("render");
        assert_eq!(spec.disks[0].format, Some(DiskFormat::Qcow2));
        assert_eq!(spec.disks[0].path, "/images/a.img");
    }

    #[test]
    fn missing_kernel_boot_names_the_field() {
        let mut s = sample();
        s.domain.firmware = None;
        let err = render(&s, ImageFormat::Raw).expect_err("must fail");
        assert_eq!(err.field, "spec.domain.firmware.kernelBoot");
    }
}
