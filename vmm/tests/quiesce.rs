//! Full quiesce under real KVM with the test guest's `churn` scenario, which
//! keeps rewriting guest memory, a disk and (with a NIC) sending frames, and
//! verifies all of it itself. While the VM is paused nothing moves: no
//! serial output, no change to the disk image, no device write into guest
//! memory (the dirty bitmap stays clean), no frame on the tap, and the
//! guest's counter stands still. After each resume the guest's periodic
//! lines continue with no iteration lost or repeated, its own memory and
//! disk checks keep passing (its checksums also match the ones recomputed
//! here), and frames in both directions keep their sequence across the
//! pauses. The tap test runs in a private network namespace and needs root,
//! which it asserts. Two more tests change a page and the disk behind the
//! paused guest's back, and expect the guest to report it and fail.

mod common;

use std::hash::{DefaultHasher, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::churn::{
    check_lines, churn_config, churn_lines, last_line, stop, wait_for_i, Line, EVERY, PAGES,
    SECTORS,
};
use common::netcommon;
use common::tap::{
    check_tx_counts, churning_vm_with_tap, tap_rx_packets, wait_for_rx, PacketSocket,
};
use common::{build_vm, take_device_dirty, Capture, PATIENCE};
use vireo_vmm::{ExitReason, Vm, VmState};

const ROUNDS: usize = 5;
/// How long each pause is watched.
const PAUSED_FOR: Duration = Duration::from_millis(300);

/// The disk image's content hash and modification time.
fn disk_state(path: &Path) -> (u64, SystemTime) {
    let data = std::fs::read(path).expect("read disk image");
    let mut h = DefaultHasher::new();
    h.write(&data);
    let mtime = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("disk mtime");
    (h.finish(), mtime)
}

/// What a test with a NIC adds to the checks around each pause.
trait Traffic {
    /// Called while paused, before the quiet period.
    fn while_paused_start(&mut self) {}
    /// Called at the end of the quiet period: asserts nothing moved.
    fn while_paused_end(&mut self, _round: usize) {}
    /// Called while running.
    fn while_running(&mut self) {}
}

struct NoTraffic;
impl Traffic for NoTraffic {}

/// Runs the pause/resume rounds on a started churning VM and checks the
/// lines it printed; returns them.
fn pause_resume_rounds(
    vm: &Vm,
    out: &Capture,
    disk: &Path,
    traffic: &mut dyn Traffic,
) -> Vec<Line> {
    wait_for_i(out, 3 * EVERY);
    for round in 0..ROUNDS {
        traffic.while_running();
        vm.pause().expect("pause");
        assert_eq!(vm.state(), VmState::Paused);
        take_device_dirty(vm);
        let text = out.text();
        let disk_before = disk_state(disk);
        let last = last_line(out).expect("lines before the pause");
        traffic.while_paused_start();

        std::thread::sleep(PAUSED_FOR);

        assert_eq!(
            take_device_dirty(vm),
            0,
            "a device wrote guest memory while paused (round {round})"
        );
        assert_eq!(
            out.text(),
            text,
            "serial output while paused (round {round})"
        );
        assert_eq!(
            disk_state(disk),
            disk_before,
            "the disk image changed while paused (round {round})"
        );
        assert_eq!(
            last_line(out).expect("lines"),
            last,
            "the guest's counter moved while paused (round {round})"
        );
        traffic.while_paused_end(round);

        vm.resume().expect("resume");
        assert_eq!(vm.state(), VmState::Running);
        traffic.while_running();
        wait_for_i(out, last.i + 3 * EVERY);
    }

    let lines = churn_lines(&out.text());
    check_sequence(&lines);
    lines
}

/// Lines at i = EVERY, 2·EVERY, … with none lost or repeated, and block and
/// transmit counters a function of `i`.
fn check_sequence(lines: &[Line]) {
    assert!(
        lines.len() as u64 >= 3 + 3 * ROUNDS as u64,
        "{} lines",
        lines.len()
    );
    assert_eq!(lines[0].i, EVERY, "the first line: {:?}", lines[0]);
    check_lines(lines, EVERY, true);
}

#[test]
fn pause_freezes_a_churning_guest_and_its_disk_and_resume_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.raw");
    let config = churn_config(dir.path(), &disk);
    let (vm, out) = build_vm(config);
    let started = Instant::now();
    vm.start().expect("start");
    let lines = pause_resume_rounds(&vm, &out, &disk, &mut NoTraffic);
    stop(&vm, &out);
    let text = out.text();
    assert!(
        text.starts_with(&format!(
            "churn start pages={PAGES} every={EVERY} blk-sectors={SECTORS} net=0 base="
        )),
        "{text}"
    );
    assert!(lines.iter().all(|l| l.tx.is_none() && l.rx.is_none()));
    eprintln!(
        "{} lines (i up to {}) in {:?}",
        lines.len(),
        lines.last().map_or(0, |l| l.i),
        started.elapsed()
    );
}

/// The guest-physical address of the working set, from the start line.
fn working_set_base(out: &Capture) -> u64 {
    let text = out.text();
    let start = text
        .lines()
        .find(|l| l.starts_with("churn start "))
        .unwrap_or_else(|| panic!("no start line in\n{text}"));
    let hex = start
        .split(' ')
        .find_map(|w| w.strip_prefix("base=0x"))
        .unwrap_or_else(|| panic!("no base in {start:?}"));
    u64::from_str_radix(hex, 16).expect("base address")
}

