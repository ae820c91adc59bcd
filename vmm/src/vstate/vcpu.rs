//! vCPU threads: one per vCPU, each looping on `KVM_RUN` and dispatching
//! port-I/O and MMIO exits to the buses.
//!
//! A thread is kicked out of `KVM_RUN` by [`kick`], which sends it
//! [`kick_signal`]. The handler sets `kvm_run.immediate_exit` through a
//! thread-local pointer, so a kick that lands just before the thread enters
//! `KVM_RUN` still makes the ioctl return at once with `EINTR`.
//!
//! Each vCPU's fd sits in a [`SharedVcpu`] mutex that its thread holds while it runs and
//! releases while it is parked, so the controlling thread can read and write the state of a
//! paused vCPU (snapshots) without a message round trip. Before parking, a thread lets KVM
//! finish the instruction of its last port-I/O or MMIO exit (one `KVM_RUN` with
//! `immediate_exit` set), so the saved registers never miss the result of an `in`.

use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_run, KVM_EXIT_DIRTY_RING_FULL, KVM_INTERNAL_ERROR_EMULATION, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use tracing::debug;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::dirty_ring::DirtyRings;
use crate::device_manager::Bus;
use crate::lifecycle::{Command, ExitReason, Lifecycle};

/// The run slice of a throttled vCPU: it is kicked this often and then sleeps its share.
pub(crate) const THROTTLE_SLICE: std::time::Duration = std::time::Duration::from_millis(10);

/// Flag in the emulation-failure data: instruction bytes are included.
const EMULATION_FLAG_INSTRUCTION_BYTES: u64 = 1;

thread_local! {
    /// This thread's `kvm_run` page, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal used to kick vCPU threads.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|p| p.get());
    if !run.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set by
        // the thread before it could be kicked and valid while it runs;
        // writing a byte to it is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler (once per process).
pub(crate) fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| result = register_signal_handler(kick_signal(), handle_kick));
    result
}

/// Kicks a vCPU thread out of `KVM_RUN`.
pub(crate) fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a live vCPU thread: threads are removed from the
    // kick list before they exit, and joined only after that.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}

/// The buses a vCPU dispatches exits to.
#[derive(Debug)]
pub(crate) struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
    /// The VM's dirty rings, harvested by a vCPU whose ring is full.
    pub rings: Option<Arc<DirtyRings>>,
}

/// A vCPU fd shared between its thread (which holds the lock while the vCPU may run) and
/// the controlling thread (which locks it only while the VM is paused).
pub(crate) type SharedVcpu = Arc<Mutex<VcpuFd>>;

fn lock(fd: &SharedVcpu) -> MutexGuard<'_, VcpuFd> {
    fd.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts vCPU `index` on its own thread.
pub(crate) fn spawn(
    index: u8,
    fd: SharedVcpu,
    buses: Arc<Buses>,
    lifecycle: Arc<Lifecycle>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vireo-vcpu{index}"))
        .spawn(move || run_vcpu(index, fd, &buses, &lifecycle))
}

enum Step {
    Continue,
    Interrupted,
    RingFull,
    InternalError,
    Exit(ExitReason),
}

fn run_vcpu(index: u8, shared: SharedVcpu, buses: &Buses, lifecycle: &Lifecycle) {
    let mut fd = lock(&shared);
    let run_ptr: *mut kvm_run = fd.get_kvm_run();
    KVM_RUN.with(|p| p.set(run_ptr));
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    lifecycle.register_vcpu_thread(me);

    loop {
        match lifecycle.command() {
            Command::Run => {}
            Command::Pause => {
                if let Some(reason) = complete_pending_exit(index, &mut fd, buses) {
                    lifecycle.request_exit(reason);
                    break;
                }
                drop(fd);
                lifecycle.park_vcpu();
                fd = lock(&shared);
                continue;
            }
            Command::Stop => break,
        }
        let step = dispatch(index, fd.run(), buses);
        match step {
            Step::Continue => {}
            Step::Interrupted => {
                fd.set_kvm_immediate_exit(0);
                lifecycle.throttle_sleep(THROTTLE_SLICE);
            }
            Step::RingFull => ring_full(index, buses),
            Step::InternalError => {
                let reason = internal_error(index, &mut fd);
                debug!(%reason, "vCPU stopped");
                lifecycle.request_exit(reason);
                break;
            }
            Step::Exit(reason) => {
                debug!(%reason, "vCPU exit ends the VM");
                lifecycle.request_exit(reason);
                break;
            }
        }
    }
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    if let Ok(regs) = fd.get_regs() {
        debug!(
            vcpu = index,
            rip = format_args!("{:#x}", regs.rip),
            "vCPU left its run loop"
        );
    }
    drop(fd);
    lifecycle.vcpu_exited(me);
}

