//! Snapshot and restore: how long `vm.snapshot` holds a guest (512 MiB with 64 MiB touched,
//! and 2 GiB guests), what its memory file allocates, and restore — process start → the
//! guest's first serial byte after `vireo restore` — next to `vireo run`'s process start →
//! first byte, measured in the same run. Medians of RUNS runs.
//!
//! The guests are the test guest's `churn PAGES` (rewrites a working set of PAGES 4 KiB pages,
//! so exactly that much memory is touched) for snapshots, and `spew` (prints without pause)
//! for restores, so the first byte after a restore comes as soon as the vCPU runs.
//!
//! `cargo build --release -p vireo-launcher && cargo bench -p vireo-benches --bench snapshot`

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vireo_benches::{api_request, median, vireo_binary};

const RUNS: usize = 20;
const TARGET_COLD_MS: f64 = 3.0;
const TARGET_RESTORE_RATIO: f64 = 1.2;
const TARGET_SNAPSHOT_MS: f64 = 100.0;

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reads `child`'s stdout until `needle` has appeared.
fn read_until(child: &mut Child, needle: &str) {
    let out = child.stdout.as_mut().expect("stdout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = out.read(&mut buf).expect("read");
        assert!(n > 0, "the guest ended before printing {needle:?}");
        seen.extend_from_slice(&buf[..n]);
        if seen.len() > 1 << 20 {
            seen.drain(..seen.len() - 4096);
        }
    }
}

fn spawn(vireo: &Path, args: &[&str]) -> Child {
    Command::new(vireo)
        .args(args)
        .env("VIREO_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vireo")
}

/// Milliseconds from spawning `args` to the first byte on its stdout.
fn first_byte_ms(vireo: &Path, args: &[&str]) -> f64 {
    let start = Instant::now();
    let mut child = spawn(vireo, args);
    let mut byte = [0u8; 1];
    child
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut byte)
        .expect("first byte");
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let _ = child.kill();
    let _ = child.wait();
    ms
}

/// Milliseconds from spawning `/bin/true` to its exit: what starting any process costs here.
fn spawn_floor_ms() -> f64 {
    let start = Instant::now();
    let status = Command::new("/bin/true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("/bin/true");
    assert!(status.success());
    start.elapsed().as_secs_f64() * 1e3
}

struct SnapshotFigures {
    label: String,
    ms: f64,
    paused_ms: f64,
    allocated_mib: f64,
}

/// Runs `churn PAGES` in a guest of `memory`, waits until it has touched its whole working set,
/// and snapshots it RUNS times through the API (it keeps running between snapshots).
fn snapshot_figures(
    vireo: &Path,
    dir: &Path,
    guest: &Path,
    memory: &str,
    pages: u64,
) -> SnapshotFigures {
    let socket = dir.join(format!("snap-{memory}-{pages}.sock"));
    let cmdline = format!("churn {pages} {pages}");
    let mut child = spawn(
        vireo,
        &[
            "run",
            "--memory",
            memory,
            "--cmdline",
            &cmdline,
            "--kernel",
            guest.to_str().expect("utf-8"),
            "--api-socket",
            socket.to_str().expect("utf-8"),
        ],
    );
    wait_for(&socket);
    // The first line after the start line comes once every page has been written.
    read_until(&mut child, "churn i=");
    let snap = dir.join(format!("snap-{memory}-{pages}"));
    let body = format!(r#"{{"destination_url": "file://{}"}}"#, snap.display());
    let (mut total, mut paused) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let start = Instant::now();
        let (code, answer) = api_request(&socket, "PUT", "/api/v1/vm.snapshot", &body);
        total.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(code, 200, "{answer}");
        let paused_us = answer
            .split("\"paused_us\":")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<f64>().ok())
            .expect("paused_us");
        paused.push(paused_us / 1e3);
    }
    let meta = std::fs::metadata(snap.join("memory.bin")).expect("memory file");
    assert_eq!(
        api_request(&socket, "PUT", "/api/v1/vmm.shutdown", "").0,
        204
    );
    let _ = child.wait();
    SnapshotFigures {
        label: format!("{memory} guest, {} MiB touched", (pages * 4096) >> 20),
        ms: median(&mut total),
        paused_ms: median(&mut paused),
        allocated_mib: (meta.blocks() * 512) as f64 / (1 << 20) as f64,
    }
}

