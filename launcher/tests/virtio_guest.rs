//! virtio-blk and virtio-net under real KVM, driven by the test guest's own
//! modern virtio-pci driver (`testguest/guest/virtio*.rs`): data round trips
//! checked byte for byte on the host (raw and qcow2 overlays, `qemu-img`
//! agreeing), read-only disks, device enumeration order, and ARP + ICMP
//! against a Linux tap inside a throwaway network namespace.
//!
//! Tests that need root (network namespaces, taps) or `qemu-img` print why
//! and return early when those are missing; everything else always runs.

mod common;

/// Root check and `ip` helper shared with the `net` crate's tap tests.
#[path = "../../net/tests/common/mod.rs"]
mod netcommon;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const SECTOR: u64 = 512;
const DISK_BYTES: usize = 16 << 20;
/// The range `blk-rw` works on in these tests.
const RW_SECTOR: u64 = 2048;
const RW_COUNT: u64 = 64;

// ----------------------------------------------------------------- helpers

/// The bytes the host puts in a fresh disk image (distinct per sector).
fn host_pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|o| ((o >> 9) as u8).wrapping_mul(13) ^ (o as u8) ^ salt)
        .collect()
}

/// What `blk-rw <n> <sector> <count> <seed>` writes (see the guest).
fn guest_pattern(sector: u64, count: u64, seed: u64) -> Vec<u8> {
    (0..count * SECTOR)
        .map(|i| ((sector * SECTOR + i).wrapping_mul(7).wrapping_add(seed)) as u8)
        .collect()
}

