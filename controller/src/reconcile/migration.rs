//! VMIM → target pod: drives a migration from `Pending` to `TargetReady`, the point where the
//! launchers take over (they report `Running`, `Succeeded`, `Failed`, which this reconciler
//! never overwrites).
//!
//! ```text
//! Pending ──slot free──► Scheduling ──pod bound──► Scheduled ──pod Running──► PreparingTarget
//!    │ (VMI missing / not Running / not LiveMigratable → Failed)          ──pod Ready──► TargetReady
//! ```
//!
//! The target pod is the VMI's launcher pod plus: a required pod anti-affinity against pods of
//! the same VMI (KubeVirt's rule) and a node affinity `kubernetes.io/hostname NotIn [source]`, so
//! it never lands on the source node; env `VIREO_MIGRATION_ROLE=target`. The VMIM's finalizer
//! cancels: deleting an unfinished migration deletes the target pod and marks the VMI's
//! `migrationState` completed+failed.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{
    add_finalizer, apply_status, now, on_error, remove_finalizer, Context, MANAGER,
    MIGRATION_FINALIZER, MIGRATION_MANAGER,
};
use crate::crd::migration::{MigrationPhase, VirtualMachineInstanceMigration};
use crate::crd::vmi::{MigrationState, VirtualMachineInstance, VmiPhase};
use crate::crd::vmruntime::VMRuntime;
use crate::crd::{find_condition, merge_conditions, Condition};
use crate::error::{optional, Error, Result};
use crate::launch_spec::render;
use crate::pod::{launcher_pod, target_pod_name, PodRole, LABEL_MIGRATION};

/// Builds the migration controller stream.
pub fn controller(
    ctx: Arc<Context>,
) -> futures::stream::BoxStream<'static, std::result::Result<(), String>> {
    let migs = ctx.scoped_api::<VirtualMachineInstanceMigration>();
    let pods = ctx.scoped_api::<Pod>();
    Controller::new(migs, watcher::Config::default())
        .watches(
            pods,
            watcher::Config::default().labels(LABEL_MIGRATION),
            |p: Pod| {
                let ns = p.namespace();
                p.labels().get(LABEL_MIGRATION).map(|m| {
                    let r = ObjectRef::<VirtualMachineInstanceMigration>::new(m);
                    match ns {
                        Some(ns) => r.within(&ns),
                        None => r,
                    }
                })
            },
        )
        .run(reconcile, on_error, ctx)
        .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
        .boxed()
}

