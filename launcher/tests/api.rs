//! The control API under real KVM: `vireo run --api-socket` with the test guest counting on
//! its serial console, driven by curl (a real HTTP client) and by raw sockets for malformed
//! requests. Checks that pause really stops the guest and resume loses nothing, that every
//! error has its status, that a stalled client delays nobody, and that an API stop is a forced
//! stop (exit 8) that removes the socket.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `count N GAP`: about one line per 2 ms here, for far longer than any test runs.
const COUNT: &str = "count 1000000 4000000";

/// A counting guest with its API socket, its serial lines as they arrive and its logs.
struct Guest {
    proc: Collected,
    socket: PathBuf,
    _fx: Fixture,
}

impl Guest {
    fn start(extra: &[&str]) -> Self {
        let fx = Fixture::create();
        let socket = fx.path("api.sock");
        let mut cmd = vireo();
        cmd.arg("run")
            .arg("--kernel")
            .arg(&fx.guest)
            .args(["--cmdline", COUNT, "--memory", "64M", "--api-socket"])
            .arg(&socket)
            .args(extra);
        let proc = Collected::spawn(cmd);
        wait_for_path(&socket, Duration::from_secs(20));
        let guest = Self {
            proc,
            socket,
            _fx: fx,
        };
        guest.wait_for_lines(5, Duration::from_secs(20));
        guest
    }

    fn line_count(&self) -> usize {
        self.proc.line_count()
    }

    fn wait_for_lines(&self, n: usize, limit: Duration) {
        self.proc.wait_for_lines(n, limit)
    }

    /// `curl --unix-socket` on `path` with `method`: (status, body).
    fn curl(&self, method: &str, path: &str) -> (u16, String) {
        curl(&self.socket, method, path, &[])
    }
}

fn error_of(body: &str) -> String {
    json(body)["error"]
        .as_str()
        .expect("an error string")
        .to_owned()
}

/// Sends `raw` on a fresh connection and reads the answer until the server closes.
fn raw(socket: &Path, raw: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(raw).expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    answer
}

/// The numbers of `tick N` lines, checking that every line is one.
fn ticks(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| {
            l.strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a tick line: {l:?}"))
        })
        .collect()
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it_with_nothing_lost() {
    let g = Guest::start(&[]);
    let (code, body) = g.curl("PUT", "/api/v1/vm.pause");
    assert_eq!((code, body.as_str()), (204, ""));
    // Output the guest wrote before it paused may still be on its way through the console.
    std::thread::sleep(Duration::from_millis(100));
    let paused_at = g.line_count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(g.line_count(), paused_at, "the guest printed while paused");
    let info = json(&g.curl("GET", "/api/v1/vm.info").1);
    assert_eq!(info["state"], "Paused");

    let (code, body) = g.curl("PUT", "/api/v1/vm.pause");
    assert_eq!(code, 409, "{body}");
    assert_eq!(error_of(&body), "cannot pause a VM that is paused");

    assert_eq!(g.curl("PUT", "/api/v1/vm.resume").0, 204);
    g.wait_for_lines(paused_at + 50, Duration::from_secs(20));
    let (code, body) = g.curl("PUT", "/api/v1/vm.resume");
    assert_eq!(code, 409, "{body}");
    assert_eq!(error_of(&body), "cannot resume a VM that is running");
    assert_eq!(
        json(&g.curl("GET", "/api/v1/vm.info").1)["state"],
        "Running"
    );

    let lines = g.proc.lines();
    let numbers = ticks(&lines);
    let expected: Vec<u64> = (0..numbers.len() as u64).collect();
    assert!(
        numbers == expected,
        "ticks lost or repeated around the pause: {numbers:?}"
    );
}

#[test]
fn info_and_counters_describe_the_vm_and_its_devices() {
    let fx = Fixture::create();
    let disk = fx.path("d.raw");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 20))
        .expect("disk image");
    let disk_arg = format!("path={}", disk.display());
    let g = Guest::start(&["--disk", &disk_arg]);

    let (code, body) = g.curl("GET", "/api/v1/vmm.ping");
    assert_eq!(code, 200, "{body}");
    let ping = json(&body);
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));
    let mut running = g.proc.running;
    assert_eq!(ping["pid"], running.child().id());

    let info = json(&curl(&g.socket, "GET", "/api/v1/vm.info", &[]).1);
    assert_eq!(info["state"], "Running");
    assert_eq!(info["config"]["payload"]["cmdline"], COUNT);
    assert_eq!(info["config"]["memory_mib"], 64);
    assert_eq!(
        info["config"]["api_socket"],
        g.socket.to_str().expect("utf-8")
    );
    assert_eq!(
        info["devices"],
        serde_json::json!([{"id": "disk0", "kind": "virtio-blk", "bdf": "0000:00:01.0"}])
    );
    assert_eq!(info["memory"]["guest_bytes"], 64 << 20);
    let rss = info["memory"]["process_resident_bytes"]
        .as_u64()
        .expect("rss");
    let guest = info["memory"]["guest_resident_bytes"]
        .as_u64()
        .expect("guest rss");
    // The guest's image and the pages it touched, out of 64 MiB it mostly never touches.
    assert!(guest > 16 << 10 && guest < 16 << 20, "{info}");
    assert!(rss > guest, "{info}");

    let (code, body) = curl(&g.socket, "GET", "/api/v1/vm.counters", &[]);
    assert_eq!(code, 200, "{body}");
    let counters = json(&body);
    let written = counters["serial"]["written_bytes"]
        .as_u64()
        .expect("serial counters");
    assert!(written >= 5 * "tick 0\n".len() as u64, "{counters}");
    assert!(counters["disk0"].is_object(), "{counters}");
    for (_, c) in counters.as_object().expect("an object") {
        assert!(
            c.as_object().expect("counters").values().all(Value::is_u64),
            "{counters}"
        );
    }
}

