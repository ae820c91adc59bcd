//! `VMRuntime`: the cluster-scoped singleton (named `vmruntime`) that switches the VM API on and
//! off and records per-node preflight results.
//!
//! Disable semantics follow GDC's VM Runtime table:
//!
//! | VMs exist | annotation `vm.vireo.dev/force-disable` | result of `spec.enabled: false` |
//! |-----------|-------------------------------------------|---------------------------------|
//! | no        | any                                       | disabled                        |
//! | yes       | absent or `"false"`                       | refused, VMs kept, still enabled |
//! | yes       | `"true"`                                  | VMs and their resources deleted, then disabled |

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// Annotation that lets disabling delete existing VMs.
pub const FORCE_DISABLE_ANNOTATION: &str = "vm.vireo.dev/force-disable";
/// Default name of the singleton.
pub const DEFAULT_NAME: &str = "vmruntime";

/// Desired state of the VM runtime.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "vireo.dev",
    version = "v1alpha1",
    kind = "VMRuntime",
    plural = "vmruntimes",
    status = "VMRuntimeStatus",
    printcolumn = r#"{"name":"Enabled","type":"boolean","jsonPath":".spec.enabled"}"#,
    printcolumn = r#"{"name":"Ready","type":"boolean","jsonPath":".status.ready"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VMRuntimeSpec {
    /// Whether VMs may run.
    #[serde(default)]
    pub enabled: bool,
    /// Allow VMs on nodes whose preflight found no hardware virtualization (software emulation).
    #[serde(default)]
    pub use_emulation: bool,
    /// Default disk image format: `raw` (default) or `qcow2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_image_format: Option<ImageFormat>,
    /// Live-migration limits.
    #[serde(default)]
    pub migrations: MigrationLimits,
}

/// Disk image format: the launch spec's one type for it.
pub use vireo_spec::DiskFormat as ImageFormat;

/// Limits on live migrations (KubeVirt's defaults).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationLimits {
    /// Bandwidth per migration as a quantity (`64Mi`); unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_per_migration: Option<String>,
    /// Seconds per GiB of guest memory before a migration is cancelled.
    #[serde(default = "d800")]
    pub completion_timeout_per_gi_b: u32,
    /// Migrations in flight in the whole cluster.
    #[serde(default = "d5")]
    pub parallel_migrations_per_cluster: u32,
    /// Outbound migrations in flight per source node.
    #[serde(default = "d2")]
    pub parallel_outbound_migrations_per_node: u32,
    /// Seconds without progress before a migration is cancelled.
    #[serde(default = "d150")]
    pub progress_timeout: u32,
}

fn d800() -> u32 {
    800
}
fn d5() -> u32 {
    5
}
fn d2() -> u32 {
    2
}
fn d150() -> u32 {
    150
}

impl Default for MigrationLimits {
    fn default() -> Self {
        Self {
            bandwidth_per_migration: None,
            completion_timeout_per_gi_b: d800(),
            parallel_migrations_per_cluster: d5(),
            parallel_outbound_migrations_per_node: d2(),
            progress_timeout: d150(),
        }
    }
}

/// Observed state of the VM runtime.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VMRuntimeStatus {
    /// Whether VMs may be created now (enabled, and a node passed preflight or emulation is on).
    #[serde(default)]
    pub ready: bool,
    /// Preflight result per node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preflight: Vec<NodePreflight>,
    /// `Ready`, `DisableRefused`, `Disabling`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// What the preflight job found on one node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePreflight {
    /// Node name.
    pub node: String,
    /// `Pending`, `Passed` or `Failed`.
    pub result: String,
    /// `/dev/kvm` present and openable.
    #[serde(default)]
    pub kvm: bool,
    /// CPU virtualization flag found (`vmx` or `svm`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// The job's report, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
