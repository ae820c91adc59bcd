//! virtio devices (virtio 1.2) on the modern virtio-pci transport.
//!
//! ```text
//!  guest driver ──MMIO (BAR0)──► VirtioPciDevice (pci_transport.rs)
//!      │  common cfg · ISR · device cfg · MSI-X table      │ DRIVER_OK: activate(queues)
//!      │ notify write ──ioeventfd──► queue EventFd ───────►│ device worker thread
//!      ◄──── MSI-X vector ◄── irqfd ◄── Interrupt::signal_used ◄──┘  (block/worker.rs, net/worker.rs)
//! ```
//! A [`VirtioDevice`] is a device model (virtio-blk, virtio-net, virtio-input): its feature
//! bits, configuration space and queue processing. The transport owns the
//! guest-visible registers and hands the device its queues, already
//! configured by the driver, when the driver sets `DRIVER_OK`. Every
//! descriptor chain is untrusted: malformed chains complete with an error
//! status (or are dropped), a corrupted ring sets `DEVICE_NEEDS_RESET`, and
//! no guest value can make the VMM panic or touch memory outside the guest.

pub mod block;
pub mod chain;
pub mod input;
pub mod interrupt;
pub mod msix;
pub mod net;
pub mod pci_transport;
pub mod persist;
pub(crate) mod prefetch;
pub mod worker;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use thiserror::Error;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

pub use interrupt::Interrupt;
pub use pci_transport::VirtioPciDevice;

/// Guest memory as devices see it: mmap-backed, with a dirty bitmap so
/// device writes are tracked for migration.
pub type GuestMemory = vm_memory::GuestMemoryMmap<vireo_block::DirtyBitmap>;

/// Device type of a network card.
pub const TYPE_NET: u16 = 1;
/// Device type of a block device.
pub const TYPE_BLOCK: u16 = 2;
/// Device type of an input device.
pub const TYPE_INPUT: u16 = input::TYPE_INPUT;

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready; queues may be used.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 0x80;
}

/// Transport-level feature bits (virtio 1.2 §6).
pub mod features {
    /// Indirect descriptor tables.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// A virtio 1.x (modern) device; required by this transport.
    pub const VERSION_1: u64 = 1 << 32;
}

/// A queue the driver enabled, handed to the device at activation.
#[derive(Debug)]
pub struct ActiveQueue {
    /// Queue index within the device.
    pub index: u16,
    /// The split virtqueue, configured with the driver's addresses and size.
    pub queue: Queue,
    /// Signalled when the driver notifies this queue (an ioeventfd).
    pub notify: EventFd,
    /// Where the worker publishes the queue's positions at each request
    /// boundary, for snapshots (see [`persist`]).
    pub position: Arc<QueuePosition>,
}

/// A queue's `next_avail` / `next_used` as its worker last published them.
///
/// The worker owns the [`Queue`]; before each [`worker::EventLoop::wait`]
/// (its request boundary, where a pause parks it) it calls
/// [`QueuePosition::publish`]. While the worker is paused the values are
/// therefore exactly the queue's.
#[derive(Debug, Default)]
pub struct QueuePosition {
    next_avail: AtomicU16,
    next_used: AtomicU16,
}

impl QueuePosition {
    /// Positions `next_avail`, `next_used`.
    pub fn new(next_avail: u16, next_used: u16) -> Self {
        Self {
            next_avail: AtomicU16::new(next_avail),
            next_used: AtomicU16::new(next_used),
        }
    }

    /// Records `queue`'s current positions.
    pub fn publish(&self, queue: &Queue) {
        self.next_avail.store(queue.next_avail(), Ordering::Release);
        self.next_used.store(queue.next_used(), Ordering::Release);
    }

    /// The last published (`next_avail`, `next_used`).
    pub fn get(&self) -> (u16, u16) {
        (
            self.next_avail.load(Ordering::Acquire),
            self.next_used.load(Ordering::Acquire),
        )
    }
}

