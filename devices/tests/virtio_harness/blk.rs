//! virtio-blk through the harness: good requests against raw and qcow2 images, every malformed
//! chain the device must survive, and ring corruption.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tempfile::TempDir;
use vireo_block::{
    create_qcow2, create_raw, open_disk, DiskBackend, Format, OpKind, OpenOptions,
    DEFAULT_CLUSTER_SIZE,
};
use vireo_devices::virtio::block::request::{kind, status as blk_status};
use vireo_devices::virtio::block::{feature, BlockCounters, VirtioBlock, MAX_RANGES, SEG_MAX};
use vireo_devices::virtio::{features, status};

use crate::driver::{
    assert_bytes, linked, thread_names, unique_index, Desc, Driver, Seg, Used, F_NEXT, F_WRITE,
    MEM_SIZE, PAUSED_WATCH,
};

/// Disk size used by most tests: 8 MiB.
const DISK_SIZE: u64 = 8 << 20;
const SECTORS: u64 = DISK_SIZE / 512;
/// Fill of writable buffers, so bytes the device did not write show.
const UNTOUCHED: u8 = 0xee;

/// A virtio-blk device on a real image, initialised by the harness.
struct Blk {
    drv: Driver,
    counters: Arc<BlockCounters>,
    disk: Arc<dyn DiskBackend>,
    path: PathBuf,
    index: usize,
    _dir: TempDir,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Image {
    Raw,
    RawReadOnly,
    Qcow2,
}

fn open(path: &Path, format: Format, read_only: bool) -> Arc<dyn DiskBackend> {
    let opts = OpenOptions {
        format: Some(format),
        read_only,
        serial: Some("vireo-harness-disk01".into()),
        ..OpenOptions::default()
    };
    Arc::from(open_disk(path, &opts).expect("open_disk"))
}

impl Blk {
    /// A device on a fresh image, not initialised.
    fn new_uninit(image: Image) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, disk) = match image {
            Image::Raw | Image::RawReadOnly => {
                let path = dir.path().join("disk.raw");
                create_raw(&path, DISK_SIZE).expect("create_raw");
                // Known content, so read-only and round-trip checks have something to compare.
                let pattern: Vec<u8> = (0..DISK_SIZE).map(|i| (i / 512) as u8 ^ 0x5a).collect();
                std::fs::write(&path, &pattern).expect("fill raw image");
                let disk = open(&path, Format::Raw, image == Image::RawReadOnly);
                (path, disk)
            }
            Image::Qcow2 => {
                let path = dir.path().join("disk.qcow2");
                create_qcow2(&path, DISK_SIZE, DEFAULT_CLUSTER_SIZE).expect("create_qcow2");
                let disk = open(&path, Format::Qcow2, false);
                (path, disk)
            }
        };
        let index = unique_index();
        let dev = VirtioBlock::new(disk.clone(), index);
        let counters = dev.counters();
        Self {
            drv: Driver::new(Box::new(dev)),
            counters,
            disk,
            path,
            index,
            _dir: dir,
        }
    }

    /// A device on a fresh image, initialised with every offered feature.
    fn new(image: Image) -> Self {
        let mut b = Self::new_uninit(image);
        b.drv.init_all();
        b
    }

    fn worker_name(&self) -> String {
        format!("vireo-blk{}", self.index)
    }

    /// The host file's bytes at `offset`.
    fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let f = std::fs::File::open(&self.path).expect("open image");
        let mut v = vec![0u8; len];
        f.read_exact_at(&mut v, offset).expect("read image");
        v
    }

    /// A header segment.
    fn hdr(&mut self, ty: u32, sector: u64) -> Seg {
        self.drv.rbuf(&header(ty, sector))
    }

    /// A one-byte status segment.
    fn status_seg(&mut self) -> Seg {
        self.drv.wbuf(1, UNTOUCHED)
    }

    /// A FLUSH request: header and status.
    fn flush_req(&mut self) -> [Seg; 2] {
        [self.hdr(kind::FLUSH, 0), self.status_seg()]
    }

    /// An IN request of `len` bytes at `sector`: header, writable data, status.
    fn in_req(&mut self, sector: u64, len: usize) -> [Seg; 3] {
        [
            self.hdr(kind::IN, sector),
            self.drv.wbuf(len, UNTOUCHED),
            self.status_seg(),
        ]
    }

    /// An OUT request of `data` at `sector`: header, readable data, status.
    fn out_req(&mut self, sector: u64, data: &[u8]) -> [Seg; 3] {
        [
            self.hdr(kind::OUT, sector),
            self.drv.rbuf(data),
            self.status_seg(),
        ]
    }

    /// A `ty` request at sector 0 carrying both a readable 512-byte buffer of `fill` bytes and
    /// a writable 512-byte buffer, then the status.
    fn both_directions_req(&mut self, ty: u32, fill: u8) -> [Seg; 4] {
        [
            self.hdr(ty, 0),
            self.drv.rbuf(&[fill; 512]),
            self.drv.wbuf(512, UNTOUCHED),
            self.status_seg(),
        ]
    }

    /// A DISCARD / WRITE_ZEROES request: header, `ranges` and `extra` bytes in one readable
    /// descriptor, then the status.
    fn ranges_req(&mut self, ty: u32, ranges: &[[u8; 16]], extra: &[u8]) -> [Seg; 2] {
        let mut out = header(ty, 0).to_vec();
        out.extend(ranges.iter().flatten());
        out.extend_from_slice(extra);
        [self.drv.rbuf(&out), self.status_seg()]
    }

    /// Writes a hand-built two-descriptor chain, header `h` → status `st`, whose status
    /// descriptor also has `NEXT` set and claims the successor `status_next(head)`; returns the
    /// head.
    fn write_hdr_status(&mut self, h: Seg, st: Seg, status_next: impl FnOnce(u16) -> u16) -> u16 {
        let first = self.drv.take_descs(0, 2);
        self.drv.write_desc(0, first, hdr_desc(h, first + 1));
        self.drv
            .write_desc(0, first + 1, linked_status_desc(st, status_next(first)));
        first
    }

    /// Publishes the chain at `head`, notifies, and waits for its used element.
    fn publish_and_wait(&mut self, head: u16) -> Used {
        self.drv.publish_and_kick(0, head);
        self.drv.wait_used(0)
    }

    /// Negotiates `features`, routes the config vector to 0, lets `setup_queue` program queue
    /// 0 and sets DRIVER_OK. Returns the config vector's count from just before DRIVER_OK.
    fn activate(&mut self, features: u64, setup_queue: impl FnOnce(&mut Driver)) -> u64 {
        assert!(self.drv.negotiate(features));
        self.drv
            .set_common(crate::driver::reg::CONFIG_MSIX_VECTOR, 2, 0);
        setup_queue(&mut self.drv);
        let cfg = self.drv.msi.fired(0);
        self.drv.driver_ok();
        cfg
    }

    /// A device with every offered feature whose only queue has its rings at `desc` / `avail` /
    /// `used`, after DRIVER_OK; also the config vector's count from just before DRIVER_OK.
    fn with_rings_at(desc: u64, avail: u64, used: u64) -> (Self, u64) {
        let mut b = Self::new_uninit(Image::Raw);
        let f = b.drv.device_features();
        let cfg = b.activate(f, |drv| {
            drv.setup_queue_at(0, 256, 1, desc, avail, used);
        });
        (b, cfg)
    }

    /// Submits `segs`, waits, and returns the used element and the chain's last writable byte.
    fn run(&mut self, segs: &[Seg]) -> (Used, u8) {
        let head = self.drv.submit(0, segs);
        self.complete(head, segs)
    }

    /// Like [`Blk::run`] through an indirect table.
    fn run_indirect(&mut self, segs: &[Seg]) -> (Used, u8) {
        let head = self.drv.submit_indirect(0, segs);
        self.complete(head, segs)
    }

    fn complete(&mut self, head: u16, segs: &[Seg]) -> (Used, u8) {
        let used = self.drv.wait_used(0);
        assert_eq!(used.id, u32::from(head), "used id is the chain head");
        (used, last_writable_byte(&self.drv, segs))
    }

    /// Writes `data` at `sector` (header, data, status) and returns the status.
    fn write(&mut self, sector: u64, data: &[u8]) -> u8 {
        let segs = self.out_req(sector, data);
        let (used, st) = self.run(&segs);
        assert_eq!(used.len, 1, "OUT used length");
        st
    }

    /// Reads `len` bytes at `sector`; returns the status and the data.
    fn read(&mut self, sector: u64, len: usize) -> (u8, Vec<u8>) {
        let segs = self.in_req(sector, len);
        let (used, st) = self.run(&segs);
        if st == blk_status::OK {
            assert_eq!(used.len as usize, len + 1, "IN used length");
        }
        (st, self.drv.seg_bytes(segs[1]))
    }

    /// The device still serves a write/read round trip and does not need a reset.
    fn assert_still_works(&mut self) {
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(self.write(12_000, &data), blk_status::OK, "follow-up write");
        let (st, back) = self.read(12_000, 1024);
        assert_eq!(st, blk_status::OK, "follow-up read");
        assert_bytes(&back, &data, "follow-up data");
        let s = self.drv.status();
        assert_eq!(s & status::DEVICE_NEEDS_RESET, 0, "status {s:#x}");
    }

    /// Runs a malformed chain and checks the guest sees `IOERR` (used length 1), then that the
    /// device keeps working.
    fn expect_ioerr(&mut self, segs: &[Seg]) {
        self.expect_status(segs, blk_status::IOERR);
    }

    fn expect_status(&mut self, segs: &[Seg], want: u8) {
        let failed = self.counters.failed.load(Ordering::Relaxed);
        let (used, st) = self.run(segs);
        assert_eq!(st, want, "status byte");
        assert_eq!(used.len, 1, "used length of a failed request");
        assert_eq!(self.counters.failed.load(Ordering::Relaxed), failed + 1);
        self.assert_still_works();
    }

    /// Publishes an already written chain at `head`, checks the guest sees used length 0 (no
    /// writable byte the device could use) and that the device keeps working.
    fn expect_dropped(&mut self, head: u16) {
        let used = self.publish_and_wait(head);
        assert_eq!(used.id, u32::from(head));
        assert_eq!(
            used.len, 0,
            "used length of a chain without a usable status byte"
        );
        self.assert_still_works();
    }
}

