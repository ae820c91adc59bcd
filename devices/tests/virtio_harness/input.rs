//! virtio-input (the tablet) through the harness: configuration space, events into guest
//! buffers in order, events waiting for buffers, malformed buffers, the bounded queue, the
//! status queue, pause and snapshot restore.

use std::time::Duration;

use vireo_devices::virtio::input::config::codes::{
    ABS_X, ABS_Y, BTN_LEFT, BTN_MIDDLE, BTN_RIGHT, EV_ABS, EV_KEY, EV_SYN, SYN_REPORT,
};
use vireo_devices::virtio::input::config::{select, ABS_MAX};
use vireo_devices::virtio::input::{
    InputEvent, TabletHandle, VirtioInput, EVENT_QUEUE, EVENT_SIZE, MAX_PENDING, STATUS_QUEUE,
};
use vireo_devices::virtio::status;

use crate::driver::{linked, unique_index, Driver, Seg, MEM_SIZE, PAUSED_WATCH};

const UNTOUCHED: u8 = 0xee;

/// A started tablet and its handle.
struct Tablet {
    drv: Driver,
    handle: TabletHandle,
    /// Posted event buffers by head: their segments.
    posted: std::collections::HashMap<u16, Vec<Seg>>,
}

fn ev(kind: u16, code: u16, value: u32) -> (u16, u16, u32) {
    (kind, code, value)
}

impl Tablet {
    fn new() -> Self {
        let dev = VirtioInput::new_tablet(unique_index()).expect("tablet");
        let handle = dev.handle();
        let mut drv = Driver::new(Box::new(dev));
        drv.init_all();
        Self {
            drv,
            handle,
            posted: Default::default(),
        }
    }

    /// Posts `segs` as one event-queue chain (not yet notified).
    fn post(&mut self, segs: Vec<Seg>) -> u16 {
        let head = self.drv.write_chain(EVENT_QUEUE, &segs);
        self.drv.publish(EVENT_QUEUE, head);
        self.posted.insert(head, segs);
        head
    }

    /// Posts `n` 8-byte buffers (every third split 3 + 5 bytes, every fifth indirect) and
    /// notifies.
    fn post_buffers(&mut self, n: usize) {
        for i in 0..n {
            let segs = if i % 3 == 1 {
                vec![self.drv.wbuf(3, UNTOUCHED), self.drv.wbuf(5, UNTOUCHED)]
            } else {
                vec![self.drv.wbuf(EVENT_SIZE, UNTOUCHED)]
            };
            if i % 5 == 4 {
                let head = self.drv.write_indirect(EVENT_QUEUE, &linked(&segs, 0));
                self.drv.publish(EVENT_QUEUE, head);
                self.posted.insert(head, segs);
            } else {
                self.post(segs);
            }
        }
        self.drv.kick(EVENT_QUEUE);
    }

    /// Waits for the next used event buffer and decodes it.
    fn next_event(&mut self) -> (u16, u16, u32) {
        let used = self.drv.wait_used(EVENT_QUEUE);
        let segs = self
            .posted
            .remove(&(used.id as u16))
            .unwrap_or_else(|| panic!("used id {} was never posted", used.id));
        assert_eq!(used.len as usize, EVENT_SIZE, "used length");
        let bytes: Vec<u8> = segs.iter().flat_map(|s| self.drv.seg_bytes(*s)).collect();
        let e = InputEvent::from_bytes(bytes[..EVENT_SIZE].try_into().expect("8 bytes"));
        (e.kind, e.code, e.value)
    }

    fn events(&mut self, n: usize) -> Vec<(u16, u16, u32)> {
        (0..n).map(|_| self.next_event()).collect()
    }

    /// Reads the configuration answer for (`select`, `subsel`): size and union bytes.
    fn config(&mut self, sel: u8, subsel: u8) -> (u8, Vec<u8>) {
        let base = self.drv.bar.device;
        self.drv.bar_write(base, 1, u64::from(sel));
        self.drv.bar_write(base + 1, 1, u64::from(subsel));
        let size = self.drv.device_cfg(2, 1) as u8;
        let data = (0..128)
            .map(|i| self.drv.device_cfg(8 + i, 1) as u8)
            .collect();
        (size, data)
    }

    fn counter(&self, name: &str) -> u64 {
        let c = self.handle.counters();
        c.snapshot()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("counter {name}"))
    }
}

