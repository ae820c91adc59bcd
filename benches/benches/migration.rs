//! Live migration between two `vireo` processes on this host, driven through the control API
//! (`PUT /api/v1/vm.send-migration`, which answers once the migration has ended). Medians of
//! RUNS runs (`VIREO_BENCH_RUNS` overrides it) of the figures in that answer:
//!
//! 1. an idle 1 GiB guest (`count`, one serial line every 10⁸ TSC cycles) over unix, TCP and
//!    TLS, with the KVM dirty ring and with the dirty bitmap: total time, downtime (the source's
//!    pause → the target's answer that the guest runs) and pages sent;
//! 2. a 1 GiB guest rewriting a 256 MiB working set at 200 MiB/s (`churn 65536 16384 0 0
//!    200`, migrated once its first `churn i=` line is out, default `downtime_ms` 300), same
//!    transports and dirty logs: pre-copy passes, total, downtime, MiB sent, ring-full exits
//!    and the highest auto-converge throttle of any run;
//! 3. the local handover of an idle 4 GiB guest (`--memory-backing memfd`, unix, `local`):
//!    total and downtime.
//!
//! Every run starts a fresh target (`vireo receive`) and source (`vireo run`), and checks that
//! the migration really happened: the answer's phase is `completed` with the asked-for dirty
//! log, the source exits with status 10, and the guest goes on on the target — its serial
//! output grows after the answer and continues the source's without a gap (`tick` numbers
//! consecutive; `churn i=` lines every 16384 iterations and no `MISMATCH`, which the guest
//! prints when a page lost its contents). Runs of one section are interleaved over the
//! transports and dirty logs, so drift on a shared host affects all rows alike. TLS uses a
//! throwaway CA made at start. `VIREO_BENCH_VERBOSE=1` prints every answer on stderr. The
//! last line gives the wall time: about 5 minutes with 10 runs on a busy 2-core host, most of
//! it in section 2 (each run waits for the 256 MiB working set to be written once).
//!
//! `cargo build --release -p vireo-launcher && cargo bench -p vireo-benches --bench migration`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vireo_benches::{api_request, median, runs, vireo_binary, write_pki};

const RUNS: usize = 10;
const TARGET_IDLE_DOWNTIME_MS: f64 = 20.0;
const TARGET_IDLE_TOTAL_MS: f64 = 500.0;
const TARGET_LOCAL_DOWNTIME_MS: f64 = 20.0;
/// Cloud Hypervisor's local-migration downtime, the reference for section 3.
const CLOUD_HYPERVISOR_LOCAL_MS: f64 = 50.0;
/// `churn` prints a line every this many iterations.
const CHURN_EVERY: u64 = 16384;
/// How long any one step (a start, a migration, an exit) may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(120);

/// A `vireo` process that is killed (and reaped) when dropped, also on a panic, so that no
/// VM outlives a failed run.
struct Proc {
    child: Child,
}

impl Proc {
    /// Spawns `vireo ARGS` with `VIREO_LOG=log`, stdout discarded and stderr to `stderr`.
    fn spawn(vireo: &Path, args: &[&str], log: &str, stderr: &Path) -> Self {
        let err = std::fs::File::create(stderr).expect("create the log file");
        let child = Command::new(vireo)
            .args(args)
            .env("VIREO_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn vireo");
        Proc { child }
    }

    /// Waits for the process to exit; its exit code (`None` if a signal ended it).
    fn wait_exit(&mut self, what: &str) -> Option<i32> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "{what} did not exit");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of `path` so far (empty while it does not exist).
fn read_text(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Waits until `path` holds `needle`; `log` is shown if it never comes.
fn wait_text(path: &Path, needle: &str, log: &Path) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = read_text(path);
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never showed {needle:?}; log:\n{}",
            path.display(),
            read_text(log)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// How the source reaches the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Unix,
    Tcp,
    Tls,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::Unix, Transport::Tcp, Transport::Tls];

    /// The URL scheme, as printed in the tables.
    fn name(self) -> &'static str {
        match self {
            Transport::Unix => "unix",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// What a run migrates.
struct Guest<'a> {
    /// `--memory`.
    memory: &'a str,
    /// `--memory-backing`.
    backing: &'a str,
    /// `--dirty-log`: `ring`, `bitmap` or `auto`.
    dirty_log: &'a str,
    /// `--cmdline` of the test guest.
    cmdline: &'a str,
    /// Serial text that says the guest runs and is ready to be migrated.
    ready: &'a str,
    /// Send with `"local": true`.
    local: bool,
}

