//! VM → VMI: keeps zero or one VMI per VM according to the run strategy and queued requests.
//!
//! | strategy       | VMI absent            | VMI Failed            | VMI Succeeded | requests honoured |
//! |----------------|-----------------------|-----------------------|---------------|-------------------|
//! | Always         | create                | delete, recreate      | delete, recreate | Stop{uid}+Start (restart) |
//! | RerunOnFailure | create                | delete, recreate      | keep (stopped) | Start, Stop, restart |
//! | Manual         | wait for Start        | keep                  | keep          | Start, Stop, restart |
//! | Halted         | —                     | delete                | delete        | (start flips spec to Always) |
//! | Once           | create                | keep                  | keep          | Start, Stop |
//!
//! Recreation after failures backs off (0 s, 2 s, 4 s … 300 s; `status.startFailure`) and shows
//! `CrashLoopBackOff` while waiting. A VM failing validation gets `Valid=False` naming the field
//! and no new VMI. Requests in `status.stateChangeRequests` are consumed head first with a JSON
//! patch that tests the head, so a request a client appends concurrently is never lost.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{apply_status, now, on_error, seconds_until, Context, MANAGER, VMI_FINALIZER};
use crate::crd::vm::{
    PrintableStatus, RequestAction, RunStrategy, StartFailure, StateChangeRequest, VirtualMachine,
};
use crate::crd::vmi::{VirtualMachineInstance, VmiPhase};
use crate::crd::{find_condition, merge_conditions, Condition};
use crate::error::{optional, Error, Result};
use crate::validation::{summarize, validate_vm_spec};

/// Longest back-off between recreations after failures.
const MAX_BACKOFF_SECS: i64 = 300;

/// Builds the VM controller stream.
pub fn controller(
    ctx: Arc<Context>,
) -> futures::stream::BoxStream<'static, std::result::Result<(), String>> {
    let vms = ctx.scoped_api::<VirtualMachine>();
    let vmis = ctx.scoped_api::<VirtualMachineInstance>();
    Controller::new(vms, watcher::Config::default())
        .owns(vmis, watcher::Config::default())
        .run(reconcile, on_error, ctx)
        .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
        .boxed()
}

fn backoff_secs(failures: u32) -> i64 {
    if failures <= 1 {
        0
    } else {
        (1i64 << failures.min(10).saturating_sub(1)).min(MAX_BACKOFF_SECS)
    }
}

/// What the reconciler decided to do with the VMI this round.
enum Step {
    Nothing,
    Create,
    Delete,
}

