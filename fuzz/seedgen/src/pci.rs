//! Inputs for `virtio_pci_registers`: guest access sequences a virtio 1.2 driver performs on a
//! virtio-blk behind the modern virtio-pci transport, encoded as the target decodes them —
//!
//! ```text
//!  op (bits 6-7: access size 1 << n; bits 0-2: kind), a, b, c   (offset = u16 [b, c])
//!  kind 0: BAR0 read in region a       kind 1, 2: BAR0 write + 8 value bytes
//!  kind 3: config write + 8 bytes      kind 4: config read
//!  kind 5: guest memory write + 8 bytes at offset
//!  kind 6: notify queue 0              kind 7: read the status
//!  BAR0 regions (a % 8): 0 common cfg, 1 ISR, 2 device cfg, 3 notify, 4 MSI-X table, 5 PBA,
//!  6 raw offset, 7 near u64::MAX
//! ```
//!
//! Guest memory is written 8 bytes at a time; the builder keeps a copy of what it wrote so that
//! a small update (an avail index) rewrites its neighbours with their current values.

use crate::Seed;

/// The target's guest memory size.
const MEM_SIZE: usize = 64 * 1024;
/// Where the seeds put the rings and buffers.
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUFFERS: u64 = 0x4000;
/// Queue size the seeds program (the device's maximum is 256).
const QSIZE: u16 = 16;

/// BAR0 regions as the target numbers them.
const COMMON: u8 = 0;
const ISR: u8 = 1;
const DEVICE: u8 = 2;
const NOTIFY: u8 = 3;
const MSIX_TABLE: u8 = 4;
const MSIX_PBA: u8 = 5;
const RAW: u8 = 6;
const TOP: u8 = 7;

/// Common configuration registers.
mod reg {
    pub const DEVICE_FEATURE_SELECT: u16 = 0x00;
    pub const DEVICE_FEATURE: u16 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u16 = 0x08;
    pub const DRIVER_FEATURE: u16 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u16 = 0x10;
    pub const NUM_QUEUES: u16 = 0x12;
    pub const DEVICE_STATUS: u16 = 0x14;
    pub const QUEUE_SELECT: u16 = 0x16;
    pub const QUEUE_SIZE: u16 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u16 = 0x1a;
    pub const QUEUE_ENABLE: u16 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u16 = 0x1e;
    pub const QUEUE_DESC: u16 = 0x20;
    pub const QUEUE_DRIVER: u16 = 0x28;
    pub const QUEUE_DEVICE: u16 = 0x30;
}

/// Device status bits.
mod status {
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_FEATURES_OK,
    };
    pub const ACKNOWLEDGE: u64 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u64;
    pub const DRIVER: u64 = VIRTIO_CONFIG_S_DRIVER as u64;
    pub const DRIVER_OK: u64 = VIRTIO_CONFIG_S_DRIVER_OK as u64;
    pub const FEATURES_OK: u64 = VIRTIO_CONFIG_S_FEATURES_OK as u64;
}

/// Feature bits.
mod feature {
    use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_WRITE_ZEROES,
    };
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
    pub const SEG_MAX: u64 = 1 << VIRTIO_BLK_F_SEG_MAX;
    pub const BLK_SIZE: u64 = 1 << VIRTIO_BLK_F_BLK_SIZE;
    pub const FLUSH: u64 = 1 << VIRTIO_BLK_F_FLUSH;
    pub const DISCARD: u64 = 1 << VIRTIO_BLK_F_DISCARD;
    pub const WRITE_ZEROES: u64 = 1 << VIRTIO_BLK_F_WRITE_ZEROES;
    pub const INDIRECT_DESC: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
    pub const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
    pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
    pub const BASIC: u64 = VERSION_1 | SEG_MAX | BLK_SIZE | FLUSH;
    pub const ALL: u64 = BASIC | DISCARD | WRITE_ZEROES | INDIRECT_DESC | EVENT_IDX;
}

