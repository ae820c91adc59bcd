//! VM → VMI: keeps zero or one VMI per VM according to the run strategy and queued requests.
//!
//! | strategy       | VMI absent            | VMI Failed            | VMI Succeeded | requests honoured |
//! |----------------|-----------------------|-----------------------|---------------|-------------------|
//! | Always         | create                | delete, recreate (counts) | delete, recreate (counts) | Stop{uid}+Start (restart) |
//! | RerunOnFailure | create                | delete, recreate (counts) | keep (stopped) | Start, Stop, restart |
//! | Manual         | wait for Start        | keep                  | keep          | Start, Stop, restart |
//! | Halted         | —                     | delete                | delete        | (start flips spec to Always) |
//! | Once           | create                | keep                  | keep          | Start, Stop |
//!
//! Restart back-off covers every automatic recreation loop, not only crashes: each VMI end
//! marked "counts" above adds one to `status.startFailure.consecutiveFailCount` unless that VMI
//! had stayed Ready for [`STABLE_RUN_SECS`] (a guest that powers off at once under `Always` loops
//! as fast as one that crashes). Recreation waits 0 s, 2 s, 4 s … 300 s after the 1st, 2nd, 3rd …
//! counted end (`status.startFailure.retryAfter`) and the VM shows `CrashLoopBackOff` while it
//! waits. The count is cleared only once the current VMI's `Ready` condition has been True for
//! [`STABLE_RUN_SECS`] (from its `lastTransitionTime`); the VM is requeued for that moment, so the
//! reset needs no other event. A VMI that briefly reports Running does not reset it. A guest
//! reset is not an end: the launcher reboots the guest in place.
//!
//! A VM failing validation gets `Valid=False` naming the field and no new VMI. Requests in
//! `status.stateChangeRequests` are consumed head first with a JSON patch that tests the head, so
//! a request a client appends concurrently is never lost.

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
use k8s_openapi::jiff::Timestamp;

/// Longest back-off between recreations after failures.
const MAX_BACKOFF_SECS: i64 = 300;

/// How long a VMI must stay Ready before its end no longer counts towards the back-off and
/// `status.startFailure` is cleared (KubeVirt-like).
pub const STABLE_RUN_SECS: i64 = 60;

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

/// What the VM reconciler knows about its VMI for the back-off decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmiLife {
    /// The VMI's UID.
    pub uid: Option<String>,
    /// The VMI's phase.
    pub phase: VmiPhase,
    /// Unix time at which the VMI's `Ready` condition turned True, if it is True now.
    pub ready_since: Option<i64>,
    /// Unix time at which the VM's own `Ready` condition turned True, if it was True before this
    /// round (it mirrors this VMI, so it still dates the ready period once the VMI has ended).
    pub vm_ready_since: Option<i64>,
}

/// The back-off bookkeeping after one round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tracking {
    /// New `status.startFailure`.
    pub failure: Option<StartFailure>,
    /// New `status.stableVmiUid`.
    pub stable_vmi_uid: Option<String>,
    /// Seconds until the current VMI will have been Ready for [`STABLE_RUN_SECS`].
    pub recheck_in: Option<i64>,
}

/// Whether a VMI that ended in `phase` is recreated by `strategy` on its own.
pub fn end_recreates(strategy: RunStrategy, phase: VmiPhase) -> bool {
    match phase {
        VmiPhase::Failed => matches!(strategy, RunStrategy::Always | RunStrategy::RerunOnFailure),
        VmiPhase::Succeeded => strategy == RunStrategy::Always,
        _ => false,
    }
}

/// Updates the back-off bookkeeping (`failure`, `stable_vmi_uid` from the VM status) for what
/// the VMI (if any) shows at unix time `now`. Pure: the reconciler writes the result.
pub fn track(
    strategy: RunStrategy,
    failure: Option<StartFailure>,
    stable_vmi_uid: Option<String>,
    vmi: Option<&VmiLife>,
    now: i64,
) -> Tracking {
    let mut t = Tracking {
        failure,
        stable_vmi_uid,
        recheck_in: None,
    };
    let Some(v) = vmi else {
        return t;
    };
    let stable_since = |since: Option<i64>| since.is_some_and(|s| now - s >= STABLE_RUN_SECS);
    if v.phase == VmiPhase::Running {
        if let Some(since) = v.ready_since {
            if stable_since(Some(since)) {
                t.failure = None;
                t.stable_vmi_uid.clone_from(&v.uid);
            } else {
                t.recheck_in = Some(STABLE_RUN_SECS - (now - since).max(0));
            }
        }
    }
    if v.phase.is_final() && end_recreates(strategy, v.phase) {
        let known_stable = v.uid.is_some() && t.stable_vmi_uid == v.uid;
        if known_stable || stable_since(v.vm_ready_since) {
            // Ran long enough: this end starts a fresh count (the reset may not have run yet).
            if !known_stable {
                t.failure = None;
                t.stable_vmi_uid.clone_from(&v.uid);
            }
        } else {
            let f = t.failure.get_or_insert_with(StartFailure::default);
            if f.last_failed_vmi_uid != v.uid {
                f.consecutive_fail_count = f.consecutive_fail_count.saturating_add(1);
                f.last_failed_vmi_uid.clone_from(&v.uid);
                f.retry_after =
                    Timestamp::from_second(now + backoff_secs(f.consecutive_fail_count))
                        .ok()
                        .map(|t| t.to_string());
            }
        }
    }
    t
}

