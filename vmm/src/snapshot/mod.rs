//! Snapshots: a paused VM saved to a directory, and a new VM restored from one.
//!
//! ```text
//!  DIR/config.json   the launch spec (VmConfig, MACs filled in), editable paths and taps
//!  DIR/state.bin     header (magic, format major.minor, Vireo version) · CBOR body · CRC-32
//!                      body: platform flags, memory regions, VM state (PICs, IOAPIC, PIT,
//!                      clock), every vCPU's state, every device's state by stable id
//!  DIR/memory.bin    guest RAM, sparse: pages never touched or all zero are holes
//! ```
//! Saving ([`Vm::snapshot`]) pauses a running VM (vCPUs parked, devices quiesced at a request
//! boundary), flushes every disk so the images hold every completed write, reads all state,
//! writes the three files (each under a temporary name, then renamed, so a VM restored from
//! the same directory keeps its mapping of the old memory file) and resumes the VM if it was
//! running.
//!
//! Restoring ([`restore`]) builds the VM with the builder's platform and device steps from
//! the saved spec (with overrides where host paths differ), skips payload loading, maps or
//! reads guest memory from the memory file, and applies the saved state: devices matched by
//! id (a disk whose size changed is refused), vCPUs in KVM's order, then the VM-wide state
//! with the clock advanced by the time that passed. Any error leaves nothing running: the
//! half-built VM is dropped.

pub mod format;
pub mod memory_file;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::info;

use crate::builder::{self, PlatformFlags};
use crate::config::{probe_host_limits, SerialConfig, VmConfig};
use crate::device_manager::persist::{self as device_persist, DeviceRecord};
use crate::device_manager::SpecDevice;
use crate::kvm::KvmContext;
use crate::lifecycle::VmState;
use crate::vm::{Vm, VmError};
use crate::vstate::cpu_state::{self, VcpuState, VcpuStateError};
use crate::vstate::vm_state::{self, VmPlatformState, VmStateError};
pub use format::{FormatError, Header};
pub use memory_file::{MemoryFileError, MemoryRestore, RegionEntry};

/// The spec file in a snapshot directory.
pub const CONFIG_FILE: &str = "config.json";
/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state.bin";
/// The guest memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory.bin";
/// The largest spec file accepted.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The state file's body.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// What the payload decided at cold boot.
    pub flags: PlatformFlags,
    /// Where each RAM region is in the memory file.
    pub memory: Vec<RegionEntry>,
    /// PICs, IOAPIC, PIT and the KVM clock.
    pub vm: VmPlatformState,
    /// Every vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// Every device, by stable id.
    pub devices: Vec<DeviceRecord>,
}

