//! virtio I/O benchmark: the test guest drives virtio-blk and virtio-net from
//! ring 3 under real KVM (its queue loop runs natively), next to the same
//! I/O done by the host directly on the same file. Prints a table.
//!
//! Run (as root for the network rows):
//! `cargo build --release -p vireo-launcher && cargo bench -p vireo-benches --bench virtio_io`
//!
//! Environment: `VIREO_BENCH_DIR` (default `/dev/shm`, so both sides hit the
//! page cache and the figure is the VMM's overhead, not the disk's),
//! `VIREO_BENCH_SCALE` (default 1; multiplies request counts).
//!
//! Guest side: `blk-bench 0 MODE BYTES QD COUNT REGION_MIB` keeps QD requests
//! in flight (EVENT_IDX) and the time between its `bench-start` and
//! `bench-done` lines is measured here. Host side: one thread doing
//! `pread`/`pwrite` of the same size at the same kind of offsets on the same
//! file. qcow2 images are fully allocated (converted from the raw one) so
//! reads hit data clusters, not holes.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use vireo_benches::vireo_binary;

const REGION_MIB: u64 = 256;
const QUEUE_DEPTH: u32 = 32;

struct Row {
    name: String,
    guest: f64,
    host: f64,
    unit: &'static str,
}

fn scale() -> u64 {
    std::env::var("VIREO_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// Runs vireo with the test guest and returns the seconds between the
/// guest's `bench-start` and `bench-done` lines, plus the done line.
fn guest_run(
    vireo: &Path,
    guest: &Path,
    cmdline: &str,
    extra: &[String],
    netns: Option<&str>,
) -> (f64, String) {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(vireo);
            c
        }
        None => Command::new(vireo),
    };
    cmd.args(["run", "--memory", "1G", "--cmdline", cmdline, "--kernel"])
        .arg(guest)
        .args(extra)
        .env("VIREO_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn vireo");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut start = None;
    let mut result = None;
    for line in out.lines() {
        let line = line.expect("guest output");
        if line.starts_with("bench-start") {
            start = Some(Instant::now());
        } else if line.starts_with("bench-done") {
            let t = start.map_or(f64::NAN, |s| s.elapsed().as_secs_f64());
            result = Some((t, line));
        } else if line.starts_with("FAIL") {
            eprintln!("guest: {line}");
        }
    }
    let status = child.wait().expect("wait vireo");
    match result {
        Some(r) if status.success() => r,
        _ => panic!("guest run `{cmdline}` failed ({status})"),
    }
}

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Host baseline: `count` synchronous requests of `bs` bytes; returns seconds.
fn host_run(path: &Path, write: bool, random: bool, bs: u64, count: u64, region_mib: u64) -> f64 {
    let f = File::options()
        .read(true)
        .write(write)
        .open(path)
        .expect("open image");
    let mut buf = vec![0x5au8; bs as usize];
    let blocks = (region_mib << 20) / bs;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let start = Instant::now();
    for i in 0..count {
        let block = if random {
            rng.next() % blocks
        } else {
            i % blocks
        };
        let off = block * bs;
        if write {
            f.write_all_at(&buf, off).expect("pwrite");
        } else {
            f.read_exact_at(&mut buf, off).expect("pread");
        }
    }
    start.elapsed().as_secs_f64()
}

