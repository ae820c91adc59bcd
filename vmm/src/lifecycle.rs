//! The VM lifecycle state machine and why a VM stopped.
//!
//! ```text
//!   Created ──start──► Running ──pause──► Paused
//!                        ▲  │               │
//!                        └──┼───resume──────┘
//!                           ▼ (guest exit, error, shutdown — from Running or Paused)
//!                        Stopped
//! ```
//! vCPU threads check a lock-free command word before every `KVM_RUN`; the
//! controlling thread changes it and kicks every vCPU out of `KVM_RUN` with a
//! signal whose handler sets `immediate_exit`, so a kick can never be lost
//! between the check and the ioctl. Pausing waits until every vCPU has
//! acknowledged, so when [`Lifecycle::pause`] returns no guest instruction
//! runs until resume.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use thiserror::Error;
use vireo_devices::{ExitHandler, GuestExitRequest};

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Built, vCPUs not started.
    Created,
    /// vCPUs running guest code.
    Running,
    /// vCPUs parked outside `KVM_RUN`.
    Paused,
    /// The VM has ended; see [`ExitReason`].
    Stopped,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExitReason {
    /// The guest powered itself off.
    #[error("guest powered off")]
    PowerOff,
    /// The guest asked for a reset.
    #[error("guest requested a reset")]
    Reset,
    /// The guest wrote a status to the debug exit port.
    #[error("guest reported status {status} on the debug exit port")]
    DebugExit {
        /// The status byte (0 = success).
        status: u8,
    },
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    #[error("triple fault on vCPU {vcpu}")]
    TripleFault {
        /// The vCPU.
        vcpu: u8,
    },
    /// KVM's instruction emulator could not execute a guest instruction.
    #[error("emulation failure on vCPU {vcpu} at rip {rip:#x}: instruction bytes {}", hex(.instruction))]
    EmulationFailure {
        /// The vCPU.
        vcpu: u8,
        /// Guest RIP of the instruction.
        rip: u64,
        /// The instruction bytes KVM reported (up to 15).
        instruction: Vec<u8>,
    },
    /// Another KVM internal error.
    #[error("KVM internal error on vCPU {vcpu}: suberror {suberror}, data {data:x?}")]
    InternalError {
        /// The vCPU.
        vcpu: u8,
        /// KVM_INTERNAL_ERROR_* code.
        suberror: u32,
        /// Extra data words.
        data: Vec<u64>,
    },
    /// The guest reported a crash (KVM_SYSTEM_EVENT_CRASH).
    #[error("guest crashed (vCPU {vcpu})")]
    GuestCrash {
        /// The vCPU.
        vcpu: u8,
    },
    /// Hardware refused to enter the guest.
    #[error("VM entry failed on vCPU {vcpu}: hardware reason {reason:#x}")]
    FailEntry {
        /// The vCPU.
        vcpu: u8,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// A vCPU exit the VMM does not handle.
    #[error("unexpected exit on vCPU {vcpu}: {exit}")]
    UnexpectedExit {
        /// The vCPU.
        vcpu: u8,
        /// Description of the exit.
        exit: String,
    },
    /// `KVM_RUN` itself failed.
    #[error("vCPU {vcpu} failed: {error}")]
    VcpuError {
        /// The vCPU.
        vcpu: u8,
        /// The error.
        error: String,
    },
    /// The VMM stopped the VM (API request or signal).
    #[error("stopped by the VMM")]
    Stopped,
    /// The VM moved to another `vireo` by live migration and runs there.
    #[error("migrated to another vireo")]
    Migrated,
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A lifecycle request that is not allowed in the current state.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cannot {action} a VM that is {state}")]
pub struct TransitionError {
    /// The action attempted.
    pub action: &'static str,
    /// The state the VM was in.
    pub state: VmState,
}

/// What vCPU threads should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Run = 0,
    Pause = 1,
    Stop = 2,
}

struct Inner {
    state: VmState,
    exit: Option<ExitReason>,
    paused_vcpus: usize,
    live_vcpus: usize,
    threads: Vec<libc::pthread_t>,
}

/// Shared between the controlling thread, vCPU threads and devices.
pub(crate) struct Lifecycle {
    command: AtomicU8,
    /// Auto-converge: the share of time, in percent, each vCPU sleeps (0: none).
    throttle: AtomicU8,
    inner: Mutex<Inner>,
    changed: Condvar,
    kick: fn(libc::pthread_t),
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("state", &self.state())
            .finish()
    }
}

