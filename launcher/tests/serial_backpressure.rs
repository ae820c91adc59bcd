//! `vireo run` with a console reader that never reads: the guest keeps
//! running and SIGTERM still ends `vireo` within the shutdown timeout, whether
//! the console is a unix socket whose client is stuck or stdout piped to a
//! process that never reads (`vireo run | sleep`).

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// `vireo`'s stderr, collected by a thread as it is written.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<String>>);

impl Log {
    fn follow(child: &mut std::process::Child) -> Self {
        let log = Log::default();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let mut text = sink.0.lock().expect("log lock");
                text.push_str(&line);
                text.push('\n');
            }
        });
        log
    }

    fn text(&self) -> String {
        self.0.lock().expect("log lock").clone()
    }
}

/// How many bytes wait in `stream`, without consuming them: the client
/// still never reads.
fn peek_waiting(stream: &UnixStream) -> usize {
    let mut buf = [0u8; 1];
    // SAFETY: `buf` is valid for its length and the descriptor is open
    // (borrowed from `stream`) for the call; recv(2) does not keep the pointer.
    let rc = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    rc.max(0) as usize
}

const SHUTDOWN_TIMEOUT_S: u64 = 5;

#[test]
fn sigterm_ends_vireo_promptly_while_a_serial_client_never_reads() {
    let fx = Fixture::create();
    let sock = fx.path("serial.sock");
    let timeout = SHUTDOWN_TIMEOUT_S.to_string();
    let serial = format!("unix={}", sock.display());
    let mut child = spawn_guest(
        &fx,
        &[
            "--memory",
            "64M",
            "--cmdline",
            "spew 1000000000",
            "--shutdown-timeout",
            &timeout,
            "--serial",
            &serial,
        ],
    );
    let log = Log::follow(&mut child);
    let mut running = Running::new(child);
    wait_for_path(&sock, Duration::from_secs(20));
    let stuck = UnixStream::connect(&sock).expect("connect");

    // The guest's output reaches the client, which never reads it; a
    // blocking console would stall the vCPU within the next few hundred
    // bytes, long before these two seconds are up.
    let start = Instant::now();
    while peek_waiting(&stuck) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no output reached the client\n{}",
            log.text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        running.child().try_wait().expect("try_wait").is_none(),
        "vireo is still running the guest\n{}",
        log.text()
    );

    send_signal(&mut running, libc::SIGTERM);
    let signalled = Instant::now();
    let limit = Duration::from_secs(SHUTDOWN_TIMEOUT_S + 3);
    let out = running.wait_within(limit);
    let took = signalled.elapsed();
    let err = log.text();
    eprintln!("vireo exited {took:?} after SIGTERM\n{err}");
    // The test guest has no ACPI power button, so SIGTERM stops it at once;
    // a stopped VM exits with status 0.
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("SIGTERM: stopping the VM now"), "{err}");
    assert!(err.contains("stopped by the VMM"), "{err}");
    assert!(!sock.exists(), "the socket is removed when vireo exits");
    drop(stuck);
}

#[test]
fn stdout_nobody_reads_does_not_stall_the_guest() {
    // 512 KiB: more than the pipe (64 KiB) and the console queue (256 KiB)
    // hold together, so output has to be dropped for the guest to finish.
    let bytes: u64 = 512 << 10;
    let fx = Fixture::create();
    // Nobody reads stdout's pipe until vireo has exited.
    let spew = format!("spew {bytes}");
    let mut child = spawn_guest(
        &fx,
        &["--memory", "64M", "--serial", "stdio", "--cmdline", &spew],
    );
    let log = Log::follow(&mut child);
    let running = Running::new(child);
    let start = Instant::now();
    let out =
        running.wait_within(Duration::from_secs(60) + Duration::from_micros(300) * bytes as u32);
    let err = log.text();
    eprintln!("{bytes} bytes printed in {:?}\n{err}", start.elapsed());
    // The guest itself reports that it wrote every byte.
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("guest reported status 0 on the debug exit port"),
        "{err}"
    );
    assert!(
        err.contains("serial output dropped: the console reader is not keeping up"),
        "what the pipe could not take is dropped, counted and logged:\n{err}"
    );
    // What the pipe did take is the start of the guest's output, in order.
    let text = stdout(&out);
    assert!(text.len() >= 4096, "{} bytes on stdout", text.len());
    assert!(
        text.starts_with("abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk\nabc"),
        "{}",
        &text[..text.len().min(200)]
    );
}
