//! Reconcilers: one kube-runtime `Controller` per kind, run together by [`run`].
//!
//! ```text
//! VirtualMachine ──(vm.rs)──► VMI ──(vmi.rs)──► launcher Pod
//! VMIM ──(migration.rs)──► target Pod + VMI.status.migrationState
//! VMRuntime ──(vmruntime.rs)──► preflight Jobs, status.ready, force-disable cleanup
//! ```
//!
//! Writes use server-side apply with one field manager per writer, so the VMI reconciler and the
//! migration reconciler can both write parts of a VMI's status without clobbering each other.
//! Every reconciler is level-triggered and idempotent: it recomputes the desired state from what
//! it reads and may be re-run at any time.

pub mod migration;
pub mod observe;
pub mod vm;
pub mod vmi;
pub mod vmruntime;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::crd::vmruntime::{ImageFormat, VMRuntime, DEFAULT_NAME};
use crate::error::{optional, Error, Result};
use crate::pod::{EligibleNodes, LauncherConfig};

/// Field manager of the main reconcilers.
pub const MANAGER: &str = "vireo-controller";
/// Field manager of the migration reconciler (owns `VMI.status.migrationState`).
pub const MIGRATION_MANAGER: &str = "vireo-controller-migration";
/// Finalizer on VMIs: the launcher pod is gone before the VMI is.
pub const VMI_FINALIZER: &str = "vireo.dev/launcher-cleanup";
/// Finalizer on migrations: cancelling removes the target pod.
pub const MIGRATION_FINALIZER: &str = "vireo.dev/migration-cleanup";

/// What the controller watches and how it builds pods.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Restrict VMs, VMIs, migrations and pods to one namespace (`None` = all).
    pub namespace: Option<String>,
    /// Name of the VMRuntime singleton to obey.
    pub runtime_name: String,
    /// Namespace of preflight Jobs.
    pub system_namespace: String,
    /// Image of preflight Jobs: one with the `vireo` binary (the launcher image).
    pub preflight_image: String,
    /// Launcher pod settings.
    pub launcher: LauncherConfig,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            runtime_name: DEFAULT_NAME.to_owned(),
            system_namespace: "vireo-system".to_owned(),
            preflight_image: LauncherConfig::default().image,
            launcher: LauncherConfig::default(),
        }
    }
}

/// Shared state of all reconcilers.
pub struct Context {
    /// Apiserver client.
    pub client: Client,
    /// Configuration.
    pub config: ControllerConfig,
    /// What each running launcher last reported (in memory only; see [`observe`]).
    pub observations: observe::Observations,
}

impl Context {
    /// An API handle for a namespaced kind in `ns`.
    pub fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// An API handle for a namespaced kind over the configured scope (one namespace or all).
    pub fn scoped_api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match &self.config.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// What the VM runtime currently allows.
    pub async fn runtime(&self) -> Result<RuntimeGate> {
        let api: Api<VMRuntime> = Api::all(self.client.clone());
        let rt = optional(api.get(&self.config.runtime_name).await)?;
        Ok(RuntimeGate::from_runtime(
            &self.config.runtime_name,
            rt.as_ref(),
        ))
    }
}

/// The VM runtime's verdict for new VMIs.
#[derive(Clone, Debug)]
pub struct RuntimeGate {
    /// `Ok` when VMIs may be created; otherwise a (reason, message) for a condition.
    pub allowed: std::result::Result<(), (String, String)>,
    /// Where launcher pods may run.
    pub eligible: EligibleNodes,
    /// Default disk image format.
    pub image_format: ImageFormat,
}

impl RuntimeGate {
    fn from_runtime(name: &str, rt: Option<&VMRuntime>) -> Self {
        let Some(rt) = rt else {
            return Self::deny(
                "VMRuntimeMissing",
                format!("VMRuntime {name:?} does not exist; create it with spec.enabled: true"),
            );
        };
        let status = rt.status.clone().unwrap_or_default();
        let image_format = rt.spec.vm_image_format.unwrap_or_default();
        if !status.ready {
            let (reason, msg) = if !rt.spec.enabled && !status.ready {
                (
                    "VMRuntimeDisabled",
                    format!("VMRuntime {name:?} is disabled (spec.enabled: false); VM creation is refused"),
                )
            } else {
                let why = crate::crd::find_condition(&status.conditions, "Ready")
                    .and_then(|c| c.message.clone())
                    .unwrap_or_else(|| "preflight has not passed on any node yet".into());
                (
                    "VMRuntimeNotReady",
                    format!("VMRuntime {name:?} is not ready: {why}"),
                )
            };
            return Self {
                image_format,
                ..Self::deny(reason, msg)
            };
        }
        let eligible = if rt.spec.use_emulation {
            None
        } else {
            Some(
                status
                    .preflight
                    .iter()
                    .filter(|p| p.result == "Passed")
                    .map(|p| p.node.clone())
                    .collect(),
            )
        };
        Self {
            allowed: Ok(()),
            eligible,
            image_format,
        }
    }

