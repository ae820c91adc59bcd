//! The virtio-blk worker: drains the request queue whenever the driver
//! notifies it, completing requests in order and interrupting once per batch
//! (subject to `EVENT_IDX` suppression).

use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use vireo_block::DiskBackend;
use virtio_queue::{Error as QueueError, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, Limits};
use super::{BlockCounters, SEG_MAX};
use crate::virtio::chain::ChainLayout;
use crate::virtio::worker::{EventLoop, STOP_TOKEN};
use crate::virtio::{ActiveQueue, GuestMemory, Interrupt};

const QUEUE_TOKEN: u64 = 0;
/// How long the worker keeps looking for new requests after the queue ran
/// dry before it sleeps until the next notification (as QEMU's and Linux's
/// adaptive polling do); short enough to cost little CPU on an idle disk.
const POLL_WINDOW: Duration = Duration::from_micros(25);

/// Most requests taken from the ring before their used entries are
/// published together (fewer cache-line hand-overs with a polling driver).
const BATCH: usize = 32;

/// Everything the worker thread owns.
pub(super) struct BlockWorker {
    mem: GuestMemory,
    queue: Queue,
    notify: EventFd,
    interrupt: Arc<dyn Interrupt>,
    counters: Arc<BlockCounters>,
    handler: RequestHandler,
}

/// Executes one chain at a time against the disk (kept apart from the queue
/// so a batch can hold the ring iterator while requests run).
struct RequestHandler {
    disk: Arc<dyn DiskBackend>,
    counters: Arc<BlockCounters>,
    limits: Limits,
    layout: ChainLayout,
}

impl BlockWorker {
    pub(super) fn new(
        disk: Arc<dyn DiskBackend>,
        mem: GuestMemory,
        queue: ActiveQueue,
        interrupt: Arc<dyn Interrupt>,
        counters: Arc<BlockCounters>,
        limits: Limits,
    ) -> Self {
        Self {
            mem,
            queue: queue.queue,
            notify: queue.notify,
            interrupt,
            counters: counters.clone(),
            handler: RequestHandler {
                disk,
                counters,
                limits,
                layout: ChainLayout::default(),
            },
        }
    }

    pub(super) fn run(mut self, mut ev: EventLoop) {
        if let Err(e) = ev.add(self.notify.as_raw_fd(), QUEUE_TOKEN, EventSet::IN) {
            warn!(error = %e, "virtio-blk: cannot watch the queue");
            self.interrupt.set_needs_reset();
            return;
        }
        // The driver may have notified before the worker existed.
        let mut broken = self.process().is_err();
        let mut tokens = Vec::new();
        loop {
            if let Err(e) = ev.wait(&mut tokens) {
                warn!(error = %e, "virtio-blk: epoll failed");
                return;
            }
            for &t in &tokens {
                match t {
                    STOP_TOKEN => return,
                    QUEUE_TOKEN => {
                        let _ = self.notify.read();
                        if !broken {
                            self.counters.wakeups.fetch_add(1, Ordering::Relaxed);
                            broken = self.process().is_err();
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Drains the queue. An error means the ring itself is corrupt: the
    /// device is marked NEEDS_RESET and stops processing until reset.
    fn process(&mut self) -> Result<(), QueueError> {
        let result = self.drain();
        if let Err(e) = &result {
            warn!(error = %e, "virtio-blk: queue is corrupt; device needs reset");
            self.interrupt.set_needs_reset();
        }
        result
    }

    fn drain(&mut self) -> Result<(), QueueError> {
        let mem = self.mem.clone();
        let mut slices = Vec::with_capacity(16);
        loop {
            // No notifications while the worker is busy or polling.
            self.queue.disable_notification(&mem)?;
            let mut completed = false;
            let mut done = [(0u16, 0u32); BATCH];
            loop {
                let mut n = 0;
                for chain in self.queue.iter(&mem)?.take(BATCH) {
                    let head = chain.head_index();
                    done[n] = (head, self.handler.handle(chain, &mem, &mut slices));
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                for &(head, used) in &done[..n] {
                    self.queue.add_used(&mem, head, used)?;
                }
                completed = true;
            }
            if completed && self.queue.needs_notification(&mem)? {
                self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
                self.interrupt.signal_used(0);
            }
            if self.poll_for_work(&mem)? {
                continue;
            }
            // Re-enable notifications; a request that raced in is handled now.
            if !self.queue.enable_notification(&mem)? {
                return Ok(());
            }
        }
    }

    /// Spins for up to [`POLL_WINDOW`] waiting for the driver to post more
    /// requests, so a busy driver need not notify (a notification costs a
    /// VM exit and a thread wake-up). Returns whether work arrived.
    fn poll_for_work(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        let start = Instant::now();
        loop {
            let avail = self.queue.avail_idx(mem, Ordering::Acquire)?;
            if avail != Wrapping(self.queue.next_avail()) {
                return Ok(true);
            }
            if start.elapsed() >= POLL_WINDOW {
                return Ok(false);
            }
            std::hint::spin_loop();
        }
    }
}

impl RequestHandler {
    /// Handles one chain; returns the used length.
    fn handle<'m>(
        &mut self,
        chain: virtio_queue::DescriptorChain<&'m GuestMemory>,
        mem: &'m GuestMemory,
        slices: &mut Vec<vireo_block::GuestSlice<'m>>,
    ) -> u32 {
        let head = chain.head_index();
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let max = SEG_MAX as usize + 2;
        let parsed = self
            .layout
            .parse(chain, mem, max)
            .map_err(request::RequestError::from)
            .and_then(|()| request::parse(&self.layout, mem));
        let outcome = match parsed {
            Ok(req) => request::execute(
                &req,
                &self.layout,
                mem,
                self.disk.as_ref(),
                &self.limits,
                slices,
            ),
            Err(e) => {
                debug!(head, error = %e, "virtio-blk: malformed request");
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                request::finish(&self.layout, mem, request::status::IOERR, 0)
            }
        };
        if outcome.status != request::status::OK {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
        outcome.used_len
    }
}
