//! Runs one VM to completion and maps how it ended to an exit status.
//!
//! Signals: SIGTERM presses the guest's ACPI power button and stops the VM
//! forcibly if it has not powered off within the shutdown timeout (at once
//! for guests without ACPI); SIGINT and SIGHUP stop it at once. Either way
//! the VMM cleans up (sockets) and exits with the VM's status; a stop the VMM
//! forced on a guest that could have powered off is exit status 8
//! ([`ExitStatus::ForcedStop`]), never 0.
//!
//! `vireo launch` (the pod launcher, [`launch_vm`]) treats a guest reset as QEMU under libvirt
//! and KubeVirt do: it builds the same launch spec again and boots it in the same process (the
//! serial and API sockets come back at the same paths, a serial file is appended to), so the
//! pod and the VM stay running. `vireo run` ([`run_vm`]) ends with exit status 3 instead.
//!
//! With an API socket, the control API is served from when the VM is built until it stops;
//! a `vm.shutdown` or `vmm.shutdown` through it is a forced stop too (the API calls back
//! before stopping the VM, and the callback sets the same `forced` flag as the signals).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{info, warn};
use vireo_spec::ExitStatus;
use vireo_vmm::api::{self, ApiHooks};
use vireo_vmm::migration;
use vireo_vmm::snapshot::{self, MemoryRestore, RestoreOptions};
use vireo_vmm::{Vm, VmBuilder, VmConfig, VmState};

use crate::cli::{HostArgs, ReceiveArgs, RestoreArgs};
use crate::exit_code;

/// Reads and validates a JSON launch spec with the launch spec's one parser
/// ([`VmConfig::from_json`]); the host's limits are checked when the VM is built.
pub fn load_spec(path: &Path) -> Result<VmConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read launch spec {}", path.display()))?;
    VmConfig::from_json(&text).with_context(|| format!("invalid launch spec {}", path.display()))
}

/// The environment variable by which the controller tells a launcher pod its role in a live
/// migration.
pub const MIGRATION_ROLE_ENV: &str = "VIREO_MIGRATION_ROLE";

/// A launcher's role in a live migration, from [`MIGRATION_ROLE_ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationRole {
    /// Receives the VM from a source launcher (refused until the controller drives pod-to-pod
    /// live migration; `vireo receive` is the VMM-level target).
    Target,
}

/// Reads [`MIGRATION_ROLE_ENV`]: unset or empty means no migration; `target` is the only role
/// the controller sets; anything else is an error rather than a guess.
pub fn migration_role() -> Result<Option<MigrationRole>> {
    match std::env::var_os(MIGRATION_ROLE_ENV) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v == "target" => Ok(Some(MigrationRole::Target)),
        Some(v) => anyhow::bail!(
            "unknown {MIGRATION_ROLE_ENV} {:?} (expected target or unset)",
            v.to_string_lossy()
        ),
    }
}

/// How long `vireo` waits, once the VM has stopped, for control API answers still in flight
/// (a `vm.shutdown` answers after the console flush, which may take up to 1 s).
const API_GRACE: Duration = Duration::from_secs(3);

/// Builds, starts and waits for the VM; returns how it ended.
pub fn run_vm(config: VmConfig, shutdown_timeout: u64) -> Result<ExitStatus> {
    let api_socket = config.api_socket.clone();
    let vm = Arc::new(VmBuilder::new(config).build()?);
    run_built(vm, api_socket.as_deref(), shutdown_timeout)
}

/// How long a reboot in place waits for the previous boot's VM to be released (its taps,
/// sockets and memory) before it builds the next one anyway.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// `vireo launch`'s VM: builds, starts and waits for it like [`run_vm`], but when the guest
/// resets it logs `guest reset: booting again` and builds and boots the same spec again, in
/// this process, for as long as the guest keeps resetting. Returns how the last boot ended
/// (never [`ExitStatus::Reset`]).
///
/// SIGTERM, SIGINT and SIGHUP stop it as they stop [`run_vm`], also between two boots: a
/// signal that arrives after a boot ended in a reset and before the next one started ends the
/// launcher instead of the reboot (SIGTERM as the normal shutdown of a VM that is not running,
/// exit 0; SIGINT and SIGHUP as a forced stop, exit 8).
pub fn launch_vm(config: VmConfig, shutdown_timeout: u64) -> Result<ExitStatus> {
    // Registered for the whole launch, next to each boot's own handlers, so that no signal is
    // lost in the gap between two boots.
    let mut between_boots = install_signals()?;
    let mut previous: Option<std::sync::Weak<Vm>> = None;
    loop {
        // This boot's handlers come before the look at `between_boots`: a signal is either
        // seen there, or handled by this boot.
        let signals = install_signals()?;
        if let Some(signal) = between_boots.pending().next() {
            info!(signal, "signal between two boots: not booting again");
            return Ok(if signal == SIGTERM {
                ExitStatus::PowerOff
            } else {
                ExitStatus::ForcedStop
            });
        }
        let mut builder = VmBuilder::new(config.clone());
        if let Some(previous) = previous.take() {
            wait_released(&previous);
            builder = builder.continuing_console();
        }
        let vm = Arc::new(builder.build()?);
        previous = Some(Arc::downgrade(&vm));
        let status = run_started(
            vm,
            config.api_socket.as_deref(),
            shutdown_timeout,
            signals,
            true,
        )?;
        if status != ExitStatus::Reset {
            return Ok(status);
        }
        info!("guest reset: booting again");
    }
}

