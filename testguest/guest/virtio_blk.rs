//! virtio-blk (virtio 1.2, section 5.2) on the modern PCI transport, polled:
//! identification (`virtio-list`), a verified read/write round trip
//! (`blk-rw`) and a queue-depth benchmark (`blk-bench`).

use crate::mem::{self, rd8, wr32, wr64, wr8, Bump};
use crate::virtio::{
    fail, fail_with, find_nth, Fnv, IdlePolls, Kind, Transport, VResult, Virtqueue,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};
use crate::{parse_u64, put_dec, putc, puts, rdtsc, tsc_hz, Args, Deadline};

// Feature bits.
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Features every scenario accepts when offered.
const BASE_FEATURES: u64 =
    VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_RO | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH;

/// `struct virtio_blk_config` offsets.
mod config {
    pub const CAPACITY: usize = 0;
    pub const SEG_MAX: usize = 12;
}

/// `struct virtio_blk_req` header: type (le32), reserved (le32), sector (le64).
mod req {
    pub const HEADER_SIZE: usize = 16;
    pub const TYPE: usize = 0;
    pub const RESERVED: usize = 4;
    pub const SECTOR: usize = 8;

    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

/// Request status byte values.
pub const VIRTIO_BLK_S_OK: u8 = 0;

pub const SECTOR_SIZE: u64 = 512;
/// Bytes of a `GET_ID` answer.
const ID_BYTES: usize = 20;
/// Generous: a qcow2 cluster allocation on a slow host disk.
const IO_TIMEOUT_MS: u64 = 30_000;
/// Data is split into descriptors of at most this size.
const SEG_BYTES: usize = 4096;
/// Most data descriptors in one request (128 KiB).
const MAX_DATA_SEGS: usize = 32;
/// Largest `count` of `blk-rw`.
const MAX_RW_SECTORS: u64 = 256;
/// Marks a status byte the device has not written.
const STATUS_UNSET: u8 = 0xff;

/// An initialized virtio-blk device with one request queue.
pub struct Blk {
    t: Transport,
    q: Virtqueue,
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    pub ro: bool,
    /// Data descriptors one request may carry (SEG_MAX, our own limit, the
    /// queue size).
    max_segs: usize,
    /// Header and status byte of the synchronous requests.
    hdr: usize,
    status: usize,
    /// How long a synchronous request may take.
    timeout_ms: u64,
}

impl Blk {
    /// Initializes the device at `slot` with `extra` features (if offered)
    /// on top of the basic set, and a queue of at most `queue_size`.
    pub fn open(slot: u8, extra: u64, queue_size: u16, arena: &mut Bump) -> VResult<Self> {
        let mut t = Transport::open(slot)?;
        t.negotiate(BASE_FEATURES | extra)?;
        let q = t.setup_queue(0, queue_size, arena)?;
        t.driver_ok()?;
        let (capacity, seg_max) =
            t.read_config(|c| (c.u64(config::CAPACITY), c.u32(config::SEG_MAX)))?;
        let capacity = capacity.ok_or(fail("virtio-blk configuration lacks capacity"))?;
        let mut max_segs = MAX_DATA_SEGS;
        if t.has(VIRTIO_BLK_F_SEG_MAX) {
            let seg_max = seg_max.ok_or(fail("virtio-blk configuration lacks seg_max"))?;
            if seg_max == 0 {
                return Err(fail("virtio-blk offers SEG_MAX with seg_max 0"));
            }
            max_segs = max_segs.min(seg_max as usize);
        }
        // Header and status take two descriptors.
        max_segs = max_segs.min(usize::from(q.size).saturating_sub(2));
        if max_segs == 0 {
            return Err(fail_with("virtio-blk queue too small, size", q.size.into()));
        }
        let small = arena
            .alloc_zeroed(64, 64)
            .ok_or(fail("out of memory for request headers"))?;
        Ok(Self {
            ro: t.has(VIRTIO_BLK_F_RO),
            t,
            q,
            capacity,
            max_segs,
            hdr: small,
            status: small + req::HEADER_SIZE,
            timeout_ms: IO_TIMEOUT_MS,
        })
    }

