//! A polling virtio 1.2 driver core: PCI discovery through ECAM, the modern
//! virtio-pci transport (vendor capabilities: common, notify, ISR and device
//! configuration structures in memory BARs) and split virtqueues.
//!
//! The guest takes no interrupts: MSI-X stays disabled, every vector is
//! `VIRTIO_MSI_NO_VECTOR`, the driver asks the device not to interrupt, and
//! completions are found by polling the used ring. Every wait is bounded
//! (a TSC deadline) so a broken device ends a scenario with `FAIL:` rather
//! than a hang.

use core::sync::atomic::{fence, Ordering};

use crate::mem::{rd16, rd32, rd8, wr16, wr32, wr64, wr8, Bump};
use crate::{put_dec, putc, puts, Deadline, PCI_ECAM};

// ------------------------------------------------------------------ errors

/// Why a scenario failed: a fixed reason plus an optional number.
#[derive(Clone, Copy)]
pub struct Fail {
    reason: &'static str,
    value: Option<u64>,
}

pub type VResult<T> = Result<T, Fail>;

pub fn fail(reason: &'static str) -> Fail {
    Fail {
        reason,
        value: None,
    }
}

pub fn fail_with(reason: &'static str, value: u64) -> Fail {
    Fail {
        reason,
        value: Some(value),
    }
}

impl Fail {
    /// Prints `FAIL: <reason>[ <value>]` and returns exit status 1.
    pub fn report(&self) -> u8 {
        puts("FAIL: ");
        puts(self.reason);
        if let Some(v) = self.value {
            putc(b' ');
            put_dec(v);
        }
        putc(b'\n');
        1
    }
}

/// Runs a scenario body, turning its error into a `FAIL:` line.
pub fn outcome(r: VResult<()>) -> u8 {
    match r {
        Ok(()) => 0,
        Err(e) => e.report(),
    }
}

// --------------------------------------------------- PCI config space (ECAM)

pub const PCI_VENDOR_VIRTIO: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device type.
pub const PCI_DEVICE_VIRTIO_NET: u16 = 0x1041;
pub const PCI_DEVICE_VIRTIO_BLK: u16 = 0x1042;
pub const PCI_DEVICE_VIRTIO_INPUT: u16 = 0x1052;

mod pci {
    pub const VENDOR_ID: usize = 0x00;
    pub const DEVICE_ID: usize = 0x02;
    pub const COMMAND: usize = 0x04;
    pub const STATUS: usize = 0x06;
    pub const BAR0: usize = 0x10;
    pub const CAP_PTR: usize = 0x34;

    pub const COMMAND_MEMORY: u16 = 1 << 1;
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    pub const STATUS_CAP_LIST: u16 = 1 << 4;

    pub const BAR_IO: u32 = 1 << 0;
    pub const BAR_TYPE_MASK: u32 = 0b11 << 1;
    pub const BAR_TYPE_64: u32 = 0b10 << 1;

    pub const CAP_ID_VENDOR: u8 = 0x09;
    /// The first configuration byte after the type-0 header.
    pub const FIRST_CAP_OFFSET: usize = 0x40;
}

fn cfg_addr(slot: u8, reg: usize) -> usize {
    PCI_ECAM + (usize::from(slot) << 15) + (reg & 0xfff)
}

fn cfg_read8(slot: u8, reg: usize) -> u8 {
    rd8(cfg_addr(slot, reg))
}

fn cfg_read16(slot: u8, reg: usize) -> u16 {
    rd16(cfg_addr(slot, reg))
}

fn cfg_read32(slot: u8, reg: usize) -> u32 {
    rd32(cfg_addr(slot, reg))
}

fn cfg_write16(slot: u8, reg: usize, v: u16) {
    wr16(cfg_addr(slot, reg), v)
}

/// The virtio device type found at a PCI slot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Blk,
    Net,
    Input,
    /// A virtio device this driver does not know (its PCI device ID).
    Other(u16),
}

/// The virtio device at `slot`, if any.
pub fn probe_slot(slot: u8) -> Option<Kind> {
    if cfg_read16(slot, pci::VENDOR_ID) != PCI_VENDOR_VIRTIO {
        return None;
    }
    Some(match cfg_read16(slot, pci::DEVICE_ID) {
        PCI_DEVICE_VIRTIO_BLK => Kind::Blk,
        PCI_DEVICE_VIRTIO_NET => Kind::Net,
        PCI_DEVICE_VIRTIO_INPUT => Kind::Input,
        other => Kind::Other(other),
    })
}

