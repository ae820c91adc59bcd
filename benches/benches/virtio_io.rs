//! virtio I/O benchmark: the test guest drives virtio-blk and virtio-net from
//! ring 3 under real KVM (its queue loop runs natively), next to the same
//! I/O done by the host directly on the same file. Prints a table.
//!
//! Run (as root for the network rows):
//! `cargo build --release -p vireo-launcher && cargo bench -p vireo-benches --bench virtio_io`
//!
//! Environment: `VIREO_BENCH_DIR` (default `/dev/shm`, so both sides hit the
//! page cache and the figure is the VMM's overhead, not the disk's),
//! `VIREO_BENCH_SCALE` (default 1; multiplies request counts),
//! `VIREO_BENCH_REPS` (default 5; alternating guest/host runs per block row,
//! medians reported), `VIREO_BENCH_ROWS` (run only the block rows whose name
//! contains it, e.g. `raw 4 KiB random read`).
//!
//! Guest side: `blk-bench 0 MODE BYTES QD COUNT REGION_MIB` keeps QD requests
//! in flight (EVENT_IDX) and the time between its `bench-start` and
//! `bench-done` lines is measured here. Host side: one thread doing
//! `pread`/`pwrite` of the same size at the same kind of offsets on the same
//! file: for qcow2 the host reads and writes the image file itself at its
//! data clusters' offsets (from `qemu-img map`), so both sides touch the same
//! page-cache pages. qcow2 images are fully allocated (converted from the raw
//! one) so reads hit data clusters, not holes.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use vireo_benches::{median, vireo_binary};

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

/// The number after `key=` in the guest's `line`; a missing or malformed
/// field fails the benchmark rather than reading as 0.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= number in the guest's line: {line}"))
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

/// Where the disk's bytes lie in an image file: `(disk offset, length, file
/// offset)` extents, from `qemu-img map` (a raw file maps to itself).
struct ImageMap(Vec<(u64, u64, u64)>);

impl ImageMap {
    fn identity() -> Self {
        Self(vec![(0, u64::MAX, 0)])
    }

    /// The extents of `image` from `qemu-img map --output=json`; every byte
    /// of the benchmark's region must be allocated data.
    fn of(image: &Path) -> Self {
        let out = Command::new("qemu-img")
            .args(["map", "--output=json"])
            .arg(image)
            .output()
            .expect("qemu-img map");
        assert!(out.status.success(), "qemu-img map failed");
        let extents: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("qemu-img map JSON");
        let map = extents
            .as_array()
            .expect("an array of extents")
            .iter()
            .filter(|e| e["data"].as_bool() == Some(true))
            .map(|e| {
                let n = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("extent {k}: {e}"));
                (n("start"), n("length"), n("offset"))
            })
            .collect();
        Self(map)
    }

    /// The file offset of the `len` disk bytes at `off`, which must lie in
    /// one extent.
    fn file_offset(&self, off: u64, len: u64) -> u64 {
        self.0
            .iter()
            .find(|&&(start, n, _)| n >= len && off >= start && off - start <= n - len)
            .map(|&(start, _, file)| file + (off - start))
            .unwrap_or_else(|| panic!("disk bytes {off:#x}+{len:#x} are not in one data extent"))
    }
}

