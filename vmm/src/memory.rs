//! Guest physical memory: layout, allocation and registration with KVM.
//!
//! ```text
//!  0 ─────────── RAM ─────────── 3 GiB ── PCI MMIO hole ── 4 GiB ── RAM (rest) ──►
//!                                  (devices, ECAM, IOAPIC, LAPIC)
//! ```
//! RAM is anonymous `MAP_NORESERVE` memory, or a memfd mapped shared (the spec's
//! `memory_backing: memfd`, which a local live migration hands to the next process), so pages
//! the guest never touches cost the host nothing either way. Every region carries a
//! [`vireo_block::DirtyBitmap`] so writes made by devices through `vm-memory` are tracked for
//! live migration.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use thiserror::Error;
use vm_memory::mmap::{MmapRegionBuilder, NewBitmap};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::config::MemoryBacking;

/// Guest memory with dirty-page tracking of device writes (the devices'
/// type, so they share the VM's memory without conversion).
pub use vireo_devices::virtio::GuestMemory;

/// Start of the hole below 4 GiB reserved for PCI MMIO and platform devices.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End (exclusive) of the MMIO hole.
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// One MiB.
pub const MIB: u64 = 1 << 20;

/// Why guest memory could not be set up.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The size does not fit in the host's address space.
    #[error("guest memory size of {0} bytes is too large")]
    TooLarge(u64),
    /// Allocating the mapping failed.
    #[error("cannot allocate guest memory: {0}")]
    Allocate(#[source] vm_memory::mmap::FromRangesError),
    /// The memfd backing guest RAM could not be created or mapped.
    #[error("cannot create shared guest memory: {0}")]
    Memfd(#[source] std::io::Error),
    /// KVM refused a memory slot.
    #[error("cannot register guest memory slot {slot} with KVM: {source}")]
    Register {
        /// The slot number.
        slot: u32,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
}

/// The RAM ranges for `size` bytes of guest memory, split around the hole.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(MMIO_HOLE_END), size - MMIO_HOLE_START),
        ]
    }
}

/// The first guest physical address above all RAM.
pub fn ram_end(size: u64) -> u64 {
    ram_ranges(size)
        .last()
        .map(|(start, len)| start.0 + len)
        .unwrap_or(0)
}

/// Allocates `size` bytes of guest RAM laid out around the MMIO hole, anonymous.
pub fn create_guest_memory(size: u64) -> Result<GuestMemory, MemoryError> {
    let ranges = ram_ranges(size)
        .into_iter()
        .map(|(addr, len)| usize::try_from(len).map(|len| (addr, len)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| MemoryError::TooLarge(size))?;
    GuestMemory::from_ranges(&ranges).map_err(MemoryError::Allocate)
}

/// Allocates `size` bytes of guest RAM backed as `backing` asks.
pub fn create_backed(size: u64, backing: MemoryBacking) -> Result<GuestMemory, MemoryError> {
    match backing {
        MemoryBacking::Anonymous => create_guest_memory(size),
        MemoryBacking::Memfd => {
            let c = c"vireo-guest-ram";
            // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
            let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
            }
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            let file = unsafe { File::from_raw_fd(fd) };
            file.set_len(size).map_err(MemoryError::Memfd)?;
            map_shared(file, size)
        }
    }
}

/// Maps guest RAM of `size` bytes from `file` (a memfd holding the regions back to back, as
/// [`create_backed`] makes and a local migration hands over), shared.
pub fn map_shared(file: File, size: u64) -> Result<GuestMemory, MemoryError> {
    let have = file.metadata().map_err(MemoryError::Memfd)?.len();
    if have < size {
        return Err(MemoryError::Memfd(std::io::Error::other(format!(
            "the memory file holds {have} bytes, the VM needs {size}"
        ))));
    }
    let file = Arc::new(file);
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (addr, len) in ram_ranges(size) {
        let n = usize::try_from(len).map_err(|_| MemoryError::TooLarge(size))?;
        let mapping = MmapRegionBuilder::new_with_bitmap(n, vireo_block::DirtyBitmap::with_len(n))
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| MemoryError::Memfd(std::io::Error::other(e.to_string())))?;
        let region = GuestRegionMmap::new(mapping, addr)
            .ok_or_else(|| MemoryError::Memfd(std::io::Error::other("region wraps")))?;
        regions.push(region);
        offset += len;
    }
    GuestMemory::from_regions(regions)
        .map_err(|e| MemoryError::Memfd(std::io::Error::other(e.to_string())))
}

/// The memfd behind guest RAM made by [`create_backed`] with [`MemoryBacking::Memfd`] (or
/// mapped by [`map_shared`]); `None` for anonymous memory or memory mapped from a snapshot.
pub fn shared_file(memory: &GuestMemory) -> Option<Arc<File>> {
    let region = memory.iter().next()?;
    let fo = region.file_offset()?;
    let shared = region.flags() & libc::MAP_SHARED != 0;
    (shared && fo.start() == 0).then(|| fo.arc().clone())
}