/// The figures of one completed migration, from the send-migration answer.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    total_ms: f64,
    downtime_ms: f64,
    passes: f64,
    pages_sent: f64,
    mib_sent: f64,
    ring_full_exits: f64,
    throttle_percent: f64,
}

/// Where a run's files go and what it uses.
struct Bench {
    vireo: PathBuf,
    dir: PathBuf,
    guest_elf: String,
    /// The throwaway PKI's directory (`source/`, `target/`).
    pki: PathBuf,
    /// Runs so far, for unique file names.
    seq: std::cell::Cell<usize>,
}

impl Bench {
    /// Starts a target listening for `transport`; returns it with the URL to send to.
    fn start_target(&self, transport: Transport, n: usize, serial: &Path) -> (Proc, String) {
        let log = self.dir.join(format!("target-{n}.log"));
        let listen = match transport {
            Transport::Unix => format!("unix:{}", self.dir.join(format!("mig-{n}.sock")).display()),
            Transport::Tcp => "tcp:127.0.0.1:0".to_owned(),
            Transport::Tls => "tls:127.0.0.1:0".to_owned(),
        };
        let serial_arg = format!("file={}", serial.display());
        let tls_dir = self.pki.join("target");
        let mut args = vec!["receive", "--listen", &listen, "--serial", &serial_arg];
        if transport == Transport::Tls {
            args.extend(["--tls-dir", tls_dir.to_str().expect("utf-8")]);
        }
        let proc = Proc::spawn(&self.vireo, &args, "info", &log);
        // Logged once the listener is bound: `waiting for the migration source url=…`, after
        // `… port=N` for TCP.
        let text = wait_text(&log, "url=", &log);
        let url = match transport {
            Transport::Unix => listen,
            Transport::Tcp | Transport::Tls => {
                let port: u16 = text
                    .split("port=")
                    .nth(1)
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("no port in the target's log:\n{text}"));
                format!("{}:127.0.0.1:{port}", transport.name())
            }
        };
        (proc, url)
    }

    /// One migration of `guest` over `transport`, checked end to end.
    fn migrate(&self, guest: &Guest, transport: Transport) -> Outcome {
        let n = self.seq.get();
        self.seq.set(n + 1);
        let src_serial = self.dir.join(format!("source-{n}.serial"));
        let dst_serial = self.dir.join(format!("target-{n}.serial"));
        let src_log = self.dir.join(format!("source-{n}.log"));
        let dst_log = self.dir.join(format!("target-{n}.log"));
        let socket = self.dir.join(format!("api-{n}.sock"));

        let (mut target, url) = self.start_target(transport, n, &dst_serial);
        let serial_arg = format!("file={}", src_serial.display());
        let mut source = Proc::spawn(
            &self.vireo,
            &[
                "run",
                "--kernel",
                &self.guest_elf,
                "--cmdline",
                guest.cmdline,
                "--memory",
                guest.memory,
                "--memory-backing",
                guest.backing,
                "--dirty-log",
                guest.dirty_log,
                "--api-socket",
                socket.to_str().expect("utf-8"),
                "--serial",
                &serial_arg,
            ],
            "warn",
            &src_log,
        );
        wait_text(&src_serial, guest.ready, &src_log);

        let mut body = serde_json::json!({ "destination_url": url, "local": guest.local });
        if transport == Transport::Tls {
            body["tls_dir"] = Value::from(self.pki.join("source").to_str().expect("utf-8"));
        }
        let (code, answer) = api_request(
            &socket,
            "PUT",
            "/api/v1/vm.send-migration",
            &body.to_string(),
        );
        let grown_from = read_text(&dst_serial).len();
        assert_eq!(
            code,
            200,
            "send-migration over {url}: {answer}\nsource log:\n{}\ntarget log:\n{}",
            read_text(&src_log),
            read_text(&dst_log)
        );
        if std::env::var_os("VIREO_BENCH_VERBOSE").is_some() {
            eprintln!(
                "{} {} {}: {answer}",
                guest.cmdline,
                guest.dirty_log,
                transport.name()
            );
        }
        let info: Value = serde_json::from_str(&answer).expect("MigrationInfo JSON");
        assert_eq!(info["phase"], "completed", "{answer}");
        if guest.dirty_log != "auto" {
            assert_eq!(info["dirty_log"], guest.dirty_log, "{answer}");
        }
        let number = |key: &str| {
            info[key]
                .as_f64()
                .unwrap_or_else(|| panic!("no {key} in {answer}"))
        };
        let outcome = Outcome {
            total_ms: number("total_ms"),
            downtime_ms: number("downtime_ms"),
            passes: number("pass"),
            pages_sent: number("pages_sent"),
            mib_sent: number("bytes_sent") / f64::from(1 << 20),
            ring_full_exits: number("ring_full_exits"),
            throttle_percent: number("throttle_percent"),
        };

        assert_eq!(
            source.wait_exit("the source"),
            Some(10),
            "the source exits with status 10 (migrated); log:\n{}",
            read_text(&src_log)
        );
        // The guest goes on on the target: its serial output grows past the answer.
        let deadline = Instant::now() + PATIENCE;
        while read_text(&dst_serial).len() <= grown_from || !read_text(&dst_serial).contains('\n') {
            assert!(
                target.child.try_wait().expect("try_wait").is_none(),
                "the target ended; log:\n{}",
                read_text(&dst_log)
            );
            assert!(
                Instant::now() < deadline,
                "the target's serial output does not grow; log:\n{}",
                read_text(&dst_log)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(target);
        check_continuity(&(read_text(&src_serial) + &read_text(&dst_serial)));
        for f in [&src_serial, &dst_serial, &src_log, &dst_log] {
            let _ = std::fs::remove_file(f);
        }
        outcome
    }
}

/// Checks the source's serial output followed by the target's: `tick` lines consecutive,
/// `churn i=` lines every [`CHURN_EVERY`] iterations, and no `MISMATCH` from the guest.
fn check_continuity(joined: &str) {
    assert!(
        !joined.contains("MISMATCH"),
        "the guest found corrupted memory:\n{joined}"
    );
    let numbers = |prefix: &str| -> Vec<u64> {
        joined
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|r| r.split(' ').next())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    for pair in numbers("tick ").windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "the count broke:\n{joined}");
    }
    for pair in numbers("churn i=").windows(2) {
        assert_eq!(pair[1], pair[0] + CHURN_EVERY, "churn broke:\n{joined}");
    }
}

