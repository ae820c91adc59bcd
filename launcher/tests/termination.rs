//! The termination message `vireo run` and `vireo launch` leave for Kubernetes (one line in
//! `VIREO_TERMINATION_LOG`), and `vireo preflight`'s report, under real KVM.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// Runs `vireo run --kernel KERNEL ARGS` with the termination log in the fixture's directory;
/// returns the output and the message.
fn run_with_log(fx: &Fixture, kernel: &Path, args: &[&str]) -> (std::process::Output, String) {
    let log = fx.path("termination-log");
    let mut cmd = vireo();
    cmd.env("VIREO_TERMINATION_LOG", &log)
        .arg("run")
        .arg("--kernel")
        .arg(kernel)
        .args(args);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let message = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("no termination message ({e}); stderr: {}", stderr(&out)));
    (out, message)
}

#[test]
fn a_missing_kernel_names_its_path_with_status_1() {
    let fx = Fixture::create();
    let kernel = fx.path("missing/vmlinuz");
    let (out, message) = run_with_log(&fx, &kernel, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let want = format!(
        "VMMError: cannot read kernel {}: No such file or directory",
        kernel.display()
    );
    assert!(message.starts_with(&want), "{message}");
    assert!(
        message.ends_with('\n') && message.lines().count() == 1,
        "{message:?}"
    );
}

#[test]
fn a_guest_that_exits_0_is_a_poweroff() {
    let fx = Fixture::create();
    let (out, message) = run_with_log(&fx, &fx.guest, &["--cmdline", "exit 0"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(message, "GuestPoweredOff: the guest powered off\n");
}

#[test]
fn a_guest_failure_status_is_status_6() {
    let fx = Fixture::create();
    let (out, message) = run_with_log(&fx, &fx.guest, &["--cmdline", "exit 3"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert_eq!(
        message,
        "GuestFailure: the guest reported a failure on the debug exit port\n"
    );
}

#[test]
fn a_triple_fault_is_status_4() {
    let fx = Fixture::create();
    let (out, message) = run_with_log(&fx, &fx.guest, &["--cmdline", "triple-fault"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(message, "TripleFault: a vCPU triple-faulted\n");
}

#[test]
fn launch_writes_the_message_too() {
    let fx = Fixture::create();
    let spec = fx.path("spec.json");
    let json = format!(
        r#"{{"vcpus": 1, "memory_mib": 32, "payload": {{"kernel": {:?}, "cmdline": "exit 0"}}, "serial": {{"mode": "off"}}}}"#,
        fx.guest.display().to_string()
    );
    std::fs::write(&spec, json).expect("write spec");
    let log = fx.path("termination-log");
    let mut cmd = vireo();
    cmd.env("VIREO_TERMINATION_LOG", &log)
        .arg("launch")
        .arg("--spec")
        .arg(&spec);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let message = std::fs::read_to_string(&log).expect("termination message");
    assert_eq!(message, "GuestPoweredOff: the guest powered off\n");
}

#[test]
fn an_unwritable_log_does_not_change_the_status() {
    let fx = Fixture::create();
    let mut cmd = vireo();
    cmd.env("VIREO_TERMINATION_LOG", fx.path("no-such-dir/log"))
        .arg("run")
        .arg("--kernel")
        .arg(&fx.guest)
        .args(["--cmdline", "exit 0"]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot write the termination message"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn preflight_boots_the_test_guest() {
    let fx = Fixture::create();
    let log = fx.path("termination-log");
    let mut cmd = vireo();
    cmd.env("VIREO_TERMINATION_LOG", &log).arg("preflight");
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    let line = text.trim_end();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(line.starts_with("kvm=1 run=ok cpu="), "{line}");
    let cpu = line
        .split(' ')
        .find_map(|w| w.strip_prefix("cpu="))
        .expect("cpu=");
    // Informational, from the host's flags: on a PVM host (no vmx or svm) it is `none` and
    // the check still passes.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    let want = if has("vmx") {
        "vmx"
    } else if has("svm") {
        "svm"
    } else {
        "none"
    };
    assert_eq!(cpu, want, "{line}");
    let ms = line
        .split(' ')
        .find_map(|w| w.strip_prefix("ms="))
        .expect("ms=");
    assert!(ms.parse::<u64>().is_ok(), "{line}");
    assert_eq!(
        std::fs::read_to_string(&log).expect("termination message"),
        format!("{line}\n")
    );
}

#[test]
fn preflight_without_the_device_fails_with_the_reason() {
    let fx = Fixture::create();
    let log = fx.path("termination-log");
    let mut cmd = vireo();
    cmd.env("VIREO_TERMINATION_LOG", &log)
        .env("VIREO_KVM_DEVICE", "/nonexistent")
        .arg("preflight");
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let want = "kvm=0 run=fail reason=/nonexistent does not exist: KVM is not available";
    assert!(stdout(&out).starts_with(want), "{}", stdout(&out));
    let message = std::fs::read_to_string(&log).expect("termination message");
    assert!(message.starts_with(want), "{message}");
}