    /// One request, waited for: header, `len` bytes of data at `data` in
    /// descriptors of at most 4 KiB (written by the device if `device_writes`),
    /// status. Returns the status byte (`STATUS_UNSET` if the device did
    /// not write it).
    fn request(
        &mut self,
        rtype: u32,
        sector: u64,
        data: usize,
        len: usize,
        device_writes: bool,
    ) -> VResult<u8> {
        wr32(self.hdr + req::TYPE, rtype);
        wr32(self.hdr + req::RESERVED, 0);
        wr64(self.hdr + req::SECTOR, sector);
        wr8(self.status, STATUS_UNSET);

        let mut chain = [(0usize, 0u32, false); MAX_DATA_SEGS + 2];
        let mut n = 0;
        chain[n] = (self.hdr, req::HEADER_SIZE as u32, false);
        n += 1;
        let mut off = 0;
        while off < len {
            if n > self.max_segs {
                return Err(fail("request needs more descriptors than allowed"));
            }
            let piece = SEG_BYTES.min(len - off);
            chain[n] = (data + off, piece as u32, device_writes);
            n += 1;
            off += piece;
        }
        chain[n] = (self.status, 1, true);
        n += 1;

        let head = self.q.set_chain(0, &chain[..n]);
        self.q.push(head);
        self.q.kick();
        let done = self.q.wait_used(&self.t, self.timeout_ms)?;
        if done.id != head {
            return Err(fail_with(
                "device completed an unknown chain, id",
                done.id.into(),
            ));
        }
        let status = rd8(self.status);
        let writable = if device_writes { len + 1 } else { 1 };
        if status == VIRTIO_BLK_S_OK && done.len as usize != writable {
            // The spec makes `len` a lower bound of what was written; a
            // mismatch is worth seeing but not fatal on its own.
            puts("blk-note used-len=");
            put_dec(done.len.into());
            puts(" expected=");
            put_dec(writable as u64);
            puts(" type=");
            put_dec(rtype.into());
            putc(b'\n');
        }
        if status == STATUS_UNSET {
            puts("blk-note status byte not written, used-len=");
            put_dec(done.len.into());
            putc(b'\n');
        }
        Ok(status)
    }

    /// Reads or writes `count` sectors at `sector` to/from `buf`, split into
    /// as many requests as the segment limit needs. Returns the first
    /// non-OK status, or OK.
    fn transfer(&mut self, rtype: u32, sector: u64, count: u64, buf: usize) -> VResult<u8> {
        let per_request = (self.max_segs * SEG_BYTES) as u64 / SECTOR_SIZE;
        let mut done = 0;
        while done < count {
            let n = per_request.min(count - done);
            let addr = buf + (done * SECTOR_SIZE) as usize;
            let len = (n * SECTOR_SIZE) as usize;
            let s = self.request(rtype, sector + done, addr, len, rtype == req::IN)?;
            if s != VIRTIO_BLK_S_OK {
                return Ok(s);
            }
            done += n;
        }
        Ok(VIRTIO_BLK_S_OK)
    }

    /// The device's ID string (GET_ID), or the failing status.
    fn get_id(&mut self, buf: usize) -> VResult<Result<&'static [u8], u8>> {
        mem::bytes_mut(buf, ID_BYTES).fill(0);
        let s = self.request(req::GET_ID, 0, buf, ID_BYTES, true)?;
        if s != VIRTIO_BLK_S_OK {
            return Ok(Err(s));
        }
        let id = mem::bytes(buf, ID_BYTES);
        let end = id.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
        Ok(Ok(&id[..end]))
    }

    fn flush(&mut self) -> VResult<u8> {
        self.request(req::FLUSH, 0, 0, 0, false)
    }

    /// Reads `count` sectors at `sector` into `buf`; the request status.
    pub fn read_sectors(&mut self, sector: u64, count: u64, buf: usize) -> VResult<u8> {
        self.transfer(req::IN, sector, count, buf)
    }

    /// Writes `count` sectors at `sector` from `buf`; the request status.
    pub fn write_sectors(&mut self, sector: u64, count: u64, buf: usize) -> VResult<u8> {
        self.transfer(req::OUT, sector, count, buf)
    }
}