/// A request header.
pub(crate) fn header(ty: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&ty.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// The header descriptor of a hand-built chain: `h`, linked to descriptor `next`.
fn hdr_desc(h: Seg, next: u16) -> Desc {
    Desc {
        addr: h.addr,
        len: 16,
        flags: F_NEXT,
        next,
    }
}

/// A one-byte status descriptor that (wrongly) claims a successor at `next`.
fn linked_status_desc(st: Seg, next: u16) -> Desc {
    Desc {
        addr: st.addr,
        len: 1,
        flags: F_WRITE | F_NEXT,
        next,
    }
}

/// A discard / write-zeroes range.
fn range(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&sectors.to_le_bytes());
    r[12..16].copy_from_slice(&flags.to_le_bytes());
    r
}

fn last_writable_byte(drv: &Driver, segs: &[Seg]) -> u8 {
    let s = segs
        .iter()
        .rev()
        .find(|s| s.write && s.len > 0 && s.addr + u64::from(s.len) <= MEM_SIZE)
        .expect("chain has an in-memory writable byte");
    drv.read(s.addr + u64::from(s.len) - 1, 1)[0]
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---- configuration and features ---------------------------------------------------------------

#[test]
fn blk_features_and_config_space() {
    let mut b = Blk::new_uninit(Image::Raw);
    let f = b.drv.device_features();
    for (bit, name) in [
        (features::VERSION_1, "VERSION_1"),
        (features::RING_INDIRECT_DESC, "INDIRECT_DESC"),
        (features::RING_EVENT_IDX, "EVENT_IDX"),
        (feature::SEG_MAX, "SEG_MAX"),
        (feature::BLK_SIZE, "BLK_SIZE"),
        (feature::FLUSH, "FLUSH"),
        (feature::DISCARD, "DISCARD"),
        (feature::WRITE_ZEROES, "WRITE_ZEROES"),
    ] {
        assert_ne!(f & bit, 0, "{name} offered (features {f:#x})");
    }
    assert_eq!(f & feature::RO, 0, "writable disk is not RO");
    assert_eq!(b.drv.device_cfg(0, 8), SECTORS, "capacity (8-byte read)");
    assert_eq!(b.drv.device_cfg(0, 4), SECTORS, "capacity low half");
    assert_eq!(b.drv.device_cfg(4, 4), 0, "capacity high half");
    assert_eq!(b.drv.device_cfg(12, 4), u64::from(SEG_MAX), "seg_max");
    assert_eq!(b.drv.device_cfg(20, 4), 512, "blk_size");
    assert_eq!(b.drv.device_cfg(20, 1), 0, "blk_size low byte");
    assert_eq!(b.drv.device_cfg(21, 1), 2, "blk_size second byte");
    assert_eq!(b.drv.device_cfg(34, 2), 1, "num_queues");
    assert_eq!(
        b.drv.device_cfg(40, 4),
        u64::from(MAX_RANGES),
        "max_discard_seg"
    );
    assert_eq!(
        b.drv.device_cfg(52, 4),
        u64::from(MAX_RANGES),
        "max_write_zeroes_seg"
    );
    let align = b.drv.device_cfg(44, 4);
    assert!(align >= 1, "discard_sector_alignment {align}");
    assert_eq!(b.drv.device_cfg(56, 1), 1, "write_zeroes_may_unmap");
    assert_eq!(b.drv.device_cfg(0x400, 8), 0, "past the config reads zero");
    // Config is read-only.
    let dev_off = b.drv.bar.device;
    b.drv.bar_write(dev_off, 8, 1);
    assert_eq!(b.drv.device_cfg(0, 8), SECTORS);
}

#[test]
fn blk_read_only_disk() {
    let mut b = Blk::new(Image::RawReadOnly);
    let f = b.drv.device_features();
    assert_ne!(f & feature::RO, 0, "RO offered");
    assert_eq!(f & (feature::DISCARD | feature::WRITE_ZEROES), 0);
    let before = b.file_bytes(0, 4096);
    assert_eq!(b.write(0, &[0x11; 4096]), blk_status::IOERR, "OUT on RO");
    assert_bytes(&b.file_bytes(0, 4096), &before, "file unchanged");
    let (st, data) = b.read(0, 4096);
    assert_eq!(st, blk_status::OK);
    assert_bytes(&data, &before, "IN still works");
    // FLUSH on a read-only disk is harmless.
    let segs = b.flush_req();
    assert_eq!(b.run(&segs).1, blk_status::OK);
}

// ---- good paths -------------------------------------------------------------------------------

#[test]
fn blk_out_in_round_trip_split_descriptors() {
    let mut b = Blk::new(Image::Raw);
    let data = pattern(3 * 512, 1);
    // Header split 5 + 11, data split 100 + 900 + 536, status alone.
    let h = header(kind::OUT, 10);
    let segs = [
        b.drv.rbuf(&h[..5]),
        b.drv.rbuf(&h[5..]),
        b.drv.rbuf(&data[..100]),
        b.drv.rbuf(&data[100..1000]),
        b.drv.rbuf(&data[1000..]),
        b.status_seg(),
    ];
    let (used, st) = b.run(&segs);
    assert_eq!((st, used.len), (blk_status::OK, 1));
    assert_bytes(&b.file_bytes(10 * 512, data.len()), &data, "host file");

    // Read it back into four writable pieces, the status byte sharing the last one.
    let h = header(kind::IN, 10);
    let segs = [
        b.drv.rbuf(&h),
        b.drv.wbuf(7, UNTOUCHED),
        b.drv.wbuf(1000, UNTOUCHED),
        b.drv.wbuf(529, UNTOUCHED),
        b.drv.wbuf(1, UNTOUCHED),
    ];
    let (used, st) = b.run(&segs);
    assert_eq!((st, used.len), (blk_status::OK, 1537));
    let back: Vec<u8> = segs[1..4]
        .iter()
        .flat_map(|s| b.drv.seg_bytes(*s))
        .collect();
    assert_bytes(&back, &data, "read back");
}

#[test]
fn blk_out_in_round_trip_single_descriptor_layouts() {
    let mut b = Blk::new(Image::Raw);
    let data = pattern(2048, 9);
    // Header and data in one readable descriptor.
    let mut out = header(kind::OUT, 64).to_vec();
    out.extend_from_slice(&data);
    let segs = [b.drv.rbuf(&out), b.status_seg()];
    assert_eq!(b.run(&segs).1, blk_status::OK);
    assert_bytes(&b.file_bytes(64 * 512, 2048), &data, "host file");

    // Data and status in one writable descriptor.
    let inbuf = b.drv.wbuf(2049, UNTOUCHED);
    let segs = [b.hdr(kind::IN, 64), inbuf];
    let (used, st) = b.run(&segs);
    assert_eq!((st, used.len), (blk_status::OK, 2049));
    assert_bytes(&b.drv.seg_bytes(inbuf)[..2048], &data[..], "read back");
}

#[test]
fn blk_indirect_descriptors() {
    let mut b = Blk::new(Image::Raw);
    assert_ne!(b.drv.features & features::RING_INDIRECT_DESC, 0);
    let data = pattern(4096, 3);
    let segs = [
        b.hdr(kind::OUT, 2000),
        b.drv.rbuf(&data[..1536]),
        b.drv.rbuf(&data[1536..]),
        b.status_seg(),
    ];
    let (used, st) = b.run_indirect(&segs);
    assert_eq!((st, used.len), (blk_status::OK, 1));
    assert_bytes(&b.file_bytes(2000 * 512, 4096), &data, "host file");
    let rd = b.drv.wbuf(4096, UNTOUCHED);
    let segs = [b.hdr(kind::IN, 2000), rd, b.status_seg()];
    let (used, st) = b.run_indirect(&segs);
    assert_eq!((st, used.len), (blk_status::OK, 4097));
    assert_bytes(&b.drv.seg_bytes(rd), &data, "read back");
}

#[test]
fn blk_many_requests_in_one_batch_and_ring_wraparound() {
    let mut b = Blk::new(Image::Raw);
    // 600 requests, 40 published at a time: the avail/used indices wrap the 256-entry ring.
    for round in 0..15u64 {
        let mut heads = Vec::new();
        for i in 0..40u64 {
            let sector = (round * 40 + i) * 8;
            let data = vec![(round * 40 + i) as u8; 512];
            let segs = b.out_req(sector, &data);
            let head = b.drv.write_chain(0, &segs);
            b.drv.publish(0, head);
            heads.push(head);
        }
        b.drv.kick(0);
        for head in heads {
            let used = b.drv.wait_used(0);
            assert_eq!(used.id, u32::from(head), "in-order completion");
        }
    }
    for n in [0u64, 299, 599] {
        assert_bytes(
            &b.file_bytes(n * 8 * 512, 512),
            &[n as u8; 512],
            "host file",
        );
    }
}

#[test]
fn blk_flush() {
    let mut b = Blk::new(Image::Raw);
    let before = b.disk.counters().get(OpKind::Flush).ops;
    let segs = b.flush_req();
    let (used, st) = b.run(&segs);
    assert_eq!((st, used.len), (blk_status::OK, 1));
    assert_eq!(b.disk.counters().get(OpKind::Flush).ops, before + 1);
}

#[test]
fn blk_get_id() {
    let mut b = Blk::new(Image::Raw);
    let id = b.drv.wbuf(20, UNTOUCHED);
    let segs = [b.hdr(kind::GET_ID, 0), id, b.status_seg()];
    let (used, st) = b.run(&segs);
    assert_eq!((st, used.len), (blk_status::OK, 21));
    assert_eq!(b.drv.seg_bytes(id), b.disk.device_id().as_virtio_bytes());
    assert_eq!(&b.drv.seg_bytes(id)[..], b"vireo-harness-disk01");
}

/// Whether `offset` of the file at `path` is in a hole.
fn in_hole(path: &Path, offset: u64) -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).expect("open image");
    // SAFETY: lseek takes no pointers; the descriptor is open for the call.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as libc::off_t, libc::SEEK_HOLE) };
    assert!(r >= 0, "SEEK_HOLE: {}", std::io::Error::last_os_error());
    r as u64 == offset
}

fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").blocks() * 512
}

#[test]
fn blk_discard_raw_punches_a_hole() {
    let mut b = Blk::new(Image::Raw);
    // Sectors 1024.. (512 KiB in) hold data from the initial fill.
    assert!(!in_hole(&b.path, 1024 * 512), "data before discard");
    let blocks_before = allocated_bytes(&b.path);
    let ranges = [range(1024, 256, 0), range(4096, 8, 0)];
    let segs = b.ranges_req(kind::DISCARD, &ranges, &[]);
    let (used, st) = b.run(&segs);
    assert_eq!((st, used.len), (blk_status::OK, 1));
    assert!(in_hole(&b.path, 1024 * 512), "discarded range is a hole");
    assert!(in_hole(&b.path, 4096 * 512), "second range is a hole");
    let blocks_after = allocated_bytes(&b.path);
    assert!(
        blocks_after + 128 * 1024 <= blocks_before,
        "st_blocks shrank: {blocks_before} -> {blocks_after}"
    );
    assert_bytes(
        &b.file_bytes(1024 * 512, 128 * 1024),
        &[0; 128 * 1024],
        "host file",
    );
    let (st, data) = b.read(1024, 128 * 1024);
    assert_eq!(st, blk_status::OK);
    assert!(
        data.iter().all(|&x| x == 0),
        "discarded data reads as zeroes"
    );
    assert_eq!(b.disk.counters().get(OpKind::Discard).ops, 2);
}

