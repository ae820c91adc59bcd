//! Test fixture: one real control plane per test process, one namespace + VMRuntime name + an
//! in-process controller per test.
//!
//! Under `cargo nextest` every test is its own process, so every test gets its own control plane
//! (isolated, ~5 s to start). Under `cargo test` the tests of this binary share one control
//! plane through a process-wide `OnceLock`; they stay independent because each uses its own
//! namespace, its own VMRuntime name and a controller restricted to that namespace.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use vireo_controller::crd::vm::{RunStrategy, VirtualMachine};
use vireo_controller::crd::vmi::VirtualMachineInstance;
use vireo_controller::crd::vmruntime::VMRuntime;
use vireo_controller::test_cluster::TestCluster;
use vireo_controller::ControllerConfig;

static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();

/// The process-wide control plane; panics (fails the test) when it cannot start.
pub fn cluster() -> &'static TestCluster {
    match CLUSTER.get_or_init(|| TestCluster::start().map_err(|e| e.to_string())) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

/// One test's world.
pub struct Env {
    pub client: Client,
    pub ns: String,
    pub runtime: String,
    controller: tokio::task::JoinHandle<()>,
    kubelet: tokio::task::JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.controller.abort();
        self.kubelet.abort();
    }
}

/// The one kubelet duty tests need: confirm graceful pod deletion. A bound pod that is being
/// deleted only disappears once its kubelet reports the containers stopped; without a kubelet it
/// would hang forever, so this loop finishes such deletions with grace period 0, as a kubelet does.
async fn fake_kubelet(pods: Api<Pod>) {
    let force = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    loop {
        if let Ok(list) = pods.list(&Default::default()).await {
            for p in list.items {
                if p.metadata.deletion_timestamp.is_some() {
                    if let Some(name) = p.metadata.name.as_deref() {
                        let _ = pods.delete(name, &force).await;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates a namespace and starts a controller restricted to it.
pub async fn env(hint: &str) -> Env {
    let c = cluster();
    let client = c.client().await.expect("client");
    // Each test passes its own hint, and a control plane never outlives its process.
    let ns = hint.to_owned();
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("ns"),
    )
    .await
    .expect("create namespace");
    let config = ControllerConfig {
        namespace: Some(ns.clone()),
        runtime_name: ns.clone(),
        system_namespace: ns.clone(),
        ..Default::default()
    };
    let cl = client.clone();
    let controller = tokio::spawn(async move {
        if let Err(e) = vireo_controller::run(cl, config).await {
            eprintln!("controller stopped: {e}");
        }
    });
    let kubelet = tokio::spawn(fake_kubelet(Api::namespaced(client.clone(), &ns)));
    Env {
        client,
        runtime: ns.clone(),
        ns,
        controller,
        kubelet,
    }
}

impl Env {
    pub fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn vmis(&self) -> Api<VirtualMachineInstance> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn runtimes(&self) -> Api<VMRuntime> {
        Api::all(self.client.clone())
    }

    /// Creates this test's VMRuntime.
    pub async fn runtime(&self, enabled: bool, emulation: bool) {
        let rt: VMRuntime = serde_json::from_value(json!({
            "apiVersion": "vireo.dev/v1alpha1", "kind": "VMRuntime",
            "metadata": { "name": self.runtime },
            "spec": { "enabled": enabled, "useEmulation": emulation },
        }))
        .expect("runtime");
        self.runtimes()
            .patch(
                &self.runtime,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&rt),
            )
            .await
            .expect("apply runtime");
    }

    /// An enabled runtime with emulation (no preflight needed) that is ready.
    pub async fn ready_runtime(&self) {
        self.runtime(true, true).await;
        let rts = self.runtimes();
        let name = self.runtime.clone();
        wait("runtime ready", || {
            let rts = rts.clone();
            let name = name.clone();
            async move {
                rts.get(&name)
                    .await
                    .ok()
                    .and_then(|r| r.status)
                    .is_some_and(|s| s.ready)
            }
        })
        .await;
    }

    /// Creates a VM from a JSON manifest body (`spec` part).
    pub async fn create_vm(&self, name: &str, spec: serde_json::Value) -> VirtualMachine {
        let vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "vireo.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": { "name": name, "namespace": self.ns },
            "spec": spec,
        }))
        .expect("vm manifest");
        self.vms()
            .create(&PostParams::default(), &vm)
            .await
            .expect("create vm")
    }

    pub async fn vm(&self, name: &str) -> VirtualMachine {
        self.vms().get(name).await.expect("get vm")
    }

    pub async fn vmi_uid(&self, name: &str) -> Option<String> {
        self.vmis()
            .get_opt(name)
            .await
            .expect("get vmi")
            .and_then(|v| v.metadata.uid)
    }

    /// Waits until the VM's printableStatus is `want`.
    pub async fn wait_printable(&self, name: &str, want: &str) {
        let vms = self.vms();
        let name = name.to_owned();
        let want = want.to_owned();
        let what = format!("vm {name} printableStatus {want}");
        wait(&what, || {
            let vms = vms.clone();
            let name = name.clone();
            let want = want.clone();
            async move {
                vms.get(&name)
                    .await
                    .ok()
                    .and_then(|v| v.status?.printable_status)
                    .is_some_and(|p| format!("{p:?}") == want)
            }
        })
        .await;
    }

    /// Waits until a VMI named `name` exists with a uid different from `not`; returns its uid.
    pub async fn wait_vmi(&self, name: &str, not: Option<&str>) -> String {
        let what = format!("vmi {name} (uid != {not:?})");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(uid) = self.vmi_uid(name).await {
                let deleting = self
                    .vmis()
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|v| v.metadata.deletion_timestamp.is_some());
                if Some(uid.as_str()) != not && !deleting {
                    return uid;
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn wait_no_vmi(&self, name: &str) {
        let vmis = self.vmis();
        let name = name.to_owned();
        wait(&format!("vmi {name} gone"), || {
            let vmis = vmis.clone();
            let name = name.clone();
            async move { matches!(vmis.get_opt(&name).await, Ok(None)) }
        })
        .await;
    }

    /// Waits for the launcher pod of VMI `vmi` and returns it.
    pub async fn wait_pod(&self, vmi: &str) -> Pod {
        let pods = self.pods();
        let name = vireo_controller::pod::launcher_pod_name(vmi);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(Some(p)) = pods.get_opt(&name).await {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for pod {name}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Simulates the kubelet: sets a pod's phase (and Ready) through the status subresource.
    pub async fn set_pod_phase(&self, pod: &str, phase: &str, ready: bool) {
        let ready_s = if ready { "True" } else { "False" };
        let patch = json!({ "status": {
            "phase": phase,
            "conditions": [ { "type": "Ready", "status": ready_s } ],
        }});
        self.pods()
            .patch_status(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch pod status");
    }

    /// Simulates the scheduler: binds a pod to a node.
    pub async fn bind(&self, pod: &str, node: &str) {
        let body = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": { "name": pod },
            "target": { "apiVersion": "v1", "kind": "Node", "name": node },
        });
        let _: serde_json::Value = self
            .pods()
            .create_subresource("binding", pod, &PostParams::default(), &body)
            .await
            .expect("bind pod");
    }

    /// Runs the launcher pod of `vmi` to Running+Ready (bound to `node`).
    pub async fn run_vmi(&self, vmi: &str, node: &str) {
        let pod = self.wait_pod(vmi).await;
        let name = pod.metadata.name.clone().expect("pod name");
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .is_none()
        {
            self.bind(&name, node).await;
        }
        self.set_pod_phase(&name, "Running", true).await;
    }

    pub fn condition(vm: &VirtualMachine, t: &str) -> Option<vireo_controller::crd::Condition> {
        vm.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == t).cloned())
    }
}

/// Creates fake Node objects (no kubelet) so bound pods are not garbage-collected as orphans.
pub async fn nodes(client: &Client, names: &[&str]) {
    let api: Api<Node> = Api::all(client.clone());
    for n in names {
        let node: Node = serde_json::from_value(json!({
            "metadata": { "name": n, "labels": { "kubernetes.io/hostname": n } },
        }))
        .expect("node");
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("create node {n}: {e}"),
        }
    }
}

/// A valid VM spec with `strategy` (JSON `spec`).
pub fn vm_spec(strategy: Option<RunStrategy>) -> serde_json::Value {
    let mut spec = json!({
        "template": { "spec": {
            "domain": {
                "cpu": { "cores": 1 },
                "memory": { "guest": "256Mi" },
                "firmware": { "kernelBoot": { "kernel": "/boot/vmlinuz", "cmdline": "console=ttyS0" } },
                "devices": {
                    "disks": [ { "name": "root", "format": "raw" } ],
                    "interfaces": [ { "name": "default", "masquerade": {} } ],
                },
            },
            "volumes": [ { "name": "root", "containerDisk": { "image": "example/root:latest" } } ],
            "networks": [ { "name": "default", "pod": {} } ],
        }},
    });
    if let Some(s) = strategy {
        spec["runStrategy"] = json!(s);
    }
    spec
}

pub const TIMEOUT: Duration = Duration::from_secs(60);
pub const POLL: Duration = Duration::from_millis(100);

/// Polls `check` until it returns true; fails the test after [`TIMEOUT`].
pub async fn wait<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Labels helper.
pub fn labels(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}
