//! Bad input to `vireo`: each case is a one-line error naming the problem,
//! a non-zero exit status, and no panic.

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;

/// Asserts a clean failure: status `code`, one error line containing `needle`.
fn assert_clean_error(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("vireo:")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line: {err}");
    assert!(lines[0].contains(needle), "'{needle}' not in: {err}");
}

#[test]
fn missing_kernel_file() {
    let fx = Fixture::create();
    let mut cmd = vireo();
    cmd.args(["run", "--kernel"]).arg(fx.path("nope.elf"));
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_clean_error(&out, 1, "cannot read kernel");
    assert!(stderr(&out).contains("No such file"), "{}", stderr(&out));
}

#[test]
fn file_that_is_not_a_kernel() {
    let fx = Fixture::create();
    let junk = fx.path("junk.bin");
    std::fs::write(&junk, b"#!/bin/sh\necho this is not a kernel\n").expect("write");
    let mut cmd = vireo();
    cmd.args(["run", "--kernel"]).arg(&junk);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_clean_error(&out, 1, "is not a loadable kernel");
}

#[test]
fn truncated_guest_elf() {
    let fx = Fixture::create();
    let bad = fx.path("truncated.elf");
    std::fs::write(&bad, &vireo_testguest::ELF[..200]).expect("write");
    let mut cmd = vireo();
    cmd.args(["run", "--kernel"]).arg(&bad);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
}

#[test]
fn zero_memory() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--memory", "0"]);
    assert_clean_error(&out, 1, "guest memory of 0 MiB is too small");
}

#[test]
fn memory_larger_than_the_host() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--memory", "64T"]);
    assert_clean_error(&out, 1, "exceeds this host's");
}

#[test]
fn malformed_memory_size() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--memory", "lots"]);
    assert_clean_error(&out, 2, "'lots' is not a size");
}

#[test]
fn zero_cpus() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--cpus", "0"]);
    assert_clean_error(&out, 1, "at least 1 vCPU");
}

#[test]
fn unknown_serial_form() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--serial", "tcp=127.0.0.1:4444"]);
    assert_clean_error(&out, 2, "unknown serial form 'tcp=127.0.0.1:4444'");
}

#[test]
fn unknown_flag() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--frobnicate"]);
    assert_clean_error(&out, 2, "--frobnicate");
}

#[test]
fn no_access_to_dev_kvm() {
    // Run as an unprivileged user: /dev/kvm is root-only on this host.
    let fx = Fixture::create();
    fx.open_up();
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let bin = bin_dir.path().join("vireo");
    std::fs::copy(env!("CARGO_BIN_EXE_vireo"), &bin).expect("copy binary");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test drops privileges with setpriv and needs root"
    );
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(["run", "--kernel"])
        .arg(&fx.guest);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_clean_error(&out, 1, "permission denied opening /dev/kvm");
}

#[test]
fn launch_spec_with_unknown_field() {
    let fx = Fixture::create();
    let spec = fx.path("spec.json");
    std::fs::write(
        &spec,
        format!(
            r#"{{"vcpus":1,"memory_mib":32,"payload":{{"kernel":"{}"}},"nics":[]}}"#,
            fx.guest.display()
        ),
    )
    .expect("write");
    let mut cmd = vireo();
    cmd.arg("launch").arg("--spec").arg(&spec);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_clean_error(&out, 1, "unknown field `nics`");
}
