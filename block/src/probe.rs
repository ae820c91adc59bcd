//! Image format detection from content, never from a file name.
//!
//! The only rule: a file whose first four bytes are the qcow2 magic `QFI\xfb` is qcow2; every
//! other file is raw. Callers that know the format (the launch spec records it) pass it
//! explicitly and no probing happens; a file opened as raw is then never looked at again, so a
//! guest that writes a qcow2 header into its raw disk cannot turn it into an image that points
//! at host files. See the crate documentation for how backing files use this.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{BlockError, Result};

/// The qcow2 magic, `QFI\xfb`, big-endian.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Disk image formats this crate reads and writes: the launch spec's [`vireo_spec::DiskFormat`]
/// (one type for the format across Vireo), under the name this crate has always used.
pub use vireo_spec::DiskFormat as Format;

/// Parses a format name as stored in a qcow2 backing-format extension (`raw`, `file`, `qcow2`).
pub fn backing_format_from_name(name: &str) -> Result<Format> {
    match name {
        "file" => Ok(Format::Raw),
        other => other
            .parse()
            .map_err(|_| BlockError::UnknownBackingFormat(other.to_owned())),
    }
}

/// Detect the format of an open file from its first bytes.
pub fn probe_file(file: &File, path: &Path) -> Result<Format> {
    let mut magic = [0u8; 4];
    let mut filled = 0;
    while filled < magic.len() {
        match file.read_at(&mut magic[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BlockError::io("probe", path, e)),
        }
    }
    Ok(probe_bytes(&magic[..filled]))
}

/// Detect the format of an image from its first bytes (fewer than 4 bytes means raw).
pub fn probe_bytes(head: &[u8]) -> Format {
    if head.starts_with(&QCOW2_MAGIC) {
        Format::Qcow2
    } else {
        Format::Raw
    }
}

/// Detect the format of the image at `path`.
pub fn probe_path(path: &Path) -> Result<Format> {
    let file = File::open(path).map_err(|e| BlockError::io("open", path, e))?;
    probe_file(&file, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_decides_not_name() {
        assert_eq!(probe_bytes(b"QFI\xfb\0\0\0\x03"), Format::Qcow2);
        assert_eq!(probe_bytes(b"QFI"), Format::Raw);
        assert_eq!(probe_bytes(b"\0\0\0\0"), Format::Raw);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.qcow2");
        std::fs::write(&p, b"not an image").unwrap();
        assert_eq!(probe_path(&p).unwrap(), Format::Raw);
    }

    #[test]
    fn backing_format_names() {
        assert_eq!(backing_format_from_name("file").unwrap(), Format::Raw);
        assert_eq!(backing_format_from_name("raw").unwrap(), Format::Raw);
        assert_eq!(backing_format_from_name("qcow2").unwrap(), Format::Qcow2);
        assert!(matches!(
            backing_format_from_name("vmdk"),
            Err(BlockError::UnknownBackingFormat(n)) if n == "vmdk"
        ));
    }
}
