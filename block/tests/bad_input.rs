//! Bad input gives a typed error naming the problem, never a panic.
//!
//! Images are made by qemu-img and then damaged byte by byte (or chained wrongly), so every
//! case starts from a real file rather than a hand-written header.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use vireo_block::{
    open_disk, BlockError, CompressionType, Format, MetadataTable, OpenOptions, MAX_BACKING_DEPTH,
};

fn open_err(path: &Path) -> BlockError {
    match open_as(path, Some(Format::Qcow2), false) {
        Ok(disk) => panic!("{} opened: {disk:?}", path.display()),
        Err(e) => e,
    }
}

/// A fresh 1 MiB qcow2 v3 image (64 KiB clusters: header, reftable at 0x10000, refblock at
/// 0x20000, L1 at 0x30000).
fn fresh(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    qemu_create(&path, "qcow2", "1M", None);
    qemu_io(&path, "qcow2", &["write -P 0x42 0 64k".to_string()]);
    path
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for patch")
        .write_all_at(bytes, offset)
        .expect("patch");
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open")
        .set_len(len)
        .expect("truncate");
}

#[test]
fn truncated_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = fresh(dir.path(), "t.qcow2");
    truncate(&img, 40);
    assert!(matches!(
        open_err(&img),
        BlockError::Truncated {
            needed: 72,
            file_len: 40
        }
    ));

    let img = fresh(dir.path(), "t3.qcow2");
    truncate(&img, 100);
    assert!(matches!(
        open_err(&img),
        BlockError::Truncated {
            needed: 104,
            file_len: 100
        }
    ));

    // Header intact, tables cut off.
    let img = fresh(dir.path(), "t4.qcow2");
    truncate(&img, 0x18000);
    assert!(matches!(
        open_err(&img),
        BlockError::TableOutsideFile {
            table: MetadataTable::L1Table,
            offset: 0x30000,
            file_len: 0x18000,
            ..
        }
    ));
}

#[test]
fn header_points_outside_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = fresh(dir.path(), "l1.qcow2");
    patch(&img, 40, &(1u64 << 40).to_be_bytes()); // l1_table_offset
    assert!(matches!(
        open_err(&img),
        BlockError::TableOutsideFile { table: MetadataTable::L1Table, offset, .. } if offset == 1 << 40
    ));

    let img = fresh(dir.path(), "rt.qcow2");
    patch(&img, 48, &0x7fff_0000u64.to_be_bytes()); // refcount_table_offset
    assert!(matches!(
        open_err(&img),
        BlockError::TableOutsideFile {
            table: MetadataTable::RefcountTable,
            offset: 0x7fff_0000,
            ..
        }
    ));

    let img = fresh(dir.path(), "bf.qcow2");
    patch(&img, 8, &0xfff0u64.to_be_bytes()); // backing_file_offset near cluster end
    patch(&img, 16, &100u32.to_be_bytes()); // backing_file_size
    assert!(matches!(
        open_err(&img),
        BlockError::TableOutsideFile {
            table: MetadataTable::BackingFileName,
            ..
        }
    ));
}

#[test]
fn refcount_table_overlaps_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = fresh(dir.path(), "o.qcow2");
    patch(&img, 48, &0u64.to_be_bytes());
    assert!(matches!(
        open_err(&img),
        BlockError::RefcountTableOverlapsHeader { offset: 0 }
    ));
    let img = fresh(dir.path(), "o2.qcow2");
    patch(&img, 40, &0u64.to_be_bytes());
    assert!(matches!(
        open_err(&img),
        BlockError::L1TableOverlapsHeader { offset: 0 }
    ));
}

#[test]
fn backing_chain_loop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    let base = fresh(dir.path(), "base.qcow2");
    qemu_overlay(p(&a), "base.qcow2", "qcow2", None);
    qemu_overlay(p(&b), "a.qcow2", "qcow2", None);
    // Point a back at b: a → b → a.
    qemu_img(&["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", p(&a)]);
    match open_err(&b) {
        BlockError::BackingChainLoop { path } => assert!(path.ends_with("b.qcow2"), "{path:?}"),
        other => panic!("unexpected {other:?}"),
    }
    // A self-loop too.
    qemu_img(&["rebase", "-u", "-b", "base.qcow2", "-F", "qcow2", p(&base)]);
    assert!(matches!(
        open_err(&base),
        BlockError::BackingChainLoop { .. }
    ));
}

