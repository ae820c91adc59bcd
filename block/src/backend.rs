//! The [`DiskBackend`] trait that virtio-blk calls, and what it reports: [`Capabilities`],
//! [`DeviceId`] and lock-free [`DiskCounters`].
//!
//! Guarantees every implementation in this crate gives (enforced once, in `crate::disk`):
//! - a request that extends beyond [`DiskBackend::size`] fails with
//!   [`BlockError::OutOfRange`] before touching the file;
//! - a modifying request on a read-only disk fails with [`BlockError::ReadOnly`];
//! - every request is counted (ops, bytes, errors) in [`DiskCounters`], readable from any thread
//!   without locks;
//! - guest memory written by a read is marked dirty in the slice's bitmap (migration relies on it).

use std::fmt;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::bitmap::BS;
use vm_memory::VolatileSlice;

use crate::dirty::DirtyBitmap;
use crate::error::{BlockError, Result};
use crate::probe::Format;

/// A slice of guest memory as virtio-blk gets it from a descriptor chain of a
/// `GuestMemoryMmap<DirtyBitmap>` (`mem.get_slice(addr, len)`).
pub type GuestSlice<'a> = VolatileSlice<'a, BS<'a, DirtyBitmap>>;

/// What a disk can do beyond read/write/flush, so virtio-blk advertises only what works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `discard` is supported (`VIRTIO_BLK_F_DISCARD`).
    pub discard: bool,
    /// `write_zeroes` is supported (`VIRTIO_BLK_F_WRITE_ZEROES`). Always true for writable disks:
    /// where nothing faster exists, zeroes are written.
    pub write_zeroes: bool,
    /// Granularity in bytes below which a discard has no effect (the qcow2 cluster size, the
    /// file system block size for raw files); virtio-blk's `discard_sector_alignment`.
    pub discard_granularity: u64,
}

/// A stable device identifier: virtio-blk's `GET_ID` serial, at most 20 printable ASCII bytes.
///
/// Either given by the user (`OpenOptions::serial`) or derived from the image's canonical path,
/// so the same image opened again (or on a migration target with the same path) gets the same id.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceId {
    bytes: [u8; Self::MAX_LEN],
    len: usize,
}

impl DeviceId {
    /// virtio-blk's `VIRTIO_BLK_ID_BYTES`.
    pub const MAX_LEN: usize = 20;

    /// Validate a user-given serial.
    pub fn new(serial: &str) -> Result<Self> {
        let raw = serial.as_bytes();
        if raw.len() > Self::MAX_LEN || !raw.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return Err(BlockError::InvalidSerial(serial.to_owned()));
        }
        let mut bytes = [0u8; Self::MAX_LEN];
        bytes[..raw.len()].copy_from_slice(raw);
        Ok(Self {
            bytes,
            len: raw.len(),
        })
    }

    /// Derive an id from a string (the canonical image path): `vb` + 16 hex digits of FNV-1a-64.
    pub(crate) fn derived_from(key: &str) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let text = format!("vb{hash:016x}");
        let mut bytes = [0u8; Self::MAX_LEN];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Self {
            bytes,
            len: text.len(),
        }
    }

    /// The serial as a string.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }

    /// The 20-byte zero-padded form virtio-blk's `GET_ID` returns.
    pub fn as_virtio_bytes(&self) -> &[u8; Self::MAX_LEN] {
        &self.bytes
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({:?})", self.as_str())
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of request a disk counts separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Reads.
    Read = 0,
    /// Writes.
    Write = 1,
    /// Flushes.
    Flush = 2,
    /// Discards.
    Discard = 3,
    /// Write-zeroes.
    WriteZeroes = 4,
}

impl OpKind {
    /// All kinds, in index order.
    pub const ALL: [OpKind; 5] = [
        OpKind::Read,
        OpKind::Write,
        OpKind::Flush,
        OpKind::Discard,
        OpKind::WriteZeroes,
    ];
}

/// Counts for one [`OpKind`], as read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Requests that succeeded.
    pub ops: u64,
    /// Bytes those requests covered.
    pub bytes: u64,
    /// Requests that failed.
    pub errors: u64,
}

/// Lock-free per-disk metrics: relaxed atomics, safe to read from a metrics thread at any time.
#[derive(Debug, Default)]
pub struct DiskCounters {
    ops: [AtomicU64; 5],
    bytes: [AtomicU64; 5],
    errors: [AtomicU64; 5],
}

