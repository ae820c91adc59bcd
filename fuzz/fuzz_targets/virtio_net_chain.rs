//! Fuzz target: virtio-net chain validation from arbitrary descriptor chains.
//!
//! Every chain offered (see `common/mod.rs` for the input layout) is parsed as the net worker
//! parses it and checked as a transmit and as a receive chain with the same functions the
//! worker uses (`validate_tx`, `validate_rx`), in guest memory of two adjacent regions.
//! Properties: no panic; every segment of a valid chain maps to one host slice (what the worker
//! builds its iovecs from, so a buffer spanning the region boundary must have been refused);
//! a valid receive chain can take the `num_buffers` field.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vireo_devices::virtio::chain::{self, ChainLayout, Segment};
use vireo_devices::virtio::net::{validate_rx, validate_tx, MAX_SEGMENTS};
use vireo_devices::virtio::GuestMemory;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemoryBackend;

fn all_map(mem: &GuestMemory, segs: &[Segment]) {
    for s in segs.iter().filter(|s| s.len > 0) {
        assert!(
            mem.get_slice(s.addr, s.len as usize).is_ok(),
            "validated segment {s:?} does not map"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = common::memory();
    let mut queue = common::load(&mem, data);
    let mut layout = ChainLayout::default();
    for _ in 0..common::MAX_CHAINS {
        let Ok(mut iter) = queue.iter(&mem) else {
            break;
        };
        let Some(chain) = iter.next() else {
            break;
        };
        let head = chain.head_index();
        let parsed = layout.parse(chain, &mem, MAX_SEGMENTS).is_ok();
        if parsed && validate_tx(&layout).is_some() {
            all_map(&mem, &layout.readable);
        }
        let rx = parsed && validate_rx(&layout);
        if rx {
            all_map(&mem, &layout.writable);
            assert!(chain::write_bytes(
                &mem,
                &layout.writable,
                10,
                &1u16.to_le_bytes()
            ));
        }
        if queue.add_used(&mem, head, 0).is_err() {
            break;
        }
    }
});
