//! Positioned I/O between a file and guest memory, resuming short transfers.
//!
//! The only `unsafe` in the raw engine's data path lives here: the syscalls take raw pointers
//! obtained from vm-memory pointer guards, which are held for the duration of each call.

use std::alloc::{self, Layout};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::bitmap::Bitmap;

use super::DIRECT_ALIGN;
use crate::backend::GuestSlice;
use crate::error::{BlockError, Result};

/// At most this many iovecs per syscall (Linux `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;
/// Bounce/zero buffer alignment (covers 4 KiB-sector devices).
const BOUNCE_ALIGN: usize = 4096;
/// Chunk size for writing zeroes.
const ZERO_CHUNK: usize = 1 << 20;

/// A heap buffer aligned for O_DIRECT.
pub(super) struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (rounded up to the alignment).
    pub(super) fn zeroed(len: usize) -> Option<Self> {
        let size = len.max(1).checked_next_multiple_of(BOUNCE_ALIGN)?;
        let layout = Layout::from_size_align(size, BOUNCE_ALIGN).ok()?;
        // SAFETY: `layout` has non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return None;
        }
        Some(Self { ptr, layout })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live allocation of `layout.size()` bytes, initialised (zeroed), and
        // uniquely borrowed through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout.
        unsafe { alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Whether all buffers satisfy O_DIRECT's memory alignment.
fn direct_aligned(bufs: &[GuestSlice<'_>]) -> bool {
    bufs.iter().all(|b| {
        (b.ptr_guard().as_ptr() as usize).is_multiple_of(DIRECT_ALIGN as usize)
            && b.len().is_multiple_of(DIRECT_ALIGN as usize)
    })
}

fn bounce_alloc_error(path: &Path) -> BlockError {
    BlockError::io(
        "allocate bounce buffer",
        path,
        std::io::Error::from(std::io::ErrorKind::OutOfMemory),
    )
}

/// Read exactly `buf.len()` bytes at `offset` (zero-filled past end of file).
pub(super) fn read_exact_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BlockError::io("read", path, e)),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes at `offset` through an aligned bounce buffer covering the
/// range, so it works whether or not `file` was opened `O_DIRECT` (image metadata read at open
/// time, not the data path). A range past the end of the file is `UnexpectedEof`.
pub(crate) fn read_exact_at_aligned(
    file: &File,
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<()> {
    let align = BOUNCE_ALIGN as u64;
    let start = offset - offset % align;
    let skip = (offset - start) as usize;
    let mut bounce = AlignedBuf::zeroed(skip + buf.len())
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
    let data = bounce.as_mut_slice();
    let mut done = 0;
    while done < skip + buf.len() {
        match file.read_at(&mut data[done..], start + done as u64) {
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.copy_from_slice(&data[skip..skip + buf.len()]);
    Ok(())
}

/// Copy the first bytes of `bufs` into `out`; returns how many were available.
pub(super) fn copy_prefix(bufs: &[GuestSlice<'_>], out: &mut [u8]) -> usize {
    let mut done = 0;
    for b in bufs {
        if done == out.len() {
            break;
        }
        done += b.copy_to(&mut out[done..]);
    }
    done
}

/// An aligned buffer for an O_DIRECT transfer of all of `bufs`, and the
/// number of bytes they hold.
fn bounce_buffer(path: &Path, bufs: &[GuestSlice<'_>]) -> Result<(AlignedBuf, usize)> {
    let len =
        usize::try_from(crate::backend::total_len(bufs)).map_err(|_| bounce_alloc_error(path))?;
    let bounce = AlignedBuf::zeroed(len).ok_or_else(|| bounce_alloc_error(path))?;
    Ok((bounce, len))
}

/// Fill `bufs` from `file` at `offset`.
pub(crate) fn read_vectored_at(
    file: &File,
    path: &Path,
    direct: bool,
    bufs: &[GuestSlice<'_>],
    offset: u64,
) -> Result<()> {
    if direct && !direct_aligned(bufs) {
        let (mut bounce, len) = bounce_buffer(path, bufs)?;
        let data = &mut bounce.as_mut_slice()[..len];
        read_exact_at(file, path, data, offset)?;
        let mut pos = 0;
        for b in bufs {
            b.copy_from(&data[pos..pos + b.len()]);
            pos += b.len();
        }
        return Ok(());
    }
    transfer(file, path, bufs, offset, false)?;
    for b in bufs {
        b.bitmap().mark_dirty(0, b.len());
    }
    Ok(())
}

/// Write `bufs` to `file` at `offset`.
pub(crate) fn write_vectored_at(
    file: &File,
    path: &Path,
    direct: bool,
    bufs: &[GuestSlice<'_>],
    offset: u64,
) -> Result<()> {
    if direct && !direct_aligned(bufs) {
        let (mut bounce, len) = bounce_buffer(path, bufs)?;
        let data = &mut bounce.as_mut_slice()[..len];
        copy_prefix(bufs, data);
        return write_all_at(file, path, data, offset);
    }
    transfer(file, path, bufs, offset, true)
}

fn write_all_at(file: &File, path: &Path, mut data: &[u8], mut offset: u64) -> Result<()> {
    while !data.is_empty() {
        match file.write_at(data, offset) {
            Ok(0) => {
                return Err(BlockError::io(
                    "write",
                    path,
                    std::io::Error::from(std::io::ErrorKind::WriteZero),
                ))
            }
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BlockError::io("write", path, e)),
        }
    }
    Ok(())
}

/// Write `len` zero bytes at `offset` in 1 MiB chunks.
pub(super) fn write_zeroes_at(file: &File, path: &Path, offset: u64, len: u64) -> Result<()> {
    let chunk = usize::try_from(len).unwrap_or(ZERO_CHUNK).min(ZERO_CHUNK);
    let mut zeroes = AlignedBuf::zeroed(chunk).ok_or_else(|| bounce_alloc_error(path))?;
    let zeroes = zeroes.as_mut_slice();
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(chunk as u64) as usize;
        write_all_at(file, path, &zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// One syscall over `iov`; returns bytes moved.
fn syscall(fd: i32, iov: &[libc::iovec], offset: u64, write: bool) -> std::io::Result<usize> {
    let off = libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    loop {
        // The syscalls are made directly rather than through libc's wrappers, which are
        // pthread cancellation points and pay two atomic operations per call for it (measured
        // at 2 % of a virtio-blk worker's time); no Vireo thread is ever cancelled.
        // SAFETY: every iovec points into guest memory whose vm-memory pointer guard the caller
        // holds for the duration of this call, with the length of that slice; the arguments
        // match the kernel's pread64/pwrite64/preadv/pwritev signatures (on x86_64 the
        // vectored calls take the offset as low and high halves; the high half is zero).
        let ret = unsafe {
            match (iov.len(), write) {
                (1, false) => {
                    libc::syscall(libc::SYS_pread64, fd, iov[0].iov_base, iov[0].iov_len, off)
                }
                (1, true) => {
                    libc::syscall(libc::SYS_pwrite64, fd, iov[0].iov_base, iov[0].iov_len, off)
                }
                (n, false) => {
                    libc::syscall(libc::SYS_preadv, fd, iov.as_ptr(), n as libc::c_int, off, 0)
                }
                (n, true) => libc::syscall(
                    libc::SYS_pwritev,
                    fd,
                    iov.as_ptr(),
                    n as libc::c_int,
                    off,
                    0,
                ),
            }
        };
        if ret >= 0 {
            return Ok(ret as usize);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Move all of `bufs` between memory and the file, resuming short transfers. A read that hits
/// end of file zero-fills the rest.
fn transfer(
    file: &File,
    path: &Path,
    bufs: &[GuestSlice<'_>],
    offset: u64,
    write: bool,
) -> Result<()> {
    // Pointer guards keep the memory mapped while the syscalls run.
    if let [single] = bufs {
        let guard = single.ptr_guard_mut();
        let mut iov = [libc::iovec {
            iov_base: guard.as_ptr().cast(),
            iov_len: guard.len(),
        }];
        // `guard` lives until the end of this block, past the syscalls.
        return run(file, path, &mut iov, offset, write);
    }
    let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard_mut()).collect();
    let mut iov: Vec<libc::iovec> = guards
        .iter()
        .filter(|g| g.len() > 0)
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: g.len(),
        })
        .collect();
    // `guards` lives until the end of this function, past the syscalls.
    run(file, path, &mut iov, offset, write)
}

/// Transfer over `iov` (guarded guest memory) until done, at EOF (reads) or on error.
fn run(
    file: &File,
    path: &Path,
    iov: &mut [libc::iovec],
    mut offset: u64,
    write: bool,
) -> Result<()> {
    let op = if write { "write" } else { "read" };
    let fd = file.as_raw_fd();
    let mut first = 0;
    while first < iov.len() {
        let end = (first + IOV_MAX).min(iov.len());
        let n = syscall(fd, &iov[first..end], offset, write)
            .map_err(|e| BlockError::io(op, path, e))?;
        if n == 0 {
            if iov[first..].iter().all(|v| v.iov_len == 0) {
                return Ok(());
            }
            if write {
                return Err(BlockError::io(
                    op,
                    path,
                    std::io::Error::from(std::io::ErrorKind::WriteZero),
                ));
            }
            // End of file: the rest of the disk reads as zeroes.
            for v in &iov[first..] {
                // SAFETY: `v` describes guarded guest memory of `iov_len` bytes.
                unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
            }
            return Ok(());
        }
        offset += n as u64;
        let mut left = n;
        while first < iov.len() && (left > 0 || iov[first].iov_len == 0) {
            let v = &mut iov[first];
            if left >= v.iov_len {
                left -= v.iov_len;
                first += 1;
            } else {
                // SAFETY: advancing within the same guarded slice, `left < iov_len`.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(left) }.cast();
                v.iov_len -= left;
                left = 0;
            }
        }
    }
    Ok(())
}
