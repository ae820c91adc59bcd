//! Dirty-page tracking for the length of one migration: KVM's log of guest writes (the dirty
//! ring or the per-slot bitmap, whichever the VM was built with) merged with the writes
//! devices make through guest memory (`DirtyBitmap`, which KVM never sees).
//!
//! ```text
//!  start ─► logging on for every RAM slot; device bitmaps and rings emptied
//!  take  ─► per RAM region: KVM's pages (ring harvest or KVM_GET_DIRTY_LOG) ∪ device pages
//!  drop  ─► logging off again (on every exit path: success, error, cancel)
//! ```

use std::sync::Arc;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::MigrationError;
use crate::memory;
use crate::vm::Vm;
use crate::vstate::dirty_ring::DirtyRings;

/// Where KVM's half of the dirty pages comes from.
enum Source {
    Ring(Arc<DirtyRings>),
    Bitmap,
}

/// Dirty logging switched on for a migration; switched off when dropped.
pub(crate) struct DirtyTracker<'a> {
    vm: &'a Vm,
    source: Source,
}

impl<'a> DirtyTracker<'a> {
    /// Turns logging on for every RAM slot of `vm` and forgets the device writes so far: from
    /// here on, every page the guest or a device writes shows up in [`DirtyTracker::take`].
    pub(crate) fn start(vm: &'a Vm) -> Result<Self, MigrationError> {
        let source = match vm.dirty_rings() {
            Some(r) => Source::Ring(r.clone()),
            None => Source::Bitmap,
        };
        memory::set_dirty_logging(vm.vm_fd(), vm.memory(), true).map_err(MigrationError::Log)?;
        let tracker = Self { vm, source };
        // Pages written before logging began are covered by pass 0 (every populated page).
        tracker.take()?;
        Ok(tracker)
    }

    /// `ring` or `bitmap`.
    pub(crate) fn kind(&self) -> &'static str {
        match self.source {
            Source::Ring(_) => "ring",
            Source::Bitmap => "bitmap",
        }
    }

    /// Times a vCPU exited because its dirty ring was full (0 with the bitmap).
    pub(crate) fn ring_full_exits(&self) -> u64 {
        match &self.source {
            Source::Ring(r) => r.full_exits(),
            Source::Bitmap => 0,
        }
    }

    /// The pages written since the last call (or [`DirtyTracker::start`]), one bitmap per RAM
    /// region (bit `n` of word `w`: page `64w + n`), and clears them.
    pub(crate) fn take(&self) -> Result<Vec<Vec<u64>>, MigrationError> {
        let mem = self.vm.memory();
        let mut kvm = match &self.source {
            Source::Ring(r) => r.take(),
            Source::Bitmap => {
                let mut out = Vec::new();
                for (slot, region) in (0u32..).zip(mem.iter()) {
                    let len = usize::try_from(region.len()).map_err(|_| {
                        MigrationError::Log(memory::MemoryError::TooLarge(region.len()))
                    })?;
                    let bits = self
                        .vm
                        .vm_fd()
                        .get_dirty_log(slot, len)
                        .map_err(MigrationError::DirtyLog)?;
                    out.push(bits);
                }
                out
            }
        };
        for (bits, region) in kvm.iter_mut().zip(mem.iter()) {
            // A failed barrier leaves the device bits cleared without the guarantee that the
            // writes are visible: then every page counts as dirty.
            match std::ops::Deref::deref(region).bitmap().take() {
                Ok(dev) => {
                    for (k, d) in bits.iter_mut().zip(dev) {
                        *k |= d;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "device dirty bitmap barrier failed; resending the region");
                    bits.iter_mut().for_each(|w| *w = u64::MAX);
                }
            }
        }
        Ok(kvm)
    }
}

impl Drop for DirtyTracker<'_> {
    fn drop(&mut self) {
        if let Err(e) = memory::set_dirty_logging(self.vm.vm_fd(), self.vm.memory(), false) {
            tracing::warn!(error = %e, "cannot switch dirty logging off");
        }
        // Empty the rings so a later migration starts clean.
        if let Source::Ring(r) = &self.source {
            r.take();
        }
    }
}

/// Pages set in `bits` (all regions).
pub(crate) fn count(bits: &[Vec<u64>]) -> u64 {
    bits.iter()
        .flatten()
        .map(|w| u64::from(w.count_ones()))
        .sum()
}

/// `a |= b`, region by region.
pub(crate) fn merge(a: &mut [Vec<u64>], b: &[Vec<u64>]) {
    for (x, y) in a.iter_mut().zip(b) {
        for (p, q) in x.iter_mut().zip(y) {
            *p |= q;
        }
    }
}
