//! virtio-input (virtio 1.2 §5.8) as an absolute tablet: the pointer of a
//! VNC viewer, with left, middle and right buttons.
//!
//! ```text
//!  VNC threads ── TabletHandle::pointer ──► pending events (bounded) ──wake eventfd──┐
//!                                                                                    ▼
//!  guest eventq buffers ◄── 8-byte virtio_input_event each ◄── worker thread (worker.rs)
//!  guest statusq (LEDs…) ──► consumed and ignored ──────────►┘
//! ```
//! Queues: 0 = eventq (the driver posts writable buffers, the device fills
//! each with one event), 1 = statusq (the driver sends events such as LED
//! changes; a tablet has none, so they are returned unread). The
//! configuration space is described in [`config`].
//!
//! # Pending events
//!
//! [`TabletHandle::pointer`] turns one pointer state into one *report*:
//! `ABS_X`, `ABS_Y`, an `EV_KEY` event for each button whose state changed
//! (left, middle, right order), then `SYN_REPORT`. Reports wait in a queue of
//! at most [`MAX_PENDING`] events until the driver supplies buffers. When a
//! report does not fit, the whole report is dropped (never part of one) and
//! counted; the button state it carried is not recorded, so the next report
//! that fits carries those button changes. While the driver has not started
//! the device (before `DRIVER_OK`, or after a reset), reports are dropped
//! and counted too: a driver that starts later begins from a fresh state
//! (no button held), which is what the device assumes after a reset. The
//! handle never blocks: it takes a short, uncontended lock and writes an
//! eventfd.

pub mod config;
pub mod persist;
mod worker;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::config::codes::{ABS_X, ABS_Y, EV_ABS, EV_KEY, EV_SYN, SYN_REPORT};
use self::config::{ABS_MAX, BUTTONS};
use super::worker::Worker;
use super::{features, ActivateError, Activation, VirtioDevice};

/// Device type of an input device (`VIRTIO_ID_INPUT`).
pub const TYPE_INPUT: u16 = virtio_bindings::virtio_ids::VIRTIO_ID_INPUT as u16;
/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 64;
/// Event queue index (device → driver).
pub const EVENT_QUEUE: u16 = 0;
/// Status queue index (driver → device).
pub const STATUS_QUEUE: u16 = 1;
/// Most events waiting for guest buffers.
pub const MAX_PENDING: usize = 4096;
/// Bytes of one `virtio_input_event`.
pub const EVENT_SIZE: usize = 8;
/// Most descriptors accepted in one chain.
pub const MAX_SEGMENTS: usize = 16;

/// One `virtio_input_event`: `le16 type, le16 code, le32 value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputEvent {
    /// Event type (`EV_*`).
    pub kind: u16,
    /// Event code.
    pub code: u16,
    /// Value.
    pub value: u32,
}

impl InputEvent {
    /// Its little-endian wire format.
    pub fn to_bytes(self) -> [u8; EVENT_SIZE] {
        let mut b = [0u8; EVENT_SIZE];
        b[0..2].copy_from_slice(&self.kind.to_le_bytes());
        b[2..4].copy_from_slice(&self.code.to_le_bytes());
        b[4..8].copy_from_slice(&self.value.to_le_bytes());
        b
    }

