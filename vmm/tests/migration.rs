//! Live migration through the library API, with the test guest under real KVM: a source VM
//! and a target built by `migration::receive` in the same process (each with its own KVM VM,
//! memory and devices), over a unix socket, TCP and TLS on loopback, with the dirty ring and
//! the bitmap.
//!
//! The guest checks itself: `count` prints consecutive ticks, and `churn` rewrites a working
//! set whose every page it verifies before rewriting it and after every sweep (a page that
//! arrived wrong or not at all prints `churn MISMATCH` and exits 1), with checksums that are
//! a function of its iteration count only. The target's output is appended to the source's;
//! the joined output must be one unbroken sequence.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::churn::{parse, Line};
use common::{build_vm, guest_config, qemu_img_check, ticks, Capture, PATIENCE};
use vireo_vmm::config::DirtyLogMode;
use vireo_vmm::migration::{
    self, transport, MigrationError, MigrationPhase, MigrationReport, ReceiveOptions,
    SendMigrationConfig, TimeoutStrategy,
};
use vireo_vmm::{ExitReason, Vm, VmState};

/// A target waiting for one migration on its own thread.
struct Target {
    /// The URL the source connects to (a TCP port filled in).
    url: String,
    out: Capture,
    thread: JoinHandle<Result<Vm, MigrationError>>,
}

impl Target {
    /// Listens at `url` (`tcp:127.0.0.1:0` picks a port) and receives with `opts`, its serial
    /// output appended to `out`, the source's capture (the source prints nothing more once
    /// paused, so `out` becomes the one joined output of the guest).
    fn listen(url: &str, tls: Option<&Path>, opts: ReceiveOptions, out: &Capture) -> Self {
        let parsed: migration::MigrationUrl = url.parse().expect("url");
        let listener = transport::listen(&parsed, tls).expect("listen");
        let url = match listener.port() {
            Some(port) => format!(
                "{}:127.0.0.1:{port}",
                if url.starts_with("tls:") {
                    "tls"
                } else {
                    "tcp"
                }
            ),
            None => url.to_owned(),
        };
        let out = out.clone();
        let writer = out.clone();
        let thread = std::thread::spawn(move || {
            let conn = listener.accept()?;
            let mut opts = opts;
            opts.host.serial_writer = Some(Box::new(writer));
            migration::receive(conn, opts)
        });
        Self { url, out, thread }
    }

    fn join(self) -> (Result<Vm, MigrationError>, Capture) {
        (self.thread.join().expect("target thread"), self.out)
    }
}

fn send(url: &str) -> SendMigrationConfig {
    let mut c = SendMigrationConfig::to(url);
    c.downtime_ms = 50;
    c
}

fn counting_vm(dir: &Path, mode: DirtyLogMode) -> (Vm, Capture) {
    let mut config = guest_config(dir, "count 100000000 1000000", 64);
    config.dirty_log = mode;
    let (vm, out) = build_vm(config);
    vm.start().expect("start");
    out.wait_for("tick 20\n", PATIENCE);
    (vm, out)
}

/// Waits until `out` has a tick past `n`.
fn wait_tick(out: &Capture, n: u64) {
    let start = Instant::now();
    while ticks(&out.text()).last().is_none_or(|t| *t < n) {
        assert!(start.elapsed() < PATIENCE, "no tick {n}:\n{}", out.text());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn check_count(joined: &str) {
    let all = ticks(joined);
    for pair in all.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "the count broke:\n{joined}");
    }
}

fn idle_migration(url: &str, mode: DirtyLogMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vm, out) = counting_vm(dir.path(), mode);
    let target = Target::listen(url, None, ReceiveOptions::default(), &out);
    let report = vm.migrate(&send(&target.url)).expect("migrate");
    assert_eq!(
        vm.wait(),
        ExitReason::Migrated,
        "the source stops once the target runs"
    );
    let before = out.text();
    let (target_vm, after) = target.join();
    let target_vm = target_vm.expect("the target received the VM");
    assert_eq!(target_vm.state(), VmState::Running);
    let last = *ticks(&before).last().expect("ticks");
    wait_tick(&after, last + 20);
    target_vm.shutdown();
    check_count(&after.text());
    let want = match mode {
        DirtyLogMode::Bitmap => "bitmap",
        _ => "ring",
    };
    assert_eq!(report.dirty_log, want, "{report:?}");
    assert!(
        report.pages_sent < 4096,
        "an idle 64 MiB guest sends what it touched, not 64 MiB: {report:?}"
    );
    assert_eq!(vm.migration_info().phase, MigrationPhase::Completed);
    eprintln!("{url} {want}: {report:?}");
}