/// Why a snapshot could not be taken or restored.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// The VM is not in a state that can be saved.
    #[error("cannot snapshot a VM that is {0}")]
    State(VmState),
    /// A snapshot file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state file is malformed, of another version, truncated or corrupted.
    #[error("{path}: {source}")]
    Format {
        /// The state file.
        path: String,
        /// What is wrong with it.
        source: FormatError,
    },
    /// The spec file is not a valid launch spec.
    #[error("{path}: {source}")]
    Config {
        /// The spec file.
        path: String,
        /// What is wrong with it.
        source: vireo_spec::LoadError,
    },
    /// The memory file does not hold what the state says.
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    /// A vCPU's state could not be read or written.
    #[error(transparent)]
    Vcpu(#[from] VcpuStateError),
    /// The VM-wide state could not be read or written.
    #[error(transparent)]
    Platform(#[from] VmStateError),
    /// A device's state could not be saved or applied.
    #[error(transparent)]
    Device(#[from] device_persist::DevicePersistError),
    /// The state and the spec disagree.
    #[error("the snapshot is inconsistent: {0}")]
    Mismatch(String),
    /// A VNC address was given for a VM without a VNC console.
    #[error("the VM has no VNC console to listen for")]
    NoVnc,
    /// An override names a device the snapshot does not have.
    #[error("no {kind} {id} in the snapshot")]
    UnknownOverride {
        /// `disk` or `net`.
        kind: &'static str,
        /// The id given.
        id: String,
    },
    /// This host cannot save the state (e.g. an XSAVE area larger than 4 KiB).
    #[error("this host cannot snapshot: {0}")]
    Unsupported(String),
    /// Building the VM failed.
    #[error(transparent)]
    Vm(#[from] Box<VmError>),
}

impl From<VmError> for SnapshotError {
    fn from(e: VmError) -> Self {
        SnapshotError::Vm(Box::new(e))
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What a snapshot wrote, and how long the VM was held for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotReport {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// Guest memory size (the memory file's length).
    pub memory_bytes: u64,
    /// Page data written to the memory file.
    pub memory_data_bytes: u64,
    /// Size of the state file.
    pub state_bytes: u64,
    /// How long the VM stayed paused for the snapshot.
    pub paused: std::time::Duration,
}

/// Writes `bytes` to `dir/name` through a temporary file renamed into place.
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SnapshotError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

impl Vm {
    /// Saves this VM to `dir` (created if missing). A running VM is paused for the snapshot
    /// and resumed after it; a paused VM stays paused. Fails without touching the VM's
    /// progress if it has not started or has stopped.
    pub fn snapshot(&self, dir: &Path) -> Result<SnapshotReport, SnapshotError> {
        let _transition = self.transition_lock();
        let was_running = match self.state() {
            VmState::Running => true,
            VmState::Paused => false,
            other => return Err(SnapshotError::State(other)),
        };
        let started = Instant::now();
        if was_running {
            self.pause_locked().map_err(SnapshotError::from)?;
        }
        let result = self.save_to(dir);
        let paused = started.elapsed();
        if was_running {
            // Resume even if saving failed: a failed snapshot must not stop the VM.
            if let Err(e) = self.resume_locked() {
                tracing::warn!(error = %e, "cannot resume the VM after a snapshot");
            }
        }
        let mut report = result?;
        report.paused = paused;
        info!(dir = %dir.display(), data = report.memory_data_bytes, paused_us = paused.as_micros() as u64, "snapshot written");
        Ok(report)
    }

    /// The paused VM's state, disks flushed first (so their images hold every completed
    /// write), with the memory layout of its RAM regions back to back.
    pub(crate) fn save_state(&self) -> Result<VmSnapshot, SnapshotError> {
        let xsave = self
            .kvm()
            .kvm()
            .check_extension_int(kvm_ioctls::Cap::Xsave2);
        if xsave > 4096 {
            return Err(SnapshotError::Unsupported(format!(
                "its XSAVE area is {xsave} bytes; Vireo saves the 4096-byte legacy area"
            )));
        }
        device_persist::flush_disks(self.devices())?;
        let msrs = cpu_state::msrs_to_save(self.kvm().kvm());
        let mut vcpus = Vec::with_capacity(self.vcpu_fds().len());
        for (index, fd) in (0u8..).zip(self.vcpu_fds()) {
            let fd = fd.lock().unwrap_or_else(|p| p.into_inner());
            vcpus.push(cpu_state::save(&fd, index, &msrs)?);
        }
        Ok(VmSnapshot {
            flags: self.flags(),
            memory: memory_file::layout(self.config().memory_bytes()),
            vm: vm_state::save(self.vm_fd())?,
            vcpus,
            devices: device_persist::save(self.devices()),
        })
    }

    /// Saves the paused VM.
    fn save_to(&self, dir: &Path) -> Result<SnapshotReport, SnapshotError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut body = self.save_state()?;
        let mem_tmp = dir.join(format!(".{MEMORY_FILE}.tmp"));
        let (memory, stats) = memory_file::write(self.memory(), &mem_tmp)?;
        body.memory = memory;
        let mem_path = dir.join(MEMORY_FILE);
        std::fs::rename(&mem_tmp, &mem_path).map_err(io_err(&mem_path))?;
        let config = device_persist::effective_config(self.config(), &body.devices);
        let state = format::encode(&body).map_err(|source| SnapshotError::Format {
            path: dir.join(STATE_FILE).display().to_string(),
            source,
        })?;
        write_file(dir, STATE_FILE, &state)?;
        let json = serde_json::to_vec_pretty(&config).map_err(|e| SnapshotError::Io {
            path: dir.join(CONFIG_FILE).display().to_string(),
            source: std::io::Error::other(e),
        })?;
        write_file(dir, CONFIG_FILE, &json)?;
        Ok(SnapshotReport {
            dir: dir.to_owned(),
            memory_bytes: self.config().memory_bytes(),
            memory_data_bytes: stats.data_bytes,
            state_bytes: state.len() as u64,
            paused: std::time::Duration::ZERO,
        })
    }
}

/// How to restore: memory mode, start state and host-side overrides.
#[derive(Default)]
pub struct RestoreOptions {
    /// Map guest memory lazily (default) or read it all first.
    pub memory: MemoryRestore,
    /// Leave the VM paused after restore: [`Vm::start`] then starts its vCPUs parked and its
    /// devices quiesced, and nothing runs until [`Vm::resume`].
    pub paused: bool,
    /// A different serial console than the snapshot's spec names.
    pub serial: Option<SerialConfig>,
    /// `(disk id, image path)`: disks whose image is elsewhere on this host (`disk0`, …).
    pub disks: Vec<(String, PathBuf)>,
    /// `(nic id, tap name)`: NICs to attach to another tap (`net0`, …).
    pub nets: Vec<(String, String)>,
    /// The control API socket the restoring process serves (the spec's `api_socket` names the
    /// saved process's, which this one does not serve); `None`: none.
    pub api_socket: Option<PathBuf>,
    /// Send COM1 output here instead of the console (for embedders and tests).
    pub serial_writer: Option<Box<dyn std::io::Write + Send>>,
    /// Where this process's VNC console listens instead of the saved spec's address (a VM
    /// received on the same host needs another address than its source, which still holds
    /// the saved one until the switch; port 0 picks a free one).
    pub vnc: Option<vireo_spec::VncListen>,
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("memory", &self.memory)
            .field("paused", &self.paused)
            .field("serial", &self.serial)
            .field("disks", &self.disks)
            .field("nets", &self.nets)
            .field("api_socket", &self.api_socket)
            .field("vnc", &self.vnc)
            .finish_non_exhaustive()
    }
}

/// Reads a snapshot's spec and decoded state, checking them against each other but not
/// against this host.
pub fn read(dir: &Path) -> Result<(VmConfig, VmSnapshot), SnapshotError> {
    let config_path = dir.join(CONFIG_FILE);
    let state_path = dir.join(STATE_FILE);
    let config = read_limited(&config_path, MAX_CONFIG_BYTES)?;
    let config = String::from_utf8_lossy(&config);
    let config = VmConfig::from_json(&config).map_err(|source| SnapshotError::Config {
        path: config_path.display().to_string(),
        source,
    })?;
    let state = read_limited(&state_path, format::MAX_STATE_BYTES as u64)?;
    let (_, snapshot): (Header, VmSnapshot) =
        format::decode(&state).map_err(|source| SnapshotError::Format {
            path: state_path.display().to_string(),
            source,
        })?;
    if snapshot.vcpus.len() != usize::from(config.vcpus) {
        return Err(SnapshotError::Mismatch(format!(
            "the spec has {} vCPUs, the state {}",
            config.vcpus,
            snapshot.vcpus.len()
        )));
    }
    if let Some((i, v)) = (0u8..).zip(&snapshot.vcpus).find(|(i, v)| v.index != *i) {
        return Err(SnapshotError::Mismatch(format!(
            "vCPU record {i} is for vCPU {}",
            v.index
        )));
    }
    Ok((config, snapshot))
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, SnapshotError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > limit {
        return Err(SnapshotError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(format!("larger than {limit} bytes")),
        });
    }
    Ok(bytes)
}

/// Applies the host-side overrides of `opts` to the snapshot's spec.
pub(crate) fn apply_overrides(
    config: &mut VmConfig,
    opts: &RestoreOptions,
) -> Result<(), SnapshotError> {
    config.api_socket = opts.api_socket.clone();
    if let Some(serial) = &opts.serial {
        config.serial = serial.clone();
    }
    if let Some(listen) = &opts.vnc {
        config.vnc.as_mut().ok_or(SnapshotError::NoVnc)?.listen = listen.clone();
    }
    let unknown = |kind: SpecDevice, id: &str| SnapshotError::UnknownOverride {
        kind: match kind {
            SpecDevice::Disk => "disk",
            SpecDevice::Net => "net",
        },
        id: id.to_owned(),
    };
    for (id, path) in &opts.disks {
        let disk = SpecDevice::Disk
            .index_of(id)
            .and_then(|n| config.disks.get_mut(n))
            .ok_or_else(|| unknown(SpecDevice::Disk, id))?;
        disk.path = path.clone();
    }
    for (id, tap) in &opts.nets {
        let nic = SpecDevice::Net
            .index_of(id)
            .and_then(|n| config.nets.get_mut(n))
            .ok_or_else(|| unknown(SpecDevice::Net, id))?;
        nic.tap = tap.clone();
    }
    Ok(())
}

/// Restores the VM saved in `dir`. The returned VM is Created; [`Vm::start`] runs it (or
/// starts it paused, with [`RestoreOptions::paused`]).
pub fn restore(dir: &Path, mut opts: RestoreOptions) -> Result<Vm, SnapshotError> {
    let started = Instant::now();
    let (mut config, snapshot) = read(dir)?;
    apply_overrides(&mut config, &opts)?;
    let kvm = KvmContext::open().map_err(VmError::from)?;
    config
        .validate_on(&probe_host_limits(kvm.max_vcpus()))
        .map_err(VmError::from)?;
    let memory = memory_file::restore(
        &dir.join(MEMORY_FILE),
        &snapshot.memory,
        config.memory_bytes(),
        opts.memory,
    )?;
    let platform = builder::create_platform(&kvm, &memory, builder::dirty_log_mode(&config))?;
    let paused = opts.paused;
    let vm = apply_state(
        Prepared {
            kvm,
            platform,
            memory,
            config,
        },
        &snapshot,
        opts.serial_writer.take(),
        paused,
        Vec::new(),
    )?;
    info!(dir = %dir.display(), paused, elapsed_us = started.elapsed().as_micros() as u64, "VM restored");
    Ok(vm)
}

/// A VM half-built for a restore or an incoming migration: KVM, the platform (VM fd, memory
/// slots, irqchip, PIT), guest memory, and the spec to build the rest from.
pub(crate) struct Prepared {
    pub(crate) kvm: KvmContext,
    pub(crate) platform: builder::Platform,
    pub(crate) memory: crate::memory::GuestMemory,
    pub(crate) config: VmConfig,
}

/// The rest of a restore once guest memory holds the saved pages and the platform exists:
/// creates the devices from `config` and applies the saved device state, creates the vCPUs
/// and applies theirs, then the VM-wide state (the clock advanced by the time that passed).
/// The VM is Created; it starts paused if `paused`. NICs use the taps in `taps` where given
/// (by index; a local migration hands them over). Shared by snapshot restore and the
/// live-migration target.
pub(crate) fn apply_state(
    prepared: Prepared,
    snapshot: &VmSnapshot,
    serial_writer: Option<Box<dyn std::io::Write + Send>>,
    paused: bool,
    taps: Vec<Option<vireo_net::Tap>>,
) -> Result<Vm, SnapshotError> {
    let Prepared {
        kvm,
        platform,
        memory,
        config,
    } = prepared;
    if snapshot.vcpus.len() != usize::from(config.vcpus) {
        return Err(SnapshotError::Mismatch(format!(
            "the spec has {} vCPUs, the state {}",
            config.vcpus,
            snapshot.vcpus.len()
        )));
    }
    let parts = builder::create_devices(
        platform,
        memory,
        config,
        builder::ConsoleOpen {
            writer: serial_writer,
            stdout_copy: None,
            continuing: true,
        },
        snapshot.flags,
        taps,
    )?;
    device_persist::restore(&parts.devices, &snapshot.devices)?;
    let mut vcpus = Vec::with_capacity(snapshot.vcpus.len());
    for state in &snapshot.vcpus {
        let fd = builder::create_vcpu(&parts.vm_fd, state.index)?;
        cpu_state::restore(&fd, state)?;
        vcpus.push(fd);
    }
    let realtime = kvm.kvm().check_extension_int(kvm_ioctls::Cap::AdjustClock) as u32
        & kvm_bindings::KVM_CLOCK_REALTIME
        != 0;
    vm_state::restore(&parts.vm_fd, &snapshot.vm, realtime)?;
    for fd in &vcpus {
        // Only a guest using kvmclock has anything to be told; others answer EINVAL.
        let _ = fd.kvmclock_ctrl();
    }
    let vm = parts.into_vm(kvm, vcpus)?;
    vm.set_start_paused(paused);
    if !paused {
        device_persist::resume(vm.devices());
    }
    Ok(vm)
}
