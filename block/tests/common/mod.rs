//! Shared helpers for the integration tests: running qemu-img / qemu-io, guest memory, and
//! byte-level read/write through a [`DiskBackend`].
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use vireo_block::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vireo_block::{open_disk, BlockError, DiskBackend, Format, OpenOptions};

/// Guest memory as the VMM has it.
pub type Mem = GuestMemoryMmap<vireo_block::DirtyBitmap>;

/// A guest memory of `len` bytes at address 0.
pub fn memory(len: usize) -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)]).expect("guest memory")
}

/// Run a qemu tool, panicking with its output on failure.
pub fn run(tool: &str, args: &[&str]) -> Output {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} not runnable (install qemu-utils): {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A path as the `&str` the QEMU tools take.
pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf8 path")
}

/// Opens `path` with the given format (`None`: probe) and access.
pub fn open_as(
    path: &Path,
    format: Option<Format>,
    read_only: bool,
) -> Result<Box<dyn DiskBackend>, BlockError> {
    open_disk(
        path,
        &OpenOptions {
            format,
            read_only,
            ..OpenOptions::default()
        },
    )
}

/// Opens `path` read-write as `format`; the test fails if it cannot.
pub fn open_rw(path: &Path, format: Format) -> Box<dyn DiskBackend> {
    open_as(path, Some(format), false).expect("open")
}

/// `qemu-img …`
pub fn qemu_img(args: &[&str]) -> Output {
    run("qemu-img", args)
}

/// `qemu-img create -q -f <format> [-o <opts>] <path> <size>`.
pub fn qemu_create(path: &Path, format: &str, size: &str, opts: Option<&str>) -> Output {
    let mut args = vec!["create", "-q", "-f", format];
    if let Some(o) = opts {
        args.extend(["-o", o]);
    }
    args.extend([p(path), size]);
    qemu_img(&args)
}

/// Creates a qcow2 overlay at `path` over `backing` (a path as written into
/// the header, relative to the overlay's directory) of format `backing_fmt`,
/// with optional `-o` creation options.
pub fn qemu_overlay(path: &str, backing: &str, backing_fmt: &str, opts: Option<&str>) -> Output {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if let Some(o) = opts {
        args.extend(["-o", o]);
    }
    args.extend(["-b", backing, "-F", backing_fmt, path]);
    qemu_img(&args)
}

/// `qemu-io -f <fmt> -c <cmd>… <path>`; asserts no command reported an error.
pub fn qemu_io(path: &Path, format: &str, cmds: &[String]) {
    let mut args = vec!["-f".to_string(), format.to_string()];
    for c in cmds {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push(path.to_str().expect("utf8 path").into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("qemu-io", &refs);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("error") && !text.contains("failed"),
        "qemu-io reported: {text}"
    );
}

/// `qemu-img check`; returns (exit code, output).
pub fn check(path: &Path) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(["check", path.to_str().expect("utf8 path")])
        .output()
        .expect("qemu-img check");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Assert `qemu-img check` finds no errors and no leaks.
pub fn assert_clean(path: &Path) {
    let (code, text) = check(path);
    assert_eq!(code, 0, "qemu-img check {}: {text}", path.display());
}

/// Assert `qemu-img compare` calls the two images identical.
pub fn assert_identical(a: &Path, a_fmt: &str, b: &Path, b_fmt: &str) {
    let out = Command::new("qemu-img")
        .args([
            "compare",
            "-f",
            a_fmt,
            "-F",
            b_fmt,
            a.to_str().expect("utf8"),
            b.to_str().expect("utf8"),
        ])
        .output()
        .expect("qemu-img compare");
    assert_eq!(
        out.status.code(),
        Some(0),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Read `len` bytes at `offset` through the backend (in up to 3 scattered buffers).
pub fn read(disk: &dyn DiskBackend, mem: &Mem, offset: u64, len: usize) -> Vec<u8> {
    let cuts = split(len);
    let slices: Vec<_> = cuts
        .iter()
        .map(|&(addr, l)| mem.get_slice(GuestAddress(addr), l).expect("slice"))
        .collect();
    disk.read_vectored(offset, &slices).expect("read");
    let mut out = Vec::with_capacity(len);
    for &(addr, l) in &cuts {
        let mut part = vec![0u8; l];
        mem.read_slice(&mut part, GuestAddress(addr))
            .expect("mem read");
        out.extend_from_slice(&part);
    }
    out
}

/// Write `data` at `offset` through the backend (in up to 3 scattered buffers).
pub fn write(disk: &dyn DiskBackend, mem: &Mem, offset: u64, data: &[u8]) {
    let cuts = split(data.len());
    let mut pos = 0;
    for &(addr, l) in &cuts {
        mem.write_slice(&data[pos..pos + l], GuestAddress(addr))
            .expect("mem write");
        pos += l;
    }
    let slices: Vec<_> = cuts
        .iter()
        .map(|&(addr, l)| mem.get_slice(GuestAddress(addr), l).expect("slice"))
        .collect();
    disk.write_vectored(offset, &slices).expect("write");
}

/// Split a length into up to three buffers at scattered (non-adjacent) guest addresses, the
/// way a descriptor chain arrives.
fn split(len: usize) -> Vec<(u64, usize)> {
    if len < 3 * 512 {
        return vec![(0, len)];
    }
    let a = len / 3 / 512 * 512;
    let b = a;
    let c = len - a - b;
    let gap = 4096;
    let base2 = (a + gap) as u64;
    let base3 = base2 + (b + gap) as u64;
    vec![(0, a), (base2, b), (base3, c)]
}

/// Memory needed by `read`/`write` for requests up to `len` bytes.
pub fn mem_for(len: usize) -> usize {
    len + 3 * 4096 + 4096
}

/// Tiny deterministic PRNG (xorshift64*), so failures reproduce from the printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A seed from the clock, printed so a failing run can be replayed with VIREO_TEST_SEED.
pub fn seed() -> u64 {
    let seed = std::env::var("VIREO_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    eprintln!("VIREO_TEST_SEED={seed}");
    seed
}