impl Lifecycle {
    /// A lifecycle in `Created`; `kick` forces a vCPU thread out of KVM_RUN.
    pub(crate) fn new(kick: fn(libc::pthread_t)) -> Self {
        Self {
            command: AtomicU8::new(Command::Run as u8),
            throttle: AtomicU8::new(0),
            inner: Mutex::new(Inner {
                state: VmState::Created,
                exit: None,
                paused_vcpus: 0,
                live_vcpus: 0,
                threads: Vec::new(),
            }),
            changed: Condvar::new(),
            kick,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing in `Inner` can be left half-updated by a panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    fn set_command(&self, c: Command) {
        self.command.store(c as u8, Ordering::SeqCst);
        // Wakes throttled vCPUs, which sleep on `changed` (callers hold the lock or notify).
        self.changed.notify_all();
    }

    /// The command vCPU threads must follow.
    pub(crate) fn command(&self) -> Command {
        match self.command.load(Ordering::SeqCst) {
            0 => Command::Run,
            1 => Command::Pause,
            _ => Command::Stop,
        }
    }

    /// The current state.
    pub(crate) fn state(&self) -> VmState {
        self.lock().state
    }

    /// Created → Running (or Paused), announcing how many vCPU threads will run. A VM started
    /// paused has its vCPU threads park before their first guest instruction.
    pub(crate) fn begin_start(&self, vcpus: usize, paused: bool) -> Result<(), TransitionError> {
        let mut g = self.lock();
        if g.state != VmState::Created || g.exit.is_some() {
            return Err(TransitionError {
                action: "start",
                state: effective_state(&g),
            });
        }
        if paused {
            self.set_command(Command::Pause);
            g.state = VmState::Paused;
        } else {
            g.state = VmState::Running;
        }
        g.live_vcpus = vcpus;
        Ok(())
    }

    /// Called by each vCPU thread once its kick handler is armed.
    pub(crate) fn register_vcpu_thread(&self, thread: libc::pthread_t) {
        self.lock().threads.push(thread);
    }

    /// Called by a vCPU thread that saw [`Command::Pause`]; returns when the
    /// VM is resumed or stopped.
    pub(crate) fn park_vcpu(&self) {
        let mut g = self.lock();
        g.paused_vcpus += 1;
        self.changed.notify_all();
        while self.command() == Command::Pause {
            g = self.wait(g);
        }
        g.paused_vcpus -= 1;
    }

    /// Sets how hard the vCPUs are throttled, in percent of their time (0 to 99; 0: not at
    /// all). Takes effect at each vCPU's next exit; [`Lifecycle::kick_all`] forces one.
    pub(crate) fn set_throttle(&self, percent: u8) {
        self.throttle.store(percent.min(99), Ordering::SeqCst);
    }

    /// The throttle in percent.
    pub(crate) fn throttle(&self) -> u8 {
        self.throttle.load(Ordering::SeqCst)
    }

    /// Kicks every vCPU out of `KVM_RUN` once (it then checks its command and the throttle).
    pub(crate) fn kick_all(&self) {
        let g = self.lock();
        for t in &g.threads {
            (self.kick)(*t);
        }
    }

    /// Called by a vCPU thread after a kick: sleeps for the throttle's share of `slice` (QEMU's
    /// `pct / (1 − pct)` of a run slice), returning early when the command changes.
    pub(crate) fn throttle_sleep(&self, slice: Duration) {
        let pct = u32::from(self.throttle());
        if pct == 0 {
            return;
        }
        let sleep = slice * pct / (100 - pct);
        let deadline = std::time::Instant::now() + sleep;
        let mut g = self.lock();
        while self.command() == Command::Run && self.throttle() > 0 {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Called by a vCPU thread as it leaves its run loop.
    pub(crate) fn vcpu_exited(&self, thread: libc::pthread_t) {
        let mut g = self.lock();
        g.threads.retain(|t| *t != thread);
        g.live_vcpus = g.live_vcpus.saturating_sub(1);
        self.changed.notify_all();
    }

    /// Ends the VM with `reason` unless it already has a reason.
    pub(crate) fn request_exit(&self, reason: ExitReason) {
        let g = {
            let mut g = self.lock();
            if g.exit.is_none() {
                g.exit = Some(reason);
            }
            self.set_command(Command::Stop);
            self.changed.notify_all();
            g
        };
        for t in &g.threads {
            (self.kick)(*t);
        }
    }

    /// Running → Paused; returns once every vCPU is parked.
    pub(crate) fn pause(&self) -> Result<(), TransitionError> {
        let mut g = self.lock();
        if g.state != VmState::Running || g.exit.is_some() {
            return Err(TransitionError {
                action: "pause",
                state: effective_state(&g),
            });
        }
        self.set_command(Command::Pause);
        for t in &g.threads {
            (self.kick)(*t);
        }
        while g.paused_vcpus < g.live_vcpus && g.exit.is_none() {
            g = self.wait(g);
        }
        if g.exit.is_some() {
            return Err(TransitionError {
                action: "pause",
                state: VmState::Stopped,
            });
        }
        g.state = VmState::Paused;
        Ok(())
    }

    /// Paused → Running.
    pub(crate) fn resume(&self) -> Result<(), TransitionError> {
        let mut g = self.lock();
        if g.state != VmState::Paused || g.exit.is_some() {
            return Err(TransitionError {
                action: "resume",
                state: effective_state(&g),
            });
        }
        g.state = VmState::Running;
        self.set_command(Command::Run);
        self.changed.notify_all();
        Ok(())
    }

    /// Blocks until the VM has an exit reason and every vCPU has left its
    /// run loop; the state is then `Stopped`.
    pub(crate) fn wait_for_exit(&self) -> ExitReason {
        let mut g = self.lock();
        loop {
            if let (Some(reason), 0) = (&g.exit, g.live_vcpus) {
                let reason = reason.clone();
                g.state = VmState::Stopped;
                return reason;
            }
            if g.state == VmState::Created && g.exit.is_some() {
                g.state = VmState::Stopped;
                return g.exit.clone().unwrap_or(ExitReason::Stopped);
            }
            g = self.wait(g);
        }
    }
}

fn effective_state(g: &Inner) -> VmState {
    if g.exit.is_some() {
        VmState::Stopped
    } else {
        g.state
    }
}

impl ExitHandler for Lifecycle {
    fn request_exit(&self, request: GuestExitRequest) {
        let reason = match request {
            GuestExitRequest::Reset => ExitReason::Reset,
            GuestExitRequest::PowerOff => ExitReason::PowerOff,
            GuestExitRequest::DebugExit(status) => ExitReason::DebugExit { status },
        };
        Lifecycle::request_exit(self, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_kick(_: libc::pthread_t) {}

    #[test]
    fn transitions_follow_the_state_machine() {
        let l = Lifecycle::new(no_kick);
        assert_eq!(l.resume().map_err(|e| e.state), Err(VmState::Created));
        l.begin_start(0, false).expect("start");
        assert_eq!(l.begin_start(0, false).map_err(|e| e.action), Err("start"));
        l.pause().expect("pause with no vCPUs returns at once");
        assert_eq!(l.state(), VmState::Paused);
        assert!(l.pause().is_err());
        l.resume().expect("resume");
        l.request_exit(ExitReason::PowerOff);
        l.request_exit(ExitReason::Reset);
        assert_eq!(l.wait_for_exit(), ExitReason::PowerOff, "first reason wins");
        assert_eq!(l.state(), VmState::Stopped);
        assert_eq!(l.pause().map_err(|e| e.state), Err(VmState::Stopped));
    }

    #[test]
    fn emulation_failure_names_the_instruction() {
        let r = ExitReason::EmulationFailure {
            vcpu: 0,
            rip: 0x20_0010,
            instruction: vec![0x48, 0x0f, 0xc7, 0x0f],
        };
        assert_eq!(
            r.to_string(),
            "emulation failure on vCPU 0 at rip 0x200010: instruction bytes 48 0f c7 0f"
        );
    }
}