/// Unix seconds of an RFC 3339 time.
fn unix_secs(t: &str) -> Option<i64> {
    t.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// When the condition `type_` in `conds` turned True, if it is True.
fn true_since(conds: &[Condition], type_: &str) -> Option<i64> {
    find_condition(conds, type_)
        .filter(|c| c.is_true())
        .and_then(|c| unix_secs(c.last_transition_time.as_deref()?))
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

    // Bookkeeping of quick ends for back-off.
    let life = vmi.as_ref().map(|i| VmiLife {
        uid: i.uid(),
        phase: vmi_phase,
        ready_since: i
            .status
            .as_ref()
            .and_then(|s| true_since(&s.conditions, "Ready")),
        vm_ready_since: true_since(&old.conditions, "Ready"),
    });
    let tracking = track(
        strategy,
        old.start_failure.clone(),
        old.stable_vmi_uid.clone(),
        life.as_ref(),
        Timestamp::now().as_second(),
    );
    if let Some(secs) = tracking.recheck_in {
        requeue = Some(Duration::from_secs(secs.max(1).unsigned_abs()));
    }
    let failure = tracking.failure;
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
        let wait = Duration::from_secs(backoff_left.unsigned_abs());
        requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
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
    // The VMI ended and its successor will wait for the back-off.
    let ended_waiting = vmi_phase.is_final()
        && backoff_left > 0
        && match head.as_ref().map(|h| h.action) {
            Some(RequestAction::Start) => true,
            Some(RequestAction::Stop) => false,
            None => end_recreates(strategy, vmi_phase),
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
        if ended_waiting {
            PrintableStatus::CrashLoopBackOff
        } else {
            PrintableStatus::Stopping
        }
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
            VmiPhase::Succeeded | VmiPhase::Failed if ended_waiting => {
                PrintableStatus::CrashLoopBackOff
            }
            VmiPhase::Succeeded => PrintableStatus::Stopped,
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
        "stableVmiUid": tracking.stable_vmi_uid,
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
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn life(uid: &str, phase: VmiPhase) -> VmiLife {
        VmiLife {
            uid: Some(uid.into()),
            phase,
            ..Default::default()
        }
    }

    fn count(t: &Tracking) -> u32 {
        t.failure.as_ref().map_or(0, |f| f.consecutive_fail_count)
    }

    fn retry_in(t: &Tracking) -> Option<i64> {
        let at = t.failure.as_ref()?.retry_after.as_deref()?;
        Some(unix_secs(at)? - NOW)
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_secs(1), 0);
        assert_eq!(backoff_secs(2), 2);
        assert_eq!(backoff_secs(3), 4);
        assert_eq!(backoff_secs(30), 300);
    }

    #[test]
    fn which_ends_lead_to_recreation() {
        use RunStrategy::*;
        for s in [Always, RerunOnFailure] {
            assert!(end_recreates(s, VmiPhase::Failed), "{s:?}");
        }
        assert!(end_recreates(Always, VmiPhase::Succeeded));
        assert!(!end_recreates(RerunOnFailure, VmiPhase::Succeeded));
        for s in [Manual, Halted, Once] {
            assert!(!end_recreates(s, VmiPhase::Failed), "{s:?}");
            assert!(!end_recreates(s, VmiPhase::Succeeded), "{s:?}");
        }
        assert!(!end_recreates(Always, VmiPhase::Running));
    }

    /// A guest that powers off at once under Always loops like a crash: each end counts, and
    /// the second one in a row already waits.
    #[test]
    fn quick_poweroffs_under_always_back_off() {
        let t1 = track(
            RunStrategy::Always,
            None,
            None,
            Some(&life("a", VmiPhase::Succeeded)),
            NOW,
        );
        assert_eq!((count(&t1), retry_in(&t1)), (1, Some(0)));
        // The same VMI seen again is not counted twice.
        let again = track(
            RunStrategy::Always,
            t1.failure.clone(),
            None,
            Some(&life("a", VmiPhase::Succeeded)),
            NOW,
        );
        assert_eq!(count(&again), 1);
        let t2 = track(
            RunStrategy::Always,
            t1.failure,
            None,
            Some(&life("b", VmiPhase::Succeeded)),
            NOW,
        );
        assert_eq!((count(&t2), retry_in(&t2)), (2, Some(2)));
        let t3 = track(
            RunStrategy::Always,
            t2.failure,
            None,
            Some(&life("c", VmiPhase::Failed)),
            NOW,
        );
        assert_eq!((count(&t3), retry_in(&t3)), (3, Some(4)));
    }

    #[test]
    fn ends_that_are_not_recreated_do_not_count() {
        for (s, p) in [
            (RunStrategy::RerunOnFailure, VmiPhase::Succeeded),
            (RunStrategy::Manual, VmiPhase::Failed),
            (RunStrategy::Once, VmiPhase::Failed),
            (RunStrategy::Halted, VmiPhase::Failed),
        ] {
            let t = track(s, None, None, Some(&life("a", p)), NOW);
            assert_eq!(t.failure, None, "{s:?} {p:?}");
        }
        let t = track(
            RunStrategy::RerunOnFailure,
            None,
            None,
            Some(&life("a", VmiPhase::Failed)),
            NOW,
        );
        assert_eq!(count(&t), 1);
    }

    /// Running (even Ready) for less than the stable period keeps the count; the VM is told when
    /// to look again.
    #[test]
    fn a_blip_of_running_does_not_reset() {
        let old = Some(StartFailure {
            consecutive_fail_count: 4,
            last_failed_vmi_uid: Some("a".into()),
            retry_after: None,
        });
        let running = life("b", VmiPhase::Running);
        let t = track(RunStrategy::Always, old.clone(), None, Some(&running), NOW);
        assert_eq!((count(&t), t.recheck_in), (4, None));
        let ready = VmiLife {
            ready_since: Some(NOW - 20),
            ..running
        };
        let t = track(RunStrategy::Always, old.clone(), None, Some(&ready), NOW);
        assert_eq!((count(&t), t.recheck_in), (4, Some(STABLE_RUN_SECS - 20)));
        // Then it fails: the count goes on.
        let t = track(
            RunStrategy::Always,
            t.failure,
            t.stable_vmi_uid,
            Some(&life("b", VmiPhase::Failed)),
            NOW + 30,
        );
        assert_eq!(count(&t), 5);
    }

    #[test]
    fn ready_for_the_stable_period_resets_and_its_end_does_not_count() {
        let old = Some(StartFailure {
            consecutive_fail_count: 4,
            last_failed_vmi_uid: Some("a".into()),
            retry_after: None,
        });
        let ready = VmiLife {
            ready_since: Some(NOW - STABLE_RUN_SECS),
            ..life("b", VmiPhase::Running)
        };
        let t = track(RunStrategy::Always, old.clone(), None, Some(&ready), NOW);
        assert_eq!(t.failure, None);
        assert_eq!(t.stable_vmi_uid.as_deref(), Some("b"));
        assert_eq!(t.recheck_in, None);
        // Its end later is no failure: the next VMI starts at once with a fresh count.
        let t = track(
            RunStrategy::Always,
            t.failure,
            t.stable_vmi_uid,
            Some(&life("b", VmiPhase::Succeeded)),
            NOW + 600,
        );
        assert_eq!(t.failure, None);
        // A stable VMI whose end arrives before the reset round: the VM's own Ready dates it.
        let ended = VmiLife {
            vm_ready_since: Some(NOW - 3600),
            ..life("c", VmiPhase::Failed)
        };
        let t = track(RunStrategy::Always, old.clone(), None, Some(&ended), NOW);
        assert_eq!(t.failure, None);
        assert_eq!(t.stable_vmi_uid.as_deref(), Some("c"));
        // ... but a short one counts.
        let ended = VmiLife {
            vm_ready_since: Some(NOW - 5),
            ..life("c", VmiPhase::Failed)
        };
        let t = track(RunStrategy::Always, old, None, Some(&ended), NOW);
        assert_eq!(count(&t), 5);
    }

    #[test]
    fn no_vmi_keeps_the_bookkeeping() {
        let old = Some(StartFailure {
            consecutive_fail_count: 2,
            last_failed_vmi_uid: Some("a".into()),
            retry_after: Some("2027-01-01T00:00:00Z".into()),
        });
        let t = track(RunStrategy::Always, old.clone(), None, None, NOW);
        assert_eq!(t.failure, old);
    }
}
