//! qcow2 backend on imago (`sync` feature: plain blocking calls, no async runtime).
//!
//! ```text
//!   Qcow2Engine ── RwLock<FormatAccess<GuardedFile>>  (top image, writable or not)
//!                        └─ backing: FormatAccess (qcow2 …) └─ … └─ raw or qcow2 base
//! ```
//! - `header.rs` validates the header before imago parses it, so malformed images produce
//!   typed errors and imago only sees headers whose tables lie inside the file.
//! - `refcheck.rs` (writable opens) refuses images whose metadata clusters overlap or have
//!   refcount 0, since imago's allocator would overwrite them.
//! - `backing.rs` resolves and opens the backing chain (loops, depth, formats, relative paths).
//! - Data path: guest slices become imago I/O vectors without copying; imago marks the guest
//!   memory dirty when a read's vector is dropped.
//! - Locking: reads, writes and v2 write-zeroes (which write zero data) share a read lock;
//!   discard and v3 write-zeroes take the write lock because imago may free or remap clusters
//!   a concurrent request still maps (imago's `unsafe` discard contract is met by exclusion,
//!   so we use its safe `&mut` API).
//! - Fast path: requests inside one cluster that the top image owns outright (allocated,
//!   "copied") go straight to the file with the raw engine's syscalls, using a small mapping
//!   cache filled from imago's own lookups. Such mappings change only through discard and
//!   write-zeroes, which run under the write lock and clear the cache; everything else
//!   (allocation, copy-on-write, compressed, zero, backing) goes through imago.
//! - flush = imago `flush` (metadata caches in dependency order: refblocks before the L2 tables
//!   that use them) followed by `sync` (`fdatasync`).
//! - `storage.rs`: imago does all its I/O on the image through `GuardedFile`, which, for the
//!   writable top image, writes the refcount of a newly allocated L2 table / refcount block /
//!   L1 table to disk before the pointer to it (imago 0.2.6 keeps that refcount in its cache
//!   while writing the pointer directly; a kill in between left a table with refcount 0).
//! - Frees: after any request in which imago freed clusters (signalled by `GuardedFile`, see
//!   `storage::FreeSignal`), the engine writes imago's metadata caches back, and discard /
//!   write-zeroes run one L2 table's range at a time, so a freed data cluster is never reused
//!   (e.g. as a new L2 table) while a stale L2 entry on disk still names it.

mod backing;
mod header;
mod refcheck;
mod storage;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use imago::io_buffers::{IoVector, IoVectorMut};
use imago::{FormatAccess, Mapping};
use tracing::debug;

pub use backing::MAX_BACKING_DEPTH;
pub(crate) use backing::{resolve_relative, ImagoFile};
pub(crate) use header::{Qcow2Header, MAX_VIRTUAL_SIZE};
use storage::FreeSignal;

use crate::backend::{Capabilities, GuestSlice};
use crate::disk::Engine;
use crate::error::{BlockError, Result};
use crate::formats::raw::io as raw_io;
use crate::probe::Format;

/// Entries in the mapping cache (direct-mapped by guest cluster index).
const MAP_CACHE_ENTRIES: usize = 4096;

/// qcow2 engine over an imago image (with its backing chain).
pub(crate) struct Qcow2Engine {
    image: RwLock<FormatAccess<ImagoFile>>,
    /// The top image file, for the fast path.
    file: File,
    path: PathBuf,
    version: u32,
    cluster_bits: u32,
    cluster_size: u64,
    direct: bool,
    /// Fast path: guest cluster → host offset of clusters allocated in the top image and
    /// exclusively owned by it (qcow2 "copied"), whose mapping only changes through discard
    /// or write-zeroes, which clear this cache under the exclusive lock. Entry: (guest
    /// cluster + 1, host cluster offset); 0 means empty.
    map_cache: Mutex<Vec<(u64, u64)>>,
    /// Counts imago's cluster frees; after a request that freed, the engine writes imago's
    /// metadata caches back before anything can reuse them ([`Qcow2Engine::settle_frees`]).
    frees: FreeSignal,
}

impl std::fmt::Debug for Qcow2Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Engine")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("cluster_size", &self.cluster_size)
            .finish()
    }
}