#[test]
fn blk_write_zeroes_with_and_without_unmap() {
    let mut b = Blk::new(Image::Raw);
    for (sector, unmap) in [(2048u64, 0u32), (3072, 1)] {
        assert!(b.file_bytes(sector * 512, 4096).iter().any(|&x| x != 0));
        let segs = b.ranges_req(kind::WRITE_ZEROES, &[range(sector, 64, unmap)], &[]);
        let (used, st) = b.run(&segs);
        assert_eq!((st, used.len), (blk_status::OK, 1), "unmap={unmap}");
        assert_bytes(
            &b.file_bytes(sector * 512, 64 * 512),
            &[0; 64 * 512],
            "host file",
        );
        let (st, data) = b.read(sector, 64 * 512);
        assert_eq!(st, blk_status::OK);
        assert!(data.iter().all(|&x| x == 0));
        // The sectors around are untouched.
        assert_ne!(b.file_bytes((sector + 64) * 512, 512), vec![0; 512]);
    }
    assert!(
        in_hole(&b.path, 3072 * 512),
        "write-zeroes with unmap punched a hole"
    );
    assert_eq!(b.disk.counters().get(OpKind::WriteZeroes).ops, 2);
}

#[test]
fn blk_qcow2_round_trip_discard_and_reopen() {
    let mut b = Blk::new(Image::Qcow2);
    assert_ne!(b.drv.features & feature::DISCARD, 0, "qcow2 v3 discards");
    let data = pattern(128 * 1024, 77);
    assert_eq!(b.write(256, &data), blk_status::OK);
    let (st, back) = b.read(256, data.len());
    assert_eq!(st, blk_status::OK);
    assert_bytes(&back, &data, "read back");
    // Discard the first 64 KiB cluster of it (cluster aligned), write zeroes over the second.
    for (ty, r) in [
        (kind::DISCARD, range(256, 128, 0)),
        (kind::WRITE_ZEROES, range(384, 8, 1)),
    ] {
        let segs = b.ranges_req(ty, &[r], &[]);
        assert_eq!(b.run(&segs).1, blk_status::OK);
    }
    let segs = b.flush_req();
    assert_eq!(b.run(&segs).1, blk_status::OK);
    // Driver reset makes everything durable; then read the image with a fresh backend.
    b.drv.reset();
    let mut expect = data.clone();
    expect[..64 * 1024].fill(0);
    expect[64 * 1024..68 * 1024].fill(0);
    let disk = open(&b.path, Format::Qcow2, true);
    let mem = crate::driver::guest_memory();
    let slice =
        vm_memory::GuestMemoryBackend::get_slice(&mem, vm_memory::GuestAddress(0), expect.len())
            .expect("slice");
    disk.read_vectored(256 * 512, &[slice]).expect("read image");
    let mut got = vec![0u8; expect.len()];
    vm_memory::Bytes::read_slice(&mem, &mut got, vm_memory::GuestAddress(0)).expect("read");
    assert_bytes(&got, &expect, "image content after reopen");
}

#[test]
fn blk_counters() {
    let mut b = Blk::new(Image::Raw);
    let fired_before = b.drv.msi.fired(1);
    assert_eq!(b.write(8, &[1; 1024]), blk_status::OK);
    assert_eq!(b.read(8, 1024).0, blk_status::OK);
    let segs = [b.hdr(99, 0), b.status_seg()];
    assert_eq!(b.run(&segs).1, blk_status::UNSUPP);
    let segs = [b.drv.rbuf(&[0; 8]), b.status_seg()];
    assert_eq!(b.run(&segs).1, blk_status::IOERR);
    // EVENT_IDX is negotiated and the harness asks for an interrupt per completion; the last
    // one may still be on its way when the used ring shows the completion.
    assert!(
        b.drv
            .msi
            .wait_fired(1, fired_before + 3, crate::driver::TIMEOUT),
        "four interrupts on the queue vector"
    );
    let c = &b.counters;
    assert_eq!(c.requests.load(Ordering::Relaxed), 4);
    assert_eq!(c.failed.load(Ordering::Relaxed), 2);
    assert_eq!(c.malformed.load(Ordering::Relaxed), 1);
    assert_eq!(c.interrupts.load(Ordering::Relaxed), 4);
    assert_eq!(b.drv.msi.fired(1) - fired_before, 4);
    let names: Vec<_> = c.snapshot().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["requests", "failed", "malformed", "interrupts", "wakeups"]
    );
    let w = b.disk.counters().get(OpKind::Write);
    let r = b.disk.counters().get(OpKind::Read);
    assert_eq!((w.ops, w.bytes, w.errors), (1, 1024, 0));
    assert_eq!((r.ops, r.bytes, r.errors), (1, 1024, 0));
}

// ---- malformed chains -------------------------------------------------------------------------

#[test]
fn blk_bad_header_shorter_than_16_bytes() {
    let mut b = Blk::new(Image::Raw);
    let segs = [b.drv.rbuf(&header(kind::IN, 0)[..15]), b.status_seg()];
    b.expect_ioerr(&segs);
    // Split header that is still short.
    let h = header(kind::OUT, 0);
    let segs = [b.drv.rbuf(&h[..8]), b.drv.rbuf(&h[8..12]), b.status_seg()];
    b.expect_ioerr(&segs);
    assert!(b.counters.malformed.load(Ordering::Relaxed) >= 2);
}

#[test]
fn blk_bad_no_status_descriptor() {
    let mut b = Blk::new(Image::Raw);
    let segs = [b.hdr(kind::OUT, 0), b.drv.rbuf(&[7; 512])];
    let before = b.file_bytes(0, 512);
    let head = b.drv.write_chain(0, &segs);
    b.expect_dropped(head);
    assert_bytes(&b.file_bytes(0, 512), &before, "nothing written");
}

#[test]
fn blk_bad_readable_after_writable() {
    let mut b = Blk::new(Image::Raw);
    // IN whose data is writable, then a readable descriptor, then the status.
    let segs = [
        b.hdr(kind::IN, 0),
        b.drv.wbuf(512, UNTOUCHED),
        b.drv.rbuf(&[0; 16]),
        b.status_seg(),
    ];
    b.expect_ioerr(&segs);
    // The readable descriptor right after the status.
    let before = b.file_bytes(0, 512);
    let segs = [b.hdr(kind::OUT, 0), b.status_seg(), b.drv.rbuf(&[9; 512])];
    b.expect_ioerr(&segs);
    assert_bytes(&b.file_bytes(0, 512), &before, "host file unchanged");
}

#[test]
fn blk_bad_descriptor_outside_guest_memory() {
    let mut b = Blk::new(Image::Raw);
    for addr in [MEM_SIZE, MEM_SIZE + 0x10_0000, 1 << 40, u64::MAX - 255] {
        let st = b.status_seg();
        let segs = [b.hdr(kind::OUT, 0), Seg::r(addr, 512), st];
        b.expect_ioerr(&segs);
        let segs = [b.hdr(kind::IN, 0), Seg::w(addr, 512), b.status_seg()];
        b.expect_ioerr(&segs);
    }
    // The header itself outside memory.
    let segs = [Seg::r(MEM_SIZE + 4096, 16), b.status_seg()];
    b.expect_ioerr(&segs);
}

#[test]
fn blk_bad_descriptor_straddling_end_of_memory() {
    let mut b = Blk::new(Image::Raw);
    let before = b.file_bytes(0, 512);
    let segs = [
        b.hdr(kind::OUT, 0),
        Seg::r(MEM_SIZE - 256, 512),
        b.status_seg(),
    ];
    b.expect_ioerr(&segs);
    assert_bytes(&b.file_bytes(0, 512), &before, "host file unchanged");
    let segs = [
        b.hdr(kind::IN, 0),
        Seg::w(MEM_SIZE - 256, 512),
        b.status_seg(),
    ];
    b.expect_ioerr(&segs);
    // The guest's last bytes are untouched by the failed read.
    assert_bytes(&b.drv.read(MEM_SIZE - 256, 256), &[0; 256], "guest buffer");
    // A status descriptor that straddles the end: no usable status byte.
    let segs = [b.hdr(kind::FLUSH, 0), Seg::w(MEM_SIZE - 1, 2)];
    let head = b.drv.write_chain(0, &segs);
    b.expect_dropped(head);
}

