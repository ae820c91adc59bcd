//! `vireo launch --forward LISTEN=UNIX_PATH` under real KVM: the serial console and the
//! control API of a running VM reached over local TCP ports (as `kubectl port-forward`
//! would), a forward to a socket that does not exist closing its connections, the
//! connection limit (against the test's own echo server), and bad values refused with the
//! reason.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::*;

/// A TCP port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Reads `conn` until what arrived contains `want` (fails after `limit`).
fn read_until(conn: &mut TcpStream, want: &str, limit: Duration) -> String {
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(want) {
        assert!(
            start.elapsed() < limit,
            "no {want:?} within {limit:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
        match conn.read(&mut buf) {
            Ok(0) => panic!(
                "the forward closed the connection; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the peer closes `conn` (EOF or reset) within `limit` without sending anything.
fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    conn.set_read_timeout(Some(limit)).expect("read timeout");
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Serves `path` from a background thread: each connection gets back what it sends, and is
/// held until its client half-closes.
fn echo_server(path: &std::path::Path) {
    let listener = UnixListener::bind(path).expect("bind the echo socket");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let Ok(mut reader) = conn.try_clone() else {
                    return;
                };
                let _ = std::io::copy(&mut reader, &mut conn);
            });
        }
    });
}

/// Whether a line written to `conn` comes back within 5 s.
fn echoes(conn: &mut TcpStream) -> bool {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    if conn.write_all(b"ping\n").is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 5 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got == b"ping\n"
}

#[test]
fn serial_console_and_api_through_tcp_forwards() {
    let fx = Fixture::create();
    let (api, serial) = (fx.path("api.sock"), fx.path("serial.sock"));
    let missing = fx.path("not-there.sock");
    let spec = serde_json::json!({
        "vcpus": 1, "memory_mib": 64,
        "payload": {"kernel": fx.guest, "cmdline": "echo"},
        "serial": {"mode": "unix", "path": serial},
        "api_socket": api,
    });
    let spec_path = fx.path("spec.json");
    std::fs::write(&spec_path, spec.to_string()).expect("write spec");
    let echo = fx.path("echo.sock");
    echo_server(&echo);
    let (api_port, serial_port, missing_port, echo_port) =
        (free_port(), free_port(), free_port(), free_port());
    let mut cmd = vireo();
    cmd.arg("launch").arg("--spec").arg(&spec_path);
    for (port, path) in [
        (api_port, &api),
        (serial_port, &serial),
        (missing_port, &missing),
        (echo_port, &echo),
    ] {
        cmd.arg("--forward")
            .arg(format!("127.0.0.1:{port}={}", path.display()));
    }
    let mut proc = Collected::spawn(cmd);
    wait_for_path(&serial, Duration::from_secs(20));
    wait_for_path(&api, Duration::from_secs(20));

    // The serial console: the guest's greeting (replayed), then an echo of what we type.
    let mut console = TcpStream::connect(("127.0.0.1", serial_port)).expect("connect");
    read_until(&mut console, "echo: ready\n", Duration::from_secs(20));
    console.write_all(b"hello\n").expect("type");
    read_until(&mut console, "echo: hello\n", Duration::from_secs(10));

    // The control API, with a real HTTP client.
    let info_url = format!("http://127.0.0.1:{api_port}/api/v1/vm.info");
    let (code, body) = curl_get(&info_url);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["state"], "Running", "{body}");

    // A forward whose socket does not exist closes its connections at once.
    let mut conn = TcpStream::connect(("127.0.0.1", missing_port)).expect("connect");
    assert!(closed_within(&mut conn, Duration::from_secs(5)));

    // At most 16 connections per forward: the 17th is closed; the others still work, and
    // once they are gone the forward serves again. (The target is this test's own echo
    // server, which holds any number of connections: the API server has a cap of its own.)
    let mut held: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(("127.0.0.1", echo_port)).expect("connect"))
        .collect();
    for conn in &mut held {
        assert!(echoes(conn), "a connection within the limit is relayed");
    }
    let mut extra = TcpStream::connect(("127.0.0.1", echo_port)).expect("connect");
    assert!(closed_within(&mut extra, Duration::from_secs(5)));
    assert!(echoes(&mut held[0]), "the held connections still work");
    drop(held);
    wait_until("the forward serves again", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", echo_port)).is_ok_and(|mut c| echoes(&mut c))
    });

    // The console connection was not disturbed by any of it.
    console.write_all(b"again\n").expect("type");
    read_until(&mut console, "echo: again\n", Duration::from_secs(10));

    send_signal(&mut proc.running, libc::SIGTERM);
    let (status, _, logs) = proc.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{logs}");
}

#[test]
fn bad_forward_values_are_usage_errors_with_the_reason() {
    let fx = Fixture::create();
    for (value, reason) in [
        ("127.0.0.1:8101", "is not LISTEN=UNIX_PATH"),
        (
            "localhost:8101=/run/api.sock",
            "is not a TCP address HOST:PORT",
        ),
        ("127.0.0.1:8101=api.sock", "is not an absolute path"),
    ] {
        let out = vireo()
            .arg("launch")
            .arg("--spec")
            .arg(fx.path("spec.json"))
            .args(["--forward", value])
            .output()
            .expect("vireo");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {err}");
        assert!(
            err.contains("--forward") && err.contains(reason),
            "{value}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn a_forward_that_cannot_bind_fails_at_startup() {
    let fx = Fixture::create();
    let spec = serde_json::json!({
        "vcpus": 1, "memory_mib": 64,
        "payload": {"kernel": fx.guest, "cmdline": "idle"},
        "serial": {"mode": "off"},
    });
    let spec_path = fx.path("spec.json");
    std::fs::write(&spec_path, spec.to_string()).expect("write spec");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut cmd = vireo();
    cmd.arg("launch")
        .arg("--spec")
        .arg(&spec_path)
        .arg("--forward")
        .arg(format!("127.0.0.1:{port}=/run/api.sock"));
    let out = run_with_timeout(cmd, Duration::from_secs(20));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}
