//! `vireo launch` as a pod's launcher runs it, under real KVM: a unix-socket console that also
//! copies the guest's output to stdout (the pod's log), and a guest reset that boots the VM
//! again in the same process instead of ending it.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Writes `spec` (JSON) into the fixture and returns `vireo launch --spec` for it.
fn launch(fx: &Fixture, spec: &serde_json::Value) -> std::process::Command {
    let path = fx.path("spec.json");
    std::fs::write(&path, spec.to_string()).expect("write spec");
    let mut cmd = vireo();
    cmd.arg("launch").arg("--spec").arg(&path);
    cmd
}

/// Reads `client` until it has given `n` complete lines (or fails after `limit`).
fn socket_lines(client: &mut UnixStream, n: usize, limit: Duration) -> Vec<String> {
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.iter().filter(|&&b| b == b'\n').count() < n {
        assert!(
            start.elapsed() < limit,
            "only {:?} from the socket after {limit:?}",
            String::from_utf8_lossy(&got)
        );
        match client.read(&mut buf) {
            Ok(0) => panic!("the console closed the connection"),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&got)
        .lines()
        .take(n)
        .map(str::to_owned)
        .collect()
}

#[test]
fn launch_with_serial_stdout_shows_the_guest_on_stdout_and_on_the_socket() {
    let fx = Fixture::create();
    let sock = fx.path("serial.sock");
    let spec = serde_json::json!({
        "vcpus": 1, "memory_mib": 64,
        "payload": {"kernel": fx.guest, "cmdline": "count 1000000 4000000"},
        "serial": {"mode": "unix", "path": sock, "stdout": true},
    });
    let mut proc = Collected::spawn(launch(&fx, &spec));
    wait_for_path(&sock, Duration::from_secs(20));
    let mut client = UnixStream::connect(&sock).expect("connect to the serial socket");

    let expected: Vec<String> = (0..20).map(|i| format!("tick {i}")).collect();
    // The client connected after the guest started: what it missed is replayed to it.
    let from_socket = socket_lines(&mut client, 20, Duration::from_secs(30));
    assert_eq!(from_socket, expected, "the socket's client");
    proc.wait_for_lines(20, Duration::from_secs(30));
    assert_eq!(proc.lines()[..20], expected, "vireo's stdout");

    // The test guest has no ACPI: SIGTERM stopping it is its normal shutdown.
    send_signal(&mut proc.running, libc::SIGTERM);
    let (status, lines, logs) = proc.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(lines.len() >= 20, "{lines:?}");
    assert!(!sock.exists(), "the serial socket outlived vireo");
}

/// How often the test guest's `reset` scenario has started in the serial log at `log`.
fn boots(log: &Path) -> usize {
    read(log).matches("reset: i8042 command 0xfe\n").count()
}

#[test]
fn launch_boots_again_in_place_when_the_guest_resets_and_sigterm_still_stops_it() {
    let fx = Fixture::create();
    let log = fx.path("serial.log");
    let api = fx.path("api.sock");
    let spec = serde_json::json!({
        "vcpus": 1, "memory_mib": 32,
        "payload": {"kernel": fx.guest, "cmdline": "reset"},
        "serial": {"mode": "file", "path": log},
        "api_socket": api,
    });
    let mut proc = Collected::spawn(launch(&fx, &spec));
    wait_until(
        "the guest's first line, twice in one log",
        Duration::from_secs(30),
        || boots(&log) >= 2,
    );
    // Each boot serves the API at the same path again; a boot that could not would end vireo.
    wait_until(
        "a third boot (after re-creating both sockets twice)",
        Duration::from_secs(30),
        || boots(&log) >= 3,
    );
    assert!(
        proc.running.child().try_wait().expect("try_wait").is_none(),
        "vireo launch ended on a guest reset: {}",
        proc.logs()
    );
    assert!(
        proc.logs().contains("guest reset: booting again"),
        "{}",
        proc.logs()
    );

    send_signal(&mut proc.running, libc::SIGTERM);
    let (status, _, logs) = proc.finish(Duration::from_secs(20));
    eprintln!("{} boots; logs:\n{logs}", boots(&log));
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(!api.exists(), "the API socket outlived vireo");
    assert!(
        !read(&log).contains("still running (unexpected)"),
        "{}",
        read(&log)
    );
}

#[test]
fn vireo_run_still_ends_on_a_guest_reset_with_status_3() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--cmdline", "reset", "--serial", "off"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!stderr(&out).contains("booting again"), "{}", stderr(&out));
}

/// Threads of the process `pid` right now.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's tasks")
        .count()
}

