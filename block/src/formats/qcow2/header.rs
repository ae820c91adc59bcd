//! qcow2 header parsing and validation, done by us before imago sees the file.
//!
//! Owns: every check that turns a malformed or unsupported header into a precise
//! [`BlockError`] variant (truncation, tables outside the file or overlapping the header,
//! unknown incompatible features, zstd, encryption, external data files, …), and extraction of
//! the backing file name and format, which we resolve ourselves (`backing.rs`) — also for v2
//! images, whose header extensions imago does not read.
//!
//! Guarantee: a header that passes [`Qcow2Header::read`] has its L1 table, refcount table,
//! snapshot table, backing name and extensions inside the file and outside cluster 0 (tables),
//! a cluster size of 512 B … 2 MiB and an L1 table large enough for the virtual size. All
//! arithmetic is checked; nothing here can panic or allocate more than one cluster (2 MiB).

use std::fs::File;
use std::path::Path;

use crate::error::{BlockError, CompressionType, MetadataTable, Result};
use crate::probe::QCOW2_MAGIC;

/// Size of the v2 header.
const V2_HEADER_LEN: u64 = 72;
/// Size of the fixed v3 header (without `compression_type`).
const V3_HEADER_LEN: u64 = 104;
/// Largest virtual size accepted (QEMU's limit is 2^61 minus a little; 2^56 is 64 PiB).
pub(crate) const MAX_VIRTUAL_SIZE: u64 = 1 << 56;

/// Largest L1 table accepted (QEMU's `QCOW_MAX_L1_SIZE`).
const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table accepted (QEMU's `QCOW_MAX_REFTABLE_SIZE`).
const MAX_REFTABLE_BYTES: u64 = 8 << 20;

/// Header extension: backing file format name.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: external data file name.
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Incompatible feature bits.
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// The parts of a validated qcow2 header this crate needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Qcow2Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Backing file name as stored (relative to the image's directory unless absolute).
    pub backing_file: Option<String>,
    /// Backing format name from the header extension, if present.
    pub backing_format: Option<String>,
    /// L1 table offset and entry count.
    pub l1: (u64, u64),
    /// Refcount table offset and length in clusters.
    pub refcount_table: (u64, u64),
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Snapshot table offset and entry count.
    pub snapshots: (u64, u64),
}

impl Qcow2Header {
    /// Cluster size in bytes.
    pub(crate) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Read and validate the header of the open image `file`.
    pub(crate) fn read(file: &File, path: &Path) -> Result<Self> {
        let file_len = file
            .metadata()
            .map_err(|e| BlockError::io("stat", path, e))?
            .len();
        if file_len < V2_HEADER_LEN {
            return Err(BlockError::Truncated {
                needed: V2_HEADER_LEN,
                file_len,
            });
        }
        let mut fixed = [0u8; V3_HEADER_LEN as usize];
        let fixed_len = file_len.min(V3_HEADER_LEN) as usize;
        read_at(file, path, &mut fixed[..fixed_len], 0)?;
        let first_cluster_len = {
            let cluster_bits = be32(&fixed, 20);
            if !(9..=21).contains(&cluster_bits) {
                // Checked again (in order) by `parse`; needed here to size the buffer.
                usize::MAX
            } else {
                (1usize << cluster_bits).min(file_len as usize)
            }
        };
        if first_cluster_len == usize::MAX {
            return Self::parse(&fixed[..fixed_len], file_len);
        }
        let mut cluster = vec![0u8; first_cluster_len.max(fixed_len)];
        read_at(file, path, &mut cluster, 0)?;
        Self::parse(&cluster, file_len)
    }