async fn reconcile(m: Arc<VirtualMachineInstanceMigration>, ctx: Arc<Context>) -> Result<Action> {
    let ns = m
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = m.name_any();
    let migs: Api<VirtualMachineInstanceMigration> = ctx.api(&ns);
    let vmis: Api<VirtualMachineInstance> = ctx.api(&ns);
    let pods: Api<Pod> = ctx.api(&ns);
    let target = target_pod_name(&m.spec.vmi_name, &name);
    let old = m.status.clone().unwrap_or_default();
    let phase = old.phase.unwrap_or_default();

    if m.meta().deletion_timestamp.is_some() {
        if !phase.is_final() {
            delete_pod(&pods, &target).await?;
            if let Some(vmi) = optional(vmis.get(&m.spec.vmi_name).await)? {
                set_state(&vmis, &vmi, &m, &old.source_node, None, true).await?;
            }
            tracing::info!(migration = %name, "migration cancelled");
        }
        remove_finalizer(&migs, &m, MIGRATION_FINALIZER).await?;
        return Ok(Action::await_change());
    }
    if phase.is_final() {
        return Ok(Action::await_change());
    }
    add_finalizer(&migs, &m, MIGRATION_FINALIZER).await?;

    let fail = |reason: &str, msg: String| {
        json!({
            "phase": MigrationPhase::Failed,
            "sourceNode": old.source_node,
            "targetPod": old.target_pod,
            "conditions": merge_conditions(&old.conditions, vec![Condition::new("Failed", true, reason, msg)], &now()),
        })
    };
    let Some(vmi) = optional(vmis.get(&m.spec.vmi_name).await)? else {
        let msg = format!("spec.vmiName: VMI {:?} not found", m.spec.vmi_name);
        apply_status(&migs, &m, MANAGER, fail("VMINotFound", msg)).await?;
        return Ok(Action::await_change());
    };
    let vstatus = vmi.status.clone().unwrap_or_default();
    if phase == MigrationPhase::Pending {
        if vstatus.phase != Some(VmiPhase::Running) {
            let msg = format!("spec.vmiName: VMI {:?} is not Running", m.spec.vmi_name);
            apply_status(&migs, &m, MANAGER, fail("VMINotRunning", msg)).await?;
            return Ok(Action::await_change());
        }
        if let Some(c) =
            find_condition(&vstatus.conditions, "LiveMigratable").filter(|c| !c.is_true())
        {
            let msg = c.message.clone().unwrap_or_default();
            apply_status(&migs, &m, MANAGER, fail("NotLiveMigratable", msg)).await?;
            return Ok(Action::await_change());
        }
        if let Some(other) = vstatus
            .migration_state
            .as_ref()
            .filter(|s| !s.completed && s.migration_name != name)
        {
            let msg = format!("VMI is already migrating ({})", other.migration_name);
            apply_status(&migs, &m, MANAGER, fail("AlreadyMigrating", msg)).await?;
            return Ok(Action::await_change());
        }
    }
    let Some(source) = vstatus.node_name.clone() else {
        apply_status(
            &migs,
            &m,
            MANAGER,
            fail("NoSourceNode", "VMI has no node".into()),
        )
        .await?;
        return Ok(Action::await_change());
    };

    if phase == MigrationPhase::Pending && !slot_free(&ctx, &ns, &name, &source).await? {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }

    let mut pod = optional(pods.get(&target).await)?;
    if pod.is_none() {
        if phase != MigrationPhase::Pending {
            let msg = format!("target pod {target} disappeared");
            apply_status(&migs, &m, MANAGER, fail("TargetPodDeleted", msg)).await?;
            set_state(&vmis, &vmi, &m, &Some(source), None, true).await?;
            return Ok(Action::await_change());
        }
        let gate = ctx.runtime().await?;
        let spec = render(&vmi.spec, gate.image_format, "spec")?;
        let role = PodRole::MigrationTarget {
            migration: name.clone(),
            source_node: source.clone(),
        };
        let mut p = launcher_pod(&vmi, &spec, &ctx.config.launcher, &role, &gate.eligible)?;
        p.metadata.owner_references = vmi.controller_owner_ref(&()).map(|o| vec![o]);
        let created = pods
            .patch(
                &target,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&p),
            )
            .await?;
        tracing::info!(migration = %name, pod = %target, "created migration target pod");
        pod = Some(created);
    }
    let pod = pod.ok_or(Error::MissingField("target pod"))?;
    let pstatus = pod.status.clone().unwrap_or_default();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let ready = pstatus
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let derived = match pstatus.phase.as_deref() {
        Some("Failed") | Some("Succeeded") => MigrationPhase::Failed,
        Some("Running") if ready => MigrationPhase::TargetReady,
        Some("Running") => MigrationPhase::PreparingTarget,
        _ if node.is_some() => MigrationPhase::Scheduled,
        _ => MigrationPhase::Scheduling,
    };
    // Launchers own the phases after TargetReady; never move them backwards.
    let new_phase = if phase == MigrationPhase::Running {
        phase
    } else {
        derived
    };
    let failed = new_phase == MigrationPhase::Failed;
    let mut conds = old.conditions.clone();
    if failed {
        conds = merge_conditions(
            &old.conditions,
            vec![Condition::new(
                "Failed",
                true,
                "TargetPodFailed",
                format!("target pod {target} ended"),
            )],
            &now(),
        );
    }
    apply_status(
        &migs,
        &m,
        MANAGER,
        json!({
            "phase": new_phase,
            "sourceNode": source,
            "targetPod": target,
            "targetNode": node,
            "conditions": conds,
        }),
    )
    .await?;
    set_state(&vmis, &vmi, &m, &Some(source), node, failed).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Whether the VMRuntime's parallelism limits leave room for one more migration.
async fn slot_free(ctx: &Context, ns: &str, name: &str, source: &str) -> Result<bool> {
    let rt_api: Api<VMRuntime> = Api::all(ctx.client.clone());
    let limits = optional(rt_api.get(&ctx.config.runtime_name).await)?
        .map(|r| r.spec.migrations)
        .unwrap_or_default();
    let all = ctx
        .scoped_api::<VirtualMachineInstanceMigration>()
        .list(&ListParams::default())
        .await?;
    let active: Vec<_> = all
        .items
        .iter()
        .filter(|o| !(o.name_any() == name && o.namespace().as_deref() == Some(ns)))
        .filter_map(|o| o.status.as_ref())
        .filter(|s| {
            s.phase
                .is_some_and(|p| p != MigrationPhase::Pending && !p.is_final())
        })
        .collect();
    let outbound = active
        .iter()
        .filter(|s| s.source_node.as_deref() == Some(source))
        .count();
    Ok(
        (active.len() as u32) < limits.parallel_migrations_per_cluster
            && (outbound as u32) < limits.parallel_outbound_migrations_per_node,
    )
}

async fn delete_pod(pods: &Api<Pod>, name: &str) -> Result<()> {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes the VMI's `status.migrationState` (owned by the migration field manager).
async fn set_state(
    vmis: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    m: &VirtualMachineInstanceMigration,
    source: &Option<String>,
    target_node: Option<String>,
    failed: bool,
) -> Result<()> {
    let state = MigrationState {
        migration_name: m.name_any(),
        migration_uid: m.uid(),
        source_node: source.clone(),
        target_pod: Some(target_pod_name(&m.spec.vmi_name, &m.name_any())),
        target_node,
        completed: failed,
        failed,
    };
    if vmi.status.as_ref().and_then(|s| s.migration_state.as_ref()) == Some(&state) {
        return Ok(());
    }
    apply_status(
        vmis,
        vmi,
        MIGRATION_MANAGER,
        json!({ "migrationState": state }),
    )
    .await
}
