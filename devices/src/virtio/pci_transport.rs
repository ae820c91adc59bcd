//! The modern virtio-pci transport (virtio 1.2 §4.1): one PCI function whose
//! BAR0 holds the common configuration, ISR, device configuration and notify
//! regions plus the MSI-X table and PBA.
//!
//! ```text
//!  BAR0 (32-bit memory, 16 KiB)
//!  0x0000 common cfg   0x0100 ISR   0x0200 device cfg
//!  0x1000 notify (queue n at 0x1000 + 4n; an ioeventfd each)
//!  0x2000 MSI-X table  0x3000 MSI-X PBA
//! ```
//! Registers accept any access size and offset the guest chooses: writes are
//! applied byte-wise to a register image and then decoded per field, so a
//! 64-bit queue address written as two 32-bit halves (as Linux does) works
//! like one 64-bit write. The BAR stays where the VMM placed it; a guest that
//! moves it is logged and keeps using the original address.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{debug, info, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::{Interrupt, MsiVectors};
use super::msix::{self, MsixState, MSIX_CAP_ID};
use super::{
    features, status, ActivateError, Activation, ActiveQueue, GuestMemory, QueuePosition,
    VirtioDevice,
};
use crate::bus::BusDevice;
use crate::pci::config::BAR0_OFFSET;
use crate::pci::{PciConfigSpace, PciDevice};

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// Modern device IDs are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;
/// Size of BAR0.
pub const BAR_SIZE: u64 = 0x4000;
/// "No MSI-X vector" in the vector registers.
pub const NO_VECTOR: u16 = 0xffff;

const COMMON_OFFSET: u64 = 0x0000;
const COMMON_SIZE: u64 = 0x38;
const ISR_OFFSET: u64 = 0x0100;
const ISR_SIZE: u64 = 4;
const DEVICE_CFG_OFFSET: u64 = 0x0200;
const DEVICE_CFG_SIZE: u64 = 0x0e00;
/// Start of the notify region.
pub const NOTIFY_OFFSET: u64 = 0x1000;
/// Bytes between two queues' notify addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
const NOTIFY_SIZE: u64 = 0x1000;
const MSIX_TABLE_OFFSET: u64 = 0x2000;
const MSIX_PBA_OFFSET: u64 = 0x3000;

const CAP_VENDOR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

/// ISR bit: a queue was used.
const ISR_QUEUE: u8 = 1;
/// ISR bit: the configuration changed.
const ISR_CONFIG: u8 = 2;

/// The most queues a device can have here: each needs a notify address and
/// an MSI-X vector besides the configuration vector, and the table region
/// (up to the PBA) holds `MSIX_ENTRY_SIZE`-byte entries.
const MAX_QUEUES: usize = {
    let by_notify = (NOTIFY_SIZE / NOTIFY_MULTIPLIER as u64) as usize;
    let by_vectors = ((MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) / msix::MSIX_ENTRY_SIZE) as usize - 1;
    if by_notify < by_vectors {
        by_notify
    } else {
        by_vectors
    }
};

/// State shared by the transport and the interrupt object given to workers.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) status: AtomicU8,
    pub(super) isr: AtomicU8,
    pub(super) config_vector: AtomicU16,
    pub(super) queue_vectors: Vec<AtomicU16>,
}

/// The transport's [`Interrupt`]: ISR bits plus MSI-X delivery.
struct TransportInterrupt {
    shared: Arc<Shared>,
    msix: Arc<Mutex<MsixState>>,
}

impl TransportInterrupt {
    fn raise(&self, isr_bit: u8, vector: u16) {
        self.shared.isr.fetch_or(isr_bit, Ordering::SeqCst);
        if vector != NO_VECTOR {
            lock(&self.msix).fire(vector);
        }
    }
}

impl Interrupt for TransportInterrupt {
    fn signal_used(&self, queue: u16) {
        let vector = self
            .shared
            .queue_vectors
            .get(usize::from(queue))
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire));
        self.raise(ISR_QUEUE, vector);
    }

    fn signal_config(&self) {
        let vector = self.shared.config_vector.load(Ordering::Acquire);
        self.raise(ISR_CONFIG, vector);
    }

    fn set_needs_reset(&self) {
        self.shared
            .status
            .fetch_or(status::DEVICE_NEEDS_RESET, Ordering::SeqCst);
        self.signal_config();
    }
}

