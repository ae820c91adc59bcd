//! Integration tests against a real kube-apiserver + etcd + kube-controller-manager (built by
//! `scripts/k8s-control-plane.sh build`). No kubelet or scheduler runs: tests play those parts
//! through the API (pod binding and pod status), exactly where a real cluster's would act.

mod common;

use std::time::Duration;

use common::{env, nodes, vm_spec, Env};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vireo_controller::crd::migration::{MigrationPhase, VirtualMachineInstanceMigration};
use vireo_controller::crd::vm::RunStrategy;
use vireo_controller::crd::vmi::VmiPhase;
use vireo_controller::pod::launcher_pod_name;
use vireo_controller::requests::{request, Outcome, VmAction};

async fn strategy_of(e: &Env, name: &str) -> RunStrategy {
    RunStrategy::of(&e.vm(name).await.spec)
}

/// Waits `secs` and asserts the VMI kept its uid (no automatic recreation).
async fn assert_vmi_stays(e: &Env, name: &str, uid: &str, secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
    assert_eq!(
        e.vmi_uid(name).await.as_deref(),
        Some(uid),
        "VMI must not be recreated"
    );
}

async fn vmi_phase(e: &Env, name: &str) -> Option<VmiPhase> {
    e.vmis().get_opt(name).await.ok().flatten()?.status?.phase
}

async fn wait_vmi_phase(e: &Env, name: &str, want: VmiPhase) {
    common::wait(&format!("vmi {name} phase {want:?}"), || async move {
        vmi_phase(e, name).await == Some(want)
    })
    .await;
}

#[tokio::test]
async fn always_stop_restart_start_and_kubectl_columns() {
    let e = env("always").await;
    e.ready_runtime().await;
    e.create_vm("web", vm_spec(Some(RunStrategy::Always))).await;
    let uid1 = e.wait_vmi("web", None).await;
    let pod = e.wait_pod("web").await;
    let labels = common::labels(&pod);
    assert_eq!(labels.get("vireo.dev/vmi-uid"), Some(&uid1));
    e.wait_printable("web", "Starting").await;

    e.run_vmi("web", "node-a").await;
    e.wait_printable("web", "Running").await;
    common::wait("vm ready", || async {
        e.vm("web")
            .await
            .status
            .is_some_and(|s| s.ready && s.created)
    })
    .await;

    // kubectl get vm shows KubeVirt's columns with our values.
    let out = common::cluster()
        .kubectl(&["get", "vm", "-n", &e.ns])
        .expect("kubectl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header: Vec<_> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "AGE", "STATUS", "READY"], "{text}");
    let row: Vec<_> = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        (row[0], row[2], row[3]),
        ("web", "Running", "true"),
        "{text}"
    );
    // Short names resolve too.
    let out = common::cluster()
        .kubectl(&["get", "vmi", "-n", &e.ns, "-o", "name"])
        .expect("kubectl");
    assert!(String::from_utf8_lossy(&out.stdout).contains("virtualmachineinstance.vireo.dev/web"));

    // restart → new VMI, still Always.
    assert!(matches!(
        request(e.client.clone(), &e.ns, "web", VmAction::Restart).await,
        Ok(Outcome::Queued(_))
    ));
    let uid2 = e.wait_vmi("web", Some(&uid1)).await;
    assert_ne!(uid1, uid2);
    assert_eq!(strategy_of(&e, "web").await, RunStrategy::Always);
    common::wait("requests consumed", || async {
        e.vm("web")
            .await
            .status
            .is_some_and(|s| s.state_change_requests.is_empty())
    })
    .await;

    // start on Always is refused.
    assert!(request(e.client.clone(), &e.ns, "web", VmAction::Start)
        .await
        .is_err());

    // stop → Halted, VMI and pod gone.
    let r = request(e.client.clone(), &e.ns, "web", VmAction::Stop).await;
    assert_eq!(r.ok(), Some(Outcome::StrategyChanged(RunStrategy::Halted)));
    e.wait_no_vmi("web").await;
    e.wait_printable("web", "Stopped").await;
    let pods = e.pods();
    common::wait("pod gone", || async {
        pods.get_opt(&launcher_pod_name("web"))
            .await
            .ok()
            .flatten()
            .is_none()
    })
    .await;

    // start → Always, a VMI again.
    let r = request(e.client.clone(), &e.ns, "web", VmAction::Start).await;
    assert_eq!(r.ok(), Some(Outcome::StrategyChanged(RunStrategy::Always)));
    e.wait_vmi("web", Some(&uid2)).await;
    e.wait_printable("web", "Starting").await;
}

