//! The source side: pre-copy passes until the rest fits the downtime, then the pause, the
//! last pages, the state, and the hand-over.
//!
//! ```text
//!  pass 0: populated pages (mincore ∪ file-backed), zero pages skipped
//!  pass n: pages dirtied during pass n−1 ── until bytes left ÷ throughput ≤ downtime_ms
//!          (timeout → cancel or force; auto-converge: 2 passes dirtying > ½ of what they
//!           sent → throttle 20 %, then +10 % … 99 %)
//!  downtime: pause + quiesce → last dirty pages → State → Complete ── Ready ──► stop here
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::dirty::{self, DirtyTracker};
use super::protocol::Version;
use super::protocol::{self, ConfigFrame, Frame, FrameReader, PAGE, VERSIONS};
use super::transport::{self, Conn, MigrationUrl};
use super::TimeoutStrategy;
use super::{MigrationError, MigrationPhase, MigrationReport, Outgoing, SendMigrationConfig};
use crate::device_manager::persist as device_persist;
use crate::lifecycle::{ExitReason, Lifecycle, VmState};
use crate::memory::{self, GuestMemory};
use crate::snapshot::{format, memory_file};
use crate::vm::Vm;
use crate::vstate::vcpu::THROTTLE_SLICE;

/// Pages per Memory frame (1 MiB).
const FRAME_PAGES: u64 = 256;
/// Bytes gathered before a write to the connection.
const FLUSH_AT: usize = 1 << 20;
/// Auto-converge's first throttle, step and ceiling (QEMU's defaults).
const THROTTLE_INITIAL: u8 = 20;
const THROTTLE_STEP: u8 = 10;
const THROTTLE_MAX: u8 = 99;

/// Runs the migration and records how it ended in `out`.
pub(super) fn run(
    vm: &Vm,
    cfg: &SendMigrationConfig,
    out: &Outgoing,
) -> Result<MigrationReport, MigrationError> {
    let started = Instant::now();
    let result = run_inner(vm, cfg, out, started).map_err(|e| {
        if out.cancelled() {
            MigrationError::Cancelled
        } else {
            e
        }
    });
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    match &result {
        Ok(r) => {
            tracing::info!(
                downtime_ms = r.downtime.as_secs_f64() * 1e3,
                total_ms,
                passes = r.passes,
                pages = r.pages_sent,
                "live migration completed"
            );
            out.update(|i| {
                i.phase = MigrationPhase::Completed;
                i.downtime_ms = Some(r.downtime.as_secs_f64() * 1e3);
                i.total_ms = Some(total_ms);
                i.throttle_percent = 0;
            });
        }
        Err(e) => {
            let cancelled = matches!(e, MigrationError::Cancelled | MigrationError::Timeout(_));
            out.update(|i| {
                i.phase = if cancelled {
                    MigrationPhase::Cancelled
                } else {
                    MigrationPhase::Failed
                };
                i.error = Some(e.to_string());
                i.total_ms = Some(total_ms);
                i.throttle_percent = 0;
            });
        }
    }
    result
}

/// Reads the target's answer: `Ready`, or why not.
fn expect_ready(conn: &mut Conn) -> Result<(), MigrationError> {
    match FrameReader::new(conn).read_frame()? {
        Frame::Ready => Ok(()),
        Frame::Error(why) => Err(MigrationError::Refused(why)),
        other => Err(MigrationError::OutOfOrder {
            expected: "Ready",
            got: protocol::frame_name(&other),
        }),
    }
}

/// Checks what can be checked before connecting: the URL, and what a local handover needs.
/// Returns the URL and, for a local handover, the memfd behind guest memory.
pub(super) fn check(
    vm: &Vm,
    cfg: &SendMigrationConfig,
) -> Result<(MigrationUrl, Option<Arc<std::fs::File>>), MigrationError> {
    let url: MigrationUrl = cfg.destination_url.parse()?;
    if matches!(url, MigrationUrl::Tls(_)) && cfg.tls_dir.is_none() {
        return Err(transport::TransportError::NoTlsDir.into());
    }
    let memfd = if cfg.local {
        if !matches!(url, MigrationUrl::Unix(_)) {
            return Err(MigrationError::Invalid(
                "local handover needs a unix: destination (the target runs on this host)".into(),
            ));
        }
        Some(memory::shared_file(vm.memory()).ok_or_else(|| {
            MigrationError::Invalid(
                "local handover needs guest memory backed by a memfd (memory_backing: memfd)"
                    .into(),
            )
        })?)
    } else {
        None
    };
    Ok((url, memfd))
}