fn fnv1a(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn range(sector: u64, count: u64) -> std::ops::Range<usize> {
    (sector * SECTOR) as usize..((sector + count) * SECTOR) as usize
}

/// Runs the guest and insists on exit status 0; returns stdout.
fn run_ok(fx: &Fixture, args: &[&str]) -> String {
    let out = run_guest(fx, args);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "args {args:?}\nstdout: {text}\nstderr: {}",
        stderr(&out)
    );
    assert!(!text.contains("FAIL"), "{text}");
    text
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

fn qemu_img_available() -> bool {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn qemu_img(args: &[&str]) -> Output {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    out
}

fn disk_arg(path: &Path, extra: &str) -> String {
    format!("path={}{extra}", path.display())
}

/// Checks the `blk-rw` lines against the host's view: the read hash is the
/// hash of `before`, the write hash that of the guest's pattern.
fn check_rw_lines(text: &str, before: &[u8], seed: u64) {
    let read_line = format!(
        "blk-read sector={RW_SECTOR} count={RW_COUNT} fnv={}",
        fnv1a(&before[range(RW_SECTOR, RW_COUNT)])
    );
    assert!(has_line(text, &read_line), "want {read_line:?} in\n{text}");
    let write_line = format!(
        "blk-write sector={RW_SECTOR} count={RW_COUNT} fnv={} verify=ok",
        fnv1a(&guest_pattern(RW_SECTOR, RW_COUNT, seed))
    );
    assert!(
        has_line(text, &write_line),
        "want {write_line:?} in\n{text}"
    );
}

/// A network namespace that is deleted when dropped, even if the test fails.
struct NetNs {
    name: String,
}

impl NetNs {
    fn create(tag: &str) -> Self {
        let name = format!("vireo-t-{}-{tag}", std::process::id());
        // A leftover from an earlier, killed run of the same pid is unlikely
        // but harmless to remove.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        netcommon::ip(&["netns", "add", &name]);
        Self { name }
    }

    /// `ip -n <ns> ARGS`, which must succeed.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        netcommon::ip(&all)
    }

    /// `ip netns exec <ns> vireo run --kernel <guest> ARGS`.
    fn run_guest(&self, fx: &Fixture, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(env!("CARGO_BIN_EXE_vireo"))
            .arg("run")
            .arg("--kernel")
            .arg(&fx.guest)
            .args(args)
            .env("VIREO_LOG", "info");
        run_with_timeout(cmd, Duration::from_secs(60))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// RX packet count of `dev` in `ns`, from `ip -j -s link show`.
fn rx_packets(ns: &NetNs, dev: &str) -> u64 {
    let json = ns.ip(&["-j", "-s", "link", "show", dev]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rx packet count in {json}"))
}

// ------------------------------------------------------------------- tests

#[test]
fn raw_disk_round_trip_matches_the_host_view() {
    let fx = Fixture::create();
    let disk = fx.path("disk.raw");
    let before = host_pattern(DISK_BYTES, 0);
    std::fs::write(&disk, &before).expect("write disk");
    let seed = 77;

    let cmdline = format!("blk-rw 0 {RW_SECTOR} {RW_COUNT} {seed}");
    let text = run_ok(
        &fx,
        &["--cmdline", &cmdline, "--disk", &disk_arg(&disk, "")],
    );
    check_rw_lines(&text, &before, seed);

    let after = std::fs::read(&disk).expect("read disk");
    assert_eq!(after.len(), DISK_BYTES, "the file keeps its size");
    let r = range(RW_SECTOR, RW_COUNT);
    assert!(
        after[r.clone()] == guest_pattern(RW_SECTOR, RW_COUNT, seed)[..],
        "the written range holds the guest's pattern"
    );
    assert!(
        after[..r.start] == before[..r.start],
        "bytes before the range unchanged"
    );
    assert!(
        after[r.end..] == before[r.end..],
        "bytes after the range unchanged"
    );
}

#[test]
fn qcow2_overlay_round_trip_agrees_with_qemu_img() {
    assert!(
        qemu_img_available(),
        "qemu-img is not installed (Debian's qemu-utils; .ci/run installs it)"
    );
    let fx = Fixture::create();
    let base = fx.path("base.raw");
    let overlay = fx.path("overlay.qcow2");
    let expected = fx.path("expected.raw");
    let before = host_pattern(DISK_BYTES, 0x5a);
    std::fs::write(&base, &before).expect("write base");
    let base_abs = base.to_str().expect("utf-8 path");
    let out = qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        base_abs,
        overlay.to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seed = 201;

    let cmdline = format!("blk-rw 0 {RW_SECTOR} {RW_COUNT} {seed}");
    let text = run_ok(
        &fx,
        &["--cmdline", &cmdline, "--disk", &disk_arg(&overlay, "")],
    );
    check_rw_lines(&text, &before, seed);

    let check = qemu_img(&["check", overlay.to_str().expect("path")]);
    assert!(
        check.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        std::fs::read(&base).expect("read base") == before,
        "the backing file is never written"
    );

    let mut want = before.clone();
    want[range(RW_SECTOR, RW_COUNT)].copy_from_slice(&guest_pattern(RW_SECTOR, RW_COUNT, seed));
    std::fs::write(&expected, &want).expect("write expected");
    let cmp = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        overlay.to_str().expect("path"),
        expected.to_str().expect("path"),
    ]);
    assert!(
        cmp.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr)
    );
    assert!(
        String::from_utf8_lossy(&cmp.stdout).contains("Images are identical"),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );
}

#[test]
fn read_only_disk_refuses_writes_and_says_so() {
    let fx = Fixture::create();
    let disk = fx.path("ro.raw");
    let before = host_pattern(DISK_BYTES, 0x33);
    std::fs::write(&disk, &before).expect("write disk");
    let spec = disk_arg(&disk, ",readonly=on");

    let text = run_ok(&fx, &["--cmdline", "virtio-list", "--disk", &spec]);
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "blk capacity={} ro=1 serial=",
            DISK_BYTES as u64 / SECTOR
        ))),
        "{text}"
    );

    let cmdline = format!("blk-rw 0 {RW_SECTOR} {RW_COUNT} 9");
    let text = run_ok(&fx, &["--cmdline", &cmdline, "--disk", &spec]);
    let read_line = format!(
        "blk-read sector={RW_SECTOR} count={RW_COUNT} fnv={}",
        fnv1a(&before[range(RW_SECTOR, RW_COUNT)])
    );
    assert!(has_line(&text, &read_line), "{text}");
    let status = text
        .lines()
        .find_map(|l| l.strip_prefix("blk-ro write-status="))
        .unwrap_or_else(|| panic!("no blk-ro line in\n{text}"));
    let status: u8 = status.parse().expect("status byte");
    assert_ne!(status, 0, "a write to a read-only disk must fail");
    assert!(!text.contains("blk-write"), "{text}");
    assert!(
        std::fs::read(&disk).expect("read disk") == before,
        "the read-only file is unchanged"
    );
}