#[test]
fn missing_backing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = fresh(dir.path(), "base.qcow2");
    let top = dir.path().join("top.qcow2");
    qemu_overlay(p(&top), "base.qcow2", "qcow2", None);
    std::fs::remove_file(&base).expect("rm");
    match open_err(&top) {
        BlockError::MissingBackingFile { path } => assert_eq!(path, dir.path().join("base.qcow2")),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn backing_chain_too_deep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut below = "l0.raw".to_string();
    let mut below_fmt = "raw";
    qemu_create(&dir.path().join(&below), "raw", "1M", None);
    for i in 1..=MAX_BACKING_DEPTH {
        let name = format!("l{i}.qcow2");
        qemu_overlay(p(&dir.path().join(&name)), &below, below_fmt, None);
        below = name;
        below_fmt = "qcow2";
    }
    // MAX_BACKING_DEPTH qcow2 layers + the raw base is one too many.
    assert!(matches!(
        open_err(&dir.path().join(&below)),
        BlockError::BackingChainTooDeep { max } if max == MAX_BACKING_DEPTH
    ));
    // One layer less opens.
    let ok = dir.path().join(format!("l{}.qcow2", MAX_BACKING_DEPTH - 1));
    open_as(&ok, Some(Format::Qcow2), true).expect("chain of the maximum depth");
}

#[test]
fn backing_format_not_recorded_is_refused_for_qcow2_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = fresh(dir.path(), "base.qcow2");
    let raw = dir.path().join("base.raw");
    qemu_create(&raw, "raw", "1M", None);
    for (name, backing, fmt) in [("q.qcow2", &base, "qcow2"), ("r.qcow2", &raw, "raw")] {
        let top = dir.path().join(name);
        qemu_overlay(p(&top), p(backing), fmt, None);
        // Turn the backing-format extension into an unknown (ignored) one.
        let bytes = std::fs::read(&top).expect("read");
        let pos = bytes
            .windows(4)
            .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
            .expect("backing format extension");
        patch(&top, pos as u64, &[0x12, 0x34, 0x56, 0x78]);
    }
    match open_err(&dir.path().join("q.qcow2")) {
        BlockError::BackingFormatNotRecorded { path } => assert_eq!(path, base),
        other => panic!("unexpected {other:?}"),
    }
    // A probed raw backing is accepted.
    open_as(&dir.path().join("r.qcow2"), Some(Format::Qcow2), false).expect("raw backing probed");
}

#[test]
fn unsupported_features_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    let zstd = d.join("zstd.qcow2");
    qemu_create(&zstd, "qcow2", "1M", Some("compression_type=zstd"));
    assert!(matches!(
        open_err(&zstd),
        BlockError::UnsupportedCompression(CompressionType::Zstd)
    ));

    let ext = d.join("ext.qcow2");
    let data_file = format!("data_file={}", p(&d.join("data.raw")));
    qemu_create(&ext, "qcow2", "1M", Some(&data_file));
    assert!(matches!(open_err(&ext), BlockError::ExternalDataFile));

    let unknown = fresh(d, "unknown.qcow2");
    patch(&unknown, 72, &(1u64 << 40 | 1 << 9).to_be_bytes());
    assert!(matches!(
        open_err(&unknown),
        BlockError::UnknownIncompatibleFeatures(bits) if bits == 1 << 40 | 1 << 9
    ));

    let dirty = fresh(d, "dirty.qcow2");
    patch(&dirty, 72, &1u64.to_be_bytes());
    assert!(matches!(open_err(&dirty), BlockError::DirtyImage));

    let corrupt = fresh(d, "corrupt.qcow2");
    patch(&corrupt, 72, &2u64.to_be_bytes());
    assert!(matches!(open_err(&corrupt), BlockError::CorruptImage));

    let crypt = fresh(d, "crypt.qcow2");
    patch(&crypt, 32, &1u32.to_be_bytes());
    assert!(matches!(open_err(&crypt), BlockError::Encrypted(1)));

    let extl2 = d.join("extl2.qcow2");
    qemu_create(&extl2, "qcow2", "1M", Some("extended_l2=on"));
    assert!(matches!(open_err(&extl2), BlockError::ExtendedL2));

    let badversion = fresh(d, "v4.qcow2");
    patch(&badversion, 4, &4u32.to_be_bytes());
    assert!(matches!(
        open_err(&badversion),
        BlockError::UnsupportedVersion(4)
    ));

    let badcluster = fresh(d, "c.qcow2");
    patch(&badcluster, 20, &30u32.to_be_bytes());
    assert!(matches!(
        open_err(&badcluster),
        BlockError::InvalidClusterBits(30)
    ));
}

