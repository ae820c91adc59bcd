//! PCI Express enhanced configuration access (ECAM): 4 KiB of configuration
//! space per function, memory-mapped at bus << 20 | device << 15 | fn << 12.

use std::sync::{Arc, Mutex};

use super::root::PciRoot;
use crate::BusDevice;

/// The ECAM window, placed on the MMIO bus by the VMM.
#[derive(Debug)]
pub struct PciEcam {
    root: Arc<Mutex<PciRoot>>,
}

impl PciEcam {
    /// Routes accesses to `root`.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Self { root }
    }
}

fn decode(offset: u64) -> (u8, u8, u8, usize) {
    (
        ((offset >> 20) & 0xff) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 0x7) as u8,
        (offset & 0xfff) as usize,
    )
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (bus, slot, func, reg) = decode(offset);
        let root = self.root.lock().unwrap_or_else(|p| p.into_inner());
        root.config_read(bus, slot, func, reg, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (bus, slot, func, reg) = decode(offset);
        let root = self.root.lock().unwrap_or_else(|p| p.into_inner());
        root.config_write(bus, slot, func, reg, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{PciConfigIo, PciHostBridge};

    #[test]
    fn both_mechanisms_see_the_host_bridge_and_absent_slots_are_all_ones() {
        let mut root = PciRoot::new();
        let slot = root
            .add_device(Arc::new(Mutex::new(PciHostBridge::default())))
            .expect("slot");
        assert_eq!(slot, 0);
        let root = Arc::new(Mutex::new(root));
        let mut ecam = PciEcam::new(root.clone());
        let mut io = PciConfigIo::new(root);
        let mut id = [0u8; 4];
        ecam.read(0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0d57_8086);
        io.write(0, &(0x8000_0000u32).to_le_bytes());
        let mut via_io = [0u8; 4];
        io.read(4, &mut via_io);
        assert_eq!(via_io, id);
        // Slot 1 is empty.
        ecam.read(1 << 15, &mut id);
        assert_eq!(id, [0xff; 4]);
        io.write(0, &(0x8000_0800u32).to_le_bytes());
        io.read(4, &mut id);
        assert_eq!(id, [0xff; 4]);
        // Disabled CONFIG_ADDRESS reads all-ones; the address reads back.
        io.write(0, &0u32.to_le_bytes());
        io.read(4, &mut id);
        assert_eq!(id, [0xff; 4]);
        let mut addr = [0u8; 4];
        io.read(0, &mut addr);
        assert_eq!(addr, [0; 4]);
        // Odd offsets and sizes never panic.
        ecam.read(u64::MAX, &mut id);
        io.read(7, &mut [0u8; 8]);
        io.write(3, &[1, 2, 3]);
    }
}
