//! Configuration mechanism #1: address at port 0xcf8, data at 0xcfc–0xcff.

use std::sync::{Arc, Mutex};

use super::root::PciRoot;
use crate::BusDevice;

/// First port of the mechanism (CONFIG_ADDRESS).
pub const PCI_CONFIG_IO_BASE: u64 = 0xcf8;
/// Ports covered: 0xcf8–0xcff.
pub const PCI_CONFIG_IO_SIZE: u64 = 8;
const ENABLE: u32 = 1 << 31;

/// The 0xcf8/0xcfc port pair.
#[derive(Debug)]
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    pub(super) address: u32,
}

impl PciConfigIo {
    /// Routes accesses to `root`.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Self { root, address: 0 }
    }

    /// (bus, slot, function, register) from CONFIG_ADDRESS, if enabled.
    fn target(&self) -> Option<(u8, u8, u8, usize)> {
        let a = self.address;
        (a & ENABLE != 0).then_some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            (a & 0xfc) as usize,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset < 4 {
            let bytes = self.address.to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                *b = bytes.get(offset as usize + i).copied().unwrap_or(0xff);
            }
            return;
        }
        match self.target() {
            Some((bus, slot, func, reg)) => {
                let root = self.root.lock().unwrap_or_else(|p| p.into_inner());
                root.config_read(bus, slot, func, reg + (offset as usize - 4), data);
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 4 {
            self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            return;
        }
        if offset < 4 {
            return;
        }
        if let Some((bus, slot, func, reg)) = self.target() {
            let root = self.root.lock().unwrap_or_else(|p| p.into_inner());
            root.config_write(bus, slot, func, reg + (offset as usize - 4), data);
        }
    }
}
