//! Runs one VM to completion and maps how it ended to an exit status.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tracing::warn;
use vireo_vmm::{VmBuilder, VmConfig};

use crate::exit_code;

/// Reads a JSON launch spec.
pub fn load_spec(path: &Path) -> Result<VmConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read launch spec {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid launch spec {}", path.display()))
}

/// Builds, starts and waits for the VM; returns the exit status.
pub fn run_vm(config: VmConfig) -> Result<ExitCode> {
    let vm = VmBuilder::new(config).build()?;
    vm.start()?;
    let reason = vm.wait();
    let code = exit_code::for_exit(&reason);
    if code != 0 {
        warn!(%reason, code, "VM exited abnormally");
    }
    Ok(ExitCode::from(code))
}
