//! Spec validation for VMs and VMIs, done by the controller (there is no admission webhook):
//! the VMI's own structure here, then the launch spec it renders to, checked by the launcher's
//! validator (`vireo_spec`).
//!
//! Every error names the offending field by its JSON path (`spec.template.spec.domain.memory.guest`)
//! so the `Valid=False` condition the reconcilers write tells the user exactly what to fix. A VM
//! or VMI that fails validation gets no VMI / pod; other objects are unaffected.

use std::collections::BTreeSet;

use vireo_spec::DiskFormat;

use crate::crd::vm::VirtualMachineSpec;
use crate::crd::vmi::{KernelBoot, VirtualMachineInstanceSpec};
use crate::launch_spec::{file_name, kernel_boot_paths, render, KERNEL_BOOT_DIR};

/// One problem in a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// JSON path of the field, e.g. `spec.domain.devices.disks[1].format`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ValidationError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Joins errors into one condition message.
pub fn summarize(errors: &[ValidationError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses a Kubernetes quantity (`512Mi`, `1G`, `1073741824`) into bytes.
pub fn parse_quantity(q: &str) -> Result<u64, String> {
    let q = q.trim();
    if q.is_empty() {
        return Err("required (a quantity such as 1Gi)".into());
    }
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        other => return Err(format!("unknown quantity suffix {other:?} in {q:?}")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{q:?} is not a quantity"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{q:?} is too large"));
    }
    Ok(bytes as u64)
}

/// Validates a VM spec; an empty result means valid.
pub fn validate_vm_spec(spec: &VirtualMachineSpec) -> Vec<ValidationError> {
    let mut errs = Vec::new();
    if spec.running.is_some() && spec.run_strategy.is_some() {
        errs.push(ValidationError::new(
            "spec.running",
            "spec.running and spec.runStrategy are mutually exclusive; set only spec.runStrategy",
        ));
    }
    errs.extend(validate_vmi_spec(&spec.template.spec, "spec.template.spec"));
    errs
}

/// Validates a VMI spec; `prefix` is the JSON path of the spec (`spec` for a VMI).
pub fn validate_vmi_spec(spec: &VirtualMachineInstanceSpec, prefix: &str) -> Vec<ValidationError> {
    let mut errs = Vec::new();
    let mut err = |field: String, msg: String| errs.push(ValidationError::new(field, msg));
    let d = &spec.domain;
    if let Err(m) = parse_quantity(&d.memory.guest) {
        err(format!("{prefix}.domain.memory.guest"), m);
    }
    let kb_field = format!("{prefix}.domain.firmware.kernelBoot");
    match d.firmware.as_ref().and_then(|f| f.kernel_boot.as_ref()) {
        None => err(
            kb_field,
            "required: disk boot without a kernel is not supported yet".into(),
        ),
        Some(kb) => {
            for e in validate_kernel_boot(kb, &kb_field) {
                err(e.field, e.message);
            }
        }
    }

    let mut volumes = BTreeSet::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let field = format!("{prefix}.volumes[{i}]");
        if !volumes.insert(v.name.as_str()) {
            err(
                format!("{field}.name"),
                format!("duplicate volume name {:?}", v.name),
            );
        }
        let sources = [
            v.container_disk.is_some(),
            v.persistent_volume_claim.is_some(),
            v.empty_disk.is_some(),
            v.host_disk.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources != 1 {
            err(
                field.clone(),
                "exactly one of containerDisk, persistentVolumeClaim, emptyDisk, hostDisk is required"
                    .into(),
            );
        }
        if let Some(e) = &v.empty_disk {
            if let Err(m) = parse_quantity(&e.capacity) {
                err(format!("{field}.emptyDisk.capacity"), m);
            }
        }
        if let Some(h) = &v.host_disk {
            if !h.path.starts_with('/') {
                err(
                    format!("{field}.hostDisk.path"),
                    "must be an absolute path".into(),
                );
            }
        }
    }

    let mut seen_disks: Vec<&str> = Vec::new();
    for (i, disk) in d.devices.disks.iter().enumerate() {
        let field = format!("{prefix}.domain.devices.disks[{i}]");
        if let Some(j) = seen_disks.iter().position(|n| *n == disk.name) {
            err(
                format!("{field}.name"),
                format!("volume {:?} is already referenced by disks[{j}]", disk.name),
            );
        }
        seen_disks.push(&disk.name);
        if !volumes.contains(disk.name.as_str()) {
            err(
                format!("{field}.name"),
                format!("no volume named {:?}", disk.name),
            );
        }
        match disk.bus.as_deref() {
            None | Some("virtio") => {}
            Some(other) => err(
                format!("{field}.bus"),
                format!("unsupported bus {other:?} (only virtio)"),
            ),
        }
    }

    let networks: BTreeSet<&str> = spec.networks.iter().map(|n| n.name.as_str()).collect();
    for (i, n) in d.devices.interfaces.iter().enumerate() {
        let field = format!("{prefix}.domain.devices.interfaces[{i}]");
        if !networks.contains(n.name.as_str()) {
            err(
                format!("{field}.name"),
                format!("no network named {:?}", n.name),
            );
        }
        if n.bridge.is_some() && n.masquerade.is_some() {
            err(
                field.clone(),
                "bridge and masquerade are mutually exclusive".into(),
            );
        }
    }
    // The rest is the launcher's own validation of the spec it would be handed (vCPU and memory
    // bounds, formats, MACs, device count, ...), so nothing passes here that a launcher refuses.
    // The default image format does not affect validity.
    if errs.is_empty() {
        if let Err(e) = render(spec, DiskFormat::Raw, prefix) {
            errs.push(e);
        }
    }
    errs
}

