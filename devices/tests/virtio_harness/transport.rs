//! The virtio-pci transport as a driver sees it: identity, capabilities, feature negotiation,
//! reset, queue and vector registers, ISR and MSI-X masking. The device behind it is a
//! virtio-blk on a raw image (no root needed).

use std::sync::Arc;

use tempfile::TempDir;
use vireo_block::{create_raw, open_disk, Format, OpenOptions};
use vireo_devices::virtio::block::request::{kind, status as blk_status};
use vireo_devices::virtio::block::VirtioBlock;
use vireo_devices::virtio::pci_transport::NO_VECTOR;
use vireo_devices::virtio::{features, status};

use crate::driver::{reg, unique_index, Driver, Seg, TIMEOUT};

fn blk_driver() -> (Driver, TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("disk.raw");
    create_raw(&path, 1 << 20).expect("create_raw");
    let opts = OpenOptions {
        format: Some(Format::Raw),
        ..OpenOptions::default()
    };
    let disk = Arc::from(open_disk(&path, &opts).expect("open_disk"));
    let dev = VirtioBlock::new(disk, unique_index());
    (Driver::new(Box::new(dev)), dir)
}

/// Like [`blk_driver`], initialised with every offered feature.
fn ready_blk_driver() -> (Driver, TempDir) {
    let (mut d, dir) = blk_driver();
    d.init_all();
    (d, dir)
}

/// Runs a FLUSH and returns its head; the caller waits.
pub(crate) fn flush(d: &mut Driver) -> (u16, Seg) {
    let h = d.rbuf(&crate::blk::header(kind::FLUSH, 0));
    let st = d.wbuf(1, 0xee);
    (d.submit(0, &[h, st]), st)
}

/// Runs a FLUSH and waits for it to complete; returns its status segment.
#[track_caller]
fn flush_and_wait(d: &mut Driver, what: &str) -> Seg {
    let (head, st) = flush(d);
    assert_eq!(d.wait_used(0).id, u32::from(head), "{what}");
    st
}

/// Runs a FLUSH and checks it completes with status OK (the queue works).
#[track_caller]
fn assert_flush_ok(d: &mut Driver) {
    let st = flush_and_wait(d, "flush completed");
    assert_eq!(d.seg_bytes(st)[0], blk_status::OK);
}

/// Waits until vector `v`'s pending bit is set in the PBA; fails the test after [`TIMEOUT`].
#[track_caller]
fn wait_pending(d: &mut Driver, v: u16) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !d.pending(v) {
        assert!(std::time::Instant::now() < deadline, "PBA bit never set");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[test]
fn pci_identity_and_capabilities() {
    let (mut d, _dir) = blk_driver();
    assert_eq!(d.cfg16(0), 0x1af4, "vendor");
    assert_eq!(d.cfg16(2), 0x1042, "modern virtio-blk device id");
    assert_eq!(d.cfg::<1>(8)[0], 1, "revision 1 (modern)");
    assert_eq!(d.cfg16(0x2c), 0x1af4, "subsystem vendor");
    assert_eq!(d.cfg16(0x2e), 0x40, "subsystem id");
    assert_eq!(d.bar.notify_multiplier, 4);
    assert!(
        d.bar.device_len >= 60,
        "device cfg covers virtio_blk_config"
    );
    // All structures lie inside BAR0, apart from one another.
    let mut regions = [
        (d.bar.common, 0x38),
        (d.bar.isr, 1),
        (d.bar.device, d.bar.device_len),
        (d.bar.notify, 4),
        (d.bar.msix_table, 16 * u64::from(d.bar.msix_vectors)),
        (d.bar.msix_pba, 8),
    ];
    regions.sort();
    for w in regions.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "overlap: {regions:x?}");
    }
    let bar_size = d.bar0_size();
    assert_eq!(bar_size, 0x4000);
    assert!(
        regions.iter().all(|(o, l)| o + l <= bar_size),
        "inside BAR0"
    );
}

#[test]
fn device_features_read_through_both_selects() {
    let (mut d, _dir) = blk_driver();
    d.set_common(reg::DEVICE_FEATURE_SELECT, 4, 0);
    let lo = d.common(reg::DEVICE_FEATURE, 4);
    d.set_common(reg::DEVICE_FEATURE_SELECT, 4, 1);
    let hi = d.common(reg::DEVICE_FEATURE, 4);
    assert_eq!(hi & 1, 1, "VERSION_1 is bit 32");
    assert_ne!(lo & features::RING_INDIRECT_DESC, 0);
    assert_eq!(
        d.common(reg::DEVICE_FEATURE_SELECT, 4),
        1,
        "select reads back"
    );
    d.set_common(reg::DEVICE_FEATURE_SELECT, 4, 2);
    assert_eq!(
        d.common(reg::DEVICE_FEATURE, 4),
        0,
        "select 2 has no features"
    );
    assert_eq!(d.device_features(), lo | hi << 32);
    // The device feature register is read-only.
    d.set_common(reg::DEVICE_FEATURE_SELECT, 4, 0);
    d.set_common(reg::DEVICE_FEATURE, 4, 0);
    assert_eq!(d.common(reg::DEVICE_FEATURE, 4), lo);
}

