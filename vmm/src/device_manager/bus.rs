//! An address bus (port I/O or MMIO) that routes guest accesses to devices.
//!
//! Ranges are checked for overlap when inserted, so two devices can never
//! claim the same address. Accesses no device claims read as all-ones and
//! discard writes, as on a PC bus with nothing decoding the address.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use thiserror::Error;
use tracing::trace;
use vireo_devices::BusDevice;

/// A device shared between the bus and whoever else drives it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a device could not be placed on a bus.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// A zero-length or wrapping range.
    #[error("invalid bus range at {base:#x} with length {len:#x}")]
    InvalidRange {
        /// Start address.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The range overlaps a device already present.
    #[error("bus range {base:#x}+{len:#x} overlaps the device at {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// Start of the new range.
        base: u64,
        /// Length of the new range.
        len: u64,
        /// Start of the existing range.
        other_base: u64,
        /// Length of the existing range.
        other_len: u64,
    },
}

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.devices.iter().map(|(b, (l, _))| (*b, *l)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let overlapping = self
            .devices
            .range(..end)
            .next_back()
            .filter(|(b, (l, _))| **b + *l > base);
        if let Some((other_base, (other_len, _))) = overlapping {
            return Err(BusError::Overlap {
                base,
                len,
                other_base: *other_base,
                other_len: *other_len,
            });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        (offset.checked_add(size as u64)? <= *len).then_some((offset, dev))
    }

    /// Routes a read; unclaimed addresses read as all-ones. Returns whether a
    /// device handled it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, dev)) => {
                // A poisoned device lock means a device panicked earlier;
                // keep serving the guest with the device's last state.
                let mut d = dev.lock().unwrap_or_else(|p| p.into_inner());
                d.read(offset, data);
                true
            }
            None => {
                trace!(addr, len = data.len(), "unclaimed bus read");
                data.fill(0xff);
                false
            }
        }
    }

    /// Routes a write; unclaimed addresses discard it. Returns whether a
    /// device handled it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, dev)) => {
                let mut d = dev.lock().unwrap_or_else(|p| p.into_inner());
                d.write(offset, data);
                true
            }
            None => {
                trace!(addr, len = data.len(), "unclaimed bus write");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Echo>> {
        Arc::new(Mutex::new(Echo(Vec::new())))
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(dev(), 0x100, 0x10).expect("first");
        for (base, len) in [(0x100, 1), (0xf8, 0x9), (0x10f, 1), (0x0, 0x1000)] {
            assert!(matches!(
                bus.insert(dev(), base, len),
                Err(BusError::Overlap { .. })
            ));
        }
        bus.insert(dev(), 0x110, 0x10).expect("adjacent above");
        bus.insert(dev(), 0xf0, 0x10).expect("adjacent below");
        assert!(matches!(
            bus.insert(dev(), 5, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
    }

    #[test]
    fn accesses_route_by_offset_and_unclaimed_reads_are_all_ones() {
        let mut bus = Bus::new();
        let d = dev();
        bus.insert(d.clone(), 0x3f8, 8).expect("insert");
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fb, &mut b));
        assert_eq!(b, [3]);
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(d.lock().expect("lock").0, vec![(1, vec![7])]);
        let mut w = [0u8; 4];
        assert!(!bus.read(0x3fe, &mut w), "straddles the end of the range");
        assert_eq!(w, [0xff; 4]);
        assert!(!bus.write(0x500, &[1]));
    }
}
