//! What the node tests share: the real test node's cluster, and [`NodeEnv`], one test's
//! namespace with an in-process controller (as the `vireo-controller` service account of
//! `deploy/rbac.yaml`) and a VMRuntime whose preflight passed on the node. See `node.rs`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use vireo_controller::crd::vm::VirtualMachine;
use vireo_controller::crd::vmi::{VirtualMachineInstance, VmiPhase};
use vireo_controller::crd::vmruntime::VMRuntime;
use vireo_controller::crd::Condition;
use vireo_controller::pod::LauncherConfig;
use vireo_controller::test_cluster::{bin_dir, TestCluster};
use vireo_controller::ControllerConfig;

/// Where the test launcher image keeps the test guest.
pub const TESTGUEST: &str = "/usr/share/vireo/testguest";
/// The launcher image `scripts/test.sh` builds and imports for these tests.
pub const IMAGE: &str = "vireo/launcher:test";
/// How long a launcher pod may take to do what a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// The running test node's cluster, from `VIREO_TEST_NODE_KUBECONFIG`.
pub fn node_cluster() -> TestCluster {
    let kubeconfig = std::env::var_os("VIREO_TEST_NODE_KUBECONFIG").map(PathBuf::from);
    let Some(kubeconfig) = kubeconfig.filter(|k| k.is_file()) else {
        panic!(
            "VIREO_TEST_NODE_KUBECONFIG does not name a kubeconfig: these tests need the real test \
             node that scripts/test.sh starts (scripts/k8s-control-plane.sh start, then \
             scripts/k8s-node.sh start with the launcher image {IMAGE})"
        );
    };
    let run_dir = kubeconfig
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    TestCluster {
        kubeconfig,
        bin_dir: bin_dir(),
        run_dir,
    }
}

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Applies `deploy/namespace.yaml` and `deploy/rbac.yaml`, checks `deploy/controller.yaml` with
/// a server-side dry run, and returns a client authenticated as the `vireo-controller` service
/// account (a token from the TokenRequest API).
pub async fn controller_client(cluster: &TestCluster) -> Client {
    for file in ["namespace.yaml", "rbac.yaml"] {
        let path = deploy_dir().join(file);
        let out = cluster
            .kubectl(&["apply", "-f", path.to_str().expect("utf-8 path")])
            .expect("kubectl");
        assert!(out.status.success(), "apply {file}: {out:?}");
    }
    let path = deploy_dir().join("controller.yaml");
    let out = cluster
        .kubectl(&[
            "apply",
            "--dry-run=server",
            "-f",
            path.to_str().expect("utf-8 path"),
        ])
        .expect("kubectl");
    assert!(out.status.success(), "dry-run controller.yaml: {out:?}");

    // A bound token from the TokenRequest API (what a pod's projected token is).
    let admin = cluster.client().await.expect("client");
    let sas: Api<ServiceAccount> = Api::namespaced(admin, "vireo-system");
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": { "audiences": [], "expirationSeconds": 3600 }
    }))
    .expect("token request");
    let token = sas
        .create_token_request("vireo-controller", &PostParams::default(), &request)
        .await
        .expect("a token for the vireo-controller service account")
        .status
        .expect("token status")
        .token;
    let kc = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).expect("kubeconfig");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    cfg.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    Client::try_from(cfg).expect("service account client")
}

/// One test's world on the node: a namespace, an in-process controller restricted to it, and a
/// VMRuntime whose preflight passed on the real node.
pub struct NodeEnv {
    pub cluster: TestCluster,
    pub client: Client,
    pub ns: String,
    controller: tokio::task::JoinHandle<()>,
}

impl Drop for NodeEnv {
    fn drop(&mut self) {
        self.controller.abort();
        // A test that failed midway leaves its launcher pods running (and its test guests
        // spinning vCPUs that the rest of the suite needs): with the controller gone nothing
        // recreates them, so remove them now. After a passing test there are none.
        let _ = self.cluster.kubectl(&[
            "-n",
            &self.ns,
            "delete",
            "pods",
            "--all",
            "--grace-period=0",
            "--force",
            "--wait=false",
        ]);
    }
}

