//! Builds the platform devices and places them on the port-I/O and MMIO buses.
//!
//! Legacy devices on port I/O: COM1 (IRQ 4 through an irqfd into the
//! in-kernel IOAPIC), the i8042 PS/2 controller and keyboard (IRQ 1, and the
//! reset line), the CMOS RTC, the ACPI sleep registers for
//! guests booted with ACPI, and — only for payloads whose boot protocol
//! defines it — the debug exit port. The MMIO bus is empty
//! but for the PCIe ECAM window; unclaimed MMIO reads return all-ones. The PCI
//! root bus holds the host bridge at 00:00.0, also reachable via 0xcf8/0xcfc.
//! virtio devices are added after it ([`DeviceManager::add_virtio`]) as
//! virtio-pci functions: BAR0 from the 32-bit window on the MMIO bus, queue
//! notify addresses as KVM ioeventfds, MSI-X vectors as irqfds with GSI
//! routes ([`msi`]).

pub mod attach;
pub mod bus;
pub mod msi;
pub mod pci_allocator;
pub mod persist;

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use thiserror::Error;
use tracing::info;
use vireo_devices::acpi_ged::{AcpiGed, GED_EVENT_PORT, GED_EVENT_PORT_SIZE, GED_IRQ};
use vireo_devices::acpi_pm::{AcpiSleep, ACPI_SLEEP_PORT, ACPI_SLEEP_PORT_SIZE};
use vireo_devices::legacy::{cmos, debug_exit, i8042, serial, Cmos, DebugExit, Serial8250, I8042};
use vireo_devices::virtio::{GuestMemory, VirtioDevice, VirtioPciDevice};
use vireo_devices::{ExitHandler, IrqLine};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use bus::{Bus, BusError, SharedDevice};
pub use msi::{GsiRouter, KvmMsiVectors};
pub use pci_allocator::BarAllocator;

use crate::arch::x86_64::layout::{PCI_ECAM_SIZE, PCI_ECAM_START};
use vireo_devices::pci::config_io::{PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_SIZE};
use vireo_devices::pci::{PciConfigIo, PciEcam, PciHostBridge, PciRoot};

/// The kinds of device a launch spec lists, which have stable ids `disk<N>` and `net<N>`
/// (N counting that kind in the spec's order): the ids of `vm.info`, of saved device state
/// and of `vireo restore --disk disk0=…` overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecDevice {
    /// A virtio-blk disk of `disks`.
    Disk,
    /// A virtio-net NIC of `nets`.
    Net,
}

impl SpecDevice {
    fn prefix(self) -> &'static str {
        match self {
            SpecDevice::Disk => "disk",
            SpecDevice::Net => "net",
        }
    }

    /// The id of the `index`th device of this kind.
    pub fn id(self, index: usize) -> String {
        format!("{}{index}", self.prefix())
    }

    /// The index an id of this kind names (`None` for another kind or a malformed id).
    pub fn index_of(self, id: &str) -> Option<usize> {
        id.strip_prefix(self.prefix())?.parse().ok()
    }
}

