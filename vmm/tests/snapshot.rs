//! Snapshot and restore through the library API, with the test guest under real KVM: the
//! restored guest continues exactly where the saved one stopped (its own counter says so),
//! in a VM built from the snapshot alone, with memory mapped lazily or read eagerly, and two
//! restores of one snapshot print the same thing.
//!
//! The `churn` tests (see `common::churn`) restore a guest that keeps rewriting its memory
//! and a disk, and with a NIC sends and receives frames, and that verifies all of it itself;
//! the restored VM is a new one, built by `snapshot::restore` after the saved one was shut
//! down and dropped. Its serial output is appended to the saved guest's output at snapshot
//! time, and the joined output must be one unbroken sequence of lines with the checksums
//! the scenario defines.
//!
//! The disk: a VM that runs on after its snapshot keeps writing its disk, so the image no
//! longer holds the snapshot's disk state; restoring onto it would hand the guest a disk
//! from its future (it notices: `BLK-MISMATCH`). That is inherent to snapshots that do not
//! copy the disk (Firecracker and Cloud Hypervisor behave the same). So the tests with a
//! disk pause the VM, snapshot it (the guest's disk I/O was in flight at the pause, exactly
//! as in a snapshot of a running VM, which pauses the same way), copy the image while the
//! VM is still paused, and restore onto a fresh copy of it through the restore's disk
//! override. Snapshotting a running VM, which then runs on, is tested with the memory-only
//! churn (no disk) and with the count scenario.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::churn::{
    check_lines, churn_config, churn_lines, last_line, last_line_allowing_rx_gaps, parse, stop,
    wait_for_i, wait_for_i_with, Line, DISK_BYTES, EVERY, SECTORS,
};
use common::netcommon;
use common::tap::{
    add_nic, check_tx_counts, tap_rx_packets, wait_for_rx, PacketSocket, TxReader, TAP,
};
use common::{build_vm, guest_vm, qemu_img_check, ticks, Capture};
use vireo_vmm::{DiskConfig, DiskFormat};

use vireo_vmm::snapshot::{self, MemoryRestore, RestoreOptions};
use vireo_vmm::{Vm, VmConfig, VmState};

/// Restores the snapshot in `dir` with `opts`, its serial output going to `out`.
fn restore_to(
    dir: &Path,
    out: &Capture,
    opts: RestoreOptions,
) -> Result<Vm, snapshot::SnapshotError> {
    snapshot::restore(
        dir,
        RestoreOptions {
            serial_writer: Some(Box::new(out.clone())),
            ..opts
        },
    )
}

fn restore(dir: &Path, how: MemoryRestore, paused: bool) -> (Vm, Capture) {
    let capture = Capture::default();
    let vm = restore_to(
        dir,
        &capture,
        RestoreOptions {
            memory: how,
            paused,
            ..RestoreOptions::default()
        },
    )
    .expect("restore");
    (vm, capture)
}

/// A started VM in `dir` with the test guest counting fast on `vcpus` vCPUs, once it
/// has printed `tick {n}`.
fn counting_vm(dir: &Path, vcpus: u8, n: u64) -> (Vm, Capture) {
    let (vm, out) = guest_vm(dir, "count 1000000 1000000", vcpus);
    vm.start().expect("start");
    out.wait_for(&format!("tick {n}\n"), Duration::from_secs(30));
    (vm, out)
}

#[test]
fn a_restored_guest_continues_its_count_exactly_where_it_was_saved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = dir.path().join("snap");
    let (vm, out) = counting_vm(dir.path(), 1, 40);
    vm.pause().expect("pause");
    let report = vm.snapshot(&snap).expect("snapshot");
    assert_eq!(vm.state(), VmState::Paused, "a paused VM stays paused");
    let before = out.text();
    vm.shutdown();
    assert!(
        report.memory_data_bytes < 4 << 20,
        "a 64 MiB guest that touched little writes little: {report:?}"
    );
    for how in [MemoryRestore::Lazy, MemoryRestore::Eager] {
        let (restored, after) = restore(&snap, how, false);
        assert_eq!(restored.state(), VmState::Created);
        restored.start().expect("start restored");
        let last = *ticks(&before).last().expect("ticks before");
        after.wait_for(&format!("tick {}\n", last + 30), Duration::from_secs(30));
        restored.shutdown();
        // The saved output and the restored output are one unbroken count (a line the pause
        // cut in two is completed by the restored guest).
        let joined = format!("{before}{}", after.text());
        let all = ticks(&joined);
        for pair in all.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "{how:?}: count broke: {joined}");
        }
        assert!(all.len() as u64 > last + 29, "{how:?}");
    }
}

