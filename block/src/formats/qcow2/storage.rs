//! [`GuardedFile`]: the storage object imago reads and writes qcow2 images through, which closes
//! a crash-ordering gap in imago 0.2.6 without patching imago.
//!
//! # The gap
//! When imago allocates a new metadata cluster it increments the cluster's refcount in its
//! refcount-block *cache*, but writes the pointer to the new cluster straight to disk:
//! - the L1 entry for a new L2 table (`ensure_l2`),
//! - the refcount-table entry for a new refcount block (`ensure_rb`; the block's own refcount
//!   lives in another, cached block),
//! - the header's L1 pointer for a grown L1 table (`grow_l1_table`; unreachable for images
//!   [`Qcow2Header`] accepts, whose L1 table already covers the virtual size, but handled).
//!
//! A process killed before the cache is written back leaves a referenced metadata cluster with
//! refcount 0 on disk (`qemu-img check`: `ERROR OFLAG_COPIED L2 cluster … refcount=0`), which a
//! later allocation may overwrite. (The header's refcount-table pointer is already ordered:
//! imago writes its refcount blocks back before writing it.)
//!
//! # The fix
//! Every write imago issues for a writable qcow2 image passes through
//! [`GuardedFile::pure_writev`]. A write that touches a *pointer area* — the L1 table, the
//! refcount table, or the header's L1/refcount-table pointer fields (bytes 36..60) — is compared
//! with what is on disk; for every pointer it adds or changes, the wrapper first makes sure the
//! target cluster's refcount on disk is non-zero, writing `1` into the on-disk refcount block
//! entry if it is 0 (imago has already counted the cluster as 1 in its cache; its later write-back
//! of that refcount block writes the same value). Only then is imago's write passed on. So a
//! pointer never reaches the file before the refcount of the cluster it names, at the cost of
//! one small read (and at most one small write) per newly allocated L2 table or refcount block.
//! Writes elsewhere (data, L2 tables, refcount blocks) pass through after a range check.
//!
//! The refcount entry update is a read-modify-write of the aligned block holding the entry,
//! done under a strong write blocker from imago's own [`CommonStorageHelper`] (which imago's
//! writes of the same file use too), so it cannot interleave with imago writing that refcount
//! block back. Images opened with `O_DIRECT` whose clusters are smaller than the file's request
//! alignment are refused for writing ([`GuardedFile::new`]), since there an update of a
//! refcount entry could share an I/O block with the pointer write it precedes.
//!
//! When the header's L1 or refcount-table pointer changes, the wrapper follows the tables to
//! their new location.
//!
//! Like imago's own cache ordering (and the vendored patch this replaces), the refcount write
//! and the pointer write are ordered by issue order, with no `fdatasync` between them: that
//! makes a killed process (SIGKILL, panic) harmless; durability of acknowledged writes against
//! power loss still comes from `flush` + `sync`.
//!
//! Why not hold pointer writes back until the next flush instead: a new refcount block must be
//! referenced from the refcount table *before* imago writes back L2 entries for clusters it
//! counts (which imago may do at any cache eviction), and a held-back L1 pointer would outlive
//! imago freeing (and reusing) the old L1 table. Writing the refcount early has neither problem.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use imago::io_buffers::{IoBuffer, IoVector, IoVectorMut};
use imago::storage::drivers::CommonStorageHelper;
use imago::storage::PreallocateMode;
use imago::{Storage, StorageOpenOptions};

use super::header::{Qcow2Header, L1_OFFSET_MASK, RT_OFFSET_MASK};

/// Header bytes holding `l1_size` (u32 at 36), `l1_table_offset` (u64 at 40),
/// `refcount_table_offset` (u64 at 48) and `refcount_table_clusters` (u32 at 56).
const HEADER_POINTERS: Range<u64> = 36..60;

/// Where the pointer tables are (from the header, followed when imago moves them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    l1_offset: u64,
    l1_entries: u64,
    rt_offset: u64,
    rt_clusters: u64,
}

impl Layout {
    fn l1_range(&self) -> Range<u64> {
        self.l1_offset
            ..self
                .l1_offset
                .saturating_add(self.l1_entries.saturating_mul(8))
    }

