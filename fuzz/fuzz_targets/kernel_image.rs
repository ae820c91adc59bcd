//! Fuzzes kernel-image handling end to end: format probing, the ring-3
//! user-mode ELF loader, the bzImage and ELF/PVH Linux loaders (with ACPI
//! tables and boot parameters), on arbitrary bytes written to a file and
//! loaded into a small guest memory. Must never panic or write outside
//! guest memory.

#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use vireo_vmm::boot::load_payload;
use vireo_vmm::memory::{create_guest_memory, MIB};
use vireo_vmm::PayloadConfig;

fuzz_target!(|data: &[u8]| {
    let memory_size = 16 * MIB;
    let Ok(mem) = create_guest_memory(memory_size) else {
        return;
    };
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.write_all(data).is_err() {
        return;
    }
    let payload = PayloadConfig {
        kernel: file.path().to_owned(),
        initramfs: None,
        cmdline: "console=ttyS0".into(),
    };
    let _ = load_payload(&mem, memory_size, &payload, 2);
});