#[test]
fn snapshot_of_a_running_vm_keeps_it_running_and_two_restores_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = dir.path().join("snap");
    let (vm, out) = counting_vm(dir.path(), 2, 20);
    vm.snapshot(&snap).expect("snapshot while running");
    assert_eq!(vm.state(), VmState::Running, "a running VM runs on");
    let n = ticks(&out.text()).len();
    out.wait_for(&format!("tick {}\n", n + 20), Duration::from_secs(30));
    vm.shutdown();

    let mut runs = Vec::new();
    for _ in 0..2 {
        let (restored, after) = restore(&snap, MemoryRestore::Lazy, true);
        restored.start().expect("start");
        assert_eq!(restored.state(), VmState::Paused, "restored paused");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(after.text(), "", "a VM restored paused runs nothing");
        restored.resume().expect("resume");
        // The first line may be the end of one the snapshot cut; wait for a whole one.
        let start = Instant::now();
        let first = loop {
            if let Some(t) = ticks(&after.text()).first() {
                break *t;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no tick after restore"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        after.wait_for(&format!("tick {}\n", first + 50), Duration::from_secs(30));
        restored.shutdown();
        let t = ticks(&after.text());
        runs.push(t[..50].to_vec());
    }
    assert_eq!(
        runs[0], runs[1],
        "two restores of one snapshot continue identically"
    );
}

#[test]
fn a_snapshot_of_a_vm_that_has_not_started_or_has_stopped_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vm, _out) = guest_vm(dir.path(), "idle", 1);
    let e = vm.snapshot(&dir.path().join("s")).expect_err("created");
    assert_eq!(e.to_string(), "cannot snapshot a VM that is created");
    vm.start().expect("start");
    vm.shutdown();
    let e = vm.snapshot(&dir.path().join("s")).expect_err("stopped");
    assert_eq!(e.to_string(), "cannot snapshot a VM that is stopped");
}

// ------------------------------------------------------------------ churn

/// Builds and starts a churning VM.
fn start_churn(config: VmConfig) -> (Vm, Capture) {
    let (vm, out) = build_vm(config);
    vm.start().expect("start");
    (vm, out)
}

/// What a snapshot of a paused churning VM saved: its output and last line at snapshot
/// time, and a copy of its disk image as it was then.
struct Saved {
    snap: PathBuf,
    text: String,
    last: Line,
    disk: PathBuf,
}

/// Once every sector in use has been written (so the restored guest's disk checks read
/// what the saved one wrote), pauses the churning VM, snapshots it to `dir/snap` and copies
/// its disk image while still paused. The VM stays paused.
fn pause_and_snapshot(vm: &Vm, out: &Capture, dir: &Path, disk: &Path) -> Saved {
    wait_for_i(out, SECTORS + 2 * EVERY);
    vm.pause().expect("pause");
    let snap = dir.join("snap");
    let report = vm.snapshot(&snap).expect("snapshot");
    assert_eq!(vm.state(), VmState::Paused, "a paused VM stays paused");
    let ext = disk
        .extension()
        .expect("extension")
        .to_str()
        .expect("utf-8");
    let saved = dir.join(format!("saved.{ext}"));
    std::fs::copy(disk, &saved).expect("copy the disk image");
    let text = out.text();
    let last = churn_lines(&text).pop().expect("lines before the snapshot");
    eprintln!("snapshot at i={}: {report:?}", last.i);
    Saved {
        snap,
        text,
        last,
        disk: saved,
    }
}

/// A churning VM with a raw disk in `dir`, snapshotted as [`pause_and_snapshot`] does, then
/// stopped and dropped.
fn saved_churn(dir: &Path) -> Saved {
    let disk = dir.join("disk.raw");
    let (vm, out) = start_churn(churn_config(dir, &disk));
    let saved = pause_and_snapshot(&vm, &out, dir, &disk);
    stop(&vm, &out);
    saved
}

/// A new VM restored from `saved` onto `disk` (a fresh copy of the saved image, named
/// `name` beside it), its output appended to the saved output.
fn restore_churn(
    saved: &Saved,
    name: &str,
    how: MemoryRestore,
    disk_format_ok: impl Fn(&Path),
) -> (Vm, Capture, PathBuf) {
    let disk = saved.disk.with_file_name(name);
    std::fs::copy(&saved.disk, &disk).expect("copy the saved disk image");
    disk_format_ok(&disk);
    let out = Capture::with_text(&saved.text);
    let vm = restore_to(
        &saved.snap,
        &out,
        RestoreOptions {
            memory: how,
            disks: vec![("disk0".into(), disk.clone())],
            ..RestoreOptions::default()
        },
    )
    .expect("restore");
    (vm, out, disk)
}