    /// Validate a header given the image's first cluster (or all of it the file has) and the
    /// file length.
    pub(crate) fn parse(head: &[u8], file_len: u64) -> Result<Self> {
        if (head.len() as u64) < V2_HEADER_LEN {
            return Err(BlockError::Truncated {
                needed: V2_HEADER_LEN,
                file_len,
            });
        }
        if head[0..4] != QCOW2_MAGIC {
            return Err(BlockError::NotQcow2);
        }
        let version = be32(head, 4);
        if version != 2 && version != 3 {
            return Err(BlockError::UnsupportedVersion(version));
        }
        if version == 3 && (head.len() as u64) < V3_HEADER_LEN {
            return Err(BlockError::Truncated {
                needed: V3_HEADER_LEN,
                file_len,
            });
        }
        let backing_file_offset = be64(head, 8);
        let backing_file_size = be32(head, 16);
        let cluster_bits = be32(head, 20);
        let size = be64(head, 24);
        let crypt_method = be32(head, 32);
        let l1_size = u64::from(be32(head, 36));
        let l1_offset = be64(head, 40);
        let rt_offset = be64(head, 48);
        let rt_clusters = u64::from(be32(head, 56));
        let nb_snapshots = u64::from(be32(head, 60));
        let snapshots_offset = be64(head, 64);

        if !(9..=21).contains(&cluster_bits) {
            return Err(BlockError::InvalidClusterBits(cluster_bits));
        }
        let cs = 1u64 << cluster_bits;
        // The whole first cluster must exist: imago reads header extensions up to its end.
        if file_len < cs {
            return Err(BlockError::Truncated {
                needed: cs,
                file_len,
            });
        }

        let (incompat, refcount_order, header_len, compression_type) = if version == 3 {
            let header_len = be32(head, 100);
            if u64::from(header_len) < V3_HEADER_LEN || u64::from(header_len) > cs {
                return Err(BlockError::InvalidHeaderLength(header_len));
            }
            let compression_type = if header_len > 104 { head[104] } else { 0 };
            (be64(head, 72), be32(head, 96), header_len, compression_type)
        } else {
            (0, 4, V2_HEADER_LEN as u32, 0)
        };

        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(BlockError::UnknownIncompatibleFeatures(
                incompat & !INCOMPAT_KNOWN,
            ));
        }
        if incompat & INCOMPAT_CORRUPT != 0 {
            return Err(BlockError::CorruptImage);
        }
        if incompat & INCOMPAT_DIRTY != 0 {
            return Err(BlockError::DirtyImage);
        }
        if incompat & INCOMPAT_DATA_FILE != 0 {
            return Err(BlockError::ExternalDataFile);
        }
        if incompat & INCOMPAT_EXTL2 != 0 {
            return Err(BlockError::ExtendedL2);
        }
        if incompat & INCOMPAT_COMPRESSION != 0 || compression_type != 0 {
            return Err(BlockError::UnsupportedCompression(match compression_type {
                1 => CompressionType::Zstd,
                n => CompressionType::Unknown(n),
            }));
        }
        if crypt_method != 0 {
            return Err(BlockError::Encrypted(crypt_method));
        }
        if refcount_order > 6 {
            return Err(BlockError::InvalidRefcountOrder(refcount_order));
        }
        if size > MAX_VIRTUAL_SIZE {
            return Err(BlockError::SizeTooLarge(size));
        }