/// Why devices could not be set up.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// Placing a device on a bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The PCI root bus refused a device.
    #[error(transparent)]
    Pci(#[from] vireo_devices::pci::PciRootError),
    /// The BAR allocator could not be set up or is exhausted.
    #[error("PCI BAR allocation failed: {0}")]
    Bar(String),
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The virtio-pci transport could not be created.
    #[error(transparent)]
    Transport(#[from] vireo_devices::virtio::pci_transport::TransportError),
    /// A disk image could not be opened.
    #[error("disk {index} ({path}): {source}")]
    Disk {
        /// Position in the spec's disk list.
        index: usize,
        /// Image path.
        path: String,
        /// Why.
        source: vireo_block::BlockError,
    },
    /// A tap could not be opened.
    #[error("network interface {index} (tap {tap}): {source}")]
    Net {
        /// Position in the spec's NIC list.
        index: usize,
        /// Tap name.
        tap: String,
        /// Why.
        source: vireo_net::NetError,
    },
    /// KVM refused an ioeventfd.
    #[error("cannot register the queue notify ioeventfd at {addr:#x}: {source}")]
    Ioeventfd {
        /// The notify address.
        addr: u64,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// KVM refused an irqfd.
    #[error("cannot register irqfd for GSI {gsi}: {source}")]
    Irqfd {
        /// The interrupt line.
        gsi: u32,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
}

/// The VM's buses and the devices other parts of the VMM talk to directly.
#[derive(Debug)]
pub struct DeviceManager {
    /// Port I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// COM1, shared with the console input pump.
    pub serial: Arc<Mutex<Serial8250>>,
    /// PCI bus 0, reachable through 0xcf8/0xcfc and the ECAM window.
    pub pci_root: Arc<Mutex<PciRoot>>,
    /// Addresses for PCI BARs in the 32-bit MMIO window.
    pub bar_allocator: BarAllocator,
    /// The ACPI Generic Event Device (power button), for ACPI guests.
    pub ged: Option<Arc<Mutex<AcpiGed>>>,
    /// The VM-wide GSI routing table (MSI routes of PCI devices).
    pub gsi_router: Arc<GsiRouter>,
    /// virtio-pci functions, in slot order.
    pub virtio: Vec<Arc<Mutex<VirtioPciDevice>>>,
    /// The virtio-input tablet's event handle, if the VM has one ([`attach::attach_tablet`]).
    pub tablet: Option<vireo_devices::virtio::input::TabletHandle>,
    /// The i8042 controller and its keyboard (fed by
    /// [`vireo_devices::legacy::KeyboardInput`]).
    pub i8042: Arc<Mutex<I8042>>,
    /// The CMOS RTC.
    pub cmos: Arc<Mutex<Cmos>>,
    /// The ACPI sleep registers, for ACPI guests.
    pub acpi_sleep: Option<Arc<Mutex<AcpiSleep>>>,
    /// The 0xcf8/0xcfc configuration mechanism (holds the address latch).
    pub pci_config_io: Arc<Mutex<PciConfigIo>>,
    /// The host bridge at 00:00.0.
    pub host_bridge: Arc<Mutex<PciHostBridge>>,
    /// The VNC console (framebuffer, refresher, RFB server) of a VM with `vnc` in its spec.
    pub vnc: Option<Arc<crate::vnc::VncConsole>>,
}

/// Creates an eventfd and registers it with KVM as the irqfd of `gsi`.
fn irq_line(vm: &VmFd, gsi: u32) -> Result<IrqLine, DeviceError> {
    let event = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
    vm.register_irqfd(&event, gsi)
        .map_err(|source| DeviceError::Irqfd { gsi, source })?;
    Ok(IrqLine::new(event))
}

impl DeviceManager {
    /// Creates the legacy devices and wires their interrupts into `vm`.
    pub fn new(
        vm_fd: &Arc<VmFd>,
        console: Box<dyn std::io::Write + Send>,
        exit: Arc<dyn ExitHandler>,
        debug_exit_port: bool,
        acpi: bool,
    ) -> Result<Self, DeviceError> {
        let vm: &VmFd = vm_fd;
        let mut pio = Bus::new();
        let serial_dev = Arc::new(Mutex::new(Serial8250::new(
            irq_line(vm, serial::COM1_IRQ)?,
            console,
        )));
        pio.insert(
            serial_dev.clone(),
            serial::COM1_PORT_BASE,
            serial::SERIAL_PORT_SIZE,
        )?;
        let i8042_dev = Arc::new(Mutex::new(I8042::new(
            exit.clone(),
            irq_line(vm, i8042::I8042_KBD_IRQ)?,
        )));
        pio.insert(
            i8042_dev.clone(),
            i8042::I8042_PORT_BASE,
            i8042::I8042_PORT_SIZE,
        )?;
        let cmos_dev = Arc::new(Mutex::new(Cmos::default()));
        pio.insert(cmos_dev.clone(), cmos::CMOS_PORT_BASE, cmos::CMOS_PORT_SIZE)?;
        let mut ged = None;
        let mut acpi_sleep = None;
        if acpi {
            let sleep = Arc::new(Mutex::new(AcpiSleep::new(exit.clone())));
            pio.insert(sleep.clone(), ACPI_SLEEP_PORT, ACPI_SLEEP_PORT_SIZE)?;
            acpi_sleep = Some(sleep);
            let dev = Arc::new(Mutex::new(AcpiGed::new(irq_line(vm, GED_IRQ)?)));
            pio.insert(dev.clone(), GED_EVENT_PORT, GED_EVENT_PORT_SIZE)?;
            ged = Some(dev);
        }
        if debug_exit_port {
            pio.insert(
                Arc::new(Mutex::new(DebugExit::new(exit))),
                debug_exit::DEBUG_EXIT_PORT,
                debug_exit::DEBUG_EXIT_PORT_SIZE,
            )?;
        }
        let mut root = PciRoot::new();
        let host_bridge = Arc::new(Mutex::new(PciHostBridge::default()));
        root.add_device(host_bridge.clone())
            .map_err(DeviceError::Pci)?;
        let pci_root = Arc::new(Mutex::new(root));
        let pci_config_io = Arc::new(Mutex::new(PciConfigIo::new(pci_root.clone())));
        pio.insert(
            pci_config_io.clone(),
            PCI_CONFIG_IO_BASE,
            PCI_CONFIG_IO_SIZE,
        )?;
        let mut mmio = Bus::new();
        mmio.insert(
            Arc::new(Mutex::new(PciEcam::new(pci_root.clone()))),
            PCI_ECAM_START,
            PCI_ECAM_SIZE,
        )?;
        Ok(Self {
            pio,
            mmio,
            serial: serial_dev,
            pci_root,
            bar_allocator: BarAllocator::new()?,
            ged,
            gsi_router: Arc::new(GsiRouter::new(vm_fd.clone())),
            virtio: Vec::new(),
            tablet: None,
            i8042: i8042_dev,
            cmos: cmos_dev,
            acpi_sleep,
            pci_config_io,
            host_bridge,
            vnc: None,
        })
    }

    /// Adds `device` as a virtio-pci function in the next free slot and
    /// returns the slot.
    pub fn add_virtio(
        &mut self,
        vm: &VmFd,
        device: Box<dyn VirtioDevice>,
        mem: &GuestMemory,
    ) -> Result<u8, DeviceError> {
        use vireo_devices::virtio::pci_transport::BAR_SIZE;
        let vectors = Arc::new(KvmMsiVectors::new(
            self.gsi_router.clone(),
            device.queue_max_sizes().len() + 1,
        )?);
        let bar = self.bar_allocator.allocate(BAR_SIZE)?;
        let bar32 = u32::try_from(bar).map_err(|_| DeviceError::Bar(format!("{bar:#x}")))?;
        let name = device.name();
        let dev = VirtioPciDevice::new(device, mem.clone(), bar32, vectors)?;
        for (addr, fd) in dev.ioeventfds() {
            vm.register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
                .map_err(|source| DeviceError::Ioeventfd { addr, source })?;
        }
        let dev = Arc::new(Mutex::new(dev));
        self.mmio.insert(dev.clone(), bar, BAR_SIZE)?;
        let slot = self
            .pci_root
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_device(dev.clone())?;
        info!(
            device = name,
            slot,
            bar = format_args!("{bar:#x}"),
            "virtio-pci device added"
        );
        self.virtio.push(dev);
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::SpecDevice;

    #[test]
    fn spec_device_ids_round_trip_and_keep_kinds_apart() {
        assert_eq!(SpecDevice::Disk.id(0), "disk0");
        assert_eq!(SpecDevice::Net.id(12), "net12");
        assert_eq!(SpecDevice::Disk.index_of("disk3"), Some(3));
        assert_eq!(SpecDevice::Disk.index_of("net3"), None);
        assert_eq!(SpecDevice::Net.index_of("net"), None);
        assert_eq!(SpecDevice::Net.index_of("net-1"), None);
    }
}
