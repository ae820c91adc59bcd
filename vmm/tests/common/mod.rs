//! Helpers shared by the test binaries that run the test guest: a serial
//! capture, the `churn` scenario's lines and host-side checksum
//! ([`churn`]), and a packet socket on a tap plus the root and network
//! namespace helpers of the `net` crate's tap tests ([`tap`]).

#![allow(dead_code)] // Each test binary uses a different subset.

pub mod churn;
pub mod tap;

/// Root check, network namespaces and `ip`, shared with the `net` crate's
/// tap tests.
#[path = "../../../net/tests/common/mod.rs"]
pub mod netcommon;

use std::io::Write;
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
