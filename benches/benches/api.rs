//! Control API latency: a `vireo run --api-socket` with the idle test guest, driven over its
//! unix socket by a minimal HTTP/1.1 client (one connection per request, as `curl` does).
//! Prints medians of `vm.info` round trips and of pause and resume requests.
//!
//! `cargo build --release -p vireo-launcher && cargo bench -p vireo-benches --bench api`

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vireo_benches::{median, vireo_binary};

const INFO_RUNS: usize = 200;
const PAUSE_RUNS: usize = 50;

/// One request on a fresh connection; the answer's status code.
fn request(socket: &Path, method: &str, path: &str) -> u16 {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// Milliseconds each call of `f` takes, `runs` times.
fn timed(runs: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("api: benchmark");
        return;
    }
    let vireo = vireo_binary().unwrap_or_else(|e| {
        eprintln!("api bench: {e}");
        std::process::exit(1);
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let guest = dir.path().join("guest.elf");
    vireo_testguest::write_to(&guest).expect("write guest");
    let socket = dir.path().join("api.sock");
    let mut child = Command::new(&vireo)
        .args([
            "run",
            "--memory",
            "512M",
            "--cmdline",
            "idle",
            "--serial",
            "off",
        ])
        .arg("--api-socket")
        .arg(&socket)
        .arg("--kernel")
        .arg(&guest)
        .env("VIREO_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn vireo");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no API socket");
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut info = timed(INFO_RUNS, || {
        assert_eq!(request(&socket, "GET", "/api/v1/vm.info"), 200);
    });
    let (mut pause, mut resume) = (Vec::new(), Vec::new());
    for _ in 0..PAUSE_RUNS {
        pause.extend(timed(1, || {
            assert_eq!(request(&socket, "PUT", "/api/v1/vm.pause"), 204);
        }));
        resume.extend(timed(1, || {
            assert_eq!(request(&socket, "PUT", "/api/v1/vm.resume"), 204);
        }));
    }
    assert_eq!(request(&socket, "PUT", "/api/v1/vmm.shutdown"), 204);
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(8), "an API stop is a forced stop");

    println!("vireo control API, 512 MiB idle guest, one connection per request (median)");
    println!("| request                         | runs | median    |");
    println!("|---------------------------------|------|-----------|");
    for (what, runs, samples) in [
        ("GET vm.info round trip", INFO_RUNS, &mut info),
        ("PUT vm.pause (vCPUs parked)", PAUSE_RUNS, &mut pause),
        ("PUT vm.resume", PAUSE_RUNS, &mut resume),
    ] {
        println!("| {what:<31} | {runs:>4} | {:>6.3} ms |", median(samples));
    }
}
