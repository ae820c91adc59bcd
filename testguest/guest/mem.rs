//! Memory for device work: volatile accessors by address, and bump
//! allocators over identity-mapped RAM (virtual == guest-physical, so an
//! address handed out here can go straight into a descriptor).
//!
//! Two regions: a static arena in `.bss` for rings and the small buffers of
//! the functional scenarios, and the RAM above the loaded image (up to the
//! guest's RAM size, below the MMIO hole) for the benchmarks' large buffers.

use core::cell::UnsafeCell;
use core::ptr::{read_volatile, write_volatile};

/// Volatile 8-bit load from `addr` (RAM shared with a device, or MMIO).
#[inline(always)]
pub fn rd8(addr: usize) -> u8 {
    // SAFETY: callers pass identity-mapped RAM from our allocators or a
    // device register inside a BAR; both are mapped for ring 3.
    unsafe { read_volatile(addr as *const u8) }
}

/// Volatile little-endian 16-bit load (natural alignment required).
#[inline(always)]
pub fn rd16(addr: usize) -> u16 {
    // SAFETY: as for `rd8`.
    unsafe { read_volatile(addr as *const u16) }
}

/// Volatile 32-bit load.
#[inline(always)]
pub fn rd32(addr: usize) -> u32 {
    // SAFETY: as for `rd8`.
    unsafe { read_volatile(addr as *const u32) }
}

/// Volatile 8-bit store.
#[inline(always)]
pub fn wr8(addr: usize, v: u8) {
    // SAFETY: as for `rd8`.
    unsafe { write_volatile(addr as *mut u8, v) }
}

/// Volatile 16-bit store.
#[inline(always)]
pub fn wr16(addr: usize, v: u16) {
    // SAFETY: as for `rd8`.
    unsafe { write_volatile(addr as *mut u16, v) }
}

/// Volatile 32-bit store.
#[inline(always)]
pub fn wr32(addr: usize, v: u32) {
    // SAFETY: as for `rd8`.
    unsafe { write_volatile(addr as *mut u32, v) }
}

/// Volatile 64-bit store (RAM only; device registers take 32-bit halves).
#[inline(always)]
pub fn wr64(addr: usize, v: u64) {
    // SAFETY: as for `rd8`.
    unsafe { write_volatile(addr as *mut u64, v) }
}

/// `len` bytes of RAM at `addr` as a slice, for reading a buffer after the
/// device has completed it (the caller has observed the used ring entry
/// behind an acquire fence).
pub fn bytes(addr: usize, len: usize) -> &'static [u8] {
    // SAFETY: `addr..addr+len` comes from one of our allocations, which
    // live for the whole run; the device no longer writes it.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

/// Mutable view of a buffer the device does not own at the moment.
pub fn bytes_mut(addr: usize, len: usize) -> &'static mut [u8] {
    // SAFETY: as for `bytes`; callers hold no other view of the range.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

/// Size of the static arena.
const ARENA_SIZE: usize = 1 << 20;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; ARENA_SIZE]>);

// SAFETY: the guest runs on a single vCPU; the arena is only reached through
// addresses handed out by one `Bump`.
unsafe impl Sync for Arena {}

/// Rings and small buffers (page-aligned, in `.bss`, so zero at start).
static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_SIZE]));

extern "C" {
    /// End of the loaded image (page-aligned), from `linker.ld`.
    static __guest_end: u8;
}

/// Start of the RAM the VMM treats as the MMIO hole; RAM above 4 GiB is not
/// used by the guest.
const MMIO_HOLE_START: u64 = 0xc000_0000;

/// Hands out aligned, never-freed ranges of `[next, end)`.
pub struct Bump {
    next: usize,
    end: usize,
}

impl Bump {
    /// The static arena. Call it once per run: two of them would hand out
    /// the same memory.
    pub fn arena() -> Self {
        let start = ARENA.0.get() as usize;
        Self {
            next: start,
            end: start + ARENA_SIZE,
        }
    }

    /// RAM from the end of the image (rounded up to 2 MiB) to the end of
    /// low RAM (`mem_size`, at most the start of the MMIO hole).
    pub fn above_image(mem_size: u64) -> Self {
        // Only the symbol's address is taken, never its value.
        let image_end = core::ptr::addr_of!(__guest_end) as usize;
        let start = align_up(image_end, 2 << 20);
        let end = mem_size.min(MMIO_HOLE_START) as usize;
        Self {
            next: start,
            end: end.max(start),
        }
    }

    /// `size` bytes aligned to `align` (a power of two), or `None` when the
    /// region is exhausted. The contents are whatever was there.
    pub fn alloc(&mut self, size: usize, align: usize) -> Option<usize> {
        let start = align_up(self.next, align);
        let end = start.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(start)
    }

    /// Like `alloc`, with the range zeroed.
    pub fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<usize> {
        let addr = self.alloc(size, align)?;
        bytes_mut(addr, size).fill(0);
        Some(addr)
    }
}

/// Rounds `v` up to a multiple of `align` (a power of two).
pub fn align_up(v: usize, align: usize) -> usize {
    (v + align - 1) & !(align - 1)
}

/// Volatile 64-bit load (RAM only).
#[inline(always)]
pub fn rd64(addr: usize) -> u64 {
    // SAFETY: as for `rd8`.
    unsafe { read_volatile(addr as *const u64) }
}
