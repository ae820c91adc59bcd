//! Image creation for the launcher, so users never need `qemu-img` to start a VM.
//!
//! - [`create_raw`]: a sparse file of the given size.
//! - [`create_qcow2`]: an empty qcow2 v3 image (refcount width 16, like QEMU's default).
//! - [`create_qcow2_overlay`]: a qcow2 v3 image over a base, with the backing format recorded
//!   in the header (so opening it never probes) and the base's size.
//!
//! Guarantees: an existing file is never overwritten ([`BlockError::AlreadyExists`]); a
//! failed creation removes its partial file; every image made here passes `qemu-img check`
//! (tested in `tests/create.rs`).

use std::fs::OpenOptions;
use std::path::Path;

use imago::qcow2::Qcow2;
use imago::{FormatCreateBuilder, Storage, StorageCreateOptions};
use tracing::info;

use crate::error::{BlockError, Result};
use crate::formats::qcow2::{resolve_relative, MAX_VIRTUAL_SIZE};
use crate::open::{open_disk, OpenOptions as DiskOpenOptions};
use crate::probe::Format;

/// Default qcow2 cluster size (QEMU's): 64 KiB.
pub const DEFAULT_CLUSTER_SIZE: u64 = 64 * 1024;

fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(512) || size > MAX_VIRTUAL_SIZE {
        return Err(BlockError::InvalidDiskSize(size));
    }
    Ok(())
}

fn check_absent(path: &Path) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        return Err(BlockError::AlreadyExists {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Create a sparse raw image of `size` bytes (a multiple of 512).
pub fn create_raw(path: &Path, size: u64) -> Result<()> {
    check_size(size)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => BlockError::AlreadyExists {
                path: path.to_owned(),
            },
            _ => BlockError::io("create", path, e),
        })?;
    if let Err(e) = file.set_len(size).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(path);
        return Err(BlockError::io("resize", path, e));
    }
    info!(path = %path.display(), size, "created raw image");
    Ok(())
}

/// Create an empty qcow2 v3 image of `size` bytes with the given cluster size (a power of two
/// from 512 B to 2 MiB; [`DEFAULT_CLUSTER_SIZE`] is QEMU's default).
pub fn create_qcow2(path: &Path, size: u64, cluster_size: u64) -> Result<()> {
    check_size(size)?;
    check_cluster_size(cluster_size)?;
    make_qcow2(path, size, cluster_size, None)?;
    info!(path = %path.display(), size, cluster_size, "created qcow2 image");
    Ok(())
}

/// Create a qcow2 v3 overlay at `path` over `backing_path` (format `backing_format`), with the
/// base's virtual size and the default cluster size.
///
/// `backing_path` is stored as given; a relative path is relative to the overlay's directory
/// (as with `qemu-img create -b`). The base and its own chain are opened first, so an overlay
/// over a missing, looping or unreadable chain is refused before anything is written.
pub fn create_qcow2_overlay(
    path: &Path,
    backing_path: &Path,
    backing_format: Format,
) -> Result<()> {
    let name = backing_path
        .to_str()
        .ok_or(BlockError::InvalidBackingFileName)?;
    if name.is_empty() || name.len() > 1023 {
        return Err(BlockError::InvalidBackingFileName);
    }
    let resolved = resolve_relative(path, name);
    if !resolved.exists() {
        return Err(BlockError::MissingBackingFile { path: resolved });
    }
    let base = open_disk(
        &resolved,
        &DiskOpenOptions {
            format: Some(backing_format),
            read_only: true,
            ..DiskOpenOptions::default()
        },
    )?;
    let size = base.size();
    drop(base);
    if size > MAX_VIRTUAL_SIZE {
        return Err(BlockError::InvalidDiskSize(size));
    }
    make_qcow2(
        path,
        size,
        DEFAULT_CLUSTER_SIZE,
        Some((name.to_owned(), backing_format.name().to_owned())),
    )?;
    info!(
        path = %path.display(),
        backing = name,
        format = %backing_format,
        size,
        "created qcow2 overlay"
    );
    Ok(())
}

fn check_cluster_size(cluster_size: u64) -> Result<()> {
    if !cluster_size.is_power_of_two() || !(512..=2 * 1024 * 1024).contains(&cluster_size) {
        return Err(BlockError::InvalidClusterSize(cluster_size));
    }
    Ok(())
}

fn make_qcow2(
    path: &Path,
    size: u64,
    cluster_size: u64,
    backing: Option<(String, String)>,
) -> Result<()> {
    check_absent(path)?;
    // Creation writes a fresh, unreferenced file: imago's plain file storage is enough.
    let file = imago::file::File::create_open(StorageCreateOptions::new().filename(path)).map_err(
        |e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => BlockError::AlreadyExists {
                path: path.to_owned(),
            },
            _ => BlockError::io("create", path, e),
        },
    )?;
    // Checked to be ≤ 2 MiB above.
    let mut builder = Qcow2::<imago::file::File>::create_builder(file)
        .size(size)
        .cluster_size(cluster_size as usize);
    if let Some((name, format)) = backing {
        builder = builder.backing(name, format);
    }
    let res = builder
        .create()
        .map_err(|e| BlockError::qcow2("create", path, e))
        .and_then(|()| {
            std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|e| BlockError::io("fsync", path, e))
        });
    if res.is_err() {
        let _ = std::fs::remove_file(path);
    }
    res
}