fn run_inner(
    vm: &Vm,
    cfg: &SendMigrationConfig,
    out: &Outgoing,
    started: Instant,
) -> Result<MigrationReport, MigrationError> {
    let (url, memfd) = check(vm, cfg)?;
    if out.cancelled() {
        return Err(MigrationError::Cancelled);
    }
    let mut conn = transport::connect(&url, cfg.tls_dir.as_deref())?;
    out.set_canceller(conn.canceller());

    // Hello / Accept.
    protocol::write_frame(
        &mut conn,
        &Frame::Hello {
            versions: VERSIONS,
            vireo: env!("CARGO_PKG_VERSION").to_owned(),
        },
    )
    .map_err(protocol::ProtocolError::from)?;
    conn.flush().map_err(protocol::ProtocolError::from)?;
    match FrameReader::new(&mut conn).read_frame()? {
        Frame::Accept(v) if in_range(v) => {}
        Frame::Accept(v) => {
            return Err(MigrationError::Refused(format!(
                "the target chose protocol version {v}, which this Vireo does not speak"
            )))
        }
        Frame::Error(why) => return Err(MigrationError::Refused(why)),
        other => {
            return Err(MigrationError::OutOfOrder {
                expected: "Accept",
                got: protocol::frame_name(&other),
            })
        }
    }

    // Config: the target builds its VM and memory now, outside the downtime.
    let hand_over_taps = conn.carries_fds() && !vm.config().nets.is_empty();
    let config = Frame::Config(Box::new(ConfigFrame {
        config: vm.config().clone(),
        memory: memory_file::layout(vm.config().memory_bytes()),
        flags: vm.flags(),
        local: cfg.local,
        hand_over_taps,
        tsc_khz: vm.tsc_khz(),
    }));
    let mut bytes = Vec::new();
    protocol::write_frame(&mut bytes, &config).map_err(protocol::ProtocolError::from)?;
    match &memfd {
        Some(file) => {
            use std::os::fd::AsRawFd;
            conn.send_with_fds(&bytes, &[file.as_raw_fd()])
        }
        None => conn.write_all(&bytes),
    }
    .map_err(protocol::ProtocolError::from)?;
    conn.flush().map_err(protocol::ProtocolError::from)?;
    expect_ready(&mut conn)?;

    let deadline = (cfg.timeout_s > 0).then(|| started + Duration::from_secs(cfg.timeout_s));
    let mut wire = Wire::new(conn, cfg.max_bandwidth);
    let mut report = MigrationReport {
        downtime: Duration::ZERO,
        total: Duration::ZERO,
        passes: 0,
        pages_sent: 0,
        bytes_sent: 0,
        dirty_log: "none",
        ring_full_exits: 0,
        max_throttle: 0,
    };

    // Pre-copy (none for a local handover: the target maps the same memory).
    let tracker = match memfd {
        Some(_) => None,
        None => Some(DirtyTracker::start(vm)?),
    };
    let mut throttle = Throttle::new(vm.lifecycle().clone());
    let mut pending: Vec<Vec<u64>> = Vec::new();
    if let Some(tracker) = &tracker {
        report.dirty_log = tracker.kind();
        out.update(|i| {
            i.phase = MigrationPhase::Precopy;
            i.dirty_log = tracker.kind().to_owned();
            i.pass = 1;
        });
        pending = memory_file::populated(vm.memory())
            .map_err(|e| MigrationError::Memory(e.to_string()))?;
        wire.begin_pass();
        // Whether the last pass sent all of `pending` (a pass cut short by the deadline did
        // not: its pages stay pending, with what the guest dirtied meanwhile).
        let mut complete = send_pages(&mut wire, vm.memory(), &pending, true, out, deadline)?;
        let mut throughput = wire.pass_throughput();
        let mut high = 0u32;
        loop {
            let fresh = tracker.take()?;
            if complete {
                pending = fresh;
            } else {
                dirty::merge(&mut pending, &fresh);
            }
            let pass_time = wire.pass_elapsed();
            let left = dirty::count(&pending) * PAGE;
            if let Some(t) = wire.pass_throughput().filter(|_| wire.pass_bytes() > 0) {
                throughput = Some(t);
            }
            let bw = throughput.unwrap_or(1 << 30).max(1);
            let expected_ms = left.saturating_mul(1000) / bw;
            report.passes += 1;
            out.update(|i| {
                i.bytes_sent = wire.bytes;
                i.pages_sent = wire.pages;
                i.bytes_left = left;
                i.dirty_rate = (left as f64 / pass_time.as_secs_f64().max(1e-6)) as u64;
                i.throughput = bw;
                i.expected_downtime_ms = expected_ms;
                i.ring_full_exits = tracker.ring_full_exits();
            });
            if expected_ms <= cfg.downtime_ms {
                break;
            }
            if out.cancelled() {
                return Err(MigrationError::Cancelled);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                match cfg.timeout_strategy {
                    TimeoutStrategy::Cancel => return Err(MigrationError::Timeout(cfg.timeout_s)),
                    TimeoutStrategy::Force => {
                        tracing::info!("migration timeout: forcing the switch-over");
                        break;
                    }
                }
            }
            // Auto-converge: the guest dirtied more than half of what the pass sent.
            if cfg.auto_converge && left > wire.pass_bytes() / 2 {
                high += 1;
                if high >= 2 {
                    high = 0;
                    let next = match throttle.percent() {
                        0 => THROTTLE_INITIAL,
                        p => p.saturating_add(THROTTLE_STEP).min(THROTTLE_MAX),
                    };
                    throttle.set(next);
                    report.max_throttle = report.max_throttle.max(next);
                    out.update(|i| i.throttle_percent = next);
                    tracing::info!(percent = next, "auto-converge: throttling the vCPUs");
                }
            }
            out.update(|i| i.pass += 1);
            wire.begin_pass();
            complete = send_pages(&mut wire, vm.memory(), &pending, false, out, deadline)?;
        }
    }

    // Downtime.
    out.update(|i| i.phase = MigrationPhase::Downtime);
    let _transition = vm.transition_lock();
    let was_running = match vm.state() {
        VmState::Running => true,
        VmState::Paused => false,
        other => return Err(MigrationError::State(other)),
    };
    let paused_at = Instant::now();
    if was_running {
        vm.pause_locked()?;
    }
    throttle.set(0);
    let finish = (|| -> Result<(), MigrationError> {
        // The guest is paused now: a stuck target may hold it so for this long at most, then
        // the source gives up and resumes it.
        wire.conn
            .set_timeouts(Some(downtime_io_timeout(cfg.downtime_ms)))
            .map_err(protocol::ProtocolError::from)?;
        // The bandwidth cap is for pre-copy; the switch goes as fast as it can.
        wire.cap = 0;
        if let Some(tracker) = &tracker {
            let last = tracker.take()?;
            if pending.is_empty() {
                pending = last;
            } else {
                dirty::merge(&mut pending, &last);
            }
            send_pages(&mut wire, vm.memory(), &pending, false, out, None)?;
            report.ring_full_exits = tracker.ring_full_exits();
        }
        let state = vm.save_state()?;
        let state = format::encode(&state)
            .map_err(|e| MigrationError::Mismatch(format!("cannot encode the VM state: {e}")))?;
        if hand_over_taps {
            // The taps travel with the state: the target's NICs take over the same queues.
            let fds = device_persist::handover_fds(vm.devices());
            wire.frame_with_fds(&Frame::State(state), &fds)?;
        } else {
            wire.frame(&Frame::State(state))?;
        }
        wire.frame(&Frame::Complete {
            resume: was_running,
        })?;
        wire.flush()?;
        expect_ready(&mut wire.conn)
    })();
    match finish {
        Ok(()) => {
            report.downtime = paused_at.elapsed();
            report.total = started.elapsed();
            report.pages_sent = wire.pages;
            report.bytes_sent = wire.bytes;
            out.update(|i| {
                i.bytes_sent = wire.bytes;
                i.pages_sent = wire.pages;
                i.bytes_left = 0;
            });
            vm.lifecycle().request_exit(ExitReason::Migrated);
            Ok(report)
        }
        Err(e) => {
            let why = if out.cancelled() {
                "cancelled".to_owned()
            } else {
                e.to_string()
            };
            // Best effort: the target may be gone.
            let _ = wire.abandon(&why);
            drop(tracker);
            if was_running {
                if let Err(err) = vm.resume_locked() {
                    tracing::warn!(error = %err, "cannot resume the VM after a failed migration");
                }
            }
            Err(e)
        }
    }
}