/// Connects to the serial socket at `sock` and reads until the console ends the stream: what
/// one boot's client got, or `None` if this attempt reached no live console.
fn one_boots_output(sock: &Path) -> Option<String> {
    let mut client = UnixStream::connect(sock).ok()?;
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let mut got = Vec::new();
    match client.read_to_end(&mut got) {
        Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("the console did not end the stream of a rebooted VM: {e}"),
    }
}

#[test]
fn reboots_in_place_end_each_boots_console_and_leak_no_threads() {
    let fx = Fixture::create();
    let sock = fx.path("serial.sock");
    let spec = serde_json::json!({
        "vcpus": 1, "memory_mib": 32,
        "payload": {"kernel": fx.guest, "cmdline": "reset"},
        "serial": {"mode": "unix", "path": sock, "stdout": true},
    });
    let mut proc = Collected::spawn(launch(&fx, &spec));
    proc.wait_for_lines(3, Duration::from_secs(30));

    // A client of one boot gets that boot's output, then the end of the stream when the boot
    // ends (the next boot has a new socket at the same path).
    let mut seen = None;
    for _ in 0..100 {
        if let Some(text) = one_boots_output(&sock) {
            if text.contains("reset: i8042 command 0xfe\n") {
                seen = Some(text);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let text = seen.expect("a client got one boot's output and its end");
    assert!(!text.contains("unexpected"), "{text}");

    let pid = proc.running.child().id();
    let boots = proc.line_count();
    let before = threads(pid);
    proc.wait_for_lines(boots + 50, Duration::from_secs(60));
    let after = threads(pid);
    assert!(
        after <= before + 8,
        "{before} threads before 50 more boots, {after} after: each boot leaves threads behind"
    );
    assert!(
        proc.lines()
            .iter()
            .all(|l| l == "reset: i8042 command 0xfe"),
        "stdout has only the guest's lines"
    );

    send_signal(&mut proc.running, libc::SIGTERM);
    let (status, _, logs) = proc.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(!sock.exists(), "the serial socket outlived vireo");
}

#[test]
fn the_readiness_endpoint_answers_200_only_while_the_vm_runs_and_no_stuck_client_holds_it() {
    let fx = Fixture::create();
    let api = fx.path("api.sock");
    let spec = serde_json::json!({
        "vcpus": 1, "memory_mib": 64,
        "payload": {"kernel": fx.guest, "cmdline": "idle"},
        "serial": {"mode": "off"},
        "api_socket": api,
    });
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut cmd = launch(&fx, &spec);
    cmd.arg("--ready-listen").arg(format!("127.0.0.1:{port}"));
    let mut proc = Collected::spawn(cmd);
    let url = format!("http://127.0.0.1:{port}/readyz");
    let start = Instant::now();
    while curl_get(&url).0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(20), "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(curl_get(&url), (200, "ready\n".to_owned()));

    // Clients that connect and say nothing do not hold up a prober.
    let stuck: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    let t = Instant::now();
    assert_eq!(curl_get(&url).0, 200);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    drop(stuck);

    // Paused: 503 with the reason; resumed: 200.
    assert_eq!(curl_body(&api, "PUT", "/api/v1/vm.pause", None).0, 204);
    let (code, body) = curl_get(&url);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("Paused"), "{body}");
    assert_eq!(curl_body(&api, "PUT", "/api/v1/vm.resume", None).0, 204);
    assert_eq!(curl_get(&url).0, 200);

    // Other paths and non-HTTP bytes get errors, and the endpoint goes on.
    assert_eq!(curl_get(&format!("http://127.0.0.1:{port}/other")).0, 404);
    {
        use std::io::Write;
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        raw.write_all(b"\x16\x03\x01 not http\r\n\r\n")
            .expect("write");
        let mut answer = String::new();
        let _ = raw.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    assert_eq!(curl_get(&url).0, 200);

    send_signal(&mut proc.running, libc::SIGTERM);
    let (status, _, logs) = proc.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{logs}");
}

#[test]
fn ready_listen_without_an_api_socket_is_refused_with_the_reason() {
    let fx = Fixture::create();
    let spec = serde_json::json!({
        "vcpus": 1, "memory_mib": 64,
        "payload": {"kernel": fx.guest, "cmdline": "idle"},
        "serial": {"mode": "off"},
    });
    let out = launch(&fx, &spec)
        .args(["--ready-listen", "127.0.0.1:0"])
        .output()
        .expect("vireo");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--ready-listen needs the launch spec's api_socket"),
        "{err}"
    );
}
