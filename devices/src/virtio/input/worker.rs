//! The virtio-input worker: writes pending events into event-queue buffers
//! and returns status-queue buffers unread.
//!
//! Each pending event takes one event-queue chain: device-writable only,
//! with room for [`EVENT_SIZE`] bytes (gathered across its segments). A
//! malformed chain (a readable descriptor, too short, outside guest memory,
//! a broken link) is completed with length 0 and the event waits for the
//! next chain. When the driver has no buffers, events stay pending and the
//! worker sleeps until the event queue is notified (or more events come).
//! One interrupt per batch, as the driver's event suppression allows.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_queue::{Error as QueueError, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{Shared, EVENT_QUEUE, EVENT_SIZE, MAX_SEGMENTS, STATUS_QUEUE};
use crate::virtio::chain::{self, ChainLayout};
use crate::virtio::worker::{EventLoop, STOP_TOKEN};
use crate::virtio::{ActiveQueue, GuestMemory, Interrupt, QueuePosition};

const EVENT_TOKEN: u64 = 0;
const STATUS_TOKEN: u64 = 1;
const WAKE_TOKEN: u64 = 2;

/// Everything the worker thread owns.
pub(super) struct InputWorker {
    mem: GuestMemory,
    eventq: Queue,
    event_notify: EventFd,
    event_position: Arc<QueuePosition>,
    statusq: Queue,
    status_notify: EventFd,
    status_position: Arc<QueuePosition>,
    wake: EventFd,
    shared: Arc<Shared>,
    interrupt: Arc<dyn Interrupt>,
    layout: ChainLayout,
    broken: bool,
}

impl InputWorker {
    pub(super) fn new(
        mem: GuestMemory,
        eventq: ActiveQueue,
        statusq: ActiveQueue,
        wake: EventFd,
        shared: Arc<Shared>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Self {
        Self {
            mem,
            eventq: eventq.queue,
            event_notify: eventq.notify,
            event_position: eventq.position,
            statusq: statusq.queue,
            status_notify: statusq.notify,
            status_position: statusq.position,
            wake,
            shared,
            interrupt,
            layout: ChainLayout::default(),
            broken: false,
        }
    }

    pub(super) fn run(mut self, mut ev: EventLoop) {
        let setup = ev
            .add(self.event_notify.as_raw_fd(), EVENT_TOKEN, EventSet::IN)
            .and_then(|()| ev.add(self.status_notify.as_raw_fd(), STATUS_TOKEN, EventSet::IN))
            .and_then(|()| ev.add(self.wake.as_raw_fd(), WAKE_TOKEN, EventSet::IN));
        if let Err(e) = setup {
            warn!(error = %e, "virtio-input: cannot set up the event loop");
            self.interrupt.set_needs_reset();
            return;
        }
        // Nothing before the first wait: `activate` signalled all three
        // eventfds (a worker started paused parks there first).
        let mut tokens = Vec::new();
        loop {
            // A request boundary: every chain taken was used.
            self.event_position.publish(&self.eventq);
            self.status_position.publish(&self.statusq);
            if let Err(e) = ev.wait(&mut tokens) {
                warn!(error = %e, "virtio-input: epoll failed");
                return;
            }
            for &t in &tokens {
                if t == STOP_TOKEN {
                    return;
                }
                if !self.broken {
                    self.step(t);
                }
            }
        }
    }

    fn step(&mut self, token: u64) {
        let result = match token {
            EVENT_TOKEN => {
                let _ = self.event_notify.read();
                self.deliver()
            }
            WAKE_TOKEN => {
                let _ = self.wake.read();
                self.deliver()
            }
            STATUS_TOKEN => {
                let _ = self.status_notify.read();
                self.drain_status()
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            warn!(error = %e, "virtio-input: queue is corrupt; device needs reset");
            self.broken = true;
            self.interrupt.set_needs_reset();
        }
    }

    /// Whether the chain in `self.layout` can hold one event.
    fn usable(&self) -> bool {
        self.layout.readable.is_empty() && chain::total(&self.layout.writable) >= EVENT_SIZE as u64
    }

    /// Moves pending events into event-queue buffers while both last.
    fn deliver(&mut self) -> Result<(), QueueError> {
        let mut used = false;
        let counters = self.shared.counters.clone();
        loop {
            // Only this thread removes events, so the front stays put until
            // it is popped below.
            let Some(event) = self.shared.lock().events.front().copied() else {
                break;
            };
            let Some(chain) = self.eventq.iter(&self.mem)?.next() else {
                // No buffers: the event waits; ask for a notification when
                // the driver posts some (and look again, in case it just did).
                if self.eventq.enable_notification(&self.mem)? {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let parsed = self.layout.parse(chain, &self.mem, MAX_SEGMENTS).is_ok();
            let written = parsed
                && self.usable()
                && chain::write_bytes(&self.mem, &self.layout.writable, 0, &event.to_bytes());
            if written {
                self.shared.lock().events.pop_front();
                self.eventq.add_used(&self.mem, head, EVENT_SIZE as u32)?;
                counters.events.fetch_add(1, Ordering::Relaxed);
            } else {
                debug!(head, "virtio-input: malformed event buffer");
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                self.eventq.add_used(&self.mem, head, 0)?;
            }
            used = true;
        }
        if used && self.eventq.needs_notification(&self.mem)? {
            counters.interrupts.fetch_add(1, Ordering::Relaxed);
            self.interrupt.signal_used(EVENT_QUEUE);
        }
        Ok(())
    }

    /// Returns every status-queue buffer unread (a tablet has no LEDs).
    fn drain_status(&mut self) -> Result<(), QueueError> {
        let mut used = false;
        loop {
            self.statusq.disable_notification(&self.mem)?;
            while let Some(chain) = self.statusq.iter(&self.mem)?.next() {
                let head = chain.head_index();
                self.statusq.add_used(&self.mem, head, 0)?;
                self.shared
                    .counters
                    .status_buffers
                    .fetch_add(1, Ordering::Relaxed);
                used = true;
            }
            if !self.statusq.enable_notification(&self.mem)? {
                break;
            }
        }
        if used && self.statusq.needs_notification(&self.mem)? {
            self.shared
                .counters
                .interrupts
                .fetch_add(1, Ordering::Relaxed);
            self.interrupt.signal_used(STATUS_QUEUE);
        }
        Ok(())
    }
}
