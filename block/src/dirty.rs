//! [`DirtyBitmap`]: which guest pages devices wrote through vm-memory.
//!
//! KVM's dirty log records the guest's own writes; this bitmap records the
//! writes devices make on the host side (a disk read landing in guest RAM, a
//! used-ring entry, a status byte), so live migration can merge both.
//!
//! Marking is on every device write, so it is made cheap: a page that is
//! already marked costs one plain load instead of an atomic read-modify-write
//! (a locked instruction, which also waits for the CPU's pending stores — the
//! 4 KiB a disk read just copied, the cross-CPU used-ring line). Outside a
//! migration nothing clears the bits, so after a page's first write every
//! later mark takes that path.
//!
//! The price is an ordering rule for whoever clears bits: a device that saw
//! its page's bit still set may have its data store in flight when the bit
//! is cleared. [`DirtyBitmap::take`] therefore clears, then runs a
//! process-wide memory barrier (`membarrier(2)`), so every store made before
//! a skipped mark is visible before the caller copies the page. Clear bits
//! only through `take`.

use std::io;
use std::num::NonZeroUsize;
use std::sync::OnceLock;

use vm_memory::bitmap::{AtomicBitmap, Bitmap, NewBitmap, RefSlice, WithBitmapSlice};

/// Bytes per tracked page.
pub const DIRTY_PAGE_SIZE: usize = 4096;

/// `membarrier(2)` commands (`linux/membarrier.h`).
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

/// One bit per 4 KiB page of a guest memory region; see the module docs for
/// the marking fast path and the clearing rule.
#[derive(Debug)]
pub struct DirtyBitmap {
    bits: AtomicBitmap,
}

impl DirtyBitmap {
    /// A bitmap covering `len` bytes, all clean.
    pub fn new(len: usize) -> Self {
        const PAGE: NonZeroUsize = NonZeroUsize::new(DIRTY_PAGE_SIZE).expect("non-zero");
        Self {
            bits: AtomicBitmap::new(len, PAGE),
        }
    }

    /// Whether every page that `len` bytes at `offset` touch is marked.
    fn all_marked(&self, offset: usize, len: usize) -> bool {
        let first = offset / DIRTY_PAGE_SIZE;
        let last = offset.saturating_add(len - 1) / DIRTY_PAGE_SIZE;
        (first..=last).all(|page| self.bits.is_bit_set(page))
    }

    /// Returns the dirty bits (bit `n` of word `w` is page `64 * w + n`)
    /// and clears them, then waits until every store a device made before a
    /// mark it skipped is visible to this thread, so the caller may copy the
    /// pages the returned bits name.
    ///
    /// # Errors
    /// When the kernel refuses `membarrier(2)`; the bits are then still
    /// returned cleared, so the caller must treat every page as dirty.
    pub fn take(&self) -> io::Result<Vec<u64>> {
        let bits = self.bits.get_and_reset();
        process_barrier()?;
        Ok(bits)
    }
}

/// Runs a memory barrier on every running thread of this process.
fn process_barrier() -> io::Result<()> {
    static REGISTERED: OnceLock<Result<(), i32>> = OnceLock::new();
    let registered =
        REGISTERED.get_or_init(|| membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED));
    registered.map_err(io::Error::from_raw_os_error)?;
    membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED).map_err(io::Error::from_raw_os_error)
}

fn membarrier(cmd: libc::c_int) -> Result<(), i32> {
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL))
    }
}

impl Default for DirtyBitmap {
    fn default() -> Self {
        Self::new(0)
    }
}

impl<'a> WithBitmapSlice<'a> for DirtyBitmap {
    type S = RefSlice<'a, Self>;
}

impl Bitmap for DirtyBitmap {
    fn mark_dirty(&self, offset: usize, len: usize) {
        if len == 0 || self.all_marked(offset, len) {
            return;
        }
        self.bits.set_addr_range(offset, len);
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.bits.is_addr_set(offset)
    }

    fn slice_at(&self, offset: usize) -> RefSlice<'_, Self> {
        RefSlice::new(self, offset)
    }
}

impl NewBitmap for DirtyBitmap {
    fn with_len(len: usize) -> Self {
        Self::new(len)
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

    use super::*;

    fn memory() -> GuestMemoryMmap<DirtyBitmap> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 * DIRTY_PAGE_SIZE)]).expect("memory")
    }

    fn dirty_pages(mem: &GuestMemoryMmap<DirtyBitmap>) -> Vec<usize> {
        let region = mem.find_region(GuestAddress(0)).expect("region");
        (0..16)
            .filter(|p| region.bitmap().dirty_at(p * DIRTY_PAGE_SIZE))
            .collect()
    }

    #[test]
    fn writes_through_vm_memory_mark_every_page_they_touch() {
        let mem = memory();
        assert!(dirty_pages(&mem).is_empty());
        mem.write_slice(&[1; 2], GuestAddress(3 * DIRTY_PAGE_SIZE as u64 - 1))
            .expect("write");
        mem.write_obj(7u32, GuestAddress(9 * DIRTY_PAGE_SIZE as u64))
            .expect("write");
        assert_eq!(dirty_pages(&mem), [2, 3, 9]);
    }

    #[test]
    fn take_returns_and_clears_the_bits_and_later_writes_mark_again() {
        let mem = memory();
        let region = mem.find_region(GuestAddress(0)).expect("region");
        mem.write_obj(1u8, GuestAddress(5 * DIRTY_PAGE_SIZE as u64))
            .expect("write");
        // A second write to a marked page takes the fast path and keeps it marked.
        mem.write_obj(2u8, GuestAddress(5 * DIRTY_PAGE_SIZE as u64 + 8))
            .expect("write");
        let bitmap: &DirtyBitmap = vm_memory::MmapRegion::bitmap(region);
        let taken = bitmap.take().expect("membarrier");
        assert_eq!(taken, [1 << 5]);
        assert!(dirty_pages(&mem).is_empty(), "take clears");
        assert_eq!(bitmap.take().expect("membarrier"), [0]);
        mem.write_obj(3u8, GuestAddress(5 * DIRTY_PAGE_SIZE as u64))
            .expect("write");
        assert_eq!(dirty_pages(&mem), [5], "a write after take marks again");
    }

    #[test]
    fn marks_outside_the_bitmap_and_empty_marks_are_ignored() {
        let bitmap = DirtyBitmap::new(2 * DIRTY_PAGE_SIZE);
        bitmap.mark_dirty(0, 0);
        bitmap.mark_dirty(5 * DIRTY_PAGE_SIZE, 10);
        assert_eq!(bitmap.take().expect("membarrier"), [0]);
        bitmap.mark_dirty(DIRTY_PAGE_SIZE, 3 * DIRTY_PAGE_SIZE);
        assert_eq!(bitmap.take().expect("membarrier"), [0b10]);
    }
}
