//! The Global Descriptor Table the VMM installs, and KVM segment values
//! matching its entries.

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit kernel code segment.
pub const KERNEL_CODE: u16 = 0x08;
/// Selector of the kernel data segment.
pub const KERNEL_DATA: u16 = 0x10;
/// Selector of the 64-bit user code segment (RPL 3).
pub const USER_CODE: u16 = 0x18 | 3;
/// Selector of the user data segment (RPL 3).
pub const USER_DATA: u16 = 0x20 | 3;

/// Selector of the 32-bit kernel code segment (PVH entry).
pub const KERNEL_CODE32: u16 = 0x28;

/// The GDT: null, kernel code64, kernel data, user code64, user data,
/// kernel code32.
pub const GDT: [u64; 6] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x00af_fb00_0000_ffff,
    0x00cf_f300_0000_ffff,
    0x00cf_9b00_0000_ffff,
];

/// Decodes GDT entry `index` into the segment register value KVM expects.
pub fn segment_from_gdt(index: usize) -> kvm_segment {
    let entry = GDT.get(index).copied().unwrap_or(0);
    let access = (entry >> 40) & 0xff;
    let flags = (entry >> 52) & 0xf;
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let limit_raw = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
    let granular = flags & 0x8 != 0;
    let limit = if granular {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    let dpl = ((access >> 5) & 3) as u8;
    kvm_segment {
        base,
        limit: limit as u32,
        selector: (index as u16 * 8) | u16::from(dpl),
        type_: (access & 0xf) as u8,
        present: ((access >> 7) & 1) as u8,
        dpl,
        db: ((flags >> 2) & 1) as u8,
        s: ((access >> 4) & 1) as u8,
        l: ((flags >> 1) & 1) as u8,
        g: u8::from(granular),
        avl: (flags & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// The GDT as little-endian bytes, for writing into guest memory.
pub fn gdt_bytes() -> Vec<u8> {
    GDT.iter().flat_map(|e| e.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_segments_decode_to_ring_3() {
        let cs = segment_from_gdt(3);
        assert_eq!(
            (cs.selector, cs.dpl, cs.l, cs.db, cs.type_),
            (USER_CODE, 3, 1, 0, 0xb)
        );
        let ds = segment_from_gdt(4);
        assert_eq!(
            (ds.selector, ds.dpl, ds.db, ds.limit),
            (USER_DATA, 3, 1, 0xffff_ffff)
        );
        assert_eq!(segment_from_gdt(1).selector, KERNEL_CODE);
        assert_eq!(segment_from_gdt(2).selector, KERNEL_DATA);
        let cs32 = segment_from_gdt(5);
        assert_eq!((cs32.selector, cs32.l, cs32.db), (KERNEL_CODE32, 0, 1));
    }
}