#[tokio::test]
async fn pod_failure_under_always_recreates_with_backoff() {
    let e = env("fail-always").await;
    e.ready_runtime().await;
    e.create_vm("a", vm_spec(Some(RunStrategy::Always))).await;
    let uid1 = e.wait_vmi("a", None).await;
    e.run_vmi("a", "node-a").await;
    e.wait_printable("a", "Running").await;
    e.set_pod_phase(&launcher_pod_name("a"), "Failed", false)
        .await;
    // First failure: recreated at once.
    let uid2 = e.wait_vmi("a", Some(&uid1)).await;
    // Second failure in a row (never reached Running): back-off, CrashLoopBackOff, then retry.
    let pod = e.wait_pod("a").await;
    assert_eq!(common::labels(&pod).get("vireo.dev/vmi-uid"), Some(&uid2));
    e.set_pod_phase(&launcher_pod_name("a"), "Failed", false)
        .await;
    e.wait_printable("a", "CrashLoopBackOff").await;
    let count = e
        .vm("a")
        .await
        .status
        .and_then(|s| s.start_failure)
        .map(|f| f.consecutive_fail_count);
    assert_eq!(count, Some(2));
    let uid3 = e.wait_vmi("a", Some(&uid2)).await;
    assert_ne!(uid3, uid1);
}

/// Waits for the launcher pod of the VMI with `uid` (the previous one may still be going).
async fn wait_pod_of(e: &Env, vmi: &str, uid: &str) {
    let pods = e.pods();
    common::wait(&format!("pod of vmi {uid}"), || async {
        pods.get_opt(&launcher_pod_name(vmi))
            .await
            .ok()
            .flatten()
            .is_some_and(|p| {
                common::labels(&p)
                    .get("vireo.dev/vmi-uid")
                    .map(String::as_str)
                    == Some(uid)
            })
    })
    .await;
}

