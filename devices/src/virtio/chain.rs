//! Descriptor chains as devices consume them: the chain split into its
//! device-readable and device-writable parts, each a list of guest memory
//! segments, with the rules every device shares checked once.
//!
//! Rules (virtio 1.2 §2.7.4): all readable descriptors come before all
//! writable ones; every segment lies inside one guest RAM region; a chain has at most as
//! many descriptors as the queue (loops end there — virtio-queue's TTL) and
//! at most 4 GiB in total; a chain that virtio-queue cuts short (loop, bad
//! `next`, bad indirect table) is refused, not taken as complete. Devices
//! never assume how the driver framed a request into descriptors: headers
//! are gathered across segments.

use std::ops::Deref;

use thiserror::Error;
use vireo_block::GuestSlice;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::GuestMemory;

/// A piece of guest memory named by one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// Why a chain was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChainError {
    /// A device-readable descriptor after a device-writable one.
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    /// A descriptor points outside guest RAM (or across a hole).
    #[error("descriptor {addr:#x}+{len:#x} is not in guest memory")]
    OutOfMemory {
        /// Start address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The chain has more segments than the device accepts.
    #[error("the chain has more than {0} descriptors")]
    TooManySegments(usize),
    /// The chain ended at a descriptor that still has `NEXT` set: a loop, a
    /// `next` index outside the table, a nested or malformed indirect table,
    /// or more than 4 GiB in total (virtio-queue stops iterating there).
    #[error("the chain is cut short by an invalid link")]
    Unterminated,
    /// The chain is shorter than the request needs.
    #[error("the chain is too short: {0}")]
    TooShort(&'static str),
}

/// A chain split into readable and writable segments.
#[derive(Debug, Default)]
pub struct ChainLayout {
    /// Head descriptor index (for the used ring).
    pub head: u16,
    /// Device-readable segments, in order.
    pub readable: Vec<Segment>,
    /// Device-writable segments, in order.
    pub writable: Vec<Segment>,
}

impl ChainLayout {
    /// Clears the layout for reuse (keeps allocations).
    pub fn clear(&mut self) {
        self.head = 0;
        self.readable.clear();
        self.writable.clear();
    }

    /// Fills the layout from `chain`, checking the rules in the module docs.
    /// `max_segments` bounds the total number of descriptors. On error the
    /// layout still holds the segments seen up to that point (out-of-RAM ones
    /// included; a readable segment after a writable one is dropped, and
    /// parsing stops at `max_segments`), so the caller can report a status in
    /// the last writable byte; writes through [`write_bytes`] re-check that
    /// the byte is in guest memory.
    pub fn parse<M>(
        &mut self,
        chain: DescriptorChain<M>,
        mem: &GuestMemory,
        max_segments: usize,
    ) -> Result<(), ChainError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        self.clear();
        self.head = chain.head_index();
        // Walk the whole chain even after an error, so a device can still
        // write a status into the chain's last writable byte.
        let mut first_error = None;
        let mut open_link = false;
        for desc in chain {
            if self.readable.len() + self.writable.len() >= max_segments {
                first_error.get_or_insert(ChainError::TooManySegments(max_segments));
                break;
            }
            open_link = desc.has_next();
            let seg = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            if seg.len > 0 && !in_ram(mem, seg.addr, seg.len) {
                first_error.get_or_insert(ChainError::OutOfMemory {
                    addr: seg.addr.0,
                    len: seg.len,
                });
            }
            if desc.is_write_only() {
                self.writable.push(seg);
            } else if self.writable.is_empty() {
                self.readable.push(seg);
            } else {
                first_error.get_or_insert(ChainError::ReadableAfterWritable);
            }
        }
        if open_link {
            first_error.get_or_insert(ChainError::Unterminated);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Whether `len` bytes at `addr` lie inside one guest RAM region — what a
/// device can turn into one host slice (`get_slice`). One pass over the few
/// regions, inlined: this runs for every descriptor. (Vireo's RAM regions
/// are never adjacent, so no valid buffer spans two.)
fn in_ram(mem: &GuestMemory, addr: GuestAddress, len: u32) -> bool {
    mem.iter().any(|region| {
        addr.0
            .checked_sub(region.start_addr().0)
            .is_some_and(|offset| offset < region.len() && u64::from(len) <= region.len() - offset)
    })
}

/// Total bytes in `segs`.
pub fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Walks `segs` from byte `skip` for `len` bytes, calling `f` with each
/// piece (address, length). Returns false if the segments are too short.
fn walk(
    segs: &[Segment],
    skip: u64,
    len: u64,
    mut f: impl FnMut(GuestAddress, usize) -> bool,
) -> bool {
    let mut skip = skip;
    let mut left = len;
    for s in segs {
        if left == 0 {
            break;
        }
        let slen = u64::from(s.len);
        if skip >= slen {
            skip -= slen;
            continue;
        }
        let take = (slen - skip).min(left);
        let Some(addr) = s.addr.0.checked_add(skip) else {
            return false;
        };
        if !f(GuestAddress(addr), take as usize) {
            return false;
        }
        left -= take;
        skip = 0;
    }
    left == 0
}

/// Copies `buf.len()` bytes starting `skip` bytes into `segs` out of guest memory.
pub fn read_bytes(mem: &GuestMemory, segs: &[Segment], skip: u64, buf: &mut [u8]) -> bool {
    let mut pos = 0usize;
    walk(segs, skip, buf.len() as u64, |addr, n| {
        let ok = mem.read_slice(&mut buf[pos..pos + n], addr).is_ok();
        pos += n;
        ok
    })
}

/// Copies `buf` into guest memory starting `skip` bytes into `segs`.
pub fn write_bytes(mem: &GuestMemory, segs: &[Segment], skip: u64, buf: &[u8]) -> bool {
    let mut pos = 0usize;
    walk(segs, skip, buf.len() as u64, |addr, n| {
        let ok = mem.write_slice(&buf[pos..pos + n], addr).is_ok();
        pos += n;
        ok
    })
}

/// Guest slices covering `len` bytes starting `skip` bytes into `segs`,
/// appended to `out`. Fails if a piece is not inside one RAM region.
pub fn slices<'m>(
    mem: &'m GuestMemory,
    segs: &[Segment],
    skip: u64,
    len: u64,
    out: &mut Vec<GuestSlice<'m>>,
) -> Result<(), ChainError> {
    let mut bad = None;
    let ok = walk(segs, skip, len, |addr, n| match mem.get_slice(addr, n) {
        Ok(s) => {
            out.push(s);
            true
        }
        Err(_) => {
            bad = Some(ChainError::OutOfMemory {
                addr: addr.0,
                len: n as u32,
            });
            false
        }
    });
    match (ok, bad) {
        (true, _) => Ok(()),
        (false, Some(e)) => Err(e),
        (false, None) => Err(ChainError::TooShort("data")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_ram_accepts_ranges_inside_one_region_only() {
        let page = 0x1000;
        // Two adjacent regions, then a hole, then a third.
        let mem = GuestMemory::from_ranges(&[
            (GuestAddress(0), 2 * page),
            (GuestAddress(2 * page as u64), page),
            (GuestAddress(8 * page as u64), page),
        ])
        .expect("memory");
        let at = |p: u64| GuestAddress(p * page as u64);
        assert!(in_ram(&mem, at(0), 2 * page as u32));
        assert!(!in_ram(&mem, at(1), 2 * page as u32), "across two regions");
        assert!(!in_ram(&mem, at(2), 2 * page as u32), "into the hole");
        assert!(!in_ram(&mem, at(4), 1), "in the hole");
        assert!(in_ram(&mem, at(8), page as u32));
        assert!(!in_ram(&mem, at(8), page as u32 + 1), "past the end of RAM");
        assert!(!in_ram(&mem, GuestAddress(u64::MAX), 1));
    }
}
