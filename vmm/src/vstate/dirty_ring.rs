//! The KVM dirty ring: one ring per vCPU in which KVM records the pages the guest writes
//! while dirty logging is on, harvested here into one bitmap per memory slot.
//!
//! ```text
//!  vCPU n writes a logged page ──► KVM pushes {slot, offset} on ring n (mmap of the vCPU fd)
//!        ring n soft-full ──► KVM_EXIT_DIRTY_RING_FULL ──► vCPU n harvests its own ring
//!  migration pass ──► harvest every ring ──► KVM_RESET_DIRTY_RINGS ──► take the bitmaps
//! ```
//! The ring is enabled on the VM before any vCPU exists (KVM's rule) and then excludes
//! `KVM_GET_DIRTY_LOG`, so the choice between ring and bitmap is made when the VM is built
//! (the spec's `dirty_log`). Harvesting follows KVM's protocol (`Documentation/virt/kvm/
//! api.rst`, "KVM_CAP_DIRTY_LOG_RING"): read an entry's flags with acquire ordering; a
//! `DIRTY` entry is recorded and handed back by storing `RESET` with release ordering; then
//! `KVM_RESET_DIRTY_RINGS` re-protects the pages and frees the entries. Entries may repeat a
//! page; the bitmap absorbs that.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_dirty_gfn, kvm_enable_cap, KVM_CAP_DIRTY_LOG_RING, KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
    KVM_DIRTY_LOG_PAGE_OFFSET,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use thiserror::Error;
use vm_memory::bitmap::AtomicBitmap;
use vmm_sys_util::ioctl::ioctl;
use vmm_sys_util::ioctl_io_nr;

use crate::config::DirtyLogMode;

/// Entries per vCPU ring: 64 KiB of ring per vCPU; a vCPU exits to have it harvested after
/// 4032 new dirty pages (KVM keeps 64 entries in reserve).
pub const RING_ENTRIES: u32 = 4096;

/// `kvm_dirty_gfn.flags`: KVM filled the entry (linux/kvm.h `KVM_DIRTY_GFN_F_DIRTY`).
const GFN_DIRTY: u32 = 1;
/// `kvm_dirty_gfn.flags`: userspace harvested it (linux/kvm.h `KVM_DIRTY_GFN_F_RESET`).
const GFN_RESET: u32 = 2;
/// Guest page size the ring's offsets count in.
const PAGE: usize = 4096;

ioctl_io_nr!(KVM_RESET_DIRTY_RINGS, kvm_bindings::KVMIO, 0xc7);

