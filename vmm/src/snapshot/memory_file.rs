//! Guest memory in a snapshot: one sparse file holding every RAM region back to back.
//!
//! ```text
//!  memory file:  [ region 0 (guest 0 .. 3 GiB) ][ region 1 (guest 4 GiB ..) ]
//!                  pages the guest never touched, or that hold only zeros, are holes
//! ```
//! Writing visits only the pages resident in host memory (`mincore(2)`): a page never touched
//! was never backed, so it is skipped without being read, and a resident page of zeros is
//! skipped after a compare. The file is created at full length with `ftruncate`, so every
//! skipped page is a hole that allocates no disk space and reads back as zeros.
//!
//! Restoring maps the file `MAP_PRIVATE` (lazily: a page is read from the file when the guest
//! first touches it, and a guest write copies it, never changing the file — Firecracker's
//! approach), or reads the file's data extents (`SEEK_DATA`/`SEEK_HOLE`) into fresh anonymous
//! memory (eagerly, when the file must not stay in use).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vm_memory::mmap::{MmapRegionBuilder, NewBitmap};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::memory::{self, GuestMemory};

/// Where one RAM region lives in the memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionEntry {
    /// Guest physical address of the region.
    pub guest_addr: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Its offset in the memory file.
    pub file_offset: u64,
}

/// How a restored VM gets its memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryRestore {
    /// Map the file copy-on-write; pages are read when first touched (the default).
    #[default]
    Lazy,
    /// Read every data extent of the file into anonymous memory before the VM starts.
    Eager,
}

/// Why guest memory could not be saved or restored.
#[derive(Debug, Error)]
pub enum MemoryFileError {
    /// An I/O error on the memory file.
    #[error("memory file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The file is shorter than the regions it must hold.
    #[error("memory file {path} is {have} bytes, but the snapshot's memory needs {need}")]
    TooShort {
        /// The file.
        path: String,
        /// Bytes the regions need.
        need: u64,
        /// The file's length.
        have: u64,
    },
    /// The saved regions are not the layout of the spec's memory size.
    #[error("the snapshot's memory regions do not match its {memory_bytes}-byte memory size")]
    Layout {
        /// The spec's memory size.
        memory_bytes: u64,
    },
    /// Mapping or allocating guest memory failed.
    #[error("cannot map guest memory: {0}")]
    Map(String),
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> MemoryFileError + '_ {
    move |source| MemoryFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// The region table for guest memory of `memory_bytes` (regions back to back in the file).
pub fn layout(memory_bytes: u64) -> Vec<RegionEntry> {
    let mut offset = 0;
    memory::ram_ranges(memory_bytes)
        .into_iter()
        .map(|(addr, len)| {
            let e = RegionEntry {
                guest_addr: addr.0,
                len,
                file_offset: offset,
            };
            offset += len;
            e
        })
        .collect()
}

/// What writing the memory file did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Bytes of page data written (the rest of the file is holes).
    pub data_bytes: u64,
    /// Pages read and compared: those resident in host memory, plus those backed by an
    /// earlier snapshot's file.
    pub visited_pages: u64,
}

/// The pages of each region of `mem` that may hold data, as one bitmap per region (bit `n`
/// of word `w`: page `64w + n`): those resident in host memory (`mincore(2)`; a page never
/// touched was never backed and holds zeros), plus those backed by data in the file a region
/// is mapped from (an earlier snapshot's, which the guest may never have touched here).
/// Safe to call while the guest runs (it reads no page).
pub fn populated(mem: &GuestMemory) -> io::Result<Vec<Vec<u64>>> {
    let page = page_size();
    const CHUNK_PAGES: usize = 16 * 1024;
    let mut status = vec![0u8; CHUNK_PAGES];
    let mut out = Vec::new();
    for region in mem.iter() {
        let len = usize::try_from(region.len()).map_err(io::Error::other)?;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|err| io::Error::other(err.to_string()))?;
        let pages = len.div_ceil(page);
        let mut bits = vec![0u64; pages.div_ceil(64)];
        // A region mapped from an earlier snapshot's file holds data the guest never touched
        // in this process (not resident, yet not zero): those extents count too. A shared
        // memfd's pages are all resident when they hold data.
        if let Some(fo) = region.file_offset() {
            if region.flags() & libc::MAP_PRIVATE != 0 {
                for (from, to) in data_extents(fo.file(), fo.start(), region.len())? {
                    for p in (from as usize / page)..(to as usize).div_ceil(page).min(pages) {
                        bits[p / 64] |= 1 << (p % 64);
                    }
                }
            }
        }
        let mut chunk_start = 0;
        while chunk_start < len {
            let bytes = (len - chunk_start).min(CHUNK_PAGES * page);
            // SAFETY: `host + chunk_start .. + bytes` lies inside the region's live, page-aligned
            // mapping, and `status` has room for `bytes / page` entries.
            let rc =
                unsafe { libc::mincore(host.add(chunk_start).cast(), bytes, status.as_mut_ptr()) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let first = chunk_start / page;
            for (i, st) in status[..bytes.div_ceil(page)].iter().enumerate() {
                if st & 1 != 0 {
                    let p = first + i;
                    bits[p / 64] |= 1 << (p % 64);
                }
            }
            chunk_start += bytes;
        }
        out.push(bits);
    }
    Ok(out)
}