#[test]
fn an_idle_guest_migrates_over_a_unix_socket_with_the_ring_and_the_bitmap() {
    let dir = tempfile::tempdir().expect("tempdir");
    for mode in [DirtyLogMode::Ring, DirtyLogMode::Bitmap] {
        let url = format!("unix:{}", dir.path().join("m.sock").display());
        idle_migration(&url, mode);
    }
}

#[test]
fn an_idle_guest_migrates_over_tcp_with_the_ring_and_the_bitmap() {
    for mode in [DirtyLogMode::Ring, DirtyLogMode::Bitmap] {
        idle_migration("tcp:127.0.0.1:0", mode);
    }
}

// ------------------------------------------------------------------ churn

/// Working set of the dirtying guest: 256 MiB.
const BIG_PAGES: u64 = 65536;

/// A 512 MiB VM rewriting a 256 MiB working set at `rate` MiB/s (0: flat out), sweeping it
/// every `every` iterations.
fn dirtying_vm(dir: &Path, mode: DirtyLogMode, rate: u64, every: u64) -> (Vm, Capture) {
    let cmdline = format!("churn {BIG_PAGES} {every} 0 0 {rate}");
    let mut config = guest_config(dir, &cmdline, 512);
    config.dirty_log = mode;
    let (vm, out) = build_vm(config);
    vm.start().expect("start");
    wait_line(&out, every);
    (vm, out)
}

