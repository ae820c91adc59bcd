//! The PS/2 keyboard under real KVM: key events sent through
//! [`vireo_vmm::Vm::keyboard`] reach the ring-3 test guest (`kbd` scenario,
//! polling the i8042) as set-1 scancodes, in order, none lost or repeated;
//! keys the guest has not read yet survive a snapshot and restore.

mod common;

use std::time::Duration;

use common::{guest_vm, Capture};
use vireo_devices::display::Key;
use vireo_vmm::snapshot::{self, RestoreOptions};
use vireo_vmm::ExitReason;

/// Every `kbd scancode=0x..` byte the guest printed, in order.
fn scancodes(text: &str) -> Vec<u8> {
    text.lines()
        .filter_map(|l| l.strip_prefix("kbd scancode=0x"))
        .map(|h| u8::from_str_radix(h, 16).expect("two hex digits"))
        .collect()
}

#[test]
fn injected_keys_reach_the_guest_as_set1_scancodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vm, out) = guest_vm(dir.path(), "kbd 6", 1);
    vm.start().expect("start");
    out.wait_for("kbd ready\n", Duration::from_secs(30));

    let keyboard = vm.keyboard();
    // 'a' as a keysym, Up as QEMU's extended keycode.
    assert!(keyboard.key(Key::Keysym(u32::from(b'a')), true));
    assert!(keyboard.key(Key::Keysym(u32::from(b'a')), false));
    assert!(keyboard.key(Key::Scancode(0xc8), true));
    assert!(keyboard.key(Key::Scancode(0xc8), false));

    assert_eq!(vm.wait(), ExitReason::DebugExit { status: 0 });
    let text = out.text();
    assert!(text.contains("kbd done\n"), "{text}");
    assert_eq!(
        scancodes(&text),
        [0x1e, 0x9e, 0xe0, 0x48, 0xe0, 0xc8],
        "guest output:\n{text}"
    );
    assert_eq!(keyboard.dropped_events(), 0);
}

#[test]
fn keys_the_guest_has_not_read_survive_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = dir.path().join("snap");
    let (vm, out) = guest_vm(dir.path(), "kbd 6", 1);
    vm.start().expect("start");
    out.wait_for("kbd ready\n", Duration::from_secs(30));
    assert!(vm.keyboard().key(Key::Keysym(u32::from(b'a')), true));
    out.wait_for("kbd scancode=0x1e\n", Duration::from_secs(30));

    // Queued while the guest cannot read: saved with the controller.
    vm.pause().expect("pause");
    let keyboard = vm.keyboard();
    assert!(keyboard.key(Key::Keysym(u32::from(b'a')), false));
    assert!(keyboard.key(Key::Keysym(0xff52), true)); // Up
    assert!(keyboard.key(Key::Keysym(0xff52), false));
    vm.snapshot(&snap).expect("snapshot");
    let before = out.text();
    vm.shutdown();
    drop(vm);

    let after = Capture::default();
    let restored = snapshot::restore(
        &snap,
        RestoreOptions {
            serial_writer: Some(Box::new(after.clone())),
            ..RestoreOptions::default()
        },
    )
    .expect("restore");
    restored.start().expect("start restored");
    assert_eq!(restored.wait(), ExitReason::DebugExit { status: 0 });
    let joined = format!("{before}{}", after.text());
    assert_eq!(
        scancodes(&joined),
        [0x1e, 0x9e, 0xe0, 0x48, 0xe0, 0xc8],
        "guest output:\n{joined}"
    );
    assert!(joined.contains("kbd done\n"), "{joined}");
}
