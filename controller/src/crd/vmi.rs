//! `VirtualMachineInstance` (short `vmi`): one running VM, backed by one launcher pod.
//!
//! The spec mirrors KubeVirt's shape (domain, volumes, networks) in the subset Vireo runs. Fields
//! whose values the controller must reject with a readable condition (disk `format`, memory
//! quantities) are plain strings in the schema, so a bad value reaches the controller's
//! validation (`validation.rs`) instead of being refused by the apiserver with a generic error.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// Desired state of a VM instance; also the `spec.template.spec` of a `VirtualMachine`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "vireo.dev",
    version = "v1alpha1",
    kind = "VirtualMachineInstance",
    namespaced,
    shortname = "vmi",
    status = "VirtualMachineInstanceStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.nodeName"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Paused","type":"string","jsonPath":".status.conditions[?(@.type==\"Paused\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceSpec {
    /// CPU, memory, firmware and devices of the guest.
    #[serde(default)]
    pub domain: DomainSpec,
    /// Backing storage referenced by `domain.devices.disks[].name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Networks referenced by `domain.devices.interfaces[].name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    /// `LiveMigrate` or `None` (default): what a node drain does to this VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_strategy: Option<EvictionStrategy>,
    /// Node labels the launcher pod must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
}

/// What happens to a VM when its node is drained.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum EvictionStrategy {
    /// Live-migrate the VM away.
    LiveMigrate,
    /// Let the VM be shut down.
    None,
}

/// The virtual hardware.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainSpec {
    /// vCPU topology.
    #[serde(default)]
    pub cpu: CpuSpec,
    /// Guest memory.
    #[serde(default)]
    pub memory: MemorySpec,
    /// Boot firmware; only `kernelBoot` is supported today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// Disks, NICs and consoles.
    #[serde(default)]
    pub devices: Devices,
}

/// vCPU topology.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuSpec {
    /// Number of vCPUs (default 1).
    #[serde(default = "one")]
    pub cores: u32,
}

fn one() -> u32 {
    1
}

impl Default for CpuSpec {
    fn default() -> Self {
        Self { cores: 1 }
    }
}

/// Guest memory.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemorySpec {
    /// Guest RAM as a Kubernetes quantity (`512Mi`, `2Gi`).
    #[serde(default)]
    pub guest: String,
}

/// Boot firmware.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Firmware {
    /// Direct kernel boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_boot: Option<KernelBoot>,
}

/// Direct kernel boot. The kernel is either a path inside the launcher pod (`kernel`) or a file
/// in a container image (`container`, KubeVirt's `kernelBoot.container`); exactly one of
/// `kernel` and `container.kernelPath` is given.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelBoot {
    /// Kernel image (bzImage or ELF vmlinux): a path inside the launcher pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Optional initramfs: a path inside the launcher pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Container image holding the kernel (and initramfs); an init container copies them into
    /// the launcher pod at `/var/run/vireo/kernel-boot/<file name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<KernelBootContainer>,
}

/// A kernel (and initramfs) shipped in a container image. The image must provide `cp`, as a
/// containerDisk image does.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelBootContainer {
    /// Container image reference.
    pub image: String,
    /// Absolute path of the kernel inside the image (exactly one of this and
    /// `kernelBoot.kernel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<String>,
    /// Absolute path of the initramfs inside the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// `Always`, `IfNotPresent` or `Never` (Kubernetes' default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
}

/// Devices attached to the guest.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Devices {
    /// Block devices; each `name` refers to a volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// NICs; each `name` refers to a network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Serial console (default on): the pod's unix socket, the container's output (`kubectl
    /// logs`) and `vireo vm console`. `false`: the guest has no serial port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_serial_console: Option<bool>,
    /// VNC graphics console (default off, unlike KubeVirt: the display forces the dirty bitmap
    /// and a framebuffer on the VM). `true` serves it on the pod's loopback, port 5900, for
    /// `vireo vm vnc`; it shows what a bzImage kernel's framebuffer console draws.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_graphics_device: Option<bool>,
}

/// A disk as the guest sees it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    /// Name of the volume backing this disk; unique among disks.
    pub name: String,
    /// Bus; only `virtio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// Image format, `raw` or `qcow2`; defaults to the VMRuntime's `vmImageFormat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Attach read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
}