/// Runs of set bits in `bits` (pages), as `(first page, count)`, each at most `max` pages.
pub fn runs(bits: &[u64], max: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut next = 0usize;
    let total = bits.len() * 64;
    std::iter::from_fn(move || {
        // Find the first set bit at or after `next`.
        let mut p = next;
        while p < total {
            let w = bits[p / 64] >> (p % 64);
            if w == 0 {
                p = (p / 64 + 1) * 64;
                continue;
            }
            p += w.trailing_zeros() as usize;
            break;
        }
        if p >= total {
            return None;
        }
        let mut end = p;
        while end < total && end - p < max && bits[end / 64] & (1 << (end % 64)) != 0 {
            end += 1;
        }
        next = end;
        Some((p, end - p))
    })
}

/// Writes every region of `mem` to a new sparse file at `path` (replaced if it exists).
/// The guest must not run meanwhile. Returns the region table and what was written.
pub fn write(
    mem: &GuestMemory,
    path: &Path,
) -> Result<(Vec<RegionEntry>, WriteStats), MemoryFileError> {
    let e = io_err(path);
    let file = File::create(path).map_err(&e)?;
    let page = page_size();
    let mut entries = Vec::new();
    let mut stats = WriteStats::default();
    let mut offset = 0u64;
    let zero = vec![0u8; page];
    let populated = populated(mem).map_err(&e)?;
    for (region, bits) in mem.iter().zip(&populated) {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|err| MemoryFileError::Map(err.to_string()))?;
        entries.push(RegionEntry {
            guest_addr: region.start_addr().0,
            len: region.len(),
            file_offset: offset,
        });
        for (first, count) in runs(bits, usize::MAX) {
            // Coalesce the run's non-zero pages into one write each.
            let mut run: Option<usize> = None;
            for p in first..=first + count {
                let data = p < first + count && {
                    stats.visited_pages += 1;
                    // SAFETY: page `p` is inside the region's mapping (a populated bit is
                    // never past its end); the guest is paused, so nothing writes it while
                    // it is read.
                    let s = unsafe { std::slice::from_raw_parts(host.add(p * page), page) };
                    s != zero.as_slice()
                };
                match (data, run) {
                    (true, None) => run = Some(p),
                    (false, Some(start)) => {
                        let n = (p - start) * page;
                        // SAFETY: as above, the run lies inside the mapping.
                        let s = unsafe { std::slice::from_raw_parts(host.add(start * page), n) };
                        file.write_all_at(s, offset + (start * page) as u64)
                            .map_err(&e)?;
                        stats.data_bytes += n as u64;
                        run = None;
                    }
                    _ => {}
                }
            }
        }
        offset += region.len();
    }
    file.set_len(offset).map_err(&e)?;
    Ok((entries, stats))
}

/// Builds guest memory for a VM of `memory_bytes` from the memory file at `path`, whose
/// regions are `entries` (checked against the layout of `memory_bytes` and the file's length).
pub fn restore(
    path: &Path,
    entries: &[RegionEntry],
    memory_bytes: u64,
    how: MemoryRestore,
) -> Result<GuestMemory, MemoryFileError> {
    if entries != layout(memory_bytes).as_slice() {
        return Err(MemoryFileError::Layout { memory_bytes });
    }
    let e = io_err(path);
    let file = File::open(path).map_err(&e)?;
    let need = entries.iter().map(|r| r.len).sum::<u64>();
    let have = file.metadata().map_err(&e)?.len();
    if have < need {
        return Err(MemoryFileError::TooShort {
            path: path.display().to_string(),
            need,
            have,
        });
    }
    match how {
        MemoryRestore::Lazy => map_private(file, entries),
        MemoryRestore::Eager => {
            let mem = memory::create_guest_memory(memory_bytes)
                .map_err(|err| MemoryFileError::Map(err.to_string()))?;
            read_extents(&file, &mem, entries).map_err(&e)?;
            Ok(mem)
        }
    }
}

