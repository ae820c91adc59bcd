//! The framebuffer's memory: an anonymous mapping registered as its own KVM memory slot at
//! [`FRAMEBUFFER_ADDR`] with dirty logging on, so the refresher learns which pages the guest
//! wrote from `KVM_GET_DIRTY_LOG` instead of scanning the whole screen.
//!
//! The slot is not guest RAM: it is outside the E820 map, snapshots and migrations carry its
//! pixels as the display's device state, and migration's dirty tracking (which covers RAM
//! slots only) never reads or clears its log.

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use vireo_devices::display::{Geometry, PAGE_SIZE};
use vm_memory::mmap::MmapRegion;
use vm_memory::VolatileMemory;

use super::VncError;
use crate::arch::x86_64::layout::{FRAMEBUFFER_ADDR, FRAMEBUFFER_MAX_SIZE, FRAMEBUFFER_SLOT};

/// The guest-visible framebuffer memory of one VM.
pub struct Framebuffer {
    region: MmapRegion<()>,
    geometry: Geometry,
}

impl std::fmt::Debug for Framebuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Framebuffer")
            .field("geometry", &self.geometry)
            .finish_non_exhaustive()
    }
}

impl Framebuffer {
    /// Maps a zeroed framebuffer of `geometry` and registers it with `vm` at
    /// [`FRAMEBUFFER_ADDR`] as slot [`FRAMEBUFFER_SLOT`], dirty-logged.
    ///
    /// The caller keeps the returned value alive as long as `vm` exists (KVM maps its pages).
    pub fn create(vm: &VmFd, geometry: Geometry) -> Result<Self, VncError> {
        let size = geometry.slot_bytes();
        if size as u64 > FRAMEBUFFER_MAX_SIZE {
            return Err(VncError::Geometry(format!(
                "{}x{} needs {size} bytes, more than the {FRAMEBUFFER_MAX_SIZE} reserved",
                geometry.width, geometry.height
            )));
        }
        let region = MmapRegion::<()>::new(size).map_err(|e| VncError::Memory(e.to_string()))?;
        let desc = kvm_userspace_memory_region {
            slot: FRAMEBUFFER_SLOT,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: FRAMEBUFFER_ADDR,
            memory_size: size as u64,
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: `region` is a live anonymous mapping of exactly `size` bytes, owned by the
        // returned Framebuffer, which the VM keeps until after its VM fd is closed.
        unsafe { vm.set_user_memory_region(desc) }.map_err(VncError::Slot)?;
        Ok(Self { region, geometry })
    }

    /// The screen size.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Size of the slot in bytes (whole pages).
    pub fn len(&self) -> usize {
        self.region.size()
    }

    /// Whether the slot is empty (never: a geometry has at least 64 × 64 pixels).
    pub fn is_empty(&self) -> bool {
        self.region.size() == 0
    }

    /// Indices of the pages the guest wrote since the last call (reading clears KVM's log).
    pub fn take_dirty_pages(&self, vm: &VmFd) -> Result<Vec<usize>, VncError> {
        let bitmap = vm
            .get_dirty_log(FRAMEBUFFER_SLOT, self.len())
            .map_err(VncError::DirtyLog)?;
        let mut pages = Vec::new();
        for (word_index, word) in bitmap.iter().enumerate() {
            let mut w = *word;
            while w != 0 {
                let bit = w.trailing_zeros() as usize;
                pages.push(word_index * 64 + bit);
                w &= w - 1;
            }
        }
        Ok(pages)
    }

    /// Copies `buf.len()` bytes at `offset` out of the framebuffer (a volatile copy: the
    /// guest may be writing). Out-of-range parts are left untouched.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        let Some(len) = self.len().checked_sub(offset).map(|n| n.min(buf.len())) else {
            return;
        };
        if let Ok(slice) = self.region.get_slice(offset, len) {
            slice.copy_to(&mut buf[..len]);
        }
    }

    /// Writes `pixels` at the start of the framebuffer (a restored or received screen).
    pub fn write(&self, pixels: &[u8]) {
        let len = pixels.len().min(self.len());
        if let Ok(slice) = self.region.get_slice(0, len) {
            slice.copy_from(&pixels[..len]);
        }
    }

    /// Pages in the slot.
    pub fn pages(&self) -> usize {
        self.len() / PAGE_SIZE
    }
}
