//! Device worker threads: one per activated device, woken by epoll on its
//! queue eventfds (ioeventfds), backend fds, a stop eventfd and a pause
//! eventfd.
//!
//! Queue processing never runs on a vCPU thread: a guest notification is an
//! ioeventfd write inside KVM, and the worker picks it up here.
//!
//! # Pause
//!
//! [`Worker::pause`] quiesces a worker at a request boundary: the worker
//! notices the pause eventfd only in [`EventLoop::wait`], i.e. between
//! batches, after everything it took from the rings has completed (used
//! entries written, interrupts sent). It then acknowledges and blocks until
//! [`Worker::resume`] or [`Worker::stop`]; `pause` returns only after the
//! acknowledgement, so from then on the worker touches neither guest memory
//! nor its backend. Notifications and backend readiness that arrive while
//! paused stay pending in their (level-triggered) eventfds and are handled
//! after resume: nothing is lost, nothing is redone. Queue state (indices,
//! event suppression) lives in the worker and is untouched; the worker
//! bodies publish each queue's positions ([`super::QueuePosition`]) just
//! before every wait, so they are current while the worker is parked.
//!
//! A worker can also start paused ([`Worker::spawn`] with `start_paused`,
//! used when a device is restored from a snapshot): it parks at its first
//! wait, before handling anything, until [`Worker::resume`].

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tracing::warn;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Token the stop eventfd is registered with in every worker's epoll set.
pub const STOP_TOKEN: u64 = u64::MAX;
/// Token of the pause eventfd; handled inside [`EventLoop::wait`] and never
/// returned to the worker's body.
const PAUSE_TOKEN: u64 = u64::MAX - 1;

/// Pause handshake between a [`Worker`] and its thread.
#[derive(Debug, Default)]
struct PauseState {
    /// The owner wants the thread parked.
    requested: bool,
    /// The thread is parked (between batches, touching nothing).
    parked: bool,
    /// The owner is stopping the thread: a parked thread must return.
    stopping: bool,
    /// The thread's body has returned (or panicked): nobody will ever park.
    exited: bool,
}

#[derive(Debug, Default)]
struct PauseControl {
    state: Mutex<PauseState>,
    changed: Condvar,
}

impl PauseControl {
    fn lock(&self) -> MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, PauseState>) -> MutexGuard<'a, PauseState> {
        self.changed.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the worker thread: parks while a pause is requested.
    /// Returns `false` if the thread must stop.
    fn park(&self) -> bool {
        let mut g = self.lock();
        if !g.requested || g.stopping {
            return !g.stopping;
        }
        g.parked = true;
        self.changed.notify_all();
        while g.requested && !g.stopping {
            g = self.wait(g);
        }
        g.parked = false;
        !g.stopping
    }
}

/// Marks the thread as gone when its body returns or unwinds, so a
/// concurrent [`Worker::pause`] does not wait for an acknowledgement that
/// can never come.
struct ExitGuard(Arc<PauseControl>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let mut g = self.0.lock();
        g.exited = true;
        self.0.changed.notify_all();
    }
}

