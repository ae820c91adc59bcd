//! A PCI function's type-0 configuration header with BARs and write masks.

/// Offset of the first BAR.
pub const BAR0_OFFSET: usize = 0x10;
/// Number of BARs in a type-0 header.
pub const NUM_BARS: usize = 6;
/// Size of the configuration space reachable through ECAM.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Offset of the capabilities pointer in a type-0 header.
pub const CAPABILITIES_POINTER: usize = 0x34;
/// First byte after the type-0 header, where capabilities start.
const FIRST_CAPABILITY: usize = 0x40;
/// End of the legacy 256-byte configuration space that capabilities live in.
const LEGACY_CONFIG_END: usize = 0x100;
/// Status register bit: the capabilities list is valid.
const STATUS_CAPABILITIES_LIST: u8 = 0x10;

/// Configuration space of one function: bytes plus a mask of which bits the
/// guest may write. BARs report their size through the classic write-all-ones
/// probe because their low bits are read-only.
#[derive(Clone)]
pub struct PciConfigSpace {
    pub(super) bytes: Box<[u8; CONFIG_SPACE_SIZE]>,
    pub(super) writable: Box<[u8; CONFIG_SPACE_SIZE]>,
    /// Where the next capability goes, and the previous one's `next` byte.
    next_capability: usize,
    last_capability_link: usize,
}

impl std::fmt::Debug for PciConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfigSpace")
            .field("vendor", &self.u16_at(0))
            .field("device", &self.u16_at(2))
            .finish()
    }
}

impl PciConfigSpace {
    /// A header with the given IDs and class (class, subclass, prog-if).
    pub fn new(vendor: u16, device: u16, class: [u8; 3], revision: u8) -> Self {
        let mut c = Self {
            bytes: Box::new([0; CONFIG_SPACE_SIZE]),
            writable: Box::new([0; CONFIG_SPACE_SIZE]),
            next_capability: FIRST_CAPABILITY,
            last_capability_link: CAPABILITIES_POINTER,
        };
        c.bytes[0..2].copy_from_slice(&vendor.to_le_bytes());
        c.bytes[2..4].copy_from_slice(&device.to_le_bytes());
        c.bytes[8] = revision;
        c.bytes[9] = class[2];
        c.bytes[10] = class[1];
        c.bytes[11] = class[0];
        // Command register: I/O, memory, bus master, INTx disable.
        c.writable[4] = 0x07;
        c.writable[5] = 0x04;
        // Cache line size, latency timer, interrupt line.
        c.writable[0x0c] = 0xff;
        c.writable[0x0d] = 0xff;
        c.writable[0x3c] = 0xff;
        c
    }

    /// Declares BAR `index` as a 32-bit memory BAR of `size` bytes (a power
    /// of two, at least 16) at `addr`.
    pub fn set_mem_bar32(&mut self, index: usize, addr: u32, size: u32) {
        if index >= NUM_BARS || size < 16 || !size.is_power_of_two() {
            return;
        }
        let off = BAR0_OFFSET + index * 4;
        self.bytes[off..off + 4].copy_from_slice(&(addr & !(size - 1)).to_le_bytes());
        self.writable[off..off + 4].copy_from_slice(&(!(size - 1)).to_le_bytes());
    }

    /// Sets the subsystem vendor and device IDs.
    pub fn set_subsystem(&mut self, vendor: u16, device: u16) {
        self.bytes[0x2c..0x2e].copy_from_slice(&vendor.to_le_bytes());
        self.bytes[0x2e..0x30].copy_from_slice(&device.to_le_bytes());
    }

    /// Appends a capability with ID `id` whose bytes after the two-byte
    /// header (ID, next pointer) are `body`, links it into the list, and
    /// returns its offset. Capabilities are read-only unless made writable
    /// with [`PciConfigSpace::set_writable`]. Returns `None` when the legacy
    /// 256-byte space is full.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Option<usize> {
        let offset = self.next_capability;
        let end = offset.checked_add(2 + body.len())?;
        if end > LEGACY_CONFIG_END {
            return None;
        }
        self.bytes[offset] = id;
        self.bytes[offset + 1] = 0;
        self.bytes[offset + 2..end].copy_from_slice(body);
        // Offsets are below 0x100, so they fit the one-byte pointer.
        self.bytes[self.last_capability_link] = offset as u8;
        self.bytes[6] |= STATUS_CAPABILITIES_LIST;
        self.last_capability_link = offset + 1;
        // Capabilities are dword aligned.
        self.next_capability = (end + 3) & !3;
        Some(offset)
    }

    /// Lets the guest write the bits of `mask` in the bytes at `offset`.
    pub fn set_writable(&mut self, offset: usize, mask: &[u8]) {
        if let Some(dst) = offset
            .checked_add(mask.len())
            .and_then(|end| self.writable.get_mut(offset..end))
        {
            dst.copy_from_slice(mask);
        }
    }

    /// Little-endian 16-bit value at `off` (0xffff past the end).
    pub fn u16_at(&self, off: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    /// The current address of 32-bit memory BAR `index`.
    pub fn bar_addr(&self, index: usize) -> Option<u32> {
        (index < NUM_BARS).then(|| self.read_u32(BAR0_OFFSET + index * 4) & !0xf)
    }

    fn read_u32(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[off],
            self.bytes[off + 1],
            self.bytes[off + 2],
            self.bytes[off + 3],
        ])
    }

    /// Reads `data.len()` bytes at `offset`; out-of-range bytes read as 0xff.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Writes `data` at `offset`, honouring the write mask.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|o| *o < CONFIG_SPACE_SIZE) else {
                return;
            };
            let mask = self.writable[o];
            self.bytes[o] = (self.bytes[o] & !mask) | (b & mask);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_only_and_bars_report_their_size() {
        let mut c = PciConfigSpace::new(0x1af4, 0x1042, [1, 0, 0], 1);
        c.write(0, &[0, 0, 0, 0]);
        let mut id = [0u8; 4];
        c.read(0, &mut id);
        assert_eq!(id, [0xf4, 0x1a, 0x42, 0x10]);
        c.set_mem_bar32(0, 0xc000_0000, 0x4000);
        c.write(BAR0_OFFSET, &[0xff; 4]);
        let mut bar = [0u8; 4];
        c.read(BAR0_OFFSET, &mut bar);
        assert_eq!(u32::from_le_bytes(bar), !(0x4000 - 1), "size probe");
        c.write(BAR0_OFFSET, &0xd000_0000u32.to_le_bytes());
        assert_eq!(c.bar_addr(0), Some(0xd000_0000));
        let mut past = [0u8; 4];
        c.read(CONFIG_SPACE_SIZE - 2, &mut past);
        assert_eq!(&past[2..], &[0xff, 0xff]);
    }
}
