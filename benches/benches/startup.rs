//! Start-up benchmark: process start → first byte from the test guest on the
//! UART, and the VMM's resident memory with a 512 MiB guest after boot,
//! excluding the guest pages the guest touched. Median over RUNS runs.
//!
//! Run: `cargo build --release -p vireo-launcher && cargo bench -p vireo-benches --bench startup`

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

use vireo_benches::{median, rss_split, vireo_binary};

const RUNS: usize = 30;
const GUEST_MIB: u64 = 512;
const TARGET_FIRST_BYTE_MS: f64 = 15.0;
const TARGET_RSS_MIB: f64 = 5.0;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("startup: benchmark");
        return;
    }
    let vireo = match vireo_binary() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("startup bench: {e}");
            std::process::exit(1);
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let guest = dir.path().join("guest.elf");
    vireo_testguest::write_to(&guest).expect("write guest");

    let mut first_byte_ms = Vec::with_capacity(RUNS);
    let mut vmm_rss_mib = Vec::with_capacity(RUNS);
    let mut total_rss_mib = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        let mut child = Command::new(&vireo)
            .args(["run", "--memory", "512M", "--cmdline", "idle", "--kernel"])
            .arg(&guest)
            .env("VIREO_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vireo");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut byte = [0u8; 1];
        stdout.read_exact(&mut byte).expect("first byte");
        first_byte_ms.push(start.elapsed().as_secs_f64() * 1e3);
        // Wait for the whole "idle: ready" line: the guest has booted.
        let mut line = vec![byte[0]];
        while !line.ends_with(b"\n") {
            stdout.read_exact(&mut byte).expect("ready line");
            line.push(byte[0]);
        }
        assert_eq!(line, b"idle: ready\n");
        let rss = rss_split(child.id(), GUEST_MIB << 20).expect("smaps");
        vmm_rss_mib.push(rss.vmm_kib() as f64 / 1024.0);
        total_rss_mib.push(rss.total_kib as f64 / 1024.0);
        let _ = child.kill();
        let _ = child.wait();
    }
    let fb = median(&mut first_byte_ms);
    let rss = median(&mut vmm_rss_mib);
    let total = median(&mut total_rss_mib);
    println!("vireo start-up, {RUNS} runs, {GUEST_MIB} MiB guest (median)");
    println!("| metric                                 | median   | target   |");
    println!("|----------------------------------------|----------|----------|");
    println!(
        "| process start → first UART byte        | {fb:>6.2} ms | ≤ {TARGET_FIRST_BYTE_MS} ms |"
    );
    println!(
        "| VMM RSS after boot (guest pages excl.) | {rss:>5.2} MiB | ≤ {TARGET_RSS_MIB} MiB |"
    );
    println!("| process RSS after boot (all)           | {total:>5.2} MiB |          |");
    println!(
        "min/max first byte: {:.2} / {:.2} ms",
        first_byte_ms.first().copied().unwrap_or(f64::NAN),
        first_byte_ms.last().copied().unwrap_or(f64::NAN)
    );
}
