//! Full quiesce under real KVM with the test guest's `churn` scenario, which
//! keeps rewriting guest memory, a disk and (with a NIC) sending frames, and
//! verifies all of it itself. While the VM is paused nothing moves: no
//! serial output, no change to the disk image, no device write into guest
//! memory (the dirty bitmap stays clean), no frame on the tap, and the
//! guest's counter stands still. After each resume the guest's periodic
//! lines continue with no iteration lost or repeated, its own memory and
//! disk checks keep passing (its checksums also match the ones recomputed
//! here), and frames in both directions keep their sequence across the
//! pauses. The tap test runs in a private network namespace and needs root,
//! which it asserts. Two more tests change a page and the disk behind the
//! paused guest's back, and expect the guest to report it and fail.

/// Root check, network namespaces and `ip`, shared with the `net` crate's
/// tap tests.
#[path = "../../net/tests/common/mod.rs"]
mod netcommon;

use std::hash::{DefaultHasher, Hasher};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
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
    for l in text
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
    {
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
            let (k, v) = w
                .split_once('=')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let n = || {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("bad line {l:?}"))
            };
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
fn pause_resume_rounds(
    vm: &Vm,
    out: &Capture,
    disk: &Path,
    traffic: &mut dyn Traffic,
) -> Vec<Line> {
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
        assert_eq!(
            out.text(),
            text,
            "serial output while paused (round {round})"
        );
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
    for l in lines {
        assert_eq!(
            l.sum,
            format!("{:016x}", expected_sum(l.i)),
            "the guest's checksum at i={} is not the one its scenario defines",
            l.i
        );
    }
}

// The guest's working-set checksum, recomputed on the host
// (`testguest/guest/churn.rs`): every line's `sum` is a pure function of
// `i` and PAGES.

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hash of the 512 words iteration `iter` wrote into page `page`.
fn page_hash(iter: u64, page: u64) -> u64 {
    let mut x = splitmix(iter ^ splitmix(page ^ splitmix(0x7061_6765))) | 1;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for _ in 0..512 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        h = (h ^ x).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(17);
    }
    h
}

/// The working set's checksum after `done` iterations.
fn expected_sum(done: u64) -> u64 {
    (0..PAGES)
        .map(|p| {
            // The last iteration j < done with j % PAGES == p, or the
            // initial content's marker.
            let back = ((done + PAGES - 1) % PAGES + PAGES - p) % PAGES;
            let writer = (done - 1).checked_sub(back).unwrap_or(u64::MAX);
            splitmix(page_hash(writer, p) ^ p.wrapping_mul(0xd6e8_feb8_6659_fd93))
        })
        .fold(0, u64::wrapping_add)
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
            "churn start pages={PAGES} every={EVERY} blk-sectors={SECTORS} net=0 base="
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

/// The guest-physical address of the working set, from the start line.
fn working_set_base(out: &Capture) -> u64 {
    let text = out.text();
    let start = text
        .lines()
        .find(|l| l.starts_with("churn start "))
        .unwrap_or_else(|| panic!("no start line in\n{text}"));
    let hex = start
        .split(' ')
        .find_map(|w| w.strip_prefix("base=0x"))
        .unwrap_or_else(|| panic!("no base in {start:?}"));
    u64::from_str_radix(hex, 16).expect("base address")
}

/// Waits for the guest to exit and returns its status and output.
fn guest_exit(vm: &Vm, out: &Capture) -> (ExitReason, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(vm.wait());
        });
        let reason = rx.recv_timeout(PATIENCE);
        if reason.is_err() {
            vm.shutdown();
        }
        let reason = reason.unwrap_or_else(|_| {
            panic!(
                "the guest did not exit within {PATIENCE:?}; output:\n{}",
                out.text()
            )
        });
        (reason, out.text())
    })
}

#[test]
fn the_guest_notices_a_page_changed_behind_its_back() {
    // The counterpart of the tests above: a host write into the working set
    // while paused must be caught by the guest.
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.raw");
    let config = churn_config(dir.path(), &disk);
    let out = Capture::default();
    let vm = VmBuilder::new(config)
        .serial_writer(Box::new(out.clone()))
        .build()
        .expect("build VM");
    vm.start().expect("start");
    wait_for_i(&out, 2 * EVERY);
    vm.pause().expect("pause");
    let base = working_set_base(&out);
    // Flip a bit in every page of the working set: the guest checks each
    // page before rewriting it, so the next iteration notices.
    use vm_memory::{Bytes, GuestAddress};
    for page in 0..PAGES {
        let at = GuestAddress(base + page * 4096 + 8);
        let mut word = [0u8; 8];
        vm.memory()
            .read_slice(&mut word, at)
            .expect("read guest memory");
        word[0] ^= 1;
        vm.memory()
            .write_slice(&word, at)
            .expect("write guest memory");
    }
    vm.resume().expect("resume");
    let (reason, text) = guest_exit(&vm, &out);
    assert_eq!(reason, ExitReason::DebugExit { status: 1 }, "{text}");
    assert!(text.contains("churn MISMATCH i="), "{text}");
}