#[test]
fn unoffered_feature_or_missing_version_1_keeps_features_ok_clear() {
    let (mut d, _dir) = blk_driver();
    let offered = d.device_features();
    // A feature the device does not offer (bit 0: SIZE_MAX, not offered by this device).
    assert_eq!(offered & 1, 0);
    assert!(!d.negotiate(offered | 1), "unoffered feature accepted");
    assert_eq!(d.status() & status::FEATURES_OK, 0);
    // A high-half feature the device does not offer.
    assert!(!d.negotiate(offered | 1 << 40));
    // No VERSION_1.
    assert!(!d.negotiate(offered & !features::VERSION_1));
    assert!(!d.negotiate(0));
    // DRIVER_OK without FEATURES_OK does not start the device.
    d.set_status(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK);
    assert_eq!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    // A subset works; VERSION_1 alone works.
    assert!(d.negotiate(features::VERSION_1));
    assert!(d.negotiate(offered));
    // After FEATURES_OK the driver features are frozen.
    d.write_driver_features(features::VERSION_1);
    d.set_common(reg::DRIVER_FEATURE_SELECT, 4, 0);
    assert_eq!(d.common(reg::DRIVER_FEATURE, 4), offered & 0xffff_ffff);
}

#[test]
fn reset_returns_registers_to_defaults() {
    let (mut d, _dir) = ready_blk_driver();
    assert_ne!(d.status(), 0);
    // Program some non-default values, then reset.
    d.set_common(reg::QUEUE_SELECT, 2, 0);
    d.set_common(reg::DEVICE_FEATURE_SELECT, 4, 1);
    d.set_status(0);
    assert_eq!(d.status(), 0, "status");
    assert_eq!(d.common(reg::DEVICE_FEATURE_SELECT, 4), 0);
    assert_eq!(d.common(reg::DRIVER_FEATURE_SELECT, 4), 0);
    d.set_common(reg::DRIVER_FEATURE_SELECT, 4, 0);
    assert_eq!(d.common(reg::DRIVER_FEATURE, 4), 0, "driver features");
    d.set_common(reg::DRIVER_FEATURE_SELECT, 4, 1);
    assert_eq!(d.common(reg::DRIVER_FEATURE, 4), 0);
    assert_eq!(d.common(reg::CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(d.common(reg::QUEUE_SELECT, 2), 0);
    assert_eq!(d.common(reg::QUEUE_SIZE, 2), 256, "size back to max");
    assert_eq!(d.common(reg::QUEUE_ENABLE, 2), 0);
    assert_eq!(d.common(reg::QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(d.common(reg::QUEUE_DESC, 8), 0);
    assert_eq!(d.common(reg::QUEUE_DRIVER, 8), 0);
    assert_eq!(d.common(reg::QUEUE_DEVICE, 8), 0);
    assert_eq!(d.isr(), 0);
    // And it initialises again.
    d.init_all();
    assert_flush_ok(&mut d);
}

#[test]
fn invalid_queue_sizes_are_ignored() {
    let (mut d, _dir) = blk_driver();
    d.set_common(reg::QUEUE_SELECT, 2, 0);
    assert_eq!(d.common(reg::QUEUE_SIZE, 2), 256, "max size");
    for bad in [100u64, 512, 0, 255, 0xffff, 257] {
        d.set_common(reg::QUEUE_SIZE, 2, bad);
        assert_eq!(d.common(reg::QUEUE_SIZE, 2), 256, "size {bad} ignored");
    }
    d.set_common(reg::QUEUE_SIZE, 2, 64);
    assert_eq!(d.common(reg::QUEUE_SIZE, 2), 64);
    d.set_common(reg::QUEUE_SIZE, 2, 3);
    assert_eq!(d.common(reg::QUEUE_SIZE, 2), 64, "3 ignored, 64 kept");
    d.set_common(reg::QUEUE_SIZE, 2, 1);
    assert_eq!(d.common(reg::QUEUE_SIZE, 2), 1, "1 is a power of two");
    // A queue that does not exist reads as zero and ignores writes.
    d.set_common(reg::QUEUE_SELECT, 2, 5);
    assert_eq!(d.common(reg::QUEUE_SIZE, 2), 0);
    d.set_common(reg::QUEUE_SIZE, 2, 16);
    d.set_common(reg::QUEUE_ENABLE, 2, 1);
    d.set_common(reg::QUEUE_DESC, 8, 0x1000);
    assert_eq!(d.common(reg::QUEUE_SIZE, 2), 0);
    assert_eq!(d.common(reg::QUEUE_ENABLE, 2), 0);
    assert_eq!(d.common(reg::QUEUE_DESC, 8), 0);
    assert_eq!(d.common(reg::QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(d.common(reg::NUM_QUEUES, 2), 1);
}

#[test]
fn msix_vector_out_of_range_reads_back_no_vector() {
    let (mut d, _dir) = blk_driver();
    // Two vectors: config + one queue.
    assert_eq!(d.bar.msix_vectors, 2);
    d.set_common(reg::CONFIG_MSIX_VECTOR, 2, 1);
    assert_eq!(d.common(reg::CONFIG_MSIX_VECTOR, 2), 1);
    d.set_common(reg::CONFIG_MSIX_VECTOR, 2, 2);
    assert_eq!(d.common(reg::CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    d.set_common(reg::QUEUE_SELECT, 2, 0);
    for (v, want) in [
        (0u64, 0u64),
        (1, 1),
        (2, 0xffff),
        (0x7ff, 0xffff),
        (0xfffe, 0xffff),
    ] {
        d.set_common(reg::QUEUE_MSIX_VECTOR, 2, v);
        assert_eq!(d.common(reg::QUEUE_MSIX_VECTOR, 2), want, "vector {v:#x}");
    }
    d.set_common(reg::QUEUE_MSIX_VECTOR, 2, 0xffff);
    assert_eq!(
        d.common(reg::QUEUE_MSIX_VECTOR, 2),
        0xffff,
        "NO_VECTOR is accepted"
    );
    assert_eq!(d.setup_queue(0, 256, 9), NO_VECTOR);
    assert_eq!(d.queue(0).vector, NO_VECTOR);
}

#[test]
fn queue_addresses_accept_any_access_width() {
    let (mut d, _dir) = blk_driver();
    d.set_common(reg::QUEUE_SELECT, 2, 0);
    d.set_common(reg::QUEUE_DESC, 8, 0x1234_5678_9abc_def0);
    assert_eq!(d.common(reg::QUEUE_DESC, 8), 0x1234_5678_9abc_def0);
    d.set_common64(reg::QUEUE_DRIVER, 0x0000_0001_0000_2000);
    assert_eq!(d.common(reg::QUEUE_DRIVER, 4), 0x2000);
    assert_eq!(d.common(reg::QUEUE_DRIVER + 4, 4), 1);
    // Byte-wise writes of the device ring address.
    for (i, b) in 0x0102_0304_0506_0708u64.to_le_bytes().iter().enumerate() {
        d.set_common(reg::QUEUE_DEVICE + i as u64, 1, u64::from(*b));
    }
    assert_eq!(d.common(reg::QUEUE_DEVICE, 8), 0x0102_0304_0506_0708);
    // A 2-byte read in the middle.
    assert_eq!(d.common(reg::QUEUE_DEVICE + 3, 2), 0x0405);
    // Reads past the common structure are zero.
    assert_eq!(d.common(0x38, 8), 0);
}

#[test]
fn queue_registers_are_frozen_after_driver_ok() {
    let (mut d, _dir) = ready_blk_driver();
    let q = d.queue(0);
    d.set_common(reg::QUEUE_SELECT, 2, 0);
    d.set_common(reg::QUEUE_SIZE, 2, 16);
    d.set_common64(reg::QUEUE_DESC, 0x50_0000);
    d.set_common64(reg::QUEUE_DRIVER, 0x50_1000);
    d.set_common64(reg::QUEUE_DEVICE, 0x50_2000);
    assert_eq!(d.common(reg::QUEUE_SIZE, 2), 256);
    assert_eq!(d.common(reg::QUEUE_DESC, 8), q.desc);
    assert_eq!(d.common(reg::QUEUE_DRIVER, 8), q.avail);
    assert_eq!(d.common(reg::QUEUE_DEVICE, 8), q.used);
    // The queue still works at its original rings.
    assert_flush_ok(&mut d);
}

#[test]
fn msix_routes_follow_the_table() {
    let (mut d, _dir) = blk_driver();
    let r = d
        .msi
        .route(1)
        .expect("vector 1 routed after enable + unmask");
    assert_eq!((r.address, r.data), (0xfee0_0000, 0x41));
    d.program_vector(1, 0x1_fee0_1000, 0x55, false);
    let r = d.msi.route(1).expect("still routed");
    assert_eq!((r.address, r.data), (0x1_fee0_1000, 0x55));
    // The table reads back what was written, including the mask bit.
    let t = d.bar.msix_table;
    assert_eq!(d.bar_read(t + 16, 8), 0x1_fee0_1000);
    assert_eq!(d.bar_read(t + 24, 4), 0x55);
    d.mask_vector(1, true);
    assert_eq!(d.bar_read(t + 28, 4), 1);
    assert!(d.msi.route(1).is_none(), "masked vector has no route");
    d.set_msix_control(false, false);
    assert!(d.msi.route(0).is_none(), "disabled MSI-X has no routes");
    // Writes past the table are ignored.
    d.bar_write(t + 16 * 2, 4, 0xdead_beef);
    assert_eq!(d.bar_read(t + 16 * 2, 4), 0);
}

#[test]
fn msix_masked_vector_pends_and_fires_on_unmask() {
    let (mut d, _dir) = ready_blk_driver();
    d.mask_vector(1, true);
    let fired = d.msi.fired(1);
    flush_and_wait(&mut d, "completed (polled)");
    // The interrupt is raised right after the used ring is written: wait for the pending bit.
    wait_pending(&mut d, 1);
    assert_eq!(d.msi.fired(1), fired, "masked vector did not fire");
    assert_ne!(d.isr() & 1, 0, "ISR queue bit");
    d.mask_vector(1, false);
    assert_eq!(d.msi.fired(1), fired + 1, "fired on unmask");
    assert!(!d.pending(1), "pending bit cleared");
    // Unmasked again: the next completion fires directly.
    flush_and_wait(&mut d, "flush completed");
    assert!(d.msi.wait_fired(1, fired + 1, TIMEOUT));
}

#[test]
fn msix_function_mask_pends_all_vectors() {
    let (mut d, _dir) = ready_blk_driver();
    d.set_msix_control(true, true);
    let fired = d.msi.fired(1);
    flush_and_wait(&mut d, "flush completed");
    wait_pending(&mut d, 1);
    assert_eq!(d.msi.fired(1), fired);
    d.set_msix_control(true, false);
    assert_eq!(
        d.msi.fired(1),
        fired + 1,
        "fired when the function mask cleared"
    );
    assert!(!d.pending(1));
}

#[test]
fn msix_disabled_sets_only_the_isr() {
    let (mut d, _dir) = ready_blk_driver();
    d.set_msix_control(false, false);
    let fired = d.msi.fired(1);
    let _ = d.isr();
    flush_and_wait(&mut d, "flush completed");
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut isr = 0;
    while isr & 1 == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "ISR queue bit never set"
        );
        isr |= d.isr();
    }
    assert_eq!(d.isr(), 0, "reading the ISR cleared it");
    assert_eq!(d.msi.fired(1), fired, "no MSI while MSI-X is disabled");
    assert!(!d.pending(1), "nothing pending while disabled");
    // Enabling later does not deliver the old interrupt.
    d.set_msix_control(true, false);
    assert_eq!(d.msi.fired(1), fired);
}

#[test]
fn queue_with_no_vector_completes_without_msi() {
    let (mut d, _dir) = blk_driver();
    let f = d.device_features();
    assert!(d.negotiate(f));
    d.set_common(reg::CONFIG_MSIX_VECTOR, 2, 0);
    d.setup_queue(0, 256, NO_VECTOR);
    d.driver_ok();
    assert_flush_ok(&mut d);
    // The worker signals after publishing the used entry, so give a wrong
    // interrupt time to arrive before concluding there was none.
    for v in [0, 1] {
        assert!(
            !d.msi
                .wait_fired(v, 0, std::time::Duration::from_millis(100)),
            "vector {v} fired"
        );
    }
}

#[test]
fn unknown_bar_offsets_and_notify_addresses_are_harmless() {
    let (mut d, _dir) = ready_blk_driver();
    for off in [
        0x38u64,
        0xff,
        0x104,
        0x1ffc,
        0x3ff8,
        0x4000,
        0xffff_ffff,
        u64::MAX - 7,
    ] {
        for size in [1usize, 2, 4, 8] {
            let _ = d.bar_read(off, size);
            d.bar_write(off, size, u64::MAX);
        }
    }
    // Notify addresses of queues that do not exist, odd widths on the real one.
    let n = d.bar.notify;
    d.bar_write(n + 4, 4, 1);
    d.bar_write(n + 0xffc, 2, 0);
    d.bar_write(n + 1, 1, 0);
    assert_eq!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_flush_ok(&mut d);
}

#[test]
fn status_write_keeps_needs_reset_until_reset() {
    let (mut d, _dir) = blk_driver();
    let f = d.device_features();
    assert!(d.negotiate(f));
    // DRIVER_OK with no queue enabled: activation fails.
    d.driver_ok();
    let s = d.status();
    assert_ne!(s & status::DEVICE_NEEDS_RESET, 0);
    // The driver cannot clear it by writing status...
    d.set_status(status::ACKNOWLEDGE);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    // ...only by resetting.
    d.set_status(0);
    assert_eq!(d.status(), 0);
}
