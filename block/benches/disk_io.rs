//! Single-thread disk I/O benchmark: plain `pread`/`pwrite` vs our raw backend vs our qcow2
//! backend (fully allocated, and as an overlay over a raw backing file).
//!
//! Run: `cargo bench -p vireo-block --bench disk_io` (about a minute). Set
//! `VIREO_BENCH_DIR` to put the files on a particular file system (default: the temp dir).
//!
//! All four columns use the same 128 MiB of data; the qcow2 image is converted from the raw
//! file by qemu-img (so every cluster is allocated), the overlay is made by our
//! `create_qcow2_overlay`. The files are warm in the page cache, so the numbers measure the
//! per-request cost of each layer, which is what the ratios are about. Each cell is the best
//! of several runs.

use std::fs::{File, OpenOptions as FsOpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vireo_block::vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vireo_block::{create_qcow2_overlay, open_disk, DiskBackend, Format, OpenOptions};

const FILE_SIZE: u64 = 128 << 20;
const SMALL: usize = 4096;
const LARGE: usize = 1 << 20;
const SMALL_OPS: usize = 50_000;
const LARGE_PASSES: usize = 2;
const RUNS: usize = 7;

type Mem = GuestMemoryMmap<vireo_block::DirtyBitmap>;

/// What a column does for one request.
trait Target {
    fn read(&self, offset: u64, len: usize);
    fn write(&self, offset: u64, len: usize);
}

struct Plain {
    file: File,
    buf: std::cell::RefCell<Vec<u8>>,
}

impl Target for Plain {
    fn read(&self, offset: u64, len: usize) {
        let mut buf = self.buf.borrow_mut();
        self.file
            .read_exact_at(&mut buf[..len], offset)
            .expect("pread");
    }
    fn write(&self, offset: u64, len: usize) {
        let buf = self.buf.borrow();
        self.file.write_all_at(&buf[..len], offset).expect("pwrite");
    }
}

struct Backend {
    disk: Box<dyn DiskBackend>,
    mem: Mem,
}

impl Target for Backend {
    fn read(&self, offset: u64, len: usize) {
        let slice = self.mem.get_slice(GuestAddress(0), len).expect("slice");
        self.disk.read_vectored(offset, &[slice]).expect("read");
    }
    fn write(&self, offset: u64, len: usize) {
        let slice = self.mem.get_slice(GuestAddress(0), len).expect("slice");
        self.disk.write_vectored(offset, &[slice]).expect("write");
    }
}

#[derive(Clone, Copy)]
enum Workload {
    RandRead4k,
    RandWrite4k,
    SeqRead1m,
    SeqWrite1m,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Workload::RandRead4k,
        Workload::RandWrite4k,
        Workload::SeqRead1m,
        Workload::SeqWrite1m,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::RandRead4k => "4 KiB random read",
            Workload::RandWrite4k => "4 KiB random write",
            Workload::SeqRead1m => "1 MiB sequential read",
            Workload::SeqWrite1m => "1 MiB sequential write",
        }
    }

    /// Run once; returns (requests, bytes, elapsed).
    fn run(self, target: &dyn Target, seed: u64) -> (usize, u64, Duration) {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let blocks = FILE_SIZE / SMALL as u64;
        let start = Instant::now();
        let (ops, len) = match self {
            Workload::RandRead4k | Workload::RandWrite4k => {
                for _ in 0..SMALL_OPS {
                    let off = (next() % blocks) * SMALL as u64;
                    if matches!(self, Workload::RandRead4k) {
                        target.read(off, SMALL);
                    } else {
                        target.write(off, SMALL);
                    }
                }
                (SMALL_OPS, SMALL)
            }
            Workload::SeqRead1m | Workload::SeqWrite1m => {
                let per_pass = (FILE_SIZE / LARGE as u64) as usize;
                for _ in 0..LARGE_PASSES {
                    for i in 0..per_pass {
                        let off = (i * LARGE) as u64;
                        if matches!(self, Workload::SeqRead1m) {
                            target.read(off, LARGE);
                        } else {
                            target.write(off, LARGE);
                        }
                    }
                }
                (per_pass * LARGE_PASSES, LARGE)
            }
        };
        (ops, (ops * len) as u64, start.elapsed())
    }
}