/// The `blk …` line of `virtio-list` for the device at `slot`.
pub fn list_one(slot: u8, arena: &mut Bump) -> VResult<()> {
    let mut blk = Blk::open(slot, 0, 256, arena)?;
    let idbuf = arena
        .alloc_zeroed(ID_BYTES, 64)
        .ok_or(fail("out of memory for the ID buffer"))?;
    let id = blk.get_id(idbuf)?;
    puts("blk capacity=");
    put_dec(blk.capacity);
    puts(" ro=");
    putc(if blk.ro { b'1' } else { b'0' });
    puts(" serial=");
    match id {
        Ok(text) => {
            for &b in text {
                putc(if b.is_ascii_graphic() || b == b' ' {
                    b
                } else {
                    b'?'
                });
            }
            putc(b'\n');
        }
        Err(status) => {
            putc(b'\n');
            puts("blk get-id status=");
            put_dec(status.into());
            putc(b'\n');
        }
    }
    blk.t.reset()
}

/// Byte `i` of the data `blk-rw` writes at `sector`.
fn pattern(sector: u64, i: u64, seed: u64) -> u8 {
    (sector * SECTOR_SIZE + i)
        .wrapping_mul(7)
        .wrapping_add(seed) as u8
}

/// `blk-rw <nth-disk> <sector> <count> <seed>`.
pub fn scenario_rw(args: &mut Args<'_>) -> VResult<()> {
    let nth = parse_u64(args.next(), 0);
    let sector = parse_u64(args.next(), 0);
    let count = parse_u64(args.next(), 8);
    let seed = parse_u64(args.next(), 0);
    if count == 0 || count > MAX_RW_SECTORS {
        return Err(fail_with("blk-rw count must be 1..=256, got", count));
    }
    let mut arena = Bump::arena();
    let slot = find_nth(Kind::Blk, nth)?;
    let mut blk = Blk::open(slot, 0, 256, &mut arena)?;
    if sector
        .checked_add(count)
        .is_none_or(|end| end > blk.capacity)
    {
        return Err(fail_with(
            "range lies beyond the disk, capacity",
            blk.capacity,
        ));
    }
    let bytes = (count * SECTOR_SIZE) as usize;
    let oom = fail("out of memory for data buffers");
    let rbuf = arena.alloc(bytes, 4096).ok_or(oom)?;
    let wbuf = arena.alloc(bytes, 4096).ok_or(oom)?;

    // Read what is there.
    mem::bytes_mut(rbuf, bytes).fill(0xaa);
    let s = blk.transfer(req::IN, sector, count, rbuf)?;
    if s != VIRTIO_BLK_S_OK {
        return Err(fail_with("read failed with status", s.into()));
    }
    let mut h = Fnv::new();
    h.update(mem::bytes(rbuf, bytes));
    puts("blk-read sector=");
    put_dec(sector);
    puts(" count=");
    put_dec(count);
    puts(" fnv=");
    h.put();
    putc(b'\n');

    // Write the pattern.
    for (i, b) in mem::bytes_mut(wbuf, bytes).iter_mut().enumerate() {
        *b = pattern(sector, i as u64, seed);
    }
    let s = blk.transfer(req::OUT, sector, count, wbuf)?;
    if blk.ro {
        puts("blk-ro write-status=");
        put_dec(s.into());
        putc(b'\n');
        return if s != VIRTIO_BLK_S_OK {
            Ok(())
        } else {
            Err(fail("write to a read-only disk succeeded"))
        };
    }
    if s != VIRTIO_BLK_S_OK {
        return Err(fail_with("write failed with status", s.into()));
    }
    if blk.t.has(VIRTIO_BLK_F_FLUSH) {
        let s = blk.flush()?;
        if s != VIRTIO_BLK_S_OK {
            return Err(fail_with("flush failed with status", s.into()));
        }
    }

    // Read back and compare.
    mem::bytes_mut(rbuf, bytes).fill(0x55);
    let s = blk.transfer(req::IN, sector, count, rbuf)?;
    if s != VIRTIO_BLK_S_OK {
        return Err(fail_with("read-back failed with status", s.into()));
    }
    let written = mem::bytes(wbuf, bytes);
    let back = mem::bytes(rbuf, bytes);
    if let Some(i) = (0..bytes).find(|&i| written[i] != back[i]) {
        return Err(fail_with(
            "read-back differs from the written data at byte",
            i as u64,
        ));
    }
    let mut h = Fnv::new();
    h.update(written);
    puts("blk-write sector=");
    put_dec(sector);
    puts(" count=");
    put_dec(count);
    puts(" fnv=");
    h.put();
    puts(" verify=ok\n");
    Ok(())
}

// ---------------------------------------------------------------- bench

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
}

