//! The control API: the running [`Vm`]'s typed methods as HTTP/1.1 + JSON on a unix socket,
//! on Cloud Hypervisor's paths (`/api/v1/vm.pause`, …) so its users' habits carry over.
//!
//! ```text
//!  bytes ──http::decode──► router::route ──► ApiRequest ──handle──► Vm method ──► Response
//!          (httparse, limits)  (path, method)     (one variant per endpoint)
//! ```
//! - [`http`]: framing and limits (64 KiB head, 1 MiB body), statuses, answers;
//! - [`router`]: paths and methods to [`ApiRequest`];
//! - [`server`]: the socket, its threads and timeouts;
//! - this module: [`serve`] / [`serve_waiting`] and the handlers on the [`VmSlot`]. Bodies are
//!   the types of [`vireo_spec::api`].
//!
//! Live migration: `vm.send-migration` answers when the migration has ended (as Cloud
//! Hypervisor's does) with its final `MigrationInfo`; meanwhile `vm.migration` reports its
//! progress and `vm.cancel-migration` stops it, from other connections. A `vireo` without a
//! VM takes `vm.receive-migration`, which answers once the received VM runs.
//!
//! A `vireo` started without a payload serves the API with an empty [`VmSlot`] and waits for
//! `PUT /api/v1/vm.restore` (as Cloud Hypervisor's `--api-socket` alone does); until then
//! only `vmm.ping`, `vm.restore` and `vmm.shutdown` do anything, the rest answer 409.
//!
//! A stop the API forces on the guest (`vm.shutdown`, `vmm.shutdown` of a VM that has not
//! ended) first calls the embedder's [`ApiHooks::before_forced_stop`], so the launcher can
//! report it as a forced stop rather than a poweroff.

pub mod http;
pub mod router;
pub mod server;

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use thiserror::Error;
use tracing::info;
use vireo_spec::api::{
    file_url_path, ApiVmState, DeviceInfo, MemoryInfo, ReceiveMigrationConfig, RestoreConfig,
    SnapshotInfo, VmCounters, VmInfo, VmSnapshotConfig, VmmPingResponse,
};

use crate::console::ConsoleError;
use crate::device_manager::SpecDevice;
use crate::lifecycle::VmState;
use crate::migration::{self, transport, MigrationError};
use crate::snapshot::{self, MemoryRestore, RestoreOptions, SnapshotError};
use crate::vm::{Vm, VmError};
pub use http::{HttpError, Response, Status};
pub use router::ApiRequest;
pub use server::{ApiServer, Limits};

/// Why the control API could not be started.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The socket could not be bound.
    #[error("cannot serve the control API: {0}")]
    Bind(#[source] ConsoleError),
    /// The accept thread could not be started.
    #[error("cannot start the control API thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What the embedder wants to hear about.
#[derive(Clone, Default)]
pub struct ApiHooks {
    /// Called before the API stops a VM that has not ended (`vm.shutdown`, `vmm.shutdown`):
    /// the stop is forced on the guest, not a poweroff.
    pub before_forced_stop: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for ApiHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiHooks")
            .field("before_forced_stop", &self.before_forced_stop.is_some())
            .finish()
    }
}

/// Where the API finds its VM: there from the start ([`serve`]) or put there by a
/// `vm.restore` ([`serve_waiting`]).
#[derive(Debug, Default)]
pub struct VmSlot {
    state: Mutex<SlotState>,
    changed: Condvar,
    /// The socket this slot is served on (a restored VM's spec names it).
    socket: Option<std::path::PathBuf>,
}

#[derive(Debug, Default)]
struct SlotState {
    vm: Option<Arc<Vm>>,
    /// `vmm.shutdown` arrived before any VM.
    shutdown: bool,
    /// A `vm.receive-migration` is waiting for or receiving a VM; cancelling cuts it.
    receiving: Option<transport::Canceller>,
}

