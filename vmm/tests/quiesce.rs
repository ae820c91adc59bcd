//! Full quiesce under real KVM with the test guest's `churn` scenario, which
//! keeps rewriting guest memory, a disk and (with a NIC) sending frames, and
//! verifies all of it itself. While the VM is paused nothing moves: no
//! serial output, no change to the disk image, no device write into guest
//! memory (the dirty bitmap stays clean), no frame on the tap, and the
//! guest's counter stands still. After each resume the guest's periodic
//! lines continue with no iteration lost or repeated, its own memory and
//! disk checks keep passing, and frames in both directions keep their
//! sequence across the pauses.

/// Root check, network namespaces and `ip`, shared with the `net` crate's
/// tap tests.
#[path = "../../net/tests/common/mod.rs"]
mod netcommon;

use std::hash::{DefaultHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use vireo_vmm::{DiskConfig, DiskFormat, ExitReason, NetConfig, Vm, VmBuilder, VmConfig, VmState};

/// Working-set pages of the guest.
const PAGES: u64 = 256;
/// Iterations between the guest's lines.
const EVERY: u64 = 256;
/// Disk sectors the guest cycles through.
const SECTORS: u64 = 512;
const DISK_BYTES: u64 = 1 << 20;
const ROUNDS: usize = 5;
/// How long each pause is watched.
const PAUSED_FOR: Duration = Duration::from_millis(300);
/// A generous bound for anything the guest should do soon.
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
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

/// One periodic `churn i=… sum=…` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    i: u64,
    sum: String,
    blk: Option<u64>,
    tx: Option<u64>,
    rx: Option<u64>,
}

/// Every complete periodic line so far; panics on a line reporting a
/// failure (the guest's own checks) or anything unexpected.
fn churn_lines(text: &str) -> Vec<Line> {
    let mut out = Vec::new();
    for l in text.split_inclusive('\n').filter_map(|l| l.strip_suffix('\n')) {
        assert!(
            !l.contains("MISMATCH") && !l.contains("RX-GAP") && !l.contains("FAIL"),
            "the guest reports a failure: {l}\nall output:\n{text}"
        );
        if l.starts_with("churn start ") {
            continue;
        }
        let Some(rest) = l.strip_prefix("churn i=") else {
            panic!("unexpected guest line {l:?}\nall output:\n{text}");
        };
        let mut words = rest.split(' ');
        let i = words.next().and_then(|w| w.parse().ok());
        let mut line = Line {
            i: i.unwrap_or_else(|| panic!("bad line {l:?}")),
            sum: String::new(),
            blk: None,
            tx: None,
            rx: None,
        };
        for w in words {
            let (k, v) = w.split_once('=').unwrap_or_else(|| panic!("bad line {l:?}"));
            let n = || v.parse::<u64>().unwrap_or_else(|_| panic!("bad line {l:?}"));
            match k {
                "sum" => {
                    assert_eq!(v.len(), 16, "bad line {l:?}");
                    line.sum = v.to_owned();
                }
                "blk" => line.blk = Some(n()),
                "tx" => line.tx = Some(n()),
                "rx" => line.rx = Some(n()),
                _ => panic!("bad line {l:?}"),
            }
        }
        out.push(line);
    }
    out
}

/// The last complete periodic line.
fn last_line(out: &Capture) -> Option<Line> {
    churn_lines(&out.text()).pop()
}