impl Mode {
    fn parse(word: Option<&[u8]>) -> Option<Self> {
        Some(match word? {
            b"randread" => Self::RandRead,
            b"randwrite" => Self::RandWrite,
            b"seqread" => Self::SeqRead,
            b"seqwrite" => Self::SeqWrite,
            _ => return None,
        })
    }
    fn is_read(self) -> bool {
        matches!(self, Self::RandRead | Self::SeqRead)
    }
    fn is_random(self) -> bool {
        matches!(self, Self::RandRead | Self::RandWrite)
    }
}

/// Offsets for the benchmark: xorshift64 or sequential, block-aligned,
/// within the region.
struct Offsets {
    random: bool,
    state: u64,
    next_block: u64,
    blocks: u64,
    block: u64,
}

impl Offsets {
    fn next(&mut self) -> u64 {
        let b = if self.random {
            let mut x = self.state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.state = x;
            x % self.blocks
        } else {
            let b = self.next_block;
            self.next_block = (b + 1) % self.blocks;
            b
        };
        b * self.block
    }
}

const MAX_BENCH_BLOCK: u64 = 1 << 20;
const MAX_BENCH_DEPTH: u64 = 128;

/// PAUSE instructions between two polls of the used ring in `blk-bench`
/// (about 3 µs on this project's CI host, 31 cycles each): polling flat out
/// keeps stealing the used-ring and header cache lines from the device
/// thread and cost 25 % of throughput.
const IDLE_PAUSES: u32 = 256;

/// Resubmitted requests are published (and the device notified if it
/// asks) every this many, not only after a whole burst of completions, so a
/// polling device starts on them while the rest are being refilled.
const PUBLISH_EVERY: u64 = 8;