/// Waits for the guest to exit and returns its status and output.
fn guest_exit(vm: &Vm, out: &Capture) -> (ExitReason, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(vm.wait());
        });
        let reason = rx.recv_timeout(PATIENCE);
        if reason.is_err() {
            vm.shutdown();
        }
        let reason = reason.unwrap_or_else(|_| {
            panic!(
                "the guest did not exit within {PATIENCE:?}; output:\n{}",
                out.text()
            )
        });
        (reason, out.text())
    })
}

#[test]
fn the_guest_notices_a_page_changed_behind_its_back() {
    // The counterpart of the tests above: a host write into the working set
    // while paused must be caught by the guest.
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.raw");
    let config = churn_config(dir.path(), &disk);
    let (vm, out) = build_vm(config);
    vm.start().expect("start");
    wait_for_i(&out, 2 * EVERY);
    vm.pause().expect("pause");
    let base = working_set_base(&out);
    // Flip a bit in every page of the working set: the guest checks each
    // page before rewriting it, so the next iteration notices.
    use vm_memory::{Bytes, GuestAddress};
    for page in 0..PAGES {
        let at = GuestAddress(base + page * 4096 + 8);
        let mut word = [0u8; 8];
        vm.memory()
            .read_slice(&mut word, at)
            .expect("read guest memory");
        word[0] ^= 1;
        vm.memory()
            .write_slice(&word, at)
            .expect("write guest memory");
    }
    vm.resume().expect("resume");
    let (reason, text) = guest_exit(&vm, &out);
    assert_eq!(reason, ExitReason::DebugExit { status: 1 }, "{text}");
    assert!(text.contains("churn MISMATCH i="), "{text}");
}

#[test]
fn the_guest_notices_a_disk_changed_behind_its_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.raw");
    let config = churn_config(dir.path(), &disk);
    let (vm, out) = build_vm(config);
    vm.start().expect("start");
    // Every sector in use has been written once.
    wait_for_i(&out, SECTORS + EVERY);
    vm.pause().expect("pause");
    // Zero the sectors the guest writes, as a restore of an older disk
    // would.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("open disk");
    use std::os::unix::fs::FileExt;
    f.write_all_at(&vec![0u8; (SECTORS * 512) as usize], 0)
        .expect("zero the disk");
    f.sync_all().expect("sync");
    vm.resume().expect("resume");
    let (reason, text) = guest_exit(&vm, &out);
    assert_eq!(reason, ExitReason::DebugExit { status: 1 }, "{text}");
    assert!(
        text.contains("churn BLK-MISMATCH i=") && text.contains(" got-iter=0 "),
        "{text}"
    );
}

// ---------------------------------------------------------- with a tap

/// Frames the host sends the guest while it runs, and while it is paused.
const RX_RUNNING: u64 = 20;
const RX_PAUSED: u64 = 10;

/// Sends frames to the guest and watches the tap while paused.
struct TapTraffic {
    sock: Arc<PacketSocket>,
    next_seq: u64,
    tap_rx_at_pause: u64,
}

impl TapTraffic {
    fn send(&mut self, n: u64) {
        for _ in 0..n {
            self.sock.send_seq(self.next_seq);
            self.next_seq += 1;
        }
    }
}

impl Traffic for TapTraffic {
    fn while_paused_start(&mut self) {
        // The kernel's count of frames the VMM wrote into the tap (the
        // guest sends nothing else).
        self.tap_rx_at_pause = tap_rx_packets();
        // Frames for the guest wait in the tap until it resumes.
        self.send(RX_PAUSED);
    }

    fn while_paused_end(&mut self, round: usize) {
        assert_eq!(
            tap_rx_packets(),
            self.tap_rx_at_pause,
            "the guest's NIC sent frames while paused (round {round})"
        );
    }

    fn while_running(&mut self) {
        self.send(RX_RUNNING);
    }
}

#[test]
fn pause_freezes_a_churning_guest_with_a_disk_and_a_tap_and_resume_loses_nothing() {
    netcommon::require_root(
        "pause_freezes_a_churning_guest_with_a_disk_and_a_tap_and_resume_loses_nothing",
    );
    netcommon::in_netns(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let (vm, out, sock, reader) = churning_vm_with_tap(dir.path());
        let disk = dir.path().join("disk.raw");
        let started = Instant::now();
        vm.start().expect("start");
        let mut traffic = TapTraffic {
            sock,
            next_seq: 0,
            tap_rx_at_pause: 0,
        };
        pause_resume_rounds(&vm, &out, &disk, &mut traffic);

        // Every frame sent to the guest arrives, in order (the guest reports
        // a gap itself).
        let sent = traffic.next_seq;
        wait_for_rx(&out, sent, last_line);
        stop(&vm, &out);
        // Every frame the guest's NIC put on the tap (all but those still in
        // the guest's 16-entry transmit ring at its last line) reaches the
        // reader, and they are the guest's frames once each, in order.
        let on_tap = tap_rx_packets();
        let tx = last_line(&out).and_then(|l| l.tx).expect("tx count");
        assert!(
            on_tap + 16 >= tx,
            "{on_tap} frames on the tap, the guest sent {tx}"
        );
        let seen = reader.finish(on_tap);

        let lines = churn_lines(&out.text());
        check_tx_counts(&lines);
        for (n, &seq) in seen.iter().enumerate() {
            assert_eq!(
                seq, n as u64,
                "the guest's frames arrive once each, in order"
            );
        }
        eprintln!(
            "{} lines, {} frames from the guest, {sent} to it, in {:?}",
            lines.len(),
            seen.len(),
            started.elapsed()
        );
    });
}
