//! Interoperability with QEMU's reference tools.
//!
//! For each image variant (cluster sizes 512 B … 2 MiB, qcow2 v2 and v3, lazy refcounts on and
//! off, zlib-compressed clusters, an internal snapshot, a 3-deep backing chain):
//! 1. qemu-io writes patterns; our backend must read back exactly those bytes (and zeroes
//!    elsewhere);
//! 2. our backend writes random data at random offsets (plus write-zeroes); a raw reference file
//!    gets the same writes through plain `std` file I/O;
//! 3. `qemu-img check` must report a clean image and `qemu-img compare` must call the image and
//!    the reference identical.

mod common;

use std::fs::OpenOptions as FsOpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use vireo_block::{DiskBackend, Format};

const MIB: u64 = 1024 * 1024;

/// qemu-io pattern writes: (offset, len, pattern byte). Unaligned, cluster-crossing, far out.
fn qemu_writes(size: u64) -> Vec<(u64, u64, u8)> {
    vec![
        (0, 4096, 0x11),
        (512 * 9, 700, 0x22),
        (65536 - 512, 1536, 0x33),
        (size / 2 + 3, 5000, 0x44),
        (size - 8192, 8192, 0x55),
        (3 * MIB / 2, 256 * 1024, 0x66),
    ]
}

fn apply_qemu_writes(path: &Path, fmt: &str, writes: &[(u64, u64, u8)], model: &mut [u8]) {
    let cmds: Vec<String> = writes
        .iter()
        .map(|(o, l, pat)| format!("write -P {pat} {o} {l}"))
        .collect();
    qemu_io(path, fmt, &cmds);
    for &(o, l, pat) in writes {
        model[o as usize..(o + l) as usize].fill(pat);
    }
}

/// Compare the whole disk against `model`, in 1 MiB reads.
fn assert_reads(disk: &dyn DiskBackend, model: &[u8]) {
    let mem = memory(mem_for(MIB as usize));
    let mut off = 0usize;
    while off < model.len() {
        let len = (model.len() - off).min(MIB as usize);
        let got = read(disk, &mem, off as u64, len);
        if got != model[off..off + len] {
            let first = got
                .iter()
                .zip(&model[off..off + len])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!("mismatch at byte {:#x}", off + first);
        }
        off += len;
    }
}

