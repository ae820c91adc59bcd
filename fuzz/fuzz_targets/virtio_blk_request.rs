//! Fuzz target: virtio-blk requests from arbitrary descriptor chains.
//!
//! The input is a small guest memory image (see `common/mod.rs`): a descriptor table, an avail
//! ring and buffer bytes. Every chain offered is run exactly as the device worker runs it —
//! `ChainLayout::parse`, `request::parse`, `request::execute` (or `finish` with IOERR) and
//! `add_used` — against a 1 MiB raw disk in /dev/shm. Nothing may panic, and the used length
//! never exceeds the chain's writable bytes.

#![no_main]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vireo_block::{create_raw, open_disk, DiskBackend, Format, OpenOptions};
use vireo_devices::virtio::block::request::{self, Limits, RequestError};
use vireo_devices::virtio::block::{MAX_RANGES, MAX_RANGE_SECTORS, SEG_MAX};
use vireo_devices::virtio::chain::{self, ChainLayout};
use virtio_queue::{QueueOwnedT, QueueT};

fn disk() -> &'static dyn DiskBackend {
    static DISK: OnceLock<Box<dyn DiskBackend>> = OnceLock::new();
    DISK.get_or_init(|| {
        let dir = PathBuf::from(format!("/dev/shm/vireo-fuzz-blk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz dir");
        let path = dir.join("disk.raw");
        let _ = std::fs::remove_file(&path);
        create_raw(&path, 1 << 20).expect("create raw disk");
        let opts = OpenOptions {
            format: Some(Format::Raw),
            serial: Some("fuzz".into()),
            ..OpenOptions::default()
        };
        open_disk(&path, &opts).expect("open raw disk")
    })
    .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let mem = common::memory();
    let mut queue = common::load(&mem, data);
    let disk = disk();
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
            Ok(req) => request::execute(&req, &layout, &mem, disk, &limits, &mut slices),
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