    fn rt_range(&self, cluster_bits: u32) -> Range<u64> {
        self.rt_offset
            ..self
                .rt_offset
                .saturating_add(self.rt_clusters.saturating_mul(1 << cluster_bits))
    }

    /// Decode the pointer fields from header bytes 36..60.
    fn from_header_bytes(b: &[u8; 24]) -> Self {
        let be32 = |i: usize| u64::from(super::header::be32(b, i));
        let be64 = |i: usize| super::header::be64(b, i);
        Layout {
            l1_entries: be32(0),
            l1_offset: be64(4),
            rt_offset: be64(12),
            rt_clusters: be32(20),
        }
    }
}

/// State of the pointer-ordering guard (writable qcow2 images only).
#[derive(Debug)]
struct Guard {
    cluster_bits: u32,
    refcount_order: u32,
    /// Current table locations, readable without blocking by every write: `[l1_offset,
    /// l1_entries, rt_offset, rt_clusters]`. Changed only under `pointer_lock`.
    layout: [AtomicU64; 4],
    /// Serializes pointer writes (and layout changes) among themselves. Never taken by other
    /// writes: a write waiting for it may hold one of imago's write blockers, which
    /// `ensure_refcounted` may wait for.
    pointer_lock: Mutex<()>,
}

impl Guard {
    fn layout(&self) -> Layout {
        let [a, b, c, d] = &self.layout;
        Layout {
            l1_offset: a.load(Ordering::Acquire),
            l1_entries: b.load(Ordering::Acquire),
            rt_offset: c.load(Ordering::Acquire),
            rt_clusters: d.load(Ordering::Acquire),
        }
    }

    fn set_layout(&self, l: Layout) {
        let [a, b, c, d] = &self.layout;
        a.store(l.l1_offset, Ordering::Release);
        b.store(l.l1_entries, Ordering::Release);
        c.store(l.rt_offset, Ordering::Release);
        d.store(l.rt_clusters, Ordering::Release);
    }
}

/// A bytes buffer about to be written at `offset` (consulted by reads made while handling it).
struct Pending<'a> {
    offset: u64,
    bytes: &'a [u8],
}

/// imago storage object for images: `imago::file::File`, plus (for writable qcow2 images) the
/// pointer-ordering guard described in the [module docs](self).
#[derive(Debug)]
pub(crate) struct GuardedFile {
    inner: imago::file::File,
    guard: Option<Guard>,
    /// Raised when imago is about to free clusters (see [`FreeSignal`]).
    frees: Option<FreeSignal>,
}

/// Counts the times [`GuardedFile`] saw imago about to free clusters, so the engine can write
/// imago's metadata caches back before a freed cluster may be reused.
///
/// imago 0.2.6 clears the L2 entries of freed data clusters in its L2 *cache* and makes the
/// refcount-block cache depend on it, but it does not make a *metadata* allocation depend on it:
/// a data cluster freed by discard can be reused at once as a new L2 table, whose L1 pointer is
/// written straight to disk while the stale L2 entry naming the same cluster is still only
/// cleared in the cache. A process killed then leaves one cluster referenced twice (`qemu-img
/// check`: `ERROR cluster … refcount=1 reference=2`), and later writes through either reference
/// corrupt the other. imago announces every free by calling [`Storage::settle_writes`] first;
/// that call bumps this count.
///
/// A count rather than a flag: the bump comes *before* the free, so a request compares the count
/// before and after itself, and another thread's write-back cannot consume its signal early.
#[derive(Clone, Debug, Default)]
pub(crate) struct FreeSignal(std::sync::Arc<AtomicU64>);