/// The joined output (saved, then restored) is one unbroken sequence of lines from
/// i = EVERY, every checksum the one its `i` defines, a disk write per iteration, and the
/// restored guest printed at least `after` lines past the snapshot.
fn check_continued(text: &str, saved: &Saved, after: u64) -> Vec<Line> {
    let lines = churn_lines(text);
    assert_eq!(lines[0].i, EVERY, "{:?}", lines[0]);
    check_lines(&lines, EVERY, true);
    let last = lines.last().expect("lines").i;
    assert!(
        last >= saved.last.i + after * EVERY,
        "the restored guest got to i={last}, the snapshot was at i={}",
        saved.last.i
    );
    lines
}

/// A raw base image and a qcow2 overlay on it, the overlay as the VM's disk.
fn qcow2_overlay_config(dir: &Path) -> (VmConfig, PathBuf) {
    let base = dir.join("base.raw");
    let mut config = churn_config(dir, &base);
    let overlay = dir.join("disk.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&overlay)
        .output()
        .expect("run qemu-img (it is installed on the CI host)");
    assert!(
        out.status.success(),
        "qemu-img create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    config.disks[0] = DiskConfig {
        path: overlay.clone(),
        format: Some(DiskFormat::Qcow2),
        readonly: false,
    };
    (config, overlay)
}

/// Snapshot with disk I/O in flight, the saved VM runs on and is dropped, a new VM
/// restored from the snapshot (lazily) onto the disk as it was continues the guest.
fn churn_restores_and_continues(qcow2: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, disk) = if qcow2 {
        qcow2_overlay_config(dir.path())
    } else {
        let disk = dir.path().join("disk.raw");
        (churn_config(dir.path(), &disk), disk)
    };
    let check = |path: &Path| {
        if qcow2 {
            qemu_img_check(path);
        }
    };
    let started = Instant::now();
    let (vm, out) = start_churn(config);
    let saved = pause_and_snapshot(&vm, &out, dir.path(), &disk);
    // The saved VM runs on unharmed by its snapshot, then goes away.
    vm.resume().expect("resume");
    wait_for_i(&out, saved.last.i + 5 * EVERY);
    stop(&vm, &out);
    drop(vm);
    check_lines(&churn_lines(&out.text()), EVERY, true);
    check(&disk);

    let (restored, after, restored_disk) =
        restore_churn(&saved, "restored.img", MemoryRestore::Lazy, check);
    restored.start().expect("start restored");
    wait_for_i(&after, saved.last.i + 20 * EVERY);
    stop(&restored, &after);
    drop(restored);
    let lines = check_continued(&after.text(), &saved, 20);
    check(&restored_disk);
    eprintln!(
        "qcow2={qcow2}: snapshot at i={}, restored to i={} in {:?}",
        saved.last.i,
        lines.last().map_or(0, |l| l.i),
        started.elapsed()
    );
}

#[test]
fn a_churning_guest_with_a_raw_disk_continues_after_restore() {
    churn_restores_and_continues(false);
}

#[test]
fn a_churning_guest_with_a_qcow2_overlay_continues_after_restore_and_the_images_check_clean() {
    churn_restores_and_continues(true);
}

#[test]
fn two_restores_of_one_churn_snapshot_continue_identically() {
    // Lines past the snapshot that both restored guests must print identically.
    const N: u64 = 30;
    let dir = tempfile::tempdir().expect("tempdir");
    let saved = saved_churn(dir.path());
    let until = saved.last.i + N * EVERY;
    let mut runs = Vec::new();
    for (k, how) in [MemoryRestore::Lazy, MemoryRestore::Eager]
        .into_iter()
        .enumerate()
    {
        let (restored, after, _) = restore_churn(&saved, &format!("run{k}.raw"), how, |_| {});
        restored.start().expect("start restored");
        wait_for_i(&after, until);
        stop(&restored, &after);
        let text = after.text();
        check_continued(&text, &saved, N);
        // What the restored guest printed, up to the end of its line at `until`.
        let printed = &text[saved.text.len()..];
        let at = printed
            .find(&format!("churn i={until} "))
            .expect("the line at `until`");
        let end = at + printed[at..].find('\n').expect("a whole line");
        runs.push(printed[..=end].to_owned());
    }
    assert_eq!(
        runs[0], runs[1],
        "two restores of one snapshot (lazy, eager) continue identically"
    );
}

