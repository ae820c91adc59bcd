//! Fuzzes kernel-image handling: format probing and the ring-3 user-mode ELF
//! loader, on arbitrary bytes, into a small guest memory. Must never panic
//! or write outside guest memory.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vireo_vmm::boot::{probe, user_elf};
use vireo_vmm::memory::{create_guest_memory, MIB};

fuzz_target!(|data: &[u8]| {
    let _ = probe(data);
    let memory_size = 8 * MIB;
    let Ok(mem) = create_guest_memory(memory_size) else {
        return;
    };
    let _ = user_elf::load(&mem, memory_size, Path::new("fuzz.elf"), data, "fuzz");
});
