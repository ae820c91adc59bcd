//! virtio-net (virtio 1.2 §5.1) on a host tap from the `net` crate.
//!
//! Queues: 0 = receive, 1 = transmit. Frames move between guest buffers and
//! the tap with `readv`/`writev` straight on guest memory (no copies), each
//! prefixed by the 12-byte virtio-net header, which the tap understands
//! (`IFF_VNET_HDR`). Checksum and TSO offloads the driver accepts for
//! receive are switched on in the tap, so the host kernel can hand the guest
//! large unsegmented frames; offloads for transmit are always accepted by a
//! vnet-header tap. The link is always up.

pub mod persist;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vireo_net::{MacAddr, Offloads, Tap};

use super::chain::{self, ChainLayout};
use super::worker::Worker;
use super::{features, read_config_image, ActivateError, Activation, VirtioDevice, TYPE_NET};

/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Receive queue index.
pub const RX_QUEUE: u16 = 0;
/// Transmit queue index.
pub const TX_QUEUE: u16 = 1;
/// Largest frame accepted from the driver: a 64 KiB GSO frame with its
/// Ethernet header, plus the virtio-net header.
pub const MAX_TX_LEN: u64 = 65_550 + vireo_net::VNET_HDR_LEN as u64;

/// Most descriptors in one frame's chain (one `readv`/`writev`: `UIO_MAXIOV`).
pub const MAX_SEGMENTS: usize = 1024;

/// Checks a parsed transmit chain: device-readable only, at least a
/// virtio-net header, at most [`MAX_TX_LEN`]. Returns the length written to
/// the tap (header included), or `None` if the chain must be dropped.
pub fn validate_tx(layout: &ChainLayout) -> Option<u64> {
    let len = chain::total(&layout.readable);
    let hdr = vireo_net::VNET_HDR_LEN as u64;
    (layout.writable.is_empty() && (hdr..=MAX_TX_LEN).contains(&len)).then_some(len)
}

/// Checks a parsed receive chain: device-writable only, with room for at
/// least the virtio-net header.
pub fn validate_rx(layout: &ChainLayout) -> bool {
    layout.readable.is_empty() && chain::total(&layout.writable) >= vireo_net::VNET_HDR_LEN as u64
}

/// virtio-net feature bits.
pub mod feature {
    /// The device handles packets with partial checksums (guest → host).
    pub const CSUM: u64 = 1 << 0;
    /// The driver handles packets with partial checksums (host → guest).
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// `mac` in the configuration is valid.
    pub const MAC: u64 = 1 << 5;
    /// The driver can receive TSOv4.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// The driver can receive TSOv6.
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// The driver can receive TSO with ECN.
    pub const GUEST_ECN: u64 = 1 << 9;
    /// The device can receive TSOv4 from the driver.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// The device can receive TSOv6 from the driver.
    pub const HOST_TSO6: u64 = 1 << 12;
    /// The device can receive TSO with ECN.
    pub const HOST_ECN: u64 = 1 << 13;
    /// `status` in the configuration is valid.
    pub const STATUS: u64 = 1 << 16;
}

/// Link-up bit of the configuration `status` field.
const STATUS_LINK_UP: u16 = 1;

/// Per-device frame counters.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Bytes delivered to the guest (without the virtio-net header).
    pub rx_bytes: AtomicU64,
    /// Frames sent to the tap.
    pub tx_frames: AtomicU64,
    /// Bytes sent to the tap (without the virtio-net header).
    pub tx_bytes: AtomicU64,
    /// Transmit frames the tap refused.
    pub tx_errors: AtomicU64,
    /// Chains refused as malformed.
    pub malformed: AtomicU64,
    /// Interrupts sent to the driver.
    pub interrupts: AtomicU64,
}

impl NetCounters {
    /// A snapshot as (name, value) pairs.
    pub fn snapshot(&self) -> [(&'static str, u64); 7] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("rx_frames", g(&self.rx_frames)),
            ("rx_bytes", g(&self.rx_bytes)),
            ("tx_frames", g(&self.tx_frames)),
            ("tx_bytes", g(&self.tx_bytes)),
            ("tx_errors", g(&self.tx_errors)),
            ("malformed", g(&self.malformed)),
            ("interrupts", g(&self.interrupts)),
        ]
    }
}