/// The I/O timeout once the guest is paused: 20 × the downtime allowed, at least 5 s (the
/// target applies the state in milliseconds; the floor covers a loaded host).
fn downtime_io_timeout(downtime_ms: u64) -> Duration {
    Duration::from_millis(downtime_ms.saturating_mul(20)).max(Duration::from_secs(5))
}

fn in_range(v: Version) -> bool {
    VERSIONS.0 <= v && v <= VERSIONS.1
}

/// Sends every page set in `bits` (one bitmap per RAM region); with `skip_zero`, pages of
/// zeros are left out (pass 0: the target's memory starts zeroed). Returns false if it
/// stopped early because `deadline` passed (then not every page was sent).
fn send_pages(
    wire: &mut Wire,
    mem: &GuestMemory,
    bits: &[Vec<u64>],
    skip_zero: bool,
    out: &Outgoing,
    deadline: Option<Instant>,
) -> Result<bool, MigrationError> {
    for (region, bits) in mem.iter().zip(bits) {
        let base = region.start_addr().0;
        for (first, count) in memory_file::runs(bits, usize::MAX) {
            for p in first..first + count {
                wire.page(mem, base + p as u64 * PAGE, skip_zero)?;
                if wire.should_flush() {
                    wire.flush()?;
                    out.update(|i| {
                        i.bytes_sent = wire.bytes;
                        i.pages_sent = wire.pages;
                    });
                    if out.cancelled() {
                        return Err(MigrationError::Cancelled);
                    }
                    // A pass that runs past the deadline ends early; the loop decides.
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        wire.flush()?;
                        return Ok(false);
                    }
                }
            }
        }
    }
    wire.flush()?;
    Ok(true)
}

