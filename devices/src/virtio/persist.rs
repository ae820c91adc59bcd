//! Saved state of a virtio-pci device: the transport's registers, its
//! queues, MSI-X, PCI configuration space and the device model's own state.
//!
//! # When to save
//!
//! [`VirtioPciDevice::save`] is called only while the device is quiesced
//! ([`VirtioPciDevice::pause`] returned) or was never activated: a running
//! worker would move the queues on under it.
//!
//! # Queue positions
//!
//! The worker thread owns the `virtio_queue::Queue`s. Before each
//! `EventLoop::wait` — its request boundary, where a pause parks it — it
//! publishes each queue's `next_avail` / `next_used` into a
//! [`QueuePosition`] shared with the transport, which `save` reads. Guest
//! memory (which the guest could scribble on) is not consulted.
//!
//! The invariant at that boundary: **every chain the worker took from the
//! avail ring has been returned to the used ring, or un-popped (virtio-net's
//! receive path gives a chain back with `go_to_previous_position` when the
//! tap has no frame), so `next_avail == next_used`** for every queue of
//! virtio-blk and virtio-net. [`VirtioPciDevice::restore`] checks it (state
//! breaking it would lose requests in flight, so it is refused as invalid)
//! and restarts each queue at the saved positions, with `EVENT_IDX` as the
//! driver negotiated it.
//!
//! # Restore
//!
//! `restore` applies saved state onto a freshly built device of the same
//! configuration and guest memory. It validates everything first (device
//! type, offered features, queue count and maximum sizes, queue sizes,
//! vector numbers, MSI-X table size, configuration space length, ring
//! addresses, the device model's state), so a refused state leaves the
//! device as it was built. It then writes the registers, restores the MSI-X
//! table, pending bits and enables and re-programs the MSI routes through
//! `MsiVectors::set_route` exactly as the guest's writes would have,
//! restores configuration space, and, if the driver had set `DRIVER_OK` and
//! `FEATURES_OK` (and the device did not need a reset), activates the device
//! — paused if asked, in which case it processes nothing until one
//! [`VirtioPciDevice::resume`].

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::msix::Entry;
use super::pci_transport::{lock, QueueRegs, BAR_SIZE, NO_VECTOR};
use super::{status, QueuePosition, VirtioPciDevice};
use crate::pci::config::BAR0_OFFSET;
use crate::pci::persist::PciConfigSpaceState;
use crate::persist::PersistError;

pub use super::block::persist::BlockState;
pub use super::input::persist::InputState;
pub use super::net::persist::NetState;

/// The device model's own state, by model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioDeviceState {
    /// A virtio-blk device.
    Block(BlockState),
    /// A virtio-net device.
    Net(NetState),
    /// A virtio-input device.
    Input(InputState),
}

impl VirtioDeviceState {
    /// The model's name, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Block(_) => "virtio-blk",
            Self::Net(_) => "virtio-net",
            Self::Input(_) => "virtio-input",
        }
    }
}

/// One queue's registers and position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// The device's maximum size for this queue (checked on restore).
    pub max_size: u16,
    /// The size the driver chose (a power of two, at most `max_size`).
    pub size: u16,
    /// Whether the driver enabled the queue.
    pub enabled: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Driver (avail) ring address.
    pub driver: u64,
    /// Device (used) ring address.
    pub device: u64,
    /// MSI-X vector, or `0xffff` for none.
    pub msix_vector: u16,
    /// Next avail ring index the device will take.
    pub next_avail: u16,
    /// Next used ring index the device will write.
    pub next_used: u16,
}

/// One MSI-X table entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixEntryState {
    /// Message address, low 32 bits.
    pub addr_lo: u32,
    /// Message address, high 32 bits.
    pub addr_hi: u32,
    /// Message data.
    pub data: u32,
    /// Vector control (bit 0: masked).
    pub control: u32,
}

/// The MSI-X table, pending bits and enables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixTableState {
    /// One entry per vector.
    pub entries: Vec<MsixEntryState>,
    /// One pending bit per vector.
    pub pending: Vec<bool>,
    /// MSI-X enable.
    pub enabled: bool,
    /// Function mask.
    pub function_masked: bool,
}