/// Random writes and write-zeroes through `disk`, mirrored into `reference` and `model`.
fn random_writes(disk: &dyn DiskBackend, reference: &Path, model: &mut [u8], rng: &mut Rng) {
    let ref_file = FsOpenOptions::new()
        .write(true)
        .open(reference)
        .expect("reference");
    let size = model.len() as u64;
    let mem = memory(mem_for(256 * 1024));
    for i in 0..48 {
        let aligned = rng.below(4) != 0;
        let (off, len) = if aligned {
            let len = (rng.below(256) + 1) * 512;
            let off = rng.below((size - len) / 512 + 1) * 512;
            (off, len)
        } else {
            let len = rng.below(20000) + 1;
            (rng.below(size - len + 1), len)
        };
        if i % 8 == 7 {
            let may_unmap = rng.below(2) == 0;
            disk.write_zeroes(off, len, may_unmap)
                .expect("write_zeroes");
            let zeroes = vec![0u8; len as usize];
            ref_file.write_all_at(&zeroes, off).expect("ref write");
            model[off as usize..(off + len) as usize].fill(0);
        } else {
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            write(disk, &mem, off, &data);
            ref_file.write_all_at(&data, off).expect("ref write");
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
    }
    disk.flush().expect("flush");
}

/// Make a raw reference with the same content as `image` (via qemu-img convert).
fn reference_of(image: &Path, fmt: &str, dir: &Path) -> PathBuf {
    let reference = dir.join("reference.raw");
    qemu_img(&["convert", "-f", fmt, "-O", "raw", p(image), p(&reference)]);
    reference
}

/// The full scenario for one freshly created qcow2 variant.
fn roundtrip(cluster_size: u64, compat: &str, lazy_refcounts: bool, size: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.qcow2");
    let opts = format!(
        "cluster_size={cluster_size},compat={compat},lazy_refcounts={}",
        if lazy_refcounts { "on" } else { "off" }
    );
    qemu_create(&image, "qcow2", &size.to_string(), Some(&opts));
    let mut model = vec![0u8; size as usize];
    apply_qemu_writes(&image, "qcow2", &qemu_writes(size), &mut model);

    let disk = open_rw(&image, Format::Qcow2);
    assert_eq!(disk.size(), size);
    assert_eq!(disk.capabilities().discard, compat != "0.10");
    assert_reads(disk.as_ref(), &model);

    let reference = reference_of(&image, "qcow2", dir.path());
    let mut rng = Rng(seed());
    random_writes(disk.as_ref(), &reference, &mut model, &mut rng);
    assert_reads(disk.as_ref(), &model);
    drop(disk);

    assert_clean(&image);
    assert_identical(&image, "qcow2", &reference, "raw");
}

#[test]
fn v3_cluster_512() {
    roundtrip(512, "1.1", false, 4 * MIB);
}

#[test]
fn v3_cluster_4k_lazy_refcounts() {
    roundtrip(4096, "1.1", true, 8 * MIB);
}

#[test]
fn v3_cluster_64k() {
    roundtrip(65536, "1.1", false, 8 * MIB);
}

#[test]
fn v3_cluster_64k_lazy_refcounts() {
    roundtrip(65536, "1.1", true, 8 * MIB);
}

#[test]
fn v3_cluster_2m() {
    roundtrip(2 * MIB, "1.1", false, 16 * MIB);
}

#[test]
fn v2_cluster_512() {
    roundtrip(512, "0.10", false, 4 * MIB);
}

#[test]
fn v2_cluster_64k() {
    roundtrip(65536, "0.10", false, 8 * MIB);
}

#[test]
fn v2_cluster_2m() {
    roundtrip(2 * MIB, "0.10", false, 16 * MIB);
}

#[test]
fn zlib_compressed_clusters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src.raw");
    let image = dir.path().join("compressed.qcow2");
    let size = 8 * MIB;
    qemu_create(&src, "raw", &size.to_string(), None);
    let mut model = vec![0u8; size as usize];
    apply_qemu_writes(&src, "raw", &qemu_writes(size), &mut model);
    // Compressible but not constant data across several clusters.
    let cmds: Vec<String> = (0..16)
        .map(|i| format!("write -P {} {} 32768", 0x80 + i, 2 * MIB + i * 40000))
        .collect();
    qemu_io(&src, "raw", &cmds);
    for i in 0..16u64 {
        let o = (2 * MIB + i * 40000) as usize;
        model[o..o + 32768].fill(0x80 + i as u8);
    }
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=65536",
        p(&src),
        p(&image),
    ]);
    let (_, report) = check(&image);
    assert!(
        !report.contains(" 0.00% compressed clusters"),
        "qemu-img convert -c produced no compressed clusters: {report}"
    );

    let disk = open_rw(&image, Format::Qcow2);
    assert_reads(disk.as_ref(), &model);
    // Writes over compressed clusters force copy-on-write of compressed data.
    let mut rng = Rng(seed());
    random_writes(disk.as_ref(), &src, &mut model, &mut rng);
    assert_reads(disk.as_ref(), &model);
    drop(disk);
    assert_clean(&image);
    assert_identical(&image, "qcow2", &src, "raw");
}

#[test]
fn internal_snapshot_present() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("snap.qcow2");
    let size = 8 * MIB;
    qemu_create(&image, "qcow2", &size.to_string(), None);
    let mut model = vec![0u8; size as usize];
    apply_qemu_writes(&image, "qcow2", &qemu_writes(size), &mut model);
    qemu_img(&["snapshot", "-c", "before", p(&image)]);
    let at_snapshot = dir.path().join("at_snapshot.raw");
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        p(&image),
        p(&at_snapshot),
    ]);
    apply_qemu_writes(&image, "qcow2", &[(8192, 65536, 0x77)], &mut model);

    let disk = open_rw(&image, Format::Qcow2);
    assert_reads(disk.as_ref(), &model);
    let reference = reference_of(&image, "qcow2", dir.path());
    let mut rng = Rng(seed());
    random_writes(disk.as_ref(), &reference, &mut model, &mut rng);
    drop(disk);

    assert_clean(&image);
    assert_identical(&image, "qcow2", &reference, "raw");
    // The snapshot still holds what it held: our writes copied shared clusters.
    let snap = dir.path().join("snap_now.raw");
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        "-l",
        "snapshot.name=before",
        p(&image),
        p(&snap),
    ]);
    assert_identical(&snap, "raw", &at_snapshot, "raw");
}

