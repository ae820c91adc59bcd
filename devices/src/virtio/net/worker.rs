//! The virtio-net worker: moves frames between the tap and the two queues.
//!
//! Receive: while the tap has frames and the driver has posted buffers, one
//! frame is read into one buffer chain. When the driver runs out of buffers
//! the tap is taken out of the epoll set (so a busy tap cannot spin the
//! thread) until the driver posts more and notifies the receive queue.
//! Transmit: every chain is one frame, written to the tap as it is.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, warn};
use vireo_net::{Tap, VNET_HDR_LEN};
use virtio_queue::{DescriptorChain, Error as QueueError, Queue, QueueOwnedT, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{validate_rx, validate_tx, NetCounters, MAX_SEGMENTS, RX_QUEUE, TX_QUEUE};
use crate::virtio::chain::{self, ChainLayout, Segment};
use crate::virtio::worker::{EventLoop, STOP_TOKEN};
use crate::virtio::{ActiveQueue, GuestMemory, Interrupt, QueuePosition};

const RX_TOKEN: u64 = 0;
const TX_TOKEN: u64 = 1;
const TAP_TOKEN: u64 = 2;

/// Everything the worker thread owns.
pub(super) struct NetWorker {
    tap: Arc<Tap>,
    /// Shared so a drain loop can hold it while `self` is borrowed mutably
    /// (cloning a `GuestMemoryMmap` allocates).
    mem: Arc<GuestMemory>,
    rx: Queue,
    rx_notify: EventFd,
    rx_position: Arc<QueuePosition>,
    tx: Queue,
    tx_notify: EventFd,
    tx_position: Arc<QueuePosition>,
    interrupt: Arc<dyn Interrupt>,
    counters: Arc<NetCounters>,
    layout: ChainLayout,
    iovecs: Vec<libc::iovec>,
    tap_watched: bool,
    broken: bool,
}

// SAFETY: the raw iovec pointers are scratch space rebuilt for every frame and
// only point into guest memory that `mem` keeps mapped; nothing else shares them.
unsafe impl Send for NetWorker {}

impl NetWorker {
    pub(super) fn new(
        tap: Arc<Tap>,
        mem: GuestMemory,
        rx: ActiveQueue,
        tx: ActiveQueue,
        interrupt: Arc<dyn Interrupt>,
        counters: Arc<NetCounters>,
    ) -> Self {
        Self {
            tap,
            mem: Arc::new(mem),
            rx: rx.queue,
            rx_notify: rx.notify,
            rx_position: rx.position,
            tx: tx.queue,
            tx_notify: tx.notify,
            tx_position: tx.position,
            interrupt,
            counters,
            layout: ChainLayout::default(),
            iovecs: Vec::new(),
            tap_watched: true,
            broken: false,
        }
    }

    pub(super) fn run(mut self, mut ev: EventLoop) {
        let setup = ev
            .add(self.rx_notify.as_raw_fd(), RX_TOKEN, EventSet::IN)
            .and_then(|()| ev.add(self.tx_notify.as_raw_fd(), TX_TOKEN, EventSet::IN))
            .and_then(|()| ev.add(self.tap.as_raw_fd(), TAP_TOKEN, EventSet::IN));
        if let Err(e) = setup {
            warn!(error = %e, "virtio-net: cannot set up the event loop");
            self.interrupt.set_needs_reset();
            return;
        }
        // Nothing before the first wait: `activate` signalled both queues'
        // eventfds and the tap is level-triggered, so pending work is seen
        // there (and a worker started paused parks there first).
        let mut tokens = Vec::new();
        loop {
            // A request boundary: every chain taken was used or given back.
            self.rx_position.publish(&self.rx);
            self.tx_position.publish(&self.tx);
            if let Err(e) = ev.wait(&mut tokens) {
                warn!(error = %e, "virtio-net: epoll failed");
                return;
            }
            for &t in &tokens {
                if t == STOP_TOKEN {
                    return;
                }
                if !self.broken {
                    self.step(&mut ev, t);
                }
            }
        }
    }

    fn step(&mut self, ev: &mut EventLoop, token: u64) {
        let result = match token {
            RX_TOKEN => {
                let _ = self.rx_notify.read();
                // New buffers: watch the tap again and deliver what waits.
                self.watch_tap(ev, true);
                self.receive(ev)
            }
            TAP_TOKEN => self.receive(ev),
            TX_TOKEN => {
                let _ = self.tx_notify.read();
                self.transmit()
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            warn!(error = %e, "virtio-net: queue is corrupt; device needs reset");
            self.broken = true;
            self.interrupt.set_needs_reset();
        }
    }

    fn watch_tap(&mut self, ev: &mut EventLoop, on: bool) {
        if self.tap_watched == on {
            return;
        }
        let set = if on { EventSet::IN } else { EventSet::empty() };
        match ev.modify(self.tap.as_raw_fd(), TAP_TOKEN, set) {
            Ok(()) => self.tap_watched = on,
            Err(e) => warn!(error = %e, "virtio-net: cannot change tap interest"),
        }
    }

    /// Fills `self.iovecs` with host pointers for `segs`. Fails if a
    /// segment is not inside one RAM region.
    fn build_iovecs(&mut self, writable: bool) -> bool {
        self.iovecs.clear();
        let segs: &[Segment] = if writable {
            &self.layout.writable
        } else {
            &self.layout.readable
        };
        for s in segs {
            if s.len == 0 {
                continue;
            }
            let Ok(slice) = self.mem.get_slice(s.addr, s.len as usize) else {
                return false;
            };
            self.iovecs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
        true
    }

    fn mark_dirty(&self, mut len: usize) {
        for s in &self.layout.writable {
            if len == 0 {
                break;
            }
            let n = (s.len as usize).min(len);
            if let Ok(slice) = self.mem.get_slice(s.addr, n) {
                slice.bitmap().mark_dirty(0, n);
            }
            len -= n;
        }
    }

    fn receive(&mut self, ev: &mut EventLoop) -> Result<(), QueueError> {
        let mut delivered = false;
        // A handle of our own: a chain borrows it while `self` is borrowed
        // mutably.
        let mem = Arc::clone(&self.mem);
        let mem = &*mem;
        loop {
            let Some(chain) = self.rx.iter(mem)?.next() else {
                // No buffers: stop watching the tap until the driver posts some.
                if self.rx.enable_notification(mem)? {
                    continue;
                }
                self.watch_tap(ev, false);
                break;
            };
            let head = chain.head_index();
            let ok = self.layout.parse(chain, mem, MAX_SEGMENTS).is_ok()
                && validate_rx(&self.layout)
                && self.build_iovecs(true);
            if !ok {
                debug!(head, "virtio-net: malformed receive chain");
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                self.rx.add_used(mem, head, 0)?;
                delivered = true;
                continue;
            }
            match self.tap.read_iovecs(&self.iovecs) {
                Ok(n) if n >= VNET_HDR_LEN => {
                    self.mark_dirty(n);
                    // num_buffers = 1: one chain per frame (no MRG_RXBUF).
                    chain::write_bytes(mem, &self.layout.writable, 10, &1u16.to_le_bytes());
                    self.rx.add_used(mem, head, n as u32)?;
                    self.counters.rx_frames.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .rx_bytes
                        .fetch_add((n - VNET_HDR_LEN) as u64, Ordering::Relaxed);
                    delivered = true;
                }
                Ok(_) => {
                    self.rx.go_to_previous_position();
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing to read: give the chain back for the next frame.
                    self.rx.go_to_previous_position();
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "virtio-net: tap read failed");
                    self.rx.go_to_previous_position();
                    break;
                }
            }
        }
        if delivered && self.rx.needs_notification(mem)? {
            self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
            self.interrupt.signal_used(RX_QUEUE);
        }
        Ok(())
    }

    fn transmit(&mut self) -> Result<(), QueueError> {
        let mut sent = false;
        // A handle of our own: a chain borrows it while `self` is borrowed
        // mutably.
        let mem = Arc::clone(&self.mem);
        let mem = &*mem;
        loop {
            // No notifications while draining (a no-op under EVENT_IDX).
            self.tx.disable_notification(mem)?;
            while let Some(chain) = self.tx.iter(mem)?.next() {
                self.send(chain);
                self.tx.add_used(mem, self.layout.head, 0)?;
                sent = true;
            }
            if !self.tx.enable_notification(mem)? {
                break;
            }
        }
        if sent && self.tx.needs_notification(mem)? {
            self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
            self.interrupt.signal_used(TX_QUEUE);
        }
        Ok(())
    }

    fn send(&mut self, chain: DescriptorChain<&GuestMemory>) {
        let head = chain.head_index();
        let parsed = self.layout.parse(chain, &self.mem, MAX_SEGMENTS);
        let frame = parsed.ok().and_then(|()| validate_tx(&self.layout));
        let Some(len) = frame.filter(|_| self.build_iovecs(false)) else {
            debug!(head, "virtio-net: malformed transmit chain");
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match self.tap.write_iovecs(&self.iovecs) {
            Ok(_) => {
                self.counters.tx_frames.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .tx_bytes
                    .fetch_add(len - VNET_HDR_LEN as u64, Ordering::Relaxed);
            }
            Err(e) => {
                debug!(error = %e, "virtio-net: tap refused a frame");
                self.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