#[test]
fn the_guest_notices_a_disk_changed_behind_its_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.raw");
    let config = churn_config(dir.path(), &disk);
    let out = Capture::default();
    let vm = VmBuilder::new(config)
        .serial_writer(Box::new(out.clone()))
        .build()
        .expect("build VM");
    vm.start().expect("start");
    // Every sector in use has been written once.
    wait_for_i(&out, SECTORS + EVERY);
    vm.pause().expect("pause");
    // Zero the sectors the guest writes, as a restore of an older disk
    // would.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("open disk");
    use std::os::unix::fs::FileExt;
    f.write_all_at(&vec![0u8; (SECTORS * 512) as usize], 0)
        .expect("zero the disk");
    f.sync_all().expect("sync");
    vm.resume().expect("resume");
    let (reason, text) = guest_exit(&vm, &out);
    assert_eq!(reason, ExitReason::DebugExit { status: 1 }, "{text}");
    assert!(
        text.contains("churn BLK-MISMATCH i=") && text.contains(" got-iter=0 "),
        "{text}"
    );
}

// ---------------------------------------------------------- with a tap

const TAP: &str = "vqtap0";
const ETHERTYPE: u16 = 0x88b5;
/// Iterations per frame the guest sends.
const TX_EVERY: u64 = 16;
/// Frames the host sends the guest while it runs, and while it is paused.
const RX_RUNNING: u64 = 20;
const RX_PAUSED: u64 = 10;

fn guest_mac() -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
}

/// An `AF_PACKET` socket on the tap's host side for ethertype 0x88b5: reads
/// what the guest transmits, and sends frames to the guest.
struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn open(ifname: &str) -> Self {
        let proto = i32::from(ETHERTYPE.to_be());
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
        assert!(
            fd >= 0,
            "socket(AF_PACKET): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname).expect("name");
        // SAFETY: `name` is a valid C string for the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex != 0, "if_nametoindex({ifname})");
        let s = Self {
            fd,
            ifindex: ifindex as i32,
        };
        let addr = s.addr([0; 6]);
        // SAFETY: `addr` is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                s.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        // A large receive buffer (root may exceed rmem_max), so the reader
        // thread never loses a frame to a full socket.
        s.setsockopt(libc::SO_RCVBUFFORCE, &(64i32 << 20));
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        s.setsockopt(libc::SO_RCVTIMEO, &tv);
        s
    }

    fn setsockopt<T>(&self, opt: i32, value: &T) {
        // SAFETY: `value` is valid for `size_of::<T>()` bytes for the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (value as *const T).cast(),
                std::mem::size_of::<T>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "setsockopt {opt}: {}",
            std::io::Error::last_os_error()
        );
    }

    fn addr(&self, dst: [u8; 6]) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = ETHERTYPE.to_be();
        a.sll_ifindex = self.ifindex;
        a.sll_halen = 6;
        a.sll_addr[..6].copy_from_slice(&dst);
        a
    }

    /// The next frame (up to the timeout), with whether it is incoming.
    fn recv(&self, buf: &mut [u8]) -> Option<(usize, bool)> {
        // SAFETY: as above.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: `buf` and `from` are valid for their lengths for the call.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ),
                "recvfrom: {e}"
            );
            return None;
        }
        Some((n as usize, from.sll_pkttype != libc::PACKET_OUTGOING))
    }

    /// Sends one frame carrying `churn-rx` and `seq` to the guest.
    fn send_seq(&self, seq: u64) {
        let mut f = [0u8; 60];
        f[0..6].copy_from_slice(&guest_mac());
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
        f[14..22].copy_from_slice(b"churn-rx");
        f[22..30].copy_from_slice(&seq.to_be_bytes());
        let addr = self.addr(guest_mac());
        // SAFETY: `f` and `addr` are valid for their lengths for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(n, 60, "sendto: {}", std::io::Error::last_os_error());
    }
}

