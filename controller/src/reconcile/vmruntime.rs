//! VMRuntime: preflight per node, readiness, and the enable/disable table.
//!
//! Enabled: one Job `vireo-preflight-<node>` per Node (pod pinned with `nodeName`, unprivileged,
//! the host's `/dev/kvm` mounted as launcher pods get it) runs `vireo preflight` from the
//! launcher image: it proves KVM by using it — opens `/dev/kvm`, creates a VM and boots the
//! built-in test guest — and writes `kvm=1 run=ok cpu=<vmx|svm|none> ms=<n>` or
//! `kvm=0 run=fail reason=<why>` as its termination message. A node passes when the Job
//! succeeded with `kvm=1 run=ok`; the CPU flag is informational (KVM backends such as PVM run
//! VMs without `vmx`/`svm`). The result lands in `status.preflight`; `status.ready` = some node
//! passed, or `useEmulation`. Launcher pods are restricted to passing nodes unless
//! `useEmulation`.
//!
//! Disabled: see the table in `crd/vmruntime.rs` — with VMs present and no
//! `vm.vireo.dev/force-disable: "true"`, disabling is refused (`DisableRefused=True`, still
//! ready); with it, every VM, VMI and migration in scope is deleted first, then the runtime is
//! disabled and preflight Jobs removed.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, Node, Pod, PodSpec, PodTemplateSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use std::collections::BTreeMap;

use super::{apply_status, now, on_error, Context, MANAGER};
use crate::crd::migration::VirtualMachineInstanceMigration;
use crate::crd::vm::VirtualMachine;
use crate::crd::vmi::VirtualMachineInstance;
use crate::crd::vmruntime::{NodePreflight, VMRuntime, FORCE_DISABLE_ANNOTATION};
use crate::crd::{merge_conditions, Condition};
use crate::error::Result;

/// Label on preflight Jobs and their pods: the node checked.
pub const LABEL_PREFLIGHT_NODE: &str = "vireo.dev/preflight-node";
/// Label on preflight Jobs: the VMRuntime they belong to.
pub const LABEL_PREFLIGHT_RUNTIME: &str = "vireo.dev/preflight-runtime";

/// The command a preflight pod runs (from the launcher image).
pub const PREFLIGHT_COMMAND: [&str; 4] = ["vireo", "preflight", "--timeout", "20"];

/// Builds the VMRuntime controller stream.
pub fn controller(
    ctx: Arc<Context>,
) -> futures::stream::BoxStream<'static, std::result::Result<(), String>> {
    let name = ctx.config.runtime_name.clone();
    let rts: Api<VMRuntime> = Api::all(ctx.client.clone());
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.config.system_namespace);
    let (n1, n2) = (name.clone(), name.clone());
    Controller::new(
        rts,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .watches(nodes, watcher::Config::default(), move |_| {
        Some(ObjectRef::<VMRuntime>::new(&n1))
    })
    .watches(
        pods,
        watcher::Config::default().labels(&format!("{LABEL_PREFLIGHT_RUNTIME}={name}")),
        move |_| Some(ObjectRef::<VMRuntime>::new(&n2)),
    )
    .run(reconcile, on_error, ctx)
    .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
    .boxed()
}

/// What a preflight report (`vireo preflight`'s termination message) says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PreflightReport {
    /// `/dev/kvm` opened and a VM created (`kvm=1`).
    pub kvm: bool,
    /// The test guest ran to its end (`run=ok`).
    pub ran: bool,
    /// The CPU's virtualization flag (`cpu=vmx|svm`; `none` or absent: `None`).
    pub cpu: Option<String>,
}

/// Parses a preflight termination message (`kvm=1 run=ok cpu=none ms=26`).
pub fn parse_report(msg: &str) -> PreflightReport {
    let mut report = PreflightReport::default();
    for part in msg.split_whitespace() {
        match part.split_once('=') {
            Some(("kvm", v)) => report.kvm = v == "1",
            Some(("run", v)) => report.ran = v == "ok",
            Some(("cpu", v)) if v != "none" && !v.is_empty() => report.cpu = Some(v.to_owned()),
            _ => {}
        }
    }
    report
}

fn job_name(rt: &str, node: &str) -> String {
    let mut s = format!("vireo-preflight-{rt}-{node}");
    s.truncate(63);
    s.trim_end_matches(['-', '.']).to_owned()
}