        // L1 table: must cover the virtual size, lie inside the file, after the header.
        let bytes_per_l1_entry = cs * (cs / 8);
        let needed = size.div_ceil(bytes_per_l1_entry);
        if l1_size < needed {
            return Err(BlockError::L1TableTooSmall {
                l1_entries: l1_size,
                needed,
                size,
            });
        }
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(BlockError::TableTooLarge {
                table: MetadataTable::L1Table,
                bytes: l1_size * 8,
                max: MAX_L1_BYTES,
            });
        }
        let l1_range = if l1_size > 0 {
            Some(check_table(
                MetadataTable::L1Table,
                l1_offset,
                l1_size * 8,
                cs,
                file_len,
            )?)
        } else {
            None
        };
        if let Some((start, _)) = l1_range {
            if start < cs {
                return Err(BlockError::L1TableOverlapsHeader { offset: start });
            }
        }

        // Refcount table.
        if rt_clusters == 0 {
            return Err(BlockError::EmptyRefcountTable);
        }
        if rt_clusters * cs > MAX_REFTABLE_BYTES {
            return Err(BlockError::TableTooLarge {
                table: MetadataTable::RefcountTable,
                bytes: rt_clusters * cs,
                max: MAX_REFTABLE_BYTES,
            });
        }
        if rt_offset < cs {
            return Err(BlockError::RefcountTableOverlapsHeader { offset: rt_offset });
        }
        let rt_range = check_table(
            MetadataTable::RefcountTable,
            rt_offset,
            rt_clusters * cs,
            cs,
            file_len,
        )?;
        if let Some(l1) = l1_range {
            if l1.0 < rt_range.1 && rt_range.0 < l1.1 {
                return Err(BlockError::L1TableOverlapsRefcountTable);
            }
        }

        // Snapshot table: each entry is at least 40 bytes.
        if nb_snapshots > 0 {
            let (start, _) = check_table(
                MetadataTable::SnapshotTable,
                snapshots_offset,
                nb_snapshots * 40,
                cs,
                file_len,
            )?;
            if start < cs {
                return Err(BlockError::TableOutsideFile {
                    table: MetadataTable::SnapshotTable,
                    offset: start,
                    end: start,
                    file_len,
                });
            }
        }

        // Backing file name: inside the first cluster (imago's rule) and the file.
        let limit = (head.len() as u64).min(cs);
        let backing_file = if backing_file_offset != 0 {
            if backing_file_size > 1023 {
                return Err(BlockError::InvalidBackingFileName);
            }
            let end = backing_file_offset.saturating_add(u64::from(backing_file_size));
            if end >= limit {
                return Err(BlockError::TableOutsideFile {
                    table: MetadataTable::BackingFileName,
                    offset: backing_file_offset,
                    end,
                    file_len,
                });
            }
            let name = &head[backing_file_offset as usize..end as usize];
            let name = std::str::from_utf8(name)
                .map_err(|_| BlockError::InvalidBackingFileName)?
                .to_owned();
            if name.is_empty() || name.contains('\0') {
                return Err(BlockError::InvalidBackingFileName);
            }
            Some(name)
        } else {
            None
        };

        let backing_format = parse_extensions(head, u64::from(header_len), limit, file_len)?;
        Ok(Self {
            version,
            cluster_bits,
            size,
            backing_file,
            backing_format,
            l1: (l1_offset, l1_size),
            refcount_table: (rt_offset, rt_clusters),
            refcount_order,
            snapshots: (snapshots_offset, nb_snapshots),
        })
    }
}

/// Walk the header extensions; return the backing format, refuse an external data file name.
fn parse_extensions(head: &[u8], start: u64, limit: u64, file_len: u64) -> Result<Option<String>> {
    let mut pos = start;
    let mut backing_format = None;
    loop {
        let data_start = pos.saturating_add(8);
        if data_start > limit {
            return Err(BlockError::TableOutsideFile {
                table: MetadataTable::HeaderExtension,
                offset: pos,
                end: data_start,
                file_len,
            });
        }
        let p = pos as usize;
        let ext_type = be32(head, p);
        let ext_len = u64::from(be32(head, p + 4));
        if ext_type == 0 {
            return Ok(backing_format);
        }
        let data_end = data_start.saturating_add(ext_len);
        if data_end > limit {
            return Err(BlockError::TableOutsideFile {
                table: MetadataTable::HeaderExtension,
                offset: pos,
                end: data_end,
                file_len,
            });
        }
        let data = &head[data_start as usize..data_end as usize];
        match ext_type {
            EXT_BACKING_FORMAT => {
                let name = std::str::from_utf8(data)
                    .map_err(|_| BlockError::UnknownBackingFormat(format!("{data:?}")))?;
                backing_format = Some(name.trim_end_matches('\0').to_owned());
            }
            EXT_DATA_FILE => return Err(BlockError::ExternalDataFile),
            _ => {}
        }
        pos = data_start.saturating_add(ext_len.next_multiple_of(8));
    }
}

/// Check a table's alignment and that `[offset, offset + len)` lies inside the file.
fn check_table(
    table: MetadataTable,
    offset: u64,
    len: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<(u64, u64)> {
    if !offset.is_multiple_of(cluster_size) {
        return Err(BlockError::UnalignedTable { table, offset });
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok((offset, end)),
        end => Err(BlockError::TableOutsideFile {
            table,
            offset,
            end: end.unwrap_or(u64::MAX),
            file_len,
        }),
    }
}

fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    crate::formats::raw::io::read_exact_at_aligned(file, buf, offset)
        .map_err(|e| BlockError::io("read header", path, e))
}

