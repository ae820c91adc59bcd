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
use crate::crd::vmi::VirtualMachineInstanceSpec;
use crate::launch_spec::render;

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
    match d.firmware.as_ref().and_then(|f| f.kernel_boot.as_ref()) {
        None => err(
            format!("{prefix}.domain.firmware.kernelBoot"),
            "required: disk boot without a kernel is not supported yet".into(),
        ),
        Some(kb) if kb.kernel.trim().is_empty() => err(
            format!("{prefix}.domain.firmware.kernelBoot.kernel"),
            "must not be empty".into(),
        ),
        Some(_) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

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
