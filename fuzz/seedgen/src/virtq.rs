//! Inputs for `virtio_blk_request` and `virtio_net_chain`: split virtqueues in the layout that
//! `fuzz_targets/common/mod.rs` decodes —
//!
//! ```text
//!  [0] log2(queue size)  [1] avail idx  [2] bit 0: EVENT_IDX  [3] descriptor count
//!  16 bytes per descriptor (addr, len, flags, next; little endian)
//!  2 bytes per avail ring entry (head index)
//!  the rest: bytes placed in guest memory at DATA (0x4000)
//! ```
//!
//! Device-writable buffers (and large readable ones whose content does not matter) are put in
//! zeroed guest memory above the data area, so they cost no input bytes.

use crate::Seed;

/// Where the target copies the input's trailing bytes.
const DATA: u64 = 0x4000;
/// Start of the buffers that are not part of the input (guest memory is zero there).
const SCRATCH: u64 = 0x4_0000;
/// The boundary between the target's two guest memory regions (1 MiB split in halves).
const HALF: u64 = 0x8_0000;

const F_NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;

/// One buffer of a chain.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    addr: u64,
    len: u32,
    write: bool,
}

impl Buf {
    /// A buffer at a fixed address (for buffers placed on purpose, e.g. across a boundary).
    fn at(addr: u64, len: u32, write: bool) -> Self {
        Self { addr, len, write }
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}

/// Descriptors for `bufs` chained in order; `first` is the index of the first one.
fn linked(bufs: &[Buf], first: u16) -> Vec<[u8; 16]> {
    bufs.iter()
        .enumerate()
        .map(|(i, b)| {
            let last = i + 1 == bufs.len();
            let mut flags = if b.write { F_WRITE } else { 0 };
            let mut next = 0;
            if !last {
                flags |= F_NEXT;
                next = first + i as u16 + 1;
            }
            desc(b.addr, b.len, flags, next)
        })
        .collect()
}

/// A queue being built.
pub struct Queue {
    size_log2: u8,
    event_idx: bool,
    descs: Vec<[u8; 16]>,
    heads: Vec<u16>,
    data: Vec<u8>,
    scratch: u64,
}

impl Queue {
    /// An empty queue of `1 << size_log2` entries.
    pub fn new(size_log2: u8) -> Self {
        assert!(size_log2 <= 8);
        Self {
            size_log2,
            event_idx: false,
            descs: Vec::new(),
            heads: Vec::new(),
            data: Vec::new(),
            scratch: SCRATCH,
        }
    }

    /// Negotiates `VIRTIO_F_EVENT_IDX`.
    pub fn event_idx(mut self) -> Self {
        self.event_idx = true;
        self
    }

    /// `bytes` in the data area (16-byte aligned), as a device-readable buffer.
    pub fn put(&mut self, bytes: &[u8]) -> Buf {
        self.data.resize(self.data.len().next_multiple_of(16), 0);
        let addr = DATA + self.data.len() as u64;
        self.data.extend_from_slice(bytes);
        assert!(addr + bytes.len() as u64 <= SCRATCH, "data area full");
        Buf::at(addr, bytes.len() as u32, false)
    }

    fn scratch(&mut self, len: u32, write: bool) -> Buf {
        let addr = self.scratch;
        self.scratch = (addr + u64::from(len)).next_multiple_of(16);
        assert!(self.scratch <= HALF, "scratch area full");
        Buf::at(addr, len, write)
    }

    /// A device-writable buffer of `len` bytes.
    pub fn out(&mut self, len: u32) -> Buf {
        self.scratch(len, true)
    }

    /// A device-readable buffer of `len` zero bytes.
    pub fn zeros(&mut self, len: u32) -> Buf {
        self.scratch(len, false)
    }

    /// Offers `bufs` as one chain of consecutive descriptors.
    pub fn chain(&mut self, bufs: &[Buf]) {
        let first = self.descs.len() as u16;
        self.descs.extend(linked(bufs, first));
        self.heads.push(first);
    }

    /// Offers `bufs` as an indirect table (in the data area) behind one descriptor.
    pub fn indirect(&mut self, bufs: &[Buf]) {
        let table: Vec<u8> = linked(bufs, 0).concat();
        let t = self.put(&table);
        self.heads.push(self.descs.len() as u16);
        self.descs.push(desc(t.addr, t.len, F_INDIRECT, 0));
    }

