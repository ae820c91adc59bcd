//! Opening disks: [`OpenOptions`] → [`open_disk`] → `Box<dyn DiskBackend>`.
//!
//! The format is the caller's ([`OpenOptions::format`]) or, when `None`, probed from the
//! file's magic (see [`crate::probe`]). A probed raw image gets QEMU's sector-0 guard; an image
//! opened with an explicit `Format::Raw` is never looked at as anything but raw.

use std::fs::File;
use std::path::Path;

use tracing::info;

use crate::backend::{DeviceId, DiskBackend};
use crate::disk::Disk;
use crate::error::{BlockError, Result};
use crate::formats::qcow2::Qcow2Engine;
use crate::formats::raw::RawEngine;
use crate::probe::{probe_path, Format};

/// How to open a disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// The image format; `None` probes the file's magic. Launch specs should always record it.
    pub format: Option<Format>,
    /// Open read-only (the file is opened `O_RDONLY`; modifying requests fail).
    pub read_only: bool,
    /// Bypass the host page cache (`O_DIRECT`).
    pub direct: bool,
    /// The virtio-blk serial (≤ 20 printable ASCII bytes); `None` derives one from the
    /// canonical path.
    pub serial: Option<String>,
}

/// Open the disk image at `path`.
pub fn open_disk(path: &Path, opts: &OpenOptions) -> Result<Box<dyn DiskBackend>> {
    let (format, probed) = match opts.format {
        Some(f) => (f, false),
        None => (probe_path(path)?, true),
    };
    let id = match &opts.serial {
        Some(serial) => DeviceId::new(serial)?,
        None => {
            let canonical = path
                .canonicalize()
                .map_err(|e| BlockError::io("canonicalize", path, e))?;
            DeviceId::derived_from(&canonical.to_string_lossy())
        }
    };
    let disk: Box<dyn DiskBackend> = match format {
        Format::Raw => {
            let (engine, size) = RawEngine::open(path, opts.read_only, opts.direct, probed)?;
            Box::new(Disk::new(engine, size, opts.read_only, id))
        }
        Format::Qcow2 => {
            let (engine, size) = Qcow2Engine::open(path, opts.read_only, opts.direct)?;
            Box::new(Disk::new(engine, size, opts.read_only, id))
        }
    };
    info!(
        path = %path.display(),
        %format,
        probed,
        read_only = opts.read_only,
        size = disk.size(),
        id = %disk.device_id(),
        "disk opened"
    );
    Ok(disk)
}

/// Open an already open file as a qcow2 disk (no probing). `path` is used for messages and to
/// resolve relative backing file names. Meant for callers that hold a file descriptor (the fuzz
/// target uses a memfd).
pub fn open_qcow2_file(path: &Path, file: File, read_only: bool) -> Result<Box<dyn DiskBackend>> {
    let (engine, size) = Qcow2Engine::open_file(path, file, read_only, false)?;
    let id = DeviceId::derived_from(&path.to_string_lossy());
    Ok(Box::new(Disk::new(engine, size, read_only, id)))
}
