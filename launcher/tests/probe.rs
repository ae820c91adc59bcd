//! `vireo probe --api-socket PATH`, the readiness check of a launcher pod, against a real
//! `vireo run --api-socket` under KVM: ready (exit 0) only while the VM is Running; otherwise
//! exit 1 and one line on stderr saying why.

mod common;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use common::*;

/// Runs `vireo probe --api-socket socket`: (exit code, stderr).
fn probe(socket: &Path) -> (Option<i32>, String) {
    let mut cmd = vireo();
    cmd.arg("probe").arg("--api-socket").arg(socket);
    let out = run_with_timeout(cmd, Duration::from_secs(10));
    assert_eq!(stdout(&out), "", "the probe prints nothing on stdout");
    (out.status.code(), stderr(&out))
}

#[test]
fn probe_is_ready_only_while_the_vm_runs() {
    let fx = Fixture::create();
    let socket = fx.path("api.sock");
    let mut cmd = vireo();
    cmd.arg("run")
        .arg("--kernel")
        .arg(&fx.guest)
        .args(["--cmdline", "idle", "--memory", "64M", "--api-socket"])
        .arg(&socket);
    let proc = Collected::spawn(cmd);
    wait_for_path(&socket, Duration::from_secs(20));
    proc.wait_for_lines(1, Duration::from_secs(20));

    assert_eq!(probe(&socket), (Some(0), String::new()));

    assert_eq!(curl(&socket, "PUT", "/api/v1/vm.pause", &[]).0, 204);
    let (code, err) = probe(&socket);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err, "vireo probe: not ready: VM state is Paused, not Running\n",
        "one line saying why"
    );

    assert_eq!(curl(&socket, "PUT", "/api/v1/vm.resume", &[]).0, 204);
    assert_eq!(probe(&socket), (Some(0), String::new()));
    shutdown_running(&socket, proc);

    let (code, err) = probe(&socket);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with("vireo probe: not ready: no API socket at"),
        "{err}"
    );
}

#[test]
fn probe_without_a_socket_says_so() {
    let fx = Fixture::create();
    let socket = fx.path("missing.sock");
    let (code, err) = probe(&socket);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "vireo probe: not ready: no API socket at {}: No such file or directory (os error 2)\n",
            socket.display()
        )
    );
}

#[test]
fn probe_of_a_vireo_waiting_for_a_restore_is_not_ready() {
    let fx = Fixture::create();
    let socket = fx.path("api.sock");
    let mut cmd = vireo();
    cmd.arg("run").arg("--api-socket").arg(&socket);
    let mut proc = Collected::spawn(cmd);
    wait_for_path(&socket, Duration::from_secs(20));
    let (code, err) = probe(&socket);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.starts_with("vireo probe: not ready: no VM"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    send_signal(&mut proc.running, libc::SIGTERM);
    let (status, _, logs) = proc.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{logs}");
}

#[test]
fn probe_gives_up_on_an_api_that_does_not_answer() {
    let fx = Fixture::create();
    let socket = fx.path("silent.sock");
    // Accepts connections (the kernel queues them) and never answers.
    let _listener = UnixListener::bind(&socket).expect("bind");
    let (code, err) = probe(&socket);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("did not answer: no answer within 1s"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