/// Best-of-RUNS throughput (MiB/s, IOPS) per column. Columns take turns within each run, so
/// a burst of load elsewhere on the machine hits all of them alike.
fn measure(w: Workload, columns: &[(&str, Box<dyn Target>)]) -> Vec<(f64, f64)> {
    let mut best = vec![(0.0f64, 0.0f64); columns.len()];
    for run in 0..RUNS {
        for (i, (_, target)) in columns.iter().enumerate() {
            let (ops, bytes, t) = w.run(target.as_ref(), 0x9e37_79b9_7f4a_7c15 ^ run as u64);
            let secs = t.as_secs_f64();
            let mibs = bytes as f64 / secs / (1 << 20) as f64;
            if mibs > best[i].0 {
                best[i] = (mibs, ops as f64 / secs);
            }
        }
    }
    best
}

fn open(path: &Path, format: Format) -> Backend {
    let disk = open_disk(
        path,
        &OpenOptions {
            format: Some(format),
            ..OpenOptions::default()
        },
    )
    .expect("open disk");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), LARGE)]).expect("guest memory");
    Backend { disk, mem }
}

fn main() {
    let base = std::env::var_os("VIREO_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let raw = dir.path().join("disk.raw");
    let qcow = dir.path().join("disk.qcow2");
    let overlay = dir.path().join("overlay.qcow2");

    // Non-zero data everywhere, so qemu-img convert allocates every cluster.
    {
        let f = File::create(&raw).expect("create raw");
        let chunk: Vec<u8> = (0..LARGE).map(|i| (i * 7 + 1) as u8).collect();
        for i in 0..FILE_SIZE / LARGE as u64 {
            f.write_all_at(&chunk, i * LARGE as u64).expect("fill");
        }
        f.sync_all().expect("sync");
    }
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .status()
        .expect("qemu-img (install qemu-utils)");
    assert!(status.success(), "qemu-img convert failed");
    create_qcow2_overlay(&overlay, &raw, Format::Raw).expect("overlay");

    let plain = Plain {
        file: FsOpenOptions::new()
            .read(true)
            .write(true)
            .open(&raw)
            .expect("open raw"),
        buf: std::cell::RefCell::new(vec![0x5a; LARGE]),
    };
    let columns: Vec<(&str, Box<dyn Target>)> = vec![
        ("pread/pwrite", Box::new(plain)),
        ("raw", Box::new(open(&raw, Format::Raw))),
        ("qcow2", Box::new(open(&qcow, Format::Qcow2))),
        ("qcow2+backing", Box::new(open(&overlay, Format::Qcow2))),
    ];

    println!(
        "single thread, {} MiB file, page cache warm, best of {RUNS} runs",
        FILE_SIZE >> 20
    );
    println!();
    print!("| workload               |");
    for (name, _) in &columns {
        print!(" {name:>22} |");
    }
    println!(" raw/plain | qcow2/raw |");
    print!("|------------------------|");
    for _ in &columns {
        print!("------------------------|");
    }
    println!("-----------|-----------|");
    for w in Workload::ALL {
        let results = measure(w, &columns);
        print!("| {:<22} |", w.name());
        for (mibs, iops) in &results {
            print!(" {:>8.0} MiB/s {:>6.0}k/s |", mibs, iops / 1000.0);
        }
        println!(
            " {:>8.1}% | {:>8.1}% |",
            results[1].0 / results[0].0 * 100.0,
            results[2].0 / results[1].0 * 100.0
        );
    }
    println!();
    println!("targets: raw ≥ 95 % of pread/pwrite, qcow2 (allocated) ≥ 80 % of raw");
}