impl NodeEnv {
    pub async fn start(ns: &str) -> Self {
        let cluster = node_cluster();
        let client = cluster.client().await.expect("client");
        let nss: Api<Namespace> = Api::all(client.clone());
        // What an earlier run of this test left on a still-running node goes first.
        let rts: Api<VMRuntime> = Api::all(client.clone());
        if rts.get(ns).await.is_ok() {
            let _ = rts.delete(ns, &DeleteParams::default()).await;
            wait_until("the old VMRuntime to go", || async {
                rts.get(ns).await.is_err()
            })
            .await;
        }
        if nss.get(ns).await.is_ok() {
            // A failed run leaves VMIs whose finalizer only its (gone) controller removes.
            let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
            for v in vmis
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
            {
                let patch = json!({ "metadata": { "finalizers": null } });
                let _ = vmis
                    .patch(
                        &v.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await;
            }
            let _ = nss.delete(ns, &DeleteParams::default()).await;
            wait_until("the old namespace to go", || async {
                nss.get(ns).await.is_err()
            })
            .await;
        }
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("ns"),
        )
        .await
        .expect("create namespace");
        let config = ControllerConfig {
            namespace: Some(ns.to_owned()),
            runtime_name: ns.to_owned(),
            system_namespace: ns.to_owned(),
            preflight_image: IMAGE.to_owned(),
            launcher: LauncherConfig {
                image: IMAGE.to_owned(),
                ..Default::default()
            },
        };
        let cl = controller_client(&cluster).await;
        let controller = tokio::spawn(async move {
            if let Err(e) = vireo_controller::run(cl, config).await {
                eprintln!("controller stopped: {e}");
            }
        });
        let env = Self {
            cluster,
            client,
            ns: ns.to_owned(),
            controller,
        };
        env.enable_runtime().await;
        env
    }

