//! Raw backend: the file (or block device) bytes are the disk bytes.
//!
//! - I/O: positioned vectored syscalls (`preadv`/`pwritev`) straight into guest memory; a single
//!   buffer uses `pread`/`pwrite`. Short transfers are resumed; reading past a file that shrank
//!   under us yields zeroes.
//! - `O_DIRECT` (optional): offsets and lengths must be 512-byte aligned (virtio-blk's are);
//!   guest buffers that are not are bounced through an aligned buffer.
//! - discard punches a hole (`BLKDISCARD` on block devices); write-zeroes uses
//!   `FALLOC_FL_ZERO_RANGE` (`PUNCH_HOLE` when it may unmap, `BLKZEROOUT` on block devices) and
//!   falls back to writing zeroes; flush is `fdatasync`.
//! - A raw image whose format was *probed* refuses writes that would put the qcow2 magic into
//!   its first bytes (as QEMU does), so the next probe cannot reinterpret it.

pub(crate) mod io;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tracing::debug;

use crate::backend::{Capabilities, GuestSlice};
use crate::disk::Engine;
use crate::error::{BlockError, Result};
use crate::probe::{probe_bytes, Format, QCOW2_MAGIC};

/// Alignment O_DIRECT requests need (offset, length, memory).
pub(crate) const DIRECT_ALIGN: u64 = 512;

/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `BLKDISCARD`: `_IO(0x12, 119)`.
const BLKDISCARD: libc::c_ulong = 0x1277;
/// `BLKZEROOUT`: `_IO(0x12, 127)`.
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// Raw file or block device engine.
#[derive(Debug)]
pub(crate) struct RawEngine {
    file: File,
    path: PathBuf,
    block_device: bool,
    direct: bool,
    probed: bool,
    granularity: u64,
}

impl RawEngine {
    /// Open `path` as a raw disk; returns the engine and the disk size.
    ///
    /// `probed` says the format was detected rather than given, which enables the sector-0 guard.
    pub(crate) fn open(
        path: &Path,
        read_only: bool,
        direct: bool,
        probed: bool,
    ) -> Result<(Self, u64)> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(!read_only);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts
            .open(path)
            .map_err(|e| BlockError::io("open", path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| BlockError::io("stat", path, e))?;
        let block_device = meta.file_type().is_block_device();
        let size = if block_device {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to `size`.
            let ret = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
            if ret < 0 {
                return Err(BlockError::io(
                    "BLKGETSIZE64",
                    path,
                    std::io::Error::last_os_error(),
                ));
            }
            size
        } else {
            meta.len()
        };
        let granularity = meta.blksize().clamp(DIRECT_ALIGN, 1 << 20);
        debug!(path = %path.display(), size, block_device, direct, "opened raw disk");
        Ok((
            Self {
                file,
                path: path.to_owned(),
                block_device,
                direct,
                probed,
                granularity,
            },
            size,
        ))
    }

    fn check_direct(&self, offset: u64, len: u64) -> Result<()> {
        if self.direct
            && (!offset.is_multiple_of(DIRECT_ALIGN) || !len.is_multiple_of(DIRECT_ALIGN))
        {
            return Err(BlockError::MisalignedDirectIo {
                offset,
                len,
                align: DIRECT_ALIGN,
            });
        }
        Ok(())
    }

    /// Refuse a write to a probed raw image that would make its first bytes a qcow2 magic.
    fn guard_sector0(&self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        if !self.probed || offset >= QCOW2_MAGIC.len() as u64 {
            return Ok(());
        }
        let mut head = [0u8; 4];
        io::read_exact_at(&self.file, &self.path, &mut head, 0)?;
        let start = offset as usize; // < 4
        let mut new_bytes = [0u8; 4];
        let got = io::copy_prefix(bufs, &mut new_bytes[..4 - start]);
        head[start..start + got].copy_from_slice(&new_bytes[..got]);
        if probe_bytes(&head) != Format::Raw {
            return Err(BlockError::ProbedRawHeaderWrite);
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        loop {
            // SAFETY: plain syscall on an fd we own; no memory is passed.
            let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) };
            if ret == 0 {
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    fn blk_range_ioctl(
        &self,
        request: libc::c_ulong,
        offset: u64,
        len: u64,
    ) -> std::io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKDISCARD/BLKZEROOUT read two u64 from the pointer, which points to `range`.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), request, &range) };
        if ret < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// True for errors meaning "this file system / device cannot do that".
fn is_unsupported(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL) | Some(libc::ENOSYS)
    )
}

impl Engine for RawEngine {
    fn format(&self) -> Format {
        Format::Raw
    }

    fn read(&self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        self.check_direct(offset, crate::backend::total_len(bufs))?;
        io::read_vectored_at(&self.file, &self.path, self.direct, bufs, offset)
    }

    fn write(&self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        self.check_direct(offset, crate::backend::total_len(bufs))?;
        self.guard_sector0(offset, bufs)?;
        io::write_vectored_at(&self.file, &self.path, self.direct, bufs, offset)
    }

    fn flush(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| BlockError::io("fdatasync", &self.path, e))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let res = if self.block_device {
            self.blk_range_ioctl(BLKDISCARD, offset, len)
        } else {
            self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        match res {
            Ok(()) => Ok(()),
            // Discard is advisory: a file system without hole punching simply keeps the data.
            Err(e) if is_unsupported(&e) => {
                debug!(path = %self.path.display(), "discard unsupported here, ignored");
                Ok(())
            }
            Err(e) => Err(BlockError::io("discard", &self.path, e)),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        // Zeroes never form a format magic, so the sector-0 guard of probed images has
        // nothing to refuse here, whichever way they are written.
        let res = if self.block_device {
            self.blk_range_ioctl(BLKZEROOUT, offset, len)
        } else {
            let mode = if may_unmap {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
            };
            self.fallocate(mode, offset, len)
        };
        match res {
            Ok(()) => return Ok(()),
            Err(e) if is_unsupported(&e) => {}
            Err(e) => return Err(BlockError::io("write-zeroes", &self.path, e)),
        }
        self.check_direct(offset, len)?;
        io::write_zeroes_at(&self.file, &self.path, offset, len)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            discard: true,
            write_zeroes: true,
            discard_granularity: self.granularity,
        }
    }
}