/// Waits up to [`RELEASE_WAIT`] until nothing holds the VM of `released` any more (a control
/// API connection still answering may), so that the next boot finds its taps and paths free.
fn wait_released(released: &std::sync::Weak<Vm>) {
    let start = std::time::Instant::now();
    while released.strong_count() > 0 {
        if start.elapsed() >= RELEASE_WAIT {
            warn!("the previous boot's VM is still held; booting again anyway");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The restore options of the host-side flags (`memory` as given).
fn host_options(host: &HostArgs, memory: MemoryRestore) -> RestoreOptions {
    RestoreOptions {
        memory,
        paused: host.paused,
        serial: host.serial.clone(),
        disks: host
            .disks
            .iter()
            .map(|(id, path)| (id.clone(), PathBuf::from(path)))
            .collect(),
        nets: host.nets.clone(),
        api_socket: host.api_socket.clone(),
        serial_writer: None,
        vnc: host.vnc.clone(),
    }
}

/// Restores the VM of `vireo restore`, starts it (paused with `--paused`) and waits for it.
pub fn restore_vm(args: RestoreArgs) -> Result<ExitStatus> {
    let memory = if args.prefault {
        MemoryRestore::Eager
    } else {
        MemoryRestore::Lazy
    };
    let opts = host_options(&args.host, memory);
    let vm = snapshot::restore(&args.source, opts)
        .with_context(|| format!("cannot restore {}", args.source.display()))?;
    run_built(
        Arc::new(vm),
        args.host.api_socket.as_deref(),
        args.host.shutdown_timeout,
    )
}

/// `vireo receive`: listens, receives one VM by live migration (already started when it
/// arrives), then supervises it like any other. SIGTERM, SIGINT or SIGHUP before the source
/// connects end the wait (exit 0, socket removed).
pub fn receive_vm(args: ReceiveArgs) -> Result<ExitStatus> {
    let url: migration::MigrationUrl = args.listen.parse()?;
    // Handlers first: a signal sent once the listening socket exists is never fatal.
    let signals = install_signals()?;
    let listener = migration::transport::listen(&url, args.tls_dir.as_deref())?;
    if let Some(port) = listener.port() {
        info!(port, "waiting for the migration source");
    }
    info!(url = %url, "waiting for the migration source");
    let canceller = listener.canceller();
    let handle = signals.handle();
    let waiting = Arc::new(AtomicBool::new(true));
    let signalled = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (waiting, signalled) = (waiting.clone(), signalled.clone());
        let mut signals = signals;
        std::thread::Builder::new()
            .name("vireo-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    if waiting.load(Ordering::SeqCst) {
                        info!(
                            signal,
                            "no VM yet; ending the wait for the migration source"
                        );
                        signalled.store(true, Ordering::SeqCst);
                        canceller.cancel();
                    }
                }
            })
            .context("cannot start the signal thread")?
    };
    let conn = listener.accept();
    waiting.store(false, Ordering::SeqCst);
    handle.close();
    let _ = watcher.join();
    let conn = match conn {
        Ok(c) => c,
        Err(_) if signalled.load(Ordering::SeqCst) => {
            info!("stopped before any source connected");
            return Ok(ExitStatus::PowerOff);
        }
        Err(e) => return Err(e).context("cannot accept the migration"),
    };
    drop(listener);
    let opts = migration::ReceiveOptions {
        host: host_options(&args.host, MemoryRestore::Lazy),
        expect_memory_mib: args.expect_memory,
        expect_vcpus: args.expect_cpus,
    };
    let vm = Arc::new(migration::receive(conn, opts).context("cannot receive the VM")?);
    let forced = Arc::new(AtomicBool::new(false));
    let signals = install_signals()?;
    let api = match &args.host.api_socket {
        Some(path) => Some(api::serve(path, vm.clone(), forced_hook(&forced))?),
        None => None,
    };
    supervise(vm, api, forced, args.host.shutdown_timeout, signals, false)
}

/// `vireo run --api-socket PATH` without a payload: serves the API, waits for `vm.restore`
/// (which restores and starts the VM) and then runs the VM like any other.
pub fn await_restore(socket: &Path, shutdown_timeout: u64) -> Result<ExitStatus> {
    let forced = Arc::new(AtomicBool::new(false));
    // Until a VM exists, SIGTERM, SIGINT and SIGHUP end the wait as vmm.shutdown does (and
    // the socket is removed); from then on `supervise` handles them for the VM. The handlers
    // are in place before the socket appears, so a signal sent once it exists is never fatal.
    let mut signals = install_signals()?;
    let (server, slot) = api::serve_waiting(socket, forced_hook(&forced))?;
    let handle = signals.handle();
    let watcher = {
        let slot = slot.clone();
        std::thread::Builder::new()
            .name("vireo-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    info!(signal, "no VM to stop; ending the wait for vm.restore");
                    slot.request_shutdown();
                }
            })
            .context("cannot start the signal thread")?
    };
    info!(socket = %socket.display(), "waiting for PUT /api/v1/vm.restore");
    let vm = slot.wait_for_vm();
    handle.close();
    let _ = watcher.join();
    let Some(vm) = vm else {
        info!("stopped before any VM was restored");
        server.close(API_GRACE);
        return Ok(ExitStatus::PowerOff);
    };
    supervise(
        vm,
        Some(server),
        forced,
        shutdown_timeout,
        install_signals()?,
        false,
    )
}