/// Waits for a churn line with `i >= at_least`, failing on any guest-reported mismatch.
fn wait_line(out: &Capture, at_least: u64) -> Line {
    let start = Instant::now();
    loop {
        if let Some(l) = parse(&out.text()).0.pop().filter(|l| l.i >= at_least) {
            return l;
        }
        assert!(
            start.elapsed() < PATIENCE * 2,
            "no churn line with i >= {at_least}:\n{}",
            out.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Consecutive churn lines `every` apart with no failure.
fn check_churn(joined: &str, every: u64) {
    let (lines, _) = parse(joined);
    assert!(lines.len() >= 2, "{joined}");
    for pair in lines.windows(2) {
        assert_eq!(
            pair[1].i,
            pair[0].i + every,
            "an iteration was lost or repeated:\n{joined}"
        );
    }
}

/// Migrates the churning `vm` (its output in `out`) to `target` with `cfg`, then checks that
/// the source stopped as migrated and that the guest verifies two more sweeps of its working
/// set on the target with its line sequence unbroken; stops the target.
fn move_churn(
    vm: &Vm,
    out: &Capture,
    target: Target,
    cfg: &SendMigrationConfig,
    every: u64,
) -> MigrationReport {
    let report = vm.migrate(cfg).expect("migrate");
    assert_eq!(vm.wait(), ExitReason::Migrated);
    let last = parse(&out.text()).0.pop().expect("lines").i;
    let (target_vm, joined) = target.join();
    let target_vm = target_vm.expect("target");
    // Two more sweeps on the target: every page of the working set verified there.
    wait_line(&joined, last + 2 * every);
    target_vm.shutdown();
    check_churn(&joined.text(), every);
    report
}

fn dirtying_migration(
    url: &str,
    source_tls: Option<&Path>,
    target_tls: Option<&Path>,
    mode: DirtyLogMode,
) -> MigrationReport {
    let dir = tempfile::tempdir().expect("tempdir");
    let every = 16384;
    let (vm, out) = dirtying_vm(dir.path(), mode, 200, every);
    let target = Target::listen(url, target_tls, ReceiveOptions::default(), &out);
    let mut cfg = send(&target.url);
    cfg.tls_dir = source_tls.map(Path::to_owned);
    let report = move_churn(&vm, &out, target, &cfg, every);
    assert!(
        report.passes >= 2,
        "a dirtying guest needs passes: {report:?}"
    );
    assert!(
        report.pages_sent >= BIG_PAGES,
        "the whole working set was sent: {report:?}"
    );
    eprintln!("{url}: {report:?}");
    report
}

#[test]
fn a_guest_dirtying_256_mib_migrates_over_unix_and_tcp_with_its_memory_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("unix:{}", dir.path().join("m.sock").display());
    let report = dirtying_migration(&url, None, None, DirtyLogMode::Ring);
    assert!(
        report.ring_full_exits > 0,
        "a guest dirtying 200 MiB/s fills a 4096-entry ring: {report:?}"
    );
    dirtying_migration("tcp:127.0.0.1:0", None, None, DirtyLogMode::Bitmap);
}

// ------------------------------------------------------------------ local handover

#[test]
fn a_local_handover_moves_no_page_and_the_guest_keeps_its_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let every = 16384;
    let cmdline = format!("churn {BIG_PAGES} {every} 0 0 0");
    let mut config = guest_config(dir.path(), &cmdline, 512);
    config.memory_backing = vireo_vmm::config::MemoryBacking::Memfd;
    let (vm, out) = build_vm(config);
    vm.start().expect("start");
    wait_line(&out, every);
    let url = format!("unix:{}", dir.path().join("m.sock").display());
    let target = Target::listen(&url, None, ReceiveOptions::default(), &out);
    let mut cfg = send(&target.url);
    cfg.local = true;
    let report = move_churn(&vm, &out, target, &cfg, every);
    assert_eq!(report.pages_sent, 0, "no page is copied: {report:?}");
    assert_eq!(report.dirty_log, "none");
    eprintln!("local: {report:?}");

    // Without a memfd a local handover is refused before anything happens.
    let (vm, _out) = counting_vm(dir.path(), DirtyLogMode::Auto);
    let e = vm.migrate(&cfg).expect_err("anonymous memory");
    assert!(e.to_string().contains("memfd"), "{e}");
    assert_eq!(vm.state(), VmState::Running);
    vm.shutdown();
}

// ------------------------------------------------------------------ TLS

#[test]
fn idle_and_dirtying_guests_migrate_over_tls_and_a_stranger_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::pki::write_pki(&dir.path().join("pki"), &["source", "target"]);
    let source = dir.path().join("pki/source");
    let target = dir.path().join("pki/target");
    // A source whose certificate another CA signed is refused during the handshake, and the
    // guest runs on.
    common::pki::write_pki(&dir.path().join("other"), &["stranger"]);
    let (vm, out) = counting_vm(dir.path(), DirtyLogMode::Auto);
    let t = Target::listen(
        "tls:127.0.0.1:0",
        Some(&target),
        ReceiveOptions::default(),
        &out,
    );
    let mut cfg = send(&t.url);
    cfg.tls_dir = Some(dir.path().join("other/stranger"));
    let e = vm.migrate(&cfg).expect_err("a stranger");
    assert!(matches!(e, MigrationError::Transport(_)), "{e}");
    let (got, _) = t.join();
    assert!(got.is_err(), "the target refused the stranger");
    assert_eq!(vm.state(), VmState::Running);
    let n = *ticks(&out.text()).last().expect("ticks");
    wait_tick(&out, n + 5);

    // The same idle guest then moves with the right certificate.
    let t = Target::listen(
        "tls:127.0.0.1:0",
        Some(&target),
        ReceiveOptions::default(),
        &out,
    );
    let mut cfg = send(&t.url);
    cfg.tls_dir = Some(source.clone());
    let report = vm.migrate(&cfg).expect("migrate over TLS");
    assert_eq!(vm.wait(), ExitReason::Migrated);
    let last = *ticks(&out.text()).last().expect("ticks");
    let (target_vm, joined) = t.join();
    let target_vm = target_vm.expect("target");
    wait_tick(&joined, last + 20);
    target_vm.shutdown();
    check_count(&joined.text());
    eprintln!("idle over tls: {report:?}");

    dirtying_migration(
        "tls:127.0.0.1:0",
        Some(&source),
        Some(&target),
        DirtyLogMode::Ring,
    );
}

// ------------------------------------------------------------------ failures