    fn deny(reason: &str, msg: String) -> Self {
        Self {
            allowed: Err((reason.to_owned(), msg)),
            eligible: Some(Vec::new()),
            image_format: ImageFormat::Raw,
        }
    }
}

/// The current time as RFC 3339.
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Seconds from now until the RFC 3339 time `t` (negative if past; 0 if unparsable).
pub fn seconds_until(t: &str) -> i64 {
    t.parse::<k8s_openapi::jiff::Timestamp>()
        .map(|t| t.as_second() - k8s_openapi::jiff::Timestamp::now().as_second())
        .unwrap_or(0)
}

/// RFC 3339 time `secs` seconds from now.
pub fn in_seconds(secs: i64) -> String {
    let t = k8s_openapi::jiff::Timestamp::now().as_second() + secs;
    k8s_openapi::jiff::Timestamp::from_second(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Whether every field of `new` already has that value in `old` (a missing field equals null).
fn status_unchanged(old: &serde_json::Value, new: &serde_json::Value) -> bool {
    let Some(fields) = new.as_object() else {
        return false;
    };
    fields.iter().all(|(k, v)| {
        let have = old.get(k).unwrap_or(&serde_json::Value::Null);
        let empty = |x: &serde_json::Value| x.is_null() || x.as_array().is_some_and(Vec::is_empty);
        have == v || (empty(have) && empty(v))
    })
}

/// Server-side applies `status` to the status subresource of `obj` as `manager`, unless the
/// object already carries exactly these values (each write would trigger another reconcile of
/// every watcher, so skipping no-op writes keeps bursts cheap).
pub async fn apply_status<K>(
    api: &Api<K>,
    obj: &K,
    manager: &str,
    status: serde_json::Value,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let current = serde_json::to_value(obj)?;
    if status_unchanged(
        current.get("status").unwrap_or(&serde_json::Value::Null),
        &status,
    ) {
        return Ok(());
    }
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name },
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Adds `finalizer` to `obj` unless present (JSON patch guarded by a test of the list).
pub async fn add_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    if obj.finalizers().iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let mut list = obj.finalizers().to_vec();
    list.push(finalizer.to_owned());
    let patch = json!({
        "metadata": { "finalizers": list, "resourceVersion": obj.resource_version() }
    });
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Removes `finalizer` from `obj` if present.
pub async fn remove_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    if !obj.finalizers().iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let list: Vec<_> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    let patch = json!({
        "metadata": { "finalizers": list, "resourceVersion": obj.resource_version() }
    });
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Error policy shared by all controllers: log and retry soon.
pub fn on_error<K: ResourceExt>(obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    // 409 conflicts are routine (a newer object version exists): retry fast.
    let conflict = matches!(err, Error::Kube(kube::Error::Api(s)) if s.code == 409);
    if !conflict {
        tracing::warn!(object = %obj.name_any(), error = %err, "reconcile failed");
    }
    Action::requeue(Duration::from_millis(if conflict { 100 } else { 2000 }))
}

/// Runs all four controllers until one of them stops; returns why.
pub async fn run(client: Client, config: ControllerConfig) -> Result<()> {
    let ctx = Arc::new(Context {
        client,
        config,
        observations: Default::default(),
    });
    let drain =
        |name: &'static str,
         s: futures::stream::BoxStream<'static, std::result::Result<(), String>>| async move {
            let mut s = s;
            while let Some(r) = s.next().await {
                if let Err(e) = r {
                    tracing::debug!(controller = name, error = %e, "reconcile error");
                }
            }
            Err::<(), _>(Error::Controller(name, "stream ended".into()))
        };
    let r = tokio::try_join!(
        drain("vm", vm::controller(ctx.clone())),
        drain("vmi", vmi::controller(ctx.clone())),
        drain("migration", migration::controller(ctx.clone())),
        drain("vmruntime", vmruntime::controller(ctx.clone())),
    );
    r.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::status_unchanged;
    use serde_json::json;

    #[test]
    fn unchanged_ignores_fields_owned_by_others_and_empty_lists() {
        let old = json!({ "phase": "Running", "migrationState": { "x": 1 }, "conditions": [] });
        assert!(status_unchanged(
            &old,
            &json!({ "phase": "Running", "interfaces": [] })
        ));
        assert!(!status_unchanged(&old, &json!({ "phase": "Failed" })));
        assert!(!status_unchanged(
            &json!(null),
            &json!({ "phase": "Running" })
        ));
    }
}
