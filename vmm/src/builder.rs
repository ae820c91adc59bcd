//! Turning a launch spec into a [`Vm`]: cold boot ([`VmBuilder`]) and restore
//! ([`crate::snapshot::restore`]) share every step but the payload and the vCPUs' state.
//!
//! ```text
//!  cold boot:  memory (anonymous) ─┐                                  ┌─ load payload, boot vCPU state
//!                                  ├─► platform ─► devices ─► vCPUs ─►┤
//!  restore:    memory (snapshot) ──┘  (VM fd,     (console,          └─ saved VM, device, vCPU state
//!                                      memory slots, lifecycle,
//!                                      irqchip, PIT)  buses)
//! ```
//! Guest memory is registered before the in-kernel irqchip exists: on this workplace's hosts
//! `KVM_SET_USER_MEMORY_REGION` costs ~7 ms after `KVM_CREATE_IRQCHIP` and a fraction of a
//! millisecond before it (KVM allows either order while no vCPU exists).

use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use tracing::info;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::{cpuid, layout, vcpu_platform, InitialCpuState};
use crate::boot;
use crate::config::{probe_host_limits, DirtyLogMode, VmConfig};
use crate::console::Console;
use crate::device_manager::attach::{attach_devices, attach_tablet};
use crate::device_manager::{Bus, DeviceManager};
use crate::kvm::KvmContext;
use crate::lifecycle::Lifecycle;
use crate::memory::{self, GuestMemory};
use crate::vm::{Vm, VmError};
use crate::vnc::{VmInput, VncConsole};
use crate::vstate::dirty_ring::{self, DirtyRings};
use crate::vstate::vcpu::{self, Buses, SharedVcpu};

/// Platform facts the payload decided at cold boot, which a restore cannot re-derive (it
/// loads no payload) and so reads from the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformFlags {
    /// The payload's boot protocol defines the debug exit port (the ring-3 test guest's).
    pub debug_exit: bool,
    /// The guest boots with ACPI (a Linux kernel): ACPI sleep registers and the GED exist,
    /// and the vCPUs' LAPICs are wired for it.
    pub acpi: bool,
}