impl FreeSignal {
    fn raise(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// The number of frees announced so far; compare two readings to learn whether imago freed
    /// clusters in between.
    pub(crate) fn epoch(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

impl fmt::Display for GuardedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl GuardedFile {
    /// Wrap an open file. With `header` (a writable qcow2 image), pointer writes are ordered
    /// after the refcounts they depend on; without, the wrapper only forwards.
    ///
    /// Fails for a guarded image whose clusters are smaller than the file's request alignment
    /// (`O_DIRECT` on a device with large blocks), where that ordering cannot be kept.
    /// `frees` (the writable top image) is raised whenever imago is about to free clusters.
    pub(crate) fn new(
        file: std::fs::File,
        opts: StorageOpenOptions,
        header: Option<&Qcow2Header>,
        frees: Option<FreeSignal>,
    ) -> io::Result<Self> {
        let inner = imago::file::File::from_open_file(file, opts)?;
        let guard = match header {
            None => None,
            Some(h) => {
                let align = inner.req_align() as u64;
                if align > h.cluster_size() {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!(
                            "writable qcow2 with {}-byte clusters needs {align}-byte aligned I/O \
                             (O_DIRECT); use buffered I/O or clusters of at least {align} bytes",
                            h.cluster_size()
                        ),
                    ));
                }
                Some(Guard {
                    cluster_bits: h.cluster_bits,
                    refcount_order: h.refcount_order,
                    layout: [
                        AtomicU64::new(h.l1.0),
                        AtomicU64::new(h.l1.1),
                        AtomicU64::new(h.refcount_table.0),
                        AtomicU64::new(h.refcount_table.1),
                    ],
                    pointer_lock: Mutex::new(()),
                })
            }
        };
        Ok(GuardedFile {
            inner,
            guard,
            frees,
        })
    }

    /// Read `buf.len()` bytes at `pos` from the file, then overlay `pending`.
    fn read_view(&self, pos: u64, buf: &mut [u8], pending: &Pending<'_>) -> io::Result<()> {
        let align = self.inner.req_align().max(1) as u64;
        let start = pos - pos % align;
        let end = (pos + buf.len() as u64).next_multiple_of(align);
        let mut block = IoBuffer::new((end - start) as usize, self.inner.mem_align())?;
        // SAFETY: `start` and the length are multiples of `req_align` and `IoBuffer::new`
        // aligns the buffer to `mem_align`; this is a plain read of bytes we own.
        unsafe { self.inner.pure_readv((&mut block).into(), start) }?;
        let skip = (pos - start) as usize;
        buf.copy_from_slice(&block.as_ref().into_slice()[skip..skip + buf.len()]);
        let (p_start, p_end) = (pending.offset, pending.offset + pending.bytes.len() as u64);
        let (o_start, o_end) = (pos.max(p_start), (pos + buf.len() as u64).min(p_end));
        if o_start < o_end {
            buf[(o_start - pos) as usize..(o_end - pos) as usize].copy_from_slice(
                &pending.bytes[(o_start - p_start) as usize..(o_end - p_start) as usize],
            );
        }
        Ok(())
    }

    /// Read one big-endian u64 at `pos` (as seen after `pending`).
    fn read_u64(&self, pos: u64, pending: &Pending<'_>) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read_view(pos, &mut b, pending)?;
        Ok(u64::from_be_bytes(b))
    }

    /// Make sure the on-disk refcount of host cluster `cluster` is non-zero.
    fn ensure_refcounted(
        &self,
        g: &Guard,
        layout: &Layout,
        cluster: u64,
        pending: &Pending<'_>,
    ) -> io::Result<()> {
        let cb = g.cluster_bits;
        let rb_bits = cb + 3 - g.refcount_order;
        let rt_index = cluster >> rb_bits;
        let rb_index = cluster & ((1 << rb_bits) - 1);
        let rt_entries = layout.rt_clusters << (cb - 3);
        if rt_index >= rt_entries {
            return Err(corrupt(format!(
                "qcow2: cluster {cluster:#x} is beyond the refcount table ({rt_entries} entries)"
            )));
        }
        let rt_entry = self.read_u64(layout.rt_offset + rt_index * 8, pending)?;
        let rb_offset = rt_entry & RT_OFFSET_MASK;
        if rb_offset == 0 || rb_offset & ((1 << cb) - 1) != 0 {
            return Err(corrupt(format!(
                "qcow2: no valid refcount block on disk for cluster {cluster:#x} \
                 (refcount table entry {rt_entry:#x})"
            )));
        }
        let bits = 1u64 << g.refcount_order;
        let bit_pos = rb_index * bits;
        let entry_start = rb_offset + bit_pos / 8;
        let entry_len = bits.div_ceil(8);
        // Bits (LSB-first within the byte) of a sub-byte entry; whole bytes otherwise.
        let (shift, mask) = if bits < 8 {
            (bit_pos % 8, ((1u16 << bits) - 1) as u8)
        } else {
            (0, 0xff)
        };

        let align = self.inner.req_align().max(1) as u64;
        let start = entry_start - entry_start % align;
        let end = (entry_start + entry_len).next_multiple_of(align);
        // Keep imago from writing this block (e.g. writing back the cached refcount block)
        // between our read and our write. Imago's writes share this helper (see
        // `get_storage_helper`).
        let _blocker = self
            .inner
            .get_storage_helper()
            .strong_write_blocker(start..end);
        let mut block = IoBuffer::new((end - start) as usize, self.inner.mem_align())?;
        // SAFETY: `start`/`end` are multiples of `req_align`, the buffer is `mem_align`ed;
        // reading into a buffer we own.
        unsafe { self.inner.pure_readv((&mut block).into(), start) }?;
        let at = (entry_start - start) as usize;
        {
            let bytes = block.as_mut().into_slice();
            let entry = &mut bytes[at..at + entry_len as usize];
            let zero = if bits < 8 {
                (entry[0] >> shift) & mask == 0
            } else {
                entry.iter().all(|&b| b == 0)
            };
            if !zero {
                return Ok(());
            }
            if bits < 8 {
                entry[0] |= 1 << shift;
            } else if let Some(last) = entry.last_mut() {
                *last = 1;
            }
        }
        tracing::trace!(cluster, "qcow2: refcount written ahead of pointer");
        // SAFETY: as above; the block was read under the strong write blocker, so writing it
        // back only changes the entry we set.
        unsafe { self.inner.pure_writev((&block).into(), start) }
    }

    /// Handle a write of `bytes` at `offset` that touches a pointer area: make the refcount of
    /// every newly referenced cluster durable-before-pointer, and return the layout to use after
    /// the write.
    fn order_pointers(
        &self,
        g: &Guard,
        layout: Layout,
        offset: u64,
        bytes: &[u8],
    ) -> io::Result<Layout> {
        let pending = Pending { offset, bytes };
        let write = offset..offset + bytes.len() as u64;
        let cb = g.cluster_bits;

        // Header pointer fields.
        let mut new_layout = layout;
        if overlaps(&write, &HEADER_POINTERS) {
            let mut after = [0u8; 24];
            self.read_view(HEADER_POINTERS.start, &mut after, &pending)?;
            new_layout = Layout::from_header_bytes(&after);
            if new_layout.l1_range() != layout.l1_range() {
                let first = new_layout.l1_offset >> cb;
                let last = (new_layout.l1_range().end.saturating_sub(1)) >> cb;
                if new_layout.l1_entries > 0 {
                    for cluster in first..=last {
                        self.ensure_refcounted(g, &new_layout, cluster, &pending)?;
                    }
                }
            }
            if new_layout.rt_range(cb) != layout.rt_range(cb) {
                let first = new_layout.rt_offset >> cb;
                for cluster in first..first + new_layout.rt_clusters {
                    self.ensure_refcounted(g, &new_layout, cluster, &pending)?;
                }
            }
        }

        // Table entries: compare what is being written with what is on disk.
        let tables = [
            (layout.l1_range(), L1_OFFSET_MASK),
            (layout.rt_range(cb), RT_OFFSET_MASK),
        ];
        for (table, mask) in tables {
            if !overlaps(&write, &table) {
                continue;
            }
            // Entries (8-byte aligned within the table) touched by the write.
            let start = write.start.max(table.start);
            let start = start - (start - table.start) % 8;
            let end = write.end.min(table.end);
            let mut pos = start;
            while pos < end {
                let n = ((end - pos).div_ceil(8) * 8).min(4096);
                let mut old = vec![0u8; n as usize];
                let mut new = vec![0u8; n as usize];
                let none = Pending {
                    offset: 0,
                    bytes: &[],
                };
                self.read_view(pos, &mut old, &none)?;
                self.read_view(pos, &mut new, &pending)?;
                for (o, w) in old.chunks_exact(8).zip(new.chunks_exact(8)) {
                    let old_target = super::header::be64(o, 0) & mask;
                    let new_target = super::header::be64(w, 0) & mask;
                    if new_target != 0 && new_target != old_target {
                        self.ensure_refcounted(g, &new_layout, new_target >> cb, &pending)?;
                    }
                }
                pos += n;
            }
        }
        Ok(new_layout)
    }
}

impl Storage for GuardedFile {
    fn mem_align(&self) -> usize {
        self.inner.mem_align()
    }