/// A guest that powers off right away under Always (launcher exit status 0, pod Succeeded) is
/// recreated, but the loop backs off like a crash loop: the second quick end in a row shows
/// CrashLoopBackOff with a retry in the future, even though that VMI was Running and Ready.
/// Only a VMI that stays Ready for the stable period (60 s) clears the count, and its end is not
/// counted.
#[tokio::test]
async fn quick_poweroffs_under_always_back_off() {
    let e = env("off-always").await;
    // A real Node, so the pod garbage collector leaves the bound pods alone for the long run.
    nodes(&e.client, &["node-a"]).await;
    e.ready_runtime().await;
    e.create_vm("p", vm_spec(Some(RunStrategy::Always))).await;
    let uid1 = e.wait_vmi("p", None).await;
    e.run_vmi("p", "node-a").await;
    e.wait_printable("p", "Running").await;
    end_launcher(&e, &launcher_pod_name("p"), "Succeeded", 0, "").await;
    // First end: recreated at once.
    let uid2 = e.wait_vmi("p", Some(&uid1)).await;
    wait_pod_of(&e, "p", &uid2).await;
    // The new VMI blips Running and Ready, then powers off again.
    e.run_vmi("p", "node-a").await;
    wait_vmi_phase(&e, "p", VmiPhase::Running).await;
    end_launcher(&e, &launcher_pod_name("p"), "Succeeded", 0, "").await;
    common::wait("CrashLoopBackOff with retryAfter ahead", || async {
        let Some(s) = e.vm("p").await.status else {
            return false;
        };
        let Some(f) = s.start_failure else {
            return false;
        };
        let ahead = f
            .retry_after
            .as_deref()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .is_some_and(|t| t > k8s_openapi::jiff::Timestamp::now());
        format!("{:?}", s.printable_status) == "Some(CrashLoopBackOff)"
            && f.consecutive_fail_count >= 2
            && ahead
    })
    .await;
    // After the back-off, a third VMI.
    let uid3 = e.wait_vmi("p", Some(&uid2)).await;
    assert_ne!(uid3, uid1);

    // It becomes Ready: the count stays until it has been Ready for the stable period, then
    // clears without any other event (the VM was requeued for that moment).
    wait_pod_of(&e, "p", &uid3).await;
    e.run_vmi("p", "node-a").await;
    e.wait_printable("p", "Running").await;
    let failure =
        |vm: vireo_controller::crd::VirtualMachine| vm.status.and_then(|s| s.start_failure);
    assert!(
        failure(e.vm("p").await).is_some(),
        "Running alone must not reset"
    );
    let stable =
        Duration::from_secs(vireo_controller::reconcile::vm::STABLE_RUN_SECS.unsigned_abs());
    let ready_at = std::time::Instant::now();
    loop {
        let vm = e.vm("p").await;
        let since = ready_at.elapsed();
        match vm.status {
            Some(s) if s.start_failure.is_none() => {
                assert!(
                    since + Duration::from_secs(5) >= stable,
                    "reset after {since:?}"
                );
                assert_eq!(s.stable_vmi_uid.as_deref(), Some(uid3.as_str()));
                break;
            }
            st => assert!(
                since < stable + Duration::from_secs(20),
                "no reset after {since:?}: vm {st:?} vmi {:?}",
                e.vmis().get("p").await.ok().and_then(|v| v.status)
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The end of a VMI that ran stably is no failure: recreated at once, nothing counted.
    end_launcher(&e, &launcher_pod_name("p"), "Succeeded", 0, "").await;
    e.wait_vmi("p", Some(&uid3)).await;
    assert!(failure(e.vm("p").await).is_none());
}

#[tokio::test]
async fn rerun_on_failure_recreates_only_after_failure() {
    let e = env("rerun").await;
    e.ready_runtime().await;
    e.create_vm("r", vm_spec(Some(RunStrategy::RerunOnFailure)))
        .await;
    let uid1 = e.wait_vmi("r", None).await;
    e.run_vmi("r", "node-a").await;
    e.set_pod_phase(&launcher_pod_name("r"), "Failed", false)
        .await;
    let uid2 = e.wait_vmi("r", Some(&uid1)).await;

    // A clean guest shutdown (pod Succeeded) is not rerun.
    e.run_vmi("r", "node-a").await;
    e.wait_printable("r", "Running").await;
    e.set_pod_phase(&launcher_pod_name("r"), "Succeeded", false)
        .await;
    wait_vmi_phase(&e, "r", VmiPhase::Succeeded).await;
    e.wait_printable("r", "Stopped").await;
    assert_vmi_stays(&e, "r", &uid2, 3).await;

    // start → a new VMI, strategy unchanged.
    let r = request(e.client.clone(), &e.ns, "r", VmAction::Start).await;
    assert!(matches!(r, Ok(Outcome::Queued(_))), "{r:?}");
    e.wait_vmi("r", Some(&uid2)).await;
    assert_eq!(strategy_of(&e, "r").await, RunStrategy::RerunOnFailure);

    // stop → Halted, VMI gone.
    request(e.client.clone(), &e.ns, "r", VmAction::Stop)
        .await
        .expect("stop");
    e.wait_no_vmi("r").await;
    assert_eq!(strategy_of(&e, "r").await, RunStrategy::Halted);
}

#[tokio::test]
async fn manual_never_recreates_automatically() {
    let e = env("manual").await;
    e.ready_runtime().await;
    e.create_vm("m", vm_spec(Some(RunStrategy::Manual))).await;
    e.wait_printable("m", "Stopped").await;
    assert_eq!(
        e.vmi_uid("m").await,
        None,
        "Manual creates nothing by itself"
    );

    request(e.client.clone(), &e.ns, "m", VmAction::Start)
        .await
        .expect("start");
    let uid1 = e.wait_vmi("m", None).await;
    e.run_vmi("m", "node-a").await;
    e.wait_printable("m", "Running").await;
    e.set_pod_phase(&launcher_pod_name("m"), "Failed", false)
        .await;
    wait_vmi_phase(&e, "m", VmiPhase::Failed).await;
    assert_vmi_stays(&e, "m", &uid1, 3).await;
    e.wait_printable("m", "Stopped").await;

    // restart replaces the failed VMI; strategy stays Manual.
    request(e.client.clone(), &e.ns, "m", VmAction::Restart)
        .await
        .expect("restart");
    let uid2 = e.wait_vmi("m", Some(&uid1)).await;
    assert_eq!(strategy_of(&e, "m").await, RunStrategy::Manual);

    // stop deletes the VMI; strategy stays Manual; nothing comes back.
    request(e.client.clone(), &e.ns, "m", VmAction::Stop)
        .await
        .expect("stop");
    e.wait_no_vmi("m").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(e.vmi_uid("m").await, None);
    assert_eq!(strategy_of(&e, "m").await, RunStrategy::Manual);
    let _ = uid2;
}

#[tokio::test]
async fn halted_has_no_vmi_and_start_means_always() {
    let e = env("halted").await;
    e.ready_runtime().await;
    e.create_vm("h", vm_spec(Some(RunStrategy::Halted))).await;
    e.wait_printable("h", "Stopped").await;
    assert_eq!(e.vmi_uid("h").await, None);
    assert!(request(e.client.clone(), &e.ns, "h", VmAction::Stop)
        .await
        .is_err());
    assert!(request(e.client.clone(), &e.ns, "h", VmAction::Restart)
        .await
        .is_err());
    let r = request(e.client.clone(), &e.ns, "h", VmAction::Start).await;
    assert_eq!(r.ok(), Some(Outcome::StrategyChanged(RunStrategy::Always)));
    e.wait_vmi("h", None).await;

    // The legacy `running` field: start/stop flip it instead of runStrategy.
    let mut spec = vm_spec(None);
    spec["running"] = json!(false);
    e.create_vm("legacy", spec).await;
    e.wait_printable("legacy", "Stopped").await;
    request(e.client.clone(), &e.ns, "legacy", VmAction::Start)
        .await
        .expect("start");
    e.wait_vmi("legacy", None).await;
    let vm = e.vm("legacy").await;
    assert_eq!((vm.spec.running, vm.spec.run_strategy), (Some(true), None));
}

/// `kernelBoot.container` survives the apiserver's schema (no pruning) and yields a launcher pod
/// whose init container copies the kernel where the launch spec reads it.
#[tokio::test]
async fn kernel_from_a_container_image() {
    let e = env("kernel-image").await;
    e.ready_runtime().await;
    let mut spec = vm_spec(Some(RunStrategy::Always));
    spec["template"]["spec"]["domain"]["firmware"]["kernelBoot"] = json!({
        "cmdline": "console=ttyS0",
        "container": {
            "image": "example/kernel:6.6",
            "kernelPath": "/boot/vmlinuz",
            "initrdPath": "/boot/initrd.img",
            "imagePullPolicy": "IfNotPresent",
        },
    });
    e.create_vm("k", spec).await;
    e.wait_vmi("k", None).await;
    let pod = e.wait_pod("k").await;
    let ps = pod.spec.clone().expect("pod spec");
    let init = ps
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == "kernel-boot")
        .expect("kernel-boot init container");
    assert_eq!(init.image.as_deref(), Some("example/kernel:6.6"));
    assert_eq!(init.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        init.command.unwrap_or_default(),
        [
            "cp",
            "/boot/vmlinuz",
            "/boot/initrd.img",
            "/var/run/vireo/kernel-boot/"
        ]
    );
    assert!(ps
        .volumes
        .unwrap_or_default()
        .iter()
        .any(|v| v.name == "kernel-boot" && v.empty_dir.is_some()));
    let launch = pod
        .metadata
        .annotations
        .unwrap_or_default()
        .remove("vireo.dev/launch-spec")
        .expect("launch spec");
    let launch: serde_json::Value = serde_json::from_str(&launch).expect("json");
    assert_eq!(
        launch["payload"]["kernel"],
        json!("/var/run/vireo/kernel-boot/vmlinuz")
    );
    assert_eq!(
        launch["payload"]["initramfs"],
        json!("/var/run/vireo/kernel-boot/initrd.img")
    );
    common::wait("vm Valid", || async {
        Env::condition(&e.vm("k").await, "Valid").is_some_and(|c| c.is_true())
    })
    .await;
}

#[tokio::test]
async fn deleting_vm_garbage_collects_vmi_and_pod() {
    let e = env("gc").await;
    e.ready_runtime().await;
    e.create_vm("g", vm_spec(Some(RunStrategy::Always))).await;
    e.wait_vmi("g", None).await;
    let pod = e.wait_pod("g").await;
    let vmi = e.vmis().get("g").await.expect("vmi");
    let owner = &vmi.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("VirtualMachine", Some(true))
    );
    let powner = &pod.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(powner.kind, "VirtualMachineInstance");

    // The controller has no finalizer on VMs: only kube-controller-manager's GC can remove the VMI.
    e.vms()
        .delete("g", &DeleteParams::background())
        .await
        .expect("delete vm");
    e.wait_no_vmi("g").await;
    let pods = e.pods();
    common::wait("pod gone", || async {
        pods.get_opt(&launcher_pod_name("g"))
            .await
            .ok()
            .flatten()
            .is_none()
    })
    .await;
}

#[tokio::test]
async fn invalid_specs_are_rejected_by_field_and_others_still_run() {
    let e = env("invalid").await;
    e.ready_runtime().await;
    let mut both = vm_spec(Some(RunStrategy::Always));
    both["running"] = json!(true);
    let mut mem0 = vm_spec(Some(RunStrategy::Always));
    mem0["template"]["spec"]["domain"]["memory"]["guest"] = json!("0");
    let mut fmt = vm_spec(Some(RunStrategy::Always));
    fmt["template"]["spec"]["domain"]["devices"]["disks"][0]["format"] = json!("vmdk");
    let mut twice = vm_spec(Some(RunStrategy::Always));
    twice["template"]["spec"]["domain"]["devices"]["disks"] =
        json!([{ "name": "root" }, { "name": "root" }]);
    let mut nokernel = vm_spec(Some(RunStrategy::Always));
    nokernel["template"]["spec"]["domain"]["firmware"] = json!({});
    let mut kernel2 = vm_spec(Some(RunStrategy::Always));
    kernel2["template"]["spec"]["domain"]["firmware"]["kernelBoot"]["container"] =
        json!({ "image": "example/kernel", "kernelPath": "/boot/vmlinuz" });
    let mut kernel0 = vm_spec(Some(RunStrategy::Always));
    kernel0["template"]["spec"]["domain"]["firmware"]["kernelBoot"] =
        json!({ "container": { "image": "example/kernel", "initrdPath": "/boot/initrd" } });
    let cases = [
        ("both", both, "spec.running"),
        (
            "kernel2",
            kernel2,
            "spec.template.spec.domain.firmware.kernelBoot.container.kernelPath",
        ),
        (
            "kernel0",
            kernel0,
            "spec.template.spec.domain.firmware.kernelBoot.kernel",
        ),
        ("mem0", mem0, "spec.template.spec.domain.memory.guest"),
        (
            "fmt",
            fmt,
            "spec.template.spec.domain.devices.disks[0].format",
        ),
        (
            "twice",
            twice,
            "spec.template.spec.domain.devices.disks[1].name",
        ),
        (
            "nokernel",
            nokernel,
            "spec.template.spec.domain.firmware.kernelBoot",
        ),
    ];
    for (name, spec, _) in &cases {
        e.create_vm(name, spec.clone()).await;
    }
    e.create_vm("good", vm_spec(Some(RunStrategy::Always)))
        .await;
    e.wait_pod("good").await;
    for (name, _, field) in &cases {
        common::wait(&format!("{name} Valid=False"), || async {
            Env::condition(&e.vm(name).await, "Valid").is_some_and(|c| !c.is_true())
        })
        .await;
        let c = Env::condition(&e.vm(name).await, "Valid").expect("Valid condition");
        let msg = c.message.unwrap_or_default();
        assert!(
            msg.contains(field),
            "{name}: message {msg:?} must name {field}"
        );
        assert_eq!(e.vmi_uid(name).await, None, "{name} must get no VMI");
    }
    // A VM created after the bad ones still reconciles.
    e.create_vm("later", vm_spec(Some(RunStrategy::Always)))
        .await;
    e.wait_pod("later").await;

    // A standalone invalid VMI fails with the field named.
    let vmi: vireo_controller::crd::VirtualMachineInstance = serde_json::from_value(json!({
        "apiVersion": "vireo.dev/v1alpha1", "kind": "VirtualMachineInstance",
        "metadata": { "name": "bad-vmi" },
        "spec": mem_zero_vmi_spec(),
    }))
    .expect("vmi");
    e.vmis()
        .create(&PostParams::default(), &vmi)
        .await
        .expect("create vmi");
    wait_vmi_phase(&e, "bad-vmi", VmiPhase::Failed).await;
    let v = e.vmis().get("bad-vmi").await.expect("vmi");
    let c = v
        .status
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Valid"))
        .expect("Valid");
    assert!(c
        .message
        .unwrap_or_default()
        .contains("spec.domain.memory.guest"));
}

fn mem_zero_vmi_spec() -> serde_json::Value {
    let mut s = vm_spec(None)["template"]["spec"].clone();
    s["domain"]["memory"]["guest"] = json!("0Mi");
    s
}

#[tokio::test]
async fn pause_unpause_and_cli_binary() {
    let e = env("pause").await;
    e.ready_runtime().await;
    e.create_vm("p", vm_spec(Some(RunStrategy::Always))).await;
    e.wait_vmi("p", None).await;
    assert!(
        request(e.client.clone(), &e.ns, "p", VmAction::Pause)
            .await
            .is_err(),
        "not running yet"
    );
    e.run_vmi("p", "node-a").await;
    e.wait_printable("p", "Running").await;

    // Through the real binary, as `vireo vm pause` will exec it.
    let bin = env!("CARGO_BIN_EXE_vireo-controller");
    let out = run_cli(bin, &["vm", "pause", "p", "-n", &e.ns]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // There is no kubelet here, so no launcher answers: the VMI says a pause was requested and
    // why it is not done yet (the real pause is tested on the node, controller/tests/node.rs).
    common::wait(
        "Paused=False, PauseRequested, launcher unreachable",
        || async {
            e.vmis()
                .get("p")
                .await
                .ok()
                .and_then(|v| v.status)
                .is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "Paused"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("PauseRequested")
                            && c.message.as_deref().is_some_and(|m| m.contains("launcher"))
                    })
                })
        },
    )
    .await;

    let out = run_cli(bin, &["vm", "unpause", "p", "-n", &e.ns]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::wait("no Paused condition", || async {
        e.vmis()
            .get("p")
            .await
            .ok()
            .and_then(|v| v.status)
            .is_some_and(|s| !s.conditions.iter().any(|c| c.type_ == "Paused"))
    })
    .await;
    e.wait_printable("p", "Running").await;

    // A bad request exits non-zero with a message.
    let out = run_cli(bin, &["vm", "start", "p", "-n", &e.ns]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
}

async fn set_preflight(e: &Env, node: &str, phase: &str, msg: &str) {
    let pods = e.pods();
    let sel = format!(
        "vireo.dev/preflight-node={node},vireo.dev/preflight-runtime={}",
        e.runtime
    );
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    let name = loop {
        let found = pods
            .list(&ListParams::default().labels(&sel))
            .await
            .ok()
            .and_then(|l| l.items.first()?.metadata.name.clone());
        if let Some(n) = found {
            break n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no preflight pod for {node}"
        );
        tokio::time::sleep(common::POLL).await;
    };
    let code = if phase == "Succeeded" { 0 } else { 1 };
    let patch = json!({ "status": { "phase": phase, "containerStatuses": [ {
        "name": "preflight", "image": "vireo/launcher:dev", "imageID": "", "ready": false, "restartCount": 0,
        "state": { "terminated": { "exitCode": code, "message": msg, "reason": "Completed" } } } ] } });
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("preflight status");
}

#[tokio::test]
async fn preflight_failure_blocks_vms_unless_emulation() {
    let e = env("preflight").await;
    nodes(&e.client, &["node-a", "node-b"]).await;
    e.create_vm("v", vm_spec(Some(RunStrategy::Always))).await;
    common::wait("VMRuntimeMissing", || async {
        Env::condition(&e.vm("v").await, "RuntimeReady")
            .is_some_and(|c| c.reason.as_deref() == Some("VMRuntimeMissing"))
    })
    .await;
    e.runtime(true, false).await;
    set_preflight(
        &e,
        "node-a",
        "Failed",
        "kvm=0 run=fail reason=cannot open /dev/kvm",
    )
    .await;
    set_preflight(
        &e,
        "node-b",
        "Failed",
        "kvm=1 run=fail reason=timeout cpu=vmx",
    )
    .await;
    let rts = e.runtimes();
    common::wait("PreflightFailed", || async {
        rts.get(&e.runtime)
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| {
                s.preflight.len() >= 2
                    && s.conditions
                        .iter()
                        .any(|c| c.reason.as_deref() == Some("PreflightFailed"))
            })
    })
    .await;
    let vm = e.vm("v").await;
    let c = Env::condition(&vm, "RuntimeReady").expect("cond");
    assert!(!c.is_true());
    assert_eq!(e.vmi_uid("v").await, None, "blocked by preflight");

    // useEmulation lifts the block: the VM gets its VMI and the pod may go anywhere.
    rts.patch(
        &e.runtime,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "useEmulation": true } })),
    )
    .await
    .expect("patch runtime");
    e.wait_vmi("v", None).await;
    let pod = e.wait_pod("v").await;
    assert!(pod
        .spec
        .and_then(|s| s.affinity)
        .and_then(|a| a.node_affinity)
        .is_none());
}