/// Host offset bits of an L1 entry (the L2 table's offset).
pub(super) const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Host offset bits of a refcount-table entry (the refcount block's offset).
pub(super) const RT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;

/// Big-endian u32 at `pos`; callers guarantee `pos + 4 <= buf.len()` (0 otherwise).
pub(super) fn be32(buf: &[u8], pos: usize) -> u32 {
    buf.get(pos..pos + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

/// Big-endian u64 at `pos` (0 if out of range).
pub(super) fn be64(buf: &[u8], pos: usize) -> u64 {
    buf.get(pos..pos + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid v3 header: 512-byte clusters, 1 MiB, reftable at cluster 1, L1 at
    /// cluster 3 (a 4-cluster file).
    fn valid() -> Vec<u8> {
        let mut h = vec![0u8; 2048];
        h[0..4].copy_from_slice(&QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&9u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
        h[36..40].copy_from_slice(&32u32.to_be_bytes()); // 32 × 32 KiB per L1 entry = 1 MiB
        h[40..48].copy_from_slice(&1536u64.to_be_bytes());
        h[48..56].copy_from_slice(&512u64.to_be_bytes());
        h[56..60].copy_from_slice(&1u32.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        h
    }

    #[test]
    fn valid_header_parses() {
        let h = valid();
        let hdr = Qcow2Header::parse(&h, h.len() as u64).unwrap();
        assert_eq!(
            (hdr.version, hdr.cluster_size(), hdr.size),
            (3, 512, 1 << 20)
        );
        assert_eq!(hdr.backing_file, None);
    }

    #[test]
    fn truncated_header() {
        let h = valid();
        assert!(matches!(
            Qcow2Header::parse(&h[..50], 50),
            Err(BlockError::Truncated {
                needed: 72,
                file_len: 50
            })
        ));
        assert!(matches!(
            Qcow2Header::parse(&h[..90], 90),
            Err(BlockError::Truncated {
                needed: 104,
                file_len: 90
            })
        ));
    }

    #[test]
    fn l1_table_too_small_or_outside() {
        let mut h = valid();
        h[36..40].copy_from_slice(&31u32.to_be_bytes());
        assert!(matches!(
            Qcow2Header::parse(&h, 2048),
            Err(BlockError::L1TableTooSmall {
                l1_entries: 31,
                needed: 32,
                ..
            })
        ));
        let h = valid();
        assert!(matches!(
            Qcow2Header::parse(&h, 1600),
            Err(BlockError::TableOutsideFile {
                table: MetadataTable::L1Table,
                ..
            })
        ));
    }

    #[test]
    fn refcount_table_overlapping_header_or_l1() {
        let mut h = valid();
        h[48..56].copy_from_slice(&0u64.to_be_bytes());
        assert!(matches!(
            Qcow2Header::parse(&h, 2048),
            Err(BlockError::RefcountTableOverlapsHeader { offset: 0 })
        ));
        let mut h = valid();
        h[48..56].copy_from_slice(&1536u64.to_be_bytes());
        assert!(matches!(
            Qcow2Header::parse(&h, 2048),
            Err(BlockError::L1TableOverlapsRefcountTable)
        ));
    }

    #[test]
    fn header_extension_running_off_the_cluster() {
        let mut h = valid();
        h[104..108].copy_from_slice(&0x1234u32.to_be_bytes());
        h[108..112].copy_from_slice(&4096u32.to_be_bytes());
        assert!(matches!(
            Qcow2Header::parse(&h, 2048),
            Err(BlockError::TableOutsideFile {
                table: MetadataTable::HeaderExtension,
                ..
            })
        ));
    }

    #[test]
    fn backing_format_extension_is_read() {
        let mut h = valid();
        h[104..108].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        h[108..112].copy_from_slice(&3u32.to_be_bytes());
        h[112..115].copy_from_slice(b"raw");
        h[8..16].copy_from_slice(&200u64.to_be_bytes());
        h[16..20].copy_from_slice(&8u32.to_be_bytes());
        h[200..208].copy_from_slice(b"base.img");
        let hdr = Qcow2Header::parse(&h, 2048).unwrap();
        assert_eq!(hdr.backing_file.as_deref(), Some("base.img"));
        assert_eq!(hdr.backing_format.as_deref(), Some("raw"));
    }
}
