//! Snapshot and restore through the library API, with the test guest under real KVM: the
//! restored guest continues exactly where the saved one stopped (its own counter says so),
//! in a VM built from the snapshot alone, with memory mapped lazily or read eagerly, and two
//! restores of one snapshot print the same thing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Capture;

use vireo_vmm::snapshot::{self, MemoryRestore, RestoreOptions};
use vireo_vmm::{Vm, VmBuilder, VmConfig, VmState};

fn guest_vm(dir: &Path, cmdline: &str, vcpus: u8) -> (Vm, Capture) {
    let kernel = dir.join("guest.elf");
    vireo_testguest::write_to(&kernel).expect("write guest");
    let mut config = VmConfig::new(&kernel);
    config.memory_mib = 64;
    config.vcpus = vcpus;
    config.payload.cmdline = cmdline.into();
    let capture = Capture::default();
    let vm = VmBuilder::new(config)
        .serial_writer(Box::new(capture.clone()))
        .build()
        .expect("build VM");
    (vm, capture)
}

/// Every complete `tick N` line, in order.
fn ticks(text: &str) -> Vec<u64> {
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .filter_map(|l| l.strip_prefix("tick "))
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn restore(dir: &Path, how: MemoryRestore, paused: bool) -> (Vm, Capture) {
    let capture = Capture::default();
    let vm = snapshot::restore(
        dir,
        RestoreOptions {
            memory: how,
            paused,
            serial_writer: Some(Box::new(capture.clone())),
            ..RestoreOptions::default()
        },
    )
    .expect("restore");
    (vm, capture)
}

#[test]
fn a_restored_guest_continues_its_count_exactly_where_it_was_saved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = dir.path().join("snap");
    let (vm, out) = guest_vm(dir.path(), "count 1000000 1000000", 1);
    vm.start().expect("start");
    out.wait_for("tick 40\n", Duration::from_secs(30));
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
    let (vm, out) = guest_vm(dir.path(), "count 1000000 1000000", 2);
    vm.start().expect("start");
    out.wait_for("tick 20\n", Duration::from_secs(30));
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
            assert!(start.elapsed() < Duration::from_secs(30), "no tick after restore");
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