/// What a device gets when the driver sets `DRIVER_OK`.
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMemory,
    /// The enabled queues, in index order.
    pub queues: Vec<ActiveQueue>,
    /// Features the driver accepted (a subset of the offered ones).
    pub acked_features: u64,
    /// How the device interrupts the driver.
    pub interrupt: Arc<dyn Interrupt>,
    /// Start paused: the device processes nothing until
    /// [`VirtioDevice::resume`] (one call). False for a guest-driven
    /// activation; a paused snapshot restore sets it. Either way, work
    /// already pending in the queues is handled once the device runs (the
    /// device signals its queues' notify eventfds at activation instead of
    /// draining them before its worker's first wait).
    pub paused: bool,
}

impl std::fmt::Debug for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activation")
            .field("queues", &self.queues)
            .field(
                "acked_features",
                &format_args!("{:#x}", self.acked_features),
            )
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

/// Why a device could not start.
#[derive(Debug, Error)]
pub enum ActivateError {
    /// A queue the device needs was not enabled by the driver.
    #[error("virtio {device}: queue {queue} is not enabled")]
    QueueMissing {
        /// Device name.
        device: &'static str,
        /// Queue index.
        queue: u16,
    },
    /// A queue's rings do not lie in guest memory.
    #[error("virtio {device}: queue {queue} has rings outside guest memory")]
    QueueInvalid {
        /// Device name.
        device: &'static str,
        /// Queue index.
        queue: u16,
    },
    /// The worker thread or its event loop could not be set up.
    #[error("virtio {device}: cannot start the worker: {source}")]
    Worker {
        /// Device name.
        device: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The backend refused the negotiated configuration.
    #[error("virtio {device}: backend setup failed: {reason}")]
    Backend {
        /// Device name.
        device: &'static str,
        /// What failed.
        reason: String,
    },
}

/// A virtio device model, driven by a transport.
pub trait VirtioDevice: Send {
    /// The virtio device type ([`TYPE_BLOCK`], [`TYPE_NET`], [`TYPE_INPUT`]).
    fn device_type(&self) -> u16;
    /// A short name for logs (`virtio-blk`).
    fn name(&self) -> &'static str;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver (including [`features::VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space. Bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (most fields are read-only).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts processing the queues. Called once per `DRIVER_OK`.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The device model's own saved state (see [`persist`]).
    fn save_state(&self) -> persist::VirtioDeviceState;
    /// Makes every completed write durable in the backend (a disk's image, qcow2 metadata
    /// included), so a snapshot's disks match its state. The default has nothing to flush.
    fn flush_backend(&self) -> std::io::Result<()> {
        Ok(())
    }
    /// The host descriptor a live migration to a `vireo` on this host hands over with the
    /// device (a NIC's tap queue, so frames queued in it reach the guest there); `None` for
    /// a device whose backend the target opens itself (a disk image, by path).
    fn handover_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Checks `state` against this device (type, backend size, MAC, …) and
    /// applies what it holds. Changes nothing on error. Called before the
    /// transport applies anything, on a device that is not activated.
    fn restore_state(
        &mut self,
        state: &persist::VirtioDeviceState,
    ) -> Result<(), crate::persist::PersistError>;
    /// The device's counters as (name, value) pairs, for metrics and logs.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Stops processing and forgets the queues (driver reset or VM teardown).
    /// Returns once no worker touches guest memory any more; a block device
    /// also makes completed writes durable.
    fn reset(&mut self);
    /// Quiesces the device at a request boundary: requests already taken
    /// from the rings complete, then nothing more is processed. Returns once
    /// the device writes neither guest memory nor its backend; queue state
    /// (indices, event suppression) is kept and notifications arriving
    /// meanwhile stay pending. Idempotent. The default pauses the device's
    /// worker ([`VirtioDevice::worker_mut`]), if it has one running.
    fn pause(&mut self) {
        if let Some(w) = self.worker_mut() {
            w.pause();
        }
    }
    /// Undoes [`VirtioDevice::pause`]: handles whatever became pending while
    /// paused, losing and repeating nothing. A no-op if not paused.
    fn resume(&mut self) {
        if let Some(w) = self.worker_mut() {
            w.resume();
        }
    }
    /// The worker thread processing the queues, once activated; `None` for a
    /// device without one (nothing of it runs outside the vCPUs).
    fn worker_mut(&mut self) -> Option<&mut worker::Worker> {
        None
    }
}

/// Copies `src` (a little-endian config image) into `data` from `offset`;
/// bytes outside the image read as zero.
pub(crate) fn read_config_image(src: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| src.get(o))
            .copied()
            .unwrap_or(0);
    }
}
