//! Device worker threads: one per activated device, woken by epoll on its
//! queue eventfds (ioeventfds), backend fds and a stop eventfd.
//!
//! Queue processing never runs on a vCPU thread: a guest notification is an
//! ioeventfd write inside KVM, and the worker picks it up here.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use tracing::warn;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Token the stop eventfd is registered with in every worker's epoll set.
pub const STOP_TOKEN: u64 = u64::MAX;

/// A running worker thread and the eventfd that stops it.
#[derive(Debug)]
pub struct Worker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `body` on a thread named `name`. `body` gets an epoll set that
    /// already watches the stop eventfd (token [`STOP_TOKEN`]) and must
    /// return once that token fires.
    pub fn spawn<F>(name: String, body: F) -> io::Result<Self>
    where
        F: FnOnce(EventLoop) + Send + 'static,
    {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let mut ev = EventLoop::new()?;
        ev.add(stop.as_raw_fd(), STOP_TOKEN, EventSet::IN)?;
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || body(ev))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it to end.
    pub fn stop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            warn!(error = %e, "cannot signal a device worker to stop");
        }
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                warn!("a device worker panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.stop();
        }
    }
}

/// A small epoll wrapper: file descriptors registered with a token.
#[derive(Debug)]
pub struct EventLoop {
    epoll: Epoll,
    events: Vec<EpollEvent>,
}

impl EventLoop {
    fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            events: vec![EpollEvent::default(); 16],
        })
    }

    /// Watches `fd` for `set`, reporting it as `token`.
    pub fn add(&mut self, fd: RawFd, token: u64, set: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(set, token))
    }

    /// Changes what `fd` is watched for (an empty set pauses it).
    pub fn modify(&mut self, fd: RawFd, token: u64, set: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(set, token))
    }

    /// Waits for events and returns their tokens (EINTR yields none).
    pub fn wait(&mut self, out: &mut Vec<u64>) -> io::Result<()> {
        out.clear();
        let n = match self.epoll.wait(-1, &mut self.events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        out.extend(self.events[..n].iter().map(|e| e.data()));
        Ok(())
    }
}
