//! The controller against a real Kubernetes node: kube-apiserver, kube-scheduler, a kubelet and
//! containerd on this machine (`scripts/k8s-node.sh`), running real launcher pods from the
//! launcher image built from this tree (`scripts/launcher-image.sh`, with the ring-3 test guest
//! at [`TESTGUEST`]).
//!
//! `scripts/test.sh` starts that node before the Rust suite and names its kubeconfig in
//! `VIREO_TEST_NODE_KUBECONFIG`; these tests fail (never skip) without it. They share the one
//! node, so nextest runs them one at a time (`.config/nextest.toml`, group `kubelet-node`), each
//! in its own namespace with its own in-process controller and VMRuntime (whose preflight Job
//! really runs `vireo preflight` on the node). The controller talks to the apiserver as the
//! `vireo-controller` service account of `deploy/rbac.yaml`, so every test also proves that the
//! deployable RBAC is enough; `deploy/controller.yaml` is checked by the apiserver (dry run).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use vireo_controller::crd::vm::{PrintableStatus, VirtualMachine};
use vireo_controller::crd::vmi::{VirtualMachineInstance, VmiPhase};
use vireo_controller::crd::vmruntime::VMRuntime;
use vireo_controller::crd::Condition;
use vireo_controller::pod::LauncherConfig;
use vireo_controller::requests::{request, VmAction};
use vireo_controller::test_cluster::{bin_dir, TestCluster};
use vireo_controller::ControllerConfig;

/// Where the test launcher image keeps the test guest.
const TESTGUEST: &str = "/usr/share/vireo/testguest";
/// The launcher image `scripts/test.sh` builds and imports for these tests.
const IMAGE: &str = "vireo/launcher:test";
/// How long a launcher pod may take to do what a test waits for.
const PATIENCE: Duration = Duration::from_secs(90);

