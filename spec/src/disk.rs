//! Disk image formats, named as QEMU names them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The on-disk format of a guest disk image. The one type for it in Vireo: the launch spec, the
/// block crate, the CLI and the Kubernetes CRDs all use it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// Bytes of the file are the bytes of the disk.
    #[default]
    Raw,
    /// QEMU copy-on-write v2 (compat=0.10) or v3 (compat=1.1).
    Qcow2,
}

/// A format name other than `raw` or `qcow2`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown disk format {0:?} (expected raw or qcow2)")]
pub struct UnknownFormat(pub String);

impl DiskFormat {
    /// The name QEMU uses for this format (`raw`, `qcow2`), as serde writes it.
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DiskFormat {
    type Err = UnknownFormat;

    /// Exactly `raw` or `qcow2`, as serde reads them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            other => Err(UnknownFormat(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_serialize_alike() {
        for f in [DiskFormat::Raw, DiskFormat::Qcow2] {
            assert_eq!(f.name().parse::<DiskFormat>(), Ok(f));
            assert_eq!(serde_json::to_string(&f).unwrap(), format!("\"{f}\""));
        }
        assert!("vmdk".parse::<DiskFormat>().is_err());
        assert!("QCOW2".parse::<DiskFormat>().is_err());
    }
}
