//! Vireo's disk engine: raw and qcow2 images behind one trait, [`DiskBackend`].
//!
//! ```text
//!             virtio-blk (devices crate)
//!                    │  &dyn DiskBackend   (sync face: read_vectored / write_vectored / flush /
//!                    │                      discard / write_zeroes; completion face: submit / reap)
//!        ┌───────────┴────────────┐
//!        │ Disk<E>  (disk.rs)     │  bounds + read-only checks, counters, tracing — once
//!        └───────────┬────────────┘
//!          E: Engine │
//!        ┌───────────┴───────────┐
//!   RawEngine (formats/raw)   Qcow2Engine (formats/qcow2) ── imago, sync feature
//!   preadv/pwritev, fallocate    header.rs validates first; backing.rs opens the chain;
//!                                storage.rs orders pointer writes after refcounts
//! ```
//! Entry points: [`open_disk`] (with [`OpenOptions`]), [`create_raw`], [`create_qcow2`],
//! [`create_qcow2_overlay`], [`probe_path`].
//!
//! # Format rules
//! - The format comes from the caller or from the file's magic, never from its name. A file
//!   opened as raw is never reinterpreted as qcow2 (a guest could write a qcow2 header into its
//!   raw disk to reach host files through a backing path). When the format was *probed* as raw,
//!   writes that would put the qcow2 magic at offset 0 are refused, as QEMU does.
//! - Backing files: the format comes from the overlay's backing-format header extension (read
//!   by us for v2 images too). Without one we probe, but only a *raw* result is accepted; a
//!   probe that finds qcow2 is refused ([`BlockError::BackingFormatNotRecorded`]). Why this is
//!   safe: inferring raw can only expose the bytes of the file the overlay already names, while
//!   inferring qcow2 would let whoever wrote that file's first cluster (possibly a guest, if the
//!   base was once its raw disk) choose further files to open. QEMU warns about exactly this
//!   case; we refuse it. `qemu-img rebase -u -F qcow2 -b <base> <overlay>` fixes such images.
//! - Backing paths are resolved relative to the directory of the image naming them, as QEMU
//!   does. Loops ([`BlockError::BackingChainLoop`]) and chains deeper than
//!   [`MAX_BACKING_DEPTH`] are refused; all layers below the top are opened read-only.
//! - Refused qcow2 features, each with its own error: encryption, external data files, extended
//!   L2 entries, zstd compression, unknown incompatible feature bits, dirty (lazy-refcount) and
//!   corrupt images. zlib-compressed clusters and internal snapshots are read; writes never
//!   touch snapshot data (copy-on-write of shared clusters).
//!
//! # Durability
//! [`DiskBackend::flush`] makes every write completed before it durable: for qcow2, imago writes
//! back its metadata caches in dependency order (refcounts before the L2 entries that use the
//! clusters, L2 entries before the refcount decrements that free them) and then `fdatasync`s.
//! A process killed at any point leaves an image that `qemu-img check` finds consistent, at
//! worst with leaked clusters (tested by `tests/crash.rs`).
//!
//! imago (used unmodified from crates.io) writes one kind of metadata out of order: the pointer
//! to a newly allocated metadata cluster — the L1 entry of a new L2 table, the refcount-table
//! entry of a new refcount block, the header's L1 pointer — goes straight to disk while the
//! cluster's refcount is still only in imago's cache. We close that window in the storage object
//! imago writes through (`formats/qcow2/storage.rs`, `GuardedFile`): before a write that adds
//! such a pointer reaches the file, the target cluster's on-disk refcount is made non-zero
//! (set to the 1 imago has already counted in its cache). Every other write passes through.
//!
//! # The completion face and io_uring
//! [`DiskBackend::submit`] (a request plus a `user_data` tag) and [`DiskBackend::reap`] are the
//! face for an asynchronous engine. Today virtio-blk calls the synchronous methods directly
//! (`read_vectored`, `write_vectored`, …): an io_uring prototype on this project's CI host was
//! twice as slow as `pread` for page-cache reads on tmpfs, which the kernel hands to io-wq
//! threads. Every engine here is synchronous: `submit` runs the request
//! inline and returns `Some(Completion)`, and [`DiskBackend::completion_fd`] is `None`. An
//! io_uring engine would implement `submit` by queuing SQEs (readv/writev/fsync/fallocate on
//! the raw file; for qcow2, the data-cluster I/O after a synchronous mapping lookup) and
//! returning `None`, expose its eventfd through `completion_fd`, and turn CQEs into
//! [`Completion`]s in `reap`. A caller written against submit/reap — complete inline on
//! `Some`, otherwise poll the fd and reap — needs no change when that engine arrives. The
//! `unsafe` contract on `submit` (guest memory stays mapped until the completion is returned)
//! is what a kernel-side engine needs and what virtio-blk already guarantees.
//!
//! # Threads
//! [`DiskBackend`] is `Send + Sync`; all methods take `&self`, so a per-disk worker can own the
//! box while a metrics thread reads [`DiskCounters`] (relaxed atomics, no locks).

mod backend;
mod create;
mod dirty;
mod disk;
mod error;
mod formats;
mod open;
pub mod probe;

/// The vm-memory crate this crate's [`GuestSlice`] comes from, re-exported so callers match it.
pub use vm_memory;

pub use backend::{
    total_len, Capabilities, Completion, DeviceId, DiskBackend, DiskCounters, DiskRequest,
    GuestSlice, OpCounts, OpKind,
};
pub use create::{create_qcow2, create_qcow2_overlay, create_raw, DEFAULT_CLUSTER_SIZE};
pub use dirty::{DirtyBitmap, DIRTY_PAGE_SIZE};
pub use error::{BlockError, CompressionType, MetadataTable, Result};
pub use formats::qcow2::MAX_BACKING_DEPTH;
pub use open::{open_disk, open_qcow2_file, OpenOptions};
pub use probe::{probe_path, Format};