#[test]
fn blk_zero_length_descriptors() {
    let mut b = Blk::new(Image::Raw);
    let data = pattern(512, 4);
    // Zero-length descriptors between the real ones are skipped: the request succeeds.
    let segs = [
        Seg::r(b.drv.alloc(1), 0),
        b.hdr(kind::OUT, 50),
        Seg::r(b.drv.alloc(1), 0),
        b.drv.rbuf(&data),
        Seg::w(b.drv.alloc(1), 0),
        b.status_seg(),
        Seg::w(b.drv.alloc(1), 0),
    ];
    let (used, st) = b.run(&segs);
    assert_eq!((st, used.len), (blk_status::OK, 1));
    assert_bytes(&b.file_bytes(50 * 512, 512), &data, "host file");
    // Zero-length descriptors with out-of-memory addresses are harmless too.
    let segs = [b.hdr(kind::FLUSH, 0), Seg::w(u64::MAX, 0), b.status_seg()];
    assert_eq!(b.run(&segs).1, blk_status::OK);
    // A zero-length status descriptor: the last writable byte is the data's last byte, so the
    // data length is 511 and the request fails with IOERR written there.
    let data = b.drv.wbuf(512, UNTOUCHED);
    let segs = [b.hdr(kind::IN, 0), data, Seg::w(b.drv.alloc(1), 0)];
    let (used, _) = b.run(&segs);
    assert_eq!(used.len, 1);
    assert_eq!(b.drv.seg_bytes(data)[511], blk_status::IOERR);
    // Only zero-length descriptors: nothing to write the status into.
    let segs = [Seg::r(b.drv.alloc(1), 0), Seg::w(b.drv.alloc(1), 0)];
    let head = b.drv.write_chain(0, &segs);
    b.expect_dropped(head);
}

#[test]
fn blk_bad_data_not_a_multiple_of_512() {
    let mut b = Blk::new(Image::Raw);
    let before = b.file_bytes(0, 1024);
    let segs = b.out_req(0, &[1; 700]);
    b.expect_ioerr(&segs);
    assert_bytes(&b.file_bytes(0, 1024), &before, "host file unchanged");
    let segs = b.in_req(0, 100);
    b.expect_ioerr(&segs);
}

#[test]
fn blk_bad_sector_beyond_capacity() {
    let mut b = Blk::new(Image::Raw);
    let segs = b.in_req(SECTORS, 512);
    b.expect_ioerr(&segs);
    // Starts inside, ends outside.
    let segs = b.out_req(SECTORS - 1, &[3; 1024]);
    b.expect_ioerr(&segs);
    let len = std::fs::metadata(&b.path).expect("stat").len();
    assert_eq!(len, DISK_SIZE, "the image did not grow");
    // The last sector itself is fine.
    assert_eq!(b.write(SECTORS - 1, &[3; 512]), blk_status::OK);
}

#[test]
fn blk_bad_sector_times_512_overflows() {
    let mut b = Blk::new(Image::Raw);
    for sector in [u64::MAX, u64::MAX / 512 + 1, u64::MAX / 512] {
        let segs = b.in_req(sector, 512);
        b.expect_ioerr(&segs);
        let segs = b.out_req(sector, &[1; 512]);
        b.expect_ioerr(&segs);
    }
}

#[test]
fn blk_bad_wrong_direction() {
    let mut b = Blk::new(Image::Raw);
    // IN with data-out bytes.
    let segs = b.both_directions_req(kind::IN, 0);
    b.expect_ioerr(&segs);
    // OUT with data-in bytes.
    let before = b.file_bytes(0, 512);
    let segs = b.both_directions_req(kind::OUT, 1);
    b.expect_ioerr(&segs);
    assert_bytes(&b.file_bytes(0, 512), &before, "host file unchanged");
}

#[test]
fn blk_bad_descriptor_loops_terminate() {
    let mut b = Blk::new(Image::Raw);
    let [h, st] = b.flush_req();
    // Status descriptor linked to itself.
    let first = b.write_hdr_status(h, st, |first| first + 1);
    let used = b.publish_and_wait(first);
    assert_eq!(used.id, u32::from(first));
    assert_eq!(b.drv.read(st.addr, 1)[0], blk_status::IOERR, "self loop");
    assert_eq!(used.len, 1);
    b.assert_still_works();

    // A two-descriptor cycle: header -> status -> header -> ...
    let st = b.status_seg();
    let first = b.write_hdr_status(h, st, |first| first);
    let used = b.publish_and_wait(first);
    assert_eq!(used.id, u32::from(first));
    assert_eq!(b.drv.read(st.addr, 1)[0], blk_status::IOERR, "cycle");
    b.assert_still_works();

    // A readable-only self loop: no status byte at all.
    let first = b.drv.write_one(0, |first| hdr_desc(h, first));
    b.expect_dropped(first);
}

#[test]
fn blk_bad_next_index_beyond_queue_size() {
    let mut b = Blk::new(Image::Raw);
    let [h, st] = b.flush_req();
    // The status claims a successor at index 300 of a 256-entry table.
    let first = b.write_hdr_status(h, st, |_| 300);
    let used = b.publish_and_wait(first);
    assert_eq!((used.id, used.len), (u32::from(first), 1));
    assert_eq!(b.drv.read(st.addr, 1)[0], blk_status::IOERR);
    b.assert_still_works();
    // The header's next is out of range: no status reachable.
    let first = b.drv.write_one(0, |_| hdr_desc(h, 0xffff));
    b.expect_dropped(first);
}

#[test]
fn blk_bad_more_than_seg_max_plus_2_descriptors() {
    let mut b = Blk::new(Image::Raw);
    let n = SEG_MAX as usize + 1; // data segments: header + n + status = seg_max + 3
    let data = b.drv.rbuf(&[5; 512]);
    let mut segs = vec![b.hdr(kind::OUT, 0)];
    segs.extend(std::iter::repeat_n(data, n));
    segs.push(b.status_seg());
    let before = b.file_bytes(0, 512);
    let head = b.drv.submit_indirect(0, &segs);
    let used = b.drv.wait_used(0);
    assert_eq!(used.id, u32::from(head));
    // The chain is refused before its status descriptor is reached.
    assert_eq!(used.len, 0, "refused");
    assert_bytes(&b.file_bytes(0, 512), &before, "nothing written");
    assert!(b.counters.malformed.load(Ordering::Relaxed) >= 1);
    b.assert_still_works();
    // Exactly seg_max data segments are fine.
    let mut segs = vec![b.hdr(kind::OUT, 0)];
    segs.extend(std::iter::repeat_n(data, SEG_MAX as usize));
    segs.push(b.status_seg());
    let (used, st) = b.run_indirect(&segs);
    assert_eq!((st, used.len), (blk_status::OK, 1));
}