/// Lets KVM complete the instruction behind the last I/O exit without entering the guest
/// (`KVM_RUN` with `immediate_exit` set returns `EINTR` after completing it), so the vCPU's
/// registers are final before it parks. An access KVM splits into further exits is
/// dispatched like any other; an exit that ends the VM is returned.
fn complete_pending_exit(index: u8, fd: &mut VcpuFd, buses: &Buses) -> Option<ExitReason> {
    fd.set_kvm_immediate_exit(1);
    let mut reason = None;
    // An MMIO access of up to 16 bytes is at most two further exits; bound the loop anyway.
    for _ in 0..8 {
        match dispatch(index, fd.run(), buses) {
            Step::Continue => continue,
            Step::RingFull => ring_full(index, buses),
            Step::Interrupted => break,
            Step::InternalError => {
                reason = Some(internal_error(index, fd));
                break;
            }
            Step::Exit(r) => {
                reason = Some(r);
                break;
            }
        }
    }
    fd.set_kvm_immediate_exit(0);
    reason
}

/// Handles one `KVM_RUN` result: I/O exits go to the buses, others become a [`Step`].
fn dispatch(index: u8, exit: Result<VcpuExit<'_>, kvm_ioctls::Error>, buses: &Buses) -> Step {
    match exit {
        Ok(VcpuExit::IoIn(port, data)) => {
            buses.pio.read(u64::from(port), data);
            Step::Continue
        }
        Ok(VcpuExit::IoOut(port, data)) => {
            buses.pio.write(u64::from(port), data);
            Step::Continue
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            buses.mmio.read(addr, data);
            Step::Continue
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            buses.mmio.write(addr, data);
            Step::Continue
        }
        Ok(VcpuExit::Shutdown) => Step::Exit(ExitReason::TripleFault { vcpu: index }),
        Ok(VcpuExit::InternalError) => Step::InternalError,
        Ok(VcpuExit::SystemEvent(kind, _)) => Step::Exit(match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
            KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
            KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestCrash { vcpu: index },
            other => ExitReason::UnexpectedExit {
                vcpu: index,
                exit: format!("system event {other}"),
            },
        }),
        Ok(VcpuExit::Unsupported(KVM_EXIT_DIRTY_RING_FULL)) => Step::RingFull,
        Ok(VcpuExit::FailEntry(reason, _)) => Step::Exit(ExitReason::FailEntry {
            vcpu: index,
            reason,
        }),
        Ok(other) => Step::Exit(ExitReason::UnexpectedExit {
            vcpu: index,
            exit: format!("{other:?}"),
        }),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Interrupted,
        Err(e) => Step::Exit(ExitReason::VcpuError {
            vcpu: index,
            error: e.to_string(),
        }),
    }
}

/// Harvests the full dirty ring of vCPU `index` so it can run on.
fn ring_full(index: u8, buses: &Buses) {
    if let Some(rings) = &buses.rings {
        rings.on_ring_full(index);
    }
}

/// Decodes KVM's internal-error report, with the instruction bytes of an
/// emulation failure.
fn internal_error(index: u8, fd: &mut VcpuFd) -> ExitReason {
    let rip = fd.get_regs().map(|r| r.rip).unwrap_or(0);
    let run = fd.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is
    // the active member of the union.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let ndata = (internal.ndata as usize).min(internal.data.len());
    let data = &internal.data[..ndata];
    if internal.suberror == KVM_INTERNAL_ERROR_EMULATION {
        let mut instruction = Vec::new();
        if ndata >= 3 && data[0] & EMULATION_FLAG_INSTRUCTION_BYTES != 0 {
            let raw: Vec<u8> = data[1..3].iter().flat_map(|w| w.to_le_bytes()).collect();
            let len = usize::from(raw[0]).min(15);
            instruction = raw[1..1 + len].to_vec();
        }
        return ExitReason::EmulationFailure {
            vcpu: index,
            rip,
            instruction,
        };
    }
    ExitReason::InternalError {
        vcpu: index,
        suberror: internal.suberror,
        data: data.to_vec(),
    }
}
