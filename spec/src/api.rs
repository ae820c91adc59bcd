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
    /// `disk<N>` or `net<N>`, N counting the spec's disks or NICs from 0, or `tablet0`.
    pub id: String,
    /// The device model, e.g. `virtio-blk`, `virtio-net`, `virtio-input`.
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
    /// Where the VNC console listens (`HOST:PORT` as bound, or `unix:PATH`); absent for a VM
    /// without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc: Option<String>,
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

impl ApiErrorBody {
    /// The reason an error answer's `body` gives: its `error` field, or the body itself
    /// (trimmed, lossily decoded) when it is not an [`ApiErrorBody`].
    pub fn reason_of(body: &[u8]) -> String {
        serde_json::from_slice::<Self>(body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_owned())
    }
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

/// What `vm.send-migration` does when its `timeout_s` passes before the migration completed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeoutStrategy {
    /// Give up: the source VM keeps running (unpaused, dirty logging off) and the target exits.
    #[default]
    Cancel,
    /// Stop pre-copy and move the VM now, with whatever downtime the pages still dirty cost.
    Force,
}

/// The body of `PUT /api/v1/vm.send-migration` (Cloud Hypervisor's `VmSendMigrationData`,
/// with QEMU's pre-copy knobs). Only `destination_url` is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMigrationConfig {
    /// Where the target listens: `unix:/path`, `tcp:host:port` or `tls:host:port` (TCP with
    /// TLS; both sides present certificates signed by one CA, see `tls_dir`).
    pub destination_url: String,
    /// The pause the guest may see, in milliseconds: pre-copy goes on until the pages still
    /// dirty can be sent in this time at the measured bandwidth (default 300, as QEMU and
    /// Cloud Hypervisor).
    #[serde(default = "default_downtime_ms")]
    pub downtime_ms: u64,
    /// Give up (or force, see `timeout_strategy`) after this many seconds; 0: never.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// What happens at the timeout.
    #[serde(default)]
    pub timeout_strategy: TimeoutStrategy,
    /// Cap on the bytes per second sent; 0: no cap.
    #[serde(default)]
    pub max_bandwidth: u64,
    /// Throttle the vCPUs in steps (20 %, then +10 % up to 99 %, as QEMU) when passes stop
    /// shrinking (default on).
    #[serde(default = "default_true")]
    pub auto_converge: bool,
    /// Local handover: the target runs on this host (`unix:` only) and takes over guest memory
    /// by file descriptor instead of by copy, so no page moves. Needs a VM whose memory is
    /// shareable (`memory_backing: memfd`).
    #[serde(default)]
    pub local: bool,
    /// For `tls:` URLs: a directory with `ca.pem`, `cert.pem` and `key.pem`.
    #[serde(default)]
    pub tls_dir: Option<std::path::PathBuf>,
}

fn default_downtime_ms() -> u64 {
    300
}

fn default_timeout_s() -> u64 {
    3600
}

fn default_true() -> bool {
    true
}

impl SendMigrationConfig {
    /// A migration to `url` with every default.
    pub fn to(url: &str) -> Self {
        Self {
            destination_url: url.to_owned(),
            downtime_ms: default_downtime_ms(),
            timeout_s: default_timeout_s(),
            timeout_strategy: TimeoutStrategy::Cancel,
            max_bandwidth: 0,
            auto_converge: true,
            local: false,
            tls_dir: None,
        }
    }
}

/// The body of `PUT /api/v1/vm.receive-migration`, accepted by a `vireo run --api-socket`
/// started without a payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveMigrationConfig {
    /// Where to listen for the source: `unix:/path`, `tcp:host:port` or `tls:host:port`.
    pub receiver_url: String,
    /// For `tls:` URLs: a directory with `ca.pem`, `cert.pem` and `key.pem`.
    #[serde(default)]
    pub tls_dir: Option<std::path::PathBuf>,
}

/// Where a live migration is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationPhase {
    /// No migration has been asked for.
    #[default]
    None,
    /// Connecting, negotiating and sending the configuration.
    Setup,
    /// Sending memory while the guest runs.
    Precopy,
    /// The guest is paused: last pages, then the device and vCPU state.
    Downtime,
    /// The target runs the guest; this VM has stopped.
    Completed,
    /// Cancelled through `vm.cancel-migration` (or a timeout with strategy cancel); the guest
    /// runs on here.
    Cancelled,
    /// The migration failed; the guest runs on here.
    Failed,
}

/// The answer to `GET /api/v1/vm.migration`: the progress of the current (or last) migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationInfo {
    /// Where it is.
    pub phase: MigrationPhase,
    /// The dirty-page tracking in use: `ring` (the KVM dirty ring) or `bitmap`.
    pub dirty_log: String,
    /// Pre-copy passes begun (pass 0 sends every page the guest has touched).
    pub pass: u32,
    /// Bytes written to the target so far (pages and state, with framing).
    pub bytes_sent: u64,
    /// Guest pages sent so far (a page sent in two passes counts twice).
    pub pages_sent: u64,
    /// Dirty bytes still to send, as of the last pass.
    pub bytes_left: u64,
    /// The guest's dirty rate in the last pass, bytes per second.
    pub dirty_rate: u64,
    /// Throughput of the last pass, bytes per second.
    pub throughput: u64,
    /// The downtime the pages still dirty would cost at that throughput, milliseconds.
    pub expected_downtime_ms: u64,
    /// How hard auto-converge throttles the vCPUs, percent (0: not at all).
    pub throttle_percent: u8,
    /// Times a vCPU stopped because its dirty ring was full (ring mode).
    pub ring_full_exits: u64,
    /// Once completed: from the source's pause to the target's answer that it runs, ms.
    pub downtime_ms: Option<f64>,
    /// Once ended: the whole migration, milliseconds.
    pub total_ms: Option<f64>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
}
