//! VMI → launcher Pod: creates the pod, derives the VMI's phase and conditions from it, forwards
//! pause requests, and removes the pod before the VMI goes away (finalizer).
//!
//! | launcher pod                         | VMI phase   |
//! |--------------------------------------|-------------|
//! | not created yet                      | Pending     |
//! | Pending, no node                     | Scheduling  |
//! | Pending, bound to a node             | Scheduled   |
//! | Running                              | Running     |
//! | Succeeded / Failed                   | Succeeded / Failed (final) |
//! | vanished after being scheduled       | Failed      |
//!
//! A launcher that exits with a status other than 0 leaves a `Failure` condition whose reason is
//! that status's name (`ForcedStop`, `TripleFault`, … see `vireo_spec::ExitStatus`).
//! `LiveMigratable` is False for every VMI until the controller drives live migration between
//! launcher pods (the VMM itself migrates: `vireo receive`, `vm.send-migration`).
//!
//! `Ready` = pod Running and pod Ready. `Paused` = the launcher's control API reports the VM
//! paused. The controller pauses and resumes the VM itself, through the pod's port-forward to
//! the control API ([`observe`]), whenever VMI annotation `vm.vireo.dev/pause` and the VM's
//! state differ, and reports the state and the launcher's memory (`status.memory`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use vireo_spec::api::ApiVmState;
use vireo_spec::ExitStatus;

use super::observe::{self, Observation};
use super::{
    add_finalizer, apply_status, now, on_error, remove_finalizer, Context, MANAGER, VMI_FINALIZER,
};
use crate::crd::vmi::{InterfaceStatus, MemoryStatus, VirtualMachineInstance, VmiPhase};
use crate::crd::{merge_conditions, Condition};
use crate::error::{optional, Error, Result};
use crate::launch_spec::render;
use crate::pod::{launcher_pod, launcher_pod_name, PodRole, LABEL_VMI, LAUNCHER_CONTAINER};
use crate::requests::ANNOTATION_PAUSE_REQUEST;
use crate::validation::{summarize, validate_vmi_spec};

/// Builds the VMI controller stream.
pub fn controller(
    ctx: Arc<Context>,
) -> futures::stream::BoxStream<'static, std::result::Result<(), String>> {
    let vmis = ctx.scoped_api::<VirtualMachineInstance>();
    let pods = ctx.scoped_api::<Pod>();
    Controller::new(vmis, watcher::Config::default())
        .owns(pods, watcher::Config::default().labels(LABEL_VMI))
        .run(reconcile, on_error, ctx)
        .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
        .boxed()
}

/// Phase, scheduling condition and readiness derived from a launcher pod.
pub struct PodView {
    /// VMI phase the pod implies.
    pub phase: VmiPhase,
    /// Pod bound to this node.
    pub node: Option<String>,
    /// Pod Running and Ready.
    pub ready: bool,
    /// The scheduler's verdict, if it gave one.
    pub scheduled: Option<Condition>,
    /// Pod IP.
    pub ip: Option<String>,
    /// How the launcher container ended, once it has: its exit code and termination message.
    pub exit: Option<(i32, Option<String>)>,
}

/// The Failure condition for a launcher that exited with `code` (and `message`, its termination
/// message if any), or `None` for a clean poweroff. Codes are `vireo`'s exit statuses
/// ([`ExitStatus`]); a forced stop (8) is a failure, as KubeVirt counts a domain destroyed after
/// its grace period when the guest had ACPI.
pub fn exit_condition(code: i32, message: Option<&str>) -> Option<Condition> {
    let status = ExitStatus::from_code(i64::from(code));
    if status == Some(ExitStatus::PowerOff) {
        return None;
    }
    let (reason, what) = match status {
        Some(s) => (s.reason(), s.description().to_owned()),
        None => (
            "LauncherExited",
            format!("the launcher exited with status {code}"),
        ),
    };
    let text = match message.map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) => format!("{what} (exit status {code}): {m}"),
        None => format!("{what} (exit status {code})"),
    };
    Some(Condition::new("Failure", true, reason, text))
}

