//! Helpers for Vireo's whole-VM benchmarks: finding the `vireo` binary,
//! reading a process's memory use, summarising samples, a throwaway PKI
//! for TLS live migrations, and a minimal VNC viewer ([`rfb_client`]).

pub mod rfb_client;

use std::path::{Path, PathBuf};

/// Locates the `vireo` binary: `$VIREO_BIN`, else next to the benchmark in
/// the same target profile directory (`target/release/vireo`).
pub fn vireo_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VIREO_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/deps/<bench> → target/<profile>/vireo
    let candidate = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("vireo"))
        .ok_or("cannot derive the target directory")?;
    if candidate.exists() {
        Ok(candidate)
    } else {
        Err(format!(
            "{} not found: build it first with `cargo build --release -p vireo-launcher` \
             or set VIREO_BIN",
            candidate.display()
        ))
    }
}

/// Resident memory of a process, split into guest RAM and the VMM's own.
#[derive(Debug, Clone, Copy)]
pub struct RssSplit {
    /// All resident memory of the process, KiB.
    pub total_kib: u64,
    /// Resident pages of the guest RAM mapping (pages the guest touched), KiB.
    pub guest_kib: u64,
}

impl RssSplit {
    /// The VMM's own resident memory: total minus guest RAM.
    pub fn vmm_kib(&self) -> u64 {
        self.total_kib.saturating_sub(self.guest_kib)
    }
}

/// Reads `/proc/PID/smaps` and attributes to the guest the one anonymous
/// mapping whose size equals `guest_bytes`.
pub fn rss_split(pid: u32, guest_bytes: u64) -> std::io::Result<RssSplit> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut total = 0;
    let mut guest = 0;
    let mut current_is_guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            let (start, end) = first.split_once('-').unwrap_or(("0", "0"));
            let size = u64::from_str_radix(end, 16).unwrap_or(0)
                - u64::from_str_radix(start, 16).unwrap_or(0);
            let has_path = line.split_whitespace().nth(5).is_some();
            current_is_guest = size == guest_bytes && !has_path;
        } else if first == "Rss:" {
            let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            total += kib;
            if current_is_guest {
                guest += kib;
            }
        }
    }
    Ok(RssSplit {
        total_kib: total,
        guest_kib: guest,
    })
}

/// Median of `samples` (sorted in place).
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

pub mod pki;
pub use pki::write_pki;

/// One control-API request on a fresh unix-socket connection (HTTP/1.1, the server closes after
/// answering): (status, body). Panics on anything but an HTTP answer (benchmarks only).
pub fn api_request(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(600)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (code, body)
}

/// The number of runs a benchmark makes: `default`, or `$VIREO_BENCH_RUNS` when it is set to a
/// positive number (for a quick try).
pub fn runs(default: usize) -> usize {
    std::env::var("VIREO_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}