    /// Decodes the wire format.
    pub fn from_bytes(b: [u8; EVENT_SIZE]) -> Self {
        Self {
            kind: u16::from_le_bytes([b[0], b[1]]),
            code: u16::from_le_bytes([b[2], b[3]]),
            value: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// Whether this event ends a report.
    pub fn is_syn_report(self) -> bool {
        self.kind == EV_SYN && self.code == SYN_REPORT
    }
}

/// Maps pixel `pos` of a screen side of `extent` pixels onto `0..=`[`ABS_MAX`]
/// (first pixel 0, last pixel `ABS_MAX`; positions past the edge clamp to it).
pub fn to_abs(pos: u16, extent: u16) -> u32 {
    if extent <= 1 {
        return 0;
    }
    let last = u32::from(extent) - 1;
    u32::from(pos).min(last) * ABS_MAX / last
}

/// Per-device counters.
#[derive(Debug, Default)]
pub struct InputCounters {
    /// Events written into guest buffers.
    pub events: AtomicU64,
    /// Reports queued by the handle.
    pub reports: AtomicU64,
    /// Reports dropped because the pending queue was full.
    pub dropped_full: AtomicU64,
    /// Reports dropped because the driver had not started the device.
    pub dropped_inactive: AtomicU64,
    /// Event-queue chains refused as malformed (completed with length 0).
    pub malformed: AtomicU64,
    /// Status-queue buffers consumed.
    pub status_buffers: AtomicU64,
    /// Interrupts sent to the driver.
    pub interrupts: AtomicU64,
}

impl InputCounters {
    /// A snapshot as (name, value) pairs.
    pub fn snapshot(&self) -> [(&'static str, u64); 7] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("events", g(&self.events)),
            ("reports", g(&self.reports)),
            ("dropped_full", g(&self.dropped_full)),
            ("dropped_inactive", g(&self.dropped_inactive)),
            ("malformed", g(&self.malformed)),
            ("status_buffers", g(&self.status_buffers)),
            ("interrupts", g(&self.interrupts)),
        ]
    }
}

/// What the handle and the worker share.
#[derive(Debug, Default)]
struct Pending {
    /// Events waiting for guest buffers: whole reports only.
    events: VecDeque<InputEvent>,
    /// Buttons as the queued events leave them (RFB mask bits).
    buttons: u8,
    /// The driver started the device.
    active: bool,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    /// Written when events are queued; the worker watches it.
    wake: EventFd,
    counters: Arc<InputCounters>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Injects pointer events into a [`VirtioInput`] tablet from any thread.
#[derive(Clone, Debug)]
pub struct TabletHandle {
    shared: Arc<Shared>,
}

impl TabletHandle {
    /// The pointer is at (`x_abs`, `y_abs`) (each `0..=`[`ABS_MAX`], larger
    /// values clamp; see [`to_abs`]) with `buttons` held (bit 0 left, bit 1
    /// middle, bit 2 right, as RFB; other bits ignored). Queues one report
    /// (see the module docs) and wakes the device; never blocks. Dropped
    /// (and counted) when the queue is full or the driver has not started
    /// the device.
    pub fn pointer(&self, x_abs: u32, y_abs: u32, buttons: u8) {
        let c = &self.shared.counters;
        let buttons = buttons & 0b111;
        let mut report = [InputEvent {
            kind: EV_SYN,
            code: SYN_REPORT,
            value: 0,
        }; 6];
        let mut n = 0;
        let mut push = |kind, code, value| {
            report[n] = InputEvent { kind, code, value };
            n += 1;
        };
        {
            let mut p = self.shared.lock();
            if !p.active {
                c.dropped_inactive.fetch_add(1, Ordering::Relaxed);
                return;
            }
            push(EV_ABS, ABS_X, x_abs.min(ABS_MAX));
            push(EV_ABS, ABS_Y, y_abs.min(ABS_MAX));
            let changed = p.buttons ^ buttons;
            for (bit, &code) in BUTTONS.iter().enumerate() {
                if changed & (1 << bit) != 0 {
                    push(EV_KEY, code, u32::from(buttons >> bit & 1));
                }
            }
            push(EV_SYN, SYN_REPORT, 0);
            if p.events.len() + n > MAX_PENDING {
                c.dropped_full.fetch_add(1, Ordering::Relaxed);
                return;
            }
            p.events.extend(&report[..n]);
            p.buttons = buttons;
        }
        c.reports.fetch_add(1, Ordering::Relaxed);
        // EAGAIN only when the counter is about to overflow: the worker is
        // awake then anyway.
        let _ = self.shared.wake.write(1);
    }

    /// Events waiting for guest buffers.
    pub fn pending(&self) -> usize {
        self.shared.lock().events.len()
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<InputCounters> {
        self.shared.counters.clone()
    }
}

/// A virtio-input tablet.
#[derive(Debug)]
pub struct VirtioInput {
    shared: Arc<Shared>,
    select: u8,
    subsel: u8,
    worker: Option<Worker>,
    index: usize,
}

impl VirtioInput {
    /// A tablet; `index` names its worker thread. Fails only if an eventfd
    /// cannot be created.
    pub fn new_tablet(index: usize) -> std::io::Result<Self> {
        Ok(Self {
            shared: Arc::new(Shared {
                pending: Mutex::new(Pending::default()),
                wake: EventFd::new(EFD_NONBLOCK)?,
                counters: Arc::new(InputCounters::default()),
            }),
            select: 0,
            subsel: 0,
            worker: None,
            index,
        })
    }

    /// A handle that injects events into this device.
    pub fn handle(&self) -> TabletHandle {
        TabletHandle {
            shared: self.shared.clone(),
        }
    }
}

impl VirtioDevice for VirtioInput {
    fn device_type(&self) -> u16 {
        TYPE_INPUT
    }

    fn name(&self) -> &'static str {
        "virtio-input"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_image(&config::image(self.select, self.subsel), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(config::SELECT_OFFSET) => self.select = b,
                Some(config::SUBSEL_OFFSET) => self.subsel = b,
                _ => {}
            }
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let paused = activation.paused;
        let mut eventq = None;
        let mut statusq = None;
        for q in activation.queues {
            match q.index {
                EVENT_QUEUE => eventq = Some(q),
                STATUS_QUEUE => statusq = Some(q),
                _ => {}
            }
        }
        let missing = |queue| ActivateError::QueueMissing {
            device: "virtio-input",
            queue,
        };
        let eventq = eventq.ok_or(missing(EVENT_QUEUE))?;
        let statusq = statusq.ok_or(missing(STATUS_QUEUE))?;
        let worker_err = |source| ActivateError::Worker {
            device: "virtio-input",
            source,
        };
        // Buffers posted and events queued before the worker existed (or
        // before a snapshot) are handled at its first wait.
        for q in [&eventq, &statusq] {
            q.notify.write(1).map_err(worker_err)?;
        }
        let wake = self.shared.wake.try_clone().map_err(worker_err)?;
        wake.write(1).map_err(worker_err)?;
        let ctx = worker::InputWorker::new(
            activation.mem,
            eventq,
            statusq,
            wake,
            self.shared.clone(),
            activation.interrupt,
        );
        self.shared.lock().active = true;
        let w = Worker::spawn(format!("vireo-input{}", self.index), paused, move |ev| {
            ctx.run(ev)
        });
        match w {
            Ok(w) => {
                self.worker = Some(w);
                Ok(())
            }
            Err(source) => {
                self.shared.lock().active = false;
                Err(worker_err(source))
            }
        }
    }

    fn save_state(&self) -> super::persist::VirtioDeviceState {
        super::persist::VirtioDeviceState::Input(self.save())
    }

    fn restore_state(
        &mut self,
        state: &super::persist::VirtioDeviceState,
    ) -> Result<(), crate::persist::PersistError> {
        match state {
            super::persist::VirtioDeviceState::Input(s) => self.restore(s),
            other => Err(crate::persist::PersistError::mismatch(
                "virtio-input",
                "device model",
                other.kind(),
                "virtio-input",
            )),
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.shared.counters.snapshot().to_vec()
    }

    /// Stops the worker, then forgets pending events and button state: the
    /// driver starts again from nothing held.
    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        let mut p = self.shared.lock();
        p.active = false;
        p.events.clear();
        p.buttons = 0;
    }

    fn worker_mut(&mut self) -> Option<&mut Worker> {
        self.worker.as_mut()
    }
}

impl Drop for VirtioInput {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active_tablet() -> (VirtioInput, TabletHandle) {
        let dev = VirtioInput::new_tablet(0).expect("tablet");
        dev.shared.lock().active = true;
        let h = dev.handle();
        (dev, h)
    }

    fn drain(dev: &VirtioInput) -> Vec<(u16, u16, u32)> {
        dev.shared
            .lock()
            .events
            .drain(..)
            .map(|e| (e.kind, e.code, e.value))
            .collect()
    }

    #[test]
    fn reports_carry_positions_and_only_changed_buttons() {
        let (dev, h) = active_tablet();
        h.pointer(10, 20, 0);
        h.pointer(0x9000, 5, 0b101);
        h.pointer(1, 2, 0b100 | 0xf8);
        assert_eq!(
            drain(&dev),
            vec![
                (EV_ABS, ABS_X, 10),
                (EV_ABS, ABS_Y, 20),
                (EV_SYN, SYN_REPORT, 0),
                (EV_ABS, ABS_X, ABS_MAX),
                (EV_ABS, ABS_Y, 5),
                (EV_KEY, config::codes::BTN_LEFT, 1),
                (EV_KEY, config::codes::BTN_RIGHT, 1),
                (EV_SYN, SYN_REPORT, 0),
                (EV_ABS, ABS_X, 1),
                (EV_ABS, ABS_Y, 2),
                (EV_KEY, config::codes::BTN_LEFT, 0),
                (EV_SYN, SYN_REPORT, 0),
            ]
        );
    }

    #[test]
    fn a_full_queue_drops_whole_reports_and_keeps_button_changes_for_later() {
        let (dev, h) = active_tablet();
        // 3-event reports: 1365 fit in 4096, leaving one free slot.
        for i in 0..1365 {
            h.pointer(i, i, 0);
        }
        assert_eq!(h.pending(), 4095);
        h.pointer(0, 0, 1); // 4 events: dropped
        h.pointer(0, 0, 0); // 3 events: dropped too (whole reports only)
        let c = h.counters();
        assert_eq!(c.dropped_full.load(Ordering::Relaxed), 2);
        assert_eq!(h.pending(), 4095);
        assert!(dev
            .shared
            .lock()
            .events
            .back()
            .is_some_and(|e| e.is_syn_report()));
        drain(&dev);
        h.pointer(0, 0, 1);
        assert_eq!(drain(&dev)[2], (EV_KEY, config::codes::BTN_LEFT, 1));
    }

    #[test]
    fn an_inactive_device_drops_reports() {
        let dev = VirtioInput::new_tablet(0).expect("tablet");
        let h = dev.handle();
        h.pointer(1, 1, 1);
        assert_eq!(h.pending(), 0);
        assert_eq!(h.counters().dropped_inactive.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn to_abs_maps_the_screen_onto_the_axis() {
        assert_eq!(to_abs(0, 1024), 0);
        assert_eq!(to_abs(1023, 1024), ABS_MAX);
        assert_eq!(to_abs(5000, 1024), ABS_MAX);
        assert_eq!(to_abs(512, 1025), ABS_MAX / 2);
        assert_eq!(to_abs(7, 1), 0);
        assert_eq!(to_abs(7, 0), 0);
    }

    #[test]
    fn config_select_and_subsel_are_writable_and_pick_the_answer() {
        let mut dev = VirtioInput::new_tablet(0).expect("tablet");
        dev.write_config(0, &[config::select::ID_NAME, 0]);
        let mut b = [0u8; 24];
        dev.read_config(0, &mut b);
        assert_eq!(b[2], 12);
        assert_eq!(&b[8..20], b"Vireo Tablet");
        // Writes to read-only fields are ignored.
        dev.write_config(2, &[99]);
        dev.read_config(2, &mut b[..1]);
        assert_eq!(b[0], 12);
        dev.write_config(u64::MAX, &[1, 2]);
    }
}
