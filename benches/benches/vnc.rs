//! The VNC console of a whole VM: `vireo run --vnc 127.0.0.1:0 --vnc-size 1024x768` with the
//! ring-3 test guest drawing into its framebuffer, watched by the minimal viewer of
//! [`vireo_benches::rfb_client`] over TCP. Medians of RUNS runs (`VIREO_BENCH_RUNS` overrides
//! it) of:
//!
//! 1. **Update rate and size.** The guest refills the whole screen flat out (`fb-anim 1024 768
//!    <many> 0`); one viewer keeps one incremental request outstanding (request → read → request)
//!    for a fixed window: updates per second, median bytes per update and their ratio to a raw
//!    3 MiB screen, for Raw and for ZRLE. Then a static picture (`fb-pattern`): one full
//!    (non-incremental) update, Raw against ZRLE, bytes and request → last byte time.
//! 2. **The refresh path's CPU on an idle guest.** `fb-pattern 1024 768 1` draws once and then
//!    spins in ring 3, so its vCPU thread burns a core; the figure is the sum of utime + stime
//!    (`/proc/PID/task/*/stat`) of all the VMM's *other* threads (the refresher `vnc-refresh`,
//!    `vnc-accept`, the viewer's `vnc-client-N` and `vnc-writer`, API, serial…) over a window,
//!    with no viewer and with one viewer idling on an outstanding incremental request, as a
//!    percentage of one core. vCPU threads are recognised by their name `vireo-vcpuN`.
//! 3. **Guest write → pixels at the viewer.** `fb-anim 1024 768 30 100`: a fill every 100 ms,
//!    one Raw viewer with an incremental request always outstanding. For each frame, the time
//!    from the moment the bench reads the guest's serial line `fb frame=i color=c` on vireo's
//!    stdout to the moment it has read the first update whose bottom-right pixel (the last one
//!    the guest writes) has colour c. The guest prints that line after its fill, so this is the
//!    refresher's poll period (33 ms) plus encoding and transfer, minus the serial line's own
//!    delivery (microseconds): an upper bound of what a viewer sees, and a figure can be
//!    negative when the refresher caught the finished fill before the line was read. Frames the
//!    viewer never sees (the refresher stalled past the 100 ms gap on a busy host) are counted.
//! 4. **A stuck viewer.** `fb-anim 1024 768 10000 0` (300 frames would last only ~60 ms) with (a) no viewer, (b) two active Raw
//!    viewers, (c) the same two plus a viewer that asks for full Raw updates every few
//!    milliseconds and never reads: the guest's frame rate (from its own `us=` figure) and the
//!    active viewers' update rates, and the ratios (c)/(b).
//!
//! Every run checks what it measured: the guest exits 0 where it should; Raw pixels are the
//! guest's (each colour seen is a `frame_color(i)` of a frame the guest drew, in order, and the
//! static picture is `pattern(x, y, seed)` pixel for pixel); the serial colour of each frame is
//! the one the bench computes; the latency viewer sees most frames; the idle viewer gets no
//! update while the screen does not change; the stuck viewer really has unread bytes queued.
//! Configurations are interleaved within each run. The last line gives the wall time (about
//! 2.5 minutes with 5 runs on a busy 2-core host).
//!
//! `cargo build --release -p vireo-launcher && cargo bench -p vireo-benches --bench vnc`

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use vireo_benches::rfb_client::{RfbClient, Update, RAW, ZRLE};
use vireo_benches::{api_request, median, runs, vireo_binary};
use vireo_testguest::fb_colors::{frame_color, pattern};