    /// Enables this test's VMRuntime and waits for the real preflight Job to pass on the node.
    pub async fn enable_runtime(&self) {
        let rts: Api<VMRuntime> = Api::all(self.client.clone());
        let rt: VMRuntime = serde_json::from_value(json!({
            "apiVersion": "vireo.dev/v1alpha1", "kind": "VMRuntime",
            "metadata": { "name": self.ns },
            "spec": { "enabled": true, "useEmulation": false },
        }))
        .expect("runtime");
        rts.patch(
            &self.ns,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&rt),
        )
        .await
        .expect("apply runtime");
        wait_until("preflight to pass on the node", || async {
            rts.get(&self.ns)
                .await
                .ok()
                .and_then(|r| r.status)
                .is_some_and(|s| s.ready && s.preflight.iter().any(|p| p.result == "Passed"))
        })
        .await;
        let status = rts.get(&self.ns).await.expect("rt").status.expect("status");
        let p = &status.preflight[0];
        assert!(p.kvm, "{p:?}");
        let msg = p.message.as_deref().unwrap_or_default();
        assert!(msg.starts_with("kvm=1 run=ok"), "{msg}");
        // The preflight pod ran unprivileged.
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.ns);
        let job = jobs.list(&ListParams::default()).await.expect("jobs");
        let spec = job
            .items
            .first()
            .expect("the preflight Job")
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("pod template");
        assert!(spec.containers[0]
            .security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .is_none());
    }

    pub fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let mut full = vec!["-n", self.ns.as_str()];
        full.extend_from_slice(args);
        let out = self.cluster.kubectl(&full).expect("kubectl");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// `kubectl apply` of a VM booting the test guest with `cmdline`.
    pub fn apply_vm(&self, name: &str, strategy: &str, cmdline: &str) {
        self.apply_vm_with_kernel(name, strategy, TESTGUEST, cmdline);
    }

    pub fn apply_vm_with_kernel(&self, name: &str, strategy: &str, kernel: &str, cmdline: &str) {
        self.apply_vm_booting(
            name,
            strategy,
            json!({ "kernel": kernel, "cmdline": cmdline }),
        );
    }

    /// `kubectl apply` of a VM whose `firmware.kernelBoot` is `kernel_boot`.
    pub fn apply_vm_booting(&self, name: &str, strategy: &str, kernel_boot: serde_json::Value) {
        self.apply_vm_spec(
            name,
            strategy,
            json!({ "domain": {
                "cpu": { "cores": 1 },
                "memory": { "guest": "32Mi" },
                "firmware": { "kernelBoot": kernel_boot },
                "devices": {},
            } }),
        );
    }

    /// `kubectl apply` of a VM whose `spec.template.spec` is `template`.
    pub fn apply_vm_spec(&self, name: &str, strategy: &str, template: serde_json::Value) {
        let manifest = json!({
            "apiVersion": "vireo.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": { "name": name },
            "spec": { "runStrategy": strategy, "template": { "spec": template } },
        });
        let path = self
            .cluster
            .run_dir
            .join(format!("{}-{name}.json", self.ns));
        std::fs::write(&path, manifest.to_string()).expect("manifest");
        let (ok, out) = self.kubectl(&["apply", "-f", path.to_str().expect("utf-8 path")]);
        assert!(ok, "kubectl apply: {out}");
    }

    /// A kubeconfig for service account `vm-user` of this namespace, bound (RoleBinding) to
    /// nothing but `deploy/rbac.yaml`'s ClusterRole `vireo-vm-user`: what a user of `vireo vm`
    /// is given.
    pub async fn user_kubeconfig(&self) -> PathBuf {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.ns);
        let sa: ServiceAccount =
            serde_json::from_value(json!({ "metadata": { "name": "vm-user" } })).expect("sa");
        sas.patch(
            "vm-user",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&sa),
        )
        .await
        .expect("service account vm-user");
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": "vm-user", "namespace": self.ns },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "vireo-vm-user" },
            "subjects": [{ "kind": "ServiceAccount", "name": "vm-user", "namespace": self.ns }],
        });
        let path = self.cluster.run_dir.join(format!("{}-rb.json", self.ns));
        std::fs::write(&path, binding.to_string()).expect("binding");
        let (ok, out) = self.kubectl(&["apply", "-f", path.to_str().expect("utf-8 path")]);
        assert!(ok, "RoleBinding: {out}");
        let request: TokenRequest = serde_json::from_value(json!({
            "spec": { "audiences": [], "expirationSeconds": 3600 }
        }))
        .expect("token request");
        let token = sas
            .create_token_request("vm-user", &PostParams::default(), &request)
            .await
            .expect("a token for vm-user")
            .status
            .expect("token status")
            .token;
        let admin = kube::config::Kubeconfig::read_from(&self.cluster.kubeconfig).expect("kc");
        let cluster = admin
            .clusters
            .first()
            .and_then(|c| c.cluster.clone())
            .expect("a cluster in the kubeconfig");
        let mut c = json!({ "server": cluster.server });
        if let Some(ca) = &cluster.certificate_authority {
            c["certificate-authority"] = json!(ca);
        }
        if let Some(ca) = &cluster.certificate_authority_data {
            c["certificate-authority-data"] = json!(ca);
        }
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{ "name": "node", "cluster": c }],
            "users": [{ "name": "vm-user", "user": { "token": token } }],
            "contexts": [{ "name": "vm-user", "context": {
                "cluster": "node", "user": "vm-user", "namespace": self.ns } }],
            "current-context": "vm-user",
        });
        let path = self
            .cluster
            .run_dir
            .join(format!("{}-user.kubeconfig", self.ns));
        std::fs::write(&path, kubeconfig.to_string()).expect("kubeconfig");
        path
    }

    pub fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn vmis(&self) -> Api<VirtualMachineInstance> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Waits for the VMI `name` (any incarnation other than `not`) to satisfy `check`.
    pub async fn wait_vmi(
        &self,
        what: &str,
        name: &str,
        not: Option<&str>,
        check: impl Fn(&VirtualMachineInstance) -> bool,
    ) -> VirtualMachineInstance {
        let vmis = self.vmis();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(v) = vmis
                .get(name)
                .await
                .ok()
                .filter(|v| v.uid().as_deref() != not && check(v))
            {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `kubectl logs` of the VMI's launcher pod.
    pub fn logs(&self, vmi: &str) -> String {
        self.kubectl(&["logs", &format!("vireo-launcher-{vmi}")]).1
    }

    /// Deletes the VM with kubectl and checks that no pod, VMI, VM or launcher process is left.
    pub async fn delete_vm_and_check_nothing_left(&self, name: &str) {
        let (ok, out) = self.kubectl(&["delete", "vm", name, "--wait=true"]);
        assert!(ok, "kubectl delete vm: {out}");
        let (vms, vmis, pods) = (self.vms(), self.vmis(), self.pods());
        wait_until("the VM, its VMI and its pod to go", || async {
            vms.get(name).await.is_err()
                && vmis.get(name).await.is_err()
                && pods
                    .list(&ListParams::default().labels(&format!("vireo.dev/vmi={name}")))
                    .await
                    .is_ok_and(|l| l.items.is_empty())
        })
        .await;
        wait_until("no launcher process left", || async {
            launcher_processes(name).is_empty()
        })
        .await;
    }
}

/// Polls `check` every 200 ms; fails the test naming `what` after [`PATIENCE`].
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn condition<'a>(conds: &'a [Condition], t: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == t)
}

