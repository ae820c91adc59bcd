//! A running VM: built from a [`VmConfig`] by [`VmBuilder`], then started,
//! paused, resumed and waited on through typed methods (the control API).
//!
//! ```text
//!  VmConfig ──VmBuilder::build──► Vm (Created) ──start──► vCPU threads
//!     │                              │                       │ exits
//!     │ KvmContext · GuestMemory · DeviceManager · BootPlan   ▼
//!     └──────────────────────────────────────────────► Lifecycle ──► ExitReason
//! ```

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{VcpuFd, VmFd};
use thiserror::Error;
use tracing::info;

use crate::arch::x86_64::{cpuid, layout, vcpu_platform, InitialCpuState};
use crate::boot::{self, BootError, BootPlan};
use crate::config::{probe_host_limits, ConfigError, VmConfig};
use crate::console::{Console, ConsoleError};
use crate::device_manager::attach::attach_devices;
use crate::device_manager::{DeviceError, DeviceManager};
use crate::kvm::{KvmContext, KvmError};
use crate::lifecycle::{ExitReason, Lifecycle, TransitionError, VmState};
use crate::memory::{self, GuestMemory, MemoryError};
use crate::vstate::vcpu::{self, Buses};
use vireo_devices::virtio::VirtioPciDevice;

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
}

/// Builds a [`Vm`] from a [`VmConfig`], with overrides for embedders.
pub struct VmBuilder {
    config: VmConfig,
    serial_writer: Option<Box<dyn Write + Send>>,
    boot_cpu: Option<InitialCpuState>,
}

impl std::fmt::Debug for VmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl VmBuilder {
    /// Starts from `config`.
    pub fn new(config: VmConfig) -> Self {
        Self {
            config,
            serial_writer: None,
            boot_cpu: None,
        }
    }

    /// Sends COM1 output to `writer` instead of the configured console (the
    /// guest then has no serial input). `writer` is called on the vCPU thread
    /// with the UART lock held, so it must not block (see
    /// [`Console::from_writer`]).
    pub fn serial_writer(mut self, writer: Box<dyn Write + Send>) -> Self {
        self.serial_writer = Some(writer);
        self
    }

    /// Starts vCPU 0 from `state` instead of the state the payload's boot
    /// protocol chose. The payload is still loaded into memory first, so a
    /// firmware or unit-test loader can point RIP anywhere in it.
    pub fn initial_cpu_state(mut self, state: InitialCpuState) -> Self {
        self.boot_cpu = Some(state);
        self
    }