#[test]
fn input_config_space_describes_a_tablet() {
    let mut t = Tablet::new();
    assert_eq!(t.drv.cfg16(2), 0x1040 + 18, "PCI device id");
    let (size, name) = t.config(select::ID_NAME, 0);
    assert_eq!(&name[..usize::from(size)], b"Vireo Tablet");
    let (size, devids) = t.config(select::ID_DEVIDS, 0);
    assert_eq!(size, 8);
    assert_eq!(&devids[..2], &[0x06, 0], "BUS_VIRTUAL");
    let (size, serial) = t.config(select::ID_SERIAL, 0);
    assert!(size > 0 && serial[..usize::from(size)].is_ascii());
    let (size, keys) = t.config(select::EV_BITS, EV_KEY as u8);
    assert_eq!(usize::from(size), 0x112 / 8 + 1);
    for code in [BTN_LEFT, BTN_MIDDLE, BTN_RIGHT] {
        assert_ne!(
            keys[usize::from(code / 8)] & (1 << (code % 8)),
            0,
            "key {code:#x}"
        );
    }
    assert_eq!(
        t.config(select::EV_BITS, EV_ABS as u8),
        (1, {
            let mut v = vec![0u8; 128];
            v[0] = 0b11;
            v
        })
    );
    for axis in [ABS_X, ABS_Y] {
        let (size, info) = t.config(select::ABS_INFO, axis as u8);
        assert_eq!(size, 20);
        assert_eq!(&info[0..4], &[0; 4], "min");
        assert_eq!(&info[4..8], &ABS_MAX.to_le_bytes(), "max");
    }
    for (sel, subsel) in [
        (select::UNSET, 0),
        (select::PROP_BITS, 0),
        (select::EV_BITS, 2),
        (0x7f, 3),
    ] {
        let (size, data) = t.config(sel, subsel);
        assert_eq!(size, 0, "select {sel} subsel {subsel}");
        assert!(data.iter().all(|&b| b == 0));
    }
}

#[test]
fn input_events_reach_guest_buffers_in_order_with_syn_reports() {
    let mut t = Tablet::new();
    t.post_buffers(16);
    let fired = t.drv.msi.fired(1);
    t.handle.pointer(100, 200, 0b001);
    t.handle.pointer(300, 400, 0b110);
    assert_eq!(
        t.events(9),
        vec![
            ev(EV_ABS, ABS_X, 100),
            ev(EV_ABS, ABS_Y, 200),
            ev(EV_KEY, BTN_LEFT, 1),
            ev(EV_SYN, SYN_REPORT, 0),
            ev(EV_ABS, ABS_X, 300),
            ev(EV_ABS, ABS_Y, 400),
            ev(EV_KEY, BTN_LEFT, 0),
            ev(EV_KEY, BTN_MIDDLE, 1),
            ev(EV_KEY, BTN_RIGHT, 1),
        ]
    );
    assert_eq!(t.next_event(), ev(EV_SYN, SYN_REPORT, 0));
    assert!(
        t.drv.msi.wait_fired(1, fired, Duration::from_secs(5)),
        "event queue interrupt"
    );
    assert_eq!(t.counter("events"), 10);
    assert_eq!(t.handle.pending(), 0);
}