fn map_private(file: File, entries: &[RegionEntry]) -> Result<GuestMemory, MemoryFileError> {
    let file = Arc::new(file);
    let mut regions = Vec::with_capacity(entries.len());
    for r in entries {
        let len =
            usize::try_from(r.len).map_err(|_| MemoryFileError::Map("region too large".into()))?;
        let mapping =
            MmapRegionBuilder::new_with_bitmap(len, vireo_block::DirtyBitmap::with_len(len))
                .with_file_offset(FileOffset::from_arc(file.clone(), r.file_offset))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .build()
                .map_err(|err| MemoryFileError::Map(err.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
            .ok_or_else(|| MemoryFileError::Map("region wraps the address space".into()))?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(|err| MemoryFileError::Map(err.to_string()))
}

/// The data extents of `file` between `start` and `start + len`, relative to `start`.
fn data_extents(file: &File, start: u64, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let end = start + len;
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        let Some(data) = seek(file, pos, libc::SEEK_DATA)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        out.push((data - start, hole - start));
        pos = hole;
    }
    Ok(out)
}

/// Copies the file's data extents (skipping holes) into `mem`.
fn read_extents(file: &File, mem: &GuestMemory, entries: &[RegionEntry]) -> io::Result<()> {
    for (r, region) in entries.iter().zip(mem.iter()) {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|err| io::Error::other(err.to_string()))?;
        for (from, to) in data_extents(file, r.file_offset, r.len)? {
            let at = usize::try_from(from).map_err(io::Error::other)?;
            let n = usize::try_from(to - from).map_err(io::Error::other)?;
            // SAFETY: `at .. at + n` lies inside this region's fresh anonymous mapping (the
            // extent is clipped to the region's part of the file); no vCPU runs yet.
            let dst = unsafe { std::slice::from_raw_parts_mut(host.add(at), n) };
            file.read_exact_at(dst, r.file_offset + from)?;
        }
    }
    Ok(())
}

/// `lseek(fd, from, whence)`; `None` when there is no further data (ENXIO).
fn seek(file: &File, from: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let from = libc::off_t::try_from(from).map_err(io::Error::other)?;
    // SAFETY: lseek on an owned, open file descriptor has no memory-safety preconditions.
    let r = unsafe { libc::lseek(file.as_raw_fd(), from, whence) };
    if r < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(err)
        };
    }
    Ok(Some(r as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::Bytes;

    #[test]
    fn untouched_and_zero_pages_are_holes_and_restore_both_ways() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory");
        let size = 64 << 20;
        let mem = memory::create_guest_memory(size).expect("alloc");
        for i in 0..100u64 {
            mem.write_obj(i + 1, GuestAddress(i * 37 * 4096 + 8))
                .expect("write");
        }
        // A touched page of zeros is not written either.
        mem.write_obj(0u64, GuestAddress(5 << 20)).expect("write");
        let (entries, stats) = write(&mem, &path).expect("write file");
        assert_eq!(entries, layout(size));
        assert_eq!(stats.data_bytes, 100 * 4096);
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.len(), size);
        assert!(
            meta.blocks() * 512 <= 200 * 4096,
            "{} blocks allocated",
            meta.blocks()
        );
        for how in [MemoryRestore::Lazy, MemoryRestore::Eager] {
            let back = restore(&path, &entries, size, how).expect("restore");
            for i in 0..100u64 {
                let v: u64 = back
                    .read_obj(GuestAddress(i * 37 * 4096 + 8))
                    .expect("read");
                assert_eq!(v, i + 1, "{how:?} page {i}");
            }
            let z: u64 = back.read_obj(GuestAddress(6 << 20)).expect("read");
            assert_eq!(z, 0);
            // A write to the restored memory never reaches the file.
            back.write_obj(0xffu64, GuestAddress(8)).expect("write");
        }
        let again = restore(&path, &entries, size, MemoryRestore::Lazy).expect("restore");
        assert_eq!(again.read_obj::<u64>(GuestAddress(8)).expect("read"), 1);
    }

    #[test]
    fn a_snapshot_of_a_restored_vm_keeps_the_pages_it_never_touched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, second) = (dir.path().join("m1"), dir.path().join("m2"));
        let size = 32 << 20;
        let mem = memory::create_guest_memory(size).expect("alloc");
        for i in 0..50u64 {
            mem.write_obj(i + 1, GuestAddress(i * 64 * 4096))
                .expect("write");
        }
        let (entries, _) = write(&mem, &first).expect("write");
        drop(mem);
        let restored = restore(&first, &entries, size, MemoryRestore::Lazy).expect("restore");
        restored
            .write_obj(999u64, GuestAddress(3 * 64 * 4096))
            .expect("write");
        let (entries2, stats) = write(&restored, &second).expect("write again");
        assert_eq!(stats.data_bytes, 50 * 4096);
        let back = restore(&second, &entries2, size, MemoryRestore::Eager).expect("restore");
        for i in 0..50u64 {
            let want = if i == 3 { 999 } else { i + 1 };
            let v: u64 = back.read_obj(GuestAddress(i * 64 * 4096)).expect("read");
            assert_eq!(v, want, "page {i}");
        }
    }

    #[test]
    fn a_short_file_or_a_foreign_layout_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory");
        let size = 16 << 20;
        let mem = memory::create_guest_memory(size).expect("alloc");
        let (entries, _) = write(&mem, &path).expect("write");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len(size - 4096).expect("truncate");
        let e = restore(&path, &entries, size, MemoryRestore::Lazy).expect_err("short");
        assert!(
            matches!(e, MemoryFileError::TooShort { need, .. } if need == size),
            "{e}"
        );
        let e = restore(&path, &entries, 2 * size, MemoryRestore::Lazy).expect_err("layout");
        assert!(matches!(e, MemoryFileError::Layout { .. }), "{e}");
    }
}