/// Snapshots a 512 MiB `spew` guest once, for the restore runs.
fn spew_snapshot(vireo: &Path, dir: &Path, guest: &Path) -> PathBuf {
    let socket = dir.join("spew.sock");
    let mut child = spawn(
        vireo,
        &[
            "run",
            "--memory",
            "512M",
            "--cmdline",
            "spew 1000000000000",
            "--kernel",
            guest.to_str().expect("utf-8"),
            "--api-socket",
            socket.to_str().expect("utf-8"),
        ],
    );
    wait_for(&socket);
    read_until(&mut child, "\n");
    let snap = dir.join("spew-snap");
    let body = format!(r#"{{"destination_url": "file://{}"}}"#, snap.display());
    assert_eq!(api_request(&socket, "PUT", "/api/v1/vm.pause", "").0, 204);
    let (code, answer) = api_request(&socket, "PUT", "/api/v1/vm.snapshot", &body);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        api_request(&socket, "PUT", "/api/v1/vmm.shutdown", "").0,
        204
    );
    let _ = child.wait();
    // The restored guest prints on the benchmark's stdout pipe, not the original's console.
    let spec = snap.join("config.json");
    let text = std::fs::read_to_string(&spec).expect("spec");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["serial"] = serde_json::json!({"mode": "stdio"});
    v["api_socket"] = serde_json::Value::Null;
    std::fs::write(&spec, v.to_string()).expect("write spec");
    snap
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("snapshot: benchmark");
        return;
    }
    let vireo = vireo_binary().unwrap_or_else(|e| {
        eprintln!("snapshot bench: {e}");
        std::process::exit(1);
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let guest = dir.path().join("guest.elf");
    vireo_testguest::write_to(&guest).expect("write guest");
    let guest_arg = guest.to_str().expect("utf-8").to_owned();

    let snap = spew_snapshot(&vireo, dir.path(), &guest);
    let snap_arg = snap.to_str().expect("utf-8").to_owned();
    let cold_args = [
        "run",
        "--memory",
        "512M",
        "--cmdline",
        "idle",
        "--kernel",
        &guest_arg,
    ];
    let lazy_args = ["restore", "--source", &snap_arg];
    let eager_args = ["restore", "--prefault", "--source", &snap_arg];
    // Interleaved, so drift on a shared host affects all three alike.
    let (mut cold, mut lazy, mut eager, mut floor) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        cold.push(first_byte_ms(&vireo, &cold_args));
        lazy.push(first_byte_ms(&vireo, &lazy_args));
        eager.push(first_byte_ms(&vireo, &eager_args));
        floor.push(spawn_floor_ms());
    }
    let (cold, lazy, eager) = (median(&mut cold), median(&mut lazy), median(&mut eager));
    let floor = median(&mut floor);

    let snapshots = [
        snapshot_figures(&vireo, dir.path(), &guest, "512M", 16384),
        snapshot_figures(&vireo, dir.path(), &guest, "2G", 16384),
        snapshot_figures(&vireo, dir.path(), &guest, "2G", 131072),
    ];

    println!("vireo snapshot and restore, {RUNS} runs each (median)");
    println!("| measurement                                        | median     | target        |");
    println!("|----------------------------------------------------|------------|---------------|");
    println!(
        "| floor: spawn /bin/true → its exit                  | {floor:>7.2} ms |               |"
    );
    println!(
        "| cold start: vireo run → first byte (512 MiB)       | {cold:>7.2} ms | ≤ {TARGET_COLD_MS} ms        |"
    );
    println!(
        "| restore (lazy): vireo restore → first byte (512 MiB) | {lazy:>7.2} ms | ≤ {:.2} ms (1.2×) |",
        cold * TARGET_RESTORE_RATIO
    );
    println!(
        "| restore (--prefault) → first byte (512 MiB)        | {eager:>7.2} ms |               |"
    );
    println!("| restore / cold start                               | {:>7.2} ×  | ≤ {TARGET_RESTORE_RATIO} ×        |", lazy / cold);
    for s in &snapshots {
        let target = if s.label.starts_with("512M") {
            format!("≤ {TARGET_SNAPSHOT_MS} ms")
        } else {
            String::new()
        };
        println!(
            "| vm.snapshot, {:<37} | {:>7.2} ms | {target:<13} |",
            s.label, s.ms
        );
        println!(
            "|   of which the guest was paused                    | {:>7.2} ms |               |",
            s.paused_ms
        );
        println!(
            "|   memory file allocated                            | {:>6.1} MiB |               |",
            s.allocated_mib
        );
    }
}