#[test]
fn input_events_wait_for_buffers() {
    let mut t = Tablet::new();
    t.handle.pointer(1, 2, 0);
    t.handle.pointer(3, 4, 0);
    std::thread::sleep(PAUSED_WATCH);
    assert_eq!(t.drv.used_idx(EVENT_QUEUE), 0);
    assert_eq!(t.handle.pending(), 6);
    // Two buffers: two events go, four wait.
    t.post_buffers(2);
    assert_eq!(
        t.events(2),
        vec![ev(EV_ABS, ABS_X, 1), ev(EV_ABS, ABS_Y, 2)]
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(t.handle.pending(), 4);
    t.post_buffers(4);
    assert_eq!(
        t.events(4),
        vec![
            ev(EV_SYN, SYN_REPORT, 0),
            ev(EV_ABS, ABS_X, 3),
            ev(EV_ABS, ABS_Y, 4),
            ev(EV_SYN, SYN_REPORT, 0),
        ]
    );
}

#[test]
fn malformed_input_buffers_complete_empty_and_the_event_waits() {
    let mut t = Tablet::new();
    let bad: Vec<Vec<Seg>> = vec![
        vec![t.drv.rbuf(&[UNTOUCHED; 8])],
        vec![t.drv.wbuf(4, UNTOUCHED)],
        vec![Seg::w(MEM_SIZE, 8)],
        vec![Seg::w(MEM_SIZE - 4, 8)],
        vec![Seg::w(u64::MAX - 3, 8)],
        vec![t.drv.rbuf(&[1; 4]), t.drv.wbuf(8, UNTOUCHED)],
        vec![],
    ];
    let mut heads = Vec::new();
    for segs in bad {
        let head = if segs.is_empty() {
            // A chain whose only descriptor points past the descriptor table.
            let size = t.drv.queue(EVENT_QUEUE).size;
            let h = t.drv.write_one(EVENT_QUEUE, |_| crate::driver::Desc {
                addr: 0x20_0000,
                len: 8,
                flags: crate::driver::F_WRITE | crate::driver::F_NEXT,
                next: size + 5,
            });
            t.drv.publish(EVENT_QUEUE, h);
            h
        } else {
            t.post(segs.clone())
        };
        heads.push((head, segs));
    }
    t.drv.kick(EVENT_QUEUE);
    t.handle.pointer(7, 8, 0);
    for (head, segs) in &heads {
        let used = t.drv.wait_used(EVENT_QUEUE);
        assert_eq!(used.id, u32::from(*head));
        assert_eq!(used.len, 0, "malformed chain {segs:?}");
        for s in segs.iter().filter(|s| {
            s.addr
                .checked_add(u64::from(s.len))
                .is_some_and(|e| e <= MEM_SIZE)
        }) {
            assert!(t
                .drv
                .seg_bytes(*s)
                .iter()
                .all(|&b| b == UNTOUCHED || b == 1));
        }
        t.posted.remove(head);
    }
    assert_eq!(t.counter("malformed"), heads.len() as u64);
    assert_eq!(t.handle.pending(), 3);
    t.post_buffers(3);
    assert_eq!(
        t.events(3),
        vec![
            ev(EV_ABS, ABS_X, 7),
            ev(EV_ABS, ABS_Y, 8),
            ev(EV_SYN, SYN_REPORT, 0)
        ]
    );
    let s = t.drv.status();
    assert_eq!(s & status::DEVICE_NEEDS_RESET, 0, "status {s:#x}");
}

#[test]
fn a_full_input_queue_drops_whole_reports() {
    let mut t = Tablet::new();
    // No buffers: reports pile up to the bound.
    let reports = MAX_PENDING;
    for i in 0..reports {
        t.handle.pointer(i as u32, 0, (i % 2) as u8);
    }
    let pending = t.handle.pending();
    assert!(
        pending <= MAX_PENDING && pending > MAX_PENDING - 4,
        "{pending}"
    );
    let dropped = t.counter("dropped_full");
    assert_eq!(t.counter("reports") + dropped, reports as u64);
    assert!(dropped > 0);
    // What is delivered is whole reports, buttons alternating as queued.
    let mut held = 0;
    let mut in_report = Vec::new();
    let total = pending;
    let mut delivered = 0;
    while delivered < total {
        // At most 32 chains at a time: some take two of the 64 descriptors.
        let n = (total - delivered).min(32);
        t.post_buffers(n);
        for e in t.events(n) {
            in_report.push(e);
            if e == ev(EV_SYN, SYN_REPORT, 0) {
                assert_eq!(in_report[0].1, ABS_X);
                assert_eq!(in_report[1].1, ABS_Y);
                for k in &in_report[2..in_report.len() - 1] {
                    assert_eq!((k.0, k.1), (EV_KEY, BTN_LEFT));
                    assert_ne!(k.2, held, "a button event that changes nothing");
                    held = k.2;
                }
                in_report.clear();
            }
        }
        delivered += n;
    }
    assert!(in_report.is_empty(), "a partial report was delivered");
    assert_eq!(t.handle.pending(), 0);
}

#[test]
fn input_status_queue_buffers_are_returned_unread() {
    let mut t = Tablet::new();
    let led = [0x11u8, 0, 0, 0, 1, 0, 0, 0]; // EV_LED, LED_NUML, on
    let segs = [t.drv.rbuf(&led)];
    let head = t.drv.submit(STATUS_QUEUE, &segs);
    let used = t.drv.wait_used(STATUS_QUEUE);
    assert_eq!((used.id, used.len), (u32::from(head), 0));
    assert_eq!(t.counter("status_buffers"), 1);
}

#[test]
fn input_pauses_and_restores_pending_events_from_a_snapshot() {
    let mut t = Tablet::new();
    t.post_buffers(2);
    t.handle.pointer(10, 20, 1);
    assert_eq!(
        t.events(2),
        vec![ev(EV_ABS, ABS_X, 10), ev(EV_ABS, ABS_Y, 20)]
    );
    t.drv.dev.pause();
    t.handle.pointer(30, 40, 0);
    t.post_buffers(1);
    t.drv.take_dirty();
    t.drv.assert_still_while_paused(EVENT_QUEUE, 2);
    let state = t.drv.save_through_json();
    // A new device restored from the state, started paused.
    let dev = VirtioInput::new_tablet(unique_index()).expect("tablet");
    let handle = dev.handle();
    t.drv.restore_onto(Box::new(dev), 3, &state, true);
    t.handle = handle;
    assert_eq!(t.handle.pending(), 2 + 4);
    t.drv.dev.resume();
    // The buffer posted while paused takes the first pending event.
    assert_eq!(t.next_event(), ev(EV_KEY, BTN_LEFT, 1));
    t.post_buffers(5);
    assert_eq!(
        t.events(5),
        vec![
            ev(EV_SYN, SYN_REPORT, 0),
            ev(EV_ABS, ABS_X, 30),
            ev(EV_ABS, ABS_Y, 40),
            ev(EV_KEY, BTN_LEFT, 0),
            ev(EV_SYN, SYN_REPORT, 0),
        ]
    );
    // The restored handle works.
    t.handle.pointer(50, 60, 0);
    t.post_buffers(3);
    assert_eq!(
        t.events(3)[..2],
        [ev(EV_ABS, ABS_X, 50), ev(EV_ABS, ABS_Y, 60)]
    );
}
