//! `churn PAGES [EVERY [BLK-SECTORS [LIMIT [RATE]]]]`: a guest whose memory, disk
//! and network state keep changing in a way it can verify itself, for
//! pause/resume and snapshot/restore tests.
//!
//! - Memory: a working set of PAGES 4 KiB pages above the image. Iteration
//!   `i` (0, 1, …) rewrites page `i % PAGES` with words from a xorshift64
//!   seeded by `(i, page)`, after checking the page still holds what its
//!   last writer put there, and updates the expected checksum of the whole
//!   working set, which lives only in this program's state. After every
//!   EVERY iterations (default PAGES) it reads the whole working set back,
//!   and prints `churn i=<i> sum=<hex16>` (`i` = iterations done, so a
//!   multiple of EVERY; `sum` is a function of `i` and PAGES only). A page
//!   found with the wrong content (before its rewrite or in the sweep)
//!   prints `churn MISMATCH i=<i> page=<p> got=<hex16> want=<hex16>` (page
//!   hashes; `i` = iterations done) and exits 1.
//! - Disk (when a virtio-blk device is present): iteration `i` also writes
//!   sector `i % S` (S = BLK-SECTORS, default min(capacity, 256)) with a
//!   pattern of `(i, sector)`, then reads sector `(i + 1) % S` back and
//!   checks it holds the pattern of the iteration that last wrote it;
//!   otherwise `churn BLK-MISMATCH i=<i> sector=<s> want-iter=<j>
//!   got-iter=<k> word=<w>` and exit 1. The line gets ` blk=<writes>`.
//!   A nonzero BLK-SECTORS without a disk is a failure (`FAIL: …`).
//! - Network (when a virtio-net device is present): every iteration `i`
//!   that is a multiple of 16 also sends one broadcast frame of ethertype
//!   0x88b5 whose payload is `churn-tx`, the big-endian u64 sequence number
//!   (`i / 16`: 0, 1, 2, …), then the big-endian u64 `i`; every iteration
//!   takes in what arrived: frames of that ethertype whose payload starts
//!   with `churn-rx` are counted, their big-endian u64 sequence numbers
//!   (bytes 8..16 of the payload) must each be one more than the previous
//!   one, else a line
//!   `churn RX-GAP i=<i> want=<n> got=<m>` (not fatal). The line gets
//!   ` tx=<sent> rx=<received>`; `rx` is the one field that depends on the
//!   host rather than on `i`.
//!
//! - Rate (RATE > 0): page rewrites are paced to RATE MiB/s by the TSC (a live-migration
//!   test's dirty rate); 0 or absent: as fast as the vCPU runs.
//!
//! First line: `churn start pages=<P> every=<K> blk-sectors=<S> net=<0|1>
//! base=0x<hex16>` (S = 0 without a disk; `base` is the guest-physical
//! address of the working set, page `p` at `base + 4096·p`). With LIMIT > 0
//! it stops after LIMIT iterations (rounded up to a multiple of EVERY) with
//! `churn done i=<i>`, exit 0; otherwise it runs until the VMM stops it.

use crate::mem::{self, rd64, wr64, Bump};
use crate::virtio::{fail, fail_with, find_nth, Kind, VResult};
use crate::virtio_blk::{Blk, SECTOR_SIZE, VIRTIO_BLK_S_OK};
use crate::virtio_net::{Net, BUF_SIZE};
use crate::{exit, parse_u64, put_dec, put_hex16, putc, puts, Args};

const PAGE: usize = 4096;
const WORDS: usize = PAGE / 8;
const SECTOR_WORDS: usize = SECTOR_SIZE as usize / 8;
/// The "iteration" that wrote a page's or sector's initial content.
const INITIAL: u64 = u64::MAX;
const BLK_MAGIC: u64 = u64::from_le_bytes(*b"churnblk");
pub const ETHERTYPE: u16 = 0x88b5;
const TX_MAGIC: &[u8; 8] = b"churn-tx";
const RX_MAGIC: &[u8; 8] = b"churn-rx";
const ETH_HLEN: usize = 14;
const FRAME_LEN: usize = 60;
/// Iterations per transmitted frame.
const TX_EVERY: u64 = 16;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// xorshift64 seeded by `(a, b, salt)`.
struct Gen(u64);