#[test]
fn a_snapshot_of_a_running_churning_guest_restores_to_a_consistent_guest() {
    // Memory only (no disk, see the module doc): a snapshot while running, the VM runs on.
    const EVERY_NO_DISK: u64 = 4096;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = churn_config(dir.path(), &dir.path().join("unused.raw"));
    config.disks.clear();
    config.payload.cmdline = format!("churn {} {EVERY_NO_DISK} 0", common::churn::PAGES);
    let (vm, out) = start_churn(config);
    wait_for_i(&out, 3 * EVERY_NO_DISK);
    let snap = dir.path().join("snap");
    vm.snapshot(&snap).expect("snapshot while running");
    assert_eq!(vm.state(), VmState::Running, "a running VM runs on");
    let at_return = last_line(&out).expect("lines").i;
    wait_for_i(&out, at_return + 5 * EVERY_NO_DISK);
    stop(&vm, &out);
    drop(vm);
    let before = churn_lines(&out.text());
    check_lines(&before, EVERY_NO_DISK, false);

    let after = Capture::default();
    let restored = restore_to(&snap, &after, RestoreOptions::default()).expect("restore");
    restored.start().expect("start restored");
    let start = Instant::now();
    // The first output may end a line the snapshot cut: skip to the first whole line.
    let whole = || {
        let text = after.text();
        if text.starts_with("churn ") {
            text
        } else {
            text.split_once('\n')
                .map_or("", |(_, rest)| rest)
                .to_owned()
        }
    };
    let lines = loop {
        let lines = churn_lines(&whole());
        if lines.len() >= 10 {
            break lines;
        }
        assert!(
            start.elapsed() < common::PATIENCE,
            "the restored guest printed:\n{}",
            after.text()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    stop(&restored, &after);
    check_lines(&lines, EVERY_NO_DISK, false);
    // The restored guest starts where the saved one was at the snapshot: no later than the
    // saved guest's line when snapshot() returned, and right after a line the saved guest
    // printed.
    let first = lines[0].i;
    assert!(
        first <= at_return + EVERY_NO_DISK,
        "restored at i={first}, the snapshot returned at i={at_return}"
    );
    assert!(
        before.iter().any(|l| l.i + EVERY_NO_DISK == first),
        "the restored guest's first line i={first} does not follow any saved line"
    );
}

#[test]
fn a_restore_onto_a_disk_of_another_size_fails_naming_it_and_runs_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let saved = saved_churn(dir.path());
    for bytes in [2 * DISK_BYTES, DISK_BYTES / 2] {
        let other = dir.path().join("other.raw");
        std::fs::copy(&saved.disk, &other).expect("copy");
        std::fs::File::options()
            .write(true)
            .open(&other)
            .and_then(|f| f.set_len(bytes))
            .expect("resize");
        let image = std::fs::read(&other).expect("read");
        let after = Capture::default();
        let e = restore_to(
            &saved.snap,
            &after,
            RestoreOptions {
                disks: vec![("disk0".into(), other.clone())],
                ..RestoreOptions::default()
            },
        )
        .expect_err("a disk of another size");
        let msg = e.to_string();
        for want in [
            "disk0".to_owned(),
            format!("{} sectors", DISK_BYTES / 512),
            format!("{} sectors", bytes / 512),
        ] {
            assert!(msg.contains(&want), "{want:?} not in {msg:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(after.text(), "", "nothing ran");
        assert_eq!(
            std::fs::read(&other).expect("read"),
            image,
            "disk untouched"
        );
    }
}

// ------------------------------------------------------------ with a tap

/// Frames the host sends the guest per burst.
const RX_BURST: u64 = 20;

/// Sends `n` frames to the guest, numbered on from `next`.
fn send_burst(sock: &PacketSocket, next: &mut u64, n: u64) {
    for _ in 0..n {
        sock.send_seq(*next);
        *next += 1;
    }
}

#[test]
fn a_churning_guest_with_a_tap_continues_its_traffic_after_restore() {
    netcommon::require_root("a_churning_guest_with_a_tap_continues_its_traffic_after_restore");
    netcommon::in_netns(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("disk.raw");
        let mut config = churn_config(dir.path(), &disk);
        add_nic(&mut config);
        let started = Instant::now();
        // The VMM creates the tap (in this thread's namespace).
        let (vm, out) = build_vm(config);
        let sock = Arc::new(PacketSocket::open(TAP));
        let reader = TxReader::spawn(sock.clone());
        vm.start().expect("start");
        let mut next = 0;
        for _ in 0..3 {
            send_burst(&sock, &mut next, RX_BURST);
            let l = last_line(&out).map_or(0, |l| l.i);
            wait_for_i(&out, l + 2 * EVERY);
        }
        // Everything sent so far has arrived; then traffic in flight both ways at the
        // snapshot: the guest sends a frame every 16 iterations, and a burst to it has just
        // been sent.
        wait_for_rx(&out, next, last_line);
        send_burst(&sock, &mut next, RX_BURST);
        let saved = pause_and_snapshot(&vm, &out, dir.path(), &disk);
        let sent_before = next;
        // Everything the saved VM put on the tap, read before the tap goes away with it.
        let seen_before = reader.finish(tap_rx_packets());
        drop(sock);
        stop(&vm, &out);
        drop(vm);

        // The restored VM opens the tap anew (same name, from the snapshot's spec); frames
        // still queued in the old tap at the snapshot were not the guest's yet and are not
        // in the snapshot: they are lost with the old tap.
        let (restored, after, _) =
            restore_churn(&saved, "restored.raw", MemoryRestore::Lazy, |_| {});
        let sock = Arc::new(PacketSocket::open(TAP));
        let reader = TxReader::spawn(sock.clone());
        restored.start().expect("start restored");
        for _ in 0..3 {
            send_burst(&sock, &mut next, RX_BURST);
            let l = last_line_allowing_rx_gaps(&after).map_or(0, |l| l.i);
            wait_for_i_with(&after, l + 2 * EVERY, last_line_allowing_rx_gaps);
        }
        // At most one gap in what the guest received: at the first frame sent after the
        // restore, over frames of the last burst before the snapshot that had not reached
        // the guest then (still in the old tap).
        let (_, gaps) = parse(&after.text());
        let lost = match gaps.as_slice() {
            [] => 0,
            [gap] => {
                assert_eq!(gap.got, sent_before, "{gap:?}");
                // Reported by the restored guest, past its saved line.
                assert!(gap.i >= saved.last.i, "{gap:?}, {:?}", saved.last);
                assert!(
                    !saved.text.contains("RX-GAP"),
                    "a gap before the snapshot:\n{}",
                    saved.text
                );
                assert!(
                    saved.last.rx <= Some(gap.want)
                        && sent_before - RX_BURST <= gap.want
                        && gap.want < gap.got,
                    "{gap:?}, {:?}",
                    saved.last
                );
                gap.got - gap.want
            }
            more => panic!("gaps {more:?}\n{}", after.text()),
        };
        // Every frame sent after the restore arrives.
        wait_for_rx(&after, next - lost, last_line_allowing_rx_gaps);
        let last = last_line_allowing_rx_gaps(&after).expect("lines").i;
        wait_for_i_with(&after, last + 2 * EVERY, last_line_allowing_rx_gaps);
        stop(&restored, &after);

        let on_tap = tap_rx_packets();
        let tx = last_line_allowing_rx_gaps(&after)
            .and_then(|l| l.tx)
            .expect("tx count");
        let seen_after = reader.finish(on_tap);
        drop(restored);

        // The guest's frames, on the old tap and then on the new one, are its frames 0, 1, …
        // once each, in order: none the restored guest sent again, none lost at the snapshot.
        let all: Vec<u64> = seen_before.iter().chain(&seen_after).copied().collect();
        for (n, &seq) in all.iter().enumerate() {
            assert_eq!(
                seq, n as u64,
                "the guest's frames across the restore (before: {seen_before:?}, after: {seen_after:?})"
            );
        }
        assert!(!seen_before.is_empty() && !seen_after.is_empty());
        // All but those still in the 16-entry transmit ring at the guest's last line.
        assert!(
            all.len() as u64 + 16 >= tx,
            "{} frames on the taps, the guest sent {tx}",
            all.len()
        );
        let (lines, _) = parse(&after.text());
        assert_eq!(lines[0].i, EVERY, "{:?}", lines[0]);
        check_lines(&lines, EVERY, true);
        check_tx_counts(&lines);
        eprintln!(
            "snapshot at i={}, {} frames from the guest before, {} after; {sent_before} sent to it before, {} after, {lost} lost with the old tap; {:?}",
            saved.last.i,
            seen_before.len(),
            seen_after.len(),
            next - sent_before,
            started.elapsed()
        );
    });
}