/// The slot of the `nth` (0-based) virtio device of `kind`, in slot order.
pub fn find_nth(kind: Kind, nth: u64) -> VResult<u8> {
    let mut seen = 0;
    for slot in 0..32u8 {
        if probe_slot(slot) == Some(kind) {
            if seen == nth {
                return Ok(slot);
            }
            seen += 1;
        }
    }
    Err(fail_with(
        match kind {
            Kind::Blk => "no such virtio-blk device, found",
            Kind::Input => "no such virtio-input device, found",
            _ => "no such virtio-net device, found",
        },
        seen,
    ))
}

/// The raw value of BAR0 (address bits plus type bits).
pub fn bar0_raw(slot: u8) -> u32 {
    cfg_read32(slot, pci::BAR0)
}

/// The address a memory BAR was assigned by the VMM (never reprogrammed).
fn bar_address(slot: u8, bar: u8) -> VResult<usize> {
    if bar > 5 {
        return Err(fail_with("capability names a nonexistent BAR", bar.into()));
    }
    let reg = pci::BAR0 + 4 * usize::from(bar);
    let lo = cfg_read32(slot, reg);
    if lo & pci::BAR_IO != 0 {
        return Err(fail_with("capability names an I/O BAR", bar.into()));
    }
    let mut addr = u64::from(lo & !0xf);
    if lo & pci::BAR_TYPE_MASK == pci::BAR_TYPE_64 {
        if bar == 5 {
            return Err(fail("64-bit BAR5 has no upper half"));
        }
        addr |= u64::from(cfg_read32(slot, reg + 4)) << 32;
    }
    if addr == 0 {
        return Err(fail_with("BAR is not assigned", bar.into()));
    }
    // The identity map covers [0, 4 GiB) and RAM; stay below 4 GiB.
    if addr >= 1 << 32 {
        return Err(fail_with("BAR lies above 4 GiB", addr));
    }
    Ok(addr as usize)
}

// ------------------------------------------------- virtio-pci capabilities

/// `struct virtio_pci_cap` field offsets (from the capability's start).
mod cap {
    pub const ID: usize = 0;
    pub const NEXT: usize = 1;
    pub const LEN: usize = 2;
    pub const CFG_TYPE: usize = 3;
    pub const BAR: usize = 4;
    pub const OFFSET: usize = 8;
    pub const LENGTH: usize = 12;
    /// `struct virtio_pci_notify_cap`: the multiplier follows the cap.
    pub const NOTIFY_OFF_MULTIPLIER: usize = 16;

    pub const MIN_LEN: u8 = 16;
    pub const NOTIFY_MIN_LEN: u8 = 20;

    pub const TYPE_COMMON: u8 = 1;
    pub const TYPE_NOTIFY: u8 = 2;
    pub const TYPE_ISR: u8 = 3;
    pub const TYPE_DEVICE: u8 = 4;
}

/// `struct virtio_pci_common_cfg` register offsets.
mod common {
    pub const DEVICE_FEATURE_SELECT: usize = 0x00;
    pub const DEVICE_FEATURE: usize = 0x04;
    pub const DRIVER_FEATURE_SELECT: usize = 0x08;
    pub const DRIVER_FEATURE: usize = 0x0c;
    pub const CONFIG_MSIX_VECTOR: usize = 0x10;
    pub const NUM_QUEUES: usize = 0x12;
    pub const DEVICE_STATUS: usize = 0x14;
    pub const CONFIG_GENERATION: usize = 0x15;
    pub const QUEUE_SELECT: usize = 0x16;
    pub const QUEUE_SIZE: usize = 0x18;
    pub const QUEUE_MSIX_VECTOR: usize = 0x1a;
    pub const QUEUE_ENABLE: usize = 0x1c;
    pub const QUEUE_NOTIFY_OFF: usize = 0x1e;
    pub const QUEUE_DESC_LO: usize = 0x20;
    pub const QUEUE_DESC_HI: usize = 0x24;
    pub const QUEUE_DRIVER_LO: usize = 0x28;
    pub const QUEUE_DRIVER_HI: usize = 0x2c;
    pub const QUEUE_DEVICE_LO: usize = 0x30;
    pub const QUEUE_DEVICE_HI: usize = 0x34;
    /// Size of the structure up to and including `queue_device`.
    pub const MIN_LEN: u32 = 0x38;
}

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// Device-independent feature bits.
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// "No MSI-X vector" for `config_msix_vector` and `queue_msix_vector`.
const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// How long a device gets to finish a reset.
const RESET_TIMEOUT_MS: u64 = 1000;

