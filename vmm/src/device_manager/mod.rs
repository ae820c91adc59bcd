//! Builds the platform devices and places them on the port-I/O and MMIO buses.
//!
//! Legacy devices on port I/O: COM1 (IRQ 4 through an irqfd into the
//! in-kernel IOAPIC), the i8042 reset line, the ACPI sleep registers for
//! guests booted with ACPI, and — only for payloads whose boot protocol
//! defines it — the debug exit port. The MMIO bus is empty
//! until PCI devices arrive; its unclaimed reads return all-ones.

pub mod bus;

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use thiserror::Error;
use vireo_devices::legacy::{debug_exit, i8042, serial, DebugExit, Serial8250, I8042};
use vireo_devices::acpi_pm::{AcpiSleep, ACPI_SLEEP_PORT, ACPI_SLEEP_PORT_SIZE};
use vireo_devices::{ExitHandler, IrqLine};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use bus::{Bus, BusError, SharedDevice};

/// Why devices could not be set up.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// Placing a device on a bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Creating an eventfd failed.
    #[error("cannot create an interrupt eventfd: {0}")]
    EventFd(#[source] std::io::Error),
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
}

impl DeviceManager {
    /// Creates the legacy devices and wires their interrupts into `vm`.
    pub fn new(
        vm: &VmFd,
        console: Box<dyn std::io::Write + Send>,
        exit: Arc<dyn ExitHandler>,
        debug_exit_port: bool,
        acpi: bool,
    ) -> Result<Self, DeviceError> {
        let mut pio = Bus::new();
        let irq_event = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&irq_event, serial::COM1_IRQ)
            .map_err(|source| DeviceError::Irqfd {
                gsi: serial::COM1_IRQ,
                source,
            })?;
        let serial_dev = Arc::new(Mutex::new(Serial8250::new(
            IrqLine::new(irq_event),
            console,
        )));
        pio.insert(
            serial_dev.clone(),
            serial::COM1_PORT_BASE,
            serial::SERIAL_PORT_SIZE,
        )?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            i8042::I8042_PORT_BASE,
            i8042::I8042_PORT_SIZE,
        )?;
        if acpi {
            pio.insert(
                Arc::new(Mutex::new(AcpiSleep::new(exit.clone()))),
                ACPI_SLEEP_PORT,
                ACPI_SLEEP_PORT_SIZE,
            )?;
        }
        if debug_exit_port {
            pio.insert(
                Arc::new(Mutex::new(DebugExit::new(exit))),
                debug_exit::DEBUG_EXIT_PORT,
                debug_exit::DEBUG_EXIT_PORT_SIZE,
            )?;
        }
        Ok(Self {
            pio,
            mmio: Bus::new(),
            serial: serial_dev,
        })
    }
}
