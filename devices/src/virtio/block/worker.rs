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
use crate::virtio::chain::{ChainError, ChainLayout};
use crate::virtio::prefetch;
use crate::virtio::worker::{EventLoop, STOP_TOKEN};
use crate::virtio::{ActiveQueue, GuestMemory, Interrupt, QueuePosition};

const QUEUE_TOKEN: u64 = 0;
/// How long the worker keeps looking for new requests after the queue ran
/// dry before it sleeps until the next notification (as QEMU's and Linux's
/// adaptive polling do); short enough to cost little CPU on an idle disk.
const POLL_WINDOW: Duration = Duration::from_micros(25);

/// Most requests taken from the ring at once. A batch is handled in passes:
/// walk every chain (starting the fetch of each request's header line), read
/// every header, do every request's I/O, then write every status and used
/// entry. The guest's cache lines are then fetched in parallel instead of
/// one miss at a time, and the syscalls run back to back with the kernel's
/// read path warm (see the `block` module docs for the measured effect).
const BATCH: usize = 32;

/// Everything the worker thread owns.
pub(super) struct BlockWorker {
    /// Shared so `drain` can hold it while `self` is borrowed mutably
    /// (cloning a `GuestMemoryMmap` allocates).
    mem: Arc<GuestMemory>,
    queue: Queue,
    notify: EventFd,
    position: Arc<QueuePosition>,
    interrupt: Arc<dyn Interrupt>,
    counters: Arc<BlockCounters>,
    handler: RequestHandler,
}

/// Executes batches of chains against the disk (kept apart from the queue
/// so a batch can hold the ring iterator while requests are parsed).
struct RequestHandler {
    disk: Arc<dyn DiskBackend>,
    counters: Arc<BlockCounters>,
    limits: Limits,
    slots: Vec<Slot>,
}

/// One request of a batch as it moves through the passes.
struct Slot {
    layout: ChainLayout,
    /// Whether the chain obeys the shared rules (first pass).
    chain: Result<(), ChainError>,
    /// The request, or why it is malformed (second pass).
    parsed: Result<request::Request, request::RequestError>,
    /// What its I/O did (third pass).
    performed: request::Performed,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            layout: ChainLayout::default(),
            chain: Ok(()),
            parsed: Err(request::RequestError::NoStatus),
            performed: request::Performed::failed(request::status::IOERR),
        }
    }
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
            mem: Arc::new(mem),
            queue: queue.queue,
            notify: queue.notify,
            position: queue.position,
            interrupt,
            counters: counters.clone(),
            handler: RequestHandler {
                disk,
                counters,
                limits,
                slots: (0..BATCH).map(|_| Slot::default()).collect(),
            },
        }
    }

    pub(super) fn run(mut self, mut ev: EventLoop) {
        if let Err(e) = ev.add(self.notify.as_raw_fd(), QUEUE_TOKEN, EventSet::IN) {
            warn!(error = %e, "virtio-blk: cannot watch the queue");
            self.interrupt.set_needs_reset();
            return;
        }
        // Requests posted before the worker existed are signalled through
        // the notify eventfd by `activate`, so nothing is done before the
        // first wait (where a worker started paused parks).
        let mut broken = false;
        let mut tokens = Vec::new();
        loop {
            // A request boundary: everything taken has been completed.
            self.position.publish(&self.queue);
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
        let mem = Arc::clone(&self.mem);
        let mem = &*mem;
        let mut slices = Vec::with_capacity(16);
        loop {
            // No notifications while the worker is busy or polling.
            self.queue.disable_notification(mem)?;
            let mut completed = false;
            loop {
                let mut n = 0;
                for chain in self.queue.iter(mem)?.take(BATCH) {
                    self.handler.take(n, chain, mem);
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                self.handler.parse(n, mem);
                self.handler.perform(n, mem, &mut slices);
                // Last pass: statuses and used entries.
                for slot in &self.handler.slots[..n] {
                    let out = request::finish(
                        &slot.layout,
                        mem,
                        slot.performed.status,
                        slot.performed.data_written,
                    );
                    self.queue.add_used(mem, slot.layout.head, out.used_len)?;
                }
                completed = true;
            }
            if completed && self.queue.needs_notification(mem)? {
                self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
                self.interrupt.signal_used(0);
            }
            if self.poll_for_work(mem)? {
                continue;
            }
            // Re-enable notifications; a request that raced in is handled now.
            if !self.queue.enable_notification(mem)? {
                return Ok(());
            }
        }
    }

    /// Spins for up to [`POLL_WINDOW`] waiting for the driver to post more
    /// requests, so a busy driver need not notify (a notification costs a
    /// VM exit and a thread wake-up). Returns whether work arrived.
    fn poll_for_work(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        // The clock is read only once the ring is seen empty: a busy driver
        // usually has posted more by the time a batch completes.
        let mut start = None;
        loop {
            let avail = self.queue.avail_idx(mem, Ordering::Acquire)?;
            if avail != Wrapping(self.queue.next_avail()) {
                return Ok(true);
            }
            let started = *start.get_or_insert_with(Instant::now);
            if started.elapsed() >= POLL_WINDOW {
                return Ok(false);
            }
            std::hint::spin_loop();
        }
    }
}

impl RequestHandler {
    /// First pass: splits `chain` into slot `n`'s layout and starts
    /// fetching the cache line of its header (which the driver has just
    /// written, so it sits in another CPU's cache), for writing, because
    /// drivers often keep the status byte next to the header.
    fn take(
        &mut self,
        n: usize,
        chain: virtio_queue::DescriptorChain<&GuestMemory>,
        mem: &GuestMemory,
    ) {
        let slot = &mut self.slots[n];
        slot.chain = slot.layout.parse(chain, mem, SEG_MAX as usize + 2);
        if let (Ok(()), Some(header)) = (&slot.chain, slot.layout.readable.first()) {
            prefetch::for_write(mem, header.addr);
        }
    }

    /// Second pass: parses the requests of slots `..n`.
    fn parse(&mut self, n: usize, mem: &GuestMemory) {
        for slot in &mut self.slots[..n] {
            slot.parsed = std::mem::replace(&mut slot.chain, Ok(()))
                .map_err(request::RequestError::from)
                .and_then(|()| request::parse(&slot.layout, mem));
        }
    }

    /// Third pass: does the I/O of slots `..n`, leaving their status bytes
    /// unwritten.
    fn perform<'m>(
        &mut self,
        n: usize,
        mem: &'m GuestMemory,
        slices: &mut Vec<vireo_block::GuestSlice<'m>>,
    ) {
        let (mut malformed, mut failed) = (0, 0);
        for slot in &mut self.slots[..n] {
            slot.performed = match &slot.parsed {
                Ok(req) => request::perform(
                    req,
                    &slot.layout,
                    mem,
                    self.disk.as_ref(),
                    &self.limits,
                    slices,
                ),
                Err(e) => {
                    debug!(head = slot.layout.head, error = %e, "virtio-blk: malformed request");
                    malformed += 1;
                    request::Performed::failed(request::status::IOERR)
                }
            };
            if slot.performed.status != request::status::OK {
                failed += 1;
            }
        }
        // One update per batch: the counters are read by other threads.
        let c = &self.counters;
        c.requests.fetch_add(n as u64, Ordering::Relaxed);
        if malformed > 0 {
            c.malformed.fetch_add(malformed, Ordering::Relaxed);
        }
        if failed > 0 {
            c.failed.fetch_add(failed, Ordering::Relaxed);
        }
    }
}
