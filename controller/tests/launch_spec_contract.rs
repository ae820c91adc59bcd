//! The contract between the controller and the launcher, tested on a table of VMIs: each VMI is
//! validated the way the reconcilers validate it; each one the controller accepts is rendered
//! into its launcher pod, and the launch-spec annotation of that pod — the very text `vireo
//! launch` reads — is fed through the launcher's parser and validator
//! (`vireo_spec::VmConfig::from_json`). A VMI the launcher would refuse must be refused by the
//! controller first, with the field named.

use serde_json::{json, Value};
use vireo_controller::crd::VirtualMachineInstance;
use vireo_controller::launch_spec::render;
use vireo_controller::pod::{launcher_pod, LauncherConfig, PodRole, ANNOTATION_SPEC};
use vireo_controller::validation::validate_vmi_spec;
use vireo_spec::{DiskFormat, SerialConfig, VmConfig};

/// A valid VMI spec: every volume kind, both interface bindings.
fn base() -> Value {
    json!({
        "domain": {
            "cpu": { "cores": 2 },
            "memory": { "guest": "1Gi" },
            "firmware": { "kernelBoot": { "kernel": "/boot/vmlinuz", "initrd": "/boot/initrd",
                                          "cmdline": "console=ttyS0" } },
            "devices": {
                "disks": [
                    { "name": "root", "format": "qcow2" },
                    { "name": "data", "format": "raw", "readonly": true },
                    { "name": "scratch" },
                    { "name": "host", "bus": "virtio" }
                ],
                "interfaces": [
                    { "name": "default", "masquerade": {}, "macAddress": "52:54:00:12:34:56" },
                    { "name": "lan", "bridge": {} }
                ]
            }
        },
        "volumes": [
            { "name": "root", "containerDisk": { "image": "example/root" } },
            { "name": "data", "persistentVolumeClaim": { "claimName": "data-pvc" } },
            { "name": "scratch", "emptyDisk": { "capacity": "1Gi" } },
            { "name": "host", "hostDisk": { "path": "/images/host.img" } }
        ],
        "networks": [ { "name": "default", "pod": {} }, { "name": "lan", "pod": {} } ]
    })
}

/// `base()` with `edit` applied.
fn with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut v = base();
    edit(&mut v);
    v
}

/// Many disks, all on containerDisk volumes.
fn disks(n: usize) -> Value {
    with(|v| {
        let names: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
        v["domain"]["devices"]["disks"] = names.iter().map(|n| json!({ "name": n })).collect();
        v["domain"]["devices"]["interfaces"] = json!([]);
        v["networks"] = json!([]);
        v["volumes"] = names
            .iter()
            .map(|n| json!({ "name": n, "containerDisk": { "image": "img" } }))
            .collect();
    })
}

/// What the controller says about `spec`, and what the launcher then reads.
fn controller_then_launcher(spec: &Value) -> Result<VmConfig, String> {
    let vmi: VirtualMachineInstance = serde_json::from_value(json!({
        "apiVersion": "vireo.dev/v1alpha1", "kind": "VirtualMachineInstance",
        "metadata": { "name": "t", "namespace": "ns", "uid": "u-1" },
        "spec": spec,
    }))
    .map_err(|e| format!("not a VMI: {e}"))?;
    let errors = validate_vmi_spec(&vmi.spec, "spec");
    if !errors.is_empty() {
        return Err(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "));
    }
    let rendered = render(&vmi.spec, DiskFormat::Qcow2, "spec")
        .expect("a VMI that validates renders (validation ran render)");
    let pod = launcher_pod(
        &vmi,
        &rendered,
        &LauncherConfig::default(),
        &PodRole::Launcher,
        &None,
    )
    .expect("pod");
    let text = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_SPEC))
        .expect("launch spec annotation");
    let read = VmConfig::from_json(text).unwrap_or_else(|e| {
        panic!("the controller accepted a VMI whose launch spec the launcher refuses: {e}\n{text}")
    });
    assert_eq!(
        read, rendered,
        "what the launcher reads is what was rendered"
    );
    Ok(read)
}

#[test]
fn every_accepted_vmi_is_a_spec_the_launcher_accepts() {
    let accepted: Vec<(&str, Value)> = vec![
        ("every volume kind and binding", base()),
        ("1 vCPU", with(|v| v["domain"]["cpu"]["cores"] = json!(1))),
        (
            "254 vCPUs, the most",
            with(|v| v["domain"]["cpu"]["cores"] = json!(254)),
        ),
        (
            "8 MiB, the least memory",
            with(|v| v["domain"]["memory"]["guest"] = json!("8Mi")),
        ),
        (
            "memory in decimal units",
            with(|v| v["domain"]["memory"]["guest"] = json!("100M")),
        ),
        (
            "serial off",
            with(|v| v["domain"]["devices"]["autoattachSerialConsole"] = json!(false)),
        ),
        (
            "serial on",
            with(|v| v["domain"]["devices"]["autoattachSerialConsole"] = json!(true)),
        ),
        (
            "no devices",
            with(|v| {
                v["domain"]["devices"] = json!({});
                v["volumes"] = json!([]);
                v["networks"] = json!([]);
            }),
        ),
        ("31 devices, the most", disks(31)),
    ];
    for (name, spec) in &accepted {
        let read =
            controller_then_launcher(spec).unwrap_or_else(|e| panic!("{name}: refused: {e}"));
        assert!(read.vcpus >= 1, "{name}");
    }
    let read = controller_then_launcher(&base()).expect("base");
    assert_eq!(read.disks.len(), 4);
    assert_eq!(read.disks[0].format, Some(DiskFormat::Qcow2));
    assert_eq!(read.disks[1].format, Some(DiskFormat::Raw));
    assert!(read.disks[1].readonly);
    assert_eq!(
        read.disks[2].format,
        Some(DiskFormat::Qcow2),
        "the runtime's default"
    );
    assert_eq!(read.disks[3].path, std::path::Path::new("/images/host.img"));
    assert_eq!(read.nets.len(), 2);
    assert_eq!(
        read.nets[0].mac.map(|m| m.to_string()).as_deref(),
        Some("52:54:00:12:34:56")
    );
    assert_eq!(read.nets[1].mac, None);
    assert!(matches!(read.serial, SerialConfig::Unix { .. }));
    let off = with(|v| v["domain"]["devices"]["autoattachSerialConsole"] = json!(false));
    assert_eq!(
        controller_then_launcher(&off).expect("off").serial,
        SerialConfig::Off
    );
}

