//! `vireo run` with the ring-3 test guest under real KVM: serial output,
//! exit statuses for each way a VM ends, serial input over a unix socket,
//! and the JSON launch spec.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;

#[test]
fn hello_prints_from_ring3_and_exits_zero() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--cmdline", "hello", "--memory", "64M"]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {text}\nstderr: {}",
        stderr(&out)
    );
    assert!(
        text.starts_with("Hello from the Vireo test guest\n"),
        "{text}"
    );
    assert!(text.contains("cpl: 3\n"), "{text}");
    assert!(text.contains("memory: 64 MiB\n"), "{text}");
    assert!(
        text.contains("pio: scratch register round trip ok"),
        "{text}"
    );
    assert!(
        text.contains("mmio: ioapic version 0x0000000000170011 ok"),
        "{text}"
    );
    assert!(
        text.contains("mmio: unclaimed read 0x00000000ffffffff ok"),
        "{text}"
    );
    assert!(text.contains("hello: PASS"), "{text}");
    // Logs stay on stderr, never in the serial stream.
    assert!(!text.contains("INFO"), "{text}");
    assert!(stderr(&out).contains("VM stopped"), "{}", stderr(&out));
}

#[test]
fn two_vcpus_boot_and_stop_cleanly() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--cmdline", "hello", "--cpus", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("hello: PASS"));
}

#[test]
fn triple_fault_is_a_typed_exit_with_code_4() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--cmdline", "triple-fault"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stdout(&out).contains("triple-fault: ud2 with no IDT"));
    assert!(
        stderr(&out).contains("triple fault on vCPU 0"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn emulation_failure_reports_the_instruction_with_code_5() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--cmdline", "emulation-failure"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("emulation failure on vCPU 0 at rip 0x"),
        "{err}"
    );
    // cmpxchg16b [rdi] = REX.W 0f c7 /1
    assert!(err.contains("instruction bytes 48 0f c7 0f"), "{err}");
}

#[test]
fn i8042_reset_exits_with_code_3() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--cmdline", "reset"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("guest requested a reset"));
}

#[test]
fn guest_failure_status_exits_with_code_6() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--cmdline", "exit 9"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("status 9"), "{}", stderr(&out));
}

#[test]
fn serial_to_file() {
    let fx = Fixture::create();
    let log = fx.path("serial.log");
    let arg = format!("file={}", log.display());
    let out = run_guest(&fx, &["--cmdline", "count 3 0", "--serial", &arg]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "",
        "nothing on stdout when serial goes to a file"
    );
    let text = std::fs::read_to_string(&log).expect("serial log");
    assert_eq!(text, "tick 0\ntick 1\ntick 2\ncount: done\n");
}

/// Starts `vireo` with the test guest running `scenario` and its console on
/// a unix socket at `sock`; returns the child and a connected stream.
fn spawn_with_socket_console(
    fx: &Fixture,
    sock: &std::path::Path,
    scenario: &str,
) -> (Running, UnixStream) {
    let serial = format!("unix={}", sock.display());
    let child = spawn_guest(fx, &["--cmdline", scenario, "--serial", &serial]);
    let child = Running::new(child);
    wait_for_path(sock, Duration::from_secs(20));
    let stream = UnixStream::connect(sock).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    (child, stream)
}

#[test]
fn serial_input_over_unix_socket_reaches_the_guest() {
    let fx = Fixture::create();
    let sock = fx.path("serial.sock");
    let (child, stream) = spawn_with_socket_console(&fx, &sock, "echo");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).expect("ready line");
    assert_eq!(
        line, "echo: ready\n",
        "output before connecting is replayed"
    );
    // More than the 64-byte FIFO in one write: nothing may be dropped.
    let long = "x".repeat(100);
    writer
        .write_all(format!("hello vireo\n{long}\nquit\n").as_bytes())
        .expect("send");
    let mut got = Vec::new();
    for _ in 0..3 {
        line.clear();
        reader.read_line(&mut line).expect("echo line");
        got.push(line.clone());
    }
    assert_eq!(
        got,
        vec![
            "echo: hello vireo\n".to_string(),
            format!("echo: {long}\n"),
            "echo: quit\n".to_string()
        ]
    );
    let out = child.wait_within(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!sock.exists(), "the socket is removed when the VM ends");
}