/// A virtio device's modern PCI transport: addresses of its configuration
/// structures inside its BARs.
pub struct Transport {
    pub slot: u8,
    common: usize,
    notify: usize,
    notify_len: u32,
    notify_off_multiplier: u32,
    isr: usize,
    device: usize,
    device_len: u32,
    /// Features accepted in `negotiate`.
    pub features: u64,
}

/// One vendor capability, as found in configuration space.
struct VirtioCap {
    cfg_type: u8,
    addr: usize,
    length: u32,
    /// Only for the notify capability.
    notify_off_multiplier: u32,
}

impl Transport {
    /// Enables memory decoding and bus mastering at `slot` and locates the
    /// common, notify, ISR and device configuration structures.
    pub fn open(slot: u8) -> VResult<Self> {
        if probe_slot(slot).is_none() {
            return Err(fail_with("no virtio device at slot", slot.into()));
        }
        let command = cfg_read16(slot, pci::COMMAND);
        cfg_write16(
            slot,
            pci::COMMAND,
            command | pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER,
        );
        if cfg_read16(slot, pci::STATUS) & pci::STATUS_CAP_LIST == 0 {
            return Err(fail("PCI status has no capabilities list"));
        }

        let mut found: [Option<VirtioCap>; 4] = [None, None, None, None];
        let mut ptr = usize::from(cfg_read8(slot, pci::CAP_PTR) & 0xfc);
        // At most 48 capabilities fit in the 192 bytes after the header;
        // the bound also stops a looping list.
        let mut steps = 0;
        while ptr != 0 {
            steps += 1;
            if steps > 48 || ptr < pci::FIRST_CAP_OFFSET {
                return Err(fail_with("malformed capability list at", ptr as u64));
            }
            if cfg_read8(slot, ptr + cap::ID) == pci::CAP_ID_VENDOR {
                if let Some(c) = read_virtio_cap(slot, ptr)? {
                    let i = usize::from(c.cfg_type - 1);
                    // The first capability of each type is the one to use.
                    if found[i].is_none() {
                        found[i] = Some(c);
                    }
                }
            }
            ptr = usize::from(cfg_read8(slot, ptr + cap::NEXT) & 0xfc);
        }

        let [common, notify, isr, device] = found;
        let common = common.ok_or(fail("no common configuration capability"))?;
        let notify = notify.ok_or(fail("no notify capability"))?;
        let isr = isr.ok_or(fail("no ISR capability"))?;
        let device = device.ok_or(fail("no device configuration capability"))?;
        if common.length < common::MIN_LEN {
            return Err(fail_with(
                "common configuration structure too short",
                common.length.into(),
            ));
        }
        if isr.length < 1 {
            return Err(fail("ISR structure is empty"));
        }
        Ok(Self {
            slot,
            common: common.addr,
            notify: notify.addr,
            notify_len: notify.length,
            notify_off_multiplier: notify.notify_off_multiplier,
            isr: isr.addr,
            device: device.addr,
            device_len: device.length,
            features: 0,
        })
    }

    // --------------------------------------------------- register access

    fn c8(&self, off: usize) -> u8 {
        rd8(self.common + off)
    }
    fn c16(&self, off: usize) -> u16 {
        rd16(self.common + off)
    }
    fn c32(&self, off: usize) -> u32 {
        rd32(self.common + off)
    }
    fn set_c8(&self, off: usize, v: u8) {
        wr8(self.common + off, v)
    }
    fn set_c16(&self, off: usize, v: u16) {
        wr16(self.common + off, v)
    }
    fn set_c32(&self, off: usize, v: u32) {
        wr32(self.common + off, v)
    }
    fn set_c64(&self, lo: usize, hi: usize, v: u64) {
        self.set_c32(lo, v as u32);
        self.set_c32(hi, (v >> 32) as u32);
    }

