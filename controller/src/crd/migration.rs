//! `VirtualMachineInstanceMigration` (short `vmim`): a request to live-migrate one VMI.
//!
//! The controller drives the phases up to `TargetReady` (a target launcher pod exists on another
//! node and runs); from there the source and target launchers move the guest and report
//! `Running` / `Succeeded` / `Failed`. Deleting the object before it completes cancels it: the
//! target pod is removed and the VMI's `migrationState` is marked failed.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// A migration request.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "vireo.dev",
    version = "v1alpha1",
    kind = "VirtualMachineInstanceMigration",
    namespaced,
    shortname = "vmim",
    status = "MigrationStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"VMI","type":"string","jsonPath":".spec.vmiName"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSpec {
    /// Name of the VMI to migrate, in the same namespace.
    pub vmi_name: String,
}

/// Migration phases, in order.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum MigrationPhase {
    /// Accepted, waiting for a slot under the VMRuntime's parallelism limits.
    #[default]
    Pending,
    /// Target pod created, waiting for a node.
    Scheduling,
    /// Target pod bound to a node.
    Scheduled,
    /// Target pod running; its launcher prepares to receive.
    PreparingTarget,
    /// Target launcher ready; the source launcher may start sending.
    TargetReady,
    /// Memory is being transferred.
    Running,
    /// The guest runs on the target.
    Succeeded,
    /// The migration failed or was refused; the guest stays on the source.
    Failed,
}

impl MigrationPhase {
    /// Succeeded and Failed are final.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// Observed state of a migration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// Current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MigrationPhase>,
    /// Source node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    /// Target launcher pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pod: Option<String>,
    /// Node of the target pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
