//! Images made by `create_raw`, `create_qcow2` and `create_qcow2_overlay` are what QEMU
//! expects: `qemu-img check` is clean, `qemu-img info` reports the requested shape, and data
//! written by either side reads back on the other.

mod common;

use std::path::Path;

use common::*;
use vireo_block::{
    create_qcow2, create_qcow2_overlay, create_raw, open_disk, BlockError, Format, OpenOptions,
    DEFAULT_CLUSTER_SIZE,
};

const MIB: u64 = 1 << 20;

fn info(path: &Path) -> String {
    String::from_utf8_lossy(&qemu_img(&["info", "--output=json", p(path)]).stdout).into_owned()
}

/// We write 0xa1 at 1 MiB − 512 (crossing clusters), qemu-io checks it (and that 7 MiB is still
/// zero); qemu-io writes 0xb2 at
/// 3 MiB, we check it.
fn exchange(path: &Path, format: Format) {
    let disk = open_rw(path, format);
    let mem = memory(mem_for(256 * 1024));
    write(disk.as_ref(), &mem, MIB - 512, &[0xa1; 70000]);
    disk.flush().expect("flush");
    drop(disk);
    qemu_io(
        path,
        format.name(),
        &[
            format!("read -P 0xa1 {} 70000", MIB - 512),
            format!("read -P 0 {} 512", 7 * MIB),
            format!("write -P 0xb2 {} 4096", 3 * MIB),
        ],
    );
    let disk = open_rw(path, format);
    assert_eq!(read(disk.as_ref(), &mem, 3 * MIB, 4096), vec![0xb2; 4096]);
}

#[test]
fn raw_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("disk.img");
    create_raw(&path, 8 * MIB).expect("create");
    let info = info(&path);
    assert!(
        info.contains("\"format\": \"raw\"") && info.contains("\"virtual-size\": 8388608"),
        "{info}"
    );
    exchange(&path, Format::Raw);
}

#[test]
fn qcow2_images_of_every_cluster_size_class() {
    let dir = tempfile::tempdir().expect("tempdir");
    for cluster in [512, 4096, DEFAULT_CLUSTER_SIZE, 2 * MIB] {
        let path = dir.path().join(format!("c{cluster}.qcow2"));
        create_qcow2(&path, 16 * MIB, cluster).expect("create");
        assert_clean(&path);
        let info = info(&path);
        assert!(
            info.contains(&format!("\"cluster-size\": {cluster}"))
                && info.contains("\"virtual-size\": 16777216")
                && info.contains("\"compat\": \"1.1\""),
            "{info}"
        );
        exchange(&path, Format::Qcow2);
        assert_clean(&path);
    }
}

#[test]
fn overlays_over_raw_and_qcow2_bases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let raw = d.join("base.raw");
    let qcow = d.join("base.qcow2");
    create_raw(&raw, 8 * MIB).expect("raw");
    create_qcow2(&qcow, 8 * MIB, DEFAULT_CLUSTER_SIZE).expect("qcow2");
    qemu_io(&raw, "raw", &["write -P 0x10 0 2M".to_string()]);
    qemu_io(&qcow, "qcow2", &["write -P 0x20 0 2M".to_string()]);

    for (base, fmt, pat) in [(&raw, Format::Raw, 0x10u8), (&qcow, Format::Qcow2, 0x20)] {
        let overlay = d.join(format!("over-{}.qcow2", fmt.name()));
        // Relative to the overlay's directory, as with qemu-img create -b.
        let name = base.file_name().expect("name");
        create_qcow2_overlay(&overlay, Path::new(name), fmt).expect("overlay");
        assert_clean(&overlay);
        let info = info(&overlay);
        assert!(
            info.contains(&format!("\"backing-filename-format\": \"{}\"", fmt.name()))
                && info.contains("\"virtual-size\": 8388608"),
            "{info}"
        );
        let disk = open_rw(&overlay, Format::Qcow2);
        let mem = memory(mem_for(8192));
        assert_eq!(read(disk.as_ref(), &mem, 4096, 8192), vec![pat; 8192]);
        drop(disk);
        exchange(&overlay, Format::Qcow2);
        assert_clean(&overlay);
        // The base is untouched.
        qemu_io(
            base,
            fmt.name(),
            &[format!("read -P {pat} {} 4096", MIB - 512)],
        );
    }
}

