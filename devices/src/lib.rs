//! Vireo device models.
//!
//! Every device here is a pure model: it is handed its backends (an output
//! writer, an interrupt line, an exit handler) and never opens files, sockets
//! or taps by path. The VMM places devices on its port-I/O or MMIO bus and
//! forwards guest accesses through [`BusDevice`].
//!
//! ```text
//!  vCPU exit (port I/O / MMIO) ──► vmm Bus ──► BusDevice::read / write
//!                                                 │
//!                          ┌──────────────────────┼──────────────────────┐
//!                     Serial8250               I8042               DebugExit
//!                  (vm-superio, IRQ 4)     (reset line 0xFE)     (status byte)
//!                          │                      └──────┬───────────────┘
//!                   IrqLine (irqfd)              ExitHandler (VM lifecycle)
//! ```
//!
//! Snapshots: each device has `save()` returning a serde state struct from
//! a `persist` module beside it, and `restore()` applying such a state onto
//! a freshly built device, refusing untrusted or mismatching state with a
//! [`PersistError`] (see [`persist`]).

pub mod acpi_ged;
pub mod acpi_persist;
pub mod acpi_pm;
pub mod bus;
pub mod display;
pub mod exit;
pub mod irq;
pub mod legacy;
pub mod pci;
pub mod persist;
pub mod rfb;
pub mod virtio;

#[cfg(test)]
mod test_util;

pub use bus::BusDevice;
pub use exit::{ExitHandler, GuestExitRequest};
pub use irq::IrqLine;
pub use persist::PersistError;
