//! One folder per image format; each provides an engine for [`crate::disk::Disk`].
//!
//! - [`raw`]: file or block device bytes are the disk bytes (our own syscalls).
//! - [`qcow2`]: QEMU copy-on-write images through imago, with our header validation and
//!   backing-chain resolution in front.

pub(crate) mod qcow2;
pub(crate) mod raw;
