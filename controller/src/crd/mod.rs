//! Custom resource types of the `vireo.dev/v1alpha1` API group.
//!
//! ```text
//! VirtualMachine (vm) ──owns──► VirtualMachineInstance (vmi) ──owns──► launcher Pod
//!                                        ▲
//! VirtualMachineInstanceMigration (vmim) ┘ (spec.vmiName; owns the target Pod while it runs)
//! VMRuntime (cluster-scoped singleton): enables the API and records per-node preflight results
//! ```
//!
//! This module owns the wire shape of every CRD (serde + schemars, rendered by kube-derive) and the
//! shared [`Condition`] type. It guarantees that [`all_crds`] returns exactly the definitions the
//! controller reconciles and that [`crds_yaml`] renders them as multi-document YAML that
//! `kubectl apply -f -` accepts on Kubernetes 1.20 and newer.

pub mod migration;
pub mod vm;
pub mod vmi;
pub mod vmruntime;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use migration::{MigrationPhase, VirtualMachineInstanceMigration};
pub use vm::{PrintableStatus, RunStrategy, VirtualMachine};
pub use vmi::{VirtualMachineInstance, VmiPhase};
pub use vmruntime::VMRuntime;

/// API group of every Vireo resource.
pub const GROUP: &str = "vireo.dev";
/// API version of every Vireo resource.
pub const VERSION: &str = "v1alpha1";

/// A status condition, shaped like `metav1.Condition` but with optional reason and message so
/// partial updates stay small.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`, `Valid`, `Paused`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason in CamelCase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message; for validation failures it starts with the offending field path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

impl Condition {
    /// A condition of `type_` with status `True`/`False` from `ok`.
    pub fn new(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.to_owned(),
            status: if ok { "True" } else { "False" }.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message.into()),
            last_transition_time: None,
        }
    }

    /// Whether the condition's status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Finds the condition of `type_` in `conds`.
pub fn find_condition<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// Merges `new` into `old`, keeping `lastTransitionTime` of conditions whose status did not change
/// and stamping `now` on the others. The result is sorted by type so applies are stable.
pub fn merge_conditions(old: &[Condition], new: Vec<Condition>, now: &str) -> Vec<Condition> {
    let mut out: Vec<Condition> = new
        .into_iter()
        .map(|mut c| {
            c.last_transition_time = match find_condition(old, &c.type_) {
                Some(prev) if prev.status == c.status => prev.last_transition_time.clone(),
                _ => Some(now.to_owned()),
            };
            c
        })
        .collect();
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Every CRD the controller serves, in apply order.
///
/// Schema `default`s derived from `#[serde(default)]` are stripped: Kubernetes 1.20 rejects
/// several of them (empty-string defaults of nested objects), and the controller applies the same
/// defaults when it deserializes, so the stored objects stay exactly as the user wrote them.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        VMRuntime::crd(),
        VirtualMachine::crd(),
        VirtualMachineInstance::crd(),
        VirtualMachineInstanceMigration::crd(),
    ];
    for crd in &mut crds {
        for v in &mut crd.spec.versions {
            if let Some(schema) = v
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                strip_defaults(schema);
            }
        }
    }
    crds
}

type Props = k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;

fn strip_defaults(s: &mut Props) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    };
    s.default = None;
    for p in s.properties.iter_mut().flat_map(|m| m.values_mut()) {
        strip_defaults(p);
    }
    match s.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(p)) => strip_defaults(p),
        Some(JSONSchemaPropsOrArray::Schemas(ps)) => ps.iter_mut().for_each(strip_defaults),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(p)) = s.additional_properties.as_mut() {
        strip_defaults(p);
    }
    for list in [&mut s.all_of, &mut s.any_of, &mut s.one_of]
        .into_iter()
        .flatten()
    {
        list.iter_mut().for_each(strip_defaults);
    }
}

/// Renders [`all_crds`] as multi-document YAML.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `deploy/crds.yaml` is what `vireo-controller crd` prints (regenerate it with
    /// `cargo run -p vireo-controller -- crd > deploy/crds.yaml`).
    #[test]
    fn the_deployable_crds_file_is_current() {
        let file = include_str!("../../../deploy/crds.yaml");
        let now = crds_yaml().expect("render");
        assert!(
            file == now,
            "deploy/crds.yaml is stale: cargo run -p vireo-controller -- crd > deploy/crds.yaml"
        );
    }

    #[test]
    fn crds_render_with_group_and_short_names() {
        let yaml = crds_yaml().expect("render");
        for name in [
            "virtualmachines.vireo.dev",
            "virtualmachineinstances.vireo.dev",
            "virtualmachineinstancemigrations.vireo.dev",
            "vmruntimes.vireo.dev",
        ] {
            assert!(yaml.contains(name), "missing {name}");
        }
        let crds = all_crds();
        let short: Vec<_> = crds
            .iter()
            .flat_map(|c| c.spec.names.short_names.clone().unwrap_or_default())
            .collect();
        assert!(short.contains(&"vm".to_owned()) && short.contains(&"vmim".to_owned()));
        assert_eq!(
            crds.iter().filter(|c| c.spec.scope == "Cluster").count(),
            1,
            "only VMRuntime is cluster-scoped"
        );
    }

    #[test]
    fn merge_keeps_transition_time_when_status_unchanged() {
        let old = vec![Condition {
            last_transition_time: Some("t0".into()),
            ..Condition::new("Ready", true, "A", "a")
        }];
        let merged = merge_conditions(
            &old,
            vec![
                Condition::new("Ready", true, "B", "b"),
                Condition::new("Valid", false, "C", "c"),
            ],
            "t1",
        );
        assert_eq!(merged[0].last_transition_time.as_deref(), Some("t0"));
        assert_eq!(merged[1].last_transition_time.as_deref(), Some("t1"));
    }
}