/// A storage source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// Volume name, referenced by a disk.
    pub name: String,
    /// Disk image shipped in a container image (copied to the pod by an init container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_disk: Option<ContainerDisk>,
    /// A PVC holding `disk.img`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcSource>,
    /// A scratch disk of the given capacity, discarded with the VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_disk: Option<EmptyDisk>,
    /// An image file on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_disk: Option<HostDisk>,
}

/// Disk image in a container image at `/disk/disk.img`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDisk {
    /// Container image reference.
    pub image: String,
}

/// A PersistentVolumeClaim reference.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Claim name in the VMI's namespace.
    pub claim_name: String,
}

/// Scratch disk.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDisk {
    /// Size as a quantity (`10Gi`).
    pub capacity: String,
}

/// Image file on the node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostDisk {
    /// Absolute path on the node.
    pub path: String,
}

/// A NIC as the guest sees it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Name of the network this NIC joins.
    pub name: String,
    /// Bridge binding: the guest takes the pod's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Binding>,
    /// Masquerade binding: NAT behind the pod's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<Binding>,
    /// Guest MAC address (`52:54:00:…`); generated by the launcher when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

/// Marker object for an interface binding (`bridge: {}`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Binding {}

/// A network the VM can join.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// Network name, referenced by an interface.
    pub name: String,
    /// The pod network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Binding>,
}

/// Lifecycle phase of a VMI.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum VmiPhase {
    /// Accepted; no launcher pod yet.
    #[default]
    Pending,
    /// Launcher pod created, waiting for a node.
    Scheduling,
    /// Launcher pod bound to a node.
    Scheduled,
    /// Launcher pod running the guest.
    Running,
    /// Guest shut down cleanly.
    Succeeded,
    /// Guest or launcher failed.
    Failed,
    /// State cannot be determined.
    Unknown,
}

impl VmiPhase {
    /// Succeeded and Failed are final: the VMI never leaves them.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// Observed state of a VMI.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<VmiPhase>,
    /// Node running the launcher pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Name of the launcher pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_pod: Option<String>,
    /// Guest interfaces as reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStatus>,
    /// `Ready`, `Paused`, `LiveMigratable`, `Valid`, `PodScheduled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The current or last migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_state: Option<MigrationState>,
    /// Guest and VMM memory as the launcher last reported it (refreshed about every 15 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStatus>,
}

/// Memory of a running VMI, as Kubernetes quantities (KubeVirt's `guestAtBoot` and
/// `guestCurrent`, and Vireo's resident figures).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStatus {
    /// Guest RAM the VM booted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_at_boot: Option<String>,
    /// Guest RAM now (equal to `guestAtBoot`: Vireo has no memory hotplug or balloon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_current: Option<String>,
    /// How much of the guest's RAM the host has backed with memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_resident: Option<String>,
    /// The VMM's own resident memory: the launcher process's resident set minus the guest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_resident: Option<String>,
}

impl MemoryStatus {
    /// The status for what a launcher reported.
    pub fn from_info(m: &vireo_spec::api::MemoryInfo) -> Self {
        let q = |bytes: u64| Some(format!("{}Ki", bytes.div_ceil(1024)));
        Self {
            guest_at_boot: q(m.guest_bytes),
            guest_current: q(m.guest_bytes),
            guest_resident: q(m.guest_resident_bytes),
            vmm_resident: q(m
                .process_resident_bytes
                .saturating_sub(m.guest_resident_bytes)),
        }
    }
}

/// A guest interface as reported.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStatus {
    /// Interface name from the spec.
    pub name: String,
    /// MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// IP address (the pod IP for the pod network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
}

/// Where a migration of this VMI stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationState {
    /// Name of the migration object.
    pub migration_name: String,
    /// UID of the migration object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_uid: Option<String>,
    /// Node the VM runs on now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    /// Target launcher pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pod: Option<String>,
    /// Node the target pod landed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// Whether the migration finished (successfully or not).
    #[serde(default)]
    pub completed: bool,
    /// Whether it failed.
    #[serde(default)]
    pub failed: bool,
}
