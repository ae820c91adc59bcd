//! Crash safety: SIGKILL a writer at random points, many times, and check the image.
//!
//! The writer is this test binary re-executed as the ignored test `crash_writer_child` (with
//! `VIREO_CRASH_IMAGE` set). It does random writes and write-zeroes on a qcow2 image with
//! 512-byte clusters (so nearly every write allocates clusters, L2 tables and refcount blocks,
//! and the refcount table grows), flushing every few requests. Before issuing a request it
//! appends the request to a log; after a flush returns it appends `F`. Everything before an
//! `F` is acknowledged.
//!
//! After each kill: `qemu-img check` must exit 0 or 3 (3 = leaked clusters only, acceptable
//! as in QEMU), and the image — read back by `qemu-img convert`, not by us — must hold every
//! acknowledged write, except bytes that a later, unacknowledged request may have changed.

mod common;

use std::fs::OpenOptions as FsOpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vireo_block::{open_disk, Format, OpenOptions};

const SIZE: u64 = 16 << 20;
const ROUNDS: usize = 24;

/// The bytes of write `seed` of length `len`.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    (0..len).map(|_| rng.next() as u8).collect()
}

/// Child side: write until killed.
#[test]
#[ignore = "helper process for sigkill_during_writes, not a test on its own"]
fn crash_writer_child() {
    let (Ok(image), Ok(log), Ok(seed)) = (
        std::env::var("VIREO_CRASH_IMAGE"),
        std::env::var("VIREO_CRASH_LOG"),
        std::env::var("VIREO_CRASH_SEED"),
    ) else {
        return;
    };
    let mut rng = Rng(seed.parse().expect("seed"));
    let mut log = FsOpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .expect("log");
    let disk = open_disk(
        Path::new(&image),
        &OpenOptions {
            format: Some(Format::Qcow2),
            ..OpenOptions::default()
        },
    )
    .expect("open");
    let mem = memory(mem_for(256 * 1024));
    let mut until_flush = rng.below(16) + 1;
    loop {
        let len = (rng.below(512) + 1) * 512;
        let off = rng.below((SIZE - len) / 512 + 1) * 512;
        if rng.below(10) == 0 {
            writeln!(log, "Z {off} {len}").expect("log");
            disk.write_zeroes(off, len, rng.below(2) == 0)
                .expect("write_zeroes");
        } else {
            let seed = rng.next();
            writeln!(log, "W {off} {len} {seed}").expect("log");
            write(disk.as_ref(), &mem, off, &payload(seed, len as usize));
        }
        until_flush -= 1;
        if until_flush == 0 {
            disk.flush().expect("flush");
            writeln!(log, "F").expect("log");
            until_flush = rng.below(16) + 1;
        }
    }
}

/// What the test knows about the image: contents and which bytes are certain.
struct Model {
    data: Vec<u8>,
    known: Vec<bool>,
    acked_writes: usize,
}

impl Model {
    /// Apply one round's log.
    fn apply_log(&mut self, log: &str) {
        let mut pending: Vec<(u64, u64, Option<u64>)> = Vec::new();
        for line in log.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
            match (f.first().copied(), num(1), num(2), num(3)) {
                (Some("W"), Some(o), Some(l), Some(s)) => pending.push((o, l, Some(s))),
                (Some("Z"), Some(o), Some(l), _) => pending.push((o, l, None)),
                (Some("F"), ..) => {
                    for (o, l, s) in pending.drain(..) {
                        let range = o as usize..(o + l) as usize;
                        match s {
                            Some(seed) => {
                                self.data[range.clone()].copy_from_slice(&payload(seed, l as usize))
                            }
                            None => self.data[range.clone()].fill(0),
                        }
                        self.known[range].fill(true);
                        self.acked_writes += 1;
                    }
                }
                _ => {} // a line cut short by the kill
            }
        }
        // Issued (or about to be) but never acknowledged: those bytes may hold anything.
        for (o, l, _) in pending {
            self.known[o as usize..(o + l) as usize].fill(false);
        }
    }

    fn verify(&self, image_bytes: &[u8], round: usize) {
        assert_eq!(image_bytes.len(), self.data.len());
        for (i, ((&got, &want), &known)) in image_bytes
            .iter()
            .zip(&self.data)
            .zip(&self.known)
            .enumerate()
        {
            assert!(
                !known || got == want,
                "round {round}: acknowledged byte {i:#x} is {got:#x}, expected {want:#x}"
            );
        }
    }
}