pub fn vmi_phase(v: &VirtualMachineInstance) -> VmiPhase {
    v.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(VmiPhase::Pending)
}

pub fn vmi_ready(v: &VirtualMachineInstance) -> bool {
    v.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Ready").map(Condition::is_true))
        .unwrap_or(false)
}

pub fn failure(v: &VirtualMachineInstance) -> Option<Condition> {
    v.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Failure").cloned())
}

/// PIDs of `vireo launch` processes of the VMI `vmi` (their environment has the launcher
/// container's `VIREO_VMI`): the node runs pods as processes of this host. Node tests run one at
/// a time, so a name identifies the test's own VMI.
pub fn launcher_processes(vmi: &str) -> Vec<u32> {
    let tag = format!("VIREO_VMI={vmi}");
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !cmdline.starts_with(b"vireo\0launch\0") {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ.split(|&b| b == 0).any(|kv| kv == tag.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// The real `vireo-controller` binary (what `vireo vm …` execs) with `KUBECONFIG=kubeconfig`.
pub fn vm_cli(kubeconfig: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vireo-controller"));
    cmd.arg("vm").env("KUBECONFIG", kubeconfig);
    cmd
}

/// Runs `vireo vm ARGS` as [`vm_cli`] and asserts it succeeded.
pub fn vm_request(kubeconfig: &std::path::Path, args: &[&str]) {
    let out = vm_cli(kubeconfig)
        .args(args)
        .output()
        .expect("run vireo-controller vm");
    assert!(
        out.status.success(),
        "vireo vm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the VMI has condition `Paused=True`.
pub fn vmi_paused(v: &VirtualMachineInstance) -> bool {
    v.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Paused").map(Condition::is_true))
        .unwrap_or(false)
}

/// Whether the VMI has no `Paused` condition at all (running, nothing requested).
pub fn vmi_unpaused(v: &VirtualMachineInstance) -> bool {
    v.status
        .as_ref()
        .is_some_and(|s| condition(&s.conditions, "Paused").is_none())
}

/// The number of the last `tick N` line in `logs` (the test guest's `count` scenario).
pub fn last_tick(logs: &str) -> Option<u64> {
    logs.lines()
        .rev()
        .find_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
}
