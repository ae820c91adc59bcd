//! A tiny virtio 1.2 driver for tests: it drives a [`VirtioPciDevice`] only
//! through what a guest sees.
//!
//! ```text
//!  Driver ── PciDevice::config / write_config ──► capability list, MSI-X enable
//!         ── BusDevice::read / write (BAR0)  ──► common cfg, notify, ISR, device cfg, MSI-X table/PBA
//!         ── Bytes on GuestMemoryMmap        ──► descriptor table, avail ring, used ring, buffers
//!  MsiRecorder (MsiVectors) ◄── fire(vector) ── transport (worker threads)
//! ```
//! Guest-physical layout (64 MiB): queue `i`'s rings at `RING_BASE + i * RING_STRIDE`
//! (descriptors, then the avail ring at +4 KiB, the used ring at +8 KiB); buffers and indirect
//! tables come from a bump allocator above `HEAP_BASE` that wraps around (tests wait for every
//! request before the memory could be reused).
//!
//! Waiting never hangs: every wait has a deadline ([`TIMEOUT`]) and fails the test when it passes.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vireo_devices::pci::PciDevice;
use vireo_devices::virtio::interrupt::{MsiMessage, MsiVectors};
use vireo_devices::virtio::persist::VirtioPciState;
use vireo_devices::virtio::{status, GuestMemory, VirtioDevice, VirtioPciDevice};
use vireo_devices::BusDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Guest memory size.
pub const MEM_SIZE: u64 = 64 << 20;
/// Where BAR0 claims to live (the harness talks to it by offset, so any aligned value works).
pub const BAR_ADDR: u32 = 0xc000_0000;
/// First queue's rings.
pub const RING_BASE: u64 = 0x1_0000;
/// Distance between two queues' rings.
pub const RING_STRIDE: u64 = 0x1_0000;
/// Start of the buffer heap.
pub const HEAP_BASE: u64 = 0x10_0000;
/// How long any wait may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a paused device is watched for activity.
pub const PAUSED_WATCH: Duration = Duration::from_millis(200);

/// Descriptor flags (virtio 1.2 §2.7.5).
pub const F_NEXT: u16 = 1;
/// Device-writable buffer.
pub const F_WRITE: u16 = 2;
/// The buffer is an indirect descriptor table.
pub const F_INDIRECT: u16 = 4;

/// Common configuration register offsets (virtio 1.2 §4.1.4.3).
pub mod reg {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// Records what the transport does with MSI vectors so tests can wait for interrupts.
#[derive(Debug)]
pub struct MsiRecorder {
    count: usize,
    state: Mutex<MsiState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct MsiState {
    fired: Vec<u64>,
    routes: Vec<Option<MsiMessage>>,
}

impl MsiRecorder {
    /// A group of `count` vectors.
    pub fn new(count: usize) -> Arc<Self> {
        Arc::new(Self {
            count,
            state: Mutex::new(MsiState {
                fired: vec![0; count],
                routes: vec![None; count],
            }),
            cv: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, MsiState> {
        self.state.lock().expect("MSI recorder lock")
    }

    /// Times vector `v` fired.
    pub fn fired(&self, v: u16) -> u64 {
        self.lock().fired[usize::from(v)]
    }

    /// The route the transport programmed for vector `v`.
    pub fn route(&self, v: u16) -> Option<MsiMessage> {
        self.lock().routes[usize::from(v)]
    }

    /// Waits until vector `v` fired more than `seen` times; false after `timeout`.
    pub fn wait_fired(&self, v: u16, seen: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while st.fired[usize::from(v)] <= seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self.cv.wait_timeout(st, left).expect("MSI recorder lock").0;
        }
        true
    }

    /// Waits for any fire (or `timeout`), for polling loops.
    fn nap(&self, timeout: Duration) {
        let st = self.lock();
        let _ = self
            .cv
            .wait_timeout(st, timeout)
            .expect("MSI recorder lock");
    }
}

impl MsiVectors for MsiRecorder {
    fn count(&self) -> usize {
        self.count
    }

    fn set_route(&self, index: usize, message: Option<MsiMessage>) -> std::io::Result<()> {
        let mut st = self.lock();
        let slot = st
            .routes
            .get_mut(index)
            .ok_or_else(|| std::io::Error::other("route for a vector that does not exist"))?;
        *slot = message;
        Ok(())
    }

    fn fire(&self, index: usize) -> std::io::Result<()> {
        let mut st = self.lock();
        assert!(
            st.routes.get(index).copied().flatten().is_some(),
            "transport fired vector {index} without a route"
        );
        st.fired[index] += 1;
        self.cv.notify_all();
        Ok(())
    }
}

/// Where the virtio structures live in BAR0, found through the capability list.
#[derive(Clone, Copy, Debug, Default)]
pub struct BarLayout {
    pub common: u64,
    pub notify: u64,
    pub notify_multiplier: u32,
    pub isr: u64,
    pub device: u64,
    pub device_len: u64,
    pub msix_cap: usize,
    pub msix_table: u64,
    pub msix_pba: u64,
    pub msix_vectors: u16,
}

/// One segment of a chain as the driver builds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

impl Seg {
    /// A device-readable segment.
    pub fn r(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: false,
        }
    }

    /// A device-writable segment.
    pub fn w(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: true,
        }
    }
}

/// A raw split-ring descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    /// A descriptor pointing to an indirect table of `len` bytes at `addr`.
    pub fn indirect(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            flags: F_INDIRECT,
            next: 0,
        }
    }

