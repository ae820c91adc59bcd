//! Runs one VM to completion and maps how it ended to an exit status.
//!
//! Signals: SIGTERM presses the guest's ACPI power button and stops the VM
//! forcibly if it has not powered off within the shutdown timeout (at once
//! for guests without ACPI); SIGINT and SIGHUP stop it at once. Either way
//! the VMM cleans up (sockets) and exits with the VM's status.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{info, warn};
use vireo_vmm::{Vm, VmBuilder, VmConfig, VmState};

use crate::exit_code;

/// Reads a JSON launch spec.
pub fn load_spec(path: &Path) -> Result<VmConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read launch spec {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid launch spec {}", path.display()))
}

/// Builds, starts and waits for the VM; returns the exit status.
pub fn run_vm(config: VmConfig, shutdown_timeout: u64) -> Result<ExitCode> {
    if let Some(path) = &config.api_socket {
        warn!(path = %path.display(), "the control API socket is not served yet; ignoring it");
    }
    let vm = Arc::new(VmBuilder::new(config).build()?);
    let signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")?;
    vm.start()?;
    let handle = signals.handle();
    let watcher = {
        let vm = vm.clone();
        std::thread::Builder::new()
            .name("vireo-signals".into())
            .spawn(move || handle_signals(signals, &vm, Duration::from_secs(shutdown_timeout)))
            .context("cannot start the signal thread")?
    };
    let reason = vm.wait();
    handle.close();
    let _ = watcher.join();
    let code = exit_code::for_exit(&reason);
    if code != 0 {
        warn!(%reason, code, "VM exited abnormally");
    }
    Ok(ExitCode::from(code))
}

fn handle_signals(mut signals: Signals, vm: &Arc<Vm>, timeout: Duration) {
    for signal in signals.forever() {
        if signal == SIGTERM {
            match vm.press_power_button() {
                Ok(()) => {
                    info!(
                        timeout_s = timeout.as_secs(),
                        "SIGTERM: asked the guest to power off"
                    );
                    let vm = vm.clone();
                    let _ = std::thread::Builder::new()
                        .name("vireo-shutdown-timer".into())
                        .spawn(move || {
                            std::thread::sleep(timeout);
                            if vm.state() != VmState::Stopped {
                                warn!("guest did not power off in time; stopping it");
                                vm.shutdown();
                            }
                        });
                    continue;
                }
                Err(e) => info!(reason = %e, "SIGTERM: stopping the VM now"),
            }
        } else {
            info!(signal, "stopping the VM");
        }
        vm.shutdown();
        return;
    }
}
