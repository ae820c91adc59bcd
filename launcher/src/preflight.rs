//! `vireo preflight`: proves that this node can run VMs by running one, for the cluster's
//! per-node preflight Job.
//!
//! It opens the KVM device and checks its API version and capabilities, creates a VM and
//! boots the built-in ring-3 test guest with its `exit 0` scenario (serial output discarded),
//! all through the VMM library as `vireo run` would, within a timeout. The report is one line,
//! printed on stdout and used as the termination message:
//! `kvm=1 run=ok cpu=<vmx|svm|none> ms=<elapsed>` (exit status 0) or
//! `kvm=0 run=fail reason=<why>` (exit status 1). `cpu` is informational, from the host's
//! `/proc/cpuinfo` flags: a KVM without `vmx` or `svm` (such as PVM) passes when it runs the
//! guest.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use vireo_spec::ExitStatus;
use vireo_vmm::{ExitReason, PayloadConfig, SerialConfig, VmBuilder, VmConfig};

/// Guest RAM for the test guest, in MiB.
const MEMORY_MIB: u64 = 32;

/// The report line and exit status of a preflight check.
#[derive(Debug)]
pub struct Report {
    /// How `vireo` exits: [`ExitStatus::PowerOff`] (0) on success, else
    /// [`ExitStatus::VmmError`] (1).
    pub status: ExitStatus,
    /// The one-line report.
    pub line: String,
}

/// Runs the check with a limit of `timeout_secs` seconds and prints its report on stdout.
pub fn run(timeout_secs: u64) -> Report {
    let start = Instant::now();
    let report = match boot_test_guest(Duration::from_secs(timeout_secs)) {
        Ok(()) => {
            let cpu = std::fs::read_to_string("/proc/cpuinfo")
                .map(|text| cpu_virtualization(&text))
                .unwrap_or("none");
            Report {
                status: ExitStatus::PowerOff,
                line: format!("kvm=1 run=ok cpu={cpu} ms={}", start.elapsed().as_millis()),
            }
        }
        Err(e) => Report {
            status: ExitStatus::VmmError,
            line: format!("kvm=0 run=fail reason={}", crate::render_error(&e)),
        },
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", report.line);
    let _ = out.flush();
    report
}

/// `vmx` or `svm` when the first `flags` line of `/proc/cpuinfo` text has that flag, else
/// `none`.
pub fn cpu_virtualization(cpuinfo: &str) -> &'static str {
    let flags = cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "flags").then_some(value)
        })
        .unwrap_or("");
    let mut words = flags.split_whitespace();
    if flags.split_whitespace().any(|w| w == "vmx") {
        "vmx"
    } else if words.any(|w| w == "svm") {
        "svm"
    } else {
        "none"
    }
}

/// The test guest's ELF written to a private temporary file, removed on drop.
struct GuestFile(PathBuf);

impl GuestFile {
    fn create() -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "vireo-preflight-{}-{}.elf",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let file_guard = Self(path);
        file.write_all(vireo_testguest::ELF)
            .with_context(|| format!("cannot write {}", file_guard.0.display()))?;
        Ok(file_guard)
    }
}

impl Drop for GuestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Builds and runs the test guest's `exit 0` scenario; fails unless it exits with status 0
/// within `timeout`.
fn boot_test_guest(timeout: Duration) -> Result<()> {
    let guest = GuestFile::create()?;
    let config = VmConfig {
        version: vireo_vmm::config::SPEC_VERSION,
        vcpus: 1,
        memory_mib: MEMORY_MIB,
        payload: PayloadConfig {
            kernel: guest.0.clone(),
            initramfs: None,
            cmdline: "exit 0".into(),
        },
        serial: SerialConfig::Off,
        disks: Vec::new(),
        nets: Vec::new(),
        api_socket: None,
        memory_backing: Default::default(),
        dirty_log: Default::default(),
        vnc: None,
    };
    let (tx, rx) = mpsc::channel();
    // The VM is built and run on its own thread so that a guest (or KVM) that never exits
    // cannot hold the report up: past the timeout, `vireo` reports and exits.
    std::thread::Builder::new()
        .name("vireo-preflight".into())
        .spawn(move || {
            let result = VmBuilder::new(config)
                .serial_writer(Box::new(std::io::sink()))
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|vm| {
                    drop(guest);
                    vm.start()?;
                    Ok(vm.wait())
                });
            let _ = tx.send(result);
        })
        .context("cannot start the preflight thread")?;
    let reason = match rx.recv_timeout(timeout) {
        Ok(result) => result?,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            anyhow::bail!("the test guest did not exit within {} s", timeout.as_secs())
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            anyhow::bail!("the preflight thread ended without a result")
        }
    };
    match reason {
        ExitReason::DebugExit { status: 0 } => Ok(()),
        other => anyhow::bail!("the test guest ended with {other} instead of exit status 0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_flags_are_read_from_the_first_flags_line() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse\nbugs\t\t: spectre\n";
        assert_eq!(cpu_virtualization(intel), "vmx");
        let amd = "processor\t: 0\nflags\t\t: fpu svm lm\n";
        assert_eq!(cpu_virtualization(amd), "svm");
        let pvm = "processor\t: 0\nflags\t\t: fpu hypervisor lm\nvmx flags\t: ept\n";
        assert_eq!(cpu_virtualization(pvm), "none");
        assert_eq!(cpu_virtualization(""), "none");
    }
}