#[test]
fn blk_bad_nested_indirect_table() {
    let mut b = Blk::new(Image::Raw);
    let [h, st] = b.flush_req();
    let inner = linked(&[h, st], 0);
    let inner_bytes: Vec<u8> = inner.iter().flat_map(|d| d.bytes()).collect();
    let inner_addr = b.drv.rbuf(&inner_bytes).addr;
    // Outer table: header, status, then an indirect descriptor (forbidden inside a table).
    let outer = [
        hdr_desc(h, 1),
        linked_status_desc(st, 2),
        Desc::indirect(inner_addr, 32),
    ];
    let head = b.drv.write_indirect(0, &outer);
    let used = b.publish_and_wait(head);
    assert_eq!((used.id, used.len), (u32::from(head), 1));
    assert_eq!(b.drv.read(st.addr, 1)[0], blk_status::IOERR);
    b.assert_still_works();
    // A table whose only entry is indirect: nothing usable.
    let head = b.drv.write_indirect(0, &outer[2..]);
    b.expect_dropped(head);
}

#[test]
fn blk_bad_indirect_table_length_not_multiple_of_16() {
    let mut b = Blk::new(Image::Raw);
    let [h, st] = b.flush_req();
    let table: Vec<u8> = linked(&[h, st], 0).iter().flat_map(|d| d.bytes()).collect();
    let addr = b.drv.rbuf(&table).addr;
    for len in [8u32, 24, 33, 0] {
        let head = b.drv.write_one(0, |_| Desc::indirect(addr, len));
        b.expect_dropped(head);
        assert_eq!(b.drv.read(st.addr, 1)[0], UNTOUCHED, "len {len}");
    }
    // Indirect table outside guest memory.
    let head = b.drv.write_one(0, |_| Desc::indirect(MEM_SIZE, 32));
    b.expect_dropped(head);
}

#[test]
fn blk_bad_discard_ranges() {
    let mut b = Blk::new(Image::Raw);
    let before = b.file_bytes(0, 64 * 1024);
    let many = vec![range(0, 8, 0); MAX_RANGES as usize + 1];
    /// Request type, ranges, trailing bytes, expected status.
    type Case<'a> = (u32, &'a [[u8; 16]], &'a [u8], u8);
    let cases: [Case; 10] = [
        // Too many ranges.
        (kind::DISCARD, &many, &[], blk_status::IOERR),
        (kind::WRITE_ZEROES, &many, &[], blk_status::IOERR),
        // Reserved flag bits.
        (kind::DISCARD, &[range(0, 8, 2)], &[], blk_status::UNSUPP),
        (
            kind::WRITE_ZEROES,
            &[range(0, 8, 0x8000_0000)],
            &[],
            blk_status::UNSUPP,
        ),
        // The unmap flag on a discard.
        (kind::DISCARD, &[range(0, 8, 1)], &[], blk_status::UNSUPP),
        // More sectors than max_discard_sectors.
        (
            kind::DISCARD,
            &[range(0, u32::MAX, 0)],
            &[],
            blk_status::UNSUPP,
        ),
        // Length not a multiple of 16, and no range at all.
        (
            kind::DISCARD,
            &[range(0, 8, 0)],
            &[1, 2, 3],
            blk_status::IOERR,
        ),
        (kind::DISCARD, &[], &[], blk_status::IOERR),
        // Beyond capacity, and a sector whose byte offset overflows.
        (
            kind::DISCARD,
            &[range(SECTORS, 8, 0)],
            &[],
            blk_status::IOERR,
        ),
        (
            kind::WRITE_ZEROES,
            &[range(u64::MAX / 256, 8, 0)],
            &[],
            blk_status::IOERR,
        ),
    ];
    for (ty, ranges, extra, want) in cases {
        let segs = b.ranges_req(ty, ranges, extra);
        b.expect_status(&segs, want);
    }
    assert_bytes(
        &b.file_bytes(0, 64 * 1024),
        &before,
        "nothing was discarded",
    );
}

#[test]
fn blk_unknown_request_type_is_unsupported() {
    let mut b = Blk::new(Image::Raw);
    for ty in [2u32, 3, 5, 7, 9, 10, 12, 14, 15, 0xffff_ffff] {
        let segs = [b.hdr(ty, 0), b.status_seg()];
        b.expect_status(&segs, blk_status::UNSUPP);
    }
}

// ---- ring corruption --------------------------------------------------------------------------

/// Asserts the device reports NEEDS_RESET through status, ISR and the config vector, then
/// resets and re-initialises it and checks it works again.
fn assert_needs_reset_then_recovers(b: &mut Blk, config_fired_before: u64) {
    b.drv
        .wait_status("NEEDS_RESET", |s| s & status::DEVICE_NEEDS_RESET != 0);
    assert!(
        b.drv
            .msi
            .wait_fired(0, config_fired_before, crate::driver::TIMEOUT),
        "config vector fired"
    );
    assert_ne!(b.drv.isr() & 2, 0, "ISR config bit");
    b.drv.init_all();
    b.assert_still_works();
}

#[test]
fn blk_ring_avail_idx_jump_sets_needs_reset() {
    let mut b = Blk::new(Image::Raw);
    b.assert_still_works();
    let cfg = b.drv.msi.fired(0);
    // Claim 257 new entries in a 256-entry ring.
    let used = b.drv.used_idx(0);
    b.drv.set_avail_idx(0, used.wrapping_add(257));
    b.drv.kick(0);
    assert_needs_reset_then_recovers(&mut b, cfg);
}

#[test]
fn blk_ring_head_index_beyond_queue_size() {
    let mut b = Blk::new(Image::Raw);
    let cfg = b.drv.msi.fired(0);
    let malformed = b.counters.malformed.load(Ordering::Relaxed);
    b.drv.publish(0, 300);
    b.drv.kick(0);
    // The chain is empty (its head is outside the table); completing it is refused by the
    // ring (`add_used` rejects the head), which the device treats as a corrupt ring.
    assert_needs_reset_then_recovers(&mut b, cfg);
    assert_eq!(b.counters.malformed.load(Ordering::Relaxed), malformed + 1);
}

#[test]
fn blk_ring_outside_guest_memory_at_driver_ok() {
    for (desc, avail, used) in [
        (MEM_SIZE, 0x2_0000, 0x3_0000),
        (0x1_0000, MEM_SIZE - 16, 0x3_0000),
        (0x1_0000, 0x2_0000, MEM_SIZE - 1024),
        (u64::MAX - 15, 0x2_0000, 0x3_0000),
    ] {
        let (mut b, cfg) = Blk::with_rings_at(desc, avail, used);
        let s = b.drv.status();
        assert_ne!(
            s & status::DEVICE_NEEDS_RESET,
            0,
            "status {s:#x} for desc {desc:#x}"
        );
        assert!(b.drv.msi.fired(0) > cfg, "config vector fired");
        assert!(
            !thread_names().contains(&b.worker_name()),
            "no worker thread was started"
        );
        // Still recoverable.
        b.drv.init_all();
        b.assert_still_works();
    }
}

#[test]
fn blk_ring_misaligned_at_driver_ok() {
    for (desc, avail, used) in [
        (0x1_0008, 0x2_0000, 0x3_0000),
        (0x1_0000, 0x2_0001, 0x3_0000),
        (0x1_0000, 0x2_0000, 0x3_0002),
    ] {
        let (mut b, _) = Blk::with_rings_at(desc, avail, used);
        let s = b.drv.status();
        assert_ne!(s & status::DEVICE_NEEDS_RESET, 0, "status {s:#x}");
        assert!(!thread_names().contains(&b.worker_name()));
    }
}

