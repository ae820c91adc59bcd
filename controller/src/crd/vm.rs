//! `VirtualMachine` (short `vm`): the durable VM object whose run strategy decides whether a
//! `VirtualMachineInstance` exists.
//!
//! Start/stop/restart requests arrive either as a change of `spec.runStrategy` (Halted ↔ Always)
//! or as entries of `status.stateChangeRequests` (Manual, RerunOnFailure, restart), the same
//! split KubeVirt uses; see `requests.rs` for the table.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::vmi::VirtualMachineInstanceSpec;
use super::Condition;

/// Desired state of a VM.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "vireo.dev",
    version = "v1alpha1",
    kind = "VirtualMachine",
    namespaced,
    shortname = "vm",
    status = "VirtualMachineStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.printableStatus"}"#,
    printcolumn = r#"{"name":"Ready","type":"boolean","jsonPath":".status.ready"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// Legacy switch: `true` = Always, `false` = Halted. Mutually exclusive with `runStrategy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    /// When a VMI should exist; see [`RunStrategy`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    /// The VMI to create.
    pub template: VmiTemplate,
}

/// Template for the VMI a VM creates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmiTemplate {
    /// Labels and annotations copied to the VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMeta>,
    /// The VMI spec.
    pub spec: VirtualMachineInstanceSpec,
}

/// Metadata copied from a template to the object it creates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMeta {
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// When the controller keeps a VMI for the VM (OpenShift Virtualization semantics).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RunStrategy {
    /// A VMI always exists; it is recreated whenever it ends, however it ends.
    Always,
    /// Recreated only after a failure; a clean guest shutdown leaves the VM stopped.
    RerunOnFailure,
    /// Only explicit start/stop/restart requests create or delete the VMI.
    Manual,
    /// No VMI.
    Halted,
    /// One VMI, never recreated.
    Once,
}

impl RunStrategy {
    /// The effective strategy of a spec: `runStrategy`, else `running` (true = Always), else
    /// Halted. Both set is a validation error reported elsewhere.
    pub fn of(spec: &VirtualMachineSpec) -> Self {
        match (spec.run_strategy, spec.running) {
            (Some(s), _) => s,
            (None, Some(true)) => Self::Always,
            (None, _) => Self::Halted,
        }
    }
}

/// KubeVirt's one-word status shown by `kubectl get vm`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum PrintableStatus {
    /// No VMI and none wanted.
    #[default]
    Stopped,
    /// A VMI is wanted and is being created.
    Provisioning,
    /// The VMI exists but the guest does not run yet.
    Starting,
    /// The guest runs.
    Running,
    /// The guest is paused.
    Paused,
    /// The VMI is being torn down on request.
    Stopping,
    /// The VM itself is being deleted.
    Terminating,
    /// A live migration is in progress.
    Migrating,
    /// The VMI failed repeatedly; the next start waits for a back-off.
    CrashLoopBackOff,
    /// The VMI's state is unknown.
    Unknown,
    /// The launcher pod cannot be scheduled.
    ErrorUnschedulable,
}

/// A start or stop request queued on the VM (KubeVirt's `stateChangeRequests`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateChangeRequest {
    /// `Start` or `Stop`.
    pub action: RequestAction,
    /// For `Stop`: the UID of the VMI to stop; other VMIs are left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// A request's verb.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RequestAction {
    /// Create the VMI.
    Start,
    /// Delete the VMI.
    Stop,
}

/// Back-off bookkeeping after VMIs that ended before they had run stably and were recreated.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartFailure {
    /// Quick ends in a row (failures, and clean shutdowns under `Always`).
    pub consecutive_fail_count: u32,
    /// UID of the last VMI counted (so one end is counted once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_vmi_uid: Option<String>,
    /// RFC 3339 time before which no new VMI is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
}

/// Observed state of a VM.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// Whether a VMI exists.
    #[serde(default)]
    pub created: bool,
    /// Whether the VMI is ready.
    #[serde(default)]
    pub ready: bool,
    /// One-word status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<PrintableStatus>,
    /// The run strategy in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    /// `Valid`, `RuntimeReady`, `Ready`, `Paused`, `Failure`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pending start/stop requests, oldest first. Written by clients, consumed by the controller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_change_requests: Vec<StateChangeRequest>,
    /// Back-off after failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_failure: Option<StartFailure>,
    /// UID of the last VMI that stayed Ready for the stable period: its end does not count
    /// towards `startFailure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_vmi_uid: Option<String>,
}
