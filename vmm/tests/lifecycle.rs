//! The VM lifecycle through the library API, with the test guest under real
//! KVM: pause and resume keep the guest's counter going with no lost or
//! duplicated output, pause quiesces the virtio-blk worker mid-benchmark
//! (no request taken, no guest page written while paused) and the benchmark
//! still completes every request, and host-side shutdown stops vCPUs
//! wherever they are.

mod common;

use std::time::{Duration, Instant};

use common::{build_vm, guest_vm, take_device_dirty, ticks};
use vireo_vmm::{ExitReason, Vm, VmConfig, VmState};

#[test]
fn pause_and_resume_keep_the_guest_counting_without_loss_or_duplication() {
    let dir = tempfile::tempdir().expect("tempdir");
    // ~0.3 ms between ticks on a 3 GHz TSC.
    let (vm, out) = guest_vm(dir.path(), "count 1000000 1000000", 1);
    assert_eq!(vm.state(), VmState::Created);
    vm.start().expect("start");
    assert_eq!(vm.state(), VmState::Running);
    out.wait_for("tick 30\n", Duration::from_secs(30));

    for round in 0..3 {
        vm.pause().expect("pause");
        assert_eq!(vm.state(), VmState::Paused);
        let at_pause = out.text();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            out.text(),
            at_pause,
            "no output while paused (round {round})"
        );
        assert!(vm.pause().is_err(), "pausing twice is refused");
        vm.resume().expect("resume");
        assert_eq!(vm.state(), VmState::Running);
        let last = *ticks(&at_pause).last().expect("some ticks");
        out.wait_for(&format!("tick {}\n", last + 20), Duration::from_secs(30));
    }

    assert_eq!(vm.shutdown(), ExitReason::Stopped);
    assert_eq!(vm.state(), VmState::Stopped);
    assert!(vm.resume().is_err(), "a stopped VM cannot resume");

    let seen = ticks(&out.text());
    assert!(seen.len() > 90, "counted {} ticks", seen.len());
    for (i, n) in seen.iter().enumerate() {
        assert_eq!(*n, i as u64, "tick lines are consecutive, no gap or repeat");
    }
}

#[test]
fn shutdown_while_paused_and_with_a_parked_application_processor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vm, out) = guest_vm(dir.path(), "idle", 2);
    vm.start().expect("start");
    out.wait_for("idle: ready\n", Duration::from_secs(30));
    vm.pause()
        .expect("pause with vCPU 1 waiting for SIPI inside KVM_RUN");
    assert_eq!(vm.shutdown(), ExitReason::Stopped);
    assert_eq!(vm.state(), VmState::Stopped);
}

#[test]
fn guest_exit_reason_is_reported_through_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vm, out) = guest_vm(dir.path(), "hello", 1);
    vm.start().expect("start");
    assert_eq!(vm.wait(), ExitReason::DebugExit { status: 0 });
    assert!(out.text().contains("hello: PASS"));
    assert!(vm.start().is_err(), "a VM starts once");
}

/// Requests the block device has taken so far (its `requests` counter).
fn blk_requests(vm: &Vm) -> u64 {
    vm.device_counters()
        .iter()
        .filter(|(name, _)| *name == "virtio-blk")
        .flat_map(|(_, c)| c.iter())
        .find(|(k, _)| *k == "requests")
        .map(|(_, v)| *v)
        .expect("virtio-blk requests counter")
}

#[test]
fn pause_quiesces_the_block_device_and_resume_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("guest.elf");
    vireo_testguest::write_to(&kernel).expect("write guest");
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .expect("disk image");
    let mut config = VmConfig::new(&kernel);
    config.memory_mib = 128;
    config.vcpus = 1;
    config.disks.push(vireo_vmm::DiskConfig {
        path: disk.clone(),
        format: Some(vireo_vmm::DiskFormat::Raw),
        readonly: false,
    });
    // Queue depth 16 of 4 KiB random writes: the device is busy whenever the
    // VM is paused.
    const REQUESTS: u64 = 20_000;
    config.payload.cmdline = format!("blk-bench 0 randwrite 4096 16 {REQUESTS} 32");
    let (vm, out) = build_vm(config);
    vm.start().expect("start");
    out.wait_for("bench-start", Duration::from_secs(30));

    let (mut rounds, mut worst) = (0, Duration::ZERO);
    while !out.text().contains("bench-done") && rounds < 200 {
        let t = Instant::now();
        vm.pause().expect("pause");
        worst = worst.max(t.elapsed());
        let requests = blk_requests(&vm);
        take_device_dirty(&vm);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(blk_requests(&vm), requests, "requests taken while paused");
        assert_eq!(
            take_device_dirty(&vm),
            0,
            "device wrote memory while paused"
        );
        vm.resume().expect("resume");
        rounds += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!("{rounds} pause/resume rounds, slowest Vm::pause {worst:?}");
    assert!(rounds >= 5, "the benchmark ended after {rounds} pauses");
    assert_eq!(vm.wait(), ExitReason::DebugExit { status: 0 });
    let text = out.text();
    assert!(
        text.contains(&format!("bench-done requests={REQUESTS} ")) && text.contains("errors=0"),
        "guest output:\n{text}"
    );
}