/// Forwards a unix-socket connection to `to`, cutting both ways once `limit` bytes went from
/// the source to the target.
fn cutting_proxy(at: &Path, to: PathBuf, limit: u64) -> JoinHandle<()> {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    let listener = UnixListener::bind(at).expect("bind proxy");
    std::thread::spawn(move || {
        let (mut src, _) = listener.accept().expect("accept");
        let mut dst = UnixStream::connect(&to).expect("connect target");
        let (mut src_back, mut dst_back) = (
            src.try_clone().expect("clone"),
            dst.try_clone().expect("clone"),
        );
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut dst_back, &mut src_back);
        });
        let mut buf = vec![0u8; 1 << 16];
        let mut sent = 0u64;
        while sent < limit {
            let n = match src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if dst.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n as u64;
        }
        let _ = src.shutdown(std::net::Shutdown::Both);
        let _ = dst.shutdown(std::net::Shutdown::Both);
        let _ = back.join();
    })
}

/// A target that takes the handshake and the config like a real one, reads `limit` bytes of
/// pages and then dies (its connection closes).
fn dying_target(at: &Path, limit: u64) -> JoinHandle<()> {
    use migration::protocol::{write_frame, Frame, FrameReader};
    use std::io::Write;
    let parsed: migration::MigrationUrl = format!("unix:{}", at.display()).parse().expect("url");
    let listener = transport::listen(&parsed, None).expect("listen");
    std::thread::spawn(move || {
        let mut conn = listener.accept().expect("accept");
        let mut read = 0u64;
        loop {
            let frame = match FrameReader::new(&mut conn).read_frame() {
                Ok(f) => f,
                Err(_) => return,
            };
            let answer = match frame {
                Frame::Hello { versions, .. } => Some(Frame::Accept(versions.1)),
                Frame::Config(_) => Some(Frame::Ready),
                Frame::Memory { data, .. } => {
                    read += data.len() as u64;
                    None
                }
                _ => None,
            };
            if let Some(a) = answer {
                write_frame(&mut conn, &a).expect("answer");
                conn.flush().expect("flush");
            }
            if read >= limit {
                return; // dies: the connection closes
            }
        }
    })
}

/// The source survived a failed migration: still running, its guest still progressing and
/// verifying its memory, KVM's dirty logging off again (the bitmap VM's slot has no log).
fn assert_survived(vm: &Vm, out: &Capture, every: u64, what: &str) {
    assert_eq!(vm.state(), VmState::Running, "{what}: the source runs on");
    let info = vm.migration_info();
    assert!(
        matches!(
            info.phase,
            MigrationPhase::Failed | MigrationPhase::Cancelled
        ),
        "{what}: {info:?}"
    );
    assert_eq!(info.throttle_percent, 0, "{what}: throttle released");
    let e = vm
        .vm_fd()
        .get_dirty_log(0, 512 << 20)
        .expect_err("logging is off: KVM has no dirty log for the slot");
    assert_eq!(e.errno(), libc::ENOENT, "{what}: {e}");
    let last = parse(&out.text()).0.pop().expect("lines").i;
    // The guest rewrites pages at full speed again; a full sweep proves its memory intact.
    let start = Instant::now();
    wait_line(out, last + every);
    eprintln!(
        "{what}: {:?} then guest progress in {:?}",
        info.error,
        start.elapsed()
    );
}

