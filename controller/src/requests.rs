//! User requests on a VM: start, stop, restart, pause, unpause (`vireo vm … NAME`).
//!
//! | run strategy   | start                    | stop                      | restart                  |
//! |----------------|--------------------------|---------------------------|--------------------------|
//! | Always         | error: already running   | spec → Halted             | queue Stop{uid}, Start   |
//! | RerunOnFailure | queue Start              | spec → Halted             | queue Stop{uid}, Start   |
//! | Manual         | queue Start              | queue Stop{uid}           | queue Stop{uid}, Start   |
//! | Halted         | spec → Always            | error: already stopped    | error: VM is stopped     |
//! | Once           | queue Start              | spec → Halted             | queue Stop{uid}, Start   |
//!
//! "spec →" patches `spec.runStrategy` (or `spec.running` when the VM uses the legacy field);
//! "queue" appends to `status.stateChangeRequests` with a merge patch that carries the
//! `resourceVersion` it read, retried on conflict, so concurrent requests serialize. `Stop{uid}`
//! names the VMI it stops, so a restart never stops the VMI its own Start created.
//!
//! Pause/unpause set or clear annotation `vm.vireo.dev/pause: "true"` on the VM's running VMI;
//! the controller forwards it to the launcher and reports `Paused` once the launcher confirms.

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::vm::{RequestAction, RunStrategy, StateChangeRequest, VirtualMachine};
use crate::crd::vmi::{VirtualMachineInstance, VmiPhase};
use crate::error::{optional, Error, Result};

/// VMI annotation holding the desired pause state.
pub const ANNOTATION_PAUSE_REQUEST: &str = "vm.vireo.dev/pause";

/// A request on a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VmAction {
    /// Run the VM.
    Start,
    /// Stop the VM.
    Stop,
    /// Stop and start the VM.
    Restart,
    /// Pause the guest's vCPUs.
    Pause,
    /// Resume a paused guest.
    Unpause,
}

/// What a request did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `spec.runStrategy` (or `spec.running`) was changed to this strategy.
    StrategyChanged(RunStrategy),
    /// These requests were queued on the VM's status.
    Queued(Vec<StateChangeRequest>),
    /// The VMI's pause annotation was set (`true`) or cleared (`false`).
    PauseRequested(bool),
}

/// Performs `action` on VM `name` in `ns`.
pub async fn request(client: Client, ns: &str, name: &str, action: VmAction) -> Result<Outcome> {
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client, ns);
    // Conflicts mean someone changed the VM between our read and write: re-read and retry.
    for _ in 0..5 {
        let vm = vms.get(name).await?;
        let vmi = optional(vmis.get(name).await)?;
        let r = once(&vms, &vmis, &vm, vmi.as_ref(), action).await;
        match r {
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 409 => continue,
            other => return other,
        }
    }
    Err(Error::Request(format!(
        "VM {ns}/{name} kept changing; try again"
    )))
}

async fn once(
    vms: &Api<VirtualMachine>,
    vmis: &Api<VirtualMachineInstance>,
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    action: VmAction,
) -> Result<Outcome> {
    let name = vm.name_any();
    let strategy = RunStrategy::of(&vm.spec);
    let live_vmi = vmi.filter(|i| {
        i.meta().deletion_timestamp.is_none()
            && !i
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or_default()
                .is_final()
    });
    let stop_current = || StateChangeRequest {
        action: RequestAction::Stop,
        uid: vmi.and_then(|i| i.uid()),
    };
    let start = StateChangeRequest {
        action: RequestAction::Start,
        uid: None,
    };
    use RunStrategy::*;
    match (action, strategy) {
        (VmAction::Start, Always) => Err(Error::Request(format!(
            "VM {name} is already running (runStrategy Always)"
        ))),
        (VmAction::Start, Halted) => set_strategy(vms, vm, Always).await,
        (VmAction::Start, _) => queue(vms, vm, vec![start]).await,
        (VmAction::Stop, Halted) => Err(Error::Request(format!(
            "VM {name} is already stopped (runStrategy Halted)"
        ))),
        (VmAction::Stop, Manual) => match vmi {
            Some(_) => queue(vms, vm, vec![stop_current()]).await,
            None => Err(Error::Request(format!("VM {name} is not running"))),
        },
        (VmAction::Stop, _) => set_strategy(vms, vm, Halted).await,
        (VmAction::Restart, Halted) => {
            Err(Error::Request(format!("VM {name} is stopped; use start")))
        }
        (VmAction::Restart, _) => match vmi {
            Some(_) => queue(vms, vm, vec![stop_current(), start]).await,
            None => queue(vms, vm, vec![start]).await,
        },
        (VmAction::Pause | VmAction::Unpause, _) => {
            let pause = action == VmAction::Pause;
            let running = live_vmi.is_some_and(|i| {
                i.status.as_ref().and_then(|s| s.phase) == Some(VmiPhase::Running)
            });
            if !running {
                return Err(Error::Request(format!("VM {name} is not running")));
            }
            let value = if pause { json!("true") } else { json!(null) };
            let patch =
                json!({ "metadata": { "annotations": { ANNOTATION_PAUSE_REQUEST: value } } });
            vmis.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(Outcome::PauseRequested(pause))
        }
    }
}

async fn set_strategy(
    vms: &Api<VirtualMachine>,
    vm: &VirtualMachine,
    to: RunStrategy,
) -> Result<Outcome> {
    let spec = if vm.spec.running.is_some() && vm.spec.run_strategy.is_none() {
        json!({ "running": to == RunStrategy::Always })
    } else {
        json!({ "runStrategy": to })
    };
    let patch = json!({ "metadata": { "resourceVersion": vm.resource_version() }, "spec": spec });
    vms.patch(
        &vm.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(Outcome::StrategyChanged(to))
}

async fn queue(
    vms: &Api<VirtualMachine>,
    vm: &VirtualMachine,
    add: Vec<StateChangeRequest>,
) -> Result<Outcome> {
    let mut list = vm
        .status
        .as_ref()
        .map(|s| s.state_change_requests.clone())
        .unwrap_or_default();
    list.extend(add.iter().cloned());
    let patch = json!({
        "metadata": { "resourceVersion": vm.resource_version() },
        "status": { "stateChangeRequests": list },
    });
    vms.patch_status(
        &vm.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(Outcome::Queued(add))
}