    pub fn status(&self) -> u8 {
        self.c8(common::DEVICE_STATUS)
    }

    fn set_status(&self, s: u8) {
        self.set_c8(common::DEVICE_STATUS, s)
    }

    fn add_status(&self, bits: u8) {
        self.set_status(self.status() | bits)
    }

    /// Reads (and so clears) the ISR status byte.
    pub fn read_isr(&self) -> u8 {
        rd8(self.isr)
    }

    /// Fails if the device asked for a reset.
    pub fn check_health(&self) -> VResult<()> {
        let s = self.status();
        if s & status::DEVICE_NEEDS_RESET != 0 {
            puts("virtio: device at slot ");
            put_dec(self.slot.into());
            puts(" set DEVICE_NEEDS_RESET\n");
            return Err(fail_with("device set DEVICE_NEEDS_RESET, status", s.into()));
        }
        Ok(())
    }

    /// Writes 0 to `device_status` and waits until it reads back 0.
    pub fn reset(&self) -> VResult<()> {
        self.set_status(0);
        let deadline = Deadline::after_ms(RESET_TIMEOUT_MS);
        while self.status() != 0 {
            if deadline.expired() {
                return Err(fail_with(
                    "device did not finish reset, status",
                    self.status().into(),
                ));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    pub fn device_features(&self) -> u64 {
        self.set_c32(common::DEVICE_FEATURE_SELECT, 0);
        let lo = self.c32(common::DEVICE_FEATURE);
        self.set_c32(common::DEVICE_FEATURE_SELECT, 1);
        let hi = self.c32(common::DEVICE_FEATURE);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    fn set_driver_features(&self, f: u64) {
        self.set_c32(common::DRIVER_FEATURE_SELECT, 0);
        self.set_c32(common::DRIVER_FEATURE, f as u32);
        self.set_c32(common::DRIVER_FEATURE_SELECT, 1);
        self.set_c32(common::DRIVER_FEATURE, (f >> 32) as u32);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, feature negotiation (VERSION_1 plus the
    /// offered subset of `wanted`), FEATURES_OK and its check. Returns the
    /// accepted features (also kept in `self.features`).
    pub fn negotiate(&mut self, wanted: u64) -> VResult<u64> {
        self.reset()?;
        self.add_status(status::ACKNOWLEDGE);
        self.add_status(status::DRIVER);
        let offered = self.device_features();
        if offered & VIRTIO_F_VERSION_1 == 0 {
            self.add_status(status::FAILED);
            return Err(fail("device does not offer VIRTIO_F_VERSION_1"));
        }
        let accepted = offered & (wanted | VIRTIO_F_VERSION_1);
        self.set_driver_features(accepted);
        self.add_status(status::FEATURES_OK);
        if self.status() & status::FEATURES_OK == 0 {
            self.add_status(status::FAILED);
            return Err(fail("device refused the features (FEATURES_OK cleared)"));
        }
        self.set_c16(common::CONFIG_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR);
        self.features = accepted;
        Ok(accepted)
    }

    /// Writes exactly `features` (offered or not) and tells whether the
    /// device kept FEATURES_OK; resets before and after. For error-path
    /// checks: a device must refuse features it did not offer.
    pub fn try_features(&mut self, features: u64) -> VResult<bool> {
        self.reset()?;
        self.add_status(status::ACKNOWLEDGE);
        self.add_status(status::DRIVER);
        self.set_driver_features(features);
        self.add_status(status::FEATURES_OK);
        let kept = self.status() & status::FEATURES_OK != 0;
        self.reset()?;
        Ok(kept)
    }

    pub fn has(&self, feature: u64) -> bool {
        self.features & feature != 0
    }

    pub fn num_queues(&self) -> u16 {
        self.c16(common::NUM_QUEUES)
    }

    /// Sets up split virtqueue `index` with at most `max_size` entries
    /// (rounded down to a power of two and to the device's maximum), rings
    /// from `arena`, no MSI-X vector, and enables it.
    pub fn setup_queue(&self, index: u16, max_size: u16, arena: &mut Bump) -> VResult<Virtqueue> {
        if index >= self.num_queues() {
            return Err(fail_with(
                "device has too few queues for queue",
                index.into(),
            ));
        }
        self.set_c16(common::QUEUE_SELECT, index);
        if self.c16(common::QUEUE_ENABLE) != 0 {
            return Err(fail_with("queue enabled before setup", index.into()));
        }
        let device_max = self.c16(common::QUEUE_SIZE);
        if device_max == 0 {
            return Err(fail_with("queue is not available", index.into()));
        }
        let limit = device_max.min(max_size).max(1);
        // Largest power of two not above `limit`.
        let size = 1u16 << (15 - limit.leading_zeros().min(15));
        let mem = QueueMem::alloc(size, arena)?;
        self.set_c16(common::QUEUE_SIZE, size);
        self.set_c16(common::QUEUE_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR);
        self.set_c64(
            common::QUEUE_DESC_LO,
            common::QUEUE_DESC_HI,
            mem.desc as u64,
        );
        self.set_c64(
            common::QUEUE_DRIVER_LO,
            common::QUEUE_DRIVER_HI,
            mem.avail as u64,
        );
        self.set_c64(
            common::QUEUE_DEVICE_LO,
            common::QUEUE_DEVICE_HI,
            mem.used as u64,
        );
        let notify_off = u64::from(self.c16(common::QUEUE_NOTIFY_OFF));
        let offset = notify_off * u64::from(self.notify_off_multiplier);
        if offset + 2 > u64::from(self.notify_len) {
            return Err(fail_with(
                "queue notify address lies outside the notify structure, offset",
                offset,
            ));
        }
        self.set_c16(common::QUEUE_ENABLE, 1);
        if self.c16(common::QUEUE_ENABLE) != 1 {
            return Err(fail_with(
                "queue_enable did not stick for queue",
                index.into(),
            ));
        }
        let event_idx = self.has(VIRTIO_F_RING_EVENT_IDX);
        let q = Virtqueue {
            index,
            size,
            desc: mem.desc,
            avail: mem.avail,
            used: mem.used,
            notify_addr: self.notify + offset as usize,
            event_idx,
            next_avail: 0,
            published: 0,
            last_used: 0,
            used_seen: 0,
            notifications: 0,
        };
        // We poll: ask the device not to interrupt.
        if event_idx {
            q.set_used_event();
        } else {
            wr16(q.avail + avail::FLAGS, VIRTQ_AVAIL_F_NO_INTERRUPT);
        }
        Ok(q)
    }

    /// Sets DRIVER_OK and checks the device is still healthy.
    pub fn driver_ok(&self) -> VResult<()> {
        self.add_status(status::DRIVER_OK);
        self.check_health()
    }

    /// Writes byte `off` of the device configuration (virtio-input's
    /// `select` / `subsel`).
    pub fn write_config_u8(&self, off: usize, v: u8) -> VResult<()> {
        if off >= self.device_len as usize {
            return Err(fail_with(
                "device configuration write past its end, offset",
                off as u64,
            ));
        }
        wr8(self.device + off, v);
        Ok(())
    }

    /// Reads device configuration with `f`, retrying while the config
    /// generation changes under it (multi-field or 64-bit reads).
    pub fn read_config<T>(&self, f: impl Fn(&DeviceConfig) -> T) -> VResult<T> {
        let cfg = DeviceConfig {
            base: self.device,
            len: self.device_len,
        };
        for _ in 0..100 {
            let before = self.c8(common::CONFIG_GENERATION);
            let v = f(&cfg);
            if self.c8(common::CONFIG_GENERATION) == before {
                return Ok(v);
            }
        }
        Err(fail("device configuration generation never settled"))
    }
}

fn read_virtio_cap(slot: u8, ptr: usize) -> VResult<Option<VirtioCap>> {
    let len = cfg_read8(slot, ptr + cap::LEN);
    let cfg_type = cfg_read8(slot, ptr + cap::CFG_TYPE);
    if !matches!(
        cfg_type,
        cap::TYPE_COMMON | cap::TYPE_NOTIFY | cap::TYPE_ISR | cap::TYPE_DEVICE
    ) {
        // PCI configuration access and shared-memory capabilities are not used.
        return Ok(None);
    }
    if len < cap::MIN_LEN || (cfg_type == cap::TYPE_NOTIFY && len < cap::NOTIFY_MIN_LEN) {
        return Err(fail_with(
            "virtio capability too short, cap_len",
            len.into(),
        ));
    }
    let bar = cfg_read8(slot, ptr + cap::BAR);
    let offset = cfg_read32(slot, ptr + cap::OFFSET);
    let length = cfg_read32(slot, ptr + cap::LENGTH);
    let base = bar_address(slot, bar)?;
    let addr = base
        .checked_add(offset as usize)
        .filter(|a| {
            a.checked_add(length as usize)
                .is_some_and(|end| end <= 1 << 32)
        })
        .ok_or(fail("virtio capability range overflows"))?;
    let notify_off_multiplier = if cfg_type == cap::TYPE_NOTIFY {
        cfg_read32(slot, ptr + cap::NOTIFY_OFF_MULTIPLIER)
    } else {
        0
    };
    Ok(Some(VirtioCap {
        cfg_type,
        addr,
        length,
        notify_off_multiplier,
    }))
}

/// The device-specific configuration structure; reads beyond its length
/// return `None` (a device that declares too short a structure is a bug the
/// scenario reports).
pub struct DeviceConfig {
    base: usize,
    len: u32,
}

impl DeviceConfig {
    fn fits(&self, off: usize, width: usize) -> bool {
        off + width <= self.len as usize
    }
    pub fn u8(&self, off: usize) -> Option<u8> {
        self.fits(off, 1).then(|| rd8(self.base + off))
    }
    pub fn u16(&self, off: usize) -> Option<u16> {
        self.fits(off, 2).then(|| rd16(self.base + off))
    }
    pub fn u32(&self, off: usize) -> Option<u32> {
        self.fits(off, 4).then(|| rd32(self.base + off))
    }
    /// A 64-bit field, read as two 32-bit halves (the caller's
    /// `read_config` retries if the generation changed in between).
    pub fn u64(&self, off: usize) -> Option<u64> {
        let lo = self.u32(off)?;
        let hi = self.u32(off + 4)?;
        Some(u64::from(lo) | (u64::from(hi) << 32))
    }
}

// ------------------------------------------------------ split virtqueues

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// `struct virtq_desc`: 16 bytes.
mod desc {
    pub const SIZE: usize = 16;
    pub const ADDR: usize = 0;
    pub const LEN: usize = 8;
    pub const FLAGS: usize = 12;
    pub const NEXT: usize = 14;
}

/// `struct virtq_avail`: flags, idx, ring[size], used_event.
mod avail {
    pub const FLAGS: usize = 0;
    pub const IDX: usize = 2;
    pub const RING: usize = 4;
}

/// `struct virtq_used`: flags, idx, ring[size] of {id: u32, len: u32},
/// avail_event.
mod used {
    pub const FLAGS: usize = 0;
    pub const IDX: usize = 2;
    pub const RING: usize = 4;
    pub const ELEM_SIZE: usize = 8;
}

/// Rings of one queue, page-aligned (beyond the 16/2/4-byte minimums).
struct QueueMem {
    desc: usize,
    avail: usize,
    used: usize,
}

impl QueueMem {
    fn alloc(size: u16, arena: &mut Bump) -> VResult<Self> {
        let n = usize::from(size);
        let oom = || fail_with("out of ring memory for queue size", n as u64);
        let desc = arena.alloc_zeroed(desc::SIZE * n, 4096).ok_or_else(oom)?;
        let avail = arena
            .alloc_zeroed(avail::RING + 2 * n + 2, 4096)
            .ok_or_else(oom)?;
        let used = arena
            .alloc_zeroed(used::RING + used::ELEM_SIZE * n + 2, 4096)
            .ok_or_else(oom)?;
        Ok(Self { desc, avail, used })
    }
}

/// A completed buffer: the head descriptor index and the bytes written.
#[derive(Clone, Copy)]
pub struct UsedElem {
    pub id: u16,
    pub len: u32,
}

/// A split virtqueue driven by polling. Descriptor allocation is left to
/// the device modules (they use fixed chains per request slot).
pub struct Virtqueue {
    pub index: u16,
    pub size: u16,
    desc: usize,
    avail: usize,
    used: usize,
    notify_addr: usize,
    event_idx: bool,
    /// Our copy of `avail.idx`, including entries not yet published.
    next_avail: u16,
    /// The `avail.idx` value the device last saw from us.
    published: u16,
    /// How far we have consumed the used ring.
    last_used: u16,
    /// The last `used.idx` read from the device: entries up to it are
    /// consumed before the index is read again, so a driver draining a
    /// burst does not pull the index's cache line away from the device
    /// thread once per entry.
    used_seen: u16,
    /// Notifications sent (for the benchmarks' curiosity).
    pub notifications: u64,
}

impl Virtqueue {
    /// Writes descriptor `i`.
    pub fn set_desc(&mut self, i: u16, addr: usize, len: u32, flags: u16, next: u16) {
        let d = self.desc + usize::from(i % self.size) * desc::SIZE;
        wr64(d + desc::ADDR, addr as u64);
        wr32(d + desc::LEN, len);
        wr16(d + desc::FLAGS, flags);
        wr16(d + desc::NEXT, next);
    }

    /// Writes a chain of `(addr, len, device_writable)` buffers into
    /// descriptors `first..first+n`; returns the head index.
    pub fn set_chain(&mut self, first: u16, bufs: &[(usize, u32, bool)]) -> u16 {
        let n = bufs.len();
        for (k, &(addr, len, writable)) in bufs.iter().enumerate() {
            let i = first + k as u16;
            let mut flags = if writable { VIRTQ_DESC_F_WRITE } else { 0 };
            if k + 1 < n {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            self.set_desc(i, addr, len, flags, i.wrapping_add(1));
        }
        first
    }

    /// Makes chain `head` available (not yet visible to the device).
    pub fn push(&mut self, head: u16) {
        let slot = usize::from(self.next_avail % self.size);
        wr16(self.avail + avail::RING + 2 * slot, head);
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Publishes pushed entries through `avail.idx` and tells whether the
    /// device asked to be notified about them.
    fn publish(&mut self) -> bool {
        let old = self.published;
        let new = self.next_avail;
        if old == new {
            return false;
        }
        // Ring entries and descriptors before the index.
        fence(Ordering::Release);
        wr16(self.avail + avail::IDX, new);
        self.published = new;
        // The index store must be visible before we read the device's
        // suppression state (store -> load order needs a full fence).
        fence(Ordering::SeqCst);
        if self.event_idx {
            let avail_event =
                rd16(self.used + used::RING + used::ELEM_SIZE * usize::from(self.size));
            need_event(avail_event, new, old)
        } else {
            rd16(self.used + used::FLAGS) & VIRTQ_USED_F_NO_NOTIFY == 0
        }
    }

    /// Notifies the device of queue `index` (16-bit write of the index).
    pub fn notify(&mut self) {
        self.notifications += 1;
        wr16(self.notify_addr, self.index);
    }

    /// Publishes and notifies if the device wants it.
    pub fn kick(&mut self) {
        if self.publish() {
            self.notify();
        }
    }

    /// Entries published or pushed and not yet returned by the device.
    pub fn in_flight(&self) -> u16 {
        self.next_avail.wrapping_sub(self.last_used)
    }

    /// The next used entry, if the device has returned one.
    pub fn pop_used(&mut self) -> VResult<Option<UsedElem>> {
        if self.used_seen == self.last_used {
            let idx = rd16(self.used + used::IDX);
            if idx == self.last_used {
                return Ok(None);
            }
            if idx.wrapping_sub(self.last_used) > self.size {
                return Err(fail_with("used.idx ran ahead of the ring, idx", idx.into()));
            }
            self.used_seen = idx;
            // The entries (and the buffers) are read after the index.
            fence(Ordering::Acquire);
        }
        let e = self.used + used::RING + used::ELEM_SIZE * usize::from(self.last_used % self.size);
        let id = rd32(e);
        let len = rd32(e + 4);
        self.last_used = self.last_used.wrapping_add(1);
        if self.in_flight() > self.size {
            return Err(fail(
                "device returned more buffers than were made available",
            ));
        }
        if id >= u32::from(self.size) {
            return Err(fail_with("used ring id out of range", id.into()));
        }
        if self.event_idx {
            self.set_used_event();
        }
        Ok(Some(UsedElem { id: id as u16, len }))
    }

    /// Under EVENT_IDX, places `used_event` just behind what we consumed so
    /// the device's used index never crosses it: no interrupts while we poll.
    fn set_used_event(&self) {
        let at = self.avail + avail::RING + 2 * usize::from(self.size);
        wr16(at, self.last_used.wrapping_sub(1));
    }

    /// Polls until the device returns a buffer or `timeout_ms` passes;
    /// checks the device status now and then (an MMIO exit, so not often).
    pub fn wait_used(&mut self, t: &Transport, timeout_ms: u64) -> VResult<UsedElem> {
        let deadline = Deadline::after_ms(timeout_ms);
        let mut idle = IdlePolls::new();
        loop {
            if let Some(e) = self.pop_used()? {
                return Ok(e);
            }
            if idle.check_due() {
                t.check_health()?;
                if deadline.expired() {
                    self.dump_state(t);
                    return Err(fail_with(
                        "timed out waiting for the device on queue",
                        self.index.into(),
                    ));
                }
            }
            core::hint::spin_loop();
        }
    }

    /// One diagnostic line about the queue, for timeouts.
    pub fn dump_state(&self, t: &Transport) {
        puts("virtio: queue ");
        put_dec(self.index.into());
        puts(" avail.idx=");
        put_dec(self.published.into());
        puts(" used.idx=");
        put_dec(rd16(self.used + used::IDX).into());
        puts(" consumed=");
        put_dec(self.last_used.into());
        puts(" status=");
        put_hex_short(t.status().into());
        puts(" isr=");
        put_hex_short(t.read_isr().into());
        putc(b'\n');
    }
}

/// Counts idle polls of a ring (plain memory reads) so that the costlier
/// checks, the clock and an MMIO read of the device status (a VM exit),
/// run only on every 65536th.
pub struct IdlePolls(u32);

impl IdlePolls {
    pub fn new() -> Self {
        Self(0)
    }

    /// Counts one idle poll; true when the costly checks are due.
    pub fn check_due(&mut self) -> bool {
        self.0 = self.0.wrapping_add(1);
        self.0.is_multiple_of(0x10000)
    }
}

/// The event-index rule (virtio 1.2, 2.7.10): notify if `event` lies in
/// `[old, new)`, modulo 2^16.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

// ------------------------------------------------------------------ output

/// Prints `v` as lowercase hex without leading zeros, with `0x`.
pub fn put_hex_short(v: u64) {
    puts("0x");
    let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        put_nibble(((v >> (i * 4)) & 0xf) as u8);
    }
}

fn put_nibble(n: u8) {
    putc(if n < 10 { b'0' + n } else { b'a' + n - 10 });
}

/// Two hex digits.
pub fn put_hex_byte(b: u8) {
    put_nibble(b >> 4);
    put_nibble(b & 0xf);
}

pub fn put_mac(mac: &[u8; 6]) {
    for (i, &b) in mac.iter().enumerate() {
        if i > 0 {
            putc(b':');
        }
        put_hex_byte(b);
    }
}

/// 64-bit FNV-1a.
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
    /// Prints the hash as 16 hex digits (no prefix).
    pub fn put(&self) {
        for i in (0..16).rev() {
            put_nibble(((self.0 >> (i * 4)) & 0xf) as u8);
        }
    }
}

// --------------------------------------------------------- virtio-list

/// `virtio-list`: every virtio device on bus 0 with its identity.
pub fn scenario_list() -> u8 {
    let mut arena = Bump::arena();
    let mut status = 0;
    for slot in 0..32u8 {
        let Some(kind) = probe_slot(slot) else {
            continue;
        };
        puts("virtio slot=");
        put_dec(slot.into());
        puts(" type=");
        puts(match kind {
            Kind::Blk => "blk",
            Kind::Net => "net",
            Kind::Input => "input",
            Kind::Other(_) => "other",
        });
        puts(" bar0=");
        put_hex_short(u64::from(bar0_raw(slot) & !0xf));
        if let Kind::Other(id) = kind {
            puts(" device-id=");
            put_hex_short(id.into());
        }
        putc(b'\n');
        let r = match kind {
            Kind::Blk => crate::virtio_blk::list_one(slot, &mut arena),
            Kind::Net => crate::virtio_net::list_one(slot),
            Kind::Input | Kind::Other(_) => Ok(()),
        };
        if let Err(e) = r {
            status = e.report();
        }
    }
    status
}