#[test]
fn launch_from_a_json_spec() {
    let fx = Fixture::create();
    let spec = fx.path("spec.json");
    let log = fx.path("serial.log");
    let json = serde_json_spec(&fx.guest, &log);
    std::fs::write(&spec, json).expect("spec");
    let mut cmd = vireo();
    cmd.arg("launch").arg("--spec").arg(&spec);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("memory: 32 MiB"), "{text}");
}

fn serde_json_spec(kernel: &std::path::Path, log: &std::path::Path) -> String {
    format!(
        r#"{{"vcpus":1,"memory_mib":32,
            "payload":{{"kernel":"{}","cmdline":"hello"}},
            "serial":{{"mode":"file","path":"{}"}}}}"#,
        kernel.display(),
        log.display()
    )
}

#[test]
fn guest_enumerates_pci_through_ports_and_ecam() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--cmdline", "pci"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("pci: 00:0.0 id 0x000000000d578086 class 0x0000000000060000"),
        "{text}"
    );
    assert!(text.contains("port and ECAM access agree"), "{text}");
}

/// Runs the `idle` guest with its console on a socket, closes the test's
/// end of vireo's stderr if `close_stderr`, sends `signal` once the guest is
/// ready, and returns the output after checking that vireo exited with
/// `code` and removed the socket.
fn signal_idle_guest(signal: libc::c_int, close_stderr: bool, code: i32) -> std::process::Output {
    let fx = Fixture::create();
    let sock = fx.path("console.sock");
    let (mut child, stream) = spawn_with_socket_console(&fx, &sock, "idle");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("ready line");
    assert_eq!(line, "idle: ready\n");
    if close_stderr {
        drop(child.child().stderr.take());
    }
    send_signal(&mut child, signal);
    let out = child.wait_within(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
    assert!(!sock.exists(), "console socket removed");
    out
}

#[test]
fn sigterm_stops_a_guest_without_acpi_at_once_and_cleans_up() {
    // A guest with no power button to press has no graceful way to stop: SIGTERM stopping it is
    // its normal shutdown, status 0 (as KubeVirt counts a destroyed domain without ACPI).
    let out = signal_idle_guest(libc::SIGTERM, false, 0);
    let err = stderr(&out);
    assert!(err.contains("not booted with ACPI"), "{err}");
}

#[test]
fn sigterm_still_stops_the_vm_after_stderr_is_closed() {
    // A log line that cannot be written (the reader of stderr is gone) used
    // to panic the signal thread inside tracing-subscriber, and SIGTERM was
    // then ignored with the guest still running.
    signal_idle_guest(libc::SIGTERM, true, 0);
}

#[test]
fn sigint_and_sighup_are_forced_stops_with_code_8() {
    for signal in [libc::SIGINT, libc::SIGHUP] {
        let out = signal_idle_guest(signal, false, 8);
        let err = stderr(&out);
        assert!(err.contains("VM exited abnormally"), "{err}");
        assert!(err.contains("had not powered off"), "{err}");
    }
}

#[test]
fn a_migration_target_refuses_to_boot_with_code_9() {
    let fx = Fixture::create();
    let spec = fx.path("spec.json");
    let log = fx.path("serial.log");
    std::fs::write(&spec, serde_json_spec(&fx.guest, &log)).expect("spec");
    let mut cmd = vireo();
    cmd.arg("launch")
        .arg("--spec")
        .arg(&spec)
        .env("VIREO_MIGRATION_ROLE", "target");
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(err.contains("live-migration target"), "{err}");
    assert!(
        !log.exists(),
        "no guest ran: its serial log was never opened"
    );
    // Any other role is an error, not a guess.
    let mut cmd = vireo();
    cmd.arg("launch")
        .arg("--spec")
        .arg(&spec)
        .env("VIREO_MIGRATION_ROLE", "sauce");
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("VIREO_MIGRATION_ROLE"),
        "{}",
        stderr(&out)
    );
    assert!(!log.exists());
}

#[test]
fn launch_refuses_another_spec_version_by_name() {
    let fx = Fixture::create();
    let spec = fx.path("spec.json");
    let log = fx.path("serial.log");
    let json = serde_json_spec(&fx.guest, &log).replacen('{', r#"{"version":2,"vnc":{},"#, 1);
    std::fs::write(&spec, json).expect("spec");
    let mut cmd = vireo();
    cmd.arg("launch").arg("--spec").arg(&spec);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("launch spec version 2 is not supported"),
        "{err}"
    );
    assert!(!log.exists());
}
