//! The launch spec of a VMI: the `vireo_spec::VmConfig` the `vireo launch` process in its
//! launcher pod reads, rendered from the VMI and validated by the launch spec's own validator,
//! so the controller refuses (with the VMI field named) whatever the launcher would refuse.
//!
//! Disk paths follow the pod layout of `pod.rs`: every volume is mounted at
//! `/var/run/vireo/disks/<volume>/`, with the image at `disk.img` inside it (hostDisk volumes
//! point at their node path directly). A kernel from `kernelBoot.container` is copied by an init
//! container to `/var/run/vireo/kernel-boot/<file name>`, and the launch spec points there.

use std::net::{Ipv4Addr, SocketAddr};

use vireo_spec::{
    ConfigError, DiskConfig, DiskFormat, Field, MacAddr, NetConfig, PayloadConfig, SerialConfig,
    VmConfig, VncConfig, VncListen, MAX_VCPUS, SPEC_VERSION,
};

use crate::crd::vmi::{KernelBoot, VirtualMachineInstanceSpec, Volume};
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

/// Where the kernel-boot init container copies the kernel and initramfs of
/// `kernelBoot.container` (an emptyDir shared with the launcher).
pub const KERNEL_BOOT_DIR: &str = "/var/run/vireo/kernel-boot";

/// The file name `path` ends in, or `None` when it names no file (empty, `/`, a trailing `/`,
/// `.` or `..`).
pub fn file_name(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next()?;
    (!name.is_empty() && name != "." && name != "..").then_some(name)
}