/// Medians over `samples` of one field.
fn med(samples: &[Outcome], field: fn(&Outcome) -> f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(field).collect();
    median(&mut v)
}

/// The transports × dirty logs of sections 1 and 2.
fn combos() -> Vec<(Transport, &'static str)> {
    Transport::ALL
        .into_iter()
        .flat_map(|t| ["ring", "bitmap"].map(|d| (t, d)))
        .collect()
}

/// RUNS migrations of each combination built by `guest`, interleaved.
fn section(
    bench: &Bench,
    runs: usize,
    guest: impl Fn(&'static str) -> Guest<'static>,
) -> Vec<Vec<Outcome>> {
    let combos = combos();
    let mut out = vec![Vec::new(); combos.len()];
    for _ in 0..runs {
        for (i, (transport, dirty_log)) in combos.iter().enumerate() {
            out[i].push(bench.migrate(&guest(dirty_log), *transport));
        }
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("migration: benchmark");
        return;
    }
    let vireo = vireo_binary().unwrap_or_else(|e| {
        eprintln!("migration bench: {e}");
        std::process::exit(1);
    });
    let started = Instant::now();
    let runs = runs(RUNS);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let elf = dir.join("guest.elf");
    vireo_testguest::write_to(&elf).expect("write guest");
    let pki = dir.join("pki");
    write_pki(&pki, &["source", "target"]);
    let bench = Bench {
        vireo,
        guest_elf: elf.to_str().expect("utf-8").to_owned(),
        dir,
        pki,
        seq: std::cell::Cell::new(0),
    };

    let t = Instant::now();
    let idle = section(&bench, runs, |dirty_log| Guest {
        memory: "1G",
        backing: "anonymous",
        dirty_log,
        cmdline: "count 1000000000 100000000",
        ready: "tick 3\n",
        local: false,
    });
    let idle_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let dirtying = section(&bench, runs, |dirty_log| Guest {
        memory: "1G",
        backing: "anonymous",
        dirty_log,
        cmdline: "churn 65536 16384 0 0 200",
        ready: "churn i=",
        local: false,
    });
    let dirtying_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let local: Vec<Outcome> = (0..runs)
        .map(|_| {
            bench.migrate(
                &Guest {
                    memory: "4G",
                    backing: "memfd",
                    dirty_log: "auto",
                    cmdline: "count 1000000000 100000000",
                    ready: "tick 3\n",
                    local: true,
                },
                Transport::Unix,
            )
        })
        .collect();
    let local_s = t.elapsed().as_secs_f64();

    println!("vireo live migration, idle 1 GiB guest (count), {runs} runs each (median)");
    println!("| transport | dirty log | total      | downtime   | pages sent | target                           |");
    println!("|-----------|-----------|------------|------------|------------|----------------------------------|");
    for ((transport, dirty_log), samples) in combos().into_iter().zip(&idle) {
        let target = if transport == Transport::Unix {
            format!("downtime ≤ {TARGET_IDLE_DOWNTIME_MS} ms, total ≤ {TARGET_IDLE_TOTAL_MS} ms")
        } else {
            String::new()
        };
        println!(
            "| {:<9} | {dirty_log:<9} | {:>7.1} ms | {:>7.2} ms | {:>10.0} | {target:<32} |",
            transport.name(),
            med(samples, |o| o.total_ms),
            med(samples, |o| o.downtime_ms),
            med(samples, |o| o.pages_sent),
        );
    }
    println!();
    println!(
        "vireo live migration, 1 GiB guest rewriting 256 MiB at 200 MiB/s (churn), downtime_ms 300, \
         {runs} runs each (median; throttle: highest of any run)"
    );
    println!("| transport | dirty log | passes | total      | downtime   | MiB sent | ring-full exits | max throttle |");
    println!("|-----------|-----------|--------|------------|------------|----------|-----------------|--------------|");
    for ((transport, dirty_log), samples) in combos().into_iter().zip(&dirtying) {
        let throttle = samples
            .iter()
            .map(|o| o.throttle_percent)
            .fold(0.0, f64::max);
        println!(
            "| {:<9} | {dirty_log:<9} | {:>6.1} | {:>7.1} ms | {:>7.2} ms | {:>8.0} | {:>15.0} | {throttle:>10.0} % |",
            transport.name(),
            med(samples, |o| o.passes),
            med(samples, |o| o.total_ms),
            med(samples, |o| o.downtime_ms),
            med(samples, |o| o.mib_sent),
            med(samples, |o| o.ring_full_exits),
        );
    }
    println!();
    println!("vireo local handover, idle 4 GiB guest (memfd, unix, local), {runs} runs (median)");
    println!("| measurement | median     | target                            |");
    println!("|-------------|------------|-----------------------------------|");
    let target = format!(
        "≤ {TARGET_LOCAL_DOWNTIME_MS} ms (Cloud Hypervisor: {CLOUD_HYPERVISOR_LOCAL_MS} ms)"
    );
    println!(
        "| downtime    | {:>7.2} ms | {target:<33} |",
        med(&local, |o| o.downtime_ms)
    );
    println!(
        "| total       | {:>7.2} ms | {:<33} |",
        med(&local, |o| o.total_ms),
        ""
    );
    println!(
        "| pages sent  | {:>10.0} | {:<33} |",
        med(&local, |o| o.pages_sent),
        ""
    );
    println!();
    println!(
        "wall time: {:.0} s (idle {idle_s:.0} s, dirtying {dirtying_s:.0} s, local {local_s:.0} s)",
        started.elapsed().as_secs_f64()
    );
}
