//! The crate's one error type, [`BlockError`].
//!
//! Every variant names one problem precisely enough that a user reading the message knows what is
//! wrong with which file (`TableOutsideFile { table: L1Table, .. }` rather than "invalid image").
//! Variants that wrap an [`std::io::Error`] say which operation and which file it came from.
//! Nothing in this crate panics on file-, guest- or user-controlled input; it returns one of these.

use std::io;
use std::path::PathBuf;

use crate::probe::Format;

/// Result alias used throughout the crate.
pub type Result<T, E = BlockError> = std::result::Result<T, E>;

/// A qcow2 metadata structure that the header points at; used to name what is misplaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataTable {
    /// The L1 table (top level of the guest → host cluster map).
    L1Table,
    /// The refcount table (top level of the cluster reference counts).
    RefcountTable,
    /// The internal snapshot table.
    SnapshotTable,
    /// The header cluster.
    Header,
    /// An L2 table.
    L2Table,
    /// A refcount block.
    RefcountBlock,
    /// The backing file name stored in the header cluster.
    BackingFileName,
    /// A header extension.
    HeaderExtension,
}

impl std::fmt::Display for MetadataTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::L1Table => "L1 table",
            Self::RefcountTable => "refcount table",
            Self::SnapshotTable => "snapshot table",
            Self::Header => "header",
            Self::L2Table => "L2 table",
            Self::RefcountBlock => "refcount block",
            Self::BackingFileName => "backing file name",
            Self::HeaderExtension => "header extension",
        };
        f.write_str(name)
    }
}

/// Compression algorithms named by a qcow2 header's `compression_type` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionType {
    /// zstd (type 1): readable by QEMU, not by imago, so refused.
    Zstd,
    /// A type number this crate does not know.
    Unknown(u8),
}

impl std::fmt::Display for CompressionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Zstd => f.write_str("zstd"),
            Self::Unknown(n) => write!(f, "unknown type {n}"),
        }
    }
}