#[test]
fn every_failure_leaves_the_source_running_and_a_later_migration_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let every = 16384;
    let (vm, out) = dirtying_vm(dir.path(), DirtyLogMode::Bitmap, 200, every);
    let vm = Arc::new(vm);
    let sock = |name: &str| dir.path().join(name);
    // A real target on a unix socket in the test's directory.
    let target_at = |name: &str, opts: ReceiveOptions| {
        Target::listen(&format!("unix:{}", sock(name).display()), None, opts, &out)
    };

    // The connection is cut in the middle of pass 0.
    let target = target_at("t1.sock", ReceiveOptions::default());
    let proxy = cutting_proxy(&sock("p1.sock"), sock("t1.sock"), 32 << 20);
    let e = vm
        .migrate(&send(&format!("unix:{}", sock("p1.sock").display())))
        .expect_err("cut");
    proxy.join().expect("proxy");
    let (got, _) = target.join();
    assert!(got.is_err(), "the target never runs a half-received guest");
    assert_survived(&vm, &out, every, &format!("cut: {e}"));

    // The target dies after 16 MiB of pages.
    let dying = dying_target(&sock("t2.sock"), 16 << 20);
    let e = vm
        .migrate(&send(&format!("unix:{}", sock("t2.sock").display())))
        .expect_err("target died");
    dying.join().expect("dying target");
    assert_survived(&vm, &out, every, &format!("target died: {e}"));

    // Cancelled through the API's method while pre-copy runs (slowed to 20 MB/s).
    let target = target_at("t3.sock", ReceiveOptions::default());
    let mut cfg = send(&target.url);
    cfg.max_bandwidth = 20 << 20;
    let sender = {
        let (vm, cfg) = (vm.clone(), cfg.clone());
        std::thread::spawn(move || vm.migrate(&cfg))
    };
    let start = Instant::now();
    // (The last migration's info stays until this one has begun.)
    loop {
        let info = vm.migration_info();
        if info.phase == MigrationPhase::Precopy && info.bytes_sent >= 8 << 20 {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "{info:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    vm.cancel_migration().expect("cancel");
    let e = sender.join().expect("sender").expect_err("cancelled");
    assert!(matches!(e, MigrationError::Cancelled), "{e}");
    assert!(matches!(
        target.join().0,
        Err(MigrationError::Abandoned(_)) | Err(MigrationError::Protocol(_))
    ));
    assert_eq!(vm.migration_info().phase, MigrationPhase::Cancelled);
    assert_survived(&vm, &out, every, "cancel");
    assert!(vm.cancel_migration().is_err(), "nothing left to cancel");

    // Timeout with strategy cancel: 1 s at 20 MB/s cannot move 256 MiB.
    let target = target_at("t4.sock", ReceiveOptions::default());
    let mut cfg = send(&target.url);
    cfg.max_bandwidth = 20 << 20;
    cfg.timeout_s = 1;
    let e = vm.migrate(&cfg).expect_err("timeout");
    assert!(matches!(e, MigrationError::Timeout(1)), "{e}");
    let _ = target.join();
    assert_survived(&vm, &out, every, "timeout");

    // A target that expects another memory size refuses the config.
    let target = target_at(
        "t5.sock",
        ReceiveOptions {
            expect_memory_mib: Some(1024),
            ..ReceiveOptions::default()
        },
    );
    let e = vm.migrate(&send(&target.url)).expect_err("memory size");
    assert!(
        e.to_string().contains("this target expects 1024 MiB"),
        "{e}"
    );
    assert!(target.join().0.is_err());
    assert_survived(&vm, &out, every, "memory size");

    // And then a migration succeeds, here with timeout strategy force: pass 0 is cut short at
    // the deadline, the switch happens anyway, and every page — those the cut pass had not
    // sent included — arrives: the guest verifies its whole working set on the target.
    let target = target_at("t6.sock", ReceiveOptions::default());
    let mut cfg = send(&target.url);
    cfg.max_bandwidth = 20 << 20;
    cfg.timeout_s = 1;
    cfg.timeout_strategy = TimeoutStrategy::Force;
    let report = move_churn(&vm, &out, target, &cfg, every);
    assert!(
        report.pages_sent >= BIG_PAGES,
        "the working set arrived in full: {report:?}"
    );
}

// ------------------------------------------------------------------ devices in flight

/// A churning guest writing a qcow2 overlay disk moves over TCP while its block requests are
/// in flight: the target opens the image after the source flushed it, the guest's own sector
/// checks and its line sequence continue unbroken, and the image checks clean.
#[test]
fn a_guest_writing_a_qcow2_disk_migrates_over_tcp_and_the_image_checks_clean() {
    use common::churn::{check_lines, churn_config, churn_lines, wait_for_i, EVERY, SECTORS};
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.raw");
    let mut config = churn_config(dir.path(), &base);
    let overlay = dir.path().join("disk.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&overlay)
        .status()
        .expect("qemu-img");
    assert!(made.success());
    config.disks[0].path = overlay.clone();
    config.disks[0].format = Some(vireo_vmm::DiskFormat::Qcow2);
    let (vm, out) = build_vm(config);
    vm.start().expect("start");
    wait_for_i(&out, SECTORS + 2 * EVERY);
    let target = Target::listen("tcp:127.0.0.1:0", None, ReceiveOptions::default(), &out);
    let report = vm.migrate(&send(&target.url)).expect("migrate");
    assert_eq!(vm.wait(), ExitReason::Migrated);
    let before = out.text();
    drop(vm);
    let (target_vm, after) = target.join();
    let target_vm = target_vm.expect("target");
    let last = churn_lines(&before).pop().expect("lines").i;
    wait_for_i(&after, last + 10 * EVERY);
    common::churn::stop(&target_vm, &after);
    drop(target_vm);
    check_lines(&churn_lines(&after.text()), EVERY, true);
    qemu_img_check(&overlay);
    eprintln!("qcow2 over tcp: {report:?}");
}

/// A churning guest with a raw disk and a NIC moves over a unix socket with frames in flight
/// both ways: the target takes over the same tap (handed over with the state), so every frame
/// the host sent reaches the guest once, and every frame the guest sent is on the tap once,
/// in order.
#[test]
fn a_guest_with_disk_and_nic_traffic_in_flight_migrates_over_unix_losing_nothing() {
    use common::churn::{check_lines, wait_for_i_with, EVERY, SECTORS};
    use common::tap::{check_tx_counts, churning_vm_with_tap, tap_rx_packets, wait_for_rx};
    common::netcommon::require_root(
        "a_guest_with_disk_and_nic_traffic_in_flight_migrates_over_unix_losing_nothing",
    );
    common::netcommon::in_netns(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let (vm, out, sock, reader) = churning_vm_with_tap(dir.path());
        vm.start().expect("start");
        let last = |c: &Capture| parse(&c.text()).0.pop();
        let mut next = 0u64;
        let burst = |next: &mut u64| {
            for _ in 0..20 {
                sock.send_seq(*next);
                *next += 1;
            }
        };
        for _ in 0..3 {
            burst(&mut next);
            let l = last(&out).map_or(0, |l| l.i);
            wait_for_i_with(&out, l.max(SECTORS) + 2 * EVERY, last);
        }
        wait_for_rx(&out, next, last);
        // Frames to the guest in flight at the switch: a burst just sent, and one more
        // while the migration runs.
        burst(&mut next);
        let url = format!("unix:{}", dir.path().join("m.sock").display());
        let target = Target::listen(&url, None, ReceiveOptions::default(), &out);
        let report = vm.migrate(&send(&target.url)).expect("migrate");
        burst(&mut next);
        assert_eq!(vm.wait(), ExitReason::Migrated);
        drop(vm);
        let (target_vm, after) = target.join();
        let target_vm = target_vm.expect("target");
        for _ in 0..3 {
            burst(&mut next);
            let l = last(&after).map_or(0, |l| l.i);
            wait_for_i_with(&after, l + 2 * EVERY, last);
        }
        // Every frame sent reaches the guest, none twice (a gap would be reported).
        wait_for_rx(&after, next, last);
        let l = last(&after).expect("lines").i;
        wait_for_i_with(&after, l + 2 * EVERY, last);
        common::churn::stop(&target_vm, &after);
        let on_tap = tap_rx_packets();
        let seen = reader.finish(on_tap);
        drop(target_vm);
        let joined = after.text();
        let (lines, gaps) = parse(&joined);
        assert!(gaps.is_empty(), "frames lost or repeated: {gaps:?}");
        check_lines(&lines, EVERY, true);
        check_tx_counts(&lines);
        for (n, &seq) in seen.iter().enumerate() {
            assert_eq!(
                seq, n as u64,
                "the guest's frames across the migration: {seen:?}"
            );
        }
        let tx = lines.last().and_then(|l| l.tx).expect("tx");
        assert!(
            seen.len() as u64 + 16 >= tx,
            "{} frames on the tap, the guest sent {tx}",
            seen.len()
        );
        eprintln!(
            "disk+nic over unix: {next} frames to the guest, {} from it; {report:?}",
            seen.len()
        );
    });
}

// ------------------------------------------------------------------ bad streams

/// A real target fed hostile streams refuses each with a clear error (sent back as an Error
/// frame where the connection still stands) and runs nothing.
#[test]
fn a_target_refuses_bad_streams_with_a_clear_error() {
    use migration::protocol::{write_frame, ConfigFrame, Frame, FrameReader, VERSIONS};
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let vm_config = guest_config(dir.path(), "", 64);
    let hello = Frame::Hello {
        versions: VERSIONS,
        vireo: "test".into(),
    };
    let config = Frame::Config(Box::new(ConfigFrame {
        config: vm_config.clone(),
        memory: vireo_vmm::snapshot::memory_file::layout(64 << 20),
        flags: serde_json::from_str(r#"{"debug_exit":true,"acpi":false}"#).expect("flags"),
        local: false,
        hand_over_taps: false,
        tsc_khz: None,
    }));
    let outside = Frame::Memory {
        gpa: 64 << 20,
        data: vec![7; 4096],
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "out of order",
            frames(&[hello.clone(), Frame::Complete { resume: true }]),
            "where Config was expected",
        ),
        (
            "outside memory",
            frames(&[hello.clone(), config.clone(), outside]),
            "outside guest memory",
        ),
        (
            "bad state",
            frames(&[hello.clone(), config.clone(), Frame::State(vec![1; 64])]),
            "the VM state is unusable",
        ),
        (
            "garbage",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "not a Vireo migration frame",
        ),
        (
            "truncated",
            frames(&[hello.clone(), config.clone()])[..100].to_vec(),
            "migration connection",
        ),
    ];
    for (what, bytes, want) in cases {
        let sock = dir.path().join(format!("{}.sock", what.replace(' ', "-")));
        let url: migration::MigrationUrl = format!("unix:{}", sock.display()).parse().expect("url");
        let listener = transport::listen(&url, None).expect("listen");
        let target = std::thread::spawn(move || {
            let conn = listener.accept().expect("accept");
            migration::receive(conn, ReceiveOptions::default())
        });
        let mut conn = transport::connect(&url, None).expect("connect");
        conn.write_all(&bytes).expect("send");
        conn.flush().expect("flush");
        if what == "truncated" {
            conn.shutdown();
        }
        let e = target.join().expect("target").expect_err(what);
        assert!(e.to_string().contains(want), "{what}: {e}");
        if what != "truncated" && what != "garbage" {
            // The source hears why: answers to Hello/Config, then the Error frame.
            let mut reader = FrameReader::new(&mut conn);
            let mut last = None;
            while let Ok(f) = reader.read_frame() {
                last = Some(f);
            }
            match last {
                Some(Frame::Error(why)) => assert!(why.contains(want), "{what}: {why}"),
                other => panic!("{what}: the source was not told: {other:?}"),
            }
        }
    }

    fn frames(list: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in list {
            write_frame(&mut out, f).expect("encode");
        }
        out
    }
}

/// A target that takes everything and then never answers `Complete` holds the paused guest
/// only for the downtime I/O timeout (5 s floor here): the source then resumes it.
#[test]
fn a_target_that_stops_answering_during_the_switch_holds_the_guest_only_briefly() {
    use migration::protocol::{write_frame, Frame, FrameReader};
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let (vm, out) = counting_vm(dir.path(), DirtyLogMode::Auto);
    let at = dir.path().join("stuck.sock");
    let url: migration::MigrationUrl = format!("unix:{}", at.display()).parse().expect("url");
    let listener = transport::listen(&url, None).expect("listen");
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let stuck = std::thread::spawn(move || {
        let mut conn = listener.accept().expect("accept");
        loop {
            let frame = match FrameReader::new(&mut conn).read_frame() {
                Ok(f) => f,
                Err(_) => return,
            };
            let answer = match frame {
                Frame::Hello { versions, .. } => Frame::Accept(versions.1),
                Frame::Config(_) => Frame::Ready,
                // Stalls: keeps the connection open and says nothing until the test ends.
                Frame::Complete { .. } => {
                    let _ = done_rx.recv();
                    return;
                }
                _ => continue,
            };
            write_frame(&mut conn, &answer).expect("answer");
            conn.flush().expect("flush");
        }
    });
    let started = Instant::now();
    let e = vm.migrate(&send(&url.to_string())).expect_err("stalled");
    let took = started.elapsed();
    assert!(matches!(e, MigrationError::Protocol(_)), "{e}");
    assert!(took < Duration::from_secs(15), "the source waited {took:?}");
    assert_eq!(vm.state(), VmState::Running, "the guest was resumed");
    let n = *ticks(&out.text()).last().expect("ticks");
    wait_tick(&out, n + 10);
    vm.shutdown();
    let _ = done_tx.send(());
    stuck.join().expect("stuck target");
    eprintln!("stalled target: {e} after {took:?}");
}