const RUNS: usize = 5;
const W: u16 = 1024;
const H: u16 = 768;
const SIZE: &str = "1024x768";
/// Bytes of one raw screen (32 bpp).
const RAW_SCREEN: f64 = W as f64 * H as f64 * 4.0;
/// How long a viewer loops on incremental requests in section 1.
const RATE_WINDOW: Duration = Duration::from_secs(2);
/// Frames of the continuously animating guest of section 1 (it is stopped long before).
const MANY_FRAMES: u64 = 1_000_000;
/// Full updates of the static picture timed per run and encoding.
const STATIC_REPS: usize = 5;
/// CPU sampling window of section 2.
const CPU_WINDOW: Duration = Duration::from_secs(5);
/// Frames and gap of section 3.
const LATENCY_FRAMES: u64 = 30;
const LATENCY_GAP_MS: u64 = 100;
/// Frames of section 4: the guest fills about 5000 screens a second here, so 300 frames would
/// last some 60 ms, two updates of a viewer; 10 000 last 2 to 3 s.
const STUCK_FRAMES: u64 = 10_000;
/// How long any one step (a start, a line, an exit) may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// Pixel `i` of a Raw rectangle (server format: B, G, R, X in memory) as 0x00rrggbb.
fn pixel(pixels: &[u8], i: usize) -> u32 {
    let p = &pixels[i * 4..i * 4 + 4];
    u32::from(p[2]) << 16 | u32::from(p[1]) << 8 | u32::from(p[0])
}

/// The colour of the screen's bottom-right pixel if `update` carries it (Raw only).
fn bottom_right(update: &Update) -> Option<u32> {
    update
        .rects
        .iter()
        .filter(|r| r.encoding == RAW && r.x + r.w == W && r.y + r.h == H && r.w > 0 && r.h > 0)
        .map(|r| pixel(&r.pixels, usize::from(r.w) * usize::from(r.h) - 1))
        .next_back()
}

/// Pixels the real (Raw or ZRLE) rectangles of `update` cover.
fn covered(update: &Update) -> u64 {
    update
        .rects
        .iter()
        .filter(|r| r.encoding == RAW || r.encoding == ZRLE)
        .map(|r| u64::from(r.w) * u64::from(r.h))
        .sum()
}

/// Serial lines read from vireo's stdout, each with the moment it was read.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

/// A `vireo run` with a VNC console, killed (and reaped) when dropped.
struct Vm {
    child: Child,
    lines: Lines,
    /// `HOST:PORT` of the VNC server.
    vnc: String,
    log: PathBuf,
}