#[test]
fn creation_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let path = d.join("x.qcow2");
    assert!(matches!(
        create_qcow2(&path, MIB, 1000),
        Err(BlockError::InvalidClusterSize(1000))
    ));
    assert!(matches!(
        create_qcow2(&path, 513, 65536),
        Err(BlockError::InvalidDiskSize(513))
    ));
    assert!(matches!(
        create_raw(&path, 0),
        Err(BlockError::InvalidDiskSize(0))
    ));
    assert!(!path.exists());
    create_qcow2(&path, MIB, 65536).expect("create");
    assert!(matches!(
        create_qcow2(&path, MIB, 65536),
        Err(BlockError::AlreadyExists { .. })
    ));
    assert!(matches!(
        create_raw(&path, MIB),
        Err(BlockError::AlreadyExists { .. })
    ));
    let overlay = d.join("o.qcow2");
    assert!(matches!(
        create_qcow2_overlay(&overlay, Path::new("missing.raw"), Format::Raw),
        Err(BlockError::MissingBackingFile { .. })
    ));
    assert!(!overlay.exists());
}

/// Synchronous engines finish every request of the completion face inside `submit`, tagged
/// with the caller's `user_data`, and have no completion fd or in-flight completions.
#[test]
fn submit_completes_inline_with_the_callers_tag() {
    use vireo_block::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
    use vireo_block::DiskRequest;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("disk.img");
    create_raw(&path, 8 * MIB).expect("create");
    let disk = open_rw(&path, Format::Raw);
    let mem = memory(mem_for(4096));
    assert!(disk.completion_fd().is_none());

    mem.write_slice(&[0x5c; 4096], GuestAddress(0))
        .expect("fill");
    let slice = [mem.get_slice(GuestAddress(0), 4096).expect("slice")];
    let requests = [
        (
            7,
            DiskRequest::Write {
                offset: MIB,
                bufs: &slice,
            },
            4096,
        ),
        (8, DiskRequest::Flush, 0),
        (
            9,
            DiskRequest::WriteZeroes {
                offset: 2 * MIB,
                len: 512,
                may_unmap: false,
            },
            512,
        ),
    ];
    for (tag, req, bytes) in requests {
        // SAFETY: `mem` outlives the call, and a synchronous engine completes inline.
        let done = unsafe { disk.submit(tag, req) }.expect("completes inline");
        assert_eq!(done.user_data, tag);
        assert_eq!(done.result.expect("request succeeded"), bytes);
    }
    mem.write_slice(&[0; 4096], GuestAddress(0)).expect("clear");
    // SAFETY: as above.
    let done = unsafe {
        disk.submit(
            10,
            DiskRequest::Read {
                offset: MIB,
                bufs: &slice,
            },
        )
    }
    .expect("completes inline");
    assert_eq!((done.user_data, done.result.expect("read")), (10, 4096));
    let mut back = [0u8; 4096];
    mem.read_slice(&mut back, GuestAddress(0))
        .expect("read back");
    assert_eq!(back, [0x5c; 4096]);
    let mut reaped = Vec::new();
    disk.reap(&mut reaped);
    assert!(reaped.is_empty());
}

/// `direct` (O_DIRECT) opens move data both with sector-aligned guest buffers and, through a
/// bounce buffer, with misaligned ones; the data is what qemu-io reads back.
#[test]
fn direct_io_round_trips_aligned_and_misaligned_buffers() {
    use vireo_block::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    let dir = tempfile::tempdir().expect("tempdir");
    for format in [Format::Raw, Format::Qcow2] {
        let path = dir.path().join(format!("direct.{}", format.name()));
        match format {
            Format::Raw => create_raw(&path, 8 * MIB),
            Format::Qcow2 => create_qcow2(&path, 8 * MIB, DEFAULT_CLUSTER_SIZE),
        }
        .expect("create");
        let disk = open_disk(
            &path,
            &OpenOptions {
                format: Some(format),
                direct: true,
                ..OpenOptions::default()
            },
        )
        .expect("open with O_DIRECT");
        let mem = memory(mem_for(3 * 4096) + 8192);
        // Aligned, scattered over three buffers.
        write(disk.as_ref(), &mem, MIB, &[0x3d; 3 * 4096]);
        // A buffer 100 bytes into a page is not 512-aligned: the bounce path.
        let odd = GuestAddress(mem_for(3 * 4096) as u64 + 100);
        mem.write_slice(&[0x7e; 1024], odd).expect("fill");
        let slice = [mem.get_slice(odd, 1024).expect("slice")];
        disk.write_vectored(2 * MIB, &slice)
            .expect("misaligned write");
        disk.flush().expect("flush");
        mem.write_slice(&[0; 1024], odd).expect("clear");
        disk.read_vectored(2 * MIB, &slice)
            .expect("misaligned read");
        let mut back = [0u8; 1024];
        mem.read_slice(&mut back, odd).expect("read back");
        assert_eq!(back, [0x7e; 1024], "{format}");
        assert_eq!(
            read(disk.as_ref(), &mem, MIB, 3 * 4096),
            vec![0x3d; 3 * 4096]
        );
        drop(disk);
        qemu_io(
            &path,
            format.name(),
            &[
                format!("read -P 0x3d {} {}", MIB, 3 * 4096),
                format!("read -P 0x7e {} 1024", 2 * MIB),
            ],
        );
    }
}