/// A virtio-pci device's saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioPciState {
    /// The virtio device type (checked on restore).
    pub device_type: u16,
    /// Features the device offered (checked on restore).
    pub offered_features: u64,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// `device_feature_select`.
    pub device_feature_select: u32,
    /// `driver_feature_select`.
    pub driver_feature_select: u32,
    /// `queue_select`.
    pub queue_select: u16,
    /// Device status.
    pub status: u8,
    /// Unacknowledged ISR bits.
    pub isr: u8,
    /// Configuration-change MSI-X vector, or `0xffff`.
    pub config_vector: u16,
    /// Every queue of the device, in index order.
    pub queues: Vec<QueueState>,
    /// The PCI configuration space bytes.
    pub config_space: PciConfigSpaceState,
    /// MSI-X.
    pub msix: MsixTableState,
    /// The device model's own state.
    pub device: VirtioDeviceState,
}

impl VirtioPciDevice {
    /// The device's state. Call only while paused or never activated (see
    /// the module docs).
    pub fn save(&self) -> VirtioPciState {
        let msix = {
            let m = lock(&self.msix);
            MsixTableState {
                entries: m
                    .entries
                    .iter()
                    .map(|e| MsixEntryState {
                        addr_lo: e.addr_lo,
                        addr_hi: e.addr_hi,
                        data: e.data,
                        control: e.control,
                    })
                    .collect(),
                pending: m.pending.clone(),
                enabled: m.enabled,
                function_masked: m.function_masked,
            }
        };
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (next_avail, next_used) = if self.active && q.enabled {
                    self.positions.get(i).map_or((0, 0), |p| p.get())
                } else {
                    (0, 0)
                };
                if next_avail != next_used {
                    warn!(
                        device = self.device.name(),
                        queue = i,
                        next_avail,
                        next_used,
                        "saving a queue with requests in flight (was the device paused?)"
                    );
                }
                QueueState {
                    max_size: q.max_size,
                    size: q.size,
                    enabled: q.enabled,
                    desc: q.desc,
                    driver: q.driver,
                    device: q.device,
                    msix_vector: self
                        .shared
                        .queue_vectors
                        .get(i)
                        .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire)),
                    next_avail,
                    next_used,
                }
            })
            .collect();
        VirtioPciState {
            device_type: self.device.device_type(),
            offered_features: self.device.features(),
            driver_features: self.driver_features,
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            queue_select: self.queue_select,
            status: self.shared.status.load(Ordering::Acquire),
            isr: self.shared.isr.load(Ordering::Acquire),
            config_vector: self.shared.config_vector.load(Ordering::Acquire),
            queues,
            config_space: self.config.save(),
            msix,
            device: self.device.save_state(),
        }
    }

    /// Whether the saved status asks for a running device.
    fn runs(state: &VirtioPciState) -> bool {
        let s = state.status;
        s & status::DRIVER_OK != 0
            && s & status::FEATURES_OK != 0
            && s & status::DEVICE_NEEDS_RESET == 0
    }

    /// Everything `restore` checks before changing anything.
    fn validate(&self, state: &VirtioPciState) -> Result<(), PersistError> {
        let name = self.device.name();
        let here_type = self.device.device_type();
        if state.device_type != here_type {
            return Err(PersistError::mismatch(
                name,
                "device type",
                state.device_type,
                here_type,
            ));
        }
        let offered = self.device.features();
        if state.offered_features != offered {
            return Err(PersistError::mismatch(
                name,
                "offered features",
                format_args!("{:#x}", state.offered_features),
                format_args!("{offered:#x}"),
            ));
        }
        if state.driver_features & !offered != 0 {
            return Err(PersistError::invalid(
                name,
                format!(
                    "driver features {:#x} include some not offered ({offered:#x})",
                    state.driver_features
                ),
            ));
        }
        if state.status & status::FEATURES_OK != 0
            && state.driver_features & super::features::VERSION_1 == 0
        {
            return Err(PersistError::invalid(
                name,
                "FEATURES_OK without VERSION_1 accepted",
            ));
        }
        if state.queues.len() != self.queues.len() {
            return Err(PersistError::mismatch(
                name,
                "queue count",
                state.queues.len(),
                self.queues.len(),
            ));
        }
        let vectors = lock(&self.msix).count();
        let vector_ok = |v: u16| v == NO_VECTOR || usize::from(v) < vectors;
        if !vector_ok(state.config_vector) {
            return Err(PersistError::invalid(
                name,
                format!(
                    "configuration vector {} (the device has {vectors} vectors)",
                    state.config_vector
                ),
            ));
        }
        let runs = Self::runs(state);
        for (i, (q, here)) in state.queues.iter().zip(&self.queues).enumerate() {
            if q.max_size != here.max_size {
                return Err(PersistError::mismatch(
                    name,
                    "queue maximum size",
                    format_args!("{} (queue {i})", q.max_size),
                    here.max_size,
                ));
            }
            if q.size == 0 || !q.size.is_power_of_two() || q.size > here.max_size {
                return Err(PersistError::invalid(
                    name,
                    format!(
                        "queue {i} size {} is not a power of two up to {}",
                        q.size, here.max_size
                    ),
                ));
            }
            if !vector_ok(q.msix_vector) {
                return Err(PersistError::invalid(
                    name,
                    format!(
                        "queue {i} vector {} (the device has {vectors} vectors)",
                        q.msix_vector
                    ),
                ));
            }
            if q.next_avail != q.next_used {
                return Err(PersistError::invalid(
                    name,
                    format!(
                        "queue {i} was saved with requests in flight (next_avail {}, next_used {})",
                        q.next_avail, q.next_used
                    ),
                ));
            }
            if runs && q.enabled {
                self.check_rings(i, q)?;
            }
        }
        let m = &state.msix;
        if m.entries.len() != vectors || m.pending.len() != vectors {
            return Err(PersistError::mismatch(
                name,
                "MSI-X vector count",
                format_args!(
                    "{} entries, {} pending bits",
                    m.entries.len(),
                    m.pending.len()
                ),
                format_args!("{vectors} vectors"),
            ));
        }
        self.config.check(name, &state.config_space)?;
        self.check_config_consistency(state)?;
        Ok(())
    }

    /// Checks the writable configuration bytes the transport acts on: BAR0
    /// is where this device was placed (or mid size-probe), and the MSI-X
    /// enable and function mask there agree with the saved MSI-X state.
    fn check_config_consistency(&self, state: &VirtioPciState) -> Result<(), PersistError> {
        let name = self.device.name();
        let bytes = &state.config_space.bytes;
        let u32_at = |off: usize| {
            bytes
                .get(off..off + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_le_bytes)
        };
        let bar = u32_at(BAR0_OFFSET) & !0xf;
        let probing = bar == !(BAR_SIZE as u32 - 1);
        if u64::from(bar) != self.bar_addr() && !probing {
            return Err(PersistError::mismatch(
                name,
                "BAR0 address",
                format_args!("{bar:#x}"),
                format_args!("{:#x}", self.bar_addr()),
            ));
        }
        let ctrl_off = self.msix_cap + 2;
        let control = u32_at(ctrl_off) as u16;
        let (enabled, masked) = (control & 0x8000 != 0, control & 0x4000 != 0);
        if (enabled, masked) != (state.msix.enabled, state.msix.function_masked) {
            return Err(PersistError::invalid(
                name,
                format!(
                    "MSI-X control {control:#06x} in configuration space disagrees with the \
                     saved enable ({}) and function mask ({})",
                    state.msix.enabled, state.msix.function_masked
                ),
            ));
        }
        Ok(())
    }

    /// Checks that queue `i`'s rings lie, aligned, in guest memory.
    fn check_rings(&self, i: usize, q: &QueueState) -> Result<(), PersistError> {
        use virtio_queue::{Queue, QueueT};
        use vm_memory::GuestAddress;
        let name = self.device.name();
        let bad = |what: &str| {
            PersistError::invalid(
                name,
                format!(
                    "queue {i} rings (desc {:#x}, driver {:#x}, device {:#x}): {what}",
                    q.desc, q.driver, q.device
                ),
            )
        };
        let mut queue = Queue::new(q.max_size).map_err(|e| bad(&e.to_string()))?;
        queue.set_size(q.size);
        queue
            .try_set_desc_table_address(GuestAddress(q.desc))
            .and_then(|()| queue.try_set_avail_ring_address(GuestAddress(q.driver)))
            .and_then(|()| queue.try_set_used_ring_address(GuestAddress(q.device)))
            .map_err(|e| bad(&e.to_string()))?;
        queue.set_ready(true);
        if !queue.is_valid(&self.mem) {
            return Err(bad("not in guest memory"));
        }
        Ok(())
    }

    /// Writes the registers, MSI-X and configuration space of `state`
    /// (already validated); activates nothing.
    fn apply(&mut self, state: &VirtioPciState) {
        self.driver_features = state.driver_features;
        self.device_feature_select = state.device_feature_select;
        self.driver_feature_select = state.driver_feature_select;
        self.queue_select = state.queue_select;
        let sh = &self.shared;
        sh.status.store(state.status, Ordering::Release);
        sh.isr.store(state.isr, Ordering::Release);
        sh.config_vector
            .store(state.config_vector, Ordering::Release);
        for (i, q) in state.queues.iter().enumerate() {
            if let Some(v) = sh.queue_vectors.get(i) {
                v.store(q.msix_vector, Ordering::Release);
            }
            if let Some(regs) = self.queues.get_mut(i) {
                *regs = QueueRegs {
                    max_size: regs.max_size,
                    size: q.size,
                    enabled: q.enabled,
                    desc: q.desc,
                    driver: q.driver,
                    device: q.device,
                };
            }
            if let Some(p) = self.positions.get_mut(i) {
                *p = std::sync::Arc::new(QueuePosition::new(q.next_avail, q.next_used));
            }
        }
        if let Err(e) = self.config.restore(self.device.name(), &state.config_space) {
            // Validated before: cannot happen.
            warn!(error = %e, "configuration space not restored");
        }
        let mut m = lock(&self.msix);
        for (e, s) in m.entries.iter_mut().zip(&state.msix.entries) {
            *e = Entry {
                addr_lo: s.addr_lo,
                addr_hi: s.addr_hi,
                data: s.data,
                control: s.control,
            };
        }
        for (p, s) in m.pending.iter_mut().zip(&state.msix.pending) {
            *p = *s;
        }
        m.enabled = state.msix.enabled;
        m.function_masked = state.msix.function_masked;
        // As after the guest's table and control writes: route what the
        // guest can receive, deliver what is pending and now deliverable.
        m.sync();
    }

    /// Applies `state` onto this freshly built device (same configuration,
    /// same guest memory, same backend). See the module docs for what is
    /// checked; on error the device is left as it was. With `paused`, a
    /// device that was running is restarted paused and processes nothing
    /// until one [`VirtioPciDevice::resume`].
    pub fn restore(&mut self, state: &VirtioPciState, paused: bool) -> Result<(), PersistError> {
        let name = self.device.name();
        if self.active {
            return Err(PersistError::invalid(
                name,
                "restore onto a device the driver already started",
            ));
        }
        self.validate(state)?;
        let before = self.save();
        self.device.restore_state(&state.device)?;
        self.apply(state);
        if Self::runs(state) {
            let positions: Vec<(u16, u16)> = state
                .queues
                .iter()
                .map(|q| (q.next_avail, q.next_used))
                .collect();
            if let Err(e) = self.start(&positions, paused) {
                // Put back the state the device was built with.
                if let Err(undo) = self.device.restore_state(&before.device) {
                    warn!(error = %undo, "cannot undo the device model's restore");
                }
                self.apply(&before);
                return Err(e.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::json_round_trip as json;

    #[test]
    fn transport_state_round_trips() {
        let state = VirtioPciState {
            device_type: 2,
            offered_features: 1 << 32 | 1 << 29,
            driver_features: 1 << 32,
            device_feature_select: 1,
            driver_feature_select: 0,
            queue_select: 0,
            status: 0x0f,
            isr: 1,
            config_vector: 0,
            queues: vec![QueueState {
                max_size: 256,
                size: 128,
                enabled: true,
                desc: 0x1_0000,
                driver: 0x1_1000,
                device: 0x1_2000,
                msix_vector: 1,
                next_avail: 7,
                next_used: 7,
            }],
            config_space: PciConfigSpaceState {
                bytes: vec![0xab; crate::pci::config::CONFIG_SPACE_SIZE],
            },
            msix: MsixTableState {
                entries: vec![
                    MsixEntryState {
                        addr_lo: 0xfee0_0000,
                        addr_hi: 0,
                        data: 0x41,
                        control: 0,
                    };
                    2
                ],
                pending: vec![false, true],
                enabled: true,
                function_masked: false,
            },
            device: VirtioDeviceState::Block(BlockState {
                capacity_sectors: 2048,
                read_only: false,
                format: Some(vireo_block::Format::Qcow2),
            }),
        };
        assert_eq!(json(&state), state);
        let net = VirtioDeviceState::Net(NetState {
            mac: [2, 0, 0, 0, 0, 1],
            link_status: 1,
            max_virtqueue_pairs: 1,
        });
        assert_eq!(json(&net), net);
        assert_eq!(net.kind(), "virtio-net");
        let input = VirtioDeviceState::Input(InputState::default());
        assert_eq!(json(&input), input);
        assert_eq!(input.kind(), "virtio-input");
    }
}