#[tokio::test]
async fn vmruntime_enable_disable_table() {
    let e = env("runtime").await;
    nodes(&e.client, &["node-a", "node-b"]).await;
    e.runtime(true, false).await;
    // KVM without vmx/svm (PVM) passes: the check is that a VM ran.
    set_preflight(&e, "node-a", "Succeeded", "kvm=1 run=ok cpu=none ms=30").await;
    set_preflight(&e, "node-b", "Failed", "kvm=0 run=fail reason=no /dev/kvm").await;
    let rts = e.runtimes();
    common::wait("runtime ready with both preflight results", || async {
        rts.get(&e.runtime)
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| {
                s.ready && s.preflight.iter().filter(|p| p.result != "Pending").count() >= 2
            })
    })
    .await;
    let st = rts
        .get(&e.runtime)
        .await
        .expect("rt")
        .status
        .expect("status");
    let a = st
        .preflight
        .iter()
        .find(|p| p.node == "node-a")
        .expect("node-a");
    assert_eq!(
        (a.result.as_str(), a.kvm, a.cpu.as_deref()),
        ("Passed", true, None)
    );
    let b = st
        .preflight
        .iter()
        .find(|p| p.node == "node-b")
        .expect("node-b");
    assert_eq!(b.result, "Failed");

    // Launcher pods are restricted to nodes that passed.
    e.create_vm("v1", vm_spec(Some(RunStrategy::Always))).await;
    let pod = e.wait_pod("v1").await;
    let term = pod
        .spec
        .and_then(|s| s.affinity)
        .and_then(|a| a.node_affinity)
        .and_then(|n| n.required_during_scheduling_ignored_during_execution)
        .expect("node affinity")
        .node_selector_terms;
    let req = &term[0].match_expressions.clone().unwrap_or_default()[0];
    assert_eq!(
        (req.operator.as_str(), req.values.clone()),
        ("In", Some(vec!["node-a".to_owned()]))
    );

    // Disable with VMs, no annotation → refused, VM kept, still ready.
    rts.patch(
        &e.runtime,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "enabled": false } })),
    )
    .await
    .expect("disable");
    let refused = || async {
        rts.get(&e.runtime)
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| {
                s.ready
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "DisableRefused" && c.is_true())
            })
    };
    common::wait("DisableRefused", refused).await;
    // Annotation "false" → still refused.
    rts.patch(
        &e.runtime,
        &PatchParams::default(),
        &Patch::Merge(
            json!({ "metadata": { "annotations": { "vm.vireo.dev/force-disable": "false" } } }),
        ),
    )
    .await
    .expect("annotate");
    tokio::time::sleep(Duration::from_secs(2)).await;
    common::wait("still refused", refused).await;
    assert!(e.vmi_uid("v1").await.is_some(), "VMs are kept");
    let msg = rts
        .get(&e.runtime)
        .await
        .expect("rt")
        .status
        .expect("s")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "DisableRefused")
        .and_then(|c| c.message)
        .unwrap_or_default();
    assert!(
        msg.contains("v1") && msg.contains("vm.vireo.dev/force-disable"),
        "{msg}"
    );

    // Force → VMs and their resources deleted, then disabled.
    rts.patch(
        &e.runtime,
        &PatchParams::default(),
        &Patch::Merge(
            json!({ "metadata": { "annotations": { "vm.vireo.dev/force-disable": "true" } } }),
        ),
    )
    .await
    .expect("annotate");
    let vms = e.vms();
    common::wait("VMs deleted", || async {
        vms.list(&ListParams::default())
            .await
            .is_ok_and(|l| l.items.is_empty())
    })
    .await;
    e.wait_no_vmi("v1").await;
    common::wait("disabled", || async {
        rts.get(&e.runtime)
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| {
                !s.ready
                    && s.conditions
                        .iter()
                        .any(|c| c.reason.as_deref() == Some("VMRuntimeDisabled"))
            })
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(e.client.clone(), &e.ns);
    common::wait("preflight jobs removed", || async {
        jobs.list(&ListParams::default())
            .await
            .is_ok_and(|l| l.items.is_empty())
    })
    .await;

    // Disabled → new VMs are refused with a clear condition.
    e.create_vm("v2", vm_spec(Some(RunStrategy::Always))).await;
    common::wait("VMRuntimeDisabled on VM", || async {
        Env::condition(&e.vm("v2").await, "RuntimeReady")
            .is_some_and(|c| !c.is_true() && c.reason.as_deref() == Some("VMRuntimeDisabled"))
    })
    .await;
    assert_eq!(e.vmi_uid("v2").await, None);

    // Re-enable → the waiting VM starts.
    rts.patch(
        &e.runtime,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "enabled": true, "useEmulation": true } })),
    )
    .await
    .expect("enable");
    e.wait_vmi("v2", None).await;
}