#[test]
fn blk_queue_not_enabled_fails_activation() {
    let mut b = Blk::new_uninit(Image::Raw);
    let f = b.drv.device_features();
    assert!(b.drv.negotiate(f));
    b.drv.driver_ok();
    let s = b.drv.status();
    assert_ne!(s & status::DEVICE_NEEDS_RESET, 0, "status {s:#x}");
    assert!(!thread_names().contains(&b.worker_name()));
    b.drv.init_all();
    b.assert_still_works();
}

#[test]
fn blk_smaller_queue_and_no_optional_ring_features() {
    let mut b = Blk::new_uninit(Image::Raw);
    b.activate(features::VERSION_1, |drv| {
        drv.setup_queue(0, 16, 1);
    });
    // 40 requests through a 16-entry ring.
    for i in 0..40u64 {
        assert_eq!(b.write(i * 8, &[i as u8; 512]), blk_status::OK);
    }
    assert_bytes(&b.file_bytes(39 * 8 * 512, 512), &[39; 512], "host file");
    assert!(
        b.drv.msi.wait_fired(1, 39, crate::driver::TIMEOUT),
        "an interrupt per request"
    );
}

#[test]
fn blk_paused_device_touches_neither_memory_nor_disk_until_resumed() {
    let mut b = Blk::new(Image::Raw);
    b.assert_still_works();
    let used_before = b.drv.used_idx(0);
    let requests_before = b.counters.requests.load(Ordering::Relaxed);
    let data = pattern(8 * 512, 3);
    let file_before = b.file_bytes(100 * 512, data.len());
    let t = std::time::Instant::now();
    b.drv.dev.pause();
    eprintln!("blk pause took {:?}", t.elapsed());

    let segs = b.out_req(100, &data);
    let head = b.drv.submit(0, &segs);
    // Clear the marks of the driver's own writes (request, avail ring).
    b.drv.take_dirty();
    b.drv.assert_still_while_paused(0, used_before);
    assert_bytes(
        &b.file_bytes(100 * 512, data.len()),
        &file_before,
        "disk while paused",
    );
    assert_eq!(b.drv.seg_bytes(segs[2]), [UNTOUCHED], "status while paused");
    assert_eq!(b.counters.requests.load(Ordering::Relaxed), requests_before);

    b.drv.dev.resume();
    let (used, st) = b.complete(head, &segs);
    assert_eq!((used.id, st), (u32::from(head), blk_status::OK));
    assert_bytes(
        &b.file_bytes(100 * 512, data.len()),
        &data,
        "disk after resume",
    );
    assert!(!b.drv.take_dirty().is_empty(), "completion dirtied no page");
    // Exactly once: no second used element, one request counted.
    assert!(
        b.drv.try_wait_used(0, PAUSED_WATCH).is_none(),
        "request completed twice"
    );
    assert_eq!(b.drv.used_idx(0), used_before.wrapping_add(1));
    assert_eq!(
        b.counters.requests.load(Ordering::Relaxed),
        requests_before + 1
    );
    b.assert_still_works();
}

#[test]
fn blk_pause_is_idempotent_and_trivial_before_activation() {
    let mut b = Blk::new_uninit(Image::Raw);
    // No worker yet: nothing to wait for.
    b.drv.dev.pause();
    b.drv.dev.resume();
    b.drv.init_all();
    b.drv.dev.pause();
    b.drv.dev.pause();
    b.drv.dev.resume();
    b.drv.dev.resume();
    // Many quick cycles with a request pending across each.
    for i in 0..50u64 {
        b.drv.dev.pause();
        let segs = b.out_req(i * 8, &[i as u8; 512]);
        let head = b.drv.submit(0, &segs);
        b.drv.dev.resume();
        assert_eq!(b.complete(head, &segs).1, blk_status::OK);
    }
    assert_bytes(&b.file_bytes(49 * 8 * 512, 512), &[49; 512], "host file");
    b.assert_still_works();
}

/// Runs `f` on `b` on another thread and fails unless it returns within a second (a worker
/// that stays parked through a stop would hang it).
fn returns_promptly(b: Blk, what: &str, f: impl FnOnce(Blk) + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = std::time::Instant::now();
        f(b);
        let _ = tx.send(t.elapsed());
    });
    let took = rx
        .recv_timeout(std::time::Duration::from_secs(1))
        .unwrap_or_else(|_| panic!("{what} while paused did not return"));
    eprintln!("{what} while paused took {took:?}");
}

#[test]
fn blk_reset_and_drop_while_paused_return_promptly() {
    let mut b = Blk::new(Image::Raw);
    b.drv.dev.pause();
    let segs = b.out_req(0, &[1; 512]);
    b.drv.submit(0, &segs);
    let name = b.worker_name();
    returns_promptly(b, "driver reset", move |mut b| {
        b.drv.reset();
        assert!(!thread_names().contains(&name), "worker still running");
        // The device comes back after a reset (the pause does not stick).
        b.drv.init_all();
        b.assert_still_works();
    });

    let mut b = Blk::new(Image::Qcow2);
    b.drv.dev.pause();
    returns_promptly(b, "drop", drop);
}

// ---- snapshot: save, restore onto a new device, carry on ---------------------------------------

use vireo_devices::persist::PersistError;
use vireo_devices::virtio::persist::VirtioPciState;

/// Saves the paused device, sends the state through JSON, builds a new virtio-blk and transport
/// on the same guest memory and disk, restores the state onto it (`paused` as given) and puts it
/// in place of the old one, which is dropped. Returns the saved state.
fn snapshot_and_restore(b: &mut Blk, paused: bool) -> VirtioPciState {
    let state = b.drv.save_through_json();
    let index = unique_index();
    let dev = VirtioBlock::new(b.disk.clone(), index);
    let counters = dev.counters();
    b.drv.restore_onto(Box::new(dev), 2, &state, paused);
    b.counters = counters;
    b.index = index;
    state
}

#[test]
fn blk_snapshot_restore_continues_where_it_stopped() {
    let mut b = Blk::new(Image::Raw);
    let before: Vec<Vec<u8>> = (0..5u8).map(|i| pattern(1024, i)).collect();
    for (i, d) in before.iter().enumerate() {
        assert_eq!(b.write(1000 + 2 * i as u64, d), blk_status::OK);
    }
    let used = b.drv.used_idx(0);
    assert_eq!(used, 5);

    let state = snapshot_and_restore(&mut b, true);
    assert_eq!(
        state.queues[0].next_avail, 5,
        "position published by the worker"
    );
    assert_eq!(state.queues[0].next_used, 5);
    assert_eq!(state.status & status::DRIVER_OK, status::DRIVER_OK);
    b.drv.dev.resume();

    // Data written before the snapshot reads back; new requests continue the used ring.
    for (i, d) in before.iter().enumerate() {
        let (st, got) = b.read(1000 + 2 * i as u64, 1024);
        assert_eq!(st, blk_status::OK);
        assert_bytes(&got, d, "data written before the snapshot");
    }
    let after = pattern(4096, 77);
    assert_eq!(b.write(3000, &after), blk_status::OK);
    let (st, got) = b.read(3000, 4096);
    assert_eq!(st, blk_status::OK);
    assert_bytes(&got, &after, "data written after the restore");
    assert_eq!(
        b.drv.used_idx(0),
        used.wrapping_add(7),
        "used idx continuity"
    );
    assert!(
        b.drv.try_wait_used(0, PAUSED_WATCH).is_none(),
        "a request completed twice"
    );
    assert_eq!(
        b.counters.requests.load(Ordering::Relaxed),
        7,
        "the new device did 7"
    );
    assert!(
        b.drv.msi.fired(1) >= 1,
        "interrupts through the restored route"
    );
    b.assert_still_works();
}