#[test]
fn sigkill_during_writes() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("crash.qcow2");
    qemu_create(&image, "qcow2", &SIZE.to_string(), Some("cluster_size=512"));
    let mut model = Model {
        data: vec![0; SIZE as usize],
        known: vec![true; SIZE as usize],
        acked_writes: 0,
    };
    let mut rng = Rng(seed());
    let exe = std::env::current_exe().expect("test binary");
    let mut leaks_seen = 0;
    for round in 0..ROUNDS {
        let log = dir.path().join(format!("log{round}"));
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_writer_child", "--ignored", "--nocapture"])
            .env("VIREO_CRASH_IMAGE", &image)
            .env("VIREO_CRASH_LOG", &log)
            .env("VIREO_CRASH_SEED", rng.next().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        std::thread::sleep(Duration::from_millis(20 + rng.below(200)));
        child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL
        let status = child.wait().expect("wait");
        assert!(!status.success(), "writer exited on its own: {status:?}");

        let (code, report) = check(&image);
        assert!(
            code == 0 || code == 3,
            "round {round}: qemu-img check exit {code}:\n{report}"
        );
        assert!(!report.contains("ERROR"), "round {round}: {report}");
        if code == 3 {
            leaks_seen += 1;
        }

        model.apply_log(&std::fs::read_to_string(&log).unwrap_or_default());
        let raw = dir.path().join("readback.raw");
        qemu_img(&["convert", "-f", "qcow2", "-O", "raw", p(&image), p(&raw)]);
        model.verify(&std::fs::read(&raw).expect("readback"), round);
    }
    eprintln!(
        "{ROUNDS} kills, {} acknowledged writes verified, {leaks_seen} rounds with leaks, {:?}",
        model.acked_writes,
        started.elapsed()
    );
    assert!(
        model.acked_writes > ROUNDS,
        "too few acknowledged writes ({}) for the test to mean anything",
        model.acked_writes
    );
}

/// A data cluster freed by a discard and reused at once as a new L2 table must not stay named
/// by the old L2 entry on disk. imago clears that entry only in its cache while it writes the
/// new table's L1 pointer straight to disk; the engine writes the caches back after every free.
/// The "crash" here is a process that never writes its caches back (the engine is leaked, not
/// dropped), which is what a SIGKILL right after the second request leaves behind.
#[test]
fn freed_data_cluster_reused_as_l2_table_is_not_referenced_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("reuse.qcow2");
    qemu_create(&image, "qcow2", &SIZE.to_string(), Some("cluster_size=512"));
    let mem = memory(mem_for(64 * 1024));
    let disk = open_rw(&image, Format::Qcow2);
    // 32 KiB = one whole L2 table's worth of 512-byte data clusters (64 entries).
    write(disk.as_ref(), &mem, 0, &payload(7, 32 * 1024));
    disk.flush().expect("flush");
    disk.discard(0, 32 * 1024).expect("discard");
    // Zeroes 1 MiB further on need a new L2 table (l1[32]); the first free cluster is one of
    // the 64 just freed.
    disk.write_zeroes(1 << 20, 4096, true)
        .expect("write zeroes");
    std::mem::forget(disk);
    let (code, report) = check(&image);
    assert!(
        (code == 0 || code == 3) && !report.contains("ERROR"),
        "qemu-img check exit {code}:\n{report}"
    );
}