    fn req_align(&self) -> usize {
        self.inner.req_align()
    }

    fn zero_align(&self) -> usize {
        self.inner.zero_align()
    }

    fn discard_align(&self) -> usize {
        self.inner.discard_align()
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn resolve_relative_path<P: AsRef<Path>>(&self, relative: P) -> io::Result<PathBuf> {
        self.inner.resolve_relative_path(relative)
    }

    fn get_filename(&self) -> Option<PathBuf> {
        self.inner.get_filename()
    }

    unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, offset: u64) -> io::Result<()> {
        // SAFETY: forwarded unchanged; the caller upholds `pure_readv`'s contract.
        unsafe { self.inner.pure_readv(bufv, offset) }
    }

    unsafe fn pure_writev(&self, bufv: IoVector<'_>, offset: u64) -> io::Result<()> {
        let Some(g) = &self.guard else {
            // SAFETY: forwarded unchanged; the caller upholds `pure_writev`'s contract.
            return unsafe { self.inner.pure_writev(bufv, offset) };
        };
        let write = offset..offset.saturating_add(bufv.len());
        let touches = |layout: &Layout| {
            overlaps(&write, &HEADER_POINTERS)
                || overlaps(&write, &layout.l1_range())
                || overlaps(&write, &layout.rt_range(g.cluster_bits))
        };
        if !touches(&g.layout()) {
            // SAFETY: forwarded unchanged; the caller upholds `pure_writev`'s contract.
            return unsafe { self.inner.pure_writev(bufv, offset) };
        }
        // A pointer write (small, rare): serialize with other pointer writes and layout changes.
        let _pointers = g
            .pointer_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let layout = g.layout();
        let mut bytes = vec![0u8; bufv.len() as usize];
        bufv.copy_into_slice(&mut bytes);
        let new_layout = if touches(&layout) {
            self.order_pointers(g, layout, offset, &bytes)?
        } else {
            layout
        };
        // SAFETY: forwarded unchanged; the caller upholds `pure_writev`'s contract.
        unsafe { self.inner.pure_writev(bufv, offset) }?;
        if new_layout != layout {
            g.set_layout(new_layout);
        }
        Ok(())
    }

    unsafe fn pure_write_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        // Zeroing removes pointers, never adds one: nothing to order.
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        unsafe { self.inner.pure_write_zeroes(offset, length) }
    }

    unsafe fn pure_write_allocated_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        unsafe { self.inner.pure_write_allocated_zeroes(offset, length) }
    }

    unsafe fn pure_discard(&self, offset: u64, length: u64) -> io::Result<()> {
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        unsafe { self.inner.pure_discard(offset, length) }
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }

    fn settle_writes(&self) -> io::Result<()> {
        // imago calls this only right before it frees clusters (`process_clusters_to_free`).
        if let Some(frees) = &self.frees {
            frees.raise();
        }
        self.inner.settle_writes()
    }

    unsafe fn invalidate_cache(&self) -> io::Result<()> {
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        unsafe { self.inner.invalidate_cache() }
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        // Shared with the inner file, so `ensure_refcounted`'s blocker excludes imago's writes.
        self.inner.get_storage_helper()
    }

    fn resize(&self, new_size: u64, prealloc_mode: PreallocateMode) -> io::Result<()> {
        self.inner.resize(new_size, prealloc_mode)
    }
}