fn preflight_job(ctx: &Context, rt: &str, node: &str) -> Job {
    let labels = BTreeMap::from([
        (LABEL_PREFLIGHT_NODE.to_owned(), node.to_owned()),
        (LABEL_PREFLIGHT_RUNTIME.to_owned(), rt.to_owned()),
    ]);
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(rt, node)),
            namespace: Some(ctx.config.system_namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    node_name: Some(node.to_owned()),
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    containers: vec![Container {
                        name: "preflight".into(),
                        image: Some(ctx.config.preflight_image.clone()),
                        command: Some(PREFLIGHT_COMMAND.iter().map(|&a| a.into()).collect()),
                        volume_mounts: Some(vec![VolumeMount {
                            name: "kvm".into(),
                            mount_path: "/dev/kvm".into(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![Volume {
                        name: "kvm".into(),
                        host_path: Some(HostPathVolumeSource {
                            path: "/dev/kvm".into(),
                            type_: Some("CharDevice".into()),
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

async fn reconcile(rt: Arc<VMRuntime>, ctx: Arc<Context>) -> Result<Action> {
    let name = rt.name_any();
    let rts: Api<VMRuntime> = Api::all(ctx.client.clone());
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.config.system_namespace);
    let old = rt.status.clone().unwrap_or_default();
    let vms = ctx
        .scoped_api::<VirtualMachine>()
        .list(&ListParams::default())
        .await?;
    let mut conds = Vec::new();

    let force = rt
        .annotations()
        .get(FORCE_DISABLE_ANNOTATION)
        .is_some_and(|v| v == "true");
    let mut effectively_enabled = rt.spec.enabled;
    let mut requeue = None;
    if !rt.spec.enabled && !vms.items.is_empty() {
        let names: Vec<String> = vms
            .items
            .iter()
            .map(|v| format!("{}/{}", v.namespace().unwrap_or_default(), v.name_any()))
            .collect();
        // Force-deleting belongs to disabling a runtime that is still up (or still being
        // disabled). Once it is disabled, VMs created later are refused, not deleted (the VM
        // reconciler marks them VMRuntimeDisabled).
        let disabling = old.ready
            || old
                .conditions
                .iter()
                .any(|c| c.type_ == "Disabling" && c.is_true());
        if force && disabling {
            delete_all(&ctx).await?;
            conds.push(Condition::new(
                "Disabling",
                true,
                "ForceDisable",
                format!("deleting VirtualMachines {names:?} before disabling"),
            ));
            requeue = Some(Duration::from_secs(1));
        } else if old.ready {
            // Refuse: keep running as enabled.
            effectively_enabled = true;
            // VMs are not watched here; look again for them to disappear.
            requeue = Some(Duration::from_secs(3));
            conds.push(Condition::new(
                "DisableRefused",
                true,
                "VirtualMachinesExist",
                format!(
                    "spec.enabled: cannot disable while VirtualMachines exist ({}); delete them \
                     or set annotation {FORCE_DISABLE_ANNOTATION}: \"true\"",
                    names.join(", ")
                ),
            ));
        }
    }

    let mut preflight = Vec::new();
    let ready;
    if effectively_enabled {
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let nodes = nodes.list(&ListParams::default()).await?;
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.config.system_namespace);
        let ppods = pods
            .list(&ListParams::default().labels(&format!("{LABEL_PREFLIGHT_RUNTIME}={name}")))
            .await?;
        for node in &nodes.items {
            let node_name = node.name_any();
            let job = preflight_job(&ctx, &name, &node_name);
            jobs.patch(
                &job_name(&name, &node_name),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&job),
            )
            .await?;
            let pod = ppods
                .items
                .iter()
                .filter(|p| p.labels().get(LABEL_PREFLIGHT_NODE) == Some(&node_name))
                .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            preflight.push(result_of(&node_name, pod));
        }
        let passed = preflight.iter().filter(|p| p.result == "Passed").count();
        ready = rt.spec.use_emulation || passed > 0;
        let (reason, msg) = if ready && rt.spec.use_emulation && passed == 0 {
            (
                "Emulation",
                "no node passed preflight; VMs use software emulation".to_owned(),
            )
        } else if ready {
            ("Enabled", format!("{passed} node(s) passed preflight"))
        } else if preflight.iter().any(|p| p.result == "Failed") {
            let failed: Vec<_> = preflight
                .iter()
                .filter(|p| p.result == "Failed")
                .map(|p| format!("{}: {}", p.node, p.message.clone().unwrap_or_default()))
                .collect();
            (
                "PreflightFailed",
                format!(
                    "no node passed preflight ({}); set spec.useEmulation to run anyway",
                    failed.join("; ")
                ),
            )
        } else {
            (
                "PreflightPending",
                "waiting for preflight results".to_owned(),
            )
        };
        conds.push(Condition::new("Ready", ready, reason, msg));
    } else {
        ready = false;
        if !force || vms.items.is_empty() {
            let lp = ListParams::default().labels(&format!("{LABEL_PREFLIGHT_RUNTIME}={name}"));
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            jobs.delete_collection(&dp, &lp).await?;
        }
        conds.push(Condition::new(
            "Ready",
            false,
            "VMRuntimeDisabled",
            "spec.enabled is false; VM creation is refused",
        ));
    }

    apply_status(
        &rts,
        &rt,
        MANAGER,
        json!({
            "ready": ready,
            "preflight": preflight,
            "conditions": merge_conditions(&old.conditions, conds, &now()),
        }),
    )
    .await?;
    Ok(Action::requeue(requeue.unwrap_or(Duration::from_secs(60))))
}

fn result_of(node: &str, pod: Option<&Pod>) -> NodePreflight {
    let status = pod.and_then(|p| p.status.clone()).unwrap_or_default();
    let msg = status
        .container_statuses
        .unwrap_or_default()
        .iter()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
        .map(|m| m.trim().to_owned());
    let report = msg.as_deref().map(parse_report).unwrap_or_default();
    let result = match status.phase.as_deref() {
        Some("Succeeded") if report.kvm && report.ran => "Passed",
        Some("Succeeded") | Some("Failed") => "Failed",
        _ => "Pending",
    };
    NodePreflight {
        node: node.to_owned(),
        result: result.to_owned(),
        kvm: report.kvm,
        cpu: report.cpu,
        message: msg,
    }
}

/// Deletes every VM, VMI and migration in scope (force-disable).
async fn delete_all(ctx: &Context) -> Result<()> {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    let lp = ListParams::default();
    let migs = ctx
        .scoped_api::<VirtualMachineInstanceMigration>()
        .list(&lp)
        .await?;
    for m in migs {
        if let Some(ns) = m.namespace() {
            ignore_404(
                ctx.api::<VirtualMachineInstanceMigration>(&ns)
                    .delete(&m.name_any(), &dp)
                    .await,
            )?;
        }
    }
    let vms = ctx.scoped_api::<VirtualMachine>().list(&lp).await?;
    for vm in vms {
        if let Some(ns) = vm.namespace() {
            ignore_404(
                ctx.api::<VirtualMachine>(&ns)
                    .delete(&vm.name_any(), &dp)
                    .await,
            )?;
            tracing::warn!(vm = %vm.name_any(), "force-disable: deleted VM");
        }
    }
    let vmis = ctx.scoped_api::<VirtualMachineInstance>().list(&lp).await?;
    for vmi in vmis {
        if let Some(ns) = vmi.namespace() {
            ignore_404(
                ctx.api::<VirtualMachineInstance>(&ns)
                    .delete(&vmi.name_any(), &dp)
                    .await,
            )?;
        }
    }
    Ok(())
}

fn ignore_404<T>(r: std::result::Result<T, kube::Error>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_report, PreflightReport};

    #[test]
    fn reports() {
        let ok = parse_report("kvm=1 run=ok cpu=none ms=26\n");
        assert_eq!((ok.kvm, ok.ran, ok.cpu), (true, true, None));
        let vmx = parse_report("kvm=1 run=ok cpu=vmx ms=9");
        assert_eq!(vmx.cpu.as_deref(), Some("vmx"));
        let fail = parse_report("kvm=0 run=fail reason=cannot open /dev/kvm: EPERM");
        assert_eq!((fail.kvm, fail.ran), (false, false));
        assert_eq!(parse_report("garbage"), PreflightReport::default());
    }
}