fn forced_hook(forced: &Arc<AtomicBool>) -> ApiHooks {
    let forced = forced.clone();
    ApiHooks {
        before_forced_stop: Some(Arc::new(move || forced.store(true, Ordering::SeqCst))),
    }
}

/// Serves the API for `vm` (if asked), starts it and waits for it.
fn run_built(vm: Arc<Vm>, api_socket: Option<&Path>, shutdown_timeout: u64) -> Result<ExitStatus> {
    // Handlers first: a signal sent once the API socket exists is handled, never fatal.
    let signals = install_signals()?;
    run_started(vm, api_socket, shutdown_timeout, signals, false)
}

/// [`run_built`] with the signal handlers already installed; `reboots` as for [`supervise`].
fn run_started(
    vm: Arc<Vm>,
    api_socket: Option<&Path>,
    shutdown_timeout: u64,
    signals: Signals,
    reboots: bool,
) -> Result<ExitStatus> {
    let forced = Arc::new(AtomicBool::new(false));
    let api = match api_socket {
        Some(path) => Some(api::serve(path, vm.clone(), forced_hook(&forced))?),
        None => None,
    };
    vm.start()?;
    supervise(vm, api, forced, shutdown_timeout, signals, reboots)
}

/// The handlers of SIGTERM, SIGINT and SIGHUP.
fn install_signals() -> Result<Signals> {
    Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")
}

/// Handles signals for the started `vm`, waits for it to stop and maps how it ended to the
/// exit status. With `reboots` (`vireo launch`), a reset is not warned about as an abnormal end:
/// the caller boots the VM again.
fn supervise(
    vm: Arc<Vm>,
    api: Option<api::ApiServer>,
    forced: Arc<AtomicBool>,
    shutdown_timeout: u64,
    signals: Signals,
    reboots: bool,
) -> Result<ExitStatus> {
    let handle = signals.handle();
    let watcher = {
        let (vm, forced) = (vm.clone(), forced.clone());
        let timeout = Duration::from_secs(shutdown_timeout);
        std::thread::Builder::new()
            .name("vireo-signals".into())
            .spawn(move || handle_signals(signals, &vm, timeout, &forced))
            .context("cannot start the signal thread")?
    };
    let reason = vm.wait();
    if let Some(api) = api {
        // Lets the answer to a `vm.shutdown` that ended the VM reach its client.
        api.close(API_GRACE);
    }
    handle.close();
    let _ = watcher.join();
    let status = exit_code::for_exit(&reason, forced.load(Ordering::SeqCst));
    if status == ExitStatus::Reset && reboots {
        info!(%reason, "VM stopped for a reboot");
    } else if status != ExitStatus::PowerOff {
        warn!(%reason, code = status.code(), why = status.description(), "VM exited abnormally");
    }
    Ok(status)
}

/// Stops the VM on SIGTERM (gracefully first), SIGINT and SIGHUP. Sets `forced` before every
/// stop the guest did not ask for and could have avoided: the shutdown timeout, SIGINT, SIGHUP
/// (the control API sets it for its own stops through `ApiHooks::before_forced_stop`).
/// A guest without ACPI cannot be asked to power off, so SIGTERM stopping it at once is its
/// normal shutdown (as KubeVirt counts a destroyed domain without ACPI as succeeded).
fn handle_signals(mut signals: Signals, vm: &Arc<Vm>, timeout: Duration, forced: &Arc<AtomicBool>) {
    for signal in signals.forever() {
        if signal == SIGTERM {
            match vm.press_power_button() {
                Ok(()) => {
                    info!(
                        timeout_s = timeout.as_secs(),
                        "SIGTERM: asked the guest to power off"
                    );
                    let (vm, forced) = (vm.clone(), forced.clone());
                    let _ = std::thread::Builder::new()
                        .name("vireo-shutdown-timer".into())
                        .spawn(move || {
                            std::thread::sleep(timeout);
                            if vm.state() != VmState::Stopped {
                                warn!("guest did not power off in time; stopping it");
                                forced.store(true, Ordering::SeqCst);
                                vm.shutdown();
                            }
                        });
                    continue;
                }
                Err(e) => info!(reason = %e, "SIGTERM: stopping the VM now"),
            }
        } else {
            info!(signal, "stopping the VM");
            forced.store(true, Ordering::SeqCst);
        }
        vm.shutdown();
        return;
    }
}