/// `blk-bench <nth-disk> <mode> <block-bytes> <queue-depth> <total-requests> <region-mib> [<pauses>]`
/// (`pauses` defaults to [`IDLE_PAUSES`]).
///
/// Each in-flight slot owns a fixed descriptor chain and a memory area (a
/// page for the header and status, then the data), so a slot is
/// resubmitted by rewriting its header and pushing its head again. Three
/// descriptors per request (header, data, status) when the queue has room;
/// otherwise two, with the header or the status contiguous with the data
/// (any layout is allowed under VERSION_1).
pub fn scenario_bench(args: &mut Args<'_>, mem_size: u64) -> VResult<()> {
    let nth = parse_u64(args.next(), 0);
    let mode = Mode::parse(args.next()).ok_or(fail(
        "blk-bench mode must be randread, randwrite, seqread or seqwrite",
    ))?;
    let block = parse_u64(args.next(), 4096);
    let depth = parse_u64(args.next(), 1);
    let total = parse_u64(args.next(), 1000);
    let region_mib = parse_u64(args.next(), 64);
    let idle_pauses = parse_u64(args.next(), IDLE_PAUSES as u64);
    if block == 0 || !block.is_multiple_of(SECTOR_SIZE) || block > MAX_BENCH_BLOCK {
        return Err(fail_with(
            "block-bytes must be a multiple of 512 up to 1 MiB, got",
            block,
        ));
    }
    if depth == 0 || depth > MAX_BENCH_DEPTH {
        return Err(fail_with("queue-depth must be 1..=128, got", depth));
    }
    let region = region_mib << 20;
    if region < block {
        return Err(fail("region is smaller than one block"));
    }

    let mut arena = Bump::arena();
    let slot = find_nth(Kind::Blk, nth)?;
    let want_queue = (3 * depth).next_power_of_two().min(1024) as u16;
    let mut blk = Blk::open(slot, VIRTIO_F_RING_EVENT_IDX, want_queue, &mut arena)?;
    if region / SECTOR_SIZE > blk.capacity {
        return Err(fail_with(
            "region exceeds the disk, capacity in sectors",
            blk.capacity,
        ));
    }
    let qsize = u64::from(blk.q.size);
    let mut depth = depth;
    let per = if qsize >= 3 * depth {
        3
    } else {
        if qsize < 2 * depth {
            depth = qsize / 2;
            puts("bench-note queue-depth=");
            put_dec(depth);
            puts(" (queue size ");
            put_dec(qsize);
            puts(")\n");
        }
        2
    };

    // Slot memory: a page holding the header and, for three-descriptor
    // chains, the status byte in the same cache line (as Linux's driver
    // keeps both in one request struct), then the data. Two-descriptor
    // chains put the header right before the data and the status right
    // after it.
    let block_sz = block as usize;
    let stride = mem::align_up(4096 + block_sz + 1, 4096);
    let mut high = Bump::above_image(mem_size);
    let need = stride * depth as usize;
    let base = high.alloc(need, 4096).ok_or(fail_with(
        "not enough guest RAM for the buffers, MiB needed",
        (need >> 20) as u64 + 1,
    ))?;
    let data_of = |s: usize| base + s * stride + 4096;
    let hdr_of = |s: usize| {
        if per == 3 {
            // Each slot's header line sits at a different offset in its
            // page, so the lines do not all compete for one cache set.
            base + s * stride + (s % 64) * 64
        } else {
            data_of(s) - req::HEADER_SIZE
        }
    };
    let status_of = |s: usize| {
        if per == 3 {
            hdr_of(s) + req::HEADER_SIZE
        } else {
            data_of(s) + block_sz
        }
    };

    let read = mode.is_read();
    let rtype = if read { req::IN } else { req::OUT };
    let hdr_len = req::HEADER_SIZE as u32;
    let blk_len = block as u32;
    for s in 0..depth as usize {
        if !read {
            mem::bytes_mut(data_of(s), block_sz).fill(s as u8);
        }
        let first = (s * per) as u16;
        match (per, read) {
            (3, _) => blk.q.set_chain(
                first,
                &[
                    (hdr_of(s), hdr_len, false),
                    (data_of(s), blk_len, read),
                    (status_of(s), 1, true),
                ],
            ),
            (_, true) => blk.q.set_chain(
                first,
                &[(hdr_of(s), hdr_len, false), (data_of(s), blk_len + 1, true)],
            ),
            (_, false) => blk.q.set_chain(
                first,
                &[
                    (hdr_of(s), hdr_len + blk_len, false),
                    (status_of(s), 1, true),
                ],
            ),
        };
        wr32(hdr_of(s) + req::TYPE, rtype);
        wr32(hdr_of(s) + req::RESERVED, 0);
    }

    let mut offsets = Offsets {
        random: mode.is_random(),
        state: 0x9e37_79b9_7f4a_7c15,
        next_block: 0,
        blocks: region / block,
        block,
    };
    let mut submitted = 0u64;
    let mut completed = 0u64;
    let mut errors = 0u64;
    let submit = |blk: &mut Blk, s: usize, offsets: &mut Offsets| {
        wr64(hdr_of(s) + req::SECTOR, offsets.next() / SECTOR_SIZE);
        wr8(status_of(s), STATUS_UNSET);
        blk.q.push((s * per) as u16);
    };

    puts("bench-start\n");
    let t0 = rdtsc();
    while submitted < total && submitted < depth {
        submit(&mut blk, submitted as usize, &mut offsets);
        submitted += 1;
    }
    blk.q.kick();
    let mut deadline = Deadline::after_ms(IO_TIMEOUT_MS);
    let mut idle = IdlePolls::new();
    while completed < total {
        let mut refilled = false;
        while let Some(done) = blk.q.pop_used()? {
            let s = usize::from(done.id) / per;
            if usize::from(done.id) % per != 0 || s >= depth as usize {
                return Err(fail_with(
                    "device completed an unknown chain, id",
                    done.id.into(),
                ));
            }
            if rd8(status_of(s)) != VIRTIO_BLK_S_OK {
                errors += 1;
            }
            completed += 1;
            if submitted < total {
                submit(&mut blk, s, &mut offsets);
                submitted += 1;
                refilled = true;
                if submitted % PUBLISH_EVERY == 0 {
                    blk.q.kick();
                }
            }
        }
        if refilled {
            blk.q.kick();
            deadline = Deadline::after_ms(IO_TIMEOUT_MS);
        } else {
            if idle.check_due() {
                blk.t.check_health()?;
                if deadline.expired() {
                    blk.q.dump_state(&blk.t);
                    return Err(fail_with("bench stalled, completed", completed));
                }
            }
            // Back off between looks at the used ring: re-reading it at full
            // speed keeps pulling the cache line away from the device thread
            // that is about to write it.
            for _ in 0..idle_pauses {
                core::hint::spin_loop();
            }
        }
    }
    let cycles = rdtsc().wrapping_sub(t0);
    puts("bench-done requests=");
    put_dec(completed);
    puts(" bytes=");
    put_dec(completed * block);
    puts(" errors=");
    put_dec(errors);
    putc(b'\n');
    puts("bench-info tsc-cycles=");
    put_dec(cycles);
    puts(" tsc-hz=");
    put_dec(tsc_hz());
    puts(" notifications=");
    put_dec(blk.q.notifications);
    puts(" event-idx=");
    putc(if blk.t.has(VIRTIO_F_RING_EVENT_IDX) {
        b'1'
    } else {
        b'0'
    });
    puts(" descs-per-request=");
    put_dec(per as u64);
    putc(b'\n');
    Ok(())
}