/// The connection with a send buffer of whole frames, counters and the bandwidth cap.
struct Wire {
    conn: Conn,
    buf: Vec<u8>,
    /// The open Memory frame: header position, first address, pages.
    open: Option<(usize, u64, u64)>,
    bytes: u64,
    pages: u64,
    cap: u64,
    pass_start: Instant,
    pass_start_bytes: u64,
}

impl Wire {
    fn new(conn: Conn, cap: u64) -> Self {
        Self {
            conn,
            buf: Vec::with_capacity(FLUSH_AT + (FRAME_PAGES * PAGE) as usize + 64),
            open: None,
            bytes: 0,
            pages: 0,
            cap,
            pass_start: Instant::now(),
            pass_start_bytes: 0,
        }
    }

    fn begin_pass(&mut self) {
        self.pass_start = Instant::now();
        self.pass_start_bytes = self.bytes;
    }

    fn pass_bytes(&self) -> u64 {
        self.bytes - self.pass_start_bytes
    }

    fn pass_elapsed(&self) -> Duration {
        self.pass_start.elapsed()
    }

    /// Bytes per second of the current pass, if it took measurable time.
    fn pass_throughput(&self) -> Option<u64> {
        let t = self.pass_elapsed().as_secs_f64();
        (t > 0.0).then(|| (self.pass_bytes() as f64 / t) as u64)
    }

    fn should_flush(&self) -> bool {
        self.buf.len() >= FLUSH_AT
    }