/// Everything that can go wrong opening, creating or doing I/O on a disk image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlockError {
    /// An operating-system call on `path` failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing ("open", "read", "fdatasync", ...).
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// imago reported an error for the qcow2 image at `path`.
    #[error("qcow2 {op} {path}: {source}")]
    Qcow2 {
        /// What we were doing.
        op: &'static str,
        /// The image concerned.
        path: PathBuf,
        /// The error imago returned.
        #[source]
        source: io::Error,
    },

    /// The file is shorter than a structure it must contain.
    #[error("image truncated: {needed} bytes needed, file has {file_len}")]
    Truncated {
        /// Bytes the structure needs.
        needed: u64,
        /// Actual file length.
        file_len: u64,
    },

    /// The header points a metadata structure (partly) beyond the end of the file.
    #[error("{table} at {offset:#x}..{end:#x} lies outside the file ({file_len} bytes)")]
    TableOutsideFile {
        /// Which structure.
        table: MetadataTable,
        /// Its start offset.
        offset: u64,
        /// Its end offset (exclusive), saturated at `u64::MAX`.
        end: u64,
        /// Actual file length.
        file_len: u64,
    },

    /// A metadata structure's offset is not aligned to the cluster size.
    #[error("{table} offset {offset:#x} is not cluster-aligned")]
    UnalignedTable {
        /// Which structure.
        table: MetadataTable,
        /// Its offset.
        offset: u64,
    },

    /// The refcount table starts inside the header cluster (cluster 0).
    #[error("refcount table at {offset:#x} overlaps the image header")]
    RefcountTableOverlapsHeader {
        /// Refcount table offset.
        offset: u64,
    },

    /// The L1 table starts inside the header cluster (cluster 0).
    #[error("L1 table at {offset:#x} overlaps the image header")]
    L1TableOverlapsHeader {
        /// L1 table offset.
        offset: u64,
    },

    /// A metadata table is larger than QEMU allows.
    #[error("{table} of {bytes} bytes exceeds the {max}-byte limit")]
    TableTooLarge {
        /// Which structure.
        table: MetadataTable,
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },

    /// Two different metadata structures claim the same cluster.
    #[error("{first} and {second} overlap at {offset:#x}")]
    MetadataOverlap {
        /// One structure.
        first: MetadataTable,
        /// The other.
        second: MetadataTable,
        /// The shared cluster's offset.
        offset: u64,
    },

    /// A metadata cluster has refcount 0, so an allocation could overwrite it.
    #[error("{table} cluster at {offset:#x} has refcount 0 (image needs `qemu-img check -r all`)")]
    UnreferencedMetadata {
        /// Which structure.
        table: MetadataTable,
        /// The cluster's offset.
        offset: u64,
    },

    /// The L1 table overlaps the refcount table.
    #[error("L1 table overlaps the refcount table")]
    L1TableOverlapsRefcountTable,

    /// The L1 table has fewer entries than the virtual size needs.
    #[error("L1 table has {l1_entries} entries, {needed} are needed for {size} bytes")]
    L1TableTooSmall {
        /// Entries present.
        l1_entries: u64,
        /// Entries needed.
        needed: u64,
        /// Virtual disk size.
        size: u64,
    },

    /// The header has no refcount table.
    #[error("refcount table is empty")]
    EmptyRefcountTable,

    /// The file does not start with the qcow2 magic.
    #[error("not a qcow2 image (bad magic)")]
    NotQcow2,

    /// A qcow2 version other than 2 or 3.
    #[error("unsupported qcow2 version {0}")]
    UnsupportedVersion(u32),

    /// `cluster_bits` outside 9..=21 (512 B … 2 MiB).
    #[error("invalid cluster size 2^{0} (must be 512 B to 2 MiB)")]
    InvalidClusterBits(u32),

    /// `refcount_order` outside 0..=6.
    #[error("invalid refcount order {0} (must be 0 to 6)")]
    InvalidRefcountOrder(u32),

    /// v3 `header_length` too small or larger than a cluster.
    #[error("invalid qcow2 v3 header length {0}")]
    InvalidHeaderLength(u32),

    /// The virtual size is beyond what this crate accepts.
    #[error("virtual size {0} is too large")]
    SizeTooLarge(u64),

    /// The image is encrypted (AES or LUKS); not supported.
    #[error("encrypted qcow2 images are not supported (crypt_method {0})")]
    Encrypted(u32),

    /// Incompatible feature bits this crate does not understand.
    #[error("unknown incompatible qcow2 features {0:#x}")]
    UnknownIncompatibleFeatures(u64),

    /// The dirty bit is set (lazy refcounts, not closed cleanly): refcounts need repair first.
    #[error("image is dirty (lazy refcounts, not closed cleanly); run `qemu-img check -r all`")]
    DirtyImage,

    /// The corrupt bit is set: QEMU found the image corrupt.
    #[error("image is marked corrupt; repair it with `qemu-img check -r all`")]
    CorruptImage,

    /// The image keeps its data in an external data file; refused (a path outside our control).
    #[error("qcow2 images with an external data file are not supported")]
    ExternalDataFile,

    /// Extended L2 entries (subclusters); imago cannot handle them.
    #[error("qcow2 extended L2 entries (subclusters) are not supported")]
    ExtendedL2,

    /// Compressed clusters use an algorithm other than zlib.
    #[error("unsupported qcow2 compression: {0}")]
    UnsupportedCompression(CompressionType),

    /// The backing file name is not valid UTF-8 or too long.
    #[error("invalid backing file name in header")]
    InvalidBackingFileName,

    /// The header names a backing format this crate does not know.
    #[error("unknown backing format {0:?}")]
    UnknownBackingFormat(String),

    /// A qcow2 backing file's format is not recorded in its overlay and probing found qcow2.
    #[error(
        "backing file {path} looks like qcow2 but the overlay does not record its format; \
         refusing to probe (fix with `qemu-img rebase -u -F qcow2 -b <same path>`)"
    )]
    BackingFormatNotRecorded {
        /// The backing file.
        path: PathBuf,
    },

    /// A backing file does not exist.
    #[error("missing backing file {path}")]
    MissingBackingFile {
        /// The resolved path.
        path: PathBuf,
    },

    /// A backing file is neither a regular file nor a block device.
    #[error("backing file {path} is not a regular file or block device")]
    NotADiskFile {
        /// The offending file.
        path: PathBuf,
    },

    /// The backing chain comes back to a file already in it.
    #[error("backing chain loops at {path}")]
    BackingChainLoop {
        /// The file seen twice.
        path: PathBuf,
    },

    /// The backing chain is deeper than [`crate::MAX_BACKING_DEPTH`].
    #[error("backing chain deeper than {max} images")]
    BackingChainTooDeep {
        /// The cap.
        max: usize,
    },

    /// A request was issued to a read-only disk that would modify it.
    #[error("disk is read-only")]
    ReadOnly,

    /// A request extends beyond the end of the disk.
    #[error("request {offset:#x}+{len:#x} beyond disk size {size:#x}")]
    OutOfRange {
        /// Request offset.
        offset: u64,
        /// Request length.
        len: u64,
        /// Disk size.
        size: u64,
    },

    /// The backend cannot perform this operation (e.g. discard on a qcow2 v2 image).
    #[error("{op} is not supported by this {format} disk")]
    Unsupported {
        /// Operation name.
        op: &'static str,
        /// The disk's format.
        format: Format,
    },

    /// An O_DIRECT request is not aligned to the device's logical block size.
    #[error("O_DIRECT request {offset:#x}+{len:#x} is not {align}-byte aligned")]
    MisalignedDirectIo {
        /// Request offset.
        offset: u64,
        /// Request length.
        len: u64,
        /// Required alignment.
        align: u64,
    },

    /// On a raw image whose format was probed, a write would put an image-format magic into
    /// sector 0, which would make the next probe reinterpret the disk.
    #[error("refusing to write a disk-image magic to sector 0 of a probed raw image")]
    ProbedRawHeaderWrite,

    /// A device serial longer than virtio-blk's 20 bytes or not printable ASCII.
    #[error("device serial {0:?} must be at most 20 printable ASCII bytes")]
    InvalidSerial(String),

    /// Image creation was asked for an invalid cluster size.
    #[error("invalid cluster size {0} (must be a power of two from 512 B to 2 MiB)")]
    InvalidClusterSize(u64),

    /// Image creation was asked for a size that is not a multiple of 512 or is too large.
    #[error("invalid disk size {0} (must be a non-zero multiple of 512 up to 2^56)")]
    InvalidDiskSize(u64),

    /// Image creation refused to overwrite an existing file.
    #[error("{path} already exists")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
}

impl BlockError {
    /// Wrap an OS error with the operation and path it came from.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Wrap an imago error with the operation and image it came from.
    pub(crate) fn qcow2(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Qcow2 {
            op,
            path: path.into(),
            source,
        }
    }
}
