//! PLACEHOLDER until the devices' persist modules land.
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::DeviceManager;
use crate::config::VmConfig;
use crate::memory::GuestMemory;

/// One device's saved state under its stable id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The stable id.
    pub id: String,
}

/// Why device state could not be saved or applied.
#[derive(Debug, Error)]
pub enum DevicePersistError {
    /// Placeholder.
    #[error("device {0}")]
    Other(String),
}

/// Saves every device.
pub fn save(_dm: &DeviceManager, _mem: &GuestMemory) -> Result<Vec<DeviceRecord>, DevicePersistError> {
    Ok(Vec::new())
}

/// Applies saved state.
pub fn restore(_dm: &DeviceManager, _records: &[DeviceRecord]) -> Result<(), DevicePersistError> {
    Ok(())
}

/// Resumes devices restored paused.
pub fn resume(_dm: &DeviceManager) {}

/// Flushes disks.
pub fn flush_disks(_dm: &DeviceManager) -> Result<(), DevicePersistError> {
    Ok(())
}

/// The spec with effective MACs.
pub fn effective_config(config: &VmConfig, _dm: &DeviceManager) -> VmConfig {
    config.clone()
}
