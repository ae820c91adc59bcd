//! The test guest's `churn` scenario (`testguest/guest/churn.rs`): its VM
//! config, its periodic lines, and its working-set checksum recomputed on
//! the host.

use std::path::Path;
use std::time::{Duration, Instant};

use vireo_vmm::{DiskConfig, DiskFormat, ExitReason, Vm, VmConfig};

use super::{Capture, PATIENCE};

/// Working-set pages of the guest.
pub const PAGES: u64 = 256;
/// Iterations between the guest's lines.
pub const EVERY: u64 = 256;
/// Disk sectors the guest cycles through.
pub const SECTORS: u64 = 512;
/// Size of the disk image `churn_config` creates.
pub const DISK_BYTES: u64 = 1 << 20;

/// One periodic `churn i=… sum=…` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub i: u64,
    pub sum: String,
    pub blk: Option<u64>,
    pub tx: Option<u64>,
    pub rx: Option<u64>,
}

/// One `churn RX-GAP i=… want=… got=…` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxGap {
    pub i: u64,
    pub want: u64,
    pub got: u64,
}

/// Every complete periodic line and RX-GAP report so far; panics on a line
/// reporting any other failure (the guest's own checks) or anything
/// unexpected.
pub fn parse(text: &str) -> (Vec<Line>, Vec<RxGap>) {
    let mut out = Vec::new();
    let mut gaps = Vec::new();
    for l in text
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
    {
        assert!(
            !l.contains("MISMATCH") && !l.contains("FAIL"),
            "the guest reports a failure: {l}\nall output:\n{text}"
        );
        if l.starts_with("churn start ") {
            continue;
        }
        let (rest, gap) = match l.strip_prefix("churn RX-GAP i=") {
            Some(rest) => (rest, true),
            None => match l.strip_prefix("churn i=") {
                Some(rest) => (rest, false),
                None => panic!("unexpected guest line {l:?}\nall output:\n{text}"),
            },
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
        let mut want_got = (None, None);
        for w in words {
            let (k, v) = w
                .split_once('=')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let n = || {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("bad line {l:?}"))
            };
            match (gap, k) {
                (false, "sum") => {
                    assert_eq!(v.len(), 16, "bad line {l:?}");
                    line.sum = v.to_owned();
                }
                (false, "blk") => line.blk = Some(n()),
                (false, "tx") => line.tx = Some(n()),
                (false, "rx") => line.rx = Some(n()),
                (true, "want") => want_got.0 = Some(n()),
                (true, "got") => want_got.1 = Some(n()),
                _ => panic!("bad line {l:?}"),
            }
        }
        if gap {
            let (Some(want), Some(got)) = want_got else {
                panic!("bad line {l:?}");
            };
            gaps.push(RxGap {
                i: line.i,
                want,
                got,
            });
        } else {
            out.push(line);
        }
    }
    (out, gaps)
}

/// Every complete periodic line so far; panics on a line reporting a
/// failure, an RX gap included.
pub fn churn_lines(text: &str) -> Vec<Line> {
    let (lines, gaps) = parse(text);
    assert!(
        gaps.is_empty(),
        "the guest reports a gap in what it received: {gaps:?}\nall output:\n{text}"
    );
    lines
}

/// The last complete periodic line; panics on a failure, an RX gap
/// included.
pub fn last_line(out: &Capture) -> Option<Line> {
    churn_lines(&out.text()).pop()
}

/// The last complete periodic line; RX gaps are allowed.
pub fn last_line_allowing_rx_gaps(out: &Capture) -> Option<Line> {
    parse(&out.text()).0.pop()
}

/// Waits until a periodic line with `i >= at_least` has appeared; panics on
/// a failure, an RX gap included.
pub fn wait_for_i(out: &Capture, at_least: u64) -> Line {
    wait_for_i_with(out, at_least, last_line)
}

/// Waits until a periodic line with `i >= at_least` has appeared, with
/// `last` reading the last line.
pub fn wait_for_i_with(out: &Capture, at_least: u64, last: fn(&Capture) -> Option<Line>) -> Line {
    let start = Instant::now();
    loop {
        if let Some(l) = last(out).filter(|l| l.i >= at_least) {
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

/// A 64 MiB, one-vCPU VM running `churn PAGES EVERY SECTORS` on a fresh
/// raw disk image of DISK_BYTES at `disk`; the guest image goes to `dir`.
pub fn churn_config(dir: &Path, disk: &Path) -> VmConfig {
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

/// Consecutive lines `every` iterations apart (none lost or repeated), the
/// first at a multiple of `every`; with a disk one write per iteration;
/// every `sum` the one the scenario defines for its `i`.
pub fn check_lines(lines: &[Line], every: u64, disk: bool) {
    let first = lines.first().expect("lines to check").i;
    assert_eq!(first % every, 0, "first line at i={first}");
    for (n, l) in lines.iter().enumerate() {
        let want = first + n as u64 * every;
        assert_eq!(
            l.i, want,
            "line {n} is for i={} instead of {want}: an iteration lost or repeated",
            l.i
        );
        assert_eq!(
            l.blk,
            disk.then_some(l.i),
            "one disk write per iteration: {l:?}"
        );
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
pub fn page_hash(iter: u64, page: u64) -> u64 {
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
pub fn expected_sum(done: u64) -> u64 {
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

/// Stops a VM whose guest must still be running.
pub fn stop(vm: &Vm, out: &Capture) {
    assert_eq!(
        vm.shutdown(),
        ExitReason::Stopped,
        "the guest exited on its own; output:\n{}",
        out.text()
    );
}