/// Packets the tap's host side received (what the VMM wrote into the tap).
fn tap_rx_packets() -> u64 {
    let json = netcommon::ip(&["-j", "-s", "link", "show", TAP]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rx packet count in {json}"))
}

/// Sends frames to the guest and watches the tap while paused.
struct TapTraffic {
    sock: Arc<PacketSocket>,
    next_seq: u64,
    tap_rx_at_pause: u64,
}

impl TapTraffic {
    fn send(&mut self, n: u64) {
        for _ in 0..n {
            self.sock.send_seq(self.next_seq);
            self.next_seq += 1;
        }
    }
}

impl Traffic for TapTraffic {
    fn while_paused_start(&mut self) {
        // The kernel's count of frames the VMM wrote into the tap (the
        // guest sends nothing else).
        self.tap_rx_at_pause = tap_rx_packets();
        // Frames for the guest wait in the tap until it resumes.
        self.send(RX_PAUSED);
    }

    fn while_paused_end(&mut self, round: usize) {
        assert_eq!(
            tap_rx_packets(),
            self.tap_rx_at_pause,
            "the guest's NIC sent frames while paused (round {round})"
        );
    }

    fn while_running(&mut self) {
        self.send(RX_RUNNING);
    }
}

#[test]
fn pause_freezes_a_churning_guest_with_a_disk_and_a_tap_and_resume_loses_nothing() {
    netcommon::require_root(
        "pause_freezes_a_churning_guest_with_a_disk_and_a_tap_and_resume_loses_nothing",
    );
    netcommon::in_netns(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("disk.raw");
        let mut config = churn_config(dir.path(), &disk);
        config.nets.push(NetConfig {
            tap: TAP.into(),
            mac: Some("52:54:00:12:34:56".parse().expect("MAC")),
        });
        let out = Capture::default();
        // The VMM creates the tap (in this thread's namespace) and brings
        // it up.
        let vm = VmBuilder::new(config)
            .serial_writer(Box::new(out.clone()))
            .build()
            .expect("build VM");
        let sock = Arc::new(PacketSocket::open(TAP));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (sock, seen, done) = (sock.clone(), seen.clone(), done.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 2048];
                while !done.load(Ordering::Relaxed) {
                    let Some((n, incoming)) = sock.recv(&mut buf) else {
                        continue;
                    };
                    if !incoming || n < 38 || &buf[14..22] != b"churn-tx" {
                        continue;
                    }
                    let seq = u64::from_be_bytes(buf[22..30].try_into().expect("8 bytes"));
                    let i = u64::from_be_bytes(buf[30..38].try_into().expect("8 bytes"));
                    assert_eq!(i, seq * TX_EVERY, "frame {seq} is for iteration {i}");
                    assert_eq!(&buf[0..6], &[0xff; 6], "broadcast");
                    assert_eq!(&buf[6..12], &guest_mac(), "from the guest's MAC");
                    seen.lock().expect("lock").push(seq);
                }
            })
        };
        let started = Instant::now();
        vm.start().expect("start");
        let mut traffic = TapTraffic {
            sock,
            next_seq: 0,
            tap_rx_at_pause: 0,
        };
        pause_resume_rounds(&vm, &out, &disk, &mut traffic);

        // Every frame sent to the guest arrives, in order (the guest reports
        // a gap itself).
        let sent = traffic.next_seq;
        let start = Instant::now();
        loop {
            let last = last_line(&out).expect("lines");
            if last.rx == Some(sent) {
                break;
            }
            assert!(
                start.elapsed() < PATIENCE && last.rx < Some(sent),
                "the guest received {:?} of {sent} frames; output:\n{}",
                last.rx,
                out.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        stop(&vm, &out);
        // Every frame the guest's NIC put on the tap (all but those still in
        // the guest's 16-entry transmit ring at its last line) reaches the
        // reader, and they are the guest's frames once each, in order.
        let on_tap = tap_rx_packets();
        let tx = last_line(&out).and_then(|l| l.tx).expect("tx count");
        assert!(
            on_tap + 16 >= tx,
            "{on_tap} frames on the tap, the guest sent {tx}"
        );
        let start = Instant::now();
        while (seen.lock().expect("lock").len() as u64) < on_tap {
            assert!(
                start.elapsed() < PATIENCE,
                "the reader got {} of the {on_tap} frames on the tap",
                seen.lock().expect("lock").len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        done.store(true, Ordering::Relaxed);
        reader.join().expect("reader thread");

        let lines = churn_lines(&out.text());
        for l in &lines {
            assert_eq!(l.tx, Some(l.i.div_ceil(TX_EVERY)), "{l:?}");
        }
        let seen = seen.lock().expect("lock");
        assert_eq!(
            seen.len() as u64,
            on_tap,
            "no frame but the guest's on the tap"
        );
        for (n, &seq) in seen.iter().enumerate() {
            assert_eq!(
                seq, n as u64,
                "the guest's frames arrive once each, in order"
            );
        }
        eprintln!(
            "{} lines, {} frames from the guest, {sent} to it, in {:?}",
            lines.len(),
            seen.len(),
            started.elapsed()
        );
    });
}
