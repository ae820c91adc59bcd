//! A running VM: built from a [`VmConfig`] by [`VmBuilder`], then started,
//! paused, resumed and waited on through typed methods (the control API).
//!
//! ```text
//!  VmConfig ──VmBuilder::build──► Vm (Created) ──start──► vCPU threads
//!     │                              │                       │ exits
//!     │ KvmContext · GuestMemory · DeviceManager · BootPlan   ▼
//!     └──────────────────────────────────────────────► Lifecycle ──► ExitReason
//! ```

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::VmFd;
use thiserror::Error;
use tracing::info;

use crate::boot::BootError;
use crate::builder::PlatformFlags;
use crate::config::{ConfigError, VmConfig};
use crate::console::{Console, ConsoleError};
use crate::device_manager::{DeviceError, DeviceManager};
use crate::kvm::{KvmContext, KvmError};
use crate::lifecycle::{ExitReason, Lifecycle, TransitionError, VmState};
use crate::memory::{GuestMemory, MemoryError};
use crate::vstate::dirty_ring::{DirtyRingError, DirtyRings};
use crate::vstate::vcpu::{self, Buses, SharedVcpu};

pub use crate::builder::VmBuilder;

/// Why a VM could not be built or driven.
#[derive(Debug, Error)]
pub enum VmError {
    /// KVM is missing or lacks a capability.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The configuration does not fit this host.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The payload could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Devices could not be set up.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The console could not be opened.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// A KVM VM-level setup call failed.
    #[error("cannot {what}: {source}")]
    Platform {
        /// What was being set up.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// A KVM vCPU setup call failed.
    #[error("cannot {what} for vCPU {index}: {source}")]
    Vcpu {
        /// The vCPU.
        index: u8,
        /// What was being set up.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// A VMM thread could not be started.
    #[error("cannot start a VMM thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The guest has no ACPI power button.
    #[error("the guest was not booted with ACPI, so it has no power button")]
    NoPowerButton,
    /// A lifecycle request in the wrong state.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The dirty ring could not be set up.
    #[error(transparent)]
    DirtyRing(#[from] DirtyRingError),
    /// The VNC console could not be set up.
    #[error(transparent)]
    Vnc(#[from] crate::vnc::VncError),
}

/// The parts a builder assembles into a [`Vm`].
pub(crate) struct VmParts {
    pub(crate) config: VmConfig,
    pub(crate) rings: Option<Arc<DirtyRings>>,
    pub(crate) tsc_khz: Option<u32>,
    pub(crate) flags: PlatformFlags,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) vcpus: Vec<SharedVcpu>,
    pub(crate) buses: Arc<Buses>,
    pub(crate) devices: DeviceManager,
    pub(crate) console: Console,
    pub(crate) vm_fd: Arc<VmFd>,
    pub(crate) memory: GuestMemory,
    pub(crate) kvm: KvmContext,
}

/// A virtual machine. All methods take `&self`, so a `Vm` can be shared
/// (e.g. in an `Arc`) between the thread that waits on it and a control API.
pub struct Vm {
    config: VmConfig,
    flags: PlatformFlags,
    lifecycle: Arc<Lifecycle>,
    /// Every vCPU; a vCPU's thread holds its lock except while parked.
    vcpus: Vec<SharedVcpu>,
    /// The vCPUs' dirty rings (the spec's `dirty_log` and the host decide); `None`: bitmap.
    rings: Option<Arc<DirtyRings>>,
    /// The guest's TSC rate in kHz, as KVM reported it when the vCPUs were created.
    tsc_khz: Option<u32>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    buses: Arc<Buses>,
    /// The devices (the buses themselves live in `buses`).
    devices: DeviceManager,
    /// Serializes [`Vm::pause`], [`Vm::resume`] and snapshots, so devices are paused
    /// exactly while the vCPUs are.
    transition: Mutex<()>,
    /// [`Vm::start`] starts the vCPUs parked (a restore with `paused`).
    start_paused: std::sync::atomic::AtomicBool,
    /// The current or last outgoing live migration.
    migration: Mutex<Option<Arc<crate::migration::Outgoing>>>,
    console: Mutex<Console>,
    console_output: crate::console::ConsoleHandle,
    // Dropped before `memory`: KVM stops using the slots before they unmap.
    vm_fd: Arc<VmFd>,
    // The framebuffer's mapping: as for `memory`, unmapped only after the VM fd is closed.
    _vnc_keepalive: Option<Arc<crate::vnc::VncConsole>>,
    memory: GuestMemory,
    kvm: KvmContext,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("config", &self.config)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Vm {
    pub(crate) fn assemble(p: VmParts) -> Self {
        let console_output = p.console.handle();
        let vnc_keepalive = p.devices.vnc.clone();
        Self {
            config: p.config,
            flags: p.flags,
            lifecycle: p.lifecycle,
            vcpus: p.vcpus,
            rings: p.rings,
            tsc_khz: p.tsc_khz,
            threads: Mutex::new(Vec::new()),
            buses: p.buses,
            devices: p.devices,
            transition: Mutex::new(()),
            start_paused: std::sync::atomic::AtomicBool::new(false),
            migration: Mutex::new(None),
            console: Mutex::new(p.console),
            console_output,
            vm_fd: p.vm_fd,
            _vnc_keepalive: vnc_keepalive,
            memory: p.memory,
            kvm: p.kvm,
        }
    }

    /// The platform facts the payload decided (saved in snapshots).
    pub(crate) fn flags(&self) -> PlatformFlags {
        self.flags
    }

    /// The vCPUs (lock one only while the VM is paused or not started).
    pub(crate) fn vcpu_fds(&self) -> &[SharedVcpu] {
        &self.vcpus
    }

    /// The dirty rings, if the VM tracks dirty pages with them.
    pub(crate) fn dirty_rings(&self) -> Option<&Arc<DirtyRings>> {
        self.rings.as_ref()
    }

    /// The handle that injects pointer events into the VM's virtio-input tablet, if it has
    /// one.
    pub fn tablet(&self) -> Option<vireo_devices::virtio::input::TabletHandle> {
        self.devices.tablet.clone()
    }

    /// The guest's TSC rate in kHz (`KVM_GET_TSC_KHZ` of vCPU 0 when it was created).
    pub fn tsc_khz(&self) -> Option<u32> {
        self.tsc_khz
    }

    /// The lifecycle (for migration's throttle and final stop).
    pub(crate) fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The current or last outgoing migration.
    pub(crate) fn migration_slot(&self) -> &Mutex<Option<Arc<crate::migration::Outgoing>>> {
        &self.migration
    }

    /// The devices.
    pub(crate) fn devices(&self) -> &DeviceManager {
        &self.devices
    }

    /// The open `/dev/kvm`.
    pub(crate) fn kvm(&self) -> &KvmContext {
        &self.kvm
    }

    /// Holds off pause, resume and other snapshots while the caller works on a stable VM.
    pub(crate) fn transition_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.transition)
    }

    /// Makes [`Vm::start`] start this (restored) VM paused.
    pub(crate) fn set_start_paused(&self, paused: bool) {
        self.start_paused
            .store(paused, std::sync::atomic::Ordering::SeqCst);
    }

    /// The VM's PS/2 keyboard: a cloneable handle any thread (a viewer's
    /// input thread) can send key events through. Events reach the guest
    /// only while its keyboard is enabled; a full queue drops them whole.
    pub fn keyboard(&self) -> vireo_devices::legacy::KeyboardInput {
        vireo_devices::legacy::KeyboardInput::new(self.devices.i8042.clone())
    }

    /// The configuration this VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Guest memory (for embedders, tests and snapshots).
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The KVM VM handle.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// Counters of every virtio device, in PCI slot order: (device name,
    /// (counter, value) pairs). Readable at any time from any thread.
    pub fn device_counters(&self) -> Vec<(&'static str, Vec<(&'static str, u64)>)> {
        self.devices
            .virtio
            .iter()
            .map(|d| {
                let d = lock(d);
                (d.name(), d.counters())
            })
            .collect()
    }

    /// Counters of the serial console's output: bytes the guest wrote,
    /// delivered, dropped because the console's reader did not keep up, …
    /// Readable at any time from any thread; never waits for the console.
    /// Where the VM's VNC console listens (`HOST:PORT` as bound, or `unix:PATH`), if it has one.
    pub fn vnc_address(&self) -> Option<String> {
        self.devices.vnc.as_ref().map(|v| v.address().to_owned())
    }

    /// The VM's VNC console, if its spec has one: the screen as viewers see it, the
    /// framebuffer memory and the viewer count.
    pub fn vnc(&self) -> Option<&Arc<crate::vnc::VncConsole>> {
        self.devices.vnc.as_ref()
    }

    pub fn console_counters(&self) -> crate::console::ConsoleCounters {
        self.console_output.counters()
    }

    /// The lifecycle state.
    pub fn state(&self) -> VmState {
        self.lifecycle.state()
    }

    /// Starts every vCPU and the console input. Created → Running; or Created → Paused for a
    /// VM restored with [`crate::snapshot::RestoreOptions::paused`], whose vCPU threads then
    /// park before their first guest instruction (its devices are already quiesced).
    pub fn start(&self) -> Result<(), VmError> {
        let paused = self.start_paused.load(std::sync::atomic::Ordering::SeqCst);
        vcpu::install_kick_handler().map_err(VmError::Signal)?;
        self.lifecycle.begin_start(self.vcpus.len(), paused)?;
        let mut threads = lock(&self.threads);
        for (index, fd) in (0u8..).zip(&self.vcpus) {
            match vcpu::spawn(
                index,
                fd.clone(),
                self.buses.clone(),
                self.lifecycle.clone(),
            ) {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    // Account for the vCPUs that never started, then stop.
                    let missing = self.config.vcpus.saturating_sub(index);
                    for _ in 0..missing {
                        // SAFETY: pthread_self has no preconditions.
                        self.lifecycle.vcpu_exited(unsafe { libc::pthread_self() });
                    }
                    self.lifecycle.request_exit(ExitReason::Stopped);
                    return Err(VmError::Thread(e));
                }
            }
        }
        drop(threads);
        lock(&self.console).start_input(self.devices.serial.clone())?;
        info!(paused, "VM started");
        Ok(())
    }