/// Configuration space: command register and the MSI-X capability's message control (the
/// transport's capabilities start at 0x40: four vendor capabilities of 16, 20, 16 and 16 bytes,
/// then MSI-X at 0x84).
const CFG_COMMAND: u16 = 0x04;
const CFG_BAR0: u16 = 0x10;
const CFG_MSIX_CONTROL: u16 = 0x86;
const BAR0_ADDR: u64 = 0xc000_0000;

/// Descriptor flags.
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// virtio-blk request types.
const IN: u32 = 0;
const OUT: u32 = 1;
const FLUSH: u32 = 4;
const GET_ID: u32 = 8;
const DISCARD: u32 = 11;
const WRITE_ZEROES: u32 = 13;

fn size_bits(size: usize) -> u8 {
    match size {
        1 => 0,
        2 => 1 << 6,
        4 => 2 << 6,
        8 => 3 << 6,
        _ => panic!("access size {size}"),
    }
}

/// An access sequence being built, with the driver's view of guest memory and of queue 0.
struct Ops {
    out: Vec<u8>,
    mem: Vec<u8>,
    next_desc: u16,
    avail_idx: u16,
    buffers: u64,
}

impl Ops {
    fn new() -> Self {
        Self {
            out: Vec::new(),
            mem: vec![0; MEM_SIZE],
            next_desc: 0,
            avail_idx: 0,
            buffers: BUFFERS,
        }
    }

    fn op(&mut self, kind: u8, size: usize, a: u8, off: u16) {
        self.out.push(size_bits(size) | kind);
        self.out.push(a);
        self.out.extend_from_slice(&off.to_le_bytes());
    }

    fn read(&mut self, region: u8, off: u16, size: usize) {
        self.op(0, size, region, off);
    }

    fn write(&mut self, region: u8, off: u16, size: usize, value: u64) {
        self.op(1, size, region, off);
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    fn common(&mut self, off: u16, size: usize, value: u64) {
        self.write(COMMON, off, size, value);
    }

    fn cfg_write(&mut self, off: u16, size: usize, value: u64) {
        self.op(3, size, 0, off);
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    fn cfg_read(&mut self, off: u16, size: usize) {
        self.op(4, size, 0, off);
    }

    fn notify(&mut self) {
        self.op(6, 1, 0, 0);
    }

    fn status(&mut self) {
        self.op(7, 1, 0, 0);
    }

    /// Writes `bytes` at `addr` in guest memory (as whole 8-byte words).
    fn mem(&mut self, addr: u64, bytes: &[u8]) {
        let start = addr as usize;
        self.mem[start..start + bytes.len()].copy_from_slice(bytes);
        let mut word = start / 8 * 8;
        while word < start + bytes.len() {
            let chunk: [u8; 8] = self.mem[word..word + 8].try_into().expect("8 bytes");
            self.op(5, 1, 0, word as u16);
            self.out.extend_from_slice(&chunk);
            word += 8;
        }
    }

    /// A buffer in guest memory: `bytes` for device-readable ones, zeroes of `len` otherwise.
    fn buffer(&mut self, bytes: &[u8], len: usize) -> u64 {
        let addr = self.buffers;
        self.buffers = (addr + len.max(bytes.len()) as u64).next_multiple_of(16);
        assert!(self.buffers <= MEM_SIZE as u64, "buffers full");
        if !bytes.is_empty() {
            self.mem(addr, bytes);
        }
        addr
    }

    /// Writes descriptors for `bufs` ((address, length, device-writable)) chained in order
    /// starting at table index `first` of the table at `table`.
    fn descriptors(&mut self, table: u64, first: u16, bufs: &[(u64, u32, bool)]) {
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let index = first + i as u16;
            let last = i + 1 == bufs.len();
            let flags = if write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            let next = if last { 0 } else { index + 1 };
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem(table + 16 * u64::from(index), &d);
        }
    }

    fn offer(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        self.mem(slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let idx = self.avail_idx.to_le_bytes();
        self.mem(AVAIL + 2, &idx);
    }

    /// Places a virtio-blk request (header, data-out, `data_in` writable bytes, status) on
    /// queue 0, directly or through an indirect table.
    fn request(&mut self, kind: u32, sector: u64, data_out: &[u8], data_in: u32, indirect: bool) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        let mut bufs = vec![(self.buffer(&h, 16), 16, false)];
        if !data_out.is_empty() {
            bufs.push((self.buffer(data_out, 0), data_out.len() as u32, false));
        }
        if data_in > 0 {
            bufs.push((self.buffer(&[], data_in as usize), data_in, true));
        }
        bufs.push((self.buffer(&[], 1), 1, true));
        let head = self.next_desc % QSIZE;
        if indirect {
            let table = self.buffer(&[], 16 * bufs.len());
            self.descriptors(table, 0, &bufs);
            let len = 16 * bufs.len() as u32;
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&table.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&F_INDIRECT.to_le_bytes());
            self.mem(DESC + 16 * u64::from(head), &d);
            self.next_desc += 1;
        } else {
            assert!(head as usize + bufs.len() <= QSIZE as usize, "ring full");
            self.descriptors(DESC, head, &bufs);
            self.next_desc += bufs.len() as u16;
        }
        self.offer(head);
    }