/// Paths inside the launcher pod of the kernel and initramfs of `kb` (under `field`, the JSON path
/// of `kernelBoot`): `kernel`/`initrd` as given, or the copies of the `container` files in
/// [`KERNEL_BOOT_DIR`]. Fails when the kernel is given neither or both ways, or names no file.
pub fn kernel_boot_paths(
    kb: &KernelBoot,
    field: &str,
) -> Result<(String, Option<String>), ValidationError> {
    let copied = |p: &str, what: &str| {
        file_name(p)
            .map(|n| format!("{KERNEL_BOOT_DIR}/{n}"))
            .ok_or_else(|| {
                ValidationError::new(
                    format!("{field}.container.{what}"),
                    format!("{p:?} names no file in the image"),
                )
            })
    };
    let image = kb.container.as_ref();
    let kernel = match (&kb.kernel, image.and_then(|c| c.kernel_path.as_deref())) {
        (Some(k), None) => k.clone(),
        (None, Some(p)) => copied(p, "kernelPath")?,
        (None, None) => {
            return Err(ValidationError::new(
                format!("{field}.kernel"),
                "required: exactly one of kernel (a path in the launcher pod) or \
                 container.kernelPath (a path in container.image)",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(ValidationError::new(
                format!("{field}.container.kernelPath"),
                "kernel and container.kernelPath are mutually exclusive; set only one",
            ))
        }
    };
    let initrd = match (&kb.initrd, image.and_then(|c| c.initrd_path.as_deref())) {
        (i, None) => i.clone(),
        (None, Some(p)) => Some(copied(p, "initrdPath")?),
        (Some(_), Some(_)) => {
            return Err(ValidationError::new(
                format!("{field}.container.initrdPath"),
                "initrd and container.initrdPath are mutually exclusive; set only one",
            ))
        }
    };
    Ok((kernel, initrd))
}

/// Path of the image of `volume` inside the pod.
pub fn disk_path(volume: &Volume) -> String {
    match &volume.host_disk {
        Some(h) => h.path.clone(),
        None => format!("{DISKS_DIR}/{}/disk.img", volume.name),
    }
}

/// The VMI field (under `prefix`, the JSON path of the VMI spec) that a launch-spec field is
/// rendered from.
pub fn vmi_field(field: Field, prefix: &str) -> String {
    let devices = format!("{prefix}.domain.devices");
    match field {
        Field::Vcpus => format!("{prefix}.domain.cpu.cores"),
        Field::MemoryMib => format!("{prefix}.domain.memory.guest"),
        Field::Kernel => format!("{prefix}.domain.firmware.kernelBoot.kernel"),
        Field::Disks => devices,
        Field::DiskPath(i) => format!("{devices}.disks[{i}]"),
        Field::NetTap(i) => format!("{devices}.interfaces[{i}]"),
        Field::NetMac(i) => format!("{devices}.interfaces[{i}].macAddress"),
        // KubeVirt's switch for the VNC display.
        Field::Vnc => format!("{devices}.autoattachGraphicsDevice"),
        // Set by the controller itself, never from the VMI.
        Field::Version | Field::SerialPath | Field::ApiSocket => prefix.to_owned(),
    }
}

/// Renders the launch spec of a VMI and validates it with the launcher's validator.
/// `default_format` is the VMRuntime's `vmImageFormat`; `prefix` is the JSON path of `spec` in
/// the object (`spec` for a VMI, `spec.template.spec` for a VM), used to name fields.
///
/// Reports the first problem it trips on; `validation::validate_vmi_spec` lists every
/// structural problem of the VMI first and calls this for the rest.
pub fn render(
    spec: &VirtualMachineInstanceSpec,
    default_format: DiskFormat,
    prefix: &str,
) -> Result<VmConfig, ValidationError> {
    let at = |rest: &str| format!("{prefix}.{rest}");
    let field = at("domain.memory.guest");
    let bytes =
        parse_quantity(&spec.domain.memory.guest).map_err(|m| ValidationError::new(&field, m))?;
    let memory_mib = bytes.div_ceil(1024 * 1024);
    let cores = spec.domain.cpu.cores;
    let vcpus = u8::try_from(cores).map_err(|_| {
        let e = ConfigError::TooManyVcpus {
            requested: u64::from(cores),
            max: u64::from(MAX_VCPUS),
            host: false,
        };
        ValidationError::new(vmi_field(e.field(), prefix), e.to_string())
    })?;
    let kb_field = at("domain.firmware.kernelBoot");
    let kb = spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
        .ok_or_else(|| {
            ValidationError::new(
                &kb_field,
                "required: disk boot without a kernel is not supported yet",
            )
        })?;
    let (kernel, initramfs) = kernel_boot_paths(kb, &kb_field)?;
    let mut disks = Vec::with_capacity(spec.domain.devices.disks.len());
    for (i, d) in spec.domain.devices.disks.iter().enumerate() {
        let volume = spec
            .volumes
            .iter()
            .find(|v| v.name == d.name)
            .ok_or_else(|| {
                ValidationError::new(
                    at(&format!("domain.devices.disks[{i}].name")),
                    format!("no volume named {:?}", d.name),
                )
            })?;
        let format = match d.format.as_deref() {
            None => default_format,
            Some(name) => name.parse().map_err(|e: vireo_spec::UnknownFormat| {
                ValidationError::new(
                    at(&format!("domain.devices.disks[{i}].format")),
                    e.to_string(),
                )
            })?,
        };
        disks.push(DiskConfig {
            path: disk_path(volume).into(),
            format: Some(format),
            readonly: d.readonly.unwrap_or(false),
        });
    }
    let mut nets = Vec::with_capacity(spec.domain.devices.interfaces.len());
    for (i, n) in spec.domain.devices.interfaces.iter().enumerate() {
        let mac = match &n.mac_address {
            None => None,
            Some(m) => Some(m.parse::<MacAddr>().map_err(|e| {
                ValidationError::new(vmi_field(Field::NetMac(i), prefix), e.to_string())
            })?),
        };
        nets.push(NetConfig {
            tap: format!("tap{i}"),
            mac,
        });
    }
    // KubeVirt's autoattachSerialConsole: false means the guest has no console to attach to.
    // Otherwise the console is the pod's unix socket (interactive, one client at a time) and
    // its output is also the container's stdout, so `kubectl logs` shows the guest.
    let serial = if spec.domain.devices.autoattach_serial_console == Some(false) {
        SerialConfig::Off
    } else {
        SerialConfig::Unix {
            path: SERIAL_SOCKET.into(),
            stdout: true,
        }
    };
    let config = VmConfig {
        version: SPEC_VERSION,
        vcpus,
        memory_mib,
        payload: PayloadConfig {
            kernel: kernel.into(),
            initramfs: initramfs.map(Into::into),
            cmdline: kb.cmdline.clone().unwrap_or_default(),
        },
        serial,
        disks,
        nets,
        api_socket: Some(API_SOCKET.into()),
        memory_backing: Default::default(),
        dirty_log: Default::default(),
        // KubeVirt's autoattachGraphicsDevice, off unless asked for: the RFB server on the pod's
        // loopback only, reached by `vireo vm vnc` through a port-forward the apiserver
        // authorizes, so it needs no password.
        vnc: (spec.domain.devices.autoattach_graphics_device == Some(true)).then(|| {
            VncConfig::new(VncListen::Tcp(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                crate::launcher_link::VNC_PORT,
            ))))
        }),
    };
    config.validate().map_err(|e| {
        let field = match e.field() {
            // The kernel path the launcher sees came from the image.
            Field::Kernel if kb.kernel.is_none() => format!("{kb_field}.container.kernelPath"),
            f => vmi_field(f, prefix),
        };
        ValidationError::new(field, e.to_string())
    })?;
    Ok(config)
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
                        kernel: Some("/path/vmlinuz".into()),
                        initrd: Some("/path/initrd.img".into()),
                        cmdline: Some("console=ttyS0".into()),
                        container: None,
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
    fn rendered_spec_is_what_the_launcher_reads() {
        let spec = render(&sample(), DiskFormat::Raw, "spec").expect("render");
        let text = serde_json::to_string(&spec).expect("json");
        let read = VmConfig::from_json(&text).expect("the launcher's parser accepts it");
        assert_eq!(read, spec);
        assert_eq!(read.vcpus, 2);
        assert_eq!(read.memory_mib, 1024);
        assert_eq!(
            read.disks[0].path,
            std::path::Path::new("/var/run/vireo/disks/root/disk.img")
        );
        assert_eq!(read.disks[0].format, Some(DiskFormat::Qcow2));
        assert_eq!(read.nets[0].tap, "tap0");
        assert_eq!(
            read.serial,
            SerialConfig::Unix {
                path: SERIAL_SOCKET.into(),
                stdout: true,
            }
        );
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
        let spec = render(&s, DiskFormat::Qcow2, "spec").expect("render");
        assert_eq!(spec.disks[0].format, Some(DiskFormat::Qcow2));
        assert_eq!(spec.disks[0].path, std::path::Path::new("/images/a.img"));
    }

    #[test]
    fn kernel_from_a_container_image_is_read_from_the_copy() {
        let mut s = sample();
        s.domain.firmware = Some(Firmware {
            kernel_boot: Some(KernelBoot {
                cmdline: Some("console=ttyS0".into()),
                container: Some(KernelBootContainer {
                    image: "example/kernel:6.6".into(),
                    kernel_path: Some("/boot/vmlinuz-6.6".into()),
                    initrd_path: Some("/boot/initrd.img".into()),
                    image_pull_policy: None,
                }),
                ..Default::default()
            }),
        });
        let spec = render(&s, DiskFormat::Raw, "spec").expect("render");
        assert_eq!(
            spec.payload.kernel,
            std::path::Path::new("/var/run/vireo/kernel-boot/vmlinuz-6.6")
        );
        assert_eq!(
            spec.payload.initramfs.as_deref(),
            Some(std::path::Path::new(
                "/var/run/vireo/kernel-boot/initrd.img"
            ))
        );
        assert_eq!(spec.payload.cmdline, "console=ttyS0");
        // A pod-path initrd may go with an image kernel.
        if let Some(kb) = s
            .domain
            .firmware
            .as_mut()
            .and_then(|f| f.kernel_boot.as_mut())
        {
            kb.initrd = Some("/pod/initrd".into());
            if let Some(c) = kb.container.as_mut() {
                c.initrd_path = None;
            }
        }
        let spec = render(&s, DiskFormat::Raw, "spec").expect("render");
        assert_eq!(
            spec.payload.initramfs.as_deref(),
            Some(std::path::Path::new("/pod/initrd"))
        );
    }

    #[test]
    fn file_names() {
        assert_eq!(file_name("/boot/vmlinuz"), Some("vmlinuz"));
        assert_eq!(file_name("vmlinuz"), Some("vmlinuz"));
        for p in ["", "/", "/boot/", "/boot/..", "/."] {
            assert_eq!(file_name(p), None, "{p:?}");
        }
    }

    #[test]
    fn missing_kernel_boot_names_the_field() {
        let mut s = sample();
        s.domain.firmware = None;
        let err = render(&s, DiskFormat::Raw, "spec").expect_err("must fail");
        assert_eq!(err.field, "spec.domain.firmware.kernelBoot");
    }
}