    /// Running → Paused. Parks every vCPU, then quiesces every virtio
    /// device at a request boundary (requests in flight complete; frames
    /// waiting in a tap stay there). Returns once nothing — no vCPU, no
    /// device worker — writes guest memory or a disk until [`Vm::resume`].
    pub fn pause(&self) -> Result<(), VmError> {
        let _transition = lock(&self.transition);
        self.pause_locked()
    }

    /// [`Vm::pause`] with the transition lock already held.
    pub(crate) fn pause_locked(&self) -> Result<(), VmError> {
        self.lifecycle.pause()?;
        // The vCPUs are parked, so no MMIO exit holds a device lock or
        // touches a transport while the workers are paused.
        for dev in &self.devices.virtio {
            lock(dev).pause();
        }
        info!("VM paused");
        Ok(())
    }

    /// Paused → Running. Devices resume first (handling what became
    /// pending while paused), then the vCPUs.
    pub fn resume(&self) -> Result<(), VmError> {
        let _transition = lock(&self.transition);
        self.resume_locked()
    }

    /// [`Vm::resume`] with the transition lock already held.
    pub(crate) fn resume_locked(&self) -> Result<(), VmError> {
        if self.lifecycle.state() == VmState::Paused {
            for dev in &self.devices.virtio {
                lock(dev).resume();
            }
        }
        self.lifecycle.resume()?;
        info!("VM resumed");
        Ok(())
    }