fn make_images(dir: &Path) -> (PathBuf, PathBuf) {
    let raw = dir.join("bench.raw");
    let f = File::create(&raw).expect("create raw");
    let chunk = vec![0xa5u8; 1 << 20];
    for i in 0..REGION_MIB {
        f.write_all_at(&chunk, i << 20).expect("fill raw");
    }
    drop(f);
    let qcow2 = dir.join("bench.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .expect("qemu-img (apt install qemu-utils)");
    assert!(st.success(), "qemu-img convert failed");
    (raw, qcow2)
}

fn blk_rows(vireo: &Path, guest: &Path, rows: &mut Vec<Row>) {
    let base = std::env::var_os("VIREO_BENCH_DIR")
        .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
    let dir = tempfile::tempdir_in(&base).expect("bench dir");
    let (raw, qcow2) = make_images(dir.path());
    let s = scale();
    let cases: [(&str, &str, bool, bool, u64, u64); 4] = [
        (
            "4 KiB random read",
            "randread",
            false,
            true,
            4096,
            100_000 * s,
        ),
        (
            "4 KiB random write",
            "randwrite",
            true,
            true,
            4096,
            100_000 * s,
        ),
        (
            "1 MiB sequential read",
            "seqread",
            false,
            false,
            1 << 20,
            2_000 * s,
        ),
        (
            "1 MiB sequential write",
            "seqwrite",
            true,
            false,
            1 << 20,
            2_000 * s,
        ),
    ];
    // The same random read over a 16 MiB region: page-cache lookups then hit
    // the CPU caches, so the row shows the virtio path's own cost.
    let small = 16;
    let count = 300_000 * s;
    let disk = vec![
        "--disk".to_string(),
        format!("path={},format=raw", raw.display()),
    ];
    let cmd = |n: u64| format!("blk-bench 0 randread 4096 {QUEUE_DEPTH} {n} {small}");
    let _ = guest_run(vireo, guest, &cmd(count / 10), &disk, None);
    let (t, done) = guest_run(vireo, guest, &cmd(count), &disk, None);
    assert_eq!(
        field(&done, "errors"),
        0,
        "guest reported I/O errors: {done}"
    );
    let host_t = host_run(&raw, false, true, 4096, count, small);
    rows.push(Row {
        name: format!("raw 4 KiB random read, {small} MiB span"),
        guest: field(&done, "requests") as f64 / t,
        host: count as f64 / host_t,
        unit: "IOPS",
    });
    for (fmt, path) in [("raw", &raw), ("qcow2", &qcow2)] {
        for (label, mode, write, random, bs, count) in cases {
            let disk = vec![
                "--disk".to_string(),
                format!("path={},format={fmt}", path.display()),
            ];
            let cmdline = format!("blk-bench 0 {mode} {bs} {QUEUE_DEPTH} {count} {REGION_MIB}");
            // Warm the page cache and the guest's first touch of its buffers.
            let _ = guest_run(
                vireo,
                guest,
                &format!(
                    "blk-bench 0 {mode} {bs} {QUEUE_DEPTH} {} {REGION_MIB}",
                    count / 10
                ),
                &disk,
                None,
            );
            let (t, done) = guest_run(vireo, guest, &cmdline, &disk, None);
            let errors = field(&done, "errors");
            assert_eq!(errors, 0, "guest reported I/O errors: {done}");
            let n = field(&done, "requests");
            // The host does the same I/O on the file the guest used.
            let host_t = host_run(
                path_for_host(fmt, path, &raw),
                write,
                random,
                bs,
                count,
                REGION_MIB,
            );
            let (guest_v, host_v, unit) = if bs >= 1 << 20 {
                let mib = (n * bs) as f64 / (1 << 20) as f64;
                (
                    mib / t,
                    (count * bs) as f64 / (1 << 20) as f64 / host_t,
                    "MiB/s",
                )
            } else {
                (n as f64 / t, count as f64 / host_t, "IOPS")
            };
            rows.push(Row {
                name: format!("{fmt} {label}"),
                guest: guest_v,
                host: host_v,
                unit,
            });
        }
    }
}

/// The host baseline for qcow2 is the same I/O on the raw file with the same
/// data: the host has no qcow2 driver of its own to compare against.
fn path_for_host<'a>(fmt: &str, path: &'a Path, raw: &'a Path) -> &'a Path {
    if fmt == "qcow2" {
        raw
    } else {
        path
    }
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn net_rows(vireo: &Path, guest: &Path, rows: &mut Vec<Row>) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("net rows skipped: creating a network namespace and tap needs root");
        return;
    }
    let ns = Netns(format!("vireo-bench-{}", std::process::id()));
    let ip = |args: &[&str]| {
        let st = Command::new("ip")
            .args(["-n", &ns.0])
            .args(args)
            .status()
            .expect("ip");
        assert!(st.success(), "ip {args:?} failed");
    };
    let st = Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .expect("ip netns");
    assert!(st.success(), "ip netns add failed");
    ip(&["tuntap", "add", "dev", "vb0", "mode", "tap", "vnet_hdr"]);
    ip(&["addr", "add", "10.213.9.1/24", "dev", "vb0"]);
    ip(&["link", "set", "vb0", "up"]);
    let frames = 200_000 * scale();
    let net = vec![
        "--net".to_string(),
        "tap=vb0,mac=52:54:00:00:09:02".to_string(),
    ];
    for size in [64u64, 1514] {
        let cmdline = format!("net-bench 10.213.9.2 10.213.9.1 {frames} {size}");
        let (t, done) = guest_run(vireo, guest, &cmdline, &net, Some(&ns.0));
        let sent = field(&done, "frames");
        let bytes = field(&done, "bytes");
        rows.push(Row {
            name: format!("net guest→tap {size}-byte frames"),
            guest: sent as f64 / t,
            host: f64::NAN,
            unit: "frames/s",
        });
        rows.push(Row {
            name: format!("net guest→tap {size}-byte frames"),
            guest: bytes as f64 * 8.0 / t / 1e9,
            host: f64::NAN,
            unit: "Gbit/s",
        });
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("virtio_io: benchmark");
        return;
    }
    let vireo = vireo_binary().unwrap_or_else(|e| {
        eprintln!("virtio_io bench: {e}");
        std::process::exit(1);
    });
    let gdir = tempfile::tempdir().expect("tempdir");
    let guest = gdir.path().join("guest.elf");
    vireo_testguest::write_to(&guest).expect("write guest");
    let mut rows = Vec::new();
    blk_rows(&vireo, &guest, &mut rows);
    net_rows(&vireo, &guest, &mut rows);
    println!("virtio I/O: test guest (ring 3, real KVM, QD {QUEUE_DEPTH}) vs. the host on the same file (QD 1, pread/pwrite)");
    println!(
        "| workload                              | guest via vireo | host direct | guest/host |"
    );
    println!(
        "|---------------------------------------|-----------------|-------------|------------|"
    );
    for r in rows {
        let ratio = if r.host.is_nan() {
            "—".to_string()
        } else {
            format!("{:.0} %", r.guest / r.host * 100.0)
        };
        let host = if r.host.is_nan() {
            "—".to_string()
        } else {
            format!("{:.0} {}", r.host, r.unit)
        };
        let guest = if r.unit == "Gbit/s" {
            format!("{:.2} {}", r.guest, r.unit)
        } else {
            format!("{:.0} {}", r.guest, r.unit)
        };
        println!(
            "| {:<37} | {:>15} | {:>11} | {:>10} |",
            r.name, guest, host, ratio
        );
    }
}
