//! Backing chains: resolve, check and open every layer under a qcow2 image ourselves, then
//! hand imago the finished chain (it never opens a file on its own: every open goes through
//! imago's `DenyImplicitOpenGate`).
//!
//! Rules (QEMU's where QEMU has one):
//! - a relative backing name is resolved against the directory of the image that names it;
//! - the backing format comes from the overlay's backing-format header extension (read by us
//!   for v2 images too); without one the backing file is probed, and a probe that finds qcow2 is
//!   refused with [`BlockError::BackingFormatNotRecorded`] — only raw is ever inferred;
//! - a file seen twice in one chain is [`BlockError::BackingChainLoop`]; more than
//!   [`MAX_BACKING_DEPTH`] layers is [`BlockError::BackingChainTooDeep`];
//! - a missing backing file is [`BlockError::MissingBackingFile`];
//! - every layer below the top is opened read-only.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, StorageOpenOptions};
use tracing::debug;

use super::header::Qcow2Header;
use super::storage::FreeSignal;
use crate::error::{BlockError, Result};
use crate::probe::{backing_format_from_name, probe_file, Format};

/// Deepest backing chain accepted (images, including the top one).
pub const MAX_BACKING_DEPTH: usize = 16;

/// The storage type imago opens images through: a file wrapper that orders qcow2 pointer
/// writes after their refcounts (see `storage.rs`).
pub(crate) type ImagoFile = super::storage::GuardedFile;

/// One layer of a chain, top first, with its open file and (for qcow2) validated header.
struct Layer {
    path: PathBuf,
    file: File,
    header: Option<Qcow2Header>,
}

/// Open `file` (already opened from `path`, validated as `header`) as the top of a qcow2
/// chain. Returns the imago image, ready for I/O.
pub(crate) fn open_chain(
    path: &Path,
    file: File,
    header: Qcow2Header,
    writable: bool,
    direct: bool,
    frees: &FreeSignal,
) -> Result<FormatAccess<ImagoFile>> {
    let mut layers = resolve(path, file, header, direct)?;
    let count = layers.len();
    let top = layers.remove(0);
    let mut below: Option<FormatAccess<ImagoFile>> = None;
    for layer in layers.into_iter().rev() {
        below = Some(open_layer(layer, below, false, direct, None)?);
    }
    let access = open_layer(
        top,
        below,
        writable,
        direct,
        writable.then(|| frees.clone()),
    )?;
    debug!(path = %path.display(), layers = count, "opened qcow2 chain");
    Ok(access)
}

/// Hand one layer (and the already opened chain below it) to imago.
fn open_layer(
    layer: Layer,
    below: Option<FormatAccess<ImagoFile>>,
    writable: bool,
    direct: bool,
    frees: Option<FreeSignal>,
) -> Result<FormatAccess<ImagoFile>> {
    let opts = StorageOpenOptions::new()
        .filename(&layer.path)
        .write(writable)
        .direct(direct);
    // Only a writable qcow2 layer (the top) gets the pointer-ordering guard.
    let guarded = layer.header.as_ref().filter(|_| writable);
    let storage = ImagoFile::new(layer.file, opts.clone(), guarded, frees)
        .map_err(|e| BlockError::qcow2("open", &layer.path, e))?;
    match layer.header {
        None => Raw::builder(storage)
            .storage_open_options(opts)
            .open(DenyImplicitOpenGate::default())
            .map(FormatAccess::new)
            .map_err(|e| BlockError::qcow2("open raw backing", &layer.path, e)),
        Some(_) => Qcow2::<ImagoFile>::builder(storage)
            .backing(below)
            .data_file(None)
            .write(writable)
            .storage_open_options(opts)
            .open(DenyImplicitOpenGate::default())
            .map(FormatAccess::new)
            .map_err(|e| BlockError::qcow2("open", &layer.path, e)),
    }
}

/// Walk the chain from the top, opening and validating every layer.
fn resolve(path: &Path, file: File, header: Qcow2Header, direct: bool) -> Result<Vec<Layer>> {
    let mut seen = HashSet::new();
    seen.insert(identity(path)?);
    let mut layers = vec![Layer {
        path: path.to_owned(),
        file,
        header: Some(header),
    }];
    // Raw layers have no backing; a qcow2 layer may name one.
    while let Some((current, Some(name))) = layers
        .last()
        .and_then(|l| l.header.as_ref().map(|h| (l, h.backing_file.clone())))
    {
        let hdr = current.header.as_ref().map(|h| h.backing_format.clone());
        if layers.len() >= MAX_BACKING_DEPTH {
            return Err(BlockError::BackingChainTooDeep {
                max: MAX_BACKING_DEPTH,
            });
        }
        let backing_path = resolve_relative(&current.path, &name);
        let declared = hdr.flatten();
        if !backing_path.exists() {
            return Err(BlockError::MissingBackingFile { path: backing_path });
        }
        if !seen.insert(identity(&backing_path)?) {
            return Err(BlockError::BackingChainLoop { path: backing_path });
        }
        let backing_file = open_read_only(&backing_path, direct)?;
        check_disk_file(&backing_file, &backing_path)?;
        let format = match declared {
            Some(name) => backing_format_from_name(&name)?,
            None => match probe_file(&backing_file, &backing_path)? {
                Format::Raw => Format::Raw,
                Format::Qcow2 => {
                    return Err(BlockError::BackingFormatNotRecorded { path: backing_path })
                }
            },
        };
        let header = match format {
            Format::Raw => None,
            Format::Qcow2 => Some(Qcow2Header::read(&backing_file, &backing_path)?),
        };
        layers.push(Layer {
            path: backing_path,
            file: backing_file,
            header,
        });
    }
    Ok(layers)
}

/// Resolve a backing name as QEMU does: absolute as is, relative to the overlay's directory.
pub(crate) fn resolve_relative(overlay: &Path, name: &str) -> PathBuf {
    let name = Path::new(name);
    if name.is_absolute() {
        name.to_owned()
    } else {
        overlay
            .parent()
            .map(|dir| dir.join(name))
            .unwrap_or_else(|| name.to_owned())
    }
}

/// A file's identity for loop detection: its canonical path.
fn identity(path: &Path) -> Result<PathBuf> {
    path.canonicalize().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BlockError::MissingBackingFile {
                path: path.to_owned(),
            }
        } else {
            BlockError::io("canonicalize", path, e)
        }
    })
}

/// A backing file must be a regular file or a block device (not a FIFO, socket or tty).
fn check_disk_file(file: &File, path: &Path) -> Result<()> {
    let kind = file
        .metadata()
        .map_err(|e| BlockError::io("stat", path, e))?
        .file_type();
    if kind.is_file() || kind.is_block_device() {
        Ok(())
    } else {
        Err(BlockError::NotADiskFile {
            path: path.to_owned(),
        })
    }
}

fn open_read_only(path: &Path, direct: bool) -> Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BlockError::MissingBackingFile {
                path: path.to_owned(),
            }
        } else {
            BlockError::io("open", path, e)
        }
    })
}