/// Why the dirty ring could not be set up.
#[derive(Debug, Error)]
pub enum DirtyRingError {
    /// The spec asks for the ring and this host's KVM has none.
    #[error(
        "this host's KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING); use dirty_log bitmap or auto"
    )]
    Unavailable,
    /// KVM refused to enable it.
    #[error("cannot enable the KVM dirty ring: {0}")]
    Enable(#[source] kvm_ioctls::Error),
    /// A vCPU's ring could not be mapped.
    #[error("cannot map the dirty ring of vCPU {index}: {source}")]
    Map {
        /// The vCPU.
        index: u8,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Enables the dirty ring on `vm` (which must have no vCPU yet) when `mode` asks for it and
/// the host offers it. Returns the ring's entries per vCPU, or `None` for the bitmap.
pub fn enable(kvm: &Kvm, vm: &VmFd, mode: DirtyLogMode) -> Result<Option<u32>, DirtyRingError> {
    if mode == DirtyLogMode::Bitmap {
        return Ok(None);
    }
    let bytes = RING_ENTRIES as usize * std::mem::size_of::<kvm_dirty_gfn>();
    let acq_rel = kvm.check_extension_raw(libc::c_ulong::from(KVM_CAP_DIRTY_LOG_RING_ACQ_REL));
    let plain = kvm.check_extension_raw(libc::c_ulong::from(KVM_CAP_DIRTY_LOG_RING));
    // The answer is the largest ring in bytes (0: none).
    let (cap, max) = if acq_rel > 0 {
        (KVM_CAP_DIRTY_LOG_RING_ACQ_REL, acq_rel)
    } else {
        (KVM_CAP_DIRTY_LOG_RING, plain)
    };
    if usize::try_from(max).unwrap_or(0) < bytes {
        return match mode {
            DirtyLogMode::Ring => Err(DirtyRingError::Unavailable),
            _ => Ok(None),
        };
    }
    let mut enable = kvm_enable_cap {
        cap,
        ..Default::default()
    };
    enable.args[0] = bytes as u64;
    vm.enable_cap(&enable).map_err(DirtyRingError::Enable)?;
    Ok(Some(RING_ENTRIES))
}

/// One vCPU's ring, mapped from its fd.
struct VcpuRing {
    base: *mut kvm_dirty_gfn,
    entries: u32,
    /// The next entry to harvest; the lock serializes the vCPU's own harvest (ring full)
    /// with the migration's.
    fetch: Mutex<u32>,
}

// SAFETY: `base` points into a mapping owned by this struct (unmapped only in Drop); every
// access to the entries goes through atomics or `read_volatile` under the `fetch` lock.
unsafe impl Send for VcpuRing {}
// SAFETY: as above.
unsafe impl Sync for VcpuRing {}

impl VcpuRing {
    fn map(fd: &VcpuFd, index: u8, entries: u32) -> Result<Self, DirtyRingError> {
        let len = entries as usize * std::mem::size_of::<kvm_dirty_gfn>();
        let offset = KVM_DIRTY_LOG_PAGE_OFFSET as i64 * PAGE as i64;
        // SAFETY: maps `len` bytes of the vCPU fd at KVM's dirty-ring offset, shared; the
        // result is checked and owned by the returned value.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(DirtyRingError::Map {
                index,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            base: p.cast(),
            entries,
            fetch: Mutex::new(0),
        })
    }

    /// Moves every filled entry into `sink(slot, page)`; returns how many.
    fn harvest(&self, mut sink: impl FnMut(u32, u64)) -> u64 {
        let mut fetch = self.fetch.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        loop {
            let i = (*fetch % self.entries) as usize;
            // SAFETY: `i < entries`, so the entry lies inside the ring's mapping.
            let entry = unsafe { self.base.add(i) };
            // SAFETY: `flags` is an aligned u32 inside the mapping, shared with KVM, which
            // accesses it atomically too.
            let flags = unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*entry).flags)) };
            if flags.load(Ordering::Acquire) & GFN_DIRTY == 0 {
                break;
            }
            // SAFETY: KVM wrote the entry before setting DIRTY (released), which we acquired.
            let (slot, offset) = unsafe {
                (
                    std::ptr::addr_of!((*entry).slot).read_volatile(),
                    std::ptr::addr_of!((*entry).offset).read_volatile(),
                )
            };
            sink(slot, offset);
            flags.store(GFN_RESET, Ordering::Release);
            *fetch = fetch.wrapping_add(1);
            n += 1;
        }
        n
    }
}

impl Drop for VcpuRing {
    fn drop(&mut self) {
        let len = self.entries as usize * std::mem::size_of::<kvm_dirty_gfn>();
        // SAFETY: unmaps exactly the mapping made in `map`, which nothing uses any more.
        unsafe { libc::munmap(self.base.cast(), len) };
    }
}

/// Every signal blocked on this thread until dropped (the previous mask restored).
struct SignalsBlocked(Option<libc::sigset_t>);

impl SignalsBlocked {
    fn new() -> Self {
        // SAFETY: both sets are plain data filled by sigfillset/pthread_sigmask before use;
        // pthread_sigmask only changes this thread's mask.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            if libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old) == 0 {
                Self(Some(old))
            } else {
                Self(None)
            }
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: restores the mask saved in `new`; the guard lives in one function's
            // frame, so this runs on the thread that blocked.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
        }
    }
}

/// Every vCPU's ring, and the pages harvested from them per memory slot.
pub struct DirtyRings {
    rings: Vec<VcpuRing>,
    /// One bitmap per memory slot (slot `n` is guest memory region `n`).
    slots: Vec<AtomicBitmap>,
    vm: Arc<VmFd>,
    full_exits: AtomicU64,
}

impl std::fmt::Debug for DirtyRings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyRings")
            .field("vcpus", &self.rings.len())
            .field("full_exits", &self.full_exits.load(Ordering::Relaxed))
            .finish()
    }
}

impl DirtyRings {
    /// Maps the ring of every vCPU in `vcpus` (created after [`enable`] returned `entries`);
    /// `slot_sizes` are the memory slots' lengths in bytes.
    pub fn map(
        vm: Arc<VmFd>,
        vcpus: &[&VcpuFd],
        entries: u32,
        slot_sizes: &[u64],
    ) -> Result<Self, DirtyRingError> {
        let rings = (0u8..)
            .zip(vcpus)
            .map(|(i, fd)| VcpuRing::map(fd, i, entries))
            .collect::<Result<Vec<_>, _>>()?;
        let page = std::num::NonZeroUsize::new(PAGE).ok_or(DirtyRingError::Unavailable)?;
        let slots = slot_sizes
            .iter()
            .map(|&len| AtomicBitmap::new(len as usize, page))
            .collect();
        Ok(Self {
            rings,
            slots,
            vm,
            full_exits: AtomicU64::new(0),
        })
    }

