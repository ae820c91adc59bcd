//! The host bridge at 00:00.0, which guests expect to find first.

use super::config::PciConfigSpace;
use super::root::PciDevice;

/// Intel's vendor ID, with a device ID used by virtual host bridges.
pub const HOST_BRIDGE_VENDOR: u16 = 0x8086;
/// Device ID of the host bridge.
pub const HOST_BRIDGE_DEVICE: u16 = 0x0d57;

/// A host bridge: class 06/00/00, no BARs.
#[derive(Debug)]
pub struct PciHostBridge {
    pub(super) config: PciConfigSpace,
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self {
            config: PciConfigSpace::new(HOST_BRIDGE_VENDOR, HOST_BRIDGE_DEVICE, [0x06, 0, 0], 0),
        }
    }
}

impl PciDevice for PciHostBridge {
    fn config(&self) -> &PciConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfigSpace {
        &mut self.config
    }
}
