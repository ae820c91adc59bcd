//! The control API's request and response bodies: what `vireo`'s unix-socket HTTP endpoint
//! (`/api/v1/…`, Cloud Hypervisor's paths) answers, and what `vireo remote` and the controller
//! read back.
//!
//! ```text
//!  GET  /api/v1/vmm.ping     → VmmPingResponse
//!  GET  /api/v1/vm.info      → VmInfo { state, config, devices, memory }
//!  GET  /api/v1/vm.counters  → VmCounters  {device_id: {counter: value}}
//!  PUT  /api/v1/vm.pause | vm.resume | vm.power-button | vm.shutdown | vmm.shutdown → 204
//!  PUT  /api/v1/vm.snapshot  VmSnapshotConfig {destination_url}      → SnapshotInfo
//!  PUT  /api/v1/vm.restore   RestoreConfig {source_url, prefault, resume} → 204
//!  any error                 → ApiErrorBody {"error": "…"} with a 4xx/5xx status
//! ```
//! The names and spellings follow Cloud Hypervisor's `VmmPingResponse`, `VmInfoResponse`
//! (state `Created`, `Running`, `Shutdown`, `Paused`) and `vm.counters`, so its users' tools
//! read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;

/// The path prefix of every control API endpoint.
pub const API_PREFIX: &str = "/api/v1/";

/// The answer to `GET /api/v1/vmm.ping`: which VMM answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPingResponse {
    /// The Vireo version (the crate version, e.g. `0.1.0`).
    pub version: String,
    /// The process id of the `vireo` process serving the socket.
    pub pid: u32,
}

/// A VM's state as the control API spells it (Cloud Hypervisor's `VmState` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiVmState {
    /// Built; no vCPU has run yet.
    Created,
    /// vCPUs are running guest code.
    Running,
    /// The VM has ended (powered off, reset, stopped or failed).
    Shutdown,
    /// vCPUs are parked; no guest instruction runs until resume.
    Paused,
}

/// One device of the VM, with an id that is stable for the VM's life (and across runs of the
/// same spec): `disk0`, `disk1`, … and `net0`, … in the launch spec's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `disk<N>` or `net<N>`, N counting the spec's disks or NICs from 0.
    pub id: String,
    /// The device model, e.g. `virtio-blk`, `virtio-net`.
    pub kind: String,
    /// PCI address, `0000:00:SS.0`.
    pub bdf: String,
}

/// Memory figures in `vm.info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    /// Guest RAM as configured, in bytes.
    pub guest_bytes: u64,
    /// Guest RAM resident in host memory, in bytes: the pages `mincore(2)` reports present
    /// (touched by the guest or a device, not swapped out). Guest RAM is mapped
    /// `MAP_NORESERVE`, so pages never touched are not counted.
    pub guest_resident_bytes: u64,
    /// Resident set of the whole `vireo` process (resident guest RAM plus the VMM's own), in
    /// bytes, from `/proc/self/statm`.
    pub process_resident_bytes: u64,
}

/// The answer to `GET /api/v1/vm.info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// Where the VM is in its life.
    pub state: ApiVmState,
    /// The launch spec the VM was built from.
    pub config: VmConfig,
    /// Its PCI devices, in bus order.
    pub devices: Vec<DeviceInfo>,
    /// Memory figures.
    pub memory: MemoryInfo,
}

/// The answer to `GET /api/v1/vm.counters`: `{device_id: {counter: value}}` (as Cloud
/// Hypervisor's), with the virtio devices under their [`DeviceInfo::id`] and the serial
/// console's output counters under `serial`.
pub type VmCounters = BTreeMap<String, BTreeMap<String, u64>>;

/// The body of every error answer: one line saying what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// What went wrong, e.g. `cannot resume a VM that is running`.
    pub error: String,
}

/// The body of `PUT /api/v1/vm.snapshot` (Cloud Hypervisor's `VmSnapshotConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshotConfig {
    /// Where to write the snapshot: `file:///absolute/dir` (the directory is created if
    /// missing; files of an earlier snapshot in it are replaced).
    pub destination_url: String,
}

/// The answer to `PUT /api/v1/vm.snapshot`: what was written and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The snapshot directory.
    pub path: String,
    /// Guest memory in bytes (the memory file's length).
    pub memory_bytes: u64,
    /// Bytes of page data in the memory file (the rest are holes).
    pub memory_data_bytes: u64,
    /// Bytes of the state file.
    pub state_bytes: u64,
    /// Time the VM was held paused for the snapshot, in microseconds.
    pub paused_us: u64,
}

/// The body of `PUT /api/v1/vm.restore` (Cloud Hypervisor's `RestoreConfig`), accepted only
/// by a `vireo run --api-socket` started without a payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    /// The snapshot directory: `file:///absolute/dir`.
    pub source_url: String,
    /// Read all of guest memory from the snapshot before starting (instead of mapping it and
    /// reading each page when the guest first touches it).
    #[serde(default)]
    pub prefault: bool,
    /// Resume the VM once restored; otherwise it is left paused, as Cloud Hypervisor does.
    #[serde(default)]
    pub resume: bool,
}

/// The local path of a `file://` URL, as the snapshot endpoints take them.
pub fn file_url_path(url: &str) -> Result<std::path::PathBuf, String> {
    let path = url
        .strip_prefix("file://")
        .ok_or_else(|| format!("{url:?} is not a file:// URL"))?;
    if !path.starts_with('/') {
        return Err(format!("{url:?} does not name an absolute path"));
    }
    if path.len() > 4096 || path.contains('\0') {
        return Err("the path is too long or contains NUL".to_owned());
    }
    Ok(std::path::PathBuf::from(path))
}
