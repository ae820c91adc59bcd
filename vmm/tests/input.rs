//! The virtio-input tablet of a VM with a VNC console, under real KVM: the test guest's own
//! driver finds it, reads its name, posts event buffers, and prints the events the host
//! injects through the VM's `TabletHandle` (also while the VM is paused).

mod common;

use std::sync::atomic::Ordering;

use common::{build_vm, guest_config, Capture, PATIENCE};
use vireo_vmm::{ExitReason, Vm};

/// A 64 MiB test-guest VM with a VNC console (so a tablet) on a free port, running `cmdline`.
fn tablet_vm(dir: &std::path::Path, cmdline: &str) -> (Vm, Capture) {
    let mut config = guest_config(dir, cmdline, 64);
    config.vnc = Some(vireo_spec::VncConfig::new(
        "127.0.0.1:0".parse().expect("address"),
    ));
    build_vm(config)
}

#[test]
fn the_guest_lists_the_tablet_as_an_input_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vm, out) = tablet_vm(dir.path(), "virtio-list");
    vm.start().expect("start");
    assert_eq!(
        vm.wait(),
        ExitReason::DebugExit { status: 0 },
        "{}",
        out.text()
    );
    let text = out.text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("virtio slot=") && l.contains(" type=input ")),
        "{text}"
    );
}

#[test]
fn a_vm_without_a_vnc_console_has_no_tablet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vm, _out) = build_vm(guest_config(dir.path(), "exit 0", 64));
    assert!(vm.tablet().is_none());
}

#[test]
fn pointer_events_reach_the_guest_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vm, out) = tablet_vm(dir.path(), "input-events 8");
    let tablet = vm.tablet().expect("the VM has a tablet");
    // Before the driver starts the device, reports are dropped (and counted).
    tablet.pointer(1, 1, 0b111);
    assert_eq!(
        tablet.counters().dropped_inactive.load(Ordering::Relaxed),
        1
    );
    vm.start().expect("start");
    out.wait_for("input ready\n", PATIENCE);
    tablet.pointer(100, 200, 0b001);
    tablet.pointer(300, 0x7fff, 0b000);
    assert_eq!(
        vm.wait(),
        ExitReason::DebugExit { status: 0 },
        "{}",
        out.text()
    );
    let text = out.text();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("input ")).collect();
    assert_eq!(
        lines,
        [
            "input name=Vireo Tablet",
            "input ready",
            "input type=3 code=0 value=100",
            "input type=3 code=1 value=200",
            "input type=1 code=272 value=1",
            "input type=0 code=0 value=0",
            "input type=3 code=0 value=300",
            "input type=3 code=1 value=32767",
            "input type=1 code=272 value=0",
            "input type=0 code=0 value=0",
            "input done",
        ],
        "{text}"
    );
    assert_eq!(tablet.counters().events.load(Ordering::Relaxed), 8);
    let devices = vireo_vmm::api::devices(&vm);
    let last = devices.last().expect("devices");
    assert_eq!(
        (last.id.as_str(), last.kind.as_str(), last.bdf.as_str()),
        ("tablet0", "virtio-input", "0000:00:01.0")
    );
    assert!(vm
        .device_counters()
        .iter()
        .any(|(name, c)| *name == "virtio-input" && c.contains(&("events", 8))));
    assert_eq!(tablet.counters().malformed.load(Ordering::Relaxed), 0);
}

#[test]
fn events_injected_while_paused_arrive_after_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vm, out) = tablet_vm(dir.path(), "input-events 6");
    let tablet = vm.tablet().expect("the VM has a tablet");
    vm.start().expect("start");
    out.wait_for("input ready\n", PATIENCE);
    tablet.pointer(5, 6, 0);
    out.wait_for("input type=0 code=0 value=0\n", PATIENCE);
    vm.pause().expect("pause");
    tablet.pointer(7, 8, 0);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(tablet.pending(), 3, "delivered while paused");
    vm.resume().expect("resume");
    assert_eq!(
        vm.wait(),
        ExitReason::DebugExit { status: 0 },
        "{}",
        out.text()
    );
    let text = out.text();
    let events: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("input type="))
        .collect();
    assert_eq!(
        events,
        [
            "input type=3 code=0 value=5",
            "input type=3 code=1 value=6",
            "input type=0 code=0 value=0",
            "input type=3 code=0 value=7",
            "input type=3 code=1 value=8",
            "input type=0 code=0 value=0",
        ],
        "{text}"
    );
}