/// The driver-programmed registers of one queue.
#[derive(Clone, Copy, Debug)]
pub(super) struct QueueRegs {
    pub(super) max_size: u16,
    pub(super) size: u16,
    pub(super) enabled: bool,
    pub(super) desc: u64,
    pub(super) driver: u64,
    pub(super) device: u64,
}

impl QueueRegs {
    pub(super) fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// Common-configuration fields (virtio 1.2 §4.1.4.3), as (offset, size).
mod field {
    pub const DEVICE_FEATURE_SELECT: (u64, u64) = (0x00, 4);
    pub const DEVICE_FEATURE: (u64, u64) = (0x04, 4);
    pub const DRIVER_FEATURE_SELECT: (u64, u64) = (0x08, 4);
    pub const DRIVER_FEATURE: (u64, u64) = (0x0c, 4);
    pub const CONFIG_MSIX_VECTOR: (u64, u64) = (0x10, 2);
    pub const NUM_QUEUES: (u64, u64) = (0x12, 2);
    pub const DEVICE_STATUS: (u64, u64) = (0x14, 1);
    pub const CONFIG_GENERATION: (u64, u64) = (0x15, 1);
    pub const QUEUE_SELECT: (u64, u64) = (0x16, 2);
    pub const QUEUE_SIZE: (u64, u64) = (0x18, 2);
    pub const QUEUE_MSIX_VECTOR: (u64, u64) = (0x1a, 2);
    pub const QUEUE_ENABLE: (u64, u64) = (0x1c, 2);
    pub const QUEUE_NOTIFY_OFF: (u64, u64) = (0x1e, 2);
    pub const QUEUE_DESC: (u64, u64) = (0x20, 8);
    pub const QUEUE_DRIVER: (u64, u64) = (0x28, 8);
    pub const QUEUE_DEVICE: (u64, u64) = (0x30, 8);
    pub const ALL: [(u64, u64); 16] = [
        DEVICE_FEATURE_SELECT,
        DEVICE_FEATURE,
        DRIVER_FEATURE_SELECT,
        DRIVER_FEATURE,
        CONFIG_MSIX_VECTOR,
        NUM_QUEUES,
        DEVICE_STATUS,
        CONFIG_GENERATION,
        QUEUE_SELECT,
        QUEUE_SIZE,
        QUEUE_MSIX_VECTOR,
        QUEUE_ENABLE,
        QUEUE_NOTIFY_OFF,
        QUEUE_DESC,
        QUEUE_DRIVER,
        QUEUE_DEVICE,
    ];
}

/// A virtio device behind the modern virtio-pci transport: a PCI function
/// ([`PciDevice`]) whose BAR0 is served through [`BusDevice`].
pub struct VirtioPciDevice {
    pub(super) config: PciConfigSpace,
    pub(super) device: Box<dyn VirtioDevice>,
    pub(super) mem: GuestMemory,
    bar_addr: u64,
    pub(super) msix_cap: usize,
    pub(super) msix: Arc<Mutex<MsixState>>,
    pub(super) shared: Arc<Shared>,
    notify: Vec<EventFd>,
    pub(super) queues: Vec<QueueRegs>,
    /// Where each queue's worker publishes its positions (replaced at
    /// every activation; see [`super::persist`]).
    pub(super) positions: Vec<Arc<QueuePosition>>,
    pub(super) device_feature_select: u32,
    pub(super) driver_feature_select: u32,
    pub(super) driver_features: u64,
    pub(super) queue_select: u16,
    pub(super) active: bool,
}

impl std::fmt::Debug for VirtioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("device", &self.device.name())
            .field("bar_addr", &format_args!("{:#x}", self.bar_addr))
            .field("status", &self.shared.status.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Why the transport could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The device has no queues or more than the notify region can address.
    #[error("virtio device {name} has {count} queues (1 to {MAX_QUEUES} supported)")]
    QueueCount {
        /// Device name.
        name: &'static str,
        /// Its queue count.
        count: usize,
    },
    /// The MSI vector group does not have one vector per queue plus one.
    #[error("virtio device {name} needs {needed} MSI-X vectors, got {got}")]
    VectorCount {
        /// Device name.
        name: &'static str,
        /// Queues + 1.
        needed: usize,
        /// What the VMM allocated.
        got: usize,
    },
    /// An eventfd could not be created.
    #[error("cannot create a queue notification eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The capabilities do not fit in PCI configuration space.
    #[error("virtio device {0}: its PCI capabilities do not fit in configuration space")]
    ConfigSpaceFull(&'static str),
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    // cap_len counts the whole capability including ID and next pointer.
    let cap_len: u8 = if extra.is_some() { 20 } else { 16 };
    let mut b = vec![cap_len, cfg_type, 0 /* BAR0 */, 0 /* id */, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(x) = extra {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b
}

impl VirtioPciDevice {
    /// Wraps `device` as a PCI function with BAR0 at `bar_addr` (which must
    /// be [`BAR_SIZE`]-aligned). `vectors` must hold one MSI vector per queue
    /// plus one for configuration changes.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        bar_addr: u32,
        vectors: Arc<dyn MsiVectors>,
    ) -> Result<Self, TransportError> {
        let name = device.name();
        let sizes = device.queue_max_sizes().to_vec();
        if sizes.is_empty() || sizes.len() > MAX_QUEUES {
            return Err(TransportError::QueueCount {
                name,
                count: sizes.len(),
            });
        }
        if vectors.count() != sizes.len() + 1 {
            return Err(TransportError::VectorCount {
                name,
                needed: sizes.len() + 1,
                got: vectors.count(),
            });
        }
        let class: [u8; 3] = match device.device_type() {
            super::TYPE_NET => [0x02, 0x00, 0x00],
            super::TYPE_BLOCK => [0x01, 0x80, 0x00],
            _ => [0xff, 0x00, 0x00],
        };
        let mut config = PciConfigSpace::new(
            VIRTIO_PCI_VENDOR,
            VIRTIO_PCI_DEVICE_BASE + device.device_type(),
            class,
            1,
        );
        config.set_subsystem(VIRTIO_PCI_VENDOR, 0x40);
        config.set_mem_bar32(0, bar_addr, BAR_SIZE as u32);
        let caps = [
            vendor_cap(CFG_COMMON, COMMON_OFFSET, COMMON_SIZE, None),
            vendor_cap(
                CFG_NOTIFY,
                NOTIFY_OFFSET,
                NOTIFY_MULTIPLIER as u64 * sizes.len() as u64,
                Some(NOTIFY_MULTIPLIER),
            ),
            vendor_cap(CFG_ISR, ISR_OFFSET, ISR_SIZE, None),
            vendor_cap(CFG_DEVICE, DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE, None),
        ];
        let full = || TransportError::ConfigSpaceFull(device.name());
        for cap in caps {
            config.add_capability(CAP_VENDOR, &cap).ok_or_else(full)?;
        }
        let msix = MsixState::new(vectors);
        let body = msix.capability_body(0, MSIX_TABLE_OFFSET as u32, MSIX_PBA_OFFSET as u32);
        let msix_cap = config.add_capability(MSIX_CAP_ID, &body).ok_or_else(full)?;
        config.set_writable(msix_cap + 3, &[(msix::CONTROL_WRITABLE >> 8) as u8]);
        let notify = sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TransportError::EventFd)?;
        let shared = Arc::new(Shared {
            status: AtomicU8::new(0),
            isr: AtomicU8::new(0),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: sizes.iter().map(|_| AtomicU16::new(NO_VECTOR)).collect(),
        });
        Ok(Self {
            config,
            device,
            mem,
            bar_addr: u64::from(bar_addr),
            msix_cap,
            msix: Arc::new(Mutex::new(msix)),
            shared,
            notify,
            positions: sizes
                .iter()
                .map(|_| Arc::new(QueuePosition::default()))
                .collect(),
            queues: sizes.into_iter().map(QueueRegs::new).collect(),
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            active: false,
        })
    }

    /// Where BAR0 lives in guest physical memory.
    pub fn bar_addr(&self) -> u64 {
        self.bar_addr
    }

    /// The notify eventfd of each queue with its guest-physical notify
    /// address, for registration as KVM ioeventfds.
    pub fn ioeventfds(&self) -> Vec<(u64, &EventFd)> {
        self.notify
            .iter()
            .zip(0u16..)
            .map(|(e, i)| (notify_address(self.bar_addr, i).0, e))
            .collect()
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.shared.status.load(Ordering::Acquire)
    }

    /// The device model's name.
    pub fn name(&self) -> &'static str {
        self.device.name()
    }

    /// The device model's counters (see [`VirtioDevice::counters`]).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.device.counters()
    }