#[test]
fn blk_restored_paused_processes_nothing_until_resumed() {
    let mut b = Blk::new(Image::Raw);
    b.assert_still_works();
    // A request the guest posts while the old device is paused (before the snapshot) is in
    // the avail ring but not taken: the restored device must do it, once.
    b.drv.dev.pause();
    let early = pattern(512, 5);
    let early_segs = b.out_req(200, &early);
    let early_head = b.drv.submit(0, &early_segs);
    let used_before = b.drv.used_idx(0);
    let state = snapshot_and_restore(&mut b, true);
    assert_eq!(
        state.queues[0].next_avail, used_before,
        "the posted request was not taken"
    );

    // Another request, notified while the restored device is paused.
    let late = pattern(512, 9);
    let late_segs = b.out_req(201, &late);
    let late_head = b.drv.submit(0, &late_segs);
    b.drv.take_dirty();
    b.drv.assert_still_while_paused(0, used_before);
    assert_eq!(b.counters.requests.load(Ordering::Relaxed), 0);
    assert_eq!(b.drv.seg_bytes(early_segs[2]), [UNTOUCHED]);

    // One resume is enough.
    b.drv.dev.resume();
    let mut done = vec![b.drv.wait_used(0).id, b.drv.wait_used(0).id];
    done.sort_unstable();
    assert_eq!(done, vec![u32::from(early_head), u32::from(late_head)]);
    assert!(
        b.drv.try_wait_used(0, PAUSED_WATCH).is_none(),
        "a request completed twice"
    );
    assert_eq!(b.drv.used_idx(0), used_before.wrapping_add(2));
    assert_bytes(
        &b.file_bytes(200 * 512, 512),
        &early,
        "early request on disk",
    );
    assert_bytes(&b.file_bytes(201 * 512, 512), &late, "late request on disk");
    b.assert_still_works();
}

#[test]
fn blk_restore_of_a_never_started_device_then_the_driver_starts_it() {
    let mut b = Blk::new_uninit(Image::Raw);
    let state = snapshot_and_restore(&mut b, true);
    assert_eq!(state.status, 0);
    assert!(
        state.msix.enabled,
        "the harness enabled MSI-X before the snapshot"
    );
    b.drv.dev.resume();
    b.drv.init_all();
    b.assert_still_works();
}

/// A fresh device on `disk` behind its own harness driver (not initialised).
fn fresh(disk: Arc<dyn DiskBackend>) -> Driver {
    Driver::new(Box::new(VirtioBlock::new(disk, unique_index())))
}

#[test]
fn blk_bad_snapshots_are_refused_and_leave_the_device_usable() {
    let mut b = Blk::new(Image::Raw);
    b.assert_still_works();
    b.drv.dev.pause();
    let good = b.drv.dev.save();
    b.drv.dev.resume();

    type Edit = fn(&mut VirtioPciState);
    type Expect = fn(&PersistError) -> bool;
    let cases: [(&str, Edit, Expect); 14] = [
        (
            "device type",
            |s| s.device_type = 1,
            |e| {
                matches!(
                    e,
                    PersistError::Mismatch {
                        what: "device type",
                        ..
                    }
                )
            },
        ),
        (
            "queue count",
            |s| s.queues.push(s.queues[0].clone()),
            |e| {
                matches!(
                    e,
                    PersistError::Mismatch {
                        what: "queue count",
                        ..
                    }
                )
            },
        ),
        (
            "queue max size",
            |s| s.queues[0].max_size = 128,
            |e| {
                matches!(
                    e,
                    PersistError::Mismatch {
                        what: "queue maximum size",
                        ..
                    }
                )
            },
        ),
        (
            "queue size",
            |s| s.queues[0].size = 100,
            |e| matches!(e, PersistError::Invalid { .. }),
        ),
        (
            "queue vector",
            |s| s.queues[0].msix_vector = 2,
            |e| matches!(e, PersistError::Invalid { .. }),
        ),
        (
            "config vector",
            |s| s.config_vector = 7,
            |e| matches!(e, PersistError::Invalid { .. }),
        ),
        (
            "config space",
            |s| s.config_space.bytes.truncate(255),
            |e| matches!(e, PersistError::Invalid { .. }),
        ),
        (
            "MSI-X table",
            |s| {
                s.msix.entries.pop();
            },
            |e| {
                matches!(
                    e,
                    PersistError::Mismatch {
                        what: "MSI-X vector count",
                        ..
                    }
                )
            },
        ),
        (
            "read-only config byte",
            |s| s.config_space.bytes[2] ^= 1,
            |e| {
                matches!(
                    e,
                    PersistError::Mismatch {
                        what: "read-only configuration space",
                        ..
                    }
                )
            },
        ),
        (
            "BAR0 moved",
            |s| s.config_space.bytes[0x13] ^= 0x10,
            |e| {
                matches!(
                    e,
                    PersistError::Mismatch {
                        what: "BAR0 address",
                        ..
                    }
                )
            },
        ),
        (
            "MSI-X enable",
            |s| s.msix.enabled = !s.msix.enabled,
            |e| matches!(e, PersistError::Invalid { .. }),
        ),
        (
            "no VERSION_1",
            |s| s.driver_features &= !features::VERSION_1,
            |e| matches!(e, PersistError::Invalid { .. }),
        ),
        (
            "ring outside memory",
            |s| s.queues[0].desc = MEM_SIZE,
            |e| matches!(e, PersistError::Invalid { .. }),
        ),
        (
            "in flight",
            |s| s.queues[0].next_avail = s.queues[0].next_used.wrapping_add(1),
            |e| matches!(e, PersistError::Invalid { .. }),
        ),
    ];
    let mut target = fresh(b.disk.clone());
    let built = target.dev.save();
    for (what, edit, expected) in cases {
        let mut bad = good.clone();
        edit(&mut bad);
        let err = target.dev.restore(&bad, false).expect_err(what);
        assert!(expected(&err), "{what}: {err}");
        eprintln!("{what}: {err}");
        assert_eq!(target.dev.save(), built, "{what}: device changed");
    }

    // A disk whose size changed.
    let dir = tempfile::tempdir().expect("tempdir");
    let other = dir.path().join("bigger.raw");
    create_raw(&other, 2 * DISK_SIZE).expect("create_raw");
    let mut bigger = fresh(open(&other, Format::Raw, false));
    let err = bigger
        .dev
        .restore(&good, false)
        .expect_err("disk size changed");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            PersistError::Mismatch {
                what: "disk size",
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains(&SECTORS.to_string()) && msg.contains(&(2 * SECTORS).to_string()),
        "both sizes named: {msg}"
    );
    // A disk opened read-only now offers RO.
    let mut ro = fresh(open(&b.path, Format::Raw, true));
    assert!(matches!(
        ro.dev.restore(&good, false),
        Err(PersistError::Mismatch {
            what: "offered features",
            ..
        })
    ));

    // The refused devices still work as built.
    for mut d in [target, bigger] {
        d.init_all();
        let (head, st) = crate::transport::flush(&mut d);
        assert_eq!(d.wait_used(0).id, u32::from(head));
        assert_eq!(d.seg_bytes(st)[0], blk_status::OK);
    }
    b.assert_still_works();
}
