//! [`Disk`]: the one [`DiskBackend`] implementation, wrapping a format [`Engine`].
//!
//! ```text
//!   virtio-blk ──► dyn DiskBackend ══ Disk<E> ──► E: Engine (RawEngine | Qcow2Engine)
//!                                     │ bounds check, read-only check,
//!                                     │ counters, tracing
//! ```
//! Engines only move bytes; every policy that must hold for all formats lives here once, so a
//! new engine (io_uring, another format) cannot forget one.

use std::fmt;

use tracing::debug;

use crate::backend::{
    total_len, Capabilities, DeviceId, DiskBackend, DiskCounters, GuestSlice, OpKind,
};
use crate::error::{BlockError, Result};
use crate::probe::Format;

/// What a format engine provides. Requests reaching an engine are in bounds, and modifying
/// requests only reach engines of writable disks.
pub(crate) trait Engine: Send + Sync + fmt::Debug {
    /// The engine's format.
    fn format(&self) -> Format;
    /// Read `bufs` at `offset`; must mark the guest memory dirty.
    fn read(&self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()>;
    /// Write `bufs` at `offset`.
    fn write(&self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()>;
    /// Make completed writes durable.
    fn flush(&self) -> Result<()>;
    /// Discard a range.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;
    /// Zero a range.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()>;
    /// Supported extras (for a writable disk).
    fn capabilities(&self) -> Capabilities;
}

/// A disk: an engine plus the checks and counters every format shares.
#[derive(Debug)]
pub(crate) struct Disk<E: Engine> {
    engine: E,
    size: u64,
    read_only: bool,
    id: DeviceId,
    counters: DiskCounters,
}

impl<E: Engine> Disk<E> {
    /// Wrap `engine` as a disk of `size` bytes.
    pub(crate) fn new(engine: E, size: u64, read_only: bool, id: DeviceId) -> Self {
        Self {
            engine,
            size,
            read_only,
            id,
            counters: DiskCounters::default(),
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BlockError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(BlockError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Run `op`, counting it as `kind` over `bytes` bytes.
    fn counted(&self, kind: OpKind, bytes: u64, op: impl FnOnce() -> Result<()>) -> Result<()> {
        match op() {
            Ok(()) => {
                self.counters.record_ok(kind, bytes);
                Ok(())
            }
            Err(e) => {
                self.counters.record_err(kind);
                debug!(disk = %self.id, ?kind, error = %e, "disk request failed");
                Err(e)
            }
        }
    }
}

impl<E: Engine> DiskBackend for Disk<E> {
    fn read_vectored(&self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        let len = total_len(bufs);
        self.counted(OpKind::Read, len, || {
            self.check_range(offset, len)?;
            if len == 0 {
                return Ok(());
            }
            self.engine.read(offset, bufs)
        })
    }

    fn write_vectored(&self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        let len = total_len(bufs);
        self.counted(OpKind::Write, len, || {
            self.check_writable()?;
            self.check_range(offset, len)?;
            if len == 0 {
                return Ok(());
            }
            self.engine.write(offset, bufs)
        })
    }

    fn flush(&self) -> Result<()> {
        self.counted(OpKind::Flush, 0, || {
            if self.read_only {
                return Ok(());
            }
            self.engine.flush()
        })
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.counted(OpKind::Discard, len, || {
            self.check_writable()?;
            self.check_range(offset, len)?;
            if !self.engine.capabilities().discard {
                return Err(BlockError::Unsupported {
                    op: "discard",
                    format: self.engine.format(),
                });
            }
            if len == 0 {
                return Ok(());
            }
            self.engine.discard(offset, len)
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.counted(OpKind::WriteZeroes, len, || {
            self.check_writable()?;
            self.check_range(offset, len)?;
            if len == 0 {
                return Ok(());
            }
            self.engine.write_zeroes(offset, len, may_unmap)
        })
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn format(&self) -> Format {
        self.engine.format()
    }

    fn device_id(&self) -> &DeviceId {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        let caps = self.engine.capabilities();
        if self.read_only {
            Capabilities {
                discard: false,
                write_zeroes: false,
                ..caps
            }
        } else {
            caps
        }
    }

    fn counters(&self) -> &DiskCounters {
        &self.counters
    }
}