impl Vm {
    /// Starts the test guest with `cmdline` and waits for the VNC address in `vm.info`.
    fn start(bench: &Bench, cmdline: &str) -> Vm {
        let n = bench.seq.get();
        bench.seq.set(n + 1);
        let socket = bench.dir.join(format!("api-{n}.sock"));
        let log = bench.dir.join(format!("vireo-{n}.log"));
        let err = std::fs::File::create(&log).expect("create the log file");
        let mut child = Command::new(&bench.vireo)
            .args(["run", "--kernel"])
            .arg(&bench.guest)
            .args([
                "--cmdline",
                cmdline,
                "--memory",
                "64M",
                "--vnc",
                "127.0.0.1:0",
                "--vnc-size",
                SIZE,
                "--api-socket",
            ])
            .arg(&socket)
            .env("VIREO_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn vireo");
        let lines: Lines = Arc::default();
        {
            let out = child.stdout.take().expect("stdout");
            let lines = lines.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(out);
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let now = Instant::now();
                    lines
                        .lock()
                        .unwrap()
                        .push((now, line.trim_end().to_owned()));
                    line.clear();
                }
            });
        }
        let deadline = Instant::now() + PATIENCE;
        let vnc = loop {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                let (code, body) = api_request(&socket, "GET", "/api/v1/vm.info", "");
                assert_eq!(code, 200, "vm.info: {body}");
                let info: Value = serde_json::from_str(&body).expect("vm.info JSON");
                break info["vnc"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no vnc address in vm.info: {body}"))
                    .to_owned();
            }
            assert!(
                child.try_wait().expect("try_wait").is_none(),
                "vireo ended at start; log:\n{}",
                read_text(&log)
            );
            assert!(Instant::now() < deadline, "no API socket");
            std::thread::sleep(Duration::from_millis(2));
        };
        Vm {
            child,
            lines,
            vnc,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A viewer connected to this VM's VNC server, asking for `encoding`.
    fn viewer(&self, encoding: i32) -> RfbClient {
        let mut c = RfbClient::connect_tcp(&self.vnc).expect("connect a viewer");
        assert_eq!(c.geometry(), (W, H), "ServerInit geometry");
        c.set_encoding(encoding).expect("SetEncodings");
        c
    }

    /// Waits for the first serial line containing `needle`: when it was read, and the line.
    fn wait_line(&self, needle: &str) -> (Instant, String) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(_, l)| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "the guest never printed {needle:?}; log:\n{}",
                read_text(&self.log)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for vireo to exit; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "vireo did not exit");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for `fb anim done frames=N us=T` and a 0 exit status; T in µs.
    fn anim_done(&mut self, frames: u64) -> f64 {
        let (_, done) = self.wait_line("fb anim done");
        let us: f64 = done
            .split("us=")
            .nth(1)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no us= in {done:?}"));
        assert!(done.contains(&format!("frames={frames} ")), "{done}");
        let code = self.wait_exit();
        assert_eq!(
            code,
            Some(0),
            "the guest exits 0; log:\n{}",
            read_text(&self.log)
        );
        us
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The text of `path` (empty if unreadable).
fn read_text(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Where a run's files go and what it uses.
struct Bench {
    vireo: PathBuf,
    dir: PathBuf,
    guest: PathBuf,
    seq: std::cell::Cell<usize>,
}

/// The first frame `i` in `from..=last` that has `colour`: frames only go forward, so a
/// colour seen after frame `from` must be that of `from` or a later one (colours are 21-bit
/// hashes and repeat now and then, hence no lookup table). The screen is black before the
/// first frame (frame 0). Panics if there is none.
fn frame_at_or_after(from: u64, colour: u32, last: u64) -> u64 {
    if from == 0 && colour == 0 {
        return 0;
    }
    (from.max(1)..=last)
        .find(|&i| frame_color(i) == colour)
        .unwrap_or_else(|| panic!("colour {colour:#08x} is no frame the guest drew from {from} on"))
}

/// Section 1, animated part: (updates/s, median bytes per update, median screen coverage).
fn update_rate(bench: &Bench, encoding: i32) -> (f64, f64, f64) {
    let vm = Vm::start(bench, &format!("fb-anim {W} {H} {MANY_FRAMES} 0"));
    let mut c = vm.viewer(encoding);
    vm.wait_line("fb frame=");
    // One full update first, so the loop below sees only changes.
    c.request(false).expect("request");
    c.read_update().expect("full update");
    let mut bytes = Vec::new();
    let mut coverage = Vec::new();
    let mut last_frame = 0;
    let start = Instant::now();
    while start.elapsed() < RATE_WINDOW {
        c.request(true).expect("request");
        let u = c.read_update().expect("update");
        bytes.push(u.bytes as f64);
        coverage.push(covered(&u) as f64 / (f64::from(W) * f64::from(H)));
        if encoding == RAW {
            // Every band starts with a colour the guest drew; the bottom-right pixel, when the
            // update has it (not when the refresher caught a fill half done), goes forward.
            for r in u.rects.iter().filter(|r| r.encoding == RAW && r.w > 0) {
                frame_at_or_after(0, pixel(&r.pixels, 0), MANY_FRAMES);
            }
            if let Some(colour) = bottom_right(&u) {
                last_frame = frame_at_or_after(last_frame, colour, MANY_FRAMES);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        vm.lines.lock().unwrap().len() > 2,
        "the guest went on animating"
    );
    if encoding == RAW {
        assert!(last_frame > 1, "the screen changed");
    }
    let n = bytes.len() as f64;
    (n / elapsed, median(&mut bytes), median(&mut coverage))
}

/// Section 1, static part: per encoding, (median bytes, median ms) of a full update.
fn static_full(bench: &Bench) -> [(f64, f64); 2] {
    let seed = 7;
    let vm = Vm::start(bench, &format!("fb-pattern {W} {H} {seed}"));
    vm.wait_line("fb drawn");
    let matches = |u: &Update| {
        u.rects.iter().filter(|r| r.encoding == RAW).all(|r| {
            (0..r.h).all(|dy| {
                (0..r.w).all(|dx| {
                    let (x, y) = (u32::from(r.x + dx), u32::from(r.y + dy));
                    pixel(
                        &r.pixels,
                        usize::from(dy) * usize::from(r.w) + usize::from(dx),
                    ) == pattern(x, y, seed)
                })
            })
        }) && covered(u) == u64::from(W) * u64::from(H)
    };
    let mut raw = vm.viewer(RAW);
    // The refresher copies the picture within a poll period or two.
    let deadline = Instant::now() + PATIENCE;
    loop {
        raw.request(false).expect("request");
        if matches(&raw.read_update().expect("update")) {
            break;
        }
        assert!(Instant::now() < deadline, "the picture never showed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut zrle = vm.viewer(ZRLE);
    let mut out = [(0.0, 0.0); 2];
    for (k, c) in [&mut raw, &mut zrle].into_iter().enumerate() {
        let mut bytes = Vec::new();
        let mut ms = Vec::new();
        for _ in 0..STATIC_REPS {
            let t = Instant::now();
            c.request(false).expect("request");
            let u = c.read_update().expect("update");
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(matches(&u), "a full update of the picture");
            bytes.push(u.bytes as f64);
        }
        out[k] = (median(&mut bytes), median(&mut ms));
    }
    out
}

/// utime + stime (clock ticks) of each thread of `pid`: tid → (name, ticks).
fn thread_ticks(pid: u32) -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ppid …": comm may hold spaces; fields after it start at field 3.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        out.insert(tid, (name, ticks));
    }
    out
}

/// CPU use over `window` as % of one core: (non-vCPU threads, vCPU threads).
fn cpu_over(pid: u32, window: Duration) -> (f64, f64) {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = thread_ticks(pid);
    let t = Instant::now();
    std::thread::sleep(window);
    let after = thread_ticks(pid);
    let secs = t.elapsed().as_secs_f64();
    let (mut other, mut vcpu) = (0u64, 0u64);
    let mut vcpus = 0;
    for (tid, (name, ticks)) in &after {
        let d = ticks - before.get(tid).map_or(0, |b| b.1);
        if name.starts_with("vireo-vcpu") {
            vcpu += d;
            vcpus += 1;
        } else {
            other += d;
        }
    }
    assert_eq!(vcpus, 1, "one vCPU thread named vireo-vcpuN: {after:?}");
    let pct = |t: u64| t as f64 / hz / secs * 100.0;
    (pct(other), pct(vcpu))
}

/// Section 2: ((other %, vCPU %) without a viewer, with one idle viewer).
fn idle_cpu(bench: &Bench) -> [(f64, f64); 2] {
    let mut vm = Vm::start(bench, &format!("fb-pattern {W} {H} 1"));
    vm.wait_line("fb drawn");
    std::thread::sleep(Duration::from_millis(300));
    let alone = cpu_over(vm.pid(), CPU_WINDOW);
    let mut c = vm.viewer(RAW);
    c.request(false).expect("request");
    c.read_update().expect("full update");
    // The first incremental request may still see the drawing; then nothing changes.
    let updates = Arc::new(AtomicU64::new(0));
    let viewer = {
        let updates = updates.clone();
        std::thread::spawn(move || loop {
            if c.request(true).is_err() || c.read_update().is_err() {
                return;
            }
            updates.fetch_add(1, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let seen = updates.load(Ordering::SeqCst);
    let with_viewer = cpu_over(vm.pid(), CPU_WINDOW);
    assert_eq!(
        updates.load(Ordering::SeqCst),
        seen,
        "no update while the screen stays still"
    );
    assert!(!viewer.is_finished(), "the viewer is still connected");
    let _ = vm.child.kill();
    let _ = viewer.join();
    [alone, with_viewer]
}

/// Section 3: latencies (ms) of the frames drawn while the viewer was watching, and how many
/// of those frames it never saw.
fn latency(bench: &Bench) -> (Vec<f64>, usize) {
    let mut vm = Vm::start(
        bench,
        &format!("fb-anim {W} {H} {LATENCY_FRAMES} {LATENCY_GAP_MS}"),
    );
    let mut c = vm.viewer(RAW);
    c.request(false).expect("request");
    c.read_update().expect("full update");
    let ready = Instant::now();
    let viewer = std::thread::spawn(move || {
        let mut seen: Vec<(Instant, Option<u32>)> = Vec::new();
        // Ends when vireo exits and closes the connection.
        while c.request(true).is_ok() {
            let Ok(u) = c.read_update() else { break };
            seen.push((Instant::now(), bottom_right(&u)));
        }
        seen
    });
    vm.anim_done(LATENCY_FRAMES);
    let seen = viewer.join().expect("viewer");
    let lines = vm.lines.lock().unwrap().clone();
    let mut out = Vec::new();
    let mut missed = 0;
    let mut last_frame = 0;
    for (_, colour) in &seen {
        if let Some(colour) = colour {
            last_frame = frame_at_or_after(last_frame, *colour, LATENCY_FRAMES);
        }
    }
    for (t, line) in &lines {
        let Some(rest) = line.strip_prefix("fb frame=") else {
            continue;
        };
        let (i, colour) = rest.split_once(" color=0x").expect("fb frame line");
        let i: u64 = i.parse().expect("frame number");
        let colour = u32::from_str_radix(colour.trim(), 16).expect("colour");
        assert_eq!(colour, frame_color(i), "the guest's colour of frame {i}");
        // Frames drawn before the viewer was ready are not timed (the one in flight neither).
        if *t < ready + Duration::from_millis(LATENCY_GAP_MS) {
            continue;
        }
        // A frame the refresher did not copy before the next one replaced it (a stall of
        // more than the gap on a busy host) never reaches a viewer: counted, not timed.
        let Some((at, _)) = seen.iter().find(|(_, c)| *c == Some(colour)) else {
            missed += 1;
            continue;
        };
        let ms = if *at >= *t {
            at.duration_since(*t).as_secs_f64() * 1e3
        } else {
            -t.duration_since(*at).as_secs_f64() * 1e3
        };
        out.push(ms);
    }
    assert!(
        out.len() as u64 >= LATENCY_FRAMES / 2,
        "only {} frames timed ({missed} missed)",
        out.len()
    );
    (out, missed)
}

/// Section 4, one configuration: (guest frames/s, median of the active viewers' updates/s,
/// bytes the stuck viewer left unread).
fn stuck(bench: &Bench, viewers: usize, stuck_viewer: bool) -> (f64, f64, f64) {
    let mut vm = Vm::start(bench, &format!("fb-anim {W} {H} {STUCK_FRAMES} 0"));
    let stop = Arc::new(AtomicBool::new(false));
    let stuck = stuck_viewer.then(|| {
        let mut c = vm.viewer(RAW);
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut requests = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if c.request(false).is_err() {
                    break;
                }
                requests += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (requests, c.unread_bytes().unwrap_or(0))
        })
    });
    let active: Vec<_> = (0..viewers)
        .map(|_| {
            let mut c = vm.viewer(RAW);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut n = 0u64;
                let mut last_frame = 0;
                let mut end = start;
                while !stop.load(Ordering::SeqCst) && c.request(true).is_ok() {
                    let Ok(u) = c.read_update() else { break };
                    end = Instant::now();
                    n += 1;
                    if let Some(colour) = bottom_right(&u) {
                        last_frame = frame_at_or_after(last_frame, colour, STUCK_FRAMES);
                    }
                }
                assert!(n > 1 && last_frame > 0, "the viewer saw frames");
                (n, end.duration_since(start).as_secs_f64())
            })
        })
        .collect();
    let us = vm.anim_done(STUCK_FRAMES);
    stop.store(true, Ordering::SeqCst);
    let mut rates: Vec<f64> = active
        .into_iter()
        .map(|t| {
            let (n, secs) = t.join().expect("viewer");
            n as f64 / secs
        })
        .collect();
    let mut unread_bytes = 0.0;
    if let Some(t) = stuck {
        let (requests, unread) = t.join().expect("stuck viewer");
        assert!(
            requests > 10 && unread > 0,
            "the stuck viewer asked ({requests} requests) and left bytes unread ({unread})"
        );
        unread_bytes = unread as f64;
    }
    (
        STUCK_FRAMES as f64 / (us / 1e6),
        median(&mut rates),
        unread_bytes,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("vnc: benchmark");
        return;
    }
    let wall = Instant::now();
    let vireo = vireo_binary().unwrap_or_else(|e| {
        eprintln!("vnc bench: {e}");
        std::process::exit(1);
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let guest = dir.path().join("guest.elf");
    vireo_testguest::write_to(&guest).expect("write guest");
    let runs = runs(RUNS);
    let bench = Bench {
        vireo,
        dir: dir.path().to_owned(),
        guest,
        seq: std::cell::Cell::new(0),
    };

    // Samples, per section.
    let (mut rate, mut bytes, mut cover) = ([vec![], vec![]], [vec![], vec![]], [vec![], vec![]]);
    let (mut st_bytes, mut st_ms) = ([vec![], vec![]], [vec![], vec![]]);
    let (mut cpu_other, mut cpu_vcpu) = ([vec![], vec![]], [vec![], vec![]]);
    let mut lat = Vec::new();
    let mut lat_missed = 0;
    let (mut guest_fps, mut viewer_ups) = ([vec![], vec![], vec![]], [vec![], vec![], vec![]]);
    let mut unread = Vec::new();
    let mut t_sec = [0.0f64; 4];
    for run in 0..runs {
        eprintln!("vnc bench: run {}/{runs}", run + 1);
        let t = Instant::now();
        for (k, enc) in [RAW, ZRLE].into_iter().enumerate() {
            let (r, b, c) = update_rate(&bench, enc);
            rate[k].push(r);
            bytes[k].push(b);
            cover[k].push(c * 100.0);
        }
        for (k, (b, ms)) in static_full(&bench).into_iter().enumerate() {
            st_bytes[k].push(b);
            st_ms[k].push(ms);
        }
        t_sec[0] += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for (k, (o, v)) in idle_cpu(&bench).into_iter().enumerate() {
            cpu_other[k].push(o);
            cpu_vcpu[k].push(v);
        }
        t_sec[1] += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (l, m) = latency(&bench);
        lat.extend(l);
        lat_missed += m;
        t_sec[2] += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for (k, (viewers, stuck_viewer)) in
            [(0, false), (2, false), (2, true)].into_iter().enumerate()
        {
            let (g, v, u) = stuck(&bench, viewers, stuck_viewer);
            guest_fps[k].push(g);
            viewer_ups[k].push(v);
            if stuck_viewer {
                unread.push(u);
            }
        }
        t_sec[3] += t.elapsed().as_secs_f64();
    }

    let mib = |b: f64| b / f64::from(1 << 20);
    println!("\nVNC console, {W}x{H} 32 bpp, TCP loopback, {runs} runs (medians)");
    println!("\n1. Full-screen updates, guest refilling the screen flat out (fb-anim), {} s of incremental requests", RATE_WINDOW.as_secs());
    println!("| encoding | updates/s | bytes/update | vs raw 3 MiB | screen covered |");
    println!("|----------|-----------|--------------|--------------|----------------|");
    for (k, name) in ["Raw", "ZRLE"].into_iter().enumerate() {
        let b = median(&mut bytes[k]);
        println!(
            "| {name:<8} | {:>9.1} | {:>12.0} | {:>11.4}× | {:>13.0}% |",
            median(&mut rate[k]),
            b,
            b / RAW_SCREEN,
            median(&mut cover[k])
        );
    }
    println!("\n   Static picture (fb-pattern), one full (non-incremental) update, {STATIC_REPS} per run");
    println!("| encoding | bytes      | MiB    | vs raw 3 MiB | request → last byte |");
    println!("|----------|------------|--------|--------------|---------------------|");
    for (k, name) in ["Raw", "ZRLE"].into_iter().enumerate() {
        let b = median(&mut st_bytes[k]);
        println!(
            "| {name:<8} | {b:>10.0} | {:>6.3} | {:>11.4}× | {:>16.2} ms |",
            mib(b),
            b / RAW_SCREEN,
            median(&mut st_ms[k])
        );
    }
    println!(
        "\n2. CPU of the VMM's non-vCPU threads, idle guest spinning in ring 3 (fb-pattern), {} s window",
        CPU_WINDOW.as_secs()
    );
    println!("| viewers                          | non-vCPU threads, % of a core | vCPU thread (spinning guest) |");
    println!("|----------------------------------|-------------------------------|------------------------------|");
    for (k, name) in ["none", "1 idle (incremental outstanding)"]
        .into_iter()
        .enumerate()
    {
        println!(
            "| {name:<32} | {:>28.2}% | {:>27.1}% |",
            median(&mut cpu_other[k]),
            median(&mut cpu_vcpu[k])
        );
    }
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    println!(
        "   (utime + stime from /proc/PID/task/*/stat in ticks of {:.0} ms: {:.2} % of a core is one tick over the window)",
        1e3 / hz,
        100.0 / (hz * CPU_WINDOW.as_secs_f64())
    );
    let n_lat = lat.len();
    lat.sort_by(|a, b| a.total_cmp(b));
    let p95 = lat[((n_lat as f64 * 0.95).ceil() as usize).clamp(1, n_lat) - 1];
    println!(
        "\n3. Guest fill → its last pixel at a Raw viewer (fb-anim {W} {H} {LATENCY_FRAMES} {LATENCY_GAP_MS}), {n_lat} frames over all runs, {lat_missed} more never seen"
    );
    println!("| median   | p95      | min      | max      |");
    println!("|----------|----------|----------|----------|");
    println!(
        "| {:>5.1} ms | {:>5.1} ms | {:>5.1} ms | {:>5.1} ms |",
        median(&mut lat.clone()),
        p95,
        lat[0],
        lat[n_lat - 1]
    );
    println!("   (from the guest's serial line after the fill, read on vireo's stdout, to the update read; refresher polls every 33 ms)");
    println!("\n4. A stuck viewer (asks for full Raw updates, never reads); guest fb-anim {W} {H} {STUCK_FRAMES} 0");
    println!(
        "| viewers                      | guest frames/s | active viewers' updates/s (median) |"
    );
    println!(
        "|------------------------------|----------------|------------------------------------|"
    );
    let mut g = [0.0; 3];
    let mut v = [0.0; 3];
    for (k, name) in ["none", "2 active", "2 active + 1 stuck"]
        .into_iter()
        .enumerate()
    {
        g[k] = median(&mut guest_fps[k]);
        v[k] = median(&mut viewer_ups[k]);
        let vs = if k == 0 {
            "—".to_owned()
        } else {
            format!("{:.1}", v[k])
        };
        println!("| {name:<28} | {:>14.0} | {vs:>34} |", g[k]);
    }
    println!(
        "| ratio stuck / not stuck      | {:>13.2}× | {:>33.2}× |",
        g[2] / g[1],
        v[2] / v[1]
    );
    println!(
        "   (the stuck viewer had {:.2} MiB unread in its own socket at the end, median over runs)",
        mib(median(&mut unread))
    );
    println!(
        "\nwall time: {:.0} s (rates {:.0} s, CPU {:.0} s, latency {:.0} s, stuck viewer {:.0} s)",
        wall.elapsed().as_secs_f64(),
        t_sec[0],
        t_sec[1],
        t_sec[2],
        t_sec[3]
    );
}
