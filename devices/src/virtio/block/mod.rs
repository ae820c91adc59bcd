//! virtio-blk (virtio 1.2 §5.2) over a [`DiskBackend`] from the `block` crate.
//!
//! One request queue of up to [`QUEUE_SIZE`] entries, processed on the
//! device's own worker thread (`worker.rs`). Features are offered only when
//! the backend supports them: `DISCARD` / `WRITE_ZEROES` from
//! [`DiskBackend::capabilities`], `RO` for read-only disks. Request parsing
//! and execution live in `request.rs`, separate from the event loop, so the
//! fuzz target and the unit-test driver harness exercise exactly the code
//! the worker runs.
//!
//! The worker takes up to 32 requests at a time and handles them in passes
//! (walk the chains, read the headers, do the I/O, complete), so the
//! guest-written header lines are fetched in parallel (prefetched while the
//! chains are walked) and back-to-back syscalls keep the kernel's read path
//! warm. The README's benchmark table gives the measured effect.

pub mod persist;
pub mod request;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vireo_block::DiskBackend;

use super::worker::Worker;
use super::{features, read_config_image, ActivateError, Activation, VirtioDevice, TYPE_BLOCK};
use request::Limits;

/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request (`seg_max`): a request also needs a header
/// and a status descriptor.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most ranges per discard / write-zeroes request.
pub const MAX_RANGES: u32 = 32;
/// Most sectors per discard / write-zeroes range (2 GiB).
pub const MAX_RANGE_SECTORS: u32 = 1 << 22;

/// virtio-blk feature bits.
pub mod feature {
    /// `seg_max` is valid.
    pub const SEG_MAX: u64 = 1 << 2;
    /// Read-only device.
    pub const RO: u64 = 1 << 5;
    /// `blk_size` is valid.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// FLUSH is supported (the device has a write cache).
    pub const FLUSH: u64 = 1 << 9;
    /// DISCARD is supported.
    pub const DISCARD: u64 = 1 << 13;
    /// WRITE_ZEROES is supported.
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Names of the backend's per-kind counters (ops, bytes, errors).
const BACKEND_COUNTERS: [(vireo_block::OpKind, [&str; 3]); 5] = [
    (
        vireo_block::OpKind::Read,
        ["read_ops", "read_bytes", "read_errors"],
    ),
    (
        vireo_block::OpKind::Write,
        ["write_ops", "write_bytes", "write_errors"],
    ),
    (
        vireo_block::OpKind::Flush,
        ["flush_ops", "flush_bytes", "flush_errors"],
    ),
    (
        vireo_block::OpKind::Discard,
        ["discard_ops", "discard_bytes", "discard_errors"],
    ),
    (
        vireo_block::OpKind::WriteZeroes,
        [
            "write_zeroes_ops",
            "write_zeroes_bytes",
            "write_zeroes_errors",
        ],
    ),
];

/// Per-device request counters (the backend counts ops and bytes by kind).
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// Requests completed (any status).
    pub requests: AtomicU64,
    /// Requests completed with an error status.
    pub failed: AtomicU64,
    /// Chains refused as malformed (all also counted in `failed`, including
    /// chains with no status byte, which complete with length 0).
    pub malformed: AtomicU64,
    /// Interrupts sent to the driver.
    pub interrupts: AtomicU64,
    /// Times the worker woke to process the queue.
    pub wakeups: AtomicU64,
}

impl BlockCounters {
    /// A snapshot as (name, value) pairs, for metrics and logs.
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        [
            ("requests", self.requests.load(Ordering::Relaxed)),
            ("failed", self.failed.load(Ordering::Relaxed)),
            ("malformed", self.malformed.load(Ordering::Relaxed)),
            ("interrupts", self.interrupts.load(Ordering::Relaxed)),
            ("wakeups", self.wakeups.load(Ordering::Relaxed)),
        ]
    }
}

/// A virtio-blk device.
#[derive(Debug)]
pub struct VirtioBlock {
    disk: Arc<dyn DiskBackend>,
    features: u64,
    config: [u8; 60],
    counters: Arc<BlockCounters>,
    worker: Option<Worker>,
    index: usize,
}