    /// Presses the ACPI power button: asks the guest to shut down cleanly.
    /// Fails if the guest was not booted with ACPI (e.g. a user-mode ELF).
    pub fn press_power_button(&self) -> Result<(), VmError> {
        let ged = self.devices.ged.as_ref().ok_or(VmError::NoPowerButton)?;
        lock(ged).press_power_button().map_err(VmError::Thread)?;
        info!("ACPI power button pressed");
        Ok(())
    }

    /// Stops the VM from the host side; the exit reason is
    /// [`ExitReason::Stopped`] unless the guest had already exited.
    pub fn shutdown(&self) -> ExitReason {
        self.lifecycle.request_exit(ExitReason::Stopped);
        self.wait()
    }

    /// Blocks until the VM stops and all vCPU threads have ended, then gives
    /// the serial console at most [`FLUSH_TIMEOUT`](crate::console::FLUSH_TIMEOUT)
    /// to deliver output still queued (a stuck console reader cannot hold
    /// it up longer).
    pub fn wait(&self) -> ExitReason {
        let reason = self.lifecycle.wait_for_exit();
        for handle in lock(&self.threads).drain(..) {
            let _ = handle.join();
        }
        // Give the console's writer a bounded time to deliver the last output.
        if !self.console_output.flush(crate::console::FLUSH_TIMEOUT) {
            let counters = self.console_output.counters();
            tracing::warn!(?counters, "serial output not fully delivered");
        }
        if let Some(vnc) = &self.devices.vnc {
            vnc.stop();
        }
        // Stop device workers and make completed disk writes durable (qcow2
        // metadata caches included) before the process can exit.
        for (index, dev) in self.devices.virtio.iter().enumerate() {
            let mut dev = lock(dev);
            dev.reset();
            info!(index, device = dev.name(), counters = ?dev.counters(), "device counters");
        }
        info!(%reason, "VM stopped");
        reason
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
