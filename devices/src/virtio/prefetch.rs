//! Cache hints for guest memory a device is about to touch.
//!
//! A polling driver writes a request's header on its own CPU just before it
//! makes the request available, so the device thread's first read of it is
//! a cross-CPU cache miss. Starting those fetches early, for a whole batch
//! at once, lets the misses overlap instead of stalling one after another.

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::GuestMemory;

/// Starts fetching the cache line holding `addr` with intent to write (the
/// device will write a status byte into it). Addresses outside guest RAM
/// are ignored. Only a hint: it changes no memory and cannot fault.
#[cfg(target_arch = "x86_64")]
pub(crate) fn for_write(mem: &GuestMemory, addr: GuestAddress) {
    let Ok(host) = mem.get_host_address(addr) else {
        return;
    };
    // SAFETY: PREFETCHW is a hint that never faults and changes no memory;
    // `host` points into the guest memory mapping vm-memory keeps alive for
    // as long as `mem` is borrowed. The intrinsic is `unsafe` only because
    // it takes a raw pointer.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_ET0 }>(host.cast());
    }
}

/// No hint on other architectures.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn for_write(_mem: &GuestMemory, _addr: GuestAddress) {}