#[test]
fn what_the_launcher_would_refuse_the_controller_refuses_first_naming_the_field() {
    let refused: Vec<(&str, Value, &str)> = vec![
        (
            "0 vCPUs",
            with(|v| v["domain"]["cpu"]["cores"] = json!(0)),
            "spec.domain.cpu.cores",
        ),
        (
            "255 vCPUs",
            with(|v| v["domain"]["cpu"]["cores"] = json!(255)),
            "spec.domain.cpu.cores",
        ),
        (
            "300 vCPUs (no u8)",
            with(|v| v["domain"]["cpu"]["cores"] = json!(300)),
            "spec.domain.cpu.cores",
        ),
        (
            "1 MiB",
            with(|v| v["domain"]["memory"]["guest"] = json!("1Mi")),
            "spec.domain.memory.guest",
        ),
        (
            "7 MiB",
            with(|v| v["domain"]["memory"]["guest"] = json!("7Mi")),
            "spec.domain.memory.guest",
        ),
        (
            "0 memory",
            with(|v| v["domain"]["memory"]["guest"] = json!("0")),
            "spec.domain.memory.guest",
        ),
        (
            "65 TiB",
            with(|v| v["domain"]["memory"]["guest"] = json!("65Ti")),
            "spec.domain.memory.guest",
        ),
        (
            "not a quantity",
            with(|v| v["domain"]["memory"]["guest"] = json!("lots")),
            "spec.domain.memory.guest",
        ),
        (
            "empty kernel",
            with(|v| v["domain"]["firmware"]["kernelBoot"]["kernel"] = json!("")),
            "spec.domain.firmware.kernelBoot.kernel",
        ),
        (
            "no kernel boot",
            with(|v| v["domain"]["firmware"] = json!({})),
            "spec.domain.firmware.kernelBoot",
        ),
        (
            "vmdk",
            with(|v| v["domain"]["devices"]["disks"][0]["format"] = json!("vmdk")),
            "spec.domain.devices.disks[0].format",
        ),
        (
            "QCOW2 in capitals",
            with(|v| v["domain"]["devices"]["disks"][0]["format"] = json!("QCOW2")),
            "spec.domain.devices.disks[0].format",
        ),
        (
            "multicast MAC",
            with(|v| {
                v["domain"]["devices"]["interfaces"][1]["macAddress"] = json!("01:00:5e:00:00:01")
            }),
            "spec.domain.devices.interfaces[1].macAddress",
        ),
        (
            "zero MAC",
            with(|v| {
                v["domain"]["devices"]["interfaces"][0]["macAddress"] = json!("00:00:00:00:00:00")
            }),
            "spec.domain.devices.interfaces[0].macAddress",
        ),
        (
            "malformed MAC",
            with(|v| {
                v["domain"]["devices"]["interfaces"][0]["macAddress"] = json!("52:54:00:12:34")
            }),
            "spec.domain.devices.interfaces[0].macAddress",
        ),
        (
            "same MAC twice",
            with(|v| {
                v["domain"]["devices"]["interfaces"][1]["macAddress"] = json!("52:54:00:12:34:56")
            }),
            "spec.domain.devices.interfaces[1].macAddress",
        ),
        ("32 devices", disks(32), "spec.domain.devices"),
        (
            "relative hostDisk",
            with(|v| v["volumes"][3]["hostDisk"]["path"] = json!("images/a.img")),
            "spec.volumes[3].hostDisk.path",
        ),
        (
            "disk without volume",
            with(|v| v["domain"]["devices"]["disks"][0]["name"] = json!("nope")),
            "spec.domain.devices.disks[0].name",
        ),
        (
            "sata bus",
            with(|v| v["domain"]["devices"]["disks"][0]["bus"] = json!("sata")),
            "spec.domain.devices.disks[0].bus",
        ),
    ];
    for (name, spec, field) in &refused {
        match controller_then_launcher(spec) {
            Ok(c) => panic!("{name}: the controller accepted it and the launcher read {c:?}"),
            Err(msg) => assert!(msg.contains(field), "{name}: {msg:?} must name {field}"),
        }
    }
}