#[test]
fn unreferenced_metadata_refused_for_writing_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = fresh(dir.path(), "r.qcow2");
    // Refcount of cluster 3 (the L1 table at 0x30000) := 0 in the refblock at 0x20000.
    patch(&img, 0x20000 + 3 * 2, &[0, 0]);
    assert!(matches!(
        open_err(&img),
        BlockError::UnreferencedMetadata {
            table: MetadataTable::L1Table,
            offset: 0x30000
        }
    ));
    let disk = open_as(&img, Some(Format::Qcow2), true).expect("read-only open");
    let mem = memory(mem_for(4096));
    assert_eq!(read(disk.as_ref(), &mem, 0, 4096), vec![0x42; 4096]);

    let img = fresh(dir.path(), "overlap.qcow2");
    // Point the first L2 table at the refcount block.
    let l1 = std::fs::read(&img).expect("read")[0x30000..0x30008].to_vec();
    let flags = u64::from_be_bytes(l1.try_into().expect("8 bytes")) & !0x00ff_ffff_ffff_fe00;
    patch(&img, 0x30000, &(flags | 0x20000).to_be_bytes());
    assert!(matches!(
        open_err(&img),
        BlockError::MetadataOverlap {
            offset: 0x20000,
            ..
        }
    ));
}

#[test]
fn raw_is_never_reinterpreted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let qcow = fresh(dir.path(), "q.qcow2");
    let raw = dir.path().join("disk.raw");
    std::fs::copy(&qcow, &raw).expect("copy");
    let head = std::fs::read(&raw).expect("read")[..4096].to_vec();
    // Explicit raw: the qcow2 header is just data.
    let disk = open_as(&raw, Some(Format::Raw), false).expect("open raw");
    assert_eq!(disk.format(), Format::Raw);
    let mem = memory(mem_for(4096));
    assert_eq!(read(disk.as_ref(), &mem, 0, 4096), head);
    drop(disk);

    // A probed raw disk refuses to gain a qcow2 magic at offset 0 (and allows other writes).
    let plain = dir.path().join("plain.img");
    std::fs::write(&plain, vec![0u8; 1 << 20]).expect("write");
    let disk = open_as(&plain, None, false).expect("probe raw");
    assert_eq!(disk.format(), Format::Raw);
    let mem = memory(mem_for(4096));
    let mut sector = head[..512].to_vec();
    let slice = {
        use vireo_block::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
        mem.write_slice(&sector, GuestAddress(0)).expect("mem");
        mem.get_slice(GuestAddress(0), 512).expect("slice")
    };
    assert!(matches!(
        disk.write_vectored(0, &[slice]),
        Err(BlockError::ProbedRawHeaderWrite)
    ));
    sector[0] = 0;
    write(disk.as_ref(), &mem, 0, &sector);
    write(disk.as_ref(), &mem, 4096, &head[..512]);
    assert_eq!(disk.counters().get(vireo_block::OpKind::Write).errors, 1);
}

#[test]
fn read_only_and_range_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = fresh(dir.path(), "ro.qcow2");
    let disk = open_as(&img, Some(Format::Qcow2), true).expect("open");
    assert!(disk.read_only());
    assert!(!disk.capabilities().discard && !disk.capabilities().write_zeroes);
    let mem = memory(mem_for(4096));
    use vireo_block::vm_memory::{GuestAddress, GuestMemoryBackend};
    let slice = mem.get_slice(GuestAddress(0), 4096).expect("slice");
    assert!(matches!(
        disk.write_vectored(0, &[slice]),
        Err(BlockError::ReadOnly)
    ));
    assert!(matches!(disk.discard(0, 512), Err(BlockError::ReadOnly)));
    let slice = mem.get_slice(GuestAddress(0), 4096).expect("slice");
    assert!(matches!(
        disk.read_vectored((1 << 20) - 512, &[slice]),
        Err(BlockError::OutOfRange { size: 1048576, .. })
    ));
    assert!(matches!(
        disk.write_zeroes(u64::MAX, 2, false),
        Err(BlockError::ReadOnly)
    ));
    let c = disk.counters();
    assert_eq!(c.get(vireo_block::OpKind::Write).errors, 1);
    assert_eq!(c.get(vireo_block::OpKind::Read).errors, 1);
    drop(disk);
    let disk = open_as(&img, Some(Format::Qcow2), false).expect("open rw");
    assert!(matches!(
        disk.write_zeroes(u64::MAX, 2, false),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        open_disk(
            &img,
            &OpenOptions {
                serial: Some("x".repeat(21)),
                ..OpenOptions::default()
            }
        ),
        Err(BlockError::InvalidSerial(_))
    ));
}
