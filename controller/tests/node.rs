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

mod node_support;

use std::time::{Duration, Instant};

use kube::ResourceExt;
use serde_json::json;
use vireo_controller::crd::vm::PrintableStatus;
use vireo_controller::crd::vmi::VmiPhase;
use vireo_controller::requests::{request, VmAction};

use node_support::*;

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
    // `vireo`'s own log lines (stderr, e.g. the API answering the controller's probe) may fall
    // between the guest's lines; the guest's own lines come in order.
    let logs = e.logs("life");
    let ticks: Vec<&str> = logs
        .lines()
        .filter(|l| l.starts_with("tick "))
        .take(3)
        .collect();
    assert_eq!(ticks, ["tick 0", "tick 1", "tick 2"], "{logs}");
    assert_eq!(vmi_phase(&vmi), VmiPhase::Running);

    // `vireo vm pause` (as a user with deploy/rbac.yaml's vireo-vm-user role): the controller
    // pauses the VM through the launcher's API; Running, Paused and not Ready (the readiness
    // probe asks the VMM), and the guest's counter stops.
    let user = e.user_kubeconfig().await;
    vm_request(&user, &["pause", "life"]);
    let paused = e
        .wait_vmi("the VMI Paused and not Ready", "life", None, |v| {
            vmi_phase(v) == VmiPhase::Running && vmi_paused(v) && !vmi_ready(v)
        })
        .await;
    let memory = paused.status.and_then(|s| s.memory).expect("status.memory");
    assert_eq!(
        memory.guest_at_boot.as_deref(),
        Some("32768Ki"),
        "{memory:?}"
    );
    assert!(memory.vmm_resident.is_some(), "{memory:?}");
    let at_pause = last_tick(&e.logs("life"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(last_tick(&e.logs("life")), at_pause, "the guest stopped");
    vm_request(&user, &["unpause", "life"]);
    e.wait_vmi("the VMI Ready again, not paused", "life", None, |v| {
        vmi_ready(v) && vmi_unpaused(v)
    })
    .await;
    wait_until("the guest counting again", || async {
        last_tick(&e.logs("life")) > at_pause
    })
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
    // The first VMI fails and is replaced at once (no back-off yet), faster than a poll may
    // see its Failed phase: the VM's failure count says why there is a second.
    let first = e
        .wait_vmi("a first VMI", "rerun-fail", None, |_| true)
        .await
        .uid();
    e.wait_vmi(
        "a new VMI after the failure",
        "rerun-fail",
        first.as_deref(),
        |_| true,
    )
    .await;
    let vms = e.vms();
    wait_until("the failure counted", || async {
        vms.get("rerun-fail").await.ok().is_some_and(|vm| {
            vm.status
                .and_then(|s| s.start_failure)
                .is_some_and(|f| f.consecutive_fail_count >= 1)
        })
    })
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