#[test]
fn bad_requests_get_their_status_and_a_one_line_reason() {
    let g = Guest::start(&[]);
    let (code, body) = g.curl("GET", "/api/v1/vm.nothing");
    assert_eq!(
        (code, error_of(&body).as_str()),
        (404, "no endpoint /api/v1/vm.nothing")
    );
    let (code, body) = g.curl("GET", "/api/v1/vm.pause");
    assert_eq!(code, 405, "{body}");
    assert_eq!(error_of(&body), "/api/v1/vm.pause takes PUT, not GET");
    // The test guest boots without ACPI: there is no power button to press.
    let (code, body) = g.curl("PUT", "/api/v1/vm.power-button");
    assert_eq!(code, 409, "{body}");
    assert!(error_of(&body).contains("no power button"), "{body}");
    let (code, body) = curl(
        &g.socket,
        "PUT",
        "/api/v1/vm.pause",
        &["--data", "pause now"],
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        error_of(&body).starts_with("the body is not JSON"),
        "{body}"
    );

    let answer = raw(&g.socket, b"GARBAGE\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    let answer = raw(
        &g.socket,
        b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n",
    );
    assert!(
        answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{answer}"
    );
    let mut huge = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Pad: ".to_vec();
    huge.resize(70 * 1024, b'a');
    let answer = raw(&g.socket, &huge);
    assert!(
        answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{answer}"
    );
    let body = answer.split("\r\n\r\n").nth(1).expect("a body");
    assert_eq!(body.lines().count(), 1, "{answer}");
    // None of it disturbed the guest.
    assert_eq!(g.curl("PUT", "/api/v1/vm.pause").0, 204);
    assert_eq!(json(&g.curl("GET", "/api/v1/vm.info").1)["state"], "Paused");
}

#[test]
fn a_stalled_client_delays_neither_other_clients_nor_the_guest() {
    let g = Guest::start(&[]);
    let mut stalled = UnixStream::connect(&g.socket).expect("connect");
    stalled
        .write_all(b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Le")
        .expect("half a request");
    let before = g.line_count();
    let start = Instant::now();
    let (code, body) = g.curl("GET", "/api/v1/vmm.ping");
    let took = start.elapsed();
    assert_eq!(code, 200, "{body}");
    assert!(
        took < Duration::from_secs(1),
        "ping took {took:?} beside a stalled client"
    );
    g.wait_for_lines(before + 100, Duration::from_secs(10));
    // The stalled request never completed, so the guest was never paused.
    assert_eq!(
        json(&g.curl("GET", "/api/v1/vm.info").1)["state"],
        "Running"
    );
}

#[test]
fn vm_shutdown_is_a_forced_stop_and_removes_the_socket() {
    let g = Guest::start(&[]);
    let (code, body) = g.curl("PUT", "/api/v1/vm.shutdown");
    assert_eq!((code, body.as_str()), (204, ""));
    let socket = g.socket.clone();
    let (status, _, logs) = g.proc.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(8), "{logs}");
    assert!(!socket.exists(), "the socket outlived vireo");
    assert!(logs.contains("control API: stopping the VM"), "{logs}");
}

#[test]
fn vireo_remote_drives_a_launched_vm_and_shutdown_vmm_ends_it() {
    let fx = Fixture::create();
    let socket = fx.path("api.sock");
    let spec = fx.path("spec.json");
    let json_spec = serde_json::json!({
        "vcpus": 1, "memory_mib": 64,
        "payload": {"kernel": fx.guest, "cmdline": COUNT},
        "serial": {"mode": "off"},
        "api_socket": socket,
    });
    std::fs::write(&spec, json_spec.to_string()).expect("spec");
    let child = vireo()
        .arg("launch")
        .arg("--spec")
        .arg(&spec)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vireo launch");
    let running = Running::new(child);
    wait_for_path(&socket, Duration::from_secs(20));
    let remote = |action: &str| {
        let mut c = vireo();
        c.arg("remote").arg("--api-socket").arg(&socket).arg(action);
        run_with_timeout(c, Duration::from_secs(30))
    };

    let out = remote("ping");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(json(&stdout(&out))["pid"].is_u64(), "{}", stdout(&out));
    let out = remote("pause");
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(0), ""));
    let out = remote("info");
    assert_eq!(json(&stdout(&out))["state"], "Paused");
    let out = remote("pause");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("409: cannot pause a VM that is paused"),
        "{}",
        stderr(&out)
    );
    assert_eq!(remote("counters").status.code(), Some(0));

    let out = remote("shutdown-vmm");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = running.wait_within(Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(!socket.exists());
    let out = remote("ping");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

#[test]
fn a_stop_by_sigterm_is_not_counted_as_an_api_stop_and_removes_the_socket() {
    let mut g = Guest::start(&[]);
    // The test guest has no ACPI, so SIGTERM stopping it at once is its normal shutdown (0);
    // serving the API must not turn that into a forced stop.
    send_signal(&mut g.proc.running, libc::SIGTERM);
    let socket = g.socket.clone();
    let (status, _, logs) = g.proc.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(!socket.exists(), "the socket outlived vireo");
    assert!(!logs.contains("control API: stopping"), "{logs}");
}
