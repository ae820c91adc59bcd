//! Saved state of PCI: a function's configuration space image, the
//! 0xcf8 address latch, and the host bridge.
//!
//! Only configuration space bytes are saved: which bits the guest may write
//! (the write masks), the BAR sizes and the capability layout are fixed by
//! how the device is built, and stay those of the device built here.

use serde::{Deserialize, Serialize};

use super::config::CONFIG_SPACE_SIZE;
use super::{PciConfigIo, PciConfigSpace, PciHostBridge};
use crate::persist::PersistError;

/// All [`CONFIG_SPACE_SIZE`] bytes of a function's configuration space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciConfigSpaceState {
    /// The bytes, offset 0 first.
    pub bytes: Vec<u8>,
}

impl PciConfigSpace {
    /// The configuration space image.
    pub fn save(&self) -> PciConfigSpaceState {
        PciConfigSpaceState {
            bytes: self.bytes.to_vec(),
        }
    }

    /// Checks that `state` could be applied by [`PciConfigSpace::restore`]:
    /// it has [`CONFIG_SPACE_SIZE`] bytes, and agrees with this function on
    /// every bit the guest cannot write (IDs, class, BAR sizes, the
    /// capability list…), as an image saved from a function built the same
    /// way always does.
    pub fn check(
        &self,
        device: &'static str,
        state: &PciConfigSpaceState,
    ) -> Result<(), PersistError> {
        if state.bytes.len() != CONFIG_SPACE_SIZE {
            return Err(PersistError::invalid(
                device,
                format!(
                    "configuration space of {} bytes, expected {CONFIG_SPACE_SIZE}",
                    state.bytes.len()
                ),
            ));
        }
        let differs = state
            .bytes
            .iter()
            .zip(self.bytes.iter().zip(self.writable.iter()))
            .position(|(saved, (here, writable))| (saved ^ here) & !writable != 0);
        if let Some(off) = differs {
            return Err(PersistError::mismatch(
                device,
                "read-only configuration space",
                format_args!("{:#04x} at offset {off:#x}", state.bytes[off]),
                format_args!("{:#04x}", self.bytes[off]),
            ));
        }
        Ok(())
    }

    /// Replaces the bytes (not the write masks) with the saved ones.
    /// `device` names the device in errors.
    pub fn restore(
        &mut self,
        device: &'static str,
        state: &PciConfigSpaceState,
    ) -> Result<(), PersistError> {
        self.check(device, state)?;
        self.bytes.copy_from_slice(&state.bytes);
        Ok(())
    }
}

/// The configuration mechanism #1 address register (port 0xcf8).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciConfigIoState {
    /// CONFIG_ADDRESS as the guest last wrote it.
    pub address: u32,
}

impl PciConfigIo {
    /// The address latch.
    pub fn save(&self) -> PciConfigIoState {
        PciConfigIoState {
            address: self.address,
        }
    }

    /// Applies `state` (any 32-bit value is one a guest could have written).
    pub fn restore(&mut self, state: &PciConfigIoState) -> Result<(), PersistError> {
        self.address = state.address;
        Ok(())
    }
}

/// The host bridge's configuration space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciHostBridgeState {
    /// Its configuration space image.
    pub config: PciConfigSpaceState,
}

impl PciHostBridge {
    /// The bridge's configuration space.
    pub fn save(&self) -> PciHostBridgeState {
        PciHostBridgeState {
            config: self.config.save(),
        }
    }

    /// Applies `state`.
    pub fn restore(&mut self, state: &PciHostBridgeState) -> Result<(), PersistError> {
        self.config.restore("pci-host-bridge", &state.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{PciDevice, PciRoot};
    use crate::test_util::json_round_trip as json;
    use crate::BusDevice;
    use std::sync::{Arc, Mutex};

    #[test]
    fn config_space_bytes_round_trip_and_masks_stay() {
        let mut a = PciConfigSpace::new(0x1af4, 0x1042, [1, 0, 0], 1);
        a.set_mem_bar32(0, 0xc000_0000, 0x4000);
        a.write(4, &[0x06]);
        a.write(0x3c, &[11]);
        let state = json(&a.save());
        assert_eq!(state, a.save());
        let mut b = PciConfigSpace::new(0x1af4, 0x1042, [1, 0, 0], 1);
        b.set_mem_bar32(0, 0xd000_0000, 0x4000);
        b.restore("test", &state).expect("restore");
        assert_eq!(b.save(), state);
        assert_eq!(b.bar_addr(0), Some(0xc000_0000));
        // The write masks are this device's: the vendor ID stays read-only.
        b.write(0, &[0, 0]);
        assert_eq!(b.u16_at(0), 0x1af4);
        b.write(BAR0, &[0xff; 4]);
        assert_eq!(b.bar_addr(0), Some(!(0x4000 - 1) & !0xf));

        // Another device's image (different device ID) is refused.
        let other = PciConfigSpace::new(0x1af4, 0x1041, [2, 0, 0], 1).save();
        assert!(matches!(
            b.restore("test", &other),
            Err(PersistError::Mismatch {
                what: "read-only configuration space",
                ..
            })
        ));

        let mut short = state;
        short.bytes.truncate(256);
        let mut c = PciConfigSpace::new(0x1af4, 0x1042, [1, 0, 0], 1);
        let before = c.save();
        assert!(matches!(
            c.restore("test", &short),
            Err(PersistError::Invalid { device: "test", .. })
        ));
        assert_eq!(c.save(), before);
    }

    const BAR0: usize = crate::pci::config::BAR0_OFFSET;

    #[test]
    fn config_io_latch_and_host_bridge_round_trip() {
        let root = Arc::new(Mutex::new(PciRoot::new()));
        let mut io = PciConfigIo::new(root.clone());
        io.write(0, &0x8000_0004u32.to_le_bytes());
        let state = json(&io.save());
        let mut io2 = PciConfigIo::new(root);
        io2.restore(&state).expect("restore");
        let mut addr = [0u8; 4];
        io2.read(0, &mut addr);
        assert_eq!(u32::from_le_bytes(addr), 0x8000_0004);

        let mut hb = PciHostBridge::default();
        hb.write_config(0x0c, &[0x10]);
        let hs = json(&hb.save());
        let mut hb2 = PciHostBridge::default();
        hb2.restore(&hs).expect("restore");
        assert_eq!(hb2.config().u16_at(0x0c) & 0xff, 0x10);
    }
}
