//! The root PCI bus: up to 32 single-function devices on bus 0.

use std::sync::{Arc, Mutex};

use thiserror::Error;

use super::config::PciConfigSpace;

/// A PCI function as the root bus sees it.
pub trait PciDevice: Send {
    /// The function's configuration space.
    fn config(&self) -> &PciConfigSpace;
    /// Mutable access for guest configuration writes.
    fn config_mut(&mut self) -> &mut PciConfigSpace;
    /// Handles a guest write of configuration space. The default applies the
    /// write mask; devices that must react to a register (e.g. MSI-X enable)
    /// override it and call [`PciConfigSpace::write`] themselves.
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }
}

/// Why a device could not be added.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PciRootError {
    /// All 32 slots are taken.
    #[error("the PCI root bus has no free slot")]
    NoFreeSlot,
}

/// Bus 0 of the PCI hierarchy.
#[derive(Default)]
pub struct PciRoot {
    slots: Vec<Option<Arc<Mutex<dyn PciDevice>>>>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].is_some())
            .collect();
        f.debug_struct("PciRoot").field("slots", &used).finish()
    }
}

impl PciRoot {
    /// An empty bus.
    pub fn new() -> Self {
        Self {
            slots: (0..32).map(|_| None).collect(),
        }
    }

    /// Puts `device` in the lowest free slot and returns the slot number.
    pub fn add_device(&mut self, device: Arc<Mutex<dyn PciDevice>>) -> Result<u8, PciRootError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciRootError::NoFreeSlot)?;
        self.slots[slot] = Some(device);
        Ok(slot as u8)
    }

    fn device(&self, bus: u8, slot: u8, function: u8) -> Option<&Arc<Mutex<dyn PciDevice>>> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get(usize::from(slot))?.as_ref()
    }

    /// Reads configuration space; absent functions read as all-ones.
    pub fn config_read(&self, bus: u8, slot: u8, function: u8, offset: usize, data: &mut [u8]) {
        match self.device(bus, slot, function) {
            Some(dev) => dev
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .config()
                .read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes configuration space; writes to absent functions are dropped.
    pub fn config_write(&self, bus: u8, slot: u8, function: u8, offset: usize, data: &[u8]) {
        if let Some(dev) = self.device(bus, slot, function) {
            dev.lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_config(offset, data);
        }
    }
}