/// Reads what a pod says about its VMI.
pub fn view_pod(pod: &Pod) -> PodView {
    let spec_node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let status = pod.status.clone().unwrap_or_default();
    let conds = status.conditions.unwrap_or_default();
    let cond_true = |t: &str| conds.iter().any(|c| c.type_ == t && c.status == "True");
    let phase = match status.phase.as_deref() {
        Some("Running") => VmiPhase::Running,
        Some("Succeeded") => VmiPhase::Succeeded,
        Some("Failed") => VmiPhase::Failed,
        Some("Unknown") => VmiPhase::Unknown,
        _ if spec_node.is_some() => VmiPhase::Scheduled,
        _ => VmiPhase::Scheduling,
    };
    let scheduled = conds
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .map(|c| Condition {
            type_: "PodScheduled".into(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_transition_time: None,
        });
    let exit = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.name == LAUNCHER_CONTAINER)
        .find_map(|c| c.state?.terminated)
        .map(|t| (t.exit_code, t.message));
    PodView {
        phase,
        node: spec_node,
        ready: phase == VmiPhase::Running && cond_true("Ready"),
        scheduled,
        ip: status.pod_ip,
        exit,
    }
}

async fn reconcile(vmi: Arc<VirtualMachineInstance>, ctx: Arc<Context>) -> Result<Action> {
    let ns = vmi
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = vmi.name_any();
    let vmis: Api<VirtualMachineInstance> = ctx.api(&ns);
    let pods: Api<Pod> = ctx.api(&ns);
    let pod_name = launcher_pod_name(&name);

    if vmi.meta().deletion_timestamp.is_some() {
        if let Some(uid) = vmi.uid() {
            ctx.observations.forget(&uid);
        }
        return cleanup(&vmi, &vmis, &pods).await;
    }
    add_finalizer(&vmis, &vmi, VMI_FINALIZER).await?;

    let old = vmi.status.clone().unwrap_or_default();
    let old_phase = old.phase.unwrap_or_default();
    let mut conds = Vec::new();
    let errors = validate_vmi_spec(&vmi.spec, "spec");
    let (pod, gate) = tokio::join!(pods.get(&pod_name), ctx.runtime());
    let (pod, gate) = (optional(pod)?, gate?);
    // Ignore a same-named pod some other VMI incarnation owns.
    let pod = pod.filter(|p| {
        p.owner_references()
            .iter()
            .any(|o| Some(&o.uid) == vmi.uid().as_ref())
    });

    let uid = vmi.uid().unwrap_or_default();
    let want_paused = vmi
        .annotations()
        .get(ANNOTATION_PAUSE_REQUEST)
        .is_some_and(|v| v == "true");
    let mut phase = old_phase;
    let mut view = None;
    // What the launcher last said, and why it could not be asked (if it could not).
    let mut seen: Option<Observation> = None;
    let mut unreachable: Option<String> = None;
    if old_phase.is_final() {
        // Final: never recreate; keep reporting what the pod says about readiness.
        view = pod.as_ref().map(view_pod);
    } else if !errors.is_empty() {
        phase = VmiPhase::Failed;
    } else if let Some(p) = &pod {
        let v = view_pod(p);
        phase = v.phase;
        if phase == VmiPhase::Running {
            seen = ctx.observations.get(&uid);
            if observe::due(seen.as_ref(), want_paused, v.ready) {
                match observe::sync(&ctx.observations, &uid, &pods, &pod_name, want_paused).await {
                    Ok(o) => seen = Some(o),
                    Err(e) => {
                        tracing::warn!(vmi = %name, error = %e, "cannot reach the launcher");
                        unreachable = Some(format!("the launcher cannot be reached: {e}"));
                    }
                }
            }
        } else {
            ctx.observations.forget(&uid);
        }
        view = Some(v);
    } else if matches!(
        old_phase,
        VmiPhase::Scheduled | VmiPhase::Running | VmiPhase::Unknown
    ) {
        conds.push(Condition::new(
            "Failure",
            true,
            "LauncherPodDeleted",
            format!("launcher pod {pod_name} disappeared"),
        ));
        phase = VmiPhase::Failed;
    } else {
        match &gate.allowed {
            Err((reason, msg)) => {
                conds.push(Condition::new("RuntimeReady", false, reason, msg.clone()));
                phase = VmiPhase::Pending;
            }
            Ok(()) => {
                let spec = render(&vmi.spec, gate.image_format, "spec")?;
                let pod = launcher_pod(
                    &vmi,
                    &spec,
                    &ctx.config.launcher,
                    &PodRole::Launcher,
                    &gate.eligible,
                )?;
                pods.patch(
                    &pod_name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&pod),
                )
                .await?;
                tracing::info!(vmi = %name, pod = %pod_name, "created launcher pod");
                phase = VmiPhase::Scheduling;
            }
        }
    }
    conds.push(if errors.is_empty() {
        Condition::new("Valid", true, "Valid", "spec is valid")
    } else {
        Condition::new("Valid", false, "InvalidSpec", summarize(&errors))
    });

    let v = view.as_ref();
    let ready = v.is_some_and(|v| v.ready) && phase == VmiPhase::Running;
    conds.push(Condition::new(
        "Ready",
        ready,
        if ready { "PodReady" } else { "PodNotReady" },
        if ready {
            "the launcher pod is ready"
        } else {
            "the launcher pod is not ready"
        },
    ));
    if let Some(s) = v.and_then(|v| v.scheduled.clone()) {
        conds.push(s);
    }
    if phase.is_final() {
        if let Some((code, msg)) = v.and_then(|v| v.exit.as_ref()) {
            conds.extend(exit_condition(*code, msg.as_deref()));
        }
    }
    let running = phase == VmiPhase::Running;
    let paused = running && seen.as_ref().is_some_and(|o| o.state == ApiVmState::Paused);
    if paused || (want_paused && running) {
        let (reason, message) = match (want_paused, paused) {
            (true, true) => ("Paused", "the VM is paused".to_owned()),
            (true, false) => ("PauseRequested", "a pause was requested".to_owned()),
            (false, _) => ("UnpauseRequested", "an unpause was requested".to_owned()),
        };
        let message = match &unreachable {
            Some(e) => format!("{message}; {e}"),
            None => message,
        };
        conds.push(Condition::new("Paused", paused, reason, message));
    }
    // No VMI is live-migratable until the controller drives pod-to-pod migration: a migration
    // target launcher refuses to boot (exit status 9) rather than run a second copy of the VM on
    // the same disks.
    conds.push(Condition::new(
        "LiveMigratable",
        false,
        "LiveMigrationNotImplemented",
        "this version of Vireo cannot live-migrate a VM yet",
    ));

    let interfaces: Vec<InterfaceStatus> = vmi
        .spec
        .domain
        .devices
        .interfaces
        .iter()
        .map(|i| InterfaceStatus {
            name: i.name.clone(),
            mac: i.mac_address.clone(),
            ip_address: v.and_then(|v| v.ip.clone()),
        })
        .collect();
    let node = v.and_then(|v| v.node.clone()).or(old.node_name.clone());
    let status = json!({
        "phase": phase,
        "nodeName": node,
        "launcherPod": pod.as_ref().map(|_| pod_name.clone()).or_else(|| (phase == VmiPhase::Scheduling).then(|| pod_name.clone())),
        "interfaces": interfaces,
        "conditions": merge_conditions(&old.conditions, conds, &now()),
        "memory": seen
            .as_ref()
            .filter(|_| running)
            .map(|o| MemoryStatus::from_info(&o.memory))
            .or_else(|| old.memory.clone().filter(|_| running)),
    });
    apply_status(&vmis, &vmi, MANAGER, status).await?;
    let pause_pending = running
        && match &seen {
            Some(o) => (o.state == ApiVmState::Paused) != want_paused,
            None => want_paused,
        };
    Ok(if phase == VmiPhase::Pending {
        Action::requeue(Duration::from_secs(2))
    } else if pause_pending {
        // The launcher is still starting, or was unreachable: ask again shortly.
        Action::requeue(Duration::from_millis(500))
    } else if running {
        Action::requeue(observe::REFRESH)
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}

/// Deletes every pod of the VMI, then lets the VMI go.
async fn cleanup(
    vmi: &VirtualMachineInstance,
    vmis: &Api<VirtualMachineInstance>,
    pods: &Api<Pod>,
) -> Result<Action> {
    let uid = vmi.uid().unwrap_or_default();
    let lp = ListParams::default().labels(&format!("{}={}", crate::pod::LABEL_VMI_UID, uid));
    let list = pods.list(&lp).await?;
    let mut remaining = 0;
    for p in &list.items {
        remaining += 1;
        if p.meta().deletion_timestamp.is_none() {
            match pods.delete(&p.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => remaining -= 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    if remaining > 0 {
        // Check again shortly even without a pod event (immediate deletes emit one anyway).
        let left = pods.list(&lp).await?.items.len();
        if left > 0 {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    }
    remove_finalizer(vmis, vmi, VMI_FINALIZER).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::exit_condition;

    /// A launcher that exits 3 (the guest asked for a reset; the launcher normally reboots in
    /// place) is reported as `GuestReset`, never as a generic launcher exit.
    #[test]
    fn guest_reset_exit_keeps_its_reason() {
        let c = exit_condition(3, Some("reboot")).expect("a condition");
        assert_eq!(c.reason.as_deref(), Some("GuestReset"));
        assert!(c
            .message
            .as_deref()
            .is_some_and(|m| m.contains("exit status 3")));
        assert_eq!(exit_condition(0, None), None);
        assert_eq!(
            exit_condition(8, None).and_then(|c| c.reason),
            Some("ForcedStop".into())
        );
    }
}
