//! `vireo vm …`: hands VirtualMachine requests to `vireo-controller vm …`.
//!
//! The Kubernetes client lives in the controller's binary so that the
//! per-VM launcher stays small; `vireo vm` is a thin front door, the way
//! `kubectl` plugins work. The controller binary is looked up next to
//! `vireo` first, then on `PATH`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

const CONTROLLER_BIN: &str = "vireo-controller";

fn controller_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(CONTROLLER_BIN)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(CONTROLLER_BIN))
}

/// Replaces this process with `vireo-controller vm ARGS…`.
pub fn delegate(args: &[OsString]) -> Result<ExitCode> {
    let bin = controller_binary();
    let err = Command::new(&bin).arg("vm").args(args).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        bail!(
            "`vireo vm` needs {CONTROLLER_BIN}, which is neither next to vireo nor on PATH \
             (build it with `cargo build --release -p vireo-controller`)"
        );
    }
    Err(err).with_context(|| format!("cannot run {}", bin.display()))
}
