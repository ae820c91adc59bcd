//! Fuzz target: open arbitrary bytes as a qcow2 image and do I/O through it.
//!
//! Input layout: the first 16 bytes drive the requests (offsets, lengths, which operations);
//! the rest is the image file. The image lives in a file under /dev/shm (unique per process)
//! whose directory has no other files, so relative backing names resolve to nothing.
//! Opening must either fail with a typed error or yield a disk on which reads, writes,
//! write-zeroes, discard and flush return without panicking or hanging.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vireo_block::vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vireo_block::{open_qcow2_file, DiskBackend};

const MEM: usize = 256 * 1024;

fn memory() -> &'static GuestMemoryMmap<vireo_block::DirtyBitmap> {
    static MEMORY: OnceLock<GuestMemoryMmap<vireo_block::DirtyBitmap>> = OnceLock::new();
    MEMORY.get_or_init(|| {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).expect("guest memory")
    })
}

fn image_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = PathBuf::from(format!("/dev/shm/vireo-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz dir");
        dir.join("image.qcow2")
    })
}

fn exercise(disk: &dyn DiskBackend, script: &[u8; 16]) {
    let size = disk.size();
    if size == 0 {
        let _ = disk.flush();
        return;
    }
    let mem = memory();
    for (i, step) in script.chunks_exact(4).enumerate() {
        let word = u32::from_le_bytes([step[0], step[1], step[2], step[3]]) as u64;
        let offset = (word.wrapping_mul(0x9e37_79b9) << 9) % size;
        let len = (((step[1] as usize) << 8 | step[2] as usize) % (MEM / 2)).max(1);
        let len = len.min((size - offset) as usize);
        let slice = mem
            .get_slice(GuestAddress((i * 512) as u64), len)
            .expect("slice");
        let bufs = [slice];
        match step[3] % 6 {
            0 | 1 => {
                let _ = disk.read_vectored(offset, &bufs);
            }
            2 | 3 => {
                let _ = disk.write_vectored(offset, &bufs);
            }
            4 => {
                let _ = disk.write_zeroes(offset, len as u64, step[0] & 1 == 1);
            }
            _ => {
                let _ = disk.discard(offset, len as u64);
            }
        }
    }
    let _ = disk.flush();
    let slice = mem
        .get_slice(GuestAddress(0), 4096.min(size as usize))
        .expect("slice");
    let _ = disk.read_vectored(0, &[slice]);
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let mut script = [0u8; 16];
    script.copy_from_slice(&data[..16]);
    let path = image_path();
    if std::fs::write(path, &data[16..]).is_err() {
        return;
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    else {
        return;
    };
    if let Ok(disk) = open_qcow2_file(path, file, false) {
        exercise(disk.as_ref(), &script);
    }
});
