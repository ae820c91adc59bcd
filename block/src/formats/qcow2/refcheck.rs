//! Metadata consistency check run before a qcow2 image is opened writable.
//!
//! imago allocates clusters by trusting the refcounts: a cluster with refcount 0 is free. In a
//! damaged image whose header, refcount table, refcount blocks, L1 or L2 tables are not counted
//! (or overlap each other), an allocation would overwrite live metadata — and imago's refblock
//! allocation can then recurse without bound (found by the `qcow2_open` fuzz target). This
//! check refuses such images up front with [`BlockError::MetadataOverlap`] or
//! [`BlockError::UnreferencedMetadata`], the way QEMU's metadata overlap checks would refuse the
//! write.
//!
//! Cost: reads the refcount table, the L1 table and the refcount blocks that cover metadata —
//! about `file size / cluster size × refcount width` bits, kilobytes for typical images. Data
//! clusters are not checked (that needs every L2 table; `qemu-img check` does it).

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use super::header::{Qcow2Header, L1_OFFSET_MASK, RT_OFFSET_MASK};
use crate::error::{BlockError, MetadataTable, Result};

/// Check that every metadata cluster is distinct and has a non-zero refcount.
pub(crate) fn check_metadata_refcounts(file: &File, path: &Path, hdr: &Qcow2Header) -> Result<()> {
    let cs = hdr.cluster_size();
    let file_len = file
        .metadata()
        .map_err(|e| BlockError::io("stat", path, e))?
        .len();
    let (rt_offset, rt_clusters) = hdr.refcount_table;
    let (l1_offset, l1_entries) = hdr.l1;

    // Table sizes and positions were validated by the header check (inside the file, ≤ 8 MiB
    // refcount table, ≤ 32 MiB L1 table).
    let reftable = read_entries(file, path, rt_offset, rt_clusters * cs / 8)?;
    let l1 = read_entries(file, path, l1_offset, l1_entries)?;

    let mut clusters: HashMap<u64, MetadataTable> = HashMap::new();
    let mut claim = |offset: u64, table: MetadataTable| -> Result<()> {
        if !offset.is_multiple_of(cs) {
            return Err(BlockError::UnalignedTable { table, offset });
        }
        if offset >= file_len {
            return Err(BlockError::TableOutsideFile {
                table,
                offset,
                end: offset.saturating_add(cs),
                file_len,
            });
        }
        match clusters.insert(offset, table) {
            Some(first) if first != table => Err(BlockError::MetadataOverlap {
                first,
                second: table,
                offset,
            }),
            _ => Ok(()),
        }
    };
    claim(0, MetadataTable::Header)?;
    for i in 0..rt_clusters {
        claim(rt_offset + i * cs, MetadataTable::RefcountTable)?;
    }
    for i in 0..(l1_entries * 8).div_ceil(cs) {
        claim(l1_offset + i * cs, MetadataTable::L1Table)?;
    }
    for entry in &l1 {
        let l2 = entry & L1_OFFSET_MASK;
        if l2 != 0 {
            claim(l2, MetadataTable::L2Table)?;
        }
    }
    for entry in &reftable {
        let rb = entry & RT_OFFSET_MASK;
        if rb != 0 {
            claim(rb, MetadataTable::RefcountBlock)?;
        }
    }
    let (snap_offset, snap_count) = hdr.snapshots;
    if snap_count > 0 {
        claim(snap_offset, MetadataTable::SnapshotTable)?;
    }

    let refcount_bits = 1u64 << hdr.refcount_order;
    let per_block = cs * 8 / refcount_bits;
    let mut blocks: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut sorted: Vec<_> = clusters.into_iter().collect();
    sorted.sort_unstable_by_key(|&(offset, _)| offset);
    for (offset, table) in sorted {
        let index = offset / cs;
        let rt_index = index / per_block;
        let rb_offset = usize::try_from(rt_index)
            .ok()
            .and_then(|i| reftable.get(i))
            .map_or(0, |e| e & RT_OFFSET_MASK);
        let refcount = if rb_offset == 0 {
            0
        } else {
            let block = match blocks.entry(rb_offset) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let mut block = vec![0u8; cs as usize];
                    read_at(file, path, &mut block, rb_offset)?;
                    e.insert(block)
                }
            };
            refcount_at(block, index % per_block, refcount_bits)
        };
        if refcount == 0 {
            return Err(BlockError::UnreferencedMetadata { table, offset });
        }
    }
    Ok(())
}

/// The `index`-th refcount of `bits` width in a refcount block (qcow2 spec bit order).
fn refcount_at(block: &[u8], index: u64, bits: u64) -> u64 {
    if bits >= 8 {
        let bytes = (bits / 8) as usize;
        let start = index as usize * bytes;
        block.get(start..start + bytes).map_or(0, |b| {
            b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
        })
    } else {
        let bit = index * bits;
        let byte = block.get((bit / 8) as usize).copied().unwrap_or(0);
        (u64::from(byte) >> (bit % 8)) & ((1 << bits) - 1)
    }
}

/// Read `count` big-endian u64 entries at `offset`.
fn read_entries(file: &File, path: &Path, offset: u64, count: u64) -> Result<Vec<u64>> {
    let mut raw = vec![0u8; (count * 8) as usize];
    read_at(file, path, &mut raw, offset)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| super::header::be64(c, 0))
        .collect())
}

fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    crate::formats::raw::io::read_exact_at_aligned(file, buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            BlockError::Truncated {
                needed: offset.saturating_add(buf.len() as u64),
                file_len: file.metadata().map(|m| m.len()).unwrap_or(0),
            }
        } else {
            BlockError::io("read metadata", path, e)
        }
    })
}