    /// Creates the VM: checks KVM and the config, allocates and loads guest
    /// memory, creates devices and vCPUs. Nothing runs until [`Vm::start`].
    pub fn build(self) -> Result<Vm, VmError> {
        let kvm = KvmContext::open()?;
        let config = self.config;
        config.validate_on(&probe_host_limits(kvm.max_vcpus()))?;
        let memory_size = config.memory_bytes();

        let vm_fd = Arc::new(kvm.kvm().create_vm().map_err(|source| VmError::Platform {
            what: "create a KVM VM",
            source,
        })?);
        // Guest memory is registered before the in-kernel irqchip exists: on this workplace's
        // hosts KVM_SET_USER_MEMORY_REGION costs ~7 ms after KVM_CREATE_IRQCHIP and a fraction
        // of a millisecond before it (KVM allows either order while no vCPU exists).
        let memory = memory::create_guest_memory(memory_size)?;
        memory::register_with_kvm(&vm_fd, &memory)?;
        let platform = |what| move |source| VmError::Platform { what, source };
        vm_fd
            .set_tss_address(layout::KVM_TSS_ADDR as usize)
            .map_err(platform("set the TSS address"))?;
        vm_fd
            .set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
            .map_err(platform("set the identity map address"))?;
        vm_fd
            .create_irq_chip()
            .map_err(platform("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd
            .create_pit2(pit)
            .map_err(platform("create the in-kernel PIT"))?;

        let mut plan = boot::load_payload(&memory, memory_size, &config.payload, config.vcpus)?;
        if let Some(state) = self.boot_cpu {
            plan.boot_cpu = state;
        }
        info!(format = ?plan.format, vcpus = config.vcpus, memory_mib = config.memory_mib, "payload loaded");

        let lifecycle = Arc::new(Lifecycle::new(vcpu::kick));
        let mut console = match self.serial_writer {
            Some(w) => Console::from_writer(w),
            None => Console::open(&config.serial)?,
        };
        let mut devices = DeviceManager::new(
            &vm_fd,
            console.take_output(),
            lifecycle.clone(),
            plan.debug_exit,
            plan.is_linux(),
        )?;
        attach_devices(&mut devices, &vm_fd, &memory, &config.disks, &config.nets)?;
        let vcpus = create_vcpus(&kvm, &vm_fd, config.vcpus, &plan)?;
        let serial = devices.serial.clone();
        let virtio = devices.virtio.clone();
        let ged = devices.ged.clone();
        Ok(Vm {
            ged,
            virtio,
            transition: Mutex::new(()),
            config,
            lifecycle,
            pending_vcpus: Mutex::new(vcpus),
            threads: Mutex::new(Vec::new()),
            buses: Arc::new(Buses {
                pio: devices.pio,
                mmio: devices.mmio,
            }),
            serial,
            console_output: console.handle(),
            console: Mutex::new(console),
            vm_fd,
            memory,
            _kvm: kvm,
        })
    }
}

fn create_vcpus(
    kvm: &KvmContext,
    vm_fd: &VmFd,
    count: u8,
    plan: &BootPlan,
) -> Result<Vec<VcpuFd>, VmError> {
    let supported = kvm.supported_cpuid()?;
    (0..count)
        .map(|index| {
            let err = |what| {
                move |source| VmError::Vcpu {
                    index,
                    what,
                    source,
                }
            };
            let fd = vm_fd
                .create_vcpu(u64::from(index))
                .map_err(err("create the vCPU"))?;
            fd.set_cpuid2(&cpuid::vcpu_cpuid(&supported, index, count))
                .map_err(err("set CPUID"))?;
            if plan.is_linux() {
                vcpu_platform::setup_linux_vcpu(index, &fd)
                    .map_err(err("set up the local APIC"))?;
            }
            if index == 0 {
                plan.boot_cpu
                    .apply(&fd)
                    .map_err(err("set the initial register state"))?;
            }
            Ok(fd)
        })
        .collect()
}

/// A virtual machine. All methods take `&self`, so a `Vm` can be shared
/// (e.g. in an `Arc`) between the thread that waits on it and a control API.
pub struct Vm {
    config: VmConfig,
    lifecycle: Arc<Lifecycle>,
    pending_vcpus: Mutex<Vec<VcpuFd>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    buses: Arc<Buses>,
    serial: Arc<Mutex<vireo_devices::legacy::Serial8250>>,
    ged: Option<Arc<Mutex<vireo_devices::acpi_ged::AcpiGed>>>,
    virtio: Vec<Arc<Mutex<VirtioPciDevice>>>,
    /// Serializes [`Vm::pause`] and [`Vm::resume`], so devices are paused
    /// exactly while the vCPUs are.
    transition: Mutex<()>,
    console: Mutex<Console>,
    console_output: crate::console::ConsoleHandle,
    // Dropped before `memory`: KVM stops using the slots before they unmap.
    vm_fd: Arc<VmFd>,
    memory: GuestMemory,
    _kvm: KvmContext,
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
        self.virtio
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
    pub fn console_counters(&self) -> crate::console::ConsoleCounters {
        self.console_output.counters()
    }

    /// The lifecycle state.
    pub fn state(&self) -> VmState {
        self.lifecycle.state()
    }

    /// Starts every vCPU and the console input. Created → Running.
    pub fn start(&self) -> Result<(), VmError> {
        vcpu::install_kick_handler().map_err(VmError::Signal)?;
        let fds: Vec<VcpuFd> = std::mem::take(&mut *lock(&self.pending_vcpus));
        self.lifecycle.begin_start(fds.len())?;
        let mut threads = lock(&self.threads);
        for (index, fd) in (0u8..).zip(fds) {
            match vcpu::spawn(index, fd, self.buses.clone(), self.lifecycle.clone()) {
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
        lock(&self.console).start_input(self.serial.clone())?;
        info!("VM started");
        Ok(())
    }

    /// Running → Paused. Parks every vCPU, then quiesces every virtio
    /// device at a request boundary (requests in flight complete; frames
    /// waiting in a tap stay there). Returns once nothing — no vCPU, no
    /// device worker — writes guest memory or a disk until [`Vm::resume`].
    pub fn pause(&self) -> Result<(), VmError> {
        let _transition = lock(&self.transition);
        self.lifecycle.pause()?;
        // The vCPUs are parked, so no MMIO exit holds a device lock or
        // touches a transport while the workers are paused.
        for dev in &self.virtio {
            lock(dev).pause();
        }
        info!("VM paused");
        Ok(())
    }

    /// Paused → Running. Devices resume first (handling what became
    /// pending while paused), then the vCPUs.
    pub fn resume(&self) -> Result<(), VmError> {
        let _transition = lock(&self.transition);
        if self.lifecycle.state() == VmState::Paused {
            for dev in &self.virtio {
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
        let ged = self.ged.as_ref().ok_or(VmError::NoPowerButton)?;
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
        // Stop device workers and make completed disk writes durable (qcow2
        // metadata caches included) before the process can exit.
        for (index, dev) in self.virtio.iter().enumerate() {
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
