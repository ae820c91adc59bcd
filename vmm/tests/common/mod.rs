//! Helpers shared by the test binaries that run the test guest: a serial
//! capture, the `churn` scenario's lines and host-side checksum
//! ([`churn`]), and a packet socket on a tap plus the root and network
//! namespace helpers of the `net` crate's tap tests ([`tap`]).

#![allow(dead_code)] // Each test binary uses a different subset.

pub mod churn;
/// The test PKI generator, shared with the benchmarks.
#[path = "../../../benches/src/pki.rs"]
pub mod pki;
pub mod tap;

/// Root check, network namespaces and `ip`, shared with the `net` crate's
/// tap tests.
#[path = "../../../net/tests/common/mod.rs"]
pub mod netcommon;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Builds a VM whose serial output goes to a new capture.
pub fn build_vm(config: vireo_vmm::VmConfig) -> (vireo_vmm::Vm, Capture) {
    let out = Capture::default();
    let vm = vireo_vmm::VmBuilder::new(config)
        .serial_writer(Box::new(out.clone()))
        .build()
        .expect("build VM");
    (vm, out)
}

/// Writes the test guest into `dir` and returns a one-vCPU config of
/// `memory_mib` MiB that runs it with `cmdline`.
pub fn guest_config(dir: &Path, cmdline: &str, memory_mib: u64) -> vireo_vmm::VmConfig {
    let kernel = dir.join("guest.elf");
    vireo_testguest::write_to(&kernel).expect("write guest");
    let mut config = vireo_vmm::VmConfig::new(&kernel);
    config.memory_mib = memory_mib;
    config.payload.cmdline = cmdline.into();
    config
}

/// Writes the test guest into `dir` and builds a 64 MiB VM with `vcpus`
/// vCPUs that runs it with `cmdline`.
pub fn guest_vm(dir: &Path, cmdline: &str, vcpus: u8) -> (vireo_vmm::Vm, Capture) {
    let mut config = guest_config(dir, cmdline, 64);
    config.vcpus = vcpus;
    build_vm(config)
}

/// Every complete `tick N` line, in order (a pause, snapshot or shutdown
/// may cut the last line short).
pub fn ticks(text: &str) -> Vec<u64> {
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .filter_map(|l| l.strip_prefix("tick "))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Guest pages the devices dirtied since the last call (vCPU writes are not
/// tracked in this bitmap, only device writes).
pub fn take_device_dirty(vm: &vireo_vmm::Vm) -> usize {
    use vm_memory::GuestMemoryBackend;
    vm.memory()
        .iter()
        .map(|r| {
            let bits = (**r).bitmap().take().expect("dirty bitmap");
            bits.iter().map(|w| w.count_ones() as usize).sum::<usize>()
        })
        .sum()
}

/// A generous bound for anything the guest should do soon.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Collects what the guest writes to its serial port.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// A capture that already holds `text`, so that what a restored guest
    /// prints is appended to what it printed before its snapshot.
    pub fn with_text(text: &str) -> Self {
        Self(Arc::new(Mutex::new(text.as_bytes().to_vec())))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }

    /// Waits until `needle` appears in the output.
    pub fn wait_for(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while !self.text().contains(needle) {
            assert!(
                start.elapsed() < limit,
                "'{needle}' did not appear; output so far:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::ErrorKind::Other)?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `qemu-img check` finds nothing wrong with the qcow2 image at `path`.
pub fn qemu_img_check(path: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(path)
        .output()
        .expect("run qemu-img (it is installed on the CI host)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("No errors were found"),
        "qemu-img check {}: {}\n{stdout}{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