impl VirtioBlock {
    /// A device for `disk`; `index` names its worker thread (`vireo-blk<index>`).
    pub fn new(disk: Arc<dyn DiskBackend>, index: usize) -> Self {
        let caps = disk.capabilities();
        let mut features = features::VERSION_1
            | features::RING_INDIRECT_DESC
            | features::RING_EVENT_IDX
            | feature::SEG_MAX
            | feature::BLK_SIZE
            | feature::FLUSH;
        if disk.read_only() {
            features |= feature::RO;
        } else {
            if caps.discard {
                features |= feature::DISCARD;
            }
            if caps.write_zeroes {
                features |= feature::WRITE_ZEROES;
            }
        }
        let mut config = [0u8; 60];
        let put32 = |c: &mut [u8; 60], off: usize, v: u32| {
            c[off..off + 4].copy_from_slice(&v.to_le_bytes());
        };
        config[0..8].copy_from_slice(&(disk.size() / request::SECTOR_SIZE).to_le_bytes());
        put32(&mut config, 12, SEG_MAX);
        put32(&mut config, 20, request::SECTOR_SIZE as u32);
        config[34..36].copy_from_slice(&1u16.to_le_bytes());
        let granularity = (caps.discard_granularity / request::SECTOR_SIZE).max(1);
        put32(&mut config, 36, MAX_RANGE_SECTORS);
        put32(&mut config, 40, MAX_RANGES);
        put32(
            &mut config,
            44,
            u32::try_from(granularity).unwrap_or(u32::MAX),
        );
        put32(&mut config, 48, MAX_RANGE_SECTORS);
        put32(&mut config, 52, MAX_RANGES);
        config[56] = 1;
        Self {
            disk,
            features,
            config,
            counters: Arc::new(BlockCounters::default()),
            worker: None,
            index,
        }
    }

    /// The device's request counters.
    pub fn counters(&self) -> Arc<BlockCounters> {
        self.counters.clone()
    }

    /// The disk behind the device.
    pub fn disk(&self) -> &Arc<dyn DiskBackend> {
        &self.disk
    }
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u16 {
        TYPE_BLOCK
    }

    fn name(&self) -> &'static str {
        "virtio-blk"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_image(&self.config, offset, data);
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        let queue = activation.queues.pop().filter(|q| q.index == 0).ok_or(
            ActivateError::QueueMissing {
                device: "virtio-blk",
                queue: 0,
            },
        )?;
        // The driver may have posted requests before the worker existed (or
        // before a snapshot): have the worker look at the queue at its first
        // wait, which is also where a paused start parks.
        queue
            .notify
            .write(1)
            .map_err(|source| ActivateError::Worker {
                device: "virtio-blk",
                source,
            })?;
        let ctx = worker::BlockWorker::new(
            self.disk.clone(),
            activation.mem,
            queue,
            activation.interrupt,
            self.counters.clone(),
            Limits {
                max_ranges: MAX_RANGES,
                max_range_sectors: MAX_RANGE_SECTORS,
            },
        );
        let w = Worker::spawn(
            format!("vireo-blk{}", self.index),
            activation.paused,
            move |ev| ctx.run(ev),
        )
        .map_err(|source| ActivateError::Worker {
            device: "virtio-blk",
            source,
        })?;
        self.worker = Some(w);
        Ok(())
    }

    fn save_state(&self) -> super::persist::VirtioDeviceState {
        super::persist::VirtioDeviceState::Block(self.save())
    }

    fn restore_state(
        &mut self,
        state: &super::persist::VirtioDeviceState,
    ) -> Result<(), crate::persist::PersistError> {
        match state {
            super::persist::VirtioDeviceState::Block(s) => self.restore(s),
            other => Err(crate::persist::PersistError::mismatch(
                "virtio-blk",
                "device model",
                other.kind(),
                "virtio-blk",
            )),
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut v = self.counters.snapshot().to_vec();
        let disk = self.disk.counters();
        for (kind, names) in BACKEND_COUNTERS {
            let c = disk.get(kind);
            v.extend([(names[0], c.ops), (names[1], c.bytes), (names[2], c.errors)]);
        }
        v
    }

    fn reset(&mut self) {
        // Only a device that ran has anything to flush; this also makes a
        // second reset (VM exit, then drop) a no-op.
        let Some(mut worker) = self.worker.take() else {
            return;
        };
        worker.stop();
        if let Err(e) = self.disk.flush() {
            tracing::warn!(disk = %self.disk.device_id(), error = %e, "flush at device reset failed");
        }
    }

    fn flush_backend(&self) -> std::io::Result<()> {
        self.disk.flush().map_err(std::io::Error::other)
    }

    fn worker_mut(&mut self) -> Option<&mut Worker> {
        self.worker.as_mut()
    }
}

impl Drop for VirtioBlock {
    fn drop(&mut self) {
        self.reset();
    }
}
