//! PCI: configuration space, the root bus, and its two access mechanisms.
//!
//! ```text
//!  ports 0xcf8/0xcfc ──► PciConfigIo ─┐
//!                                      ├─► PciRoot (bus 0) ──► slot N: PciDevice
//!  MMIO ECAM window  ──► PciEcam ─────┘        slot 0: PciHostBridge
//! ```
//! Both mechanisms address the same 256-byte (legacy) / 4 KiB (ECAM)
//! configuration space of each function. Devices are function 0 of a slot on
//! bus 0; accesses to absent devices read as all-ones.

pub mod config;
pub mod config_io;
pub mod ecam;
pub mod host_bridge;
pub mod persist;
pub mod root;

pub use config::PciConfigSpace;
pub use config_io::PciConfigIo;
pub use ecam::PciEcam;
pub use host_bridge::PciHostBridge;
pub use root::{PciDevice, PciRoot, PciRootError};