/// Builds a [`Vm`] from a [`VmConfig`], with overrides for embedders.
pub struct VmBuilder {
    config: VmConfig,
    serial_writer: Option<Box<dyn Write + Send>>,
    stdout_copy: Option<std::fs::File>,
    continuing: bool,
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
            stdout_copy: None,
            continuing: false,
            boot_cpu: None,
        }
    }

    /// Where the copy of a unix-socket console's output that the spec's `stdout: true` asks
    /// for goes, instead of a duplicate of the VMM's stdout (for embedders and tests; see
    /// [`Console::open_with`]). Without effect on any other console.
    pub fn serial_stdout_copy(mut self, file: std::fs::File) -> Self {
        self.stdout_copy = Some(file);
        self
    }

    /// Opens the serial console as for a VM that goes on from an earlier one (a reboot in
    /// place, a restore): a file console is appended to instead of truncated, so the guest
    /// keeps one log (see [`Console::open_continuing`]).
    pub fn continuing_console(mut self) -> Self {
        self.continuing = true;
        self
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
        let memory = memory::create_backed(memory_size, config.memory_backing)?;
        let platform = create_platform(&kvm, &memory, dirty_log_mode(&config))?;

        let mut plan = boot::load_payload(&memory, memory_size, &config.payload, config.vcpus)?;
        if let Some(state) = self.boot_cpu {
            plan.boot_cpu = state;
        }
        info!(format = ?plan.format, vcpus = config.vcpus, memory_mib = config.memory_mib, "payload loaded");
        if let Some(vnc) = &config.vnc {
            match plan.format {
                boot::KernelFormat::BzImage => {
                    boot::linux::announce_framebuffer(&memory, vnc.width, vnc.height)?;
                }
                boot::KernelFormat::Elf => tracing::warn!(
                    "an ELF vmlinux boots without screen_info: the guest is not told about the \
                     VNC framebuffer and shows nothing (boot the bzImage for a screen)"
                ),
                // The ring-3 test guest draws at the documented address.
                boot::KernelFormat::UserModeElf => {}
            }
        }
        let flags = PlatformFlags {
            debug_exit: plan.debug_exit,
            acpi: plan.is_linux(),
        };
        let parts = create_devices(
            platform,
            memory,
            config,
            ConsoleOpen {
                writer: self.serial_writer,
                stdout_copy: self.stdout_copy,
                continuing: self.continuing,
            },
            flags,
            Vec::new(),
        )?;
        let supported = kvm.supported_cpuid()?;
        let count = parts.config.vcpus;
        let vcpus = (0..count)
            .map(|index| {
                let fd = create_vcpu(&parts.vm_fd, index)?;
                let err = |what| {
                    move |source| VmError::Vcpu {
                        index,
                        what,
                        source,
                    }
                };
                fd.set_cpuid2(&cpuid::vcpu_cpuid(&supported, index, count))
                    .map_err(err("set CPUID"))?;
                if flags.acpi {
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
            .collect::<Result<Vec<_>, VmError>>()?;
        parts.into_vm(kvm, vcpus)
    }
}

/// The dirty-log mode a VM of `config` gets: as the spec asks, except that `auto` means the
/// bitmap for a VM with a VNC console (its refresher reads the framebuffer slot's bitmap,
/// which the dirty ring replaces; the spec refuses `ring` with `vnc`).
pub(crate) fn dirty_log_mode(config: &VmConfig) -> DirtyLogMode {
    match (config.dirty_log, &config.vnc) {
        (DirtyLogMode::Auto, Some(_)) => DirtyLogMode::Bitmap,
        (mode, _) => mode,
    }
}

/// A KVM VM with its memory slots, irqchip and PIT, and whether its vCPUs get dirty rings.
pub(crate) struct Platform {
    pub(crate) vm_fd: Arc<VmFd>,
    /// Entries per vCPU dirty ring; `None`: dirty tracking uses the bitmap.
    pub(crate) ring_entries: Option<u32>,
}

/// Creates the KVM VM around `memory`: the dirty ring (as `dirty_log` asks; before any vCPU),
/// memory slots, then the TSS, the identity map, the in-kernel irqchip and the PIT.
pub(crate) fn create_platform(
    kvm: &KvmContext,
    memory: &GuestMemory,
    dirty_log: DirtyLogMode,
) -> Result<Platform, VmError> {
    let platform = |what| move |source| VmError::Platform { what, source };
    let vm_fd = Arc::new(kvm.kvm().create_vm().map_err(platform("create a KVM VM"))?);
    let ring_entries = dirty_ring::enable(kvm.kvm(), &vm_fd, dirty_log)?;
    memory::register_with_kvm(&vm_fd, memory)?;
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
    Ok(Platform {
        vm_fd,
        ring_entries,
    })
}

/// Creates vCPU `index` of `vm_fd` (its CPUID and state are the caller's to set).
pub(crate) fn create_vcpu(vm_fd: &VmFd, index: u8) -> Result<VcpuFd, VmError> {
    vm_fd
        .create_vcpu(u64::from(index))
        .map_err(|source| VmError::Vcpu {
            index,
            what: "create the vCPU",
            source,
        })
}

/// A VM with its memory, devices and console, waiting for its vCPUs.
pub(crate) struct Parts {
    pub(crate) config: VmConfig,
    pub(crate) flags: PlatformFlags,
    pub(crate) vm_fd: Arc<VmFd>,
    pub(crate) ring_entries: Option<u32>,
    pub(crate) memory: GuestMemory,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) console: Console,
    pub(crate) devices: DeviceManager,
}

/// How [`create_devices`] opens the serial console.
pub(crate) struct ConsoleOpen {
    /// An embedder's writer instead of the configured console ([`Console::from_writer`]).
    pub(crate) writer: Option<Box<dyn Write + Send>>,
    /// Where a unix console's stdout copy goes instead of fd 1 ([`Console::open_with`]).
    pub(crate) stdout_copy: Option<std::fs::File>,
    /// The VM goes on from an earlier one (restored, received, rebooted in place): a file
    /// console is appended to.
    pub(crate) continuing: bool,
}

/// Opens the console as `console` says and creates the platform devices, the spec's disks
/// and NICs (on the taps in `taps` where given, by index), on the platform's VM. The same
/// spec and flags give the same devices in the same slots, with the same BARs and interrupt
/// lines — what a restore relies on.
pub(crate) fn create_devices(
    platform: Platform,
    memory: GuestMemory,
    mut config: VmConfig,
    console: ConsoleOpen,
    flags: PlatformFlags,
    taps: Vec<Option<vireo_net::Tap>>,
) -> Result<Parts, VmError> {
    let Platform {
        vm_fd,
        ring_entries,
    } = platform;
    let lifecycle = Arc::new(Lifecycle::new(vcpu::kick));
    let mut console = match console.writer {
        Some(w) => Console::from_writer(w),
        None => Console::open_with(&config.serial, console.continuing, console.stdout_copy)?,
    };
    let mut devices = DeviceManager::new(
        &vm_fd,
        console.take_output(),
        lifecycle.clone(),
        flags.debug_exit,
        flags.acpi,
    )?;
    attach_devices(
        &mut devices,
        &vm_fd,
        &memory,
        &mut config.disks,
        &mut config.nets,
        taps,
    )?;
    if let Some(vnc) = &config.vnc {
        devices.vnc = Some(Arc::new(start_vnc(&mut devices, &vm_fd, &memory, vnc)?));
    }
    Ok(Parts {
        config,
        flags,
        vm_fd,
        ring_entries,
        memory,
        lifecycle,
        console,
        devices,
    })
}

/// The VNC console of `vnc`: the framebuffer slot, the tablet (after the spec's devices on
/// the PCI bus), and the RFB server with viewers' input going to the i8042 and the tablet.
fn start_vnc(
    devices: &mut DeviceManager,
    vm_fd: &Arc<VmFd>,
    memory: &GuestMemory,
    vnc: &vireo_spec::VncConfig,
) -> Result<VncConsole, VmError> {
    let framebuffer = VncConsole::framebuffer(vm_fd, vnc)?;
    let tablet = attach_tablet(devices, vm_fd, memory)?;
    // Both sides are at most MAX_VNC_SIDE (4096): validated with the spec.
    let (w, h) = (
        u16::try_from(vnc.width).unwrap_or(u16::MAX),
        u16::try_from(vnc.height).unwrap_or(u16::MAX),
    );
    let keyboard = vireo_devices::legacy::KeyboardInput::new(devices.i8042.clone());
    let input = Arc::new(VmInput::new(keyboard, tablet, w, h));
    Ok(VncConsole::start(vm_fd.clone(), framebuffer, vnc, input)?)
}

impl Parts {
    /// The finished [`Vm`] (state Created) with `vcpus`, whose state is set; maps their
    /// dirty rings if the VM has them.
    pub(crate) fn into_vm(mut self, kvm: KvmContext, vcpus: Vec<VcpuFd>) -> Result<Vm, VmError> {
        let rings = match self.ring_entries {
            Some(entries) => {
                let fds: Vec<&VcpuFd> = vcpus.iter().collect();
                let sizes: Vec<u64> = self.memory.iter().map(|r| r.len()).collect();
                Some(Arc::new(DirtyRings::map(
                    self.vm_fd.clone(),
                    &fds,
                    entries,
                    &sizes,
                )?))
            }
            None => None,
        };
        let buses = Arc::new(Buses {
            pio: std::mem::replace(&mut self.devices.pio, Bus::new()),
            mmio: std::mem::replace(&mut self.devices.mmio, Bus::new()),
            rings: rings.clone(),
        });
        // The TSC rate the guest sees (a live migration checks the target's matches).
        let tsc_khz = vcpus.first().and_then(|fd| fd.get_tsc_khz().ok());
        let vcpus: Vec<SharedVcpu> = vcpus
            .into_iter()
            .map(|fd| Arc::new(Mutex::new(fd)))
            .collect();
        Ok(Vm::assemble(crate::vm::VmParts {
            config: self.config,
            rings,
            tsc_khz,
            flags: self.flags,
            lifecycle: self.lifecycle,
            vcpus,
            buses,
            devices: self.devices,
            console: self.console,
            vm_fd: self.vm_fd,
            memory: self.memory,
            kvm,
        }))
    }
}