/// A virtio-net device.
#[derive(Debug)]
pub struct VirtioNet {
    tap: Arc<Tap>,
    pub(super) config: [u8; 12],
    counters: Arc<NetCounters>,
    worker: Option<Worker>,
    index: usize,
}

impl VirtioNet {
    /// A device on `tap` with address `mac`; `index` names its worker thread.
    pub fn new(tap: Tap, mac: MacAddr, index: usize) -> Self {
        let mut config = [0u8; 12];
        config[0..6].copy_from_slice(&mac.bytes());
        config[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        Self {
            tap: Arc::new(tap),
            config,
            counters: Arc::new(NetCounters::default()),
            worker: None,
            index,
        }
    }

    /// The device's frame counters.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        let mut b = [0u8; 6];
        b.copy_from_slice(&self.config[0..6]);
        MacAddr::from_bytes(b)
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u16 {
        TYPE_NET
    }

    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::VERSION_1
            | features::RING_INDIRECT_DESC
            | features::RING_EVENT_IDX
            | feature::MAC
            | feature::STATUS
            | feature::CSUM
            | feature::GUEST_CSUM
            | feature::GUEST_TSO4
            | feature::GUEST_TSO6
            | feature::GUEST_ECN
            | feature::HOST_TSO4
            | feature::HOST_TSO6
            | feature::HOST_ECN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_image(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let acked = activation.acked_features;
        let paused = activation.paused;
        let has = |f: u64| acked & f != 0;
        self.tap
            .set_offloads(Offloads {
                csum: has(feature::GUEST_CSUM),
                tso4: has(feature::GUEST_TSO4),
                tso6: has(feature::GUEST_TSO6),
                ecn: has(feature::GUEST_ECN),
                ufo: false,
            })
            .map_err(|e| ActivateError::Backend {
                device: "virtio-net",
                reason: e.to_string(),
            })?;
        let mut rx = None;
        let mut tx = None;
        for q in activation.queues {
            match q.index {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                _ => {}
            }
        }
        let missing = |queue| ActivateError::QueueMissing {
            device: "virtio-net",
            queue,
        };
        let rx = rx.ok_or(missing(RX_QUEUE))?;
        let tx = tx.ok_or(missing(TX_QUEUE))?;
        // Frames the driver queued for transmit (and receive buffers it
        // posted) before the worker existed, or before a snapshot, are
        // handled at the worker's first wait, where a paused start parks.
        for q in [&rx, &tx] {
            q.notify.write(1).map_err(|source| ActivateError::Worker {
                device: "virtio-net",
                source,
            })?;
        }
        let ctx = worker::NetWorker::new(
            self.tap.clone(),
            activation.mem,
            rx,
            tx,
            activation.interrupt,
            self.counters.clone(),
        );
        let w = Worker::spawn(format!("vireo-net{}", self.index), paused, move |ev| {
            ctx.run(ev)
        })
        .map_err(|source| ActivateError::Worker {
            device: "virtio-net",
            source,
        })?;
        self.worker = Some(w);
        Ok(())
    }

    fn handover_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.tap.as_raw_fd())
    }

    fn save_state(&self) -> super::persist::VirtioDeviceState {
        super::persist::VirtioDeviceState::Net(self.save())
    }

    fn restore_state(
        &mut self,
        state: &super::persist::VirtioDeviceState,
    ) -> Result<(), crate::persist::PersistError> {
        match state {
            super::persist::VirtioDeviceState::Net(s) => self.restore(s),
            other => Err(crate::persist::PersistError::mismatch(
                "virtio-net",
                "device model",
                other.kind(),
                "virtio-net",
            )),
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.counters.snapshot().to_vec()
    }

    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
    }

    fn worker_mut(&mut self) -> Option<&mut Worker> {
        self.worker.as_mut()
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.reset();
    }
}