    /// Adds the page at `gpa` to the open frame (or a new one).
    fn page(&mut self, mem: &GuestMemory, gpa: u64, skip_zero: bool) -> Result<(), MigrationError> {
        match self.open {
            Some((_, first, n)) if first + n * PAGE == gpa && n < FRAME_PAGES => {}
            _ => {
                self.close();
                let at = self.buf.len();
                self.buf.extend_from_slice(&[0u8; protocol::HEADER_LEN + 8]);
                self.open = Some((at, gpa, 0));
            }
        }
        let at = self.buf.len();
        self.buf.resize(at + PAGE as usize, 0);
        mem.read_slice(&mut self.buf[at..], GuestAddress(gpa))
            .map_err(|e| MigrationError::Memory(format!("page {gpa:#x}: {e}")))?;
        if skip_zero && self.buf[at..].iter().all(|b| *b == 0) {
            self.buf.truncate(at);
            self.close();
            return Ok(());
        }
        if let Some((_, _, n)) = &mut self.open {
            *n += 1;
        }
        self.pages += 1;
        Ok(())
    }

    /// Finishes the open frame: writes its header (a frame with no page is dropped).
    fn close(&mut self) {
        if let Some((at, gpa, n)) = self.open.take() {
            if n == 0 {
                self.buf.truncate(at);
            } else {
                let h = protocol::memory_header(gpa, n * PAGE);
                self.buf[at..at + h.len()].copy_from_slice(&h);
            }
        }
    }

    /// Appends a whole frame of another kind.
    fn frame(&mut self, f: &Frame) -> Result<(), MigrationError> {
        self.close();
        protocol::write_frame(&mut self.buf, f).map_err(protocol::ProtocolError::from)?;
        Ok(())
    }

    /// Writes everything buffered, then `f` with `fds` attached (unix sockets only).
    fn frame_with_fds(
        &mut self,
        f: &Frame,
        fds: &[std::os::fd::RawFd],
    ) -> Result<(), MigrationError> {
        self.flush()?;
        let mut bytes = Vec::new();
        protocol::write_frame(&mut bytes, f).map_err(protocol::ProtocolError::from)?;
        self.conn
            .send_with_fds(&bytes, fds)
            .map_err(protocol::ProtocolError::from)?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Writes everything buffered, keeping under the bandwidth cap.
    fn flush(&mut self) -> Result<(), MigrationError> {
        self.close();
        if !self.buf.is_empty() {
            self.conn
                .write_all(&self.buf)
                .and_then(|()| self.conn.flush())
                .map_err(protocol::ProtocolError::from)?;
            self.bytes += self.buf.len() as u64;
            self.buf.clear();
        }
        if self.cap > 0 {
            let due = Duration::from_secs_f64(self.pass_bytes() as f64 / self.cap as f64);
            if let Some(wait) = due.checked_sub(self.pass_elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(())
    }

    /// Tells the target the source gives up (best effort, short timeout).
    fn abandon(&mut self, why: &str) -> std::io::Result<()> {
        self.buf.clear();
        self.open = None;
        self.conn.set_timeouts(Some(Duration::from_millis(200)))?;
        protocol::write_frame(&mut self.conn, &Frame::Abandon(why.to_owned()))?;
        self.conn.flush()?;
        self.conn.shutdown();
        Ok(())
    }
}

/// Auto-converge's throttle: a thread that kicks the vCPUs every run slice stretched by the
/// throttle, each vCPU then sleeping its share ([`Lifecycle::throttle_sleep`]). Dropped or
/// set to 0, the vCPUs run freely again.
struct Throttle {
    lifecycle: Arc<Lifecycle>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Throttle {
    fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            lifecycle,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    fn percent(&self) -> u8 {
        self.lifecycle.throttle()
    }

    fn set(&mut self, percent: u8) {
        self.lifecycle.set_throttle(percent);
        if percent == 0 || self.thread.is_some() {
            return;
        }
        let (lifecycle, stop) = (self.lifecycle.clone(), self.stop.clone());
        self.thread = std::thread::Builder::new()
            .name("vireo-throttle".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let pct = u32::from(lifecycle.throttle());
                    if pct > 0 {
                        lifecycle.kick_all();
                    }
                    std::thread::sleep(THROTTLE_SLICE * 100 / (100 - pct.min(99)));
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "cannot start the throttle thread"))
            .ok();
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.lifecycle.set_throttle(0);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