/// Waits until a periodic line with `i >= at_least` has appeared.
fn wait_for_i(out: &Capture, at_least: u64) -> Line {
    let start = Instant::now();
    loop {
        if let Some(l) = last_line(out).filter(|l| l.i >= at_least) {
            return l;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "no line with i >= {at_least} within {PATIENCE:?}; output:\n{}",
            out.text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Guest pages the devices dirtied since the last call (vCPU writes are not
/// tracked in this bitmap, only device writes).
fn take_device_dirty(vm: &Vm) -> usize {
    use vm_memory::GuestMemoryBackend;
    vm.memory()
        .iter()
        .map(|r| {
            let bits = (**r).bitmap().take().expect("dirty bitmap");
            bits.iter().map(|w| w.count_ones() as usize).sum::<usize>()
        })
        .sum()
}

/// The disk image's content hash and modification time.
fn disk_state(path: &Path) -> (u64, SystemTime) {
    let data = std::fs::read(path).expect("read disk image");
    let mut h = DefaultHasher::new();
    h.write(&data);
    let mtime = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("disk mtime");
    (h.finish(), mtime)
}

fn churn_config(dir: &Path, disk: &Path) -> VmConfig {
    let kernel = dir.join("guest.elf");
    vireo_testguest::write_to(&kernel).expect("write guest");
    std::fs::File::create(disk)
        .and_then(|f| f.set_len(DISK_BYTES))
        .expect("disk image");
    let mut config = VmConfig::new(&kernel);
    config.memory_mib = 64;
    config.vcpus = 1;
    config.disks.push(DiskConfig {
        path: disk.to_path_buf(),
        format: Some(DiskFormat::Raw),
        readonly: false,
    });
    config.payload.cmdline = format!("churn {PAGES} {EVERY} {SECTORS}");
    config
}

/// What a test with a NIC adds to the checks around each pause.
trait Traffic {
    /// Called while paused, before the quiet period.
    fn while_paused_start(&mut self) {}
    /// Called at the end of the quiet period: asserts nothing moved.
    fn while_paused_end(&mut self, _round: usize) {}
    /// Called while running.
    fn while_running(&mut self) {}
}

struct NoTraffic;
impl Traffic for NoTraffic {}

/// Runs the pause/resume rounds on a started churning VM and checks the
/// lines it printed; returns them.
fn pause_resume_rounds(vm: &Vm, out: &Capture, disk: &Path, traffic: &mut dyn Traffic) -> Vec<Line> {
    wait_for_i(out, 3 * EVERY);
    for round in 0..ROUNDS {
        traffic.while_running();
        vm.pause().expect("pause");
        assert_eq!(vm.state(), VmState::Paused);
        take_device_dirty(vm);
        let text = out.text();
        let disk_before = disk_state(disk);
        let last = last_line(out).expect("lines before the pause");
        traffic.while_paused_start();

        std::thread::sleep(PAUSED_FOR);

        assert_eq!(
            take_device_dirty(vm),
            0,
            "a device wrote guest memory while paused (round {round})"
        );
        assert_eq!(out.text(), text, "serial output while paused (round {round})");
        assert_eq!(
            disk_state(disk),
            disk_before,
            "the disk image changed while paused (round {round})"
        );
        assert_eq!(
            last_line(out).expect("lines"),
            last,
            "the guest's counter moved while paused (round {round})"
        );
        traffic.while_paused_end(round);

        vm.resume().expect("resume");
        assert_eq!(vm.state(), VmState::Running);
        traffic.while_running();
        wait_for_i(out, last.i + 3 * EVERY);
    }

    let lines = churn_lines(&out.text());
    check_sequence(&lines);
    lines
}

/// Lines at i = EVERY, 2·EVERY, … with none lost or repeated, and block and
/// transmit counters a function of `i`.
fn check_sequence(lines: &[Line]) {
    assert!(
        lines.len() as u64 >= 3 + 3 * ROUNDS as u64,
        "{} lines",
        lines.len()
    );
    for (n, l) in lines.iter().enumerate() {
        let want = (n as u64 + 1) * EVERY;
        assert_eq!(
            l.i, want,
            "line {n} is for i={} instead of {want}: an iteration lost or repeated",
            l.i
        );
        assert_eq!(l.blk, Some(l.i), "one disk write per iteration: {l:?}");
    }
    let mut sums: Vec<&str> = lines.iter().map(|l| l.sum.as_str()).collect();
    sums.sort_unstable();
    sums.dedup();
    assert_eq!(sums.len(), lines.len(), "the working set changes every line");
}

fn stop(vm: &Vm, out: &Capture) {
    assert_eq!(
        vm.shutdown(),
        ExitReason::Stopped,
        "the guest exited on its own; output:\n{}",
        out.text()
    );
}

#[test]
fn pause_freezes_a_churning_guest_and_its_disk_and_resume_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.raw");
    let config = churn_config(dir.path(), &disk);
    let out = Capture::default();
    let vm = VmBuilder::new(config)
        .serial_writer(Box::new(out.clone()))
        .build()
        .expect("build VM");
    let started = Instant::now();
    vm.start().expect("start");
    let lines = pause_resume_rounds(&vm, &out, &disk, &mut NoTraffic);
    stop(&vm, &out);
    let text = out.text();
    assert!(
        text.starts_with(&format!(
            "churn start pages={PAGES} every={EVERY} blk-sectors={SECTORS} net=0\n"
        )),
        "{text}"
    );
    assert!(lines.iter().all(|l| l.tx.is_none() && l.rx.is_none()));
    eprintln!(
        "{} lines (i up to {}) in {:?}",
        lines.len(),
        lines.last().map_or(0, |l| l.i),
        started.elapsed()
    );
}