    /// Flushes the device model's backend (see [`VirtioDevice::flush_backend`]).
    pub fn flush_backend(&self) -> std::io::Result<()> {
        self.device.flush_backend()
    }

    /// The device's [`VirtioDevice::handover_fd`].
    pub fn handover_fd(&self) -> Option<std::os::fd::RawFd> {
        self.device.handover_fd()
    }

    /// Quiesces the device model (see [`VirtioDevice::pause`]); the
    /// transport's registers and MSI-X state are kept as they are.
    pub fn pause(&mut self) {
        self.device.pause();
    }

    /// Lets a paused device model run again (see [`VirtioDevice::resume`]).
    pub fn resume(&mut self) {
        self.device.resume();
    }

    /// Stops the device (as a driver reset does) and forgets negotiated state.
    pub fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.shared.status.store(0, Ordering::Release);
        self.shared.isr.store(0, Ordering::Release);
        self.shared
            .config_vector
            .store(NO_VECTOR, Ordering::Release);
        for v in &self.shared.queue_vectors {
            v.store(NO_VECTOR, Ordering::Release);
        }
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
        for e in &self.notify {
            // Drain stale notifications; an empty eventfd returns EAGAIN.
            let _ = e.read();
        }
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
    }

    fn selected(&self) -> Option<&QueueRegs> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn common_field(&self, (off, _): (u64, u64)) -> u64 {
        let q = self.selected();
        let qv = |f: fn(&QueueRegs) -> u64| q.map_or(0, f);
        match off {
            0x00 => u64::from(self.device_feature_select),
            0x04 => match self.device_feature_select {
                0 => self.device.features() & 0xffff_ffff,
                1 => self.device.features() >> 32,
                _ => 0,
            },
            0x08 => u64::from(self.driver_feature_select),
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(self.shared.config_vector.load(Ordering::Acquire)),
            0x12 => self.queues.len() as u64,
            0x14 => u64::from(self.shared.status.load(Ordering::Acquire)),
            0x15 => 0,
            0x16 => u64::from(self.queue_select),
            0x18 => qv(|q| u64::from(q.size)),
            0x1a => self
                .shared
                .queue_vectors
                .get(usize::from(self.queue_select))
                .map_or(u64::from(NO_VECTOR), |v| {
                    u64::from(v.load(Ordering::Acquire))
                }),
            0x1c => qv(|q| u64::from(q.enabled)),
            0x1e if q.is_some() => u64::from(self.queue_select),
            0x20 => qv(|q| q.desc),
            0x28 => qv(|q| q.driver),
            0x30 => qv(|q| q.device),
            _ => 0,
        }
    }

    fn common_image(&self) -> [u8; COMMON_SIZE as usize] {
        let mut img = [0u8; COMMON_SIZE as usize];
        for f in field::ALL {
            let v = self.common_field(f).to_le_bytes();
            img[f.0 as usize..(f.0 + f.1) as usize].copy_from_slice(&v[..f.1 as usize]);
        }
        img
    }

    fn read_common(&self, offset: u64, data: &mut [u8]) {
        let img = self.common_image();
        super::read_config_image(&img, offset, data);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut img = self.common_image();
        let end = offset.saturating_add(data.len() as u64);
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = usize::try_from(offset + i as u64)
                .ok()
                .and_then(|o| img.get_mut(o))
            {
                *slot = *b;
            }
        }
        for f in field::ALL {
            if f.0 < end && offset < f.0 + f.1 {
                let mut v = [0u8; 8];
                v[..f.1 as usize].copy_from_slice(&img[f.0 as usize..(f.0 + f.1) as usize]);
                self.write_field(f, u64::from_le_bytes(v));
            }
        }
    }

    fn write_field(&mut self, f: (u64, u64), value: u64) {
        let sel = usize::from(self.queue_select);
        // Queue registers may only change before DRIVER_OK.
        let queue_writable = !self.active;
        match f {
            field::DEVICE_FEATURE_SELECT => self.device_feature_select = value as u32,
            field::DRIVER_FEATURE_SELECT => self.driver_feature_select = value as u32,
            field::DRIVER_FEATURE if self.status() & status::FEATURES_OK == 0 => {
                let v = value & 0xffff_ffff;
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            field::CONFIG_MSIX_VECTOR => {
                let v = self.valid_vector(value as u16);
                self.shared.config_vector.store(v, Ordering::Release);
            }
            field::DEVICE_STATUS => self.write_status(value as u8),
            field::QUEUE_SELECT => self.queue_select = value as u16,
            field::QUEUE_MSIX_VECTOR => {
                let v = self.valid_vector(value as u16);
                if let Some(q) = self.shared.queue_vectors.get(sel) {
                    q.store(v, Ordering::Release);
                }
            }
            field::QUEUE_SIZE if queue_writable => {
                if let Some(q) = self.queues.get_mut(sel) {
                    let size = value as u16;
                    if size != 0 && size <= q.max_size && size.is_power_of_two() {
                        q.size = size;
                    } else {
                        debug!(size, max = q.max_size, "ignoring invalid queue size");
                    }
                }
            }
            field::QUEUE_ENABLE if queue_writable => {
                if let Some(q) = self.queues.get_mut(sel) {
                    if value == 1 {
                        q.enabled = true;
                    }
                }
            }
            field::QUEUE_DESC if queue_writable => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.desc = value;
                }
            }
            field::QUEUE_DRIVER if queue_writable => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.driver = value;
                }
            }
            field::QUEUE_DEVICE if queue_writable => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.device = value;
                }
            }
            // Read-only fields, and queue fields after DRIVER_OK.
            _ => {}
        }
    }

    fn valid_vector(&self, v: u16) -> u16 {
        if usize::from(v) < lock(&self.msix).count() {
            v
        } else {
            NO_VECTOR
        }
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            debug!(device = self.device.name(), "driver reset");
            self.reset();
            return;
        }
        let old = self.status();
        let mut new = value | (old & status::DEVICE_NEEDS_RESET);
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            let offered = self.device.features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & features::VERSION_1 != 0;
            if !ok {
                warn!(
                    device = self.device.name(),
                    offered = format_args!("{offered:#x}"),
                    accepted = format_args!("{:#x}", self.driver_features),
                    "driver accepted features the device does not offer (or not VERSION_1)"
                );
                new &= !status::FEATURES_OK;
            }
        }
        self.shared.status.store(new, Ordering::Release);
        let wants_run = new & status::DRIVER_OK != 0 && new & status::FEATURES_OK != 0;
        if wants_run && !self.active && new & status::DEVICE_NEEDS_RESET == 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let positions = vec![(0, 0); self.queues.len()];
        if let Err(e) = self.start(&positions, false) {
            warn!(device = self.device.name(), error = %e, "virtio device activation failed");
            self.fail_activation();
        }
    }

    /// Hands the enabled queues to the device, each starting at
    /// `positions[i]` = (`next_avail`, `next_used`) — zero for a driver's
    /// activation, the saved ones for a restore — and marks the transport
    /// active. With `paused`, the device processes nothing until
    /// [`VirtioPciDevice::resume`].
    pub(super) fn start(
        &mut self,
        positions: &[(u16, u16)],
        paused: bool,
    ) -> Result<(), ActivateError> {
        let name = self.device.name();
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        let mut queues = Vec::new();
        for (i, regs) in self.queues.iter().enumerate() {
            if !regs.enabled {
                continue;
            }
            let invalid = ActivateError::QueueInvalid {
                device: name,
                queue: i as u16,
            };
            let Ok(mut queue) = Queue::new(regs.max_size) else {
                continue;
            };
            queue.set_size(regs.size);
            // The try_ setters refuse misaligned rings (the plain setters
            // would keep the default address 0 and use that instead).
            let aligned = queue
                .try_set_desc_table_address(GuestAddress(regs.desc))
                .and_then(|()| queue.try_set_avail_ring_address(GuestAddress(regs.driver)))
                .and_then(|()| queue.try_set_used_ring_address(GuestAddress(regs.device)))
                .is_ok();
            queue.set_event_idx(event_idx);
            queue.set_ready(true);
            let (next_avail, next_used) = positions.get(i).copied().unwrap_or((0, 0));
            queue.set_next_avail(next_avail);
            queue.set_next_used(next_used);
            if !aligned || !queue.is_valid(&self.mem) {
                warn!(
                    device = name,
                    queue = i,
                    desc = format_args!("{:#x}", regs.desc),
                    "queue rings are not in guest memory or misaligned"
                );
                return Err(invalid);
            }
            let notify = self.notify[i]
                .try_clone()
                .map_err(|source| ActivateError::Worker {
                    device: name,
                    source,
                })?;
            let position = Arc::new(QueuePosition::new(next_avail, next_used));
            self.positions[i] = position.clone();
            queues.push(ActiveQueue {
                index: i as u16,
                queue,
                notify,
                position,
            });
        }
        let interrupt = Arc::new(TransportInterrupt {
            shared: self.shared.clone(),
            msix: self.msix.clone(),
        });
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            acked_features: self.driver_features,
            interrupt,
            paused,
        };
        self.device.activate(activation)?;
        self.active = true;
        info!(
            device = name,
            features = format_args!("{:#x}", self.driver_features),
            paused,
            "virtio device activated"
        );
        Ok(())
    }

    fn fail_activation(&mut self) {
        TransportInterrupt {
            shared: self.shared.clone(),
            msix: self.msix.clone(),
        }
        .set_needs_reset();
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfigSpace {
        &mut self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let before = self.config.bar_addr(0);
        self.config.write(offset, data);
        let ctrl_off = self.msix_cap + 2;
        if self.msix_cap != 0 && offset < ctrl_off + 2 && ctrl_off < offset + data.len() {
            let control = self.config.u16_at(ctrl_off);
            lock(&self.msix).set_control(control);
        }
        let bar = offset < BAR0_OFFSET + 4 && BAR0_OFFSET < offset + data.len();
        let after = self.config.bar_addr(0);
        if bar && after != before && after.map(u64::from) != Some(self.bar_addr) {
            let probing = after == Some(!(BAR_SIZE as u32 - 1));
            if !probing {
                warn!(
                    device = self.device.name(),
                    from = format_args!("{:#x}", self.bar_addr),
                    to = format_args!("{:#x}", after.unwrap_or(0)),
                    "guest moved BAR0; relocation is not supported, the device stays put"
                );
            }
        }
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => self.read_common(o - COMMON_OFFSET, data),
            o if (ISR_OFFSET..ISR_OFFSET + ISR_SIZE).contains(&o) => {
                data.fill(0);
                if o == ISR_OFFSET {
                    if let Some(b) = data.first_mut() {
                        // Reading the ISR acknowledges it.
                        *b = self.shared.isr.swap(0, Ordering::SeqCst);
                    }
                }
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_SIZE).contains(&o) => {
                self.device.read_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                lock(&self.msix).read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o if (MSIX_PBA_OFFSET..BAR_SIZE).contains(&o) => {
                lock(&self.msix).read_pba(o - MSIX_PBA_OFFSET, data)
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => self.write_common(o - COMMON_OFFSET, data),
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_SIZE).contains(&o) => {
                self.device.write_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + NOTIFY_SIZE).contains(&o) => {
                // Reached only when no ioeventfd is registered (or the access
                // was not the registered one): forward to the queue's eventfd.
                let q = (o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER);
                if let Some(e) = usize::try_from(q).ok().and_then(|q| self.notify.get(q)) {
                    let _ = e.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                lock(&self.msix).write_table(o - MSIX_TABLE_OFFSET, data)
            }
            _ => {}
        }
    }
}

/// The guest-physical notify address of `queue` for a BAR0 at `bar`.
pub fn notify_address(bar: u64, queue: u16) -> GuestAddress {
    GuestAddress(bar + NOTIFY_OFFSET + u64::from(queue) * u64::from(NOTIFY_MULTIPLIER))
}