/// A running worker thread and the eventfds that stop and pause it.
#[derive(Debug)]
pub struct Worker {
    stop: EventFd,
    pause: EventFd,
    control: Arc<PauseControl>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `body` on a thread named `name`. `body` gets an epoll set that
    /// already watches the stop eventfd (token [`STOP_TOKEN`]) and the pause
    /// eventfd, and must return once [`STOP_TOKEN`] is reported. Pausing is
    /// transparent to `body`: it happens inside [`EventLoop::wait`].
    ///
    /// With `start_paused`, the thread is born paused: it parks in its first
    /// [`EventLoop::wait`] and handles nothing until [`Worker::resume`]
    /// (exactly one call). For that to hold, `body` must do no queue work
    /// before its first `wait`; work pending at start is signalled instead by
    /// writing the queue's (level-triggered) notify eventfd before spawning.
    pub fn spawn<F>(name: String, start_paused: bool, body: F) -> io::Result<Self>
    where
        F: FnOnce(EventLoop) + Send + 'static,
    {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let pause = EventFd::new(EFD_NONBLOCK)?;
        let control = Arc::new(PauseControl::default());
        if start_paused {
            control.lock().requested = true;
            // Reported together with anything else pending by the first
            // epoll_wait, so the thread parks before handling any of it.
            pause.write(1)?;
        }
        let mut ev = EventLoop::new(pause.try_clone()?, control.clone())?;
        ev.add(stop.as_raw_fd(), STOP_TOKEN, EventSet::IN)?;
        ev.add(pause.as_raw_fd(), PAUSE_TOKEN, EventSet::IN)?;
        let guard = ExitGuard(control.clone());
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            let _guard = guard;
            body(ev);
        })?;
        Ok(Self {
            stop,
            pause,
            control,
            handle: Some(handle),
        })
    }

    /// Parks the thread at its next request boundary and returns once it
    /// is parked (or has ended): from then on it writes neither guest
    /// memory nor its backend until [`Worker::resume`]. Work in progress
    /// completes first. Idempotent.
    pub fn pause(&mut self) {
        if self.handle.is_none() {
            return;
        }
        let mut g = self.control.lock();
        g.requested = true;
        if let Err(e) = self.pause.write(1) {
            warn!(error = %e, "cannot signal a device worker to pause");
            g.requested = false;
            return;
        }
        while !g.parked && !g.exited {
            g = self.control.wait(g);
        }
    }

    /// Lets a paused thread run again; it then handles whatever became
    /// pending while it was paused. A no-op if it is not paused.
    pub fn resume(&mut self) {
        let mut g = self.control.lock();
        g.requested = false;
        self.control.changed.notify_all();
    }

    /// Stops the thread (paused or not) and waits for it to end.
    pub fn stop(&mut self) {
        {
            let mut g = self.control.lock();
            g.stopping = true;
            self.control.changed.notify_all();
        }
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
    pause: EventFd,
    control: Arc<PauseControl>,
}

impl EventLoop {
    fn new(pause: EventFd, control: Arc<PauseControl>) -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            events: vec![EpollEvent::default(); 16],
            pause,
            control,
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
    ///
    /// This is the worker's request boundary: if a pause was requested the
    /// thread parks here, before any of the returned events is handled,
    /// and returns them after resuming. A stop while parked returns just
    /// [`STOP_TOKEN`].
    pub fn wait(&mut self, out: &mut Vec<u64>) -> io::Result<()> {
        out.clear();
        let n = match self.epoll.wait(-1, &mut self.events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        out.extend(self.events[..n].iter().map(|e| e.data()));
        if out.contains(&PAUSE_TOKEN) {
            out.retain(|&t| t != PAUSE_TOKEN);
            // Consume the request; an empty eventfd returns EAGAIN.
            let _ = self.pause.read();
            if !self.control.park() {
                out.clear();
                out.push(STOP_TOKEN);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    const WORK_TOKEN: u64 = 7;

    /// A worker whose body counts the times `work` was reported.
    fn counting_worker(start_paused: bool) -> (Worker, EventFd, Arc<AtomicU64>) {
        let work = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let theirs = work.try_clone().expect("clone");
        let seen = Arc::new(AtomicU64::new(0));
        let count = seen.clone();
        let w = Worker::spawn("vireo-test-worker".into(), start_paused, move |mut ev| {
            ev.add(theirs.as_raw_fd(), WORK_TOKEN, EventSet::IN)
                .expect("watch");
            let mut tokens = Vec::new();
            loop {
                ev.wait(&mut tokens).expect("wait");
                for &t in &tokens {
                    match t {
                        STOP_TOKEN => return,
                        WORK_TOKEN => {
                            let _ = theirs.read();
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                }
            }
        })
        .expect("spawn");
        (w, work, seen)
    }

    fn wait_for(seen: &AtomicU64, n: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.load(Ordering::SeqCst) < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    #[test]
    fn a_worker_started_paused_handles_nothing_until_one_resume() {
        let (mut w, work, seen) = counting_worker(true);
        // Work pending before and after the thread started.
        work.write(1).expect("signal");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(seen.load(Ordering::SeqCst), 0, "handled while paused");
        w.resume();
        assert!(wait_for(&seen, 1), "one resume lets it run");
        // It pauses and resumes as usual afterwards.
        w.pause();
        work.write(1).expect("signal");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        w.resume();
        assert!(wait_for(&seen, 2));
        w.stop();
    }

    #[test]
    fn a_worker_started_paused_stops_promptly() {
        let (mut w, _work, seen) = counting_worker(true);
        let t = Instant::now();
        w.stop();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(seen.load(Ordering::SeqCst), 0);
        let (mut running, work, seen) = counting_worker(false);
        work.write(1).expect("signal");
        assert!(wait_for(&seen, 1), "a worker not started paused runs");
        running.stop();
    }
}