    /// Enables MSI-X and programs vectors 0 and 1.
    fn msix(&mut self) {
        self.cfg_write(CFG_COMMAND, 2, 0x0006); // memory space, bus master
        self.cfg_write(CFG_MSIX_CONTROL, 2, 0x8000);
        for v in 0..2u16 {
            self.write(MSIX_TABLE, 16 * v, 4, 0xfee0_0000);
            self.write(MSIX_TABLE, 16 * v + 4, 4, 0);
            self.write(MSIX_TABLE, 16 * v + 8, 4, 0x41 + u64::from(v));
            self.write(MSIX_TABLE, 16 * v + 12, 4, 0);
        }
    }

    /// Reset, ACKNOWLEDGE, DRIVER, feature negotiation (`features`), FEATURES_OK.
    fn negotiate(&mut self, features: u64) {
        self.common(reg::DEVICE_STATUS, 1, 0);
        self.common(reg::DEVICE_STATUS, 1, status::ACKNOWLEDGE);
        self.common(reg::DEVICE_STATUS, 1, status::ACKNOWLEDGE | status::DRIVER);
        for sel in 0..2 {
            self.common(reg::DEVICE_FEATURE_SELECT, 4, sel);
            self.read(COMMON, reg::DEVICE_FEATURE, 4);
        }
        for sel in 0..2 {
            self.common(reg::DRIVER_FEATURE_SELECT, 4, sel);
            self.common(
                reg::DRIVER_FEATURE,
                4,
                (features >> (32 * sel)) & 0xffff_ffff,
            );
        }
        self.common(
            reg::DEVICE_STATUS,
            1,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.read(COMMON, reg::DEVICE_STATUS, 1);
    }

    /// Programs queue 0 (size, vector, rings as Linux does: 64-bit addresses in halves).
    fn setup_queue(&mut self, desc: u64) {
        self.common(reg::CONFIG_MSIX_VECTOR, 2, 0);
        self.read(COMMON, reg::NUM_QUEUES, 2);
        self.common(reg::QUEUE_SELECT, 2, 0);
        self.read(COMMON, reg::QUEUE_SIZE, 2);
        self.common(reg::QUEUE_SIZE, 2, u64::from(QSIZE));
        self.common(reg::QUEUE_MSIX_VECTOR, 2, 1);
        self.read(COMMON, reg::QUEUE_MSIX_VECTOR, 2);
        for (off, addr) in [
            (reg::QUEUE_DESC, desc),
            (reg::QUEUE_DRIVER, AVAIL),
            (reg::QUEUE_DEVICE, USED),
        ] {
            self.common(off, 4, addr & 0xffff_ffff);
            self.common(off + 4, 4, addr >> 32);
        }
        self.read(COMMON, reg::QUEUE_NOTIFY_OFF, 2);
        self.common(reg::QUEUE_ENABLE, 2, 1);
    }

    fn driver_ok(&mut self) {
        self.common(
            reg::DEVICE_STATUS,
            1,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        self.status();
    }

    /// After a notify: what an interrupt handler reads.
    fn interrupt(&mut self) {
        self.read(ISR, 0, 1);
        self.read(MSIX_PBA, 0, 8);
        self.status();
    }

    fn done(self, name: &str) -> Seed {
        (name.to_string(), self.out)
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed ^ (i as u8)).collect()
}

/// One range of a discard / write-zeroes request.
fn range(sector: u64, count: u32, flags: u32) -> Vec<u8> {
    let mut r = sector.to_le_bytes().to_vec();
    r.extend_from_slice(&count.to_le_bytes());
    r.extend_from_slice(&flags.to_le_bytes());
    r
}

/// A driver bringing the device up and doing I/O, then resetting it.
fn init_io() -> Seed {
    let mut o = Ops::new();
    o.msix();
    o.negotiate(feature::BASIC);
    o.setup_queue(DESC);
    for off in [0, 8, 12, 20, 34] {
        o.read(DEVICE, off, 4); // capacity, seg_max, blk_size, num_queues
    }
    o.request(IN, 0, &[], 4096, false);
    o.driver_ok();
    o.notify();
    o.interrupt();
    o.request(OUT, 8, &pattern(1024, 0x5a), 0, false);
    o.notify();
    o.interrupt();
    o.common(reg::DEVICE_STATUS, 1, 0);
    o.read(COMMON, reg::DEVICE_STATUS, 1);
    o.done("init-io")
}

/// Every request type, indirect tables and event idx.
fn all_requests() -> Seed {
    let mut o = Ops::new();
    o.msix();
    o.negotiate(feature::ALL);
    o.setup_queue(DESC);
    o.driver_ok();
    o.request(OUT, 16, &pattern(2048, 1), 0, false);
    o.request(IN, 16, &[], 2048, true);
    o.request(FLUSH, 0, &[], 0, true);
    o.notify();
    o.interrupt();
    o.request(GET_ID, 0, &[], 20, true);
    o.request(DISCARD, 0, &range(0, 8, 0), 0, true);
    o.request(WRITE_ZEROES, 0, &range(32, 8, 1), 0, true);
    o.request(IN, 2047, &[], 1024, true); // past the end
    o.notify();
    o.interrupt();
    o.done("all-requests")
}

/// What firmware and an OS's PCI layer do before a driver: walk configuration space, size
/// BAR0, touch every BAR0 region with every access size.
fn probe() -> Seed {
    let mut o = Ops::new();
    for off in (0..0x100).step_by(4) {
        o.cfg_read(off, 4);
    }
    o.cfg_read(0x34, 1);
    o.cfg_write(CFG_BAR0, 4, 0xffff_ffff);
    o.cfg_read(CFG_BAR0, 4);
    o.cfg_write(CFG_BAR0, 4, BAR0_ADDR);
    o.cfg_write(CFG_BAR0, 4, 0xd000_0000); // moved: refused, logged
    o.cfg_write(CFG_BAR0, 4, BAR0_ADDR);
    o.cfg_write(CFG_MSIX_CONTROL, 2, 0xc000); // enabled, function masked
    o.cfg_read(CFG_MSIX_CONTROL, 2);
    o.cfg_write(0x1000, 4, 1); // extended config space
    o.cfg_read(0x1000, 4);
    for region in [COMMON, ISR, DEVICE, NOTIFY, MSIX_TABLE, MSIX_PBA, RAW, TOP] {
        for size in [1, 2, 4, 8] {
            o.read(region, 0, size);
            o.read(region, 6, size);
        }
    }
    o.write(MSIX_TABLE, 0x20, 8, 0xfee0_0000); // entries past the two vectors
    o.read(MSIX_TABLE, 0x30, 4);
    o.write(MSIX_TABLE, 12, 4, 1); // mask vector 0
    o.write(RAW, 0x3ffc, 4, 0);
    o.write(TOP, 0, 8, 0);
    o.write(DEVICE, 0, 8, 0);
    o.write(NOTIFY, 4, 2, 0); // notify a queue that does not exist
    o.cfg_write(CFG_MSIX_CONTROL, 2, 0x8000); // unmask the function
    o.done("probe")
}

/// Drivers that get things wrong: features the device does not offer, no VERSION_1, rings
/// that are misaligned or outside memory, a queue that is not enabled, queue registers written
/// after DRIVER_OK, registers written with odd sizes across field boundaries.
fn mistakes() -> Seed {
    let mut o = Ops::new();
    o.negotiate(feature::BASIC | 1 << 40); // not offered
    o.negotiate(feature::SEG_MAX); // no VERSION_1
    o.negotiate(feature::BASIC);
    o.setup_queue(DESC + 1); // misaligned descriptor table
    o.driver_ok(); // activation fails: DEVICE_NEEDS_RESET
    o.interrupt();
    o.negotiate(feature::BASIC);
    o.setup_queue(0xffff_0000); // outside guest memory
    o.driver_ok();
    o.negotiate(feature::BASIC);
    o.common(reg::QUEUE_SIZE, 2, 3); // not a power of two
    o.common(reg::QUEUE_SIZE, 2, 512); // above the maximum
    o.driver_ok(); // queue 0 not enabled
    o.negotiate(feature::BASIC);
    o.setup_queue(DESC);
    o.driver_ok();
    o.common(reg::QUEUE_SIZE, 2, 4); // after DRIVER_OK: ignored
    o.common(reg::QUEUE_DESC, 8, 0x8000);
    o.common(reg::QUEUE_SELECT, 2, 5); // no such queue
    for off in [
        reg::QUEUE_SIZE,
        reg::QUEUE_ENABLE,
        reg::QUEUE_NOTIFY_OFF,
        reg::QUEUE_DESC,
    ] {
        o.read(COMMON, off, 2);
    }
    o.common(reg::QUEUE_MSIX_VECTOR, 2, 7); // no such vector
    o.common(reg::CONFIG_MSIX_VECTOR, 2, 0xffff);
    o.write(COMMON, 0x12, 8, 0x0001_0000_0f00_0000); // across several fields
    o.write(COMMON, 0x3f, 2, 0xffff); // past the end of the common config
    o.common(reg::DRIVER_FEATURE, 4, 0); // after FEATURES_OK: ignored
    o.common(reg::DEVICE_FEATURE_SELECT, 4, 7);
    o.read(COMMON, reg::DEVICE_FEATURE, 4);
    o.common(reg::DEVICE_STATUS, 1, 0x80); // FAILED
    o.common(reg::DEVICE_STATUS, 1, 0);
    o.done("mistakes")
}

/// A device reset while requests are in flight, then a second bring-up on the same rings.
fn reset_and_reuse() -> Seed {
    let mut o = Ops::new();
    o.msix();
    o.negotiate(feature::BASIC | feature::EVENT_IDX);
    o.setup_queue(DESC);
    o.driver_ok();
    o.request(OUT, 0, &pattern(512, 9), 0, false);
    o.request(IN, 0, &[], 512, false);
    o.notify();
    o.common(reg::DEVICE_STATUS, 1, 0);
    o.negotiate(feature::BASIC | feature::EVENT_IDX);
    o.setup_queue(DESC);
    // used_event: interrupt after the first completion only.
    o.mem(AVAIL + 4 + 2 * u64::from(QSIZE), &1u16.to_le_bytes());
    o.driver_ok();
    o.notify();
    o.interrupt();
    o.done("reset-and-reuse")
}

/// All `virtio_pci_registers` seeds.
pub fn seeds() -> Vec<Seed> {
    vec![
        init_io(),
        all_requests(),
        probe(),
        mistakes(),
        reset_and_reuse(),
    ]
}