/// Host baseline: `count` synchronous requests of `bs` bytes at the file
/// offsets `map` gives for the disk offsets the guest uses; returns seconds.
fn host_run(
    path: &Path,
    map: &ImageMap,
    write: bool,
    random: bool,
    bs: u64,
    count: u64,
    region_mib: u64,
) -> f64 {
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
        let off = map.file_offset(block * bs, bs);
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

/// Repetitions per row (`VIREO_BENCH_REPS`, default 5): the guest and the
/// host runs alternate, and each side's median is reported, so the slow
/// drifts of a shared machine hit both sides alike.
fn reps() -> usize {
    std::env::var("VIREO_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5)
}

/// One block workload: what the guest runs and what the host does.
struct BlkCase<'a> {
    name: String,
    fmt: &'a str,
    image: &'a Path,
    host_map: &'a ImageMap,
    mode: &'a str,
    write: bool,
    random: bool,
    bs: u64,
    count: u64,
    region_mib: u64,
}

/// Whether the row named `name` is selected (`VIREO_BENCH_ROWS`: a
/// substring of the row names to run; all rows when unset).
fn selected(name: &str) -> bool {
    std::env::var("VIREO_BENCH_ROWS").map_or(true, |want| name.contains(&want))
}

/// Runs `case` [`reps`] times on each side, alternating, after one
/// warm-up run of each (page cache, the guest's first touch of its buffers).
fn blk_row(vireo: &Path, guest: &Path, case: &BlkCase<'_>) -> Row {
    let disk = vec![
        "--disk".to_string(),
        format!("path={},format={}", case.image.display(), case.fmt),
    ];
    let cmdline = |n: u64| {
        format!(
            "blk-bench 0 {} {} {QUEUE_DEPTH} {n} {}",
            case.mode, case.bs, case.region_mib
        )
    };
    let host = || {
        host_run(
            case.image,
            case.host_map,
            case.write,
            case.random,
            case.bs,
            case.count,
            case.region_mib,
        )
    };
    let _ = guest_run(vireo, guest, &cmdline(case.count / 10), &disk, None);
    let _ = host();
    let (mut guest_rates, mut host_rates) = (Vec::new(), Vec::new());
    for _ in 0..reps() {
        let (t, done) = guest_run(vireo, guest, &cmdline(case.count), &disk, None);
        assert_eq!(
            field(&done, "errors"),
            0,
            "guest reported I/O errors: {done}"
        );
        guest_rates.push(field(&done, "requests") as f64 / t);
        host_rates.push(case.count as f64 / host());
    }
    let (guest_rate, host_rate) = (median(&mut guest_rates), median(&mut host_rates));
    let (guest_v, host_v, unit) = if case.bs >= 1 << 20 {
        let mib = case.bs as f64 / (1 << 20) as f64;
        (guest_rate * mib, host_rate * mib, "MiB/s")
    } else {
        (guest_rate, host_rate, "IOPS")
    };
    Row {
        name: case.name.clone(),
        guest: guest_v,
        host: host_v,
        unit,
    }
}

fn blk_rows(vireo: &Path, guest: &Path, rows: &mut Vec<Row>) {
    let base = std::env::var_os("VIREO_BENCH_DIR")
        .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
    let dir = tempfile::tempdir_in(&base).expect("bench dir");
    let (raw, qcow2) = make_images(dir.path());
    let s = scale();
    // (label, mode, write, random, block bytes, requests)
    let workloads: [(&str, &str, bool, bool, u64, u64); 4] = [
        (
            "4 KiB random read",
            "randread",
            false,
            true,
            4096,
            1_000_000 * s,
        ),
        (
            "4 KiB random write",
            "randwrite",
            true,
            true,
            4096,
            300_000 * s,
        ),
        (
            "1 MiB sequential read",
            "seqread",
            false,
            false,
            1 << 20,
            4_000 * s,
        ),
        (
            "1 MiB sequential write",
            "seqwrite",
            true,
            false,
            1 << 20,
            4_000 * s,
        ),
    ];
    let identity = ImageMap::identity();
    let qcow2_map = ImageMap::of(&qcow2);
    // The same random read over a 16 MiB region: page-cache lookups then hit
    // the CPU caches, so the row shows the virtio path's own cost.
    let small = 16;
    let mut push = |case: BlkCase<'_>| {
        if selected(&case.name) {
            rows.push(blk_row(vireo, guest, &case));
        }
    };
    push(BlkCase {
        name: format!("raw 4 KiB random read, {small} MiB span"),
        fmt: "raw",
        image: &raw,
        host_map: &identity,
        mode: "randread",
        write: false,
        random: true,
        bs: 4096,
        count: 1_000_000 * s,
        region_mib: small,
    });
    for (fmt, image, map) in [("raw", &raw, &identity), ("qcow2", &qcow2, &qcow2_map)] {
        for (label, mode, write, random, bs, count) in workloads {
            push(BlkCase {
                name: format!("{fmt} {label}"),
                fmt,
                image,
                host_map: map,
                mode,
                write,
                random,
                bs,
                count,
                region_mib: REGION_MIB,
            });
        }
    }
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn net_rows(vireo: &Path, guest: &Path, rows: &mut Vec<Row>) {
    if !selected("net guest→tap") {
        return;
    }
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
    println!(
        "virtio I/O: test guest (ring 3, real KVM, QD {QUEUE_DEPTH}) vs. the host on the same file (QD 1, pread/pwrite); block rows: median of {} alternating runs per side",
        reps()
    );
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