impl DiskCounters {
    /// Record a successful request of `bytes` bytes.
    pub(crate) fn record_ok(&self, kind: OpKind, bytes: u64) {
        self.ops[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.bytes[kind as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Record a failed request.
    pub(crate) fn record_err(&self, kind: OpKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Current counts for one kind.
    pub fn get(&self, kind: OpKind) -> OpCounts {
        OpCounts {
            ops: self.ops[kind as usize].load(Ordering::Relaxed),
            bytes: self.bytes[kind as usize].load(Ordering::Relaxed),
            errors: self.errors[kind as usize].load(Ordering::Relaxed),
        }
    }
}

/// One request for the completion-based face ([`DiskBackend::submit`]).
#[derive(Debug)]
pub enum DiskRequest<'a> {
    /// Read into `bufs`, starting at byte `offset`.
    Read {
        /// Byte offset on the disk.
        offset: u64,
        /// Destination guest memory, filled in order.
        bufs: &'a [GuestSlice<'a>],
    },
    /// Write `bufs` starting at byte `offset`.
    Write {
        /// Byte offset on the disk.
        offset: u64,
        /// Source guest memory, consumed in order.
        bufs: &'a [GuestSlice<'a>],
    },
    /// Make all completed writes durable.
    Flush,
    /// Discard a range.
    Discard {
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Make a range read as zeroes.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// The range may be deallocated instead of written.
        may_unmap: bool,
    },
}

/// The outcome of a submitted request.
#[derive(Debug)]
pub struct Completion {
    /// The `user_data` given to [`DiskBackend::submit`].
    pub user_data: u64,
    /// Bytes transferred (0 for flush), or the error.
    pub result: Result<u64>,
}

/// A virtual disk as virtio-blk sees it. See the crate documentation for the trait family.
///
/// All methods take `&self`: a backend may be shared by a worker thread and a metrics reader.
/// Offsets and lengths are in bytes; virtio-blk converts sectors.
pub trait DiskBackend: Send + Sync + fmt::Debug {
    /// Fill `bufs` (in order) from the disk starting at `offset`. Marks the memory dirty.
    fn read_vectored(&self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()>;

    /// Write `bufs` (in order) to the disk starting at `offset`.
    fn write_vectored(&self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()>;

    /// Make every write that completed before this call durable (data and metadata).
    fn flush(&self) -> Result<()>;

    /// Tell the disk a range is unused; afterwards it may read back as the old data or zeroes
    /// (qcow2 deallocates whole clusters only, raw punches file-system blocks).
    fn discard(&self, offset: u64, len: u64) -> Result<()>;

    /// Make a range read as zeroes; with `may_unmap` it may also be deallocated.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()>;

    /// Virtual size in bytes.
    fn size(&self) -> u64;

    /// True if modifying requests are refused (`VIRTIO_BLK_F_RO`).
    fn read_only(&self) -> bool;

    /// The image format behind this disk.
    fn format(&self) -> Format;

    /// The stable serial for `GET_ID`.
    fn device_id(&self) -> &DeviceId;

    /// What this disk supports beyond read/write/flush.
    fn capabilities(&self) -> Capabilities;

    /// Per-kind op/byte/error counters.
    fn counters(&self) -> &DiskCounters;

    /// Submit a request to the completion-based face.
    ///
    /// Returns `Some(completion)` if the request finished during the call (synchronous engines
    /// always do), or `None` if it is in flight; in-flight completions are collected with
    /// [`DiskBackend::reap`] once [`DiskBackend::completion_fd`] becomes readable.
    ///
    /// # Safety
    /// The memory behind the slices in `req` must stay mapped and must not be reused until the
    /// completion for `user_data` has been returned (by this call or by `reap`). virtio-blk meets
    /// this by holding its guest-memory guard and the descriptor chain until it posts the used
    /// ring entry.
    unsafe fn submit(&self, user_data: u64, req: DiskRequest<'_>) -> Option<Completion> {
        let result = match req {
            DiskRequest::Read { offset, bufs } => {
                self.read_vectored(offset, bufs).map(|()| total_len(bufs))
            }
            DiskRequest::Write { offset, bufs } => {
                self.write_vectored(offset, bufs).map(|()| total_len(bufs))
            }
            DiskRequest::Flush => self.flush().map(|()| 0),
            DiskRequest::Discard { offset, len } => self.discard(offset, len).map(|()| len),
            DiskRequest::WriteZeroes {
                offset,
                len,
                may_unmap,
            } => self.write_zeroes(offset, len, may_unmap).map(|()| len),
        };
        Some(Completion { user_data, result })
    }

    /// Move finished in-flight completions into `out`. Synchronous engines have none.
    fn reap(&self, _out: &mut Vec<Completion>) {}

    /// An eventfd that becomes readable when completions are ready; `None` for synchronous
    /// engines (every `submit` completes inline).
    fn completion_fd(&self) -> Option<RawFd> {
        None
    }
}

/// Total byte length of a vector of slices (saturating; lengths come from guest descriptors).
pub fn total_len(bufs: &[GuestSlice<'_>]) -> u64 {
    bufs.iter()
        .fold(0u64, |acc, b| acc.saturating_add(b.len() as u64))
}