/// Ends the launcher container of `pod` with `code`, as the kubelet reports it.
async fn end_launcher(e: &Env, pod: &str, phase: &str, code: i32, message: &str) {
    let patch = json!({ "status": {
        "phase": phase,
        "conditions": [ { "type": "Ready", "status": "False" } ],
        "containerStatuses": [ {
            "name": "launcher", "image": "vireo", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": { "terminated": { "exitCode": code, "message": message } },
        } ],
    }});
    e.pods()
        .patch_status(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch pod status");
}

/// The launcher's exit status reaches the VMI: a forced stop (8) fails it with reason
/// ForcedStop, as KubeVirt fails a domain destroyed after its grace period; a poweroff (0)
/// succeeds with no Failure condition.
#[tokio::test]
async fn launcher_exit_status_becomes_the_vmis_failure_reason() {
    let e = env("exit").await;
    e.ready_runtime().await;
    for (name, phase, code, want) in [
        ("forced", "Failed", 8, Some("ForcedStop")),
        ("triple", "Failed", 4, Some("TripleFault")),
        ("off", "Succeeded", 0, None),
    ] {
        let vmi: vireo_controller::crd::VirtualMachineInstance = serde_json::from_value(json!({
            "apiVersion": "vireo.dev/v1alpha1", "kind": "VirtualMachineInstance",
            "metadata": { "name": name },
            "spec": vm_spec(None)["template"]["spec"].clone(),
        }))
        .expect("vmi");
        e.vmis()
            .create(&PostParams::default(), &vmi)
            .await
            .expect("create vmi");
        e.run_vmi(name, "node-a").await;
        wait_vmi_phase(&e, name, VmiPhase::Running).await;
        end_launcher(
            &e,
            &launcher_pod_name(name),
            phase,
            code,
            "vireo: the last words",
        )
        .await;
        let final_phase = if code == 0 {
            VmiPhase::Succeeded
        } else {
            VmiPhase::Failed
        };
        wait_vmi_phase(&e, name, final_phase).await;
        let failure = e
            .vmis()
            .get(name)
            .await
            .expect("vmi")
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Failure"));
        match want {
            None => assert!(failure.is_none(), "{name}: {failure:?}"),
            Some(reason) => {
                let c = failure.unwrap_or_else(|| panic!("{name}: no Failure condition"));
                assert_eq!(c.reason.as_deref(), Some(reason), "{name}");
                let msg = c.message.unwrap_or_default();
                assert!(msg.contains(&format!("exit status {code}")), "{msg}");
                assert!(msg.contains("the last words"), "{msg}");
            }
        }
    }
}

/// Until live migration exists, no VMI is LiveMigratable and every migration fails before a
/// target pod exists (a target launcher would refuse to boot anyway: exit status 9), while the
/// VMI keeps running untouched.
#[tokio::test]
async fn migrations_are_refused_until_live_migration_exists() {
    let e = env("migrate").await;
    nodes(&e.client, &["node-a", "node-b"]).await;
    e.ready_runtime().await;
    e.create_vm("mv", vm_spec(Some(RunStrategy::Always))).await;
    e.wait_vmi("mv", None).await;
    e.run_vmi("mv", "node-a").await;
    e.wait_printable("mv", "Running").await;
    let vmi = e.vmis().get("mv").await.expect("vmi");
    let c = vmi
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "LiveMigratable")
                .cloned()
        })
        .expect("LiveMigratable condition");
    assert!(!c.is_true(), "{c:?}");
    assert_eq!(c.reason.as_deref(), Some("LiveMigrationNotImplemented"));

    let migs: Api<VirtualMachineInstanceMigration> = Api::namespaced(e.client.clone(), &e.ns);
    let mk = |name: &str, vmi: &str| -> VirtualMachineInstanceMigration {
        serde_json::from_value(json!({
            "apiVersion": "vireo.dev/v1alpha1", "kind": "VirtualMachineInstanceMigration",
            "metadata": { "name": name }, "spec": { "vmiName": vmi },
        }))
        .expect("vmim")
    };
    let phase = |name: &'static str| {
        let migs = migs.clone();
        async move { migs.get(name).await.ok().and_then(|m| m.status?.phase) }
    };
    let message = |name: &'static str| {
        let migs = migs.clone();
        async move {
            let st = migs.get(name).await.expect("vmim").status.expect("status");
            st.conditions[0].message.clone().unwrap_or_default()
        }
    };
    migs.create(&PostParams::default(), &mk("m1", "mv"))
        .await
        .expect("create vmim");
    common::wait("m1 Failed", || async {
        phase("m1").await == Some(MigrationPhase::Failed)
    })
    .await;
    let msg = message("m1").await;
    assert!(msg.contains("cannot live-migrate"), "{msg}");
    let target = vireo_controller::pod::target_pod_name("mv", "m1");
    assert!(
        e.pods().get_opt(&target).await.expect("get").is_none(),
        "no target pod may be created"
    );
    let vmi = e.vmis().get("mv").await.expect("vmi");
    assert!(vmi.status.and_then(|s| s.migration_state).is_none());
    e.wait_printable("mv", "Running").await;

    // A migration of a VMI that does not exist fails with the field named.
    migs.create(&PostParams::default(), &mk("m3", "nope"))
        .await
        .expect("create m3");
    common::wait("m3 Failed", || async {
        phase("m3").await == Some(MigrationPhase::Failed)
    })
    .await;
    assert!(message("m3").await.contains("spec.vmiName"));
}

/// Runs the built `vireo-controller` binary against the test cluster.
fn run_cli(bin: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin)
        .args(args)
        .env("KUBECONFIG", &common::cluster().kubeconfig)
        .output()
        .expect("run binary")
}
