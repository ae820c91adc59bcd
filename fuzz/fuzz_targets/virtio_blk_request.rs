//! Fuzz target: virtio-blk requests from arbitrary descriptor chains.
//!
//! The input is a small guest memory image (see `common/mod.rs`): a descriptor table, an avail
//! ring and buffer bytes. Every chain offered goes through the steps the device worker runs —
//! `ChainLayout::parse`, `request::parse`, `request::execute` (= `perform` + `finish`; or
//! `finish` with IOERR) and `add_used` — one chain at a time (the worker does each step for a
//! batch of chains before the next), against a 1 MiB raw disk in /dev/shm. Nothing may panic, and the used length
//! never exceeds the chain's writable bytes.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vireo_devices::virtio::block::request::{self, Limits, RequestError};
use vireo_devices::virtio::block::{MAX_RANGES, MAX_RANGE_SECTORS, SEG_MAX};
use vireo_devices::virtio::chain::{self, ChainLayout};
use virtio_queue::{QueueOwnedT, QueueT};

fuzz_target!(|data: &[u8]| {
    let mem = common::memory();
    let mut queue = common::load(&mem, data);
    let disk = common::raw_disk("blk");
    let limits = Limits {
        max_ranges: MAX_RANGES,
        max_range_sectors: MAX_RANGE_SECTORS,
    };
    let mut layout = ChainLayout::default();
    let mut slices = Vec::new();
    for _ in 0..common::MAX_CHAINS {
        let Ok(mut iter) = queue.iter(&mem) else {
            break; // a corrupt ring: the worker sets NEEDS_RESET here
        };
        let Some(chain) = iter.next() else {
            break;
        };
        let head = chain.head_index();
        let parsed = layout
            .parse(chain, &mem, SEG_MAX as usize + 2)
            .map_err(RequestError::from)
            .and_then(|()| request::parse(&layout, &mem));
        let outcome = match parsed {
            Ok(req) => request::execute(&req, &layout, &mem, disk.as_ref(), &limits, &mut slices),
            Err(_) => request::finish(&layout, &mem, request::status::IOERR, 0),
        };
        assert!(
            u64::from(outcome.used_len) <= chain::total(&layout.writable),
            "used length {} beyond the chain's writable bytes",
            outcome.used_len
        );
        if queue.add_used(&mem, head, outcome.used_len).is_err() {
            break;
        }
    }
});