impl Qcow2Engine {
    /// Open the qcow2 image at `path` (and its backing chain); returns the engine and the
    /// virtual size.
    pub(crate) fn open(path: &Path, read_only: bool, direct: bool) -> Result<(Self, u64)> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(!read_only);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts
            .open(path)
            .map_err(|e| BlockError::io("open", path, e))?;
        Self::open_file(path, file, read_only, direct)
    }

    /// Open an already opened image file (used by the fuzz target through a memfd).
    pub(crate) fn open_file(
        path: &Path,
        file: File,
        read_only: bool,
        direct: bool,
    ) -> Result<(Self, u64)> {
        let header = Qcow2Header::read(&file, path)?;
        let fast_file = file
            .try_clone()
            .map_err(|e| BlockError::io("dup", path, e))?;
        if !read_only {
            refcheck::check_metadata_refcounts(&file, path, &header)?;
        }
        let (version, cluster_bits, size) = (header.version, header.cluster_bits, header.size);
        let cluster_size = header.cluster_size();
        let frees = FreeSignal::default();
        let image = backing::open_chain(path, file, header, !read_only, direct, &frees)?;
        debug!(path = %path.display(), version, cluster_size, size, "opened qcow2 disk");
        Ok((
            Self {
                image: RwLock::new(image),
                file: fast_file,
                path: path.to_owned(),
                version,
                cluster_bits,
                cluster_size,
                direct,
                map_cache: Mutex::new(vec![(0, 0); MAP_CACHE_ENTRIES]),
                frees,
            },
            size,
        ))
    }

    fn shared(&self) -> RwLockReadGuard<'_, FormatAccess<ImagoFile>> {
        // A panic while holding the lock cannot leave imago's state half-updated in a way the
        // lock protects (imago has its own locks), so poisoning is ignored.
        self.image.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn exclusive(&self) -> RwLockWriteGuard<'_, FormatAccess<ImagoFile>> {
        self.image.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Host offset for `[offset, offset + len)` if it lies in one cached cluster.
    fn cached_host(&self, offset: u64, len: u64) -> Option<u64> {
        let cluster = offset >> self.cluster_bits;
        if len == 0 || (offset + len - 1) >> self.cluster_bits != cluster {
            return None;
        }
        let cache = self
            .map_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (tag, host) = cache[cluster as usize % MAP_CACHE_ENTRIES];
        (tag == cluster + 1).then(|| host + (offset & (self.cluster_size - 1)))
    }

    /// After imago served a request at `offset`, remember the cluster's mapping if it is a
    /// plain, exclusively owned cluster of the top image.
    fn remember(&self, image: &FormatAccess<ImagoFile>, offset: u64) {
        let Ok((
            Mapping::Raw {
                offset: host,
                writable: true,
                ..
            },
            _,
        )) = image.get_mapping(offset, 1)
        else {
            return;
        };
        let cluster = offset >> self.cluster_bits;
        let in_cluster = offset & (self.cluster_size - 1);
        let mut cache = self
            .map_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cache[cluster as usize % MAP_CACHE_ENTRIES] = (cluster + 1, host - in_cluster);
    }

    /// One read or write under the shared lock: straight to the file (`fast`, given the host
    /// offset) when the request lies in a cached, owned cluster; otherwise through imago
    /// (`slow`), remembering the cluster's mapping afterwards.
    fn transfer(
        &self,
        offset: u64,
        bufs: &[GuestSlice<'_>],
        fast: impl FnOnce(u64) -> Result<()>,
        slow: impl FnOnce(&FormatAccess<ImagoFile>) -> Result<()>,
    ) -> Result<()> {
        let image = self.shared();
        if let Some(host) = self.cached_host(offset, crate::backend::total_len(bufs)) {
            return fast(host);
        }
        let epoch = self.frees.epoch();
        let res = slow(&image);
        self.settle_frees(&image, epoch)?;
        if res.is_ok() {
            self.remember(&image, offset);
        }
        res
    }

    /// If imago freed clusters since `epoch` (a [`FreeSignal::epoch`] read before the request),
    /// write its metadata caches back now (no fsync), so the on-disk L2 entries no longer name a
    /// freed cluster before imago can reuse it, e.g. as a new L2 table whose L1 pointer goes
    /// straight to disk (see [`FreeSignal`]). Without this a killed process could leave a
    /// cluster referenced twice.
    fn settle_frees(&self, image: &FormatAccess<ImagoFile>, epoch: u64) -> Result<()> {
        if self.frees.epoch() != epoch {
            image.flush().map_err(self.err("write back metadata"))?;
        }
        Ok(())
    }

    /// A request that may remap clusters (discard, v3 write-zeroes): under the exclusive lock,
    /// with the fast-path cache dropped, run `op` over `[offset, offset + len)` in pieces that
    /// each stay inside the range of one L2 table, settling frees after each piece: imago
    /// allocates a piece's L2 table before it frees anything in it, so no piece can reuse a
    /// cluster freed earlier in the same request.
    fn remap_per_l2_table(
        &self,
        offset: u64,
        len: u64,
        what: &'static str,
        mut op: impl FnMut(&mut FormatAccess<ImagoFile>, u64, u64) -> std::io::Result<()>,
    ) -> Result<()> {
        let mut image = self.exclusive();
        let image = &mut *image;
        self.forget_mappings();
        // Entries per L2 table: cluster / 8, or cluster / 16 with extended L2 entries; the
        // smaller span never crosses a table boundary either way.
        let span = (self.cluster_size / 16).max(1) << self.cluster_bits;
        let end = offset.saturating_add(len);
        let mut at = offset;
        while at < end {
            let piece_end = ((at / span).saturating_add(1).saturating_mul(span)).min(end);
            let epoch = self.frees.epoch();
            let res = op(image, at, piece_end - at).map_err(self.err(what));
            self.settle_frees(image, epoch)?;
            res?;
            at = piece_end;
        }
        Ok(())
    }

    /// Forget all cached mappings (caller holds the exclusive image lock).
    fn forget_mappings(&self) {
        let mut cache = self
            .map_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cache.iter_mut().for_each(|e| *e = (0, 0));
    }

    fn err(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> BlockError + '_ {
        move |e| BlockError::qcow2(op, &self.path, e)
    }
}