/// The running test node's cluster, from `VIREO_TEST_NODE_KUBECONFIG`.
fn node_cluster() -> TestCluster {
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
fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Applies `deploy/namespace.yaml` and `deploy/rbac.yaml`, checks `deploy/controller.yaml` with
/// a server-side dry run, and returns a client authenticated as the `vireo-controller` service
/// account (a token from the TokenRequest API).
async fn controller_client(cluster: &TestCluster) -> Client {
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
struct NodeEnv {
    cluster: TestCluster,
    client: Client,
    ns: String,
    controller: tokio::task::JoinHandle<()>,
}

impl Drop for NodeEnv {
    fn drop(&mut self) {
        self.controller.abort();
    }
}

impl NodeEnv {
    async fn start(ns: &str) -> Self {
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
    async fn enable_runtime(&self) {
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

    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let mut full = vec!["-n", self.ns.as_str()];
        full.extend_from_slice(args);
        let out = self.cluster.kubectl(&full).expect("kubectl");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// `kubectl apply` of a VM booting the test guest with `cmdline`.
    fn apply_vm(&self, name: &str, strategy: &str, cmdline: &str) {
        self.apply_vm_with_kernel(name, strategy, TESTGUEST, cmdline);
    }

    fn apply_vm_with_kernel(&self, name: &str, strategy: &str, kernel: &str, cmdline: &str) {
        self.apply_vm_booting(
            name,
            strategy,
            json!({ "kernel": kernel, "cmdline": cmdline }),
        );
    }

    /// `kubectl apply` of a VM whose `firmware.kernelBoot` is `kernel_boot`.
    fn apply_vm_booting(&self, name: &str, strategy: &str, kernel_boot: serde_json::Value) {
        let manifest = json!({
            "apiVersion": "vireo.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": { "name": name },
            "spec": {
                "runStrategy": strategy,
                "template": { "spec": { "domain": {
                    "cpu": { "cores": 1 },
                    "memory": { "guest": "32Mi" },
                    "firmware": { "kernelBoot": kernel_boot },
                    "devices": {},
                } } },
            },
        });
        let path = self
            .cluster
            .run_dir
            .join(format!("{}-{name}.json", self.ns));
        std::fs::write(&path, manifest.to_string()).expect("manifest");
        let (ok, out) = self.kubectl(&["apply", "-f", path.to_str().expect("utf-8 path")]);
        assert!(ok, "kubectl apply: {out}");
    }

    fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    fn vmis(&self) -> Api<VirtualMachineInstance> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Waits for the VMI `name` (any incarnation other than `not`) to satisfy `check`.
    async fn wait_vmi(
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
    fn logs(&self, vmi: &str) -> String {
        self.kubectl(&["logs", &format!("vireo-launcher-{vmi}")]).1
    }

    /// Deletes the VM with kubectl and checks that no pod, VMI, VM or launcher process is left.
    async fn delete_vm_and_check_nothing_left(&self, name: &str) {
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
async fn wait_until<F, Fut>(what: &str, mut check: F)
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

fn condition<'a>(conds: &'a [Condition], t: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == t)
}

fn vmi_phase(v: &VirtualMachineInstance) -> VmiPhase {
    v.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(VmiPhase::Pending)
}

fn vmi_ready(v: &VirtualMachineInstance) -> bool {
    v.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Ready").map(Condition::is_true))
        .unwrap_or(false)
}

fn failure(v: &VirtualMachineInstance) -> Option<Condition> {
    v.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Failure").cloned())
}

/// PIDs of `vireo launch` processes of the VMI `vmi` (their environment has the launcher
/// container's `VIREO_VMI`): the node runs pods as processes of this host. Node tests run one at
/// a time, so a name identifies the test's own VMI.
fn launcher_processes(vmi: &str) -> Vec<u32> {
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

#[tokio::test]
async fn a_vm_runs_in_a_real_pod_ready_only_while_the_guest_runs_and_delete_leaves_nothing() {
    let e = NodeEnv::start("node-life").await;
    let start = Instant::now();
    e.apply_vm("life", "Always", "count 1000000 1000000");
    let vmi = e
        .wait_vmi("the VMI Running and Ready", "life", None, |v| {
            vmi_phase(v) == VmiPhase::Running && vmi_ready(v)
        })
        .await;
    eprintln!("apply → VMI Ready in {:?}", start.elapsed());
    let pod = e.pods().get("vireo-launcher-life").await.expect("pod");
    let c = &pod.spec.as_ref().expect("spec").containers[0];
    assert!(
        c.security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .is_none(),
        "the launcher runs unprivileged"
    );
    assert!(c.readiness_probe.is_some(), "readiness comes from the VMM");
    // The guest's serial output is the container's log.
    wait_until("the guest's output in kubectl logs", || async {
        e.logs("life").contains("tick 3")
    })
    .await;
    let logs = e.logs("life");
    assert!(logs.contains("tick 0\ntick 1\ntick 2\n"), "{logs}");
    assert_eq!(vmi_phase(&vmi), VmiPhase::Running);

    // Paused through the launcher's API, the VM is Running but not Ready (the probe asks the VMM).
    let (ok, out) = e.kubectl(&[
        "exec",
        "vireo-launcher-life",
        "--",
        "vireo",
        "remote",
        "--api-socket",
        "/var/run/vireo/api.sock",
        "pause",
    ]);
    assert!(ok, "pause through the API: {out}");
    e.wait_vmi("the VMI not Ready while paused", "life", None, |v| {
        vmi_phase(v) == VmiPhase::Running && !vmi_ready(v)
    })
    .await;
    let (ok, out) = e.kubectl(&[
        "exec",
        "vireo-launcher-life",
        "--",
        "vireo",
        "remote",
        "--api-socket",
        "/var/run/vireo/api.sock",
        "resume",
    ]);
    assert!(ok, "resume through the API: {out}");
    e.wait_vmi("the VMI Ready again", "life", None, vmi_ready)
        .await;

    e.delete_vm_and_check_nothing_left("life").await;
}

#[tokio::test]
async fn poweroff_succeeds_under_manual_and_always_restarts_with_backoff() {
    let e = NodeEnv::start("node-poweroff").await;
    e.apply_vm("manual", "Manual", "hello");
    // Manual: nothing runs until a start request (what `vireo vm start` sends).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        e.vmis().get("manual").await.is_err(),
        "Manual waits for a start"
    );
    request(e.client.clone(), &e.ns, "manual", VmAction::Start)
        .await
        .expect("start request");
    let vmi = e
        .wait_vmi(
            "the VMI Succeeded after the guest powered off",
            "manual",
            None,
            |v| vmi_phase(v) == VmiPhase::Succeeded,
        )
        .await;
    assert!(failure(&vmi).is_none(), "a poweroff is no failure: {vmi:?}");
    assert!(
        e.logs("manual").contains("hello: PASS"),
        "{}",
        e.logs("manual")
    );

    // Always: a guest that powers off at once gets a new VMI, then backs off.
    e.apply_vm("always", "Always", "exit 0");
    let first = e
        .wait_vmi("a first VMI", "always", None, |_| true)
        .await
        .uid();
    e.wait_vmi("a second VMI", "always", first.as_deref(), |_| true)
        .await;
    let vms = e.vms();
    wait_until(
        "CrashLoopBackOff with a growing start failure count",
        || async {
            vms.get("always")
                .await
                .ok()
                .and_then(|v| v.status)
                .is_some_and(|s| {
                    s.printable_status == Some(PrintableStatus::CrashLoopBackOff)
                        && s.start_failure
                            .as_ref()
                            .is_some_and(|f| f.consecutive_fail_count >= 2)
                })
        },
    )
    .await;
    e.delete_vm_and_check_nothing_left("always").await;
    e.delete_vm_and_check_nothing_left("manual").await;
}

#[tokio::test]
async fn guest_failure_triple_fault_and_a_missing_kernel_fail_with_their_reason() {
    let e = NodeEnv::start("node-fail").await;
    e.apply_vm("gf", "Once", "exit 3");
    e.apply_vm("tf", "Once", "triple-fault");
    e.apply_vm_with_kernel("nk", "Once", "/no/such/kernel", "hello");
    for (name, reason, text) in [
        ("gf", "GuestFailure", "exit status 6"),
        ("tf", "TripleFault", "exit status 4"),
        ("nk", "VMMError", "/no/such/kernel"),
    ] {
        let vmi = e
            .wait_vmi(&format!("{name} Failed"), name, None, |v| {
                vmi_phase(v) == VmiPhase::Failed
            })
            .await;
        let c = failure(&vmi).unwrap_or_else(|| panic!("{name}: no Failure condition"));
        assert_eq!(c.reason.as_deref(), Some(reason), "{name}: {c:?}");
        let msg = c.message.clone().unwrap_or_default();
        assert!(msg.contains(text), "{name}: {msg}");
    }

    // RerunOnFailure restarts a failing guest, not one that powers off.
    e.apply_vm("rerun-fail", "RerunOnFailure", "exit 3");
    e.apply_vm("rerun-ok", "RerunOnFailure", "exit 0");
    let first = e
        .wait_vmi("a first failing VMI", "rerun-fail", None, |v| {
            vmi_phase(v) == VmiPhase::Failed
        })
        .await
        .uid();
    e.wait_vmi(
        "a new VMI after the failure",
        "rerun-fail",
        first.as_deref(),
        |_| true,
    )
    .await;
    let ok = e
        .wait_vmi("the powered-off VMI Succeeded", "rerun-ok", None, |v| {
            vmi_phase(v) == VmiPhase::Succeeded
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = e.vmis().get("rerun-ok").await.expect("kept");
    assert_eq!(still.uid(), ok.uid(), "a powered-off VMI is not rerun");
    for name in ["gf", "tf", "nk", "rerun-fail", "rerun-ok"] {
        e.delete_vm_and_check_nothing_left(name).await;
    }
}

#[tokio::test]
async fn a_guest_reset_reboots_in_place_without_a_failure() {
    let e = NodeEnv::start("node-reset").await;
    e.apply_vm("rb", "Always", "reset");
    let vmi = e
        .wait_vmi("the VMI Running", "rb", None, |v| {
            vmi_phase(v) == VmiPhase::Running
        })
        .await;
    // The same pod boots the guest again and again: its log shows several boots.
    wait_until("three boots in the pod's log", || async {
        e.logs("rb").matches("reset: i8042 command 0xfe").count() >= 3
    })
    .await;
    let now = e.vmis().get("rb").await.expect("vmi");
    assert_eq!(now.uid(), vmi.uid(), "the same VMI");
    assert_eq!(vmi_phase(&now), VmiPhase::Running);
    assert!(failure(&now).is_none(), "a reset is no failure: {now:?}");
    let pod = e.pods().get("vireo-launcher-rb").await.expect("pod");
    let restarts = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.first().map(|c| c.restart_count))
        .unwrap_or(-1);
    assert_eq!(restarts, 0, "rebooted in place, not restarted");
    e.delete_vm_and_check_nothing_left("rb").await;
}

#[tokio::test]
async fn a_kernel_from_a_container_image_boots() {
    let e = NodeEnv::start("node-kernel-image").await;
    // The kernel comes from an image by an init container's `cp`: here the launcher image
    // itself, which carries the test guest and busybox.
    e.apply_vm_booting(
        "ki",
        "Once",
        json!({
            "container": { "image": IMAGE, "kernelPath": TESTGUEST },
            "cmdline": "hello",
        }),
    );
    let vmi = e
        .wait_vmi("the VMI Succeeded", "ki", None, |v| {
            vmi_phase(v) == VmiPhase::Succeeded
        })
        .await;
    assert!(failure(&vmi).is_none(), "{vmi:?}");
    assert!(e.logs("ki").contains("hello: PASS"), "{}", e.logs("ki"));
    let pod = e.pods().get("vireo-launcher-ki").await.expect("pod");
    let init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.clone())
        .unwrap_or_default();
    assert_eq!(init.len(), 1, "one init container copied the kernel");
    e.delete_vm_and_check_nothing_left("ki").await;
}