    /// Its 16-byte little-endian encoding.
    pub fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// Descriptors linked in order (`NEXT` on all but the last), starting at index `first`.
pub fn linked(segs: &[Seg], first: u16) -> Vec<Desc> {
    segs.iter()
        .enumerate()
        .map(|(i, s)| {
            let last = i + 1 == segs.len();
            Desc {
                addr: s.addr,
                len: s.len,
                flags: if s.write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT },
                next: if last { 0 } else { first + i as u16 + 1 },
            }
        })
        .collect()
}

/// A used-ring element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub id: u32,
    pub len: u32,
}

/// The driver's view of one split virtqueue.
#[derive(Clone, Copy, Debug)]
pub struct Vq {
    pub index: u16,
    pub size: u16,
    pub vector: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

/// The test driver.
pub struct Driver {
    pub dev: VirtioPciDevice,
    pub mem: GuestMemory,
    pub msi: Arc<MsiRecorder>,
    pub bar: BarLayout,
    pub queues: Vec<Vq>,
    /// Features the driver accepted in the last successful negotiation.
    pub features: u64,
    heap: u64,
}

/// New 64 MiB guest memory.
pub fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory")
}

impl Driver {
    /// Wraps `device` in the transport, finds its structures and enables MSI-X with every vector
    /// routed and unmasked. The device is not initialised yet (see [`Driver::init`]).
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        let mem = guest_memory();
        let queues = device.queue_max_sizes().len();
        let msi = MsiRecorder::new(queues + 1);
        let dev = VirtioPciDevice::new(device, mem.clone(), BAR_ADDR, msi.clone())
            .expect("virtio-pci transport");
        let mut d = Self {
            dev,
            mem,
            msi,
            bar: BarLayout::default(),
            queues: Vec::new(),
            features: 0,
            heap: HEAP_BASE,
        };
        d.bar = d.discover();
        assert_eq!(
            usize::from(d.bar.msix_vectors),
            queues + 1,
            "MSI-X table size"
        );
        d.set_msix_control(true, false);
        for v in 0..d.bar.msix_vectors {
            d.program_vector(v, 0xfee0_0000, 0x40 + u32::from(v), false);
        }
        d
    }

    // ---- snapshot ----------------------------------------------------------------------------

    /// Pauses the device, saves it and sends the state through JSON; returns what came back.
    pub fn save_through_json(&mut self) -> VirtioPciState {
        self.dev.pause();
        let saved = self.dev.save();
        let json = serde_json::to_string(&saved).expect("serialize");
        let state: VirtioPciState = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(state, saved, "JSON round trip");
        state
    }

    /// Builds a transport for `device` on this driver's guest memory, restores `state` onto it
    /// (`paused` as given), checks that it saves `state` again and kept the MSI routes of its
    /// `vectors` vectors, and puts it in place of the driver's device, which is dropped.
    pub fn restore_onto(
        &mut self,
        device: Box<dyn VirtioDevice>,
        vectors: u16,
        state: &VirtioPciState,
        paused: bool,
    ) {
        let msi = MsiRecorder::new(usize::from(vectors));
        let mut restored = VirtioPciDevice::new(device, self.mem.clone(), BAR_ADDR, msi.clone())
            .expect("transport");
        restored.restore(state, paused).expect("restore");
        assert_eq!(
            restored.save(),
            *state,
            "the restored device saves the same state"
        );
        for v in 0..vectors {
            assert_eq!(msi.route(v), self.msi.route(v), "MSI route of vector {v}");
        }
        self.dev = restored;
        self.msi = msi;
    }

    // ---- PCI configuration space -------------------------------------------------------------

    /// Reads `N` bytes of configuration space.
    pub fn cfg<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut b = [0u8; N];
        self.dev.config().read(off, &mut b);
        b
    }

    /// 16-bit configuration read.
    pub fn cfg16(&self, off: usize) -> u16 {
        u16::from_le_bytes(self.cfg(off))
    }

    /// 32-bit configuration read.
    pub fn cfg32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.cfg(off))
    }

    /// Walks the capability list as a guest does.
    fn discover(&self) -> BarLayout {
        assert_eq!(self.cfg16(0), 0x1af4, "virtio vendor id");
        assert_ne!(self.cfg16(6) & 0x10, 0, "capabilities list bit");
        let bar0 = self.cfg32(0x10);
        assert_eq!(bar0 & !0xf, BAR_ADDR, "BAR0 address");
        let mut l = BarLayout::default();
        let mut ptr = usize::from(self.cfg::<1>(0x34)[0]);
        let mut seen = 0;
        // Which of the common (1), notify (2), ISR (3) and device (4)
        // structures the list described.
        let mut found = [false; 5];
        while ptr != 0 {
            seen += 1;
            assert!(seen < 48, "capability list loops");
            let [id, next] = self.cfg::<2>(ptr);
            match id {
                0x09 => {
                    let cfg_type = self.cfg::<1>(ptr + 3)[0];
                    let bar = self.cfg::<1>(ptr + 4)[0];
                    assert_eq!(bar, 0, "virtio structures are in BAR0");
                    let offset = u64::from(self.cfg32(ptr + 8));
                    let length = u64::from(self.cfg32(ptr + 12));
                    if let Some(f) = found.get_mut(usize::from(cfg_type)) {
                        *f = true;
                    }
                    match cfg_type {
                        1 => l.common = offset,
                        2 => {
                            l.notify = offset;
                            l.notify_multiplier = self.cfg32(ptr + 16);
                        }
                        3 => l.isr = offset,
                        4 => {
                            l.device = offset;
                            l.device_len = length;
                        }
                        _ => {}
                    }
                }
                0x11 => {
                    l.msix_cap = ptr;
                    l.msix_vectors = (self.cfg16(ptr + 2) & 0x7ff) + 1;
                    let table = self.cfg32(ptr + 4);
                    let pba = self.cfg32(ptr + 8);
                    assert_eq!(table & 7, 0, "MSI-X table in BAR0");
                    assert_eq!(pba & 7, 0, "MSI-X PBA in BAR0");
                    l.msix_table = u64::from(table & !7);
                    l.msix_pba = u64::from(pba & !7);
                }
                _ => {}
            }
            ptr = usize::from(next);
        }
        assert_eq!(
            found[1..],
            [true; 4],
            "common, notify, ISR and device capabilities"
        );
        assert_ne!(l.notify_multiplier, 0, "notify multiplier");
        assert_ne!(l.msix_cap, 0, "MSI-X capability found");
        l
    }

    /// Sizes BAR0 with the all-ones probe, restores it, and returns the size.
    pub fn bar0_size(&mut self) -> u64 {
        let orig = self.cfg32(0x10);
        self.dev.write_config(0x10, &u32::MAX.to_le_bytes());
        let probe = self.cfg32(0x10);
        self.dev.write_config(0x10, &orig.to_le_bytes());
        assert_eq!(self.cfg32(0x10), orig, "BAR0 restored");
        u64::from(!(probe & !0xf)) + 1
    }

    /// Writes the MSI-X message-control register (enable, function mask).
    pub fn set_msix_control(&mut self, enable: bool, function_mask: bool) {
        let mut ctrl = self.cfg16(self.bar.msix_cap + 2);
        ctrl &= !0xc000;
        ctrl |= if enable { 0x8000 } else { 0 } | if function_mask { 0x4000 } else { 0 };
        self.dev
            .write_config(self.bar.msix_cap + 2, &ctrl.to_le_bytes());
    }

    /// Programs MSI-X table entry `v`.
    pub fn program_vector(&mut self, v: u16, addr: u64, data: u32, masked: bool) {
        let base = self.bar.msix_table + u64::from(v) * 16;
        self.bar_write(base, 4, addr & 0xffff_ffff);
        self.bar_write(base + 4, 4, addr >> 32);
        self.bar_write(base + 8, 4, u64::from(data));
        self.mask_vector(v, masked);
    }

    /// Sets or clears the per-vector mask bit.
    pub fn mask_vector(&mut self, v: u16, masked: bool) {
        let base = self.bar.msix_table + u64::from(v) * 16;
        self.bar_write(base + 12, 4, u64::from(masked));
    }

    /// The pending bit of vector `v` in the PBA.
    pub fn pending(&mut self, v: u16) -> bool {
        let word = self.bar_read(self.bar.msix_pba + u64::from(v / 64) * 8, 8);
        word & (1 << (v % 64)) != 0
    }

    // ---- BAR0 ---------------------------------------------------------------------------------

    /// Reads `size` bytes (1, 2, 4 or 8) of BAR0 at `off`.
    pub fn bar_read(&mut self, off: u64, size: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read(off, &mut b[..size]);
        u64::from_le_bytes(b)
    }

    /// Writes the low `size` bytes of `value` to BAR0 at `off`.
    pub fn bar_write(&mut self, off: u64, size: usize, value: u64) {
        self.dev.write(off, &value.to_le_bytes()[..size]);
    }

    /// Reads a common-configuration register.
    pub fn common(&mut self, off: u64, size: usize) -> u64 {
        self.bar_read(self.bar.common + off, size)
    }

    /// Writes a common-configuration register.
    pub fn set_common(&mut self, off: u64, size: usize, value: u64) {
        self.bar_write(self.bar.common + off, size, value)
    }

    /// Writes a 64-bit register as two 32-bit halves, low first (as Linux does).
    pub fn set_common64(&mut self, off: u64, value: u64) {
        self.set_common(off, 4, value & 0xffff_ffff);
        self.set_common(off + 4, 4, value >> 32);
    }

    /// Reads device-specific configuration.
    pub fn device_cfg(&mut self, off: u64, size: usize) -> u64 {
        self.bar_read(self.bar.device + off, size)
    }

    /// Reads (and so acknowledges) the ISR.
    pub fn isr(&mut self) -> u8 {
        self.bar_read(self.bar.isr, 1) as u8
    }

    /// The device status register.
    pub fn status(&mut self) -> u8 {
        self.common(reg::DEVICE_STATUS, 1) as u8
    }

    /// Writes the device status register.
    pub fn set_status(&mut self, s: u8) {
        self.set_common(reg::DEVICE_STATUS, 1, u64::from(s));
    }

    /// All 64 offered feature bits, read through both select values.
    pub fn device_features(&mut self) -> u64 {
        self.set_common(reg::DEVICE_FEATURE_SELECT, 4, 0);
        let lo = self.common(reg::DEVICE_FEATURE, 4);
        self.set_common(reg::DEVICE_FEATURE_SELECT, 4, 1);
        let hi = self.common(reg::DEVICE_FEATURE, 4);
        lo | hi << 32
    }

    /// Writes the driver feature bits through both select values.
    pub fn write_driver_features(&mut self, f: u64) {
        self.set_common(reg::DRIVER_FEATURE_SELECT, 4, 0);
        self.set_common(reg::DRIVER_FEATURE, 4, f & 0xffff_ffff);
        self.set_common(reg::DRIVER_FEATURE_SELECT, 4, 1);
        self.set_common(reg::DRIVER_FEATURE, 4, f >> 32);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns whether FEATURES_OK stuck.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.reset();
        self.set_status(status::ACKNOWLEDGE);
        self.set_status(status::ACKNOWLEDGE | status::DRIVER);
        self.write_driver_features(features);
        self.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        let ok = self.status() & status::FEATURES_OK != 0;
        if ok {
            self.features = features;
        }
        ok
    }

    /// Writes status 0 and forgets the queues.
    pub fn reset(&mut self) {
        self.set_status(0);
        self.queues.clear();
    }

    /// Programs queue `index` with `size` entries and MSI-X `vector` at the harness's ring
    /// addresses, and enables it. Returns the vector the device accepted.
    pub fn setup_queue(&mut self, index: u16, size: u16, vector: u16) -> u16 {
        let base = RING_BASE + u64::from(index) * RING_STRIDE;
        self.setup_queue_at(index, size, vector, base, base + 0x1000, base + 0x2000)
    }

    /// Like [`Driver::setup_queue`] with explicit ring addresses (which may be invalid).
    pub fn setup_queue_at(
        &mut self,
        index: u16,
        size: u16,
        vector: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> u16 {
        self.set_common(reg::QUEUE_SELECT, 2, u64::from(index));
        self.set_common(reg::QUEUE_SIZE, 2, u64::from(size));
        self.set_common(reg::QUEUE_MSIX_VECTOR, 2, u64::from(vector));
        let accepted = self.common(reg::QUEUE_MSIX_VECTOR, 2) as u16;
        self.set_common64(reg::QUEUE_DESC, desc);
        self.set_common64(reg::QUEUE_DRIVER, avail);
        self.set_common64(reg::QUEUE_DEVICE, used);
        // Rings start zeroed, as a driver allocates them.
        for (addr, len) in [
            (desc, 16 * usize::from(size)),
            (avail, 6 + 2 * usize::from(size)),
            (used, 6 + 8 * usize::from(size)),
        ] {
            let _ = self.mem.write_slice(&vec![0u8; len], GuestAddress(addr));
        }
        self.set_common(reg::QUEUE_ENABLE, 2, 1);
        self.queues.retain(|q| q.index != index);
        self.queues.push(Vq {
            index,
            size,
            vector: accepted,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
        });
        accepted
    }

    /// Sets DRIVER_OK on top of the current status.
    pub fn driver_ok(&mut self) {
        let s = self.status();
        self.set_status(s | status::DRIVER_OK);
    }

    /// The full initialisation: negotiates `features` (which must stick), sets the config
    /// vector to 0, sets up every queue at its maximum size with vector `index + 1`, DRIVER_OK.
    pub fn init(&mut self, features: u64) {
        assert!(self.negotiate(features), "FEATURES_OK for {features:#x}");
        self.set_common(reg::CONFIG_MSIX_VECTOR, 2, 0);
        let n = self.common(reg::NUM_QUEUES, 2) as u16;
        for i in 0..n {
            self.set_common(reg::QUEUE_SELECT, 2, u64::from(i));
            let max = self.common(reg::QUEUE_SIZE, 2) as u16;
            self.setup_queue(i, max, i + 1);
        }
        self.driver_ok();
        let s = self.status();
        assert_eq!(
            s & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET),
            status::DRIVER_OK,
            "status after DRIVER_OK: {s:#x}"
        );
    }

    /// Initialises with every offered feature accepted.
    pub fn init_all(&mut self) {
        let f = self.device_features();
        self.init(f);
    }

    // ---- guest memory ------------------------------------------------------------------------

    /// Allocates `len` bytes (64-byte aligned) from the heap.
    pub fn alloc(&mut self, len: usize) -> u64 {
        let len = (len.max(1) as u64 + 63) & !63;
        if self.heap + len > MEM_SIZE {
            self.heap = HEAP_BASE;
        }
        let a = self.heap;
        self.heap += len;
        a
    }

    /// A readable segment holding `data`.
    pub fn rbuf(&mut self, data: &[u8]) -> Seg {
        let a = self.alloc(data.len());
        self.write(a, data);
        Seg::r(a, data.len() as u32)
    }

    /// A writable segment of `len` bytes, pre-filled with `fill` so untouched bytes show.
    pub fn wbuf(&mut self, len: usize, fill: u8) -> Seg {
        let a = self.alloc(len);
        self.write(a, &vec![fill; len]);
        Seg::w(a, len as u32)
    }

    /// Writes guest memory.
    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .expect("write guest memory");
    }

    /// Reads guest memory.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read guest memory");
        v
    }

    /// Guest pages (by number) marked dirty since the last call, clearing the marks. Driver
    /// writes through [`Driver::write`] mark pages too, so callers take once after their own
    /// writes and again to see only the device's.
    pub fn take_dirty(&self) -> Vec<u64> {
        let mut pages = Vec::new();
        let mut base = 0;
        for r in self.mem.iter() {
            let bits = (**r).bitmap().take().expect("dirty bitmap");
            for (w, word) in bits.iter().enumerate() {
                for b in 0..64 {
                    if word & (1 << b) != 0 {
                        pages.push(base + 64 * w as u64 + b);
                    }
                }
            }
            base += r.len() / 4096;
        }
        pages
    }

    /// For [`PAUSED_WATCH`], queue `q`'s used index stays at `used`; then no guest page was
    /// dirtied since the last [`Driver::take_dirty`].
    pub fn assert_still_while_paused(&mut self, q: u16, used: u16) {
        let deadline = Instant::now() + PAUSED_WATCH;
        while Instant::now() < deadline {
            assert_eq!(
                self.used_idx(q),
                used,
                "used ring of queue {q} moved while paused"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            self.take_dirty(),
            Vec::<u64>::new(),
            "pages dirtied while paused"
        );
    }

    /// The bytes of `seg`.
    pub fn seg_bytes(&self, seg: Seg) -> Vec<u8> {
        self.read(seg.addr, seg.len as usize)
    }

    fn u16_at(&self, addr: u64) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(addr))
            .expect("read ring")
    }

    // ---- virtqueues --------------------------------------------------------------------------

    fn vq(&mut self, q: u16) -> &mut Vq {
        self.queues
            .iter_mut()
            .find(|v| v.index == q)
            .unwrap_or_else(|| panic!("queue {q} is not set up"))
    }

    /// The queue's driver-side state.
    pub fn queue(&self, q: u16) -> Vq {
        *self
            .queues
            .iter()
            .find(|v| v.index == q)
            .unwrap_or_else(|| panic!("queue {q} is not set up"))
    }

    /// Writes descriptor `i` of queue `q`'s table.
    pub fn write_desc(&mut self, q: u16, i: u16, d: Desc) {
        let vq = self.queue(q);
        self.write(vq.desc + 16 * u64::from(i), &d.bytes());
    }

    /// Takes `n` consecutive descriptor indices (wrapping at the queue size).
    pub fn take_descs(&mut self, q: u16, n: u16) -> u16 {
        let vq = self.vq(q);
        assert!(n <= vq.size, "chain of {n} in a queue of {}", vq.size);
        if vq.next_desc + n > vq.size {
            vq.next_desc = 0;
        }
        let first = vq.next_desc;
        vq.next_desc = (first + n) % vq.size;
        first
    }

    /// Writes `segs` as a linked chain into queue `q`'s table; returns the head index.
    pub fn write_chain(&mut self, q: u16, segs: &[Seg]) -> u16 {
        let first = self.take_descs(q, segs.len() as u16);
        for (i, d) in linked(segs, first).into_iter().enumerate() {
            self.write_desc(q, first + i as u16, d);
        }
        first
    }

    /// Writes `descs` as an indirect table in the heap and one descriptor pointing to it.
    pub fn write_indirect(&mut self, q: u16, descs: &[Desc]) -> u16 {
        let bytes: Vec<u8> = descs.iter().flat_map(|d| d.bytes()).collect();
        let table = self.alloc(bytes.len());
        self.write(table, &bytes);
        self.write_one(q, |_| Desc::indirect(table, bytes.len() as u32))
    }

    /// Takes one descriptor index of queue `q` and writes `build(index)` there; returns the index.
    pub fn write_one(&mut self, q: u16, build: impl FnOnce(u16) -> Desc) -> u16 {
        let i = self.take_descs(q, 1);
        self.write_desc(q, i, build(i));
        i
    }

    /// Puts `head` in the avail ring (setting `used_event` so every completion interrupts) and
    /// publishes it by bumping `idx`.
    pub fn publish(&mut self, q: u16, head: u16) {
        let vq = self.queue(q);
        let slot = vq.avail + 4 + 2 * u64::from(vq.avail_idx % vq.size);
        self.write(slot, &head.to_le_bytes());
        self.set_avail_idx(q, vq.avail_idx.wrapping_add(1));
    }

    /// Writes the avail ring's `idx` (any value, for corruption tests) and `used_event`.
    pub fn set_avail_idx(&mut self, q: u16, idx: u16) {
        let vq = self.vq(q);
        vq.avail_idx = idx;
        let vq = *vq;
        let used_event = vq.avail + 4 + 2 * u64::from(vq.size);
        self.write(used_event, &vq.last_used.to_le_bytes());
        self.write(vq.avail + 2, &idx.to_le_bytes());
    }

    /// Notifies queue `q` through its notify address.
    pub fn kick(&mut self, q: u16) {
        let off = self.common_notify_off(q);
        self.bar_write(off, 2, u64::from(q));
    }

    fn common_notify_off(&mut self, q: u16) -> u64 {
        self.set_common(reg::QUEUE_SELECT, 2, u64::from(q));
        let n = self.common(reg::QUEUE_NOTIFY_OFF, 2);
        self.bar.notify + n * u64::from(self.bar.notify_multiplier)
    }

    /// Publishes the chain at `head` and notifies queue `q`; returns `head`.
    pub fn publish_and_kick(&mut self, q: u16, head: u16) -> u16 {
        self.publish(q, head);
        self.kick(q);
        head
    }

    /// Writes `segs` as a chain, publishes it and notifies; returns the head.
    pub fn submit(&mut self, q: u16, segs: &[Seg]) -> u16 {
        let head = self.write_chain(q, segs);
        self.publish_and_kick(q, head)
    }

    /// Like [`Driver::submit`] through an indirect table.
    pub fn submit_indirect(&mut self, q: u16, segs: &[Seg]) -> u16 {
        let head = self.write_indirect(q, &linked(segs, 0));
        self.publish_and_kick(q, head)
    }

    /// The device's used-ring `idx`.
    pub fn used_idx(&self, q: u16) -> u16 {
        self.u16_at(self.queue(q).used + 2)
    }

    /// The next used element if the device has produced one.
    pub fn poll_used(&mut self, q: u16) -> Option<Used> {
        let vq = self.queue(q);
        if self.used_idx(q) == vq.last_used {
            return None;
        }
        let elem = vq.used + 4 + 8 * u64::from(vq.last_used % vq.size);
        let b = self.read(elem, 8);
        self.vq(q).last_used = vq.last_used.wrapping_add(1);
        Some(Used {
            id: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        })
    }

    /// Waits for the next used element, at most `timeout`.
    pub fn try_wait_used(&mut self, q: u16, timeout: Duration) -> Option<Used> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self.poll_used(q) {
                return Some(u);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.msi.nap(left.min(Duration::from_millis(5)));
        }
    }

    /// Waits for the next used element; fails the test after [`TIMEOUT`].
    pub fn wait_used(&mut self, q: u16) -> Used {
        self.try_wait_used(q, TIMEOUT).unwrap_or_else(|| {
            panic!(
                "queue {q}: no used element within {TIMEOUT:?} (status {:#x})",
                self.status()
            )
        })
    }

    /// Waits until `pred(status)` holds; fails the test after [`TIMEOUT`].
    pub fn wait_status(&mut self, what: &str, pred: impl Fn(u8) -> bool) -> u8 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let s = self.status();
            if pred(s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "device status never became {what} (is {s:#x})"
            );
            self.msi.nap(Duration::from_millis(5));
        }
    }
}

/// Compares byte strings, reporting the first difference instead of printing both.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: byte {i} is {:#04x}, expected {:#04x}",
            got[i], want[i]
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
}

/// Names of this process's threads (for "no worker was started" checks).
pub fn thread_names() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|s| s.trim_end().to_owned())
        .collect()
}

/// A device index unique within this test process (names worker threads `vireo-blk<n>`).
pub fn unique_index() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(100);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