/// KVM's description of every region of `memory` as slots 0, 1, …, with `flags`.
fn slots(
    memory: &GuestMemory,
    flags: u32,
) -> Result<Vec<kvm_userspace_memory_region>, MemoryError> {
    (0u32..)
        .zip(memory.iter())
        .map(|(slot, region)| {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| MemoryError::TooLarge(region.len()))?;
            Ok(kvm_userspace_memory_region {
                slot,
                flags,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            })
        })
        .collect()
}

fn set_slots(vm: &VmFd, memory: &GuestMemory, flags: u32) -> Result<(), MemoryError> {
    for desc in slots(memory, flags)? {
        // SAFETY: the region is a live mapping of exactly `memory_size` bytes
        // owned by `memory`, which the VM keeps alive for as long as the VM fd
        // exists (both live in `Vm`, and the fd is dropped first).
        unsafe { vm.set_user_memory_region(desc) }.map_err(|source| MemoryError::Register {
            slot: desc.slot,
            source,
        })?;
    }
    Ok(())
}

/// Registers every region of `memory` as a KVM memory slot (slots 0, 1, …).
pub fn register_with_kvm(vm: &VmFd, memory: &GuestMemory) -> Result<(), MemoryError> {
    set_slots(vm, memory, 0)
}

/// Turns KVM's dirty logging on or off for every slot of `memory` (registered by
/// [`register_with_kvm`]). With logging on, KVM records every page the guest writes (in the
/// slot's bitmap or the vCPUs' dirty rings).
pub fn set_dirty_logging(vm: &VmFd, memory: &GuestMemory, on: bool) -> Result<(), MemoryError> {
    set_slots(vm, memory, if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 })
}

/// Bytes of guest RAM resident in host memory right now: the pages of every region that
/// `mincore(2)` reports present (touched by the guest or a device and not swapped out). Pages
/// never touched cost nothing and are not counted. Takes a few hundred microseconds per GiB
/// of guest RAM; holds no lock.
pub fn resident_bytes(memory: &GuestMemory) -> std::io::Result<u64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .map_err(|_| std::io::Error::other("no page size"))?;
    // One status byte per page, asked for 64 Ki pages (256 MiB of 4 KiB pages) at a time.
    const CHUNK_PAGES: usize = 64 * 1024;
    let mut status = vec![0u8; CHUNK_PAGES];
    let mut resident = 0u64;
    for region in memory.iter() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let len = usize::try_from(region.len()).map_err(std::io::Error::other)?;
        let mut offset = 0;
        while offset < len {
            let bytes = (len - offset).min(CHUNK_PAGES * page);
            // SAFETY: `host + offset .. + bytes` lies inside the region's live mapping (the
            // region is mmap'ed, so its start is page-aligned, and `offset` is a multiple of
            // the page size); `status` holds at least `bytes / page` rounded up entries, the
            // most mincore writes.
            let rc = unsafe {
                libc::mincore(
                    host.add(offset).cast::<libc::c_void>(),
                    bytes,
                    status.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let pages = bytes.div_ceil(page);
            let present = status[..pages].iter().filter(|s| *s & 1 != 0).count();
            resident += (present * page) as u64;
            offset += bytes;
        }
    }
    Ok(resident)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range_below_the_hole() {
        assert_eq!(ram_ranges(512 * MIB), vec![(GuestAddress(0), 512 * MIB)]);
        assert_eq!(ram_end(512 * MIB), 512 * MIB);
    }

    #[test]
    fn large_memory_is_split_around_the_hole() {
        let r = ram_ranges(4096 * MIB);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START));
        assert_eq!(r[1], (GuestAddress(MMIO_HOLE_END), 1024 * MIB));
        assert_eq!(ram_end(4096 * MIB), MMIO_HOLE_END + 1024 * MIB);
    }

    #[test]
    fn memory_is_allocated_lazily_and_tracks_writes() {
        use vm_memory::bitmap::Bitmap;
        use vm_memory::Bytes;
        let mem = create_guest_memory(64 * MIB).expect("alloc");
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .expect("write");
        let v: u32 = mem.read_obj(GuestAddress(0x1000)).expect("read");
        assert_eq!(v, 0xdead_beef);
        let region = mem.iter().next().expect("region");
        assert!(
            region.bitmap().dirty_at(0x1000),
            "device writes are tracked"
        );
    }

    #[test]
    fn resident_bytes_counts_the_pages_written() {
        use vm_memory::Bytes;
        let mem = create_guest_memory(64 * MIB).expect("alloc");
        assert_eq!(resident_bytes(&mem).expect("mincore"), 0);
        for page in 0..10u64 {
            mem.write_obj(1u8, GuestAddress(page * 3 * 4096))
                .expect("write");
        }
        assert_eq!(resident_bytes(&mem).expect("mincore"), 10 * 4096);
    }
}