impl VmSlot {
    /// A slot holding `vm`.
    pub fn with(vm: Arc<Vm>) -> Self {
        Self {
            state: Mutex::new(SlotState {
                vm: Some(vm),
                shutdown: false,
                receiving: None,
            }),
            changed: Condvar::new(),
            socket: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The VM, if there is one yet.
    pub fn vm(&self) -> Option<Arc<Vm>> {
        self.lock().vm.clone()
    }

    /// Asks whoever waits in [`VmSlot::wait_for_vm`] to give up (as `vmm.shutdown` does before
    /// any VM exists); a VM already here is not affected.
    pub fn request_shutdown(&self) {
        let mut g = self.lock();
        g.shutdown = true;
        if let Some(c) = &g.receiving {
            c.cancel();
        }
        self.changed.notify_all();
    }

    /// Blocks until a `vm.restore` puts a (started) VM here, or `vmm.shutdown` asks the
    /// process to end first (`None`).
    pub fn wait_for_vm(&self) -> Option<Arc<Vm>> {
        let mut g = self.lock();
        loop {
            if let Some(vm) = &g.vm {
                return Some(vm.clone());
            }
            if g.shutdown {
                return None;
            }
            g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Serves the control API for `vm` on `path` with the default [`Limits`]. The socket path
/// exists once this returns and is removed when the returned server is closed or dropped.
pub fn serve(path: &Path, vm: Arc<Vm>, hooks: ApiHooks) -> Result<ApiServer, ApiError> {
    let (server, _) = serve_slot(path, Arc::new(VmSlot::with(vm)), hooks)?;
    Ok(server)
}

/// Serves the control API on `path` with no VM yet: a `PUT /api/v1/vm.restore` restores and
/// starts one (see [`VmSlot::wait_for_vm`]).
pub fn serve_waiting(path: &Path, hooks: ApiHooks) -> Result<(ApiServer, Arc<VmSlot>), ApiError> {
    let slot = VmSlot {
        socket: Some(path.to_owned()),
        ..VmSlot::default()
    };
    serve_slot(path, Arc::new(slot), hooks)
}

fn serve_slot(
    path: &Path,
    slot: Arc<VmSlot>,
    hooks: ApiHooks,
) -> Result<(ApiServer, Arc<VmSlot>), ApiError> {
    let handler_slot = slot.clone();
    let handler: server::Handler =
        Arc::new(move |request| handle_slot(&handler_slot, &hooks, request));
    let server = ApiServer::start(path, handler, Limits::default())?;
    info!(path = %path.display(), "control API listening");
    Ok((server, slot))
}

fn handle_slot(slot: &VmSlot, hooks: &ApiHooks, request: ApiRequest) -> Response {
    if let ApiRequest::VmRestore(config) = &request {
        return restore_into(slot, config);
    }
    if let ApiRequest::VmReceiveMigration(config) = &request {
        return receive_into(slot, config);
    }
    match slot.vm() {
        Some(vm) => handle(&vm, hooks, request),
        None => match request {
            ApiRequest::VmmPing => ping(),
            ApiRequest::VmmShutdown => {
                slot.request_shutdown();
                Response::no_content()
            }
            _ => Response::error(&HttpError::new(
                Status::Conflict,
                "no VM yet: this vireo waits for PUT /api/v1/vm.restore",
            )),
        },
    }
}

/// `vm.restore`: restores the snapshot and starts the VM (paused unless `resume`), then
/// hands it to whoever waits on the slot. Held under the slot's lock, so two restores cannot
/// race.
fn restore_into(slot: &VmSlot, config: &RestoreConfig) -> Response {
    let socket = slot.socket.clone();
    let mut g = slot.lock();
    if g.vm.is_some() || g.shutdown || g.receiving.is_some() {
        return Response::error(&HttpError::new(
            Status::Conflict,
            "this vireo already has a VM; vm.restore needs one started without a payload",
        ));
    }
    let dir = match file_url_path(&config.source_url) {
        Ok(d) => d,
        Err(e) => return Response::error(&HttpError::new(Status::BadRequest, e)),
    };
    let opts = RestoreOptions {
        memory: if config.prefault {
            MemoryRestore::Eager
        } else {
            MemoryRestore::Lazy
        },
        paused: !config.resume,
        api_socket: socket,
        ..RestoreOptions::default()
    };
    let vm = match snapshot::restore(&dir, opts) {
        Ok(vm) => Arc::new(vm),
        Err(e) => return snapshot_error(&e),
    };
    if let Err(e) = vm.start() {
        return Response::error(&HttpError::new(Status::InternalServerError, e.to_string()));
    }
    info!(dir = %dir.display(), resumed = config.resume, "control API: VM restored");
    g.vm = Some(vm);
    slot.changed.notify_all();
    Response::no_content()
}

/// `vm.receive-migration`: listens at the URL, receives one VM and starts it, then hands it to
/// whoever waits on the slot. Answers once the VM runs here (or the migration failed). The
/// slot is not locked meanwhile, so `vmm.shutdown` can cut the wait.
fn receive_into(slot: &VmSlot, config: &ReceiveMigrationConfig) -> Response {
    let conflict = || {
        Response::error(&HttpError::new(
            Status::Conflict,
            "this vireo already has a VM (or is receiving one); vm.receive-migration needs one started without a payload",
        ))
    };
    let listener = {
        let mut g = slot.lock();
        if g.vm.is_some() || g.shutdown || g.receiving.is_some() {
            return conflict();
        }
        let url: migration::MigrationUrl = match config.receiver_url.parse() {
            Ok(u) => u,
            Err(e) => return Response::error(&HttpError::new(Status::BadRequest, e.to_string())),
        };
        let listener = match transport::listen(&url, config.tls_dir.as_deref()) {
            Ok(l) => l,
            Err(e) => return migration_error(&MigrationError::from(e)),
        };
        g.receiving = Some(listener.canceller());
        info!(url = %url, "control API: waiting for the migration source");
        listener
    };
    let result = listener
        .accept()
        .map_err(MigrationError::from)
        .and_then(|conn| {
            // The accepted connection is cut by a shutdown too.
            let mut g = slot.lock();
            if g.shutdown {
                return Err(MigrationError::Cancelled);
            }
            g.receiving = Some(conn.canceller());
            drop(g);
            let opts = migration::ReceiveOptions {
                host: RestoreOptions {
                    api_socket: slot.socket.clone(),
                    ..RestoreOptions::default()
                },
                ..migration::ReceiveOptions::default()
            };
            migration::receive(conn, opts)
        });
    drop(listener);
    let mut g = slot.lock();
    g.receiving = None;
    match result {
        Ok(vm) => {
            info!("control API: VM received by live migration");
            g.vm = Some(Arc::new(vm));
            slot.changed.notify_all();
            Response::no_content()
        }
        Err(e) => migration_error(&e),
    }
}

fn migration_error(e: &MigrationError) -> Response {
    let status = match e {
        MigrationError::State(_) | MigrationError::Busy | MigrationError::NotRunning => {
            Status::Conflict
        }
        MigrationError::Invalid(_)
        | MigrationError::Transport(transport::TransportError::BadUrl(_))
        | MigrationError::Transport(transport::TransportError::NoTlsDir) => Status::BadRequest,
        _ => Status::InternalServerError,
    };
    Response::error(&HttpError::new(status, e.to_string()))
}

fn snapshot_error(e: &SnapshotError) -> Response {
    let status = match e {
        SnapshotError::State(_) => Status::Conflict,
        SnapshotError::Format { .. }
        | SnapshotError::Config { .. }
        | SnapshotError::Memory(_)
        | SnapshotError::Mismatch(_)
        | SnapshotError::UnknownOverride { .. }
        | SnapshotError::Device(_) => Status::BadRequest,
        _ => Status::InternalServerError,
    };
    Response::error(&HttpError::new(status, e.to_string()))
}

fn ping() -> Response {
    Response::json(&VmmPingResponse {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
    })
}

fn snapshot_to(vm: &Vm, config: &VmSnapshotConfig) -> Response {
    let dir = match file_url_path(&config.destination_url) {
        Ok(d) => d,
        Err(e) => return Response::error(&HttpError::new(Status::BadRequest, e)),
    };
    match vm.snapshot(&dir) {
        Ok(r) => Response::json(&SnapshotInfo {
            path: r.dir.display().to_string(),
            memory_bytes: r.memory_bytes,
            memory_data_bytes: r.memory_data_bytes,
            state_bytes: r.state_bytes,
            paused_us: u64::try_from(r.paused.as_micros()).unwrap_or(u64::MAX),
        }),
        Err(e) => snapshot_error(&e),
    }
}

/// Carries out `request` on `vm` and says how to answer.
pub fn handle(vm: &Vm, hooks: &ApiHooks, request: ApiRequest) -> Response {
    match request {
        ApiRequest::VmmPing => ping(),
        ApiRequest::VmInfo => Response::json(&vm_info(vm)),
        ApiRequest::VmCounters => Response::json(&vm_counters(vm)),
        ApiRequest::VmPause => done(vm.pause()),
        ApiRequest::VmResume => done(vm.resume()),
        ApiRequest::VmPowerButton => done(vm.press_power_button()),
        ApiRequest::VmSnapshot(config) => snapshot_to(vm, &config),
        ApiRequest::VmRestore(_) | ApiRequest::VmReceiveMigration(_) => {
            Response::error(&HttpError::new(
                Status::Conflict,
                "this vireo already has a VM; vm.restore and vm.receive-migration need one started without a payload",
            ))
        }
        ApiRequest::VmSendMigration(config) => match vm.migrate(&config) {
            Ok(_) => Response::json(&vm.migration_info()),
            Err(e) => migration_error(&e),
        },
        ApiRequest::VmMigration => Response::json(&vm.migration_info()),
        ApiRequest::VmCancelMigration => match vm.cancel_migration() {
            Ok(()) => Response::no_content(),
            Err(e) => migration_error(&e),
        },
        ApiRequest::VmShutdown | ApiRequest::VmmShutdown => {
            let state = vm.state();
            if state == VmState::Stopped {
                if request == ApiRequest::VmShutdown {
                    return Response::error(&HttpError::new(
                        Status::Conflict,
                        "cannot shut down a VM that is stopped",
                    ));
                }
            } else if let Some(hook) = &hooks.before_forced_stop {
                hook();
            }
            info!(?request, "control API: stopping the VM");
            let reason = vm.shutdown();
            info!(%reason, "control API: VM stopped");
            Response::no_content()
        }
    }
}

fn done(result: Result<(), VmError>) -> Response {
    match result {
        Ok(()) => Response::no_content(),
        Err(e) => {
            let status = match e {
                VmError::Transition(_) | VmError::NoPowerButton => Status::Conflict,
                _ => Status::InternalServerError,
            };
            Response::error(&HttpError::new(status, e.to_string()))
        }
    }
}

/// The control API's spelling of `state`.
pub fn api_state(state: VmState) -> ApiVmState {
    match state {
        VmState::Created => ApiVmState::Created,
        VmState::Running => ApiVmState::Running,
        VmState::Paused => ApiVmState::Paused,
        VmState::Stopped => ApiVmState::Shutdown,
    }
}

/// The VM's PCI devices with their stable ids: disks first, then NICs, each in spec order,
/// then the tablet if the VM has one, from slot 1 (as `device_manager::attach` places them).
pub fn devices(vm: &Vm) -> Vec<DeviceInfo> {
    let config = vm.config();
    let disks = (0..config.disks.len()).map(|i| (SpecDevice::Disk.id(i), "virtio-blk"));
    let nets = (0..config.nets.len()).map(|i| (SpecDevice::Net.id(i), "virtio-net"));
    let tablet = vm.tablet().map(|_| ("tablet0".to_owned(), "virtio-input"));
    disks
        .chain(nets)
        .chain(tablet)
        .zip(1u32..)
        .map(|((id, kind), slot)| DeviceInfo {
            id,
            kind: kind.to_owned(),
            bdf: format!("0000:00:{slot:02x}.0"),
        })
        .collect()
}

fn vm_info(vm: &Vm) -> VmInfo {
    VmInfo {
        state: api_state(vm.state()),
        config: vm.config().clone(),
        devices: devices(vm),
        memory: MemoryInfo {
            guest_bytes: vm.config().memory_bytes(),
            guest_resident_bytes: crate::memory::resident_bytes(vm.memory()).unwrap_or(0),
            process_resident_bytes: process_resident_bytes().unwrap_or(0),
        },
        vnc: vm.vnc_address(),
    }
}

fn vm_counters(vm: &Vm) -> VmCounters {
    let mut out = VmCounters::new();
    for (device, (_, counters)) in devices(vm).into_iter().zip(vm.device_counters()) {
        let counters = counters.into_iter().map(|(k, v)| (k.to_owned(), v));
        out.insert(device.id, counters.collect());
    }
    let serial = vm.console_counters().pairs();
    out.insert(
        "serial".to_owned(),
        serial.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    );
    out
}

/// The process's resident set in bytes, from `/proc/self/statm` (pages × page size).
fn process_resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).ok()?))
}