/// base.raw ← mid.qcow2 (v2) ← upper.qcow2 ← top.qcow2, relative backing names, writes at
/// every level.
#[test]
fn three_deep_backing_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let size = 8 * MIB;
    let base = d.join("base.raw");
    let sub = d.join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    let mid = sub.join("mid.qcow2");
    let upper = d.join("upper.qcow2");
    let top = d.join("top.qcow2");
    qemu_create(&base, "raw", &size.to_string(), None);
    // Relative names resolve against the naming image's directory: mid is in sub/.
    qemu_overlay(
        p(&mid),
        "../base.raw",
        "raw",
        Some("compat=0.10,cluster_size=4096"),
    );
    qemu_overlay(
        p(&upper),
        "sub/mid.qcow2",
        "qcow2",
        Some("cluster_size=512"),
    );
    qemu_overlay(p(&top), "upper.qcow2", "qcow2", None);
    let mut model = vec![0u8; size as usize];
    apply_qemu_writes(
        &base,
        "raw",
        &[(0, MIB, 0xb0), (5 * MIB, 100_000, 0xb1)],
        &mut model,
    );
    apply_qemu_writes(
        &mid,
        "qcow2",
        &[(4096, 20000, 0xc0), (5 * MIB + 7, 999, 0xc1)],
        &mut model,
    );
    apply_qemu_writes(
        &upper,
        "qcow2",
        &[(1000, 3000, 0xd0), (7 * MIB, 4096, 0xd1)],
        &mut model,
    );
    apply_qemu_writes(
        &top,
        "qcow2",
        &[(65536, 65536, 0xe0), (5 * MIB + 512, 512, 0xe1)],
        &mut model,
    );

    let disk = open_rw(&top, Format::Qcow2);
    assert_reads(disk.as_ref(), &model);
    let reference = reference_of(&top, "qcow2", d);
    let mut rng = Rng(seed());
    random_writes(disk.as_ref(), &reference, &mut model, &mut rng);
    assert_reads(disk.as_ref(), &model);
    drop(disk);

    for image in [&top, &upper, &mid] {
        assert_clean(image);
    }
    assert_identical(&top, "qcow2", &reference, "raw");
    // Backing layers were opened read-only: still exactly what qemu-io wrote.
    qemu_io(&upper, "qcow2", &["read -P 0xd0 1000 3000".to_string()]);
}

/// Discard on v3 must leave a consistent image whose discarded clusters are unallocated.
#[test]
fn discard_frees_clusters_consistently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("d.qcow2");
    qemu_create(&image, "qcow2", "8M", None);
    qemu_io(&image, "qcow2", &["write -P 0x5a 0 4M".to_string()]);
    let disk = open_rw(&image, Format::Qcow2);
    disk.discard(MIB, 2 * MIB).expect("discard");
    disk.flush().expect("flush");
    let mem = memory(mem_for(4096));
    assert_eq!(read(disk.as_ref(), &mem, 0, 4096), vec![0x5a; 4096]);
    drop(disk);
    assert_clean(&image);
    qemu_io(
        &image,
        "qcow2",
        &[
            "read -P 0x5a 0 1M".to_string(),
            "read -P 0 1M 2M".to_string(),
            "read -P 0x5a 3M 1M".to_string(),
        ],
    );
    let map = String::from_utf8_lossy(&qemu_img(&["map", "--output=json", p(&image)]).stdout)
        .into_owned();
    assert!(
        map.contains("\"start\": 1048576, \"length\": 2097152, \"depth\": 0, \"present\": true, \"zero\": true, \"data\": false"),
        "discarded range still allocated: {map}"
    );
}