/// Pull policies Kubernetes accepts.
const PULL_POLICIES: [&str; 3] = ["Always", "IfNotPresent", "Never"];

/// Checks `kernelBoot` (at JSON path `field`): the kernel given exactly one way, the image's
/// files absolute paths with distinct file names (both land in one directory of the pod).
fn validate_kernel_boot(kb: &KernelBoot, field: &str) -> Vec<ValidationError> {
    let mut errs = Vec::new();
    if kb.kernel.as_deref().is_some_and(|k| k.trim().is_empty()) {
        errs.push(ValidationError::new(
            format!("{field}.kernel"),
            "must not be empty",
        ));
    }
    if let Some(c) = &kb.container {
        let at = |rest: &str| format!("{field}.container.{rest}");
        if c.image.trim().is_empty() {
            errs.push(ValidationError::new(
                at("image"),
                "required: the image holding the kernel",
            ));
        }
        for (name, path) in [
            ("kernelPath", c.kernel_path.as_deref()),
            ("initrdPath", c.initrd_path.as_deref()),
        ] {
            if let Some(p) = path {
                if !p.starts_with('/') || file_name(p).is_none() {
                    errs.push(ValidationError::new(
                        at(name),
                        format!("{p:?} must be the absolute path of a file in the image"),
                    ));
                }
            }
        }
        if let (Some(k), Some(i)) = (c.kernel_path.as_deref(), c.initrd_path.as_deref()) {
            if file_name(k).is_some() && file_name(k) == file_name(i) {
                errs.push(ValidationError::new(
                    at("initrdPath"),
                    format!(
                        "has the same file name as kernelPath ({:?}); both are copied to \
                         {KERNEL_BOOT_DIR}",
                        file_name(k).unwrap_or_default()
                    ),
                ));
            }
        }
        if let Some(p) = c.image_pull_policy.as_deref() {
            if !PULL_POLICIES.contains(&p) {
                errs.push(ValidationError::new(
                    at("imagePullPolicy"),
                    format!("unknown pull policy {p:?} (Always, IfNotPresent or Never)"),
                ));
            }
        }
    }
    if errs.is_empty() {
        // Given neither or both ways, or in ways that conflict.
        if let Err(e) = kernel_boot_paths(kb, field) {
            errs.push(e);
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::vmi::{CpuSpec, DomainSpec, Firmware, KernelBootContainer, MemorySpec};

    fn spec(kb: KernelBoot) -> VirtualMachineInstanceSpec {
        VirtualMachineInstanceSpec {
            domain: DomainSpec {
                cpu: CpuSpec { cores: 1 },
                memory: MemorySpec {
                    guest: "64Mi".into(),
                },
                firmware: Some(Firmware {
                    kernel_boot: Some(kb),
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn image(kernel: Option<&str>, initrd: Option<&str>) -> Option<KernelBootContainer> {
        Some(KernelBootContainer {
            image: "example/kernel".into(),
            kernel_path: kernel.map(Into::into),
            initrd_path: initrd.map(Into::into),
            image_pull_policy: None,
        })
    }

    fn fields(kb: KernelBoot) -> Vec<(String, String)> {
        validate_vmi_spec(&spec(kb), "spec")
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    #[test]
    fn kernel_boot_takes_the_kernel_exactly_one_way() {
        let kb = "spec.domain.firmware.kernelBoot";
        // Either way alone is valid.
        assert_eq!(
            fields(KernelBoot {
                kernel: Some("/k".into()),
                ..Default::default()
            }),
            []
        );
        assert_eq!(
            fields(KernelBoot {
                container: image(Some("/boot/vmlinuz"), Some("/boot/initrd")),
                ..Default::default()
            }),
            []
        );
        // Neither: named at kernel, message names both options.
        let e = fields(KernelBoot::default());
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, format!("{kb}.kernel"));
        assert!(e[0].1.contains("container.kernelPath"), "{}", e[0].1);
        // An image without a kernelPath and no kernel: the same.
        let e = fields(KernelBoot {
            container: image(None, Some("/boot/initrd")),
            ..Default::default()
        });
        assert_eq!(e[0].0, format!("{kb}.kernel"));
        // Both.
        let e = fields(KernelBoot {
            kernel: Some("/k".into()),
            container: image(Some("/boot/vmlinuz"), None),
            ..Default::default()
        });
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, format!("{kb}.container.kernelPath"));
        assert!(e[0].1.contains("mutually exclusive"), "{}", e[0].1);
        // Two initrds.
        let e = fields(KernelBoot {
            initrd: Some("/i".into()),
            container: image(Some("/boot/vmlinuz"), Some("/boot/initrd")),
            ..Default::default()
        });
        assert_eq!(e[0].0, format!("{kb}.container.initrdPath"));
        // Empty pod path.
        let e = fields(KernelBoot {
            kernel: Some(" ".into()),
            ..Default::default()
        });
        assert_eq!(e[0].0, format!("{kb}.kernel"));
    }

    #[test]
    fn kernel_boot_container_fields_are_checked() {
        let kb = "spec.domain.firmware.kernelBoot.container";
        let bad = |c: KernelBootContainer| {
            fields(KernelBoot {
                container: Some(c),
                ..Default::default()
            })
            .into_iter()
            .map(|(f, _)| f)
            .collect::<Vec<_>>()
        };
        let ok = image(Some("/boot/vmlinuz"), None).unwrap_or_default();
        assert_eq!(
            bad(KernelBootContainer {
                image: "".into(),
                ..ok.clone()
            }),
            [format!("{kb}.image")]
        );
        for p in ["boot/vmlinuz", "/boot/", "/"] {
            assert_eq!(
                bad(KernelBootContainer {
                    kernel_path: Some(p.into()),
                    ..ok.clone()
                }),
                [format!("{kb}.kernelPath")],
                "{p:?}"
            );
        }
        assert_eq!(
            bad(KernelBootContainer {
                initrd_path: Some("/other/vmlinuz".into()),
                ..ok.clone()
            }),
            [format!("{kb}.initrdPath")]
        );
        assert_eq!(
            bad(KernelBootContainer {
                image_pull_policy: Some("Sometimes".into()),
                ..ok.clone()
            }),
            [format!("{kb}.imagePullPolicy")]
        );
        assert_eq!(
            bad(KernelBootContainer {
                image_pull_policy: Some("IfNotPresent".into()),
                ..ok
            }),
            Vec::<String>::new()
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("1Gi"), Ok(1 << 30));
        assert_eq!(parse_quantity("512Mi"), Ok(512 << 20));
        assert_eq!(parse_quantity("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_quantity("0"), Ok(0));
        assert!(parse_quantity("1Xi").is_err());
        assert!(parse_quantity("").is_err());
        assert!(parse_quantity("abc").is_err());
    }
}