impl Qcow2Engine {
    /// Write literal zeroes over `[offset, offset + len)`, 1 MiB at a time.
    fn write_zero_data(&self, offset: u64, len: u64) -> Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeroes = vec![0u8; len.min(CHUNK) as usize];
        let image = self.shared();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK) as usize;
            let epoch = self.frees.epoch();
            let res = image
                .write(&zeroes[..n], offset + done)
                .map_err(self.err("write-zeroes"));
            self.settle_frees(&image, epoch)?;
            res?;
            done += n as u64;
        }
        Ok(())
    }
}

impl Engine for Qcow2Engine {
    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn read(&self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        self.transfer(
            offset,
            bufs,
            |host| raw_io::read_vectored_at(&self.file, &self.path, self.direct, bufs, host),
            |image| {
                let (vector, guard) = IoVectorMut::from_volatile_slice(bufs.iter());
                let res = image.readv(vector, offset).map_err(self.err("read"));
                // Dropping the guard marks the guest memory dirty.
                drop(guard);
                res
            },
        )
    }

    fn write(&self, offset: u64, bufs: &[GuestSlice<'_>]) -> Result<()> {
        self.transfer(
            offset,
            bufs,
            // An owned, allocated cluster is written in place, exactly as imago would.
            |host| raw_io::write_vectored_at(&self.file, &self.path, self.direct, bufs, host),
            |image| {
                let (vector, guard) = IoVector::from_volatile_slice(bufs.iter());
                let res = image.writev(vector, offset).map_err(self.err("write"));
                drop(guard);
                res
            },
        )
    }

    fn flush(&self) -> Result<()> {
        let image = self.shared();
        image.flush().map_err(self.err("flush"))?;
        image.sync().map_err(self.err("sync"))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.remap_per_l2_table(offset, len, "discard", |img, o, l| img.discard_to_any(o, l))
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        if self.version < 3 {
            // v2 has no zero clusters: write zeroes (allocating where needed).
            return self.write_zero_data(offset, len);
        }
        // A final cluster the disk covers only in part is zeroed with literal zeroes: imago
        // 0.2.6 computes the cluster-aligned end of a write-zeroes capped at the disk size and
        // then steps one cluster back from it when the tail holds data, which underflows (a
        // panic with overflow checks, a wrapped offset without) on a disk smaller than one
        // cluster. Found by the qcow2_open fuzz target.
        let size = self.shared().size();
        let partial_start = size - size % self.cluster_size;
        let end = offset.saturating_add(len);
        let split = if partial_start < size && end > partial_start {
            offset.max(partial_start)
        } else {
            end
        };
        if split > offset {
            // Both variants may change mappings (to zero clusters).
            self.remap_per_l2_table(offset, split - offset, "write-zeroes", |img, o, l| {
                if may_unmap {
                    img.discard_to_zero(o, l)
                } else {
                    img.write_zeroes(o, l)
                }
            })?;
        }
        if end > split {
            self.write_zero_data(split, end - split)?;
        }
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // Discarding needs zero clusters, which qcow2 v2 lacks.
            discard: self.version >= 3,
            write_zeroes: true,
            discard_granularity: self.cluster_size,
        }
    }
}