// ---------------------------------------------------------- error paths

fn put_edge(name: &str, status: u8) {
    puts("edge ");
    puts(name);
    puts(" status=");
    put_dec(status.into());
    putc(b'\n');
}

/// `blk-edge <nth-disk>`: the device's error paths. Requests past the end,
/// of an unknown type, of a length that is not a multiple of 512, and with
/// data outside guest RAM must complete with a non-OK status (or, for the
/// bad address, DEVICE_NEEDS_RESET), never hang; after a reset the device
/// must come up again and serve reads; features it did not offer must be
/// refused.
pub fn scenario_edge(args: &mut Args<'_>) -> VResult<()> {
    const UNKNOWN_TYPE: u32 = 0x7f;
    const VIRTIO_BLK_S_UNSUPP: u8 = 2;
    let nth = parse_u64(args.next(), 0);
    let mut arena = Bump::arena();
    let slot = find_nth(Kind::Blk, nth)?;

    // A feature the device did not offer must be refused at FEATURES_OK.
    let mut t = Transport::open(slot)?;
    let offered = t.device_features();
    let unoffered = 1u64 << (63 - (!offered).leading_zeros().min(63));
    let kept = t.try_features(VIRTIO_F_VERSION_1 | unoffered)?;
    puts("edge unoffered-feature accepted=");
    putc(if kept { b'1' } else { b'0' });
    putc(b'\n');
    let mut bad = u64::from(kept);

    let mut blk = Blk::open(slot, 0, 256, &mut arena)?;
    let buf = arena
        .alloc_zeroed(4096, 4096)
        .ok_or(fail("out of memory"))?;
    let cap = blk.capacity;
    let mut expect = |name: &str, s: u8, ok: bool| {
        put_edge(name, s);
        if !ok {
            bad += 1;
        }
    };

    let s = blk.request(req::IN, cap, buf, 512, true)?;
    expect("read-past-end", s, s != VIRTIO_BLK_S_OK);
    let s = blk.request(req::IN, cap.saturating_sub(1), buf, 1024, true)?;
    expect("read-straddling-end", s, s != VIRTIO_BLK_S_OK);
    let s = blk.request(req::OUT, u64::MAX - 1, buf, 1024, false)?;
    expect("write-sector-overflow", s, s != VIRTIO_BLK_S_OK);
    let s = blk.request(UNKNOWN_TYPE, 0, buf, 512, true)?;
    expect("unknown-type", s, s == VIRTIO_BLK_S_UNSUPP);
    let s = blk.request(req::IN, 0, buf, 100, true)?;
    expect("read-partial-sector", s, s != VIRTIO_BLK_S_OK);
    let s = blk.request(req::IN, 0, buf, 512, true)?;
    expect("read-after-errors", s, s == VIRTIO_BLK_S_OK);

    // Reset with the queue live, then a full re-initialization.
    blk.t.reset()?;
    let mut blk = Blk::open(slot, 0, 256, &mut arena)?;
    let s = blk.request(req::IN, 0, buf, 4096, true)?;
    expect("read-after-reset", s, s == VIRTIO_BLK_S_OK);

    // Data outside guest RAM (a 64 TiB guest-physical address).
    blk.timeout_ms = 3000;
    match blk.request(req::IN, 0, 1 << 46, 512, true) {
        Ok(s) => expect(
            "read-bad-address",
            s,
            s != VIRTIO_BLK_S_OK && s != STATUS_UNSET,
        ),
        Err(_) if blk.t.status() & crate::virtio::status::DEVICE_NEEDS_RESET != 0 => {
            puts("edge read-bad-address needs-reset=1\n");
        }
        Err(e) => return Err(e),
    }
    if bad != 0 {
        return Err(fail_with("device error paths misbehaved, cases", bad));
    }
    puts("edge ok\n");
    Ok(())
}