    /// The encoded input.
    pub fn encode(&self) -> Vec<u8> {
        let size = 1usize << self.size_log2;
        assert!(self.descs.len() <= size.min(255), "too many descriptors");
        assert!(self.heads.len() <= size.min(255), "too many chains");
        let mut out = vec![
            self.size_log2,
            self.heads.len() as u8,
            u8::from(self.event_idx),
            self.descs.len() as u8,
        ];
        for d in &self.descs {
            out.extend_from_slice(d);
        }
        for h in &self.heads {
            out.extend_from_slice(&h.to_le_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }
}

/// virtio-blk request types.
mod blk {
    pub use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_T_DISCARD as DISCARD, VIRTIO_BLK_T_FLUSH as FLUSH,
        VIRTIO_BLK_T_GET_ID as GET_ID, VIRTIO_BLK_T_IN as IN, VIRTIO_BLK_T_OUT as OUT,
        VIRTIO_BLK_T_WRITE_ZEROES as WRITE_ZEROES,
    };
}

/// A virtio-blk request header.
fn hdr(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// Discard / write-zeroes ranges (sector, sectors, flags: bit 0 = unmap).
fn ranges(list: &[(u64, u32, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(sector, count, flags) in list {
        out.extend_from_slice(&sector.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
    }
    out
}

/// A recognisable data pattern.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

fn one(name: &str, size_log2: u8, build: impl FnOnce(&mut Queue)) -> Seed {
    let mut q = Queue::new(size_log2);
    build(&mut q);
    (name.to_string(), q.encode())
}

/// Requests of every type the device implements, well formed and framed in the ways drivers
/// frame them, plus the malformed cases the device must answer with an error status.
pub fn blk_seeds() -> Vec<Seed> {
    let read = |q: &mut Queue, sector: u64, len: u32| {
        let b = [q.put(&hdr(blk::IN, sector)), q.out(len), q.out(1)];
        q.chain(&b);
    };
    let write = |q: &mut Queue, sector: u64, len: usize| {
        let b = [
            q.put(&hdr(blk::OUT, sector)),
            q.put(&pattern(len, sector as u8)),
            q.out(1),
        ];
        q.chain(&b);
    };
    let mut seeds = vec![
        one("read", 3, |q| read(q, 0, 4096)),
        one("write", 3, |q| write(q, 8, 1024)),
        one("flush", 3, |q| {
            let b = [q.put(&hdr(blk::FLUSH, 0)), q.out(1)];
            q.chain(&b);
        }),
        one("get-id", 3, |q| {
            let b = [q.put(&hdr(blk::GET_ID, 0)), q.out(20), q.out(1)];
            q.chain(&b);
        }),
        one("discard", 3, |q| {
            let r = ranges(&[(0, 8, 0), (64, 16, 0)]);
            let b = [q.put(&hdr(blk::DISCARD, 0)), q.put(&r), q.out(1)];
            q.chain(&b);
        }),
        one("write-zeroes", 3, |q| {
            let r = ranges(&[(16, 8, 1), (128, 8, 0)]);
            let b = [q.put(&hdr(blk::WRITE_ZEROES, 0)), q.put(&r), q.out(1)];
            q.chain(&b);
        }),
        // Header split over two descriptors; data-in over three, the last also holding the
        // status byte (as Linux frames small reads).
        one("split-read", 3, |q| {
            let h = hdr(blk::IN, 4);
            let b = [
                q.put(&h[..8]),
                q.put(&h[8..]),
                q.out(512),
                q.out(1024),
                q.out(513),
            ];
            q.chain(&b);
        }),
        // Header and data-out in one descriptor.
        one("merged-write", 3, |q| {
            let mut bytes = hdr(blk::OUT, 32).to_vec();
            bytes.extend(pattern(2048, 7));
            let b = [q.put(&bytes), q.out(1)];
            q.chain(&b);
        }),
        one("indirect", 3, |q| {
            let b = [q.put(&hdr(blk::OUT, 3)), q.put(&pattern(512, 3)), q.out(1)];
            q.indirect(&b);
            let b = [q.put(&hdr(blk::IN, 3)), q.out(512), q.out(1)];
            q.indirect(&b);
        }),
        // Many data segments (the device takes up to SEG_MAX + 2 descriptors).
        one("many-segments", 8, |q| {
            let mut b = vec![q.put(&hdr(blk::IN, 0))];
            for _ in 0..128 {
                b.push(q.out(512));
            }
            b.push(q.out(1));
            q.chain(&b);
        }),
    ];
    // Several requests in one queue, with notification suppression.
    let mut q = Queue::new(4).event_idx();
    write(&mut q, 100, 4096);
    read(&mut q, 100, 4096);
    let b = [q.put(&hdr(blk::FLUSH, 0)), q.out(1)];
    q.chain(&b);
    let r = ranges(&[(100, 8, 1)]);
    let b = [q.put(&hdr(blk::WRITE_ZEROES, 0)), q.put(&r), q.out(1)];
    q.indirect(&b);
    read(&mut q, 2040, 4096);
    seeds.push(("batch".into(), q.encode()));
    // Malformed requests, each answered with an error status.
    let mut q = Queue::new(5);
    let b = [q.put(&hdr(99, 0)), q.out(1)]; // unsupported type
    q.chain(&b);
    read(&mut q, 2047, 1024); // past the end of the 1 MiB disk
    read(&mut q, 0, 100); // not a whole sector
    let b = [
        q.put(&hdr(blk::IN, 0)),
        q.out(512),
        q.put(&[0; 4]),
        q.out(1),
    ]; // readable after writable
    q.chain(&b);
    let b = [q.out(1)]; // no header
    q.chain(&b);
    let b = [
        q.put(&hdr(blk::IN, 0)),
        Buf::at(HALF - 256, 512, true), // across the region boundary
        q.out(1),
    ];
    q.chain(&b);
    let r = ranges(&[(0, u32::MAX, 0)]); // a range too long
    let b = [q.put(&hdr(blk::DISCARD, 0)), q.put(&r), q.out(1)];
    q.chain(&b);
    seeds.push(("errors".into(), q.encode()));
    seeds
}

/// A virtio-net header (12 bytes, no offloads) and a 60-byte ARP request.
fn frame() -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 10, 0, 2, 15]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 0, 2, 2]);
    f.resize(12 + 60, 0);
    f
}

/// Transmit and receive chains as drivers build them, plus chains the device must drop.
pub fn net_seeds() -> Vec<Seed> {
    let f = frame();
    let mut seeds = vec![
        one("tx", 3, |q| {
            let b = [q.put(&f[..12]), q.put(&f[12..])];
            q.chain(&b);
        }),
        one("tx-one-descriptor", 3, |q| {
            let b = [q.put(&f)];
            q.chain(&b);
        }),
        one("rx", 3, |q| {
            let b = [q.out(1526)];
            q.chain(&b);
        }),
        one("rx-split", 3, |q| {
            let b = [q.out(12), q.out(1514)];
            q.chain(&b);
        }),
        one("indirect", 3, |q| {
            let b = [q.put(&f[..12]), q.put(&f[12..])];
            q.indirect(&b);
            let b = [q.out(12), q.out(1514)];
            q.indirect(&b);
        }),
        // Biggest transmit accepted (65 550 + header) and one byte more.
        one("tx-limits", 3, |q| {
            let b = [q.zeros(12), q.zeros(0xffff), q.zeros(0x0f)];
            q.chain(&b);
            let b = [q.zeros(12), q.zeros(0xffff), q.zeros(0x10)];
            q.chain(&b);
        }),
    ];
    // A ring full of receive buffers (as Linux posts them) then traffic, with event idx.
    let mut q = Queue::new(5).event_idx();
    for _ in 0..8 {
        let b = [q.out(1526)];
        q.chain(&b);
    }
    for _ in 0..4 {
        let b = [q.put(&f[..12]), q.put(&f[12..])];
        q.chain(&b);
    }
    seeds.push(("ring".into(), q.encode()));
    // Chains both validations must refuse.
    let mut q = Queue::new(4);
    let b = [q.put(&f[..10])]; // shorter than the header
    q.chain(&b);
    let b = [q.out(10)];
    q.chain(&b);
    let b = [q.put(&f[..12]), q.out(1514)]; // mixed directions
    q.chain(&b);
    let b = [Buf::at(HALF - 512, 1526, true)]; // across the region boundary
    q.chain(&b);
    let b = [q.put(&f[..12]), Buf::at(HALF - 30, 60, false)];
    q.chain(&b);
    let b = [Buf::at(0xf_ff00, 0x200, true)]; // past the end of memory
    q.chain(&b);
    seeds.push(("refused".into(), q.encode()));
    seeds
}
