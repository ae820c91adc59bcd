//! Fuzz target: the virtio-pci transport's registers.
//!
//! A fresh `VirtioPciDevice` wrapping a virtio-blk (1 MiB raw disk in /dev/shm) gets a sequence
//! of guest accesses decoded from the input: BAR0 reads and writes of 1, 2, 4 or 8 bytes (biased
//! towards the common, ISR, device, notify and MSI-X regions), configuration-space reads and
//! writes, and writes of guest memory (so rings can become valid and the worker run). Nothing
//! may panic — including the device worker, which a DRIVER_OK can start.

#![no_main]

mod common;

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vireo_devices::pci::PciDevice;
use vireo_devices::virtio::block::VirtioBlock;
use vireo_devices::virtio::{GuestMemory, VirtioPciDevice};
use vireo_devices::BusDevice;
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 64 * 1024;

struct Ops<'a>(&'a [u8]);

impl Ops<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
}

fn bar_offset(region: u8, off: u16) -> u64 {
    let o = u64::from(off);
    match region % 8 {
        0 => o % 0x40,
        1 => 0x100 + o % 8,
        2 => 0x200 + o % 0x80,
        3 => 0x1000 + o % 16,
        4 => 0x2000 + o % 0x40,
        5 => 0x3000 + o % 16,
        6 => o, // anywhere, including past the BAR
        _ => u64::MAX - o % 16,
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let vectors = Arc::new(common::TwoVectors::default());
    let blk = VirtioBlock::new(common::raw_disk("pci"), 0);
    let Ok(mut dev) = VirtioPciDevice::new(Box::new(blk), mem.clone(), 0xc000_0000, vectors) else {
        return;
    };
    let mut ops = Ops(data);
    while let Some([op, a, b, c]) = ops.take::<4>() {
        let size = 1usize << (op >> 6);
        let off = u16::from_le_bytes([b, c]);
        match op & 0x7 {
            0 => {
                let mut buf = [0u8; 8];
                dev.read(bar_offset(a, off), &mut buf[..size]);
            }
            1 | 2 => {
                let Some(v) = ops.take::<8>() else { break };
                dev.write(bar_offset(a, off), &v[..size]);
            }
            3 => {
                let Some(v) = ops.take::<8>() else { break };
                dev.write_config(usize::from(off) % 0x1100, &v[..size]);
            }
            4 => {
                let mut buf = [0u8; 8];
                dev.config()
                    .read(usize::from(off) % 0x1100, &mut buf[..size]);
            }
            5 => {
                // Guest memory: 8 bytes anywhere in the low 64 KiB (rings, buffers).
                let Some(v) = ops.take::<8>() else { break };
                let at = u64::from(off) % (MEM_SIZE as u64 - 8);
                let _ = mem.write_slice(&v, GuestAddress(at));
            }
            6 => {
                // A notify of queue 0 (as an ioeventfd would deliver it).
                dev.write(0x1000, &[0, 0]);
            }
            _ => {
                let _ = dev.status();
            }
        }
    }
    // Dropping the device stops any worker and flushes the disk.
    drop(dev);
});
