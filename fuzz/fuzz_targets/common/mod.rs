//! Shared by the virtio chain fuzz targets: a small guest memory and a split virtqueue whose
//! descriptor table, avail ring and buffer contents come from the fuzz input.
//!
//! Input layout (missing bytes read as zero):
//! ```text
//!  [0] queue size = 1 << (b % 9)        [1] avail idx (entries the driver claims to offer)
//!  [2] bit 0: EVENT_IDX                 [3] descriptors given (the rest of the table is zero)
//!  16 bytes per given descriptor        2 bytes per avail entry (head index)
//!  the rest: buffer bytes at DATA (indirect tables, headers, frames)
//! ```
//! Descriptor addresses and lengths are folded into guest memory (plus a little beyond its end,
//! so straddling buffers occur) unless their top bit is set, which keeps the raw value.

#![allow(dead_code)] // Each target uses a subset.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use vireo_block::{create_raw, open_disk, DiskBackend, Format, OpenOptions};
use vireo_devices::virtio::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Guest memory size.
pub const MEM_SIZE: usize = 1 << 20;
const DESC: u64 = 0x0000;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const DATA: u64 = 0x4000;
/// Most chains taken from the queue in one run.
pub const MAX_CHAINS: usize = 512;

/// Fresh zeroed guest memory (new anonymous mappings: cheap, and runs do not leak state), in
/// two adjacent regions so buffers that span a region boundary are exercised too.
pub fn memory() -> GuestMemory {
    let half = MEM_SIZE / 2;
    GuestMemory::from_ranges(&[(GuestAddress(0), half), (GuestAddress(half as u64), half)])
        .expect("guest memory")
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.0.first().copied().unwrap_or(0);
        self.0 = self.0.get(1..).unwrap_or(&[]);
        b
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        for x in &mut b {
            *x = self.byte();
        }
        b
    }
}

/// Writes the rings and buffers described by `data` into `mem` and returns the queue, ready.
pub fn load(mem: &GuestMemory, data: &[u8]) -> Queue {
    let mut c = Cursor(data);
    let size: u16 = 1 << (c.byte() % 9);
    let avail_idx = u16::from(c.byte());
    let flags = c.byte();
    let ndesc = u16::from(c.byte()).min(size);
    for i in 0..ndesc {
        let raw = c.bytes::<16>();
        let mut addr = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
        let mut len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
        if addr >> 63 == 0 {
            addr %= MEM_SIZE as u64 + 0x1000;
        }
        if len >> 31 == 0 {
            len %= 0x1_0000;
        }
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..16].copy_from_slice(&raw[12..16]);
        mem.write_slice(&d, GuestAddress(DESC + 16 * u64::from(i)))
            .expect("descriptor table");
    }
    for i in 0..avail_idx.min(size) {
        let head = c.bytes::<2>();
        mem.write_slice(&head, GuestAddress(AVAIL + 4 + 2 * u64::from(i)))
            .expect("avail ring");
    }
    mem.write_slice(&avail_idx.to_le_bytes(), GuestAddress(AVAIL + 2))
        .expect("avail idx");
    let rest = c.0;
    let n = rest.len().min(MEM_SIZE - DATA as usize);
    mem.write_slice(&rest[..n], GuestAddress(DATA))
        .expect("buffers");

    let mut q = Queue::new(256).expect("queue");
    q.set_size(size);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(flags & 1 != 0);
    q.set_ready(true);
    assert!(q.is_valid(mem), "the harness's rings are valid");
    q
}

/// A 1 MiB raw disk in `/dev/shm/vireo-fuzz-<tag>-<pid>`, created once per process.
pub fn raw_disk(tag: &str) -> Arc<dyn DiskBackend> {
    static DISK: OnceLock<Arc<dyn DiskBackend>> = OnceLock::new();
    DISK.get_or_init(|| {
        let dir = PathBuf::from(format!("/dev/shm/vireo-fuzz-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz dir");
        let path = dir.join("disk.raw");
        let _ = std::fs::remove_file(&path);
        create_raw(&path, 1 << 20).expect("create raw disk");
        let opts = OpenOptions {
            format: Some(Format::Raw),
            serial: Some("fuzz".into()),
            ..OpenOptions::default()
        };
        Arc::from(open_disk(&path, &opts).expect("open raw disk"))
    })
    .clone()
}

/// The MSI sink of a virtio-pci function with one queue: two vectors (configuration and queue
/// 0). Routing or firing any other vector fails the target; fires are counted.
#[derive(Default)]
pub struct TwoVectors {
    /// Vectors fired so far.
    pub fired: std::sync::atomic::AtomicU64,
}

impl vireo_devices::virtio::interrupt::MsiVectors for TwoVectors {
    fn count(&self) -> usize {
        2
    }
    fn set_route(
        &self,
        index: usize,
        _message: Option<vireo_devices::virtio::interrupt::MsiMessage>,
    ) -> std::io::Result<()> {
        assert!(index < 2, "route for vector {index}");
        Ok(())
    }
    fn fire(&self, index: usize) -> std::io::Result<()> {
        assert!(index < 2, "fired vector {index}");
        self.fired
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