async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action> {
    let ns = vm
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = vm.name_any();
    let vms: Api<VirtualMachine> = ctx.api(&ns);
    let vmis: Api<VirtualMachineInstance> = ctx.api(&ns);
    let old = vm.status.clone().unwrap_or_default();
    let strategy = RunStrategy::of(&vm.spec);
    let mut conds = Vec::new();
    let mut requeue: Option<Duration> = None;

    // The two reads are independent: issue them together.
    let (vmi, gate) = tokio::join!(vmis.get(&name), ctx.runtime());
    let (vmi, gate) = (optional(vmi)?, gate?);
    // Only a VMI this VM controls counts as its VMI.
    let vmi = vmi.filter(|i| {
        i.owner_references()
            .iter()
            .any(|o| Some(&o.uid) == vm.uid().as_ref() && o.controller == Some(true))
    });
    let vmi_phase = vmi
        .as_ref()
        .and_then(|i| i.status.as_ref()?.phase)
        .unwrap_or_default();
    let vmi_deleting = vmi
        .as_ref()
        .is_some_and(|i| i.meta().deletion_timestamp.is_some());

    let errors = validate_vm_spec(&vm.spec);
    let valid = errors.is_empty();
    conds.push(if valid {
        Condition::new("Valid", true, "Valid", "spec is valid")
    } else {
        Condition::new("Valid", false, "InvalidSpec", summarize(&errors))
    });

    match &gate.allowed {
        Ok(()) => conds.push(Condition::new(
            "RuntimeReady",
            true,
            "Ready",
            "VMRuntime is ready",
        )),
        Err((reason, msg)) => {
            conds.push(Condition::new("RuntimeReady", false, reason, msg.clone()))
        }
    }
    let may_create = valid && gate.allowed.is_ok();

    // Bookkeeping of failures for back-off.
    let mut failure = old.start_failure.clone();
    if vmi_phase == VmiPhase::Failed {
        let uid = vmi.as_ref().and_then(|i| i.uid());
        let f = failure.get_or_insert_with(StartFailure::default);
        if f.last_failed_vmi_uid != uid {
            f.consecutive_fail_count += 1;
            f.last_failed_vmi_uid = uid;
            f.retry_after = Some(super::in_seconds(backoff_secs(f.consecutive_fail_count)));
        }
    } else if vmi_phase == VmiPhase::Running {
        failure = None;
    }
    let backoff_left = failure
        .as_ref()
        .and_then(|f| f.retry_after.as_deref())
        .map(seconds_until)
        .unwrap_or(0);

    let mut step = Step::Nothing;
    let mut pop_request = false;
    let head = old.state_change_requests.first().cloned();
    match &head {
        Some(StateChangeRequest {
            action: RequestAction::Stop,
            uid,
        }) => match &vmi {
            Some(i) if uid.is_none() || uid.as_ref() == i.uid().as_ref() => step = Step::Delete,
            _ => pop_request = true,
        },
        Some(StateChangeRequest {
            action: RequestAction::Start,
            ..
        }) => match &vmi {
            Some(_) if vmi_phase.is_final() => step = Step::Delete,
            Some(_) => pop_request = true,
            None if may_create => {
                step = Step::Create;
                pop_request = true;
            }
            None => {}
        },
        None => match (strategy, &vmi) {
            (RunStrategy::Halted, Some(_)) => step = Step::Delete,
            (RunStrategy::Always, Some(_)) if vmi_phase.is_final() => step = Step::Delete,
            (RunStrategy::RerunOnFailure, Some(_)) if vmi_phase == VmiPhase::Failed => {
                step = Step::Delete
            }
            (RunStrategy::Always | RunStrategy::RerunOnFailure | RunStrategy::Once, None)
                if may_create =>
            {
                step = Step::Create
            }
            _ => {}
        },
    }
    if matches!(step, Step::Create) && backoff_left > 0 {
        step = Step::Nothing;
        pop_request = false;
        requeue = Some(Duration::from_secs(backoff_left.unsigned_abs()));
    }
    if vm.meta().deletion_timestamp.is_some() {
        step = Step::Nothing;
    }

    let mut created = vmi.is_some();
    match step {
        Step::Nothing => {}
        Step::Delete => {
            if !vmi_deleting {
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..Default::default()
                };
                match vmis.delete(&name, &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Step::Create => {
            create_vmi(&vm, &vmis).await?;
            created = true;
        }
    }
    if pop_request {
        if let Some(h) = &head {
            pop_head(&vms, &name, h).await?;
        }
    }

    // Printable status.
    let vmi_status = vmi
        .as_ref()
        .and_then(|i| i.status.clone())
        .unwrap_or_default();
    let vmi_ready = vmi_status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.is_true());
    let paused = find_condition(&vmi_status.conditions, "Paused").is_some_and(Condition::is_true);
    let unschedulable = find_condition(&vmi_status.conditions, "PodScheduled")
        .is_some_and(|c| !c.is_true() && c.reason.as_deref() == Some("Unschedulable"));
    let migrating = vmi_status
        .migration_state
        .as_ref()
        .is_some_and(|m| !m.completed);
    let wants_running = match head.as_ref().map(|h| h.action) {
        Some(RequestAction::Start) => true,
        Some(RequestAction::Stop) => false,
        None => matches!(
            strategy,
            RunStrategy::Always | RunStrategy::RerunOnFailure | RunStrategy::Once
        ),
    };
    let printable = if vm.meta().deletion_timestamp.is_some() {
        PrintableStatus::Terminating
    } else if vmi.is_none() || matches!(step, Step::Create) {
        if backoff_left > 0 && wants_running {
            PrintableStatus::CrashLoopBackOff
        } else if wants_running && (created || may_create) {
            PrintableStatus::Provisioning
        } else {
            PrintableStatus::Stopped
        }
    } else if vmi_deleting || matches!(step, Step::Delete) {
        PrintableStatus::Stopping
    } else {
        match vmi_phase {
            VmiPhase::Running if migrating => PrintableStatus::Migrating,
            VmiPhase::Running if paused => PrintableStatus::Paused,
            VmiPhase::Running => PrintableStatus::Running,
            VmiPhase::Pending | VmiPhase::Scheduling if unschedulable => {
                PrintableStatus::ErrorUnschedulable
            }
            VmiPhase::Pending | VmiPhase::Scheduling | VmiPhase::Scheduled => {
                PrintableStatus::Starting
            }
            VmiPhase::Succeeded => PrintableStatus::Stopped,
            VmiPhase::Failed if backoff_left > 0 => PrintableStatus::CrashLoopBackOff,
            VmiPhase::Failed => PrintableStatus::Stopped,
            VmiPhase::Unknown => PrintableStatus::Unknown,
        }
    };
    let ready = vmi_ready && !vmi_deleting && vmi_phase == VmiPhase::Running;
    conds.push(Condition::new(
        "Ready",
        ready,
        if ready { "VMIReady" } else { "VMINotReady" },
        if ready {
            "the VMI is ready"
        } else {
            "the VMI is absent or not ready"
        },
    ));
    if paused {
        conds.push(Condition::new(
            "Paused",
            true,
            "Paused",
            "the guest is paused",
        ));
    }
    let conditions = merge_conditions(&old.conditions, conds, &now());
    let status = json!({
        "created": created,
        "ready": ready,
        "printableStatus": printable,
        "runStrategy": strategy,
        "conditions": conditions,
        "startFailure": failure,
    });
    apply_status(&vms, &vm, MANAGER, status).await?;

    if gate.allowed.is_err() && wants_running {
        requeue.get_or_insert(Duration::from_secs(2));
    }
    Ok(requeue.map_or_else(
        || Action::requeue(Duration::from_secs(300)),
        Action::requeue,
    ))
}

async fn create_vmi(vm: &VirtualMachine, vmis: &Api<VirtualMachineInstance>) -> Result<()> {
    let name = vm.name_any();
    let meta = vm.spec.template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert("vireo.dev/vm".into(), name.clone());
    let owner = vm
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    let body = json!({
        "apiVersion": VirtualMachineInstance::api_version(&()),
        "kind": VirtualMachineInstance::kind(&()),
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": meta.annotations.unwrap_or_default(),
            "ownerReferences": [owner],
            // Set at creation so the VMI reconciler needs no extra write before the pod.
            "finalizers": [VMI_FINALIZER],
        },
        "spec": vm.spec.template.spec,
    });
    vmis.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    tracing::info!(vm = %name, "created VMI");
    Ok(())
}

async fn pop_head(vms: &Api<VirtualMachine>, name: &str, head: &StateChangeRequest) -> Result<()> {
    let patch: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": "/status/stateChangeRequests/0", "value": head },
        { "op": "remove", "path": "/status/stateChangeRequests/0" },
    ]))?;
    match vms
        .patch_status(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => Ok(()),
        // Someone else changed the head first: the next round sees the new list.
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::backoff_secs;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_secs(1), 0);
        assert_eq!(backoff_secs(2), 2);
        assert_eq!(backoff_secs(3), 4);
        assert_eq!(backoff_secs(30), 300);
    }
}