#[test]
fn disks_then_nics_in_command_line_order() {
    netcommon::require_root("disks_then_nics_in_command_line_order");
    let fx = Fixture::create();
    let a = fx.path("a.raw");
    let b = fx.path("b.raw");
    std::fs::write(&a, vec![0u8; 16 << 20]).expect("disk a");
    std::fs::write(&b, vec![0u8; 8 << 20]).expect("disk b");
    let ns = NetNs::create("order");
    let out = ns.run_guest(
        &fx,
        &[
            "--cmdline",
            "virtio-list",
            "--disk",
            &disk_arg(&a, ""),
            "--disk",
            &disk_arg(&b, ",readonly=on"),
            "--net",
            "tap=vt1,mac=52:54:00:ab:cd:ef",
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    let devices: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("virtio slot="))
        .collect();
    assert_eq!(devices.len(), 3, "{text}");
    for (line, (slot, kind)) in devices.iter().zip([(1, "blk"), (2, "blk"), (3, "net")]) {
        assert!(
            line.starts_with(&format!("virtio slot={slot} type={kind} bar0=0x")),
            "{line}\n{text}"
        );
    }
    let blk: Vec<&str> = text.lines().filter(|l| l.starts_with("blk ")).collect();
    assert_eq!(blk.len(), 2, "{text}");
    assert!(
        blk[0].starts_with("blk capacity=32768 ro=0 serial="),
        "{text}"
    );
    assert!(
        blk[1].starts_with("blk capacity=16384 ro=1 serial="),
        "{text}"
    );
    let net: Vec<&str> = text.lines().filter(|l| l.starts_with("net ")).collect();
    assert_eq!(net.len(), 1, "{text}");
    assert!(
        net[0].starts_with("net mac=52:54:00:ab:cd:ef link="),
        "{text}"
    );
}

#[test]
fn ping_the_host_through_a_tap() {
    netcommon::require_root("ping_the_host_through_a_tap");
    let fx = Fixture::create();
    let ns = NetNs::create("ping");
    ns.ip(&["tuntap", "add", "dev", "vt0", "mode", "tap"]);
    ns.ip(&["addr", "add", "10.213.1.1/24", "dev", "vt0"]);
    ns.ip(&["link", "set", "vt0", "up"]);

    let out = ns.run_guest(
        &fx,
        &[
            "--cmdline",
            "net-ping 10.213.1.2 10.213.1.1",
            "--net",
            "tap=vt0,mac=52:54:00:12:34:56",
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    // The host's MAC is the tap's.
    let link = ns.ip(&["-j", "link", "show", "vt0"]);
    let v: serde_json::Value = serde_json::from_str(&link).expect("ip -j output");
    let host_mac = v[0]["address"].as_str().expect("tap address");
    assert!(
        has_line(&text, &format!("net arp-reply mac={host_mac}")),
        "{text}"
    );
    for seq in 1..=3 {
        assert!(
            has_line(&text, &format!("net icmp-reply seq={seq} bytes=56")),
            "{text}"
        );
    }
    let ok = text
        .lines()
        .find(|l| l.starts_with("net ok tx="))
        .unwrap_or_else(|| panic!("no summary in\n{text}"));
    let counts: Vec<u64> = ok
        .split(' ')
        .filter_map(|w| w.split_once('=').and_then(|(_, v)| v.parse().ok()))
        .collect();
    assert!(
        counts.len() == 2 && counts[0] >= 4 && counts[1] >= 4,
        "{ok}"
    );
    let rx = rx_packets(&ns, "vt0");
    assert!(rx >= 4, "the host saw {rx} packets from the guest");
}

#[test]
fn blk_error_paths_complete_with_error_statuses() {
    let fx = Fixture::create();
    let disk = fx.path("edge.raw");
    std::fs::write(&disk, host_pattern(DISK_BYTES, 1)).expect("write disk");
    let out = run_guest(
        &fx,
        &["--cmdline", "blk-edge 0", "--disk", &disk_arg(&disk, "")],
    );
    let text = stdout(&out);
    let status_of = |case: &str| -> u8 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("edge {case} status=")))
            .unwrap_or_else(|| panic!("no {case} line in\n{text}"))
            .parse()
            .expect("status byte")
    };
    assert!(
        has_line(&text, "edge unoffered-feature accepted=0"),
        "{text}"
    );
    for case in [
        "read-past-end",
        "read-straddling-end",
        "write-sector-overflow",
        "read-partial-sector",
    ] {
        assert_eq!(status_of(case), 1, "{case} must be IOERR\n{text}");
    }
    assert_eq!(status_of("unknown-type"), 2, "UNSUPP\n{text}");
    assert_eq!(status_of("read-after-errors"), 0, "{text}");
    assert_eq!(status_of("read-after-reset"), 0, "{text}");
    assert!(
        has_line(&text, "edge read-bad-address needs-reset=1")
            || [1, 2].contains(&status_of("read-bad-address")),
        "{text}"
    );
    assert!(has_line(&text, "edge ok"), "{text}");
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
}

/// `blk-bench` keeps 32 requests in flight, so the worker takes them in
/// batches: random writes of 4 KiB slot buffers (slot `s` holds the byte
/// `s`) must each land whole in the file, and random reads must all complete
/// with OK.
#[test]
fn full_queue_of_random_writes_and_reads_lands_whole_blocks() {
    let fx = Fixture::create();
    let disk = fx.path("bench.raw");
    let before = host_pattern(DISK_BYTES, 3);
    std::fs::write(&disk, &before).expect("write disk");
    let region_mib = 1;
    let requests = 20_000;
    let done = format!(
        "bench-done requests={requests} bytes={} errors=0",
        requests * 4096
    );
    for mode in ["randwrite", "randread"] {
        let cmdline = format!("blk-bench 0 {mode} 4096 32 {requests} {region_mib}");
        let text = run_ok(
            &fx,
            &["--cmdline", &cmdline, "--disk", &disk_arg(&disk, "")],
        );
        assert!(has_line(&text, &done), "{mode}:\n{text}");
    }

    let after = std::fs::read(&disk).expect("read disk");
    let region = region_mib << 20;
    for (i, block) in after[..region].chunks(4096).enumerate() {
        let slot = block[0];
        assert!(
            slot < 32 && block.iter().all(|&b| b == slot),
            "block {i} is not one slot's buffer (first bytes {:?})",
            &block[..8]
        );
    }
    assert!(
        after[region..] == before[region..],
        "bytes past the benchmark's region unchanged"
    );
}