/// Raw images: qemu-io writes read back through our raw backend and vice versa.
#[test]
fn raw_roundtrip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.raw");
    let size = 8 * MIB;
    qemu_create(&image, "raw", &size.to_string(), None);
    let mut model = vec![0u8; size as usize];
    apply_qemu_writes(&image, "raw", &qemu_writes(size), &mut model);
    let reference = dir.path().join("ref.raw");
    std::fs::copy(&image, &reference).expect("copy");
    let disk = open_rw(&image, Format::Raw);
    assert_reads(disk.as_ref(), &model);
    let mut rng = Rng(seed());
    random_writes(disk.as_ref(), &reference, &mut model, &mut rng);
    disk.discard(4096, 8192).expect("discard");
    let mem = memory(mem_for(8192));
    assert_eq!(read(disk.as_ref(), &mem, 4096, 8192), vec![0; 8192]);
    model[4096..4096 + 8192].fill(0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&reference)
        .expect("ref")
        .write_all_at(&[0; 8192], 4096)
        .expect("ref write");
    drop(disk);
    assert_identical(&image, "raw", &reference, "raw");
}

/// Small requests inside one owned cluster take the direct fast path; it must stay coherent
/// with copy-on-write (snapshot-shared clusters), discard and write-zeroes.
#[test]
fn fast_path_stays_coherent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("fast.qcow2");
    let size = 4 * MIB;
    qemu_create(&image, "qcow2", &size.to_string(), None);
    qemu_io(&image, "qcow2", &["write -P 0x31 0 1M".to_string()]);
    qemu_img(&["snapshot", "-c", "s", p(&image)]); // clusters 0..1M now shared
    let mut model = vec![0u8; size as usize];
    model[..MIB as usize].fill(0x31);
    let disk = open_rw(&image, Format::Qcow2);
    let mem = memory(mem_for(65536));
    let mut rng = Rng(seed());
    for round in 0..6 {
        for _ in 0..200 {
            let off = rng.below(size / 4096) * 4096;
            let op = rng.below(10);
            if op < 5 {
                let got = read(disk.as_ref(), &mem, off, 4096);
                assert_eq!(
                    got,
                    model[off as usize..off as usize + 4096],
                    "round {round} read {off:#x}"
                );
            } else if op < 9 {
                let data: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
                write(disk.as_ref(), &mem, off, &data);
                model[off as usize..off as usize + 4096].copy_from_slice(&data);
            } else {
                let cluster = off / 65536 * 65536;
                if rng.below(2) == 0 {
                    disk.discard(cluster, 65536).expect("discard");
                } else {
                    disk.write_zeroes(cluster, 65536, rng.below(2) == 0)
                        .expect("zeroes");
                }
                model[cluster as usize..cluster as usize + 65536].fill(0);
            }
        }
        assert_reads(disk.as_ref(), &model);
    }
    drop(disk);
    assert_clean(&image);
    let snap = dir.path().join("snap.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        "-l",
        "snapshot.name=s",
        p(&image),
        p(&snap),
    ]);
    let snap_bytes = std::fs::read(&snap).expect("snapshot");
    assert!(
        snap_bytes[..MIB as usize].iter().all(|&b| b == 0x31),
        "snapshot modified"
    );
    let now = reference_of(&image, "qcow2", dir.path());
    assert_eq!(std::fs::read(&now).expect("now"), model);
}

/// A disk smaller than one cluster, its data partly zeroed: imago 0.2.6 underflowed computing
/// the aligned tail of such a write-zeroes (found by the qcow2_open fuzz target). Both variants
/// zero exactly the range, keep the rest, and leave an image qemu-img reads the same way.
#[test]
fn write_zeroes_inside_a_disk_smaller_than_one_cluster() {
    for may_unmap in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("small.qcow2");
        let out = qemu_create(&image, "qcow2", "2K", Some("cluster_size=4096,compat=1.1"));
        assert!(out.status.success(), "{out:?}");
        qemu_io(&image, "qcow2", &["write -P 0x55 0 2k".to_string()]);
        let disk = open_rw(&image, Format::Qcow2);
        disk.write_zeroes(0, 512, may_unmap).expect("write_zeroes");
        disk.flush().expect("flush");
        drop(disk);
        assert_clean(&image);
        qemu_io(
            &image,
            "qcow2",
            &[
                "read -P 0 0 512".to_string(),
                "read -P 0x55 512 1536".to_string(),
            ],
        );
    }
}