impl Gen {
    fn new(a: u64, b: u64, salt: u64) -> Self {
        Self(splitmix(a ^ splitmix(b ^ splitmix(salt))) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Hash of one page's 512 words.
fn page_hash(words: impl Iterator<Item = u64>) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for w in words {
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(17);
    }
    h
}

/// Page `page`'s share of the working-set checksum.
fn weight(page: u64, hash: u64) -> u64 {
    splitmix(hash ^ page.wrapping_mul(0xd6e8_feb8_6659_fd93))
}

/// The words iteration `iter` writes into page `page`.
fn page_words(iter: u64, page: u64) -> impl Iterator<Item = u64> {
    let mut g = Gen::new(iter, page, 0x7061_6765);
    (0..WORDS).map(move |_| g.next())
}

/// Word `k` of the pattern iteration `iter` writes into sector `sector`.
fn sector_words(iter: u64, sector: u64) -> impl Iterator<Item = u64> {
    let mut g = Gen::new(iter, sector, 0x7365_6374);
    (0..SECTOR_WORDS).map(move |k| match k {
        0 => BLK_MAGIC,
        1 => iter,
        2 => sector,
        _ => g.next(),
    })
}

/// The iteration that last wrote slot `slot` of `n` (written by every
/// iteration `j` with `j % n == slot`) after iterations `0..done` ran.
fn last_writer(done: u64, slot: u64, n: u64) -> u64 {
    if done == 0 {
        return INITIAL;
    }
    let last = done - 1;
    let back = (last % n + n - slot) % n;
    last.checked_sub(back).unwrap_or(INITIAL)
}

/// Reports page `page` holding the wrong content at iteration `i` and
/// exits with status 1.
fn mismatch(i: u64, page: u64, got: u64, want: u64) -> ! {
    puts("churn MISMATCH i=");
    put_dec(i);
    puts(" page=");
    put_dec(page);
    puts(" got=");
    put_hex16(got);
    puts(" want=");
    put_hex16(want);
    putc(b'\n');
    exit(1)
}

struct Disk {
    blk: Blk,
    sectors: u64,
    wbuf: usize,
    rbuf: usize,
    writes: u64,
}

impl Disk {
    /// Iteration `i`'s block traffic.
    fn step(&mut self, i: u64) -> VResult<()> {
        let n = self.sectors;
        let s = i % n;
        for (k, w) in sector_words(i, s).enumerate() {
            wr64(self.wbuf + 8 * k, w);
        }
        let st = self.blk.write_sectors(s, 1, self.wbuf)?;
        if st != VIRTIO_BLK_S_OK {
            return Err(fail_with(
                "churn: sector write failed with status",
                st.into(),
            ));
        }
        self.writes += 1;
        let r = (i + 1) % n;
        let want = last_writer(i + 1, r, n);
        if want == INITIAL {
            return Ok(());
        }
        mem::bytes_mut(self.rbuf, SECTOR_SIZE as usize).fill(0xa5);
        let st = self.blk.read_sectors(r, 1, self.rbuf)?;
        if st != VIRTIO_BLK_S_OK {
            return Err(fail_with(
                "churn: sector read failed with status",
                st.into(),
            ));
        }
        for (k, w) in sector_words(want, r).enumerate() {
            if rd64(self.rbuf + 8 * k) != w {
                puts("churn BLK-MISMATCH i=");
                put_dec(i);
                puts(" sector=");
                put_dec(r);
                puts(" want-iter=");
                put_dec(want);
                puts(" got-iter=");
                put_dec(rd64(self.rbuf + 8));
                puts(" word=");
                put_dec(k as u64);
                putc(b'\n');
                exit(1);
            }
        }
        Ok(())
    }
}

struct Nic {
    net: Net,
    sent: u64,
    received: u64,
    last_rx: u64,
}

impl Nic {
    /// Iteration `i`'s frame, and whatever arrived.
    fn step(&mut self, i: u64) -> VResult<()> {
        if i.is_multiple_of(TX_EVERY) {
            self.send(i)?;
        }
        self.receive(i)
    }

    fn send(&mut self, i: u64) -> VResult<()> {
        let mut f = [0u8; FRAME_LEN];
        f[0..6].fill(0xff);
        f[6..12].copy_from_slice(&self.net.mac);
        f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
        f[ETH_HLEN..ETH_HLEN + 8].copy_from_slice(TX_MAGIC);
        f[ETH_HLEN + 8..ETH_HLEN + 16].copy_from_slice(&self.sent.to_be_bytes());
        f[ETH_HLEN + 16..ETH_HLEN + 24].copy_from_slice(&i.to_be_bytes());
        self.net.send(&f)?;
        self.sent += 1;
        Ok(())
    }

    fn receive(&mut self, i: u64) -> VResult<()> {
        let mut frame = [0u8; BUF_SIZE];
        while let Some(len) = self.net.recv(&mut frame)? {
            if len < ETH_HLEN + 16
                || frame[12..14] != ETHERTYPE.to_be_bytes()
                || frame[ETH_HLEN..ETH_HLEN + 8] != *RX_MAGIC
            {
                continue;
            }
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&frame[ETH_HLEN + 8..ETH_HLEN + 16]);
            let seq = u64::from_be_bytes(seq);
            let want = self.last_rx.wrapping_add(1);
            if self.received > 0 && seq != want {
                puts("churn RX-GAP i=");
                put_dec(i);
                puts(" want=");
                put_dec(want);
                puts(" got=");
                put_dec(seq);
                putc(b'\n');
            }
            self.last_rx = seq;
            self.received += 1;
        }
        Ok(())
    }
}

/// `churn PAGES [EVERY [BLK-SECTORS [LIMIT]]]` (see the module docs).
pub fn scenario(args: &mut Args<'_>, mem_size: u64) -> VResult<()> {
    let pages = parse_u64(args.next(), 64);
    let every = match parse_u64(args.next(), 0) {
        0 => pages,
        k => k,
    };
    let blk_sectors = parse_u64(args.next(), 0);
    let limit = parse_u64(args.next(), 0);
    let rate_mib = parse_u64(args.next(), 0);
    if pages == 0 {
        return Err(fail("churn: PAGES must be at least 1"));
    }

    let mut ram = Bump::above_image(mem_size);
    let base = ram
        .alloc(pages as usize * PAGE, PAGE)
        .ok_or(fail_with("churn: not enough RAM for pages", pages))?;
    let mut arena = Bump::arena();

    let mut disk = match find_nth(Kind::Blk, 0) {
        Ok(slot) => {
            let blk = Blk::open(slot, 0, 16, &mut arena)?;
            if blk.ro {
                return Err(fail("churn: the disk is read-only"));
            }
            let sectors = if blk_sectors == 0 {
                blk.capacity.min(256)
            } else {
                blk_sectors
            };
            if sectors == 0 || sectors > blk.capacity {
                return Err(fail_with("churn: disk too small, capacity", blk.capacity));
            }
            let oom = fail("churn: out of memory for sector buffers");
            let wbuf = arena.alloc(SECTOR_SIZE as usize, 512).ok_or(oom)?;
            let rbuf = arena.alloc(SECTOR_SIZE as usize, 512).ok_or(oom)?;
            Some(Disk {
                blk,
                sectors,
                wbuf,
                rbuf,
                writes: 0,
            })
        }
        Err(_) if blk_sectors == 0 => None,
        Err(e) => return Err(e),
    };
    let mut nic = match find_nth(Kind::Net, 0) {
        Ok(slot) => Some(Nic {
            net: Net::open(slot, 0, 16, &mut arena)?,
            sent: 0,
            received: 0,
            last_rx: 0,
        }),
        Err(_) => None,
    };

    puts("churn start pages=");
    put_dec(pages);
    puts(" every=");
    put_dec(every);
    puts(" blk-sectors=");
    put_dec(disk.as_ref().map_or(0, |d| d.sectors));
    puts(" net=");
    putc(if nic.is_some() { b'1' } else { b'0' });
    puts(" base=");
    crate::put_hex(base as u64);
    putc(b'\n');

    // Initial content, and its checksum.
    let page_addr = |p: u64| base + p as usize * PAGE;
    let mut expected = 0u64;
    for p in 0..pages {
        for (k, w) in page_words(INITIAL, p).enumerate() {
            wr64(page_addr(p) + 8 * k, w);
        }
        expected = expected.wrapping_add(weight(p, page_hash(page_words(INITIAL, p))));
    }

    // TSC cycles per page rewrite at RATE MiB/s (256 pages per MiB).
    let cycles_per_page = if rate_mib == 0 {
        0
    } else {
        crate::tsc_hz() / (rate_mib * 256)
    };
    let paced_from = crate::rdtsc();
    let mut i = 0u64;
    loop {
        if cycles_per_page != 0 {
            while crate::rdtsc().wrapping_sub(paced_from) < i * cycles_per_page {
                core::hint::spin_loop();
            }
        }
        let p = i % pages;
        let old = last_writer(i, p, pages);
        let old_hash = page_hash(page_words(old, p));
        // The page still holds what its last writer put there.
        let at = page_addr(p);
        let got = page_hash((0..WORDS).map(|k| rd64(at + 8 * k)));
        if got != old_hash {
            mismatch(i, p, got, old_hash);
        }
        expected = expected.wrapping_sub(weight(p, old_hash));
        for (k, w) in page_words(i, p).enumerate() {
            wr64(page_addr(p) + 8 * k, w);
        }
        expected = expected.wrapping_add(weight(p, page_hash(page_words(i, p))));
        if let Some(d) = disk.as_mut() {
            d.step(i)?;
        }
        if let Some(n) = nic.as_mut() {
            n.step(i)?;
        }
        i += 1;
        if !i.is_multiple_of(every) {
            continue;
        }

        // Read the working set back.
        let mut sum = 0u64;
        for q in 0..pages {
            let at = page_addr(q);
            let got = page_hash((0..WORDS).map(|k| rd64(at + 8 * k)));
            let want = page_hash(page_words(last_writer(i, q, pages), q));
            if got != want {
                mismatch(i, q, got, want);
            }
            sum = sum.wrapping_add(weight(q, got));
        }
        if sum != expected {
            puts("churn MISMATCH i=");
            put_dec(i);
            puts(" sum=");
            put_hex16(sum);
            puts(" want=");
            put_hex16(expected);
            putc(b'\n');
            exit(1);
        }
        puts("churn i=");
        put_dec(i);
        puts(" sum=");
        put_hex16(sum);
        if let Some(d) = disk.as_ref() {
            puts(" blk=");
            put_dec(d.writes);
        }
        if let Some(n) = nic.as_ref() {
            puts(" tx=");
            put_dec(n.sent);
            puts(" rx=");
            put_dec(n.received);
        }
        putc(b'\n');
        if limit != 0 && i >= limit {
            break;
        }
    }
    if let Some(n) = nic.as_mut() {
        n.net.drain_tx()?;
    }
    puts("churn done i=");
    put_dec(i);
    putc(b'\n');
    Ok(())
}
