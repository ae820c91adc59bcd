//! Saved state of a virtio-blk device model.
//!
//! The device keeps no state of its own besides what its disk determines:
//! the saved capacity, read-only flag and image format are checked against the
//! disk opened here, so a snapshot is never resumed on a disk that changed
//! size, writability or format under the guest. The queue and its position are the
//! transport's ([`crate::virtio::persist`]).

use serde::{Deserialize, Serialize};

use super::{request, VirtioBlock};
use crate::persist::PersistError;

const DEVICE: &str = "virtio-blk";

/// What a virtio-blk device looked like to the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Disk capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Whether the disk was read-only.
    pub read_only: bool,
    /// The image format (absent in state written before it was saved: not checked then).
    #[serde(default)]
    pub format: Option<vireo_block::Format>,
}

impl VirtioBlock {
    /// The device's state.
    pub fn save(&self) -> BlockState {
        BlockState {
            capacity_sectors: self.disk.size() / request::SECTOR_SIZE,
            read_only: self.disk.read_only(),
            format: Some(self.disk.format()),
        }
    }

    /// Checks `state` against the disk this device was built on: a
    /// different size or writability is a [`PersistError::Mismatch`].
    pub fn restore(&mut self, state: &BlockState) -> Result<(), PersistError> {
        let here = self.save();
        if state.capacity_sectors != here.capacity_sectors {
            return Err(PersistError::mismatch(
                DEVICE,
                "disk size",
                format_args!("{} sectors", state.capacity_sectors),
                format_args!("{} sectors", here.capacity_sectors),
            ));
        }
        if state.read_only != here.read_only {
            let ro = |r: bool| if r { "read-only" } else { "read-write" };
            return Err(PersistError::mismatch(
                DEVICE,
                "disk mode",
                ro(state.read_only),
                ro(here.read_only),
            ));
        }
        if let (Some(saved), Some(here)) = (state.format, here.format) {
            if saved != here {
                return Err(PersistError::mismatch(DEVICE, "disk format", saved, here));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vireo_block::{create_raw, open_disk, Format, OpenOptions};

    fn blk(dir: &tempfile::TempDir, size: u64, read_only: bool) -> VirtioBlock {
        let path = dir.path().join(format!("d{size}.raw"));
        if !path.exists() {
            create_raw(&path, size).expect("create_raw");
        }
        let opts = OpenOptions {
            format: Some(Format::Raw),
            read_only,
            ..OpenOptions::default()
        };
        VirtioBlock::new(Arc::from(open_disk(&path, &opts).expect("open")), 0)
    }

    #[test]
    fn block_state_round_trips_and_checks_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = blk(&dir, 1 << 20, false);
        let s = serde_json::to_string(&a.save()).expect("serialize");
        let state: BlockState = serde_json::from_str(&s).expect("deserialize");
        assert_eq!(state, a.save());
        assert_eq!(state.capacity_sectors, 2048);
        a.restore(&state).expect("same disk");
        let mut bigger = blk(&dir, 2 << 20, false);
        let err = bigger.restore(&state).expect_err("size changed");
        assert!(
            matches!(
                &err,
                PersistError::Mismatch {
                    what: "disk size",
                    ..
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("2048") && msg.contains("4096"), "{msg}");
        let mut ro = blk(&dir, 1 << 20, true);
        assert!(matches!(
            ro.restore(&state),
            Err(PersistError::Mismatch {
                what: "disk mode",
                ..
            })
        ));
        let qcow2 = BlockState {
            format: Some(Format::Qcow2),
            ..state.clone()
        };
        let err = a.restore(&qcow2).expect_err("format changed");
        assert_eq!(
            err.to_string(),
            "virtio-blk: saved disk format is qcow2 but this device has raw"
        );
        let older = BlockState {
            format: None,
            ..state.clone()
        };
        a.restore(&older)
            .expect("state without a format is not checked for it");
        let without: BlockState =
            serde_json::from_str(r#"{"capacity_sectors": 2048, "read_only": false}"#)
                .expect("state written before the format was saved");
        assert_eq!(without.format, None);
    }
}
