//! `qcow2_open` inputs from real qcow2 images.
//!
//! The target takes 16 bytes of request script (four 4-byte steps: the whole step word picks
//! the offset, bytes 1–2 the length, byte 3 % 6 the operation — 0/1 read, 2/3 write,
//! 4 write-zeroes (byte 0 bit 0: may unmap), 5 discard) followed by the image file. Each image
//! becomes two inputs: one with reads and writes (allocation, copy-on-write from snapshots,
//! compressed-cluster reads), one with write-zeroes and discards (zero clusters, freeing).

use std::path::Path;

use crate::Seed;

/// Reads and writes: read 4 KiB, write 512 B, write 12 KiB, read 256 B.
const SCRIPT_RW: [u8; 16] = [
    0x00, 0x10, 0x00, 0, //
    0x01, 0x02, 0x00, 2, //
    0x07, 0x30, 0x00, 3, //
    0x03, 0x01, 0x00, 1,
];

/// Write-zeroes (unmapping), discard, write-zeroes (keeping allocation), write.
const SCRIPT_ZD: [u8; 16] = [
    0x01, 0x20, 0x00, 4, //
    0x02, 0x10, 0x00, 5, //
    0x04, 0x04, 0x00, 4, //
    0x05, 0x02, 0x00, 2,
];

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Zeroes the creation time (`date_sec`, `date_nsec`) of every internal snapshot, the only
/// part of a qemu-img image that changes from run to run.
fn zero_snapshot_dates(image: &mut [u8]) {
    if image.len() < 72 || image[..4] != *b"QFI\xfb" {
        return;
    }
    let count = be32(image, 60);
    let mut at = usize::try_from(be64(image, 64)).expect("snapshot table offset");
    for _ in 0..count {
        let id_len = usize::from(be16(image, at + 12));
        let name_len = usize::from(be16(image, at + 14));
        let extra_len = be32(image, at + 36) as usize;
        image[at + 16..at + 24].fill(0);
        at += (40 + extra_len + id_len + name_len).next_multiple_of(8);
    }
}

/// The `qcow2_open` inputs for the image at `path`, named after its file name.
pub fn seeds(path: &Path) -> Vec<Seed> {
    let mut image = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    zero_snapshot_dates(&mut image);
    let stem = path
        .file_stem()
        .expect("image file name")
        .to_string_lossy()
        .into_owned();
    [("rw", SCRIPT_RW), ("zd", SCRIPT_ZD)]
        .into_iter()
        .map(|(tag, script)| {
            let mut input = script.to_vec();
            input.extend_from_slice(&image);
            (format!("{stem}.{tag}"), input)
        })
        .collect()
}