    fn record(&self, slot: u32, offset: u64) {
        // The slot word holds the address space in its high half; Vireo uses space 0.
        if let (Some(bits), Ok(page)) = (
            self.slots.get((slot & 0xffff) as usize),
            usize::try_from(offset),
        ) {
            bits.set_bit(page);
        }
    }

    /// `KVM_RESET_DIRTY_RINGS` with every signal blocked.
    ///
    /// Since Linux 6.16 the reset stops early when the calling thread has a signal pending,
    /// and the entries it had already consumed but not yet re-protected (a batch of up to 64
    /// pages) stay writable for good: the guest's next writes to them leave no entry, and a
    /// migration loses them. A vCPU thread resets its own ring while auto-converge kicks it
    /// every 10 ms, so this happened under load (a `churn MISMATCH` on the target in about
    /// one migration in three with three migrating at once; never with signals blocked).
    /// Blocked, a kick stays pending and is taken when the mask is restored, so none is lost.
    fn reset(&self) {
        let _blocked = SignalsBlocked::new();
        loop {
            // SAFETY: KVM_RESET_DIRTY_RINGS takes no argument and only touches the VM's rings.
            let rc = unsafe { ioctl(&*self.vm, KVM_RESET_DIRTY_RINGS()) };
            if rc >= 0 {
                return;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                tracing::warn!(error = %err, "KVM_RESET_DIRTY_RINGS failed");
                return;
            }
        }
    }

    /// Called by vCPU `index`'s thread on `KVM_EXIT_DIRTY_RING_FULL`: harvests its ring so
    /// it can run again.
    ///
    /// The pages are recorded only after `KVM_RESET_DIRTY_RINGS` has re-protected them: a
    /// bit recorded first could be taken by a concurrent [`DirtyRings::take`] whose page is
    /// then read while still writable, and a guest write between that read and this reset
    /// would leave no entry behind (lost on a migration's target).
    pub fn on_ring_full(&self, index: u8) {
        let mut harvested = Vec::new();
        if let Some(ring) = self.rings.get(usize::from(index)) {
            harvested.reserve(ring.entries as usize);
            ring.harvest(|slot, offset| harvested.push((slot, offset)));
        }
        self.reset();
        for (slot, offset) in harvested {
            self.record(slot, offset);
        }
        self.full_exits.fetch_add(1, Ordering::Relaxed);
    }

    /// Harvests every ring and returns the dirty pages since the last call, one bitmap per
    /// slot (bit `n` of word `w`: page `64w + n`), clearing them. Every page returned has
    /// been re-protected (its next write makes a new entry) before this returns, so reading
    /// its contents afterwards misses no write. One caller at a time (the migration).
    pub fn take(&self) -> Vec<Vec<u64>> {
        for ring in &self.rings {
            ring.harvest(|slot, offset| self.record(slot, offset));
        }
        self.reset();
        self.slots.iter().map(AtomicBitmap::get_and_reset).collect()
    }

    /// Times a vCPU exited because its ring was full.
    pub fn full_exits(&self) -> u64 {
        self.full_exits.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::SignalsBlocked;

    static TAKEN: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn count(_: libc::c_int) {
        TAKEN.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn a_signal_sent_while_blocked_is_taken_once_the_guard_drops() {
        // SAFETY: installs a handler that only bumps an atomic, then signals this thread.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = count as extern "C" fn(libc::c_int) as usize;
            assert_eq!(
                libc::sigaction(libc::SIGUSR2, &act, std::ptr::null_mut()),
                0
            );
        }
        let guard = SignalsBlocked::new();
        assert!(guard.0.is_some(), "the mask was changed");
        // SAFETY: pthread_self is this live thread.
        assert_eq!(
            unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2) },
            0
        );
        assert_eq!(
            TAKEN.load(Ordering::SeqCst),
            0,
            "blocked while the guard lives"
        );
        drop(guard);
        assert_eq!(
            TAKEN.load(Ordering::SeqCst),
            1,
            "taken when the mask is restored"
        );
    }
}
