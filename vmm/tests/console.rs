//! Serial output never blocks a vCPU: a console reader that stops reading (a
//! unix-socket client that never reads, a pipe nobody reads) costs the guest
//! output — the oldest queued bytes, counted — but never its progress, nor
//! pause, resume or shutdown.
//!
//! The first tests drive the real UART model the way a vCPU thread does (a
//! byte per port write, under the UART lock), which is cheap enough to push
//! 10 MiB through. The last one runs the ring-3 test guest under real KVM;
//! each port write is a full VM exit there (tens of microseconds on a PVM
//! host, so 10 MiB take about ten minutes), and it prints 10 MiB — far past
//! every buffer between the guest and the stuck client — unless
//! `VIREO_TEST_SPEW_BYTES` asks for another amount (at least 64 KiB).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vireo_devices::irq::IrqLine;
use vireo_devices::legacy::Serial8250;
use vireo_devices::BusDevice;
use vireo_vmm::console::{Console, ConsoleCounters, OUTPUT_QUEUE_LIMIT, UNIX_BACKLOG_LIMIT};
use vireo_vmm::{ExitReason, SerialConfig, VmBuilder, VmConfig, VmState};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A UART wired to `console`, as the device manager wires COM1.
fn uart(console: &mut Console) -> Arc<Mutex<Serial8250>> {
    let irq = IrqLine::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    Arc::new(Mutex::new(Serial8250::new(irq, console.take_output())))
}

/// What a vCPU thread does for `out 0x3f8, al`: lock the UART, write THR.
/// Returns how long the slowest byte took.
fn transmit(serial: &Mutex<Serial8250>, bytes: &[u8]) -> Duration {
    let mut slowest = Duration::ZERO;
    for &b in bytes {
        let start = Instant::now();
        serial.lock().expect("uart lock").write(0, &[b]);
        slowest = slowest.max(start.elapsed());
    }
    slowest
}

/// `lines` numbered lines, `00000000 abcdefghijklmnopqrstuvwxyz\n` (36 bytes
/// each), so that order and gaps can be checked on the reading side.
fn numbered_lines(first: u64, lines: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines as usize * 36);
    for n in first..first + lines {
        out.extend_from_slice(format!("{n:08} abcdefghijklmnopqrstuvwxyz\n").as_bytes());
    }
    out
}

/// The numbers of the complete numbered lines in `text`, skipping a cut-off
/// first line; panics on a line that is not one of ours.
fn line_numbers(text: &[u8]) -> Vec<u64> {
    let text = String::from_utf8_lossy(text);
    let mut lines = text.split_inclusive('\n').peekable();
    let mut numbers = Vec::new();
    let mut first = true;
    while let Some(line) = lines.next() {
        let complete = line.len() == 36 && line.ends_with(" abcdefghijklmnopqrstuvwxyz\n");
        if !complete {
            assert!(
                first || (lines.peek().is_none() && !line.ends_with('\n')),
                "a line that is neither ours nor cut off at an end: {line:?}"
            );
        } else {
            numbers.push(line[..8].parse().expect("line number"));
        }
        first = false;
    }
    numbers
}

fn assert_consistent(c: &ConsoleCounters) {
    assert_eq!(
        c.written_bytes,
        c.delivered_bytes + c.dropped_bytes + c.backlog_discarded_bytes + c.queued_bytes,
        "every byte is delivered, dropped, discarded or queued: {c:?}"
    );
}

/// Reads from `stream` until `text` ends with `marker` (or fails after
/// `limit`).
fn read_until_marker(stream: &mut UnixStream, marker: &[u8], limit: Duration) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while !got.ends_with(marker) {
        assert!(
            start.elapsed() < limit,
            "{marker:?} did not arrive; got {} bytes ending {:?}",
            got.len(),
            String::from_utf8_lossy(&got[got.len().saturating_sub(80)..])
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!("the console closed the connection"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    got
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn ten_mib_to_a_unix_client_that_never_reads_never_blocks_the_uart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("serial.sock");
    let mut console = Console::open(&SerialConfig::Unix {
        path: sock.clone(),
        stdout: false,
    })
    .expect("open");
    let serial = uart(&mut console);
    console.start_input(serial.clone()).expect("start input");

    // A client that connects and never reads.
    let stuck = UnixStream::connect(&sock).expect("connect");
    wait_for("the client is accepted", Duration::from_secs(10), || {
        console.counters().clients_connected == 1
    });

    // 10 MiB of numbered lines, then a marker, from a "vCPU" thread; it must
    // finish even though nobody reads.
    let lines = (10 << 20) / 36 + 1;
    let data = numbered_lines(0, lines);
    let marker = b"spew: done\n";
    let (tx, rx) = mpsc::channel();
    let vcpu = {
        let serial = serial.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let slowest = transmit(&serial, &data).max(transmit(&serial, marker));
            let _ = tx.send((start.elapsed(), slowest, data.len()));
        })
    };
    let (took, slowest, len) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the UART writes finish although the client never reads");
    vcpu.join().expect("vcpu thread");
    eprintln!("{len} bytes in {took:?}, slowest byte {slowest:?}");
    assert!(len >= 10 << 20);
    assert!(
        slowest < Duration::from_millis(500),
        "no byte waits for the client: slowest {slowest:?}"
    );

    let c = console.counters();
    eprintln!("with the client stuck: {c:?}");
    assert_eq!(c.written_bytes, (len + marker.len()) as u64);
    assert_consistent(&c);
    assert!(
        c.dropped_bytes >= c.written_bytes - 2 * OUTPUT_QUEUE_LIMIT as u64 - (1 << 20),
        "what the client could not take is dropped and counted: {c:?}"
    );
    assert!(c.queued_bytes <= OUTPUT_QUEUE_LIMIT as u64 + 4096, "{c:?}");
    assert_eq!(
        c.backlog_discarded_bytes, 0,
        "a client was connected: {c:?}"
    );

    // A new client replaces the stuck one and gets what is still queued: the
    // newest output, in order, ending with the marker.
    let mut fresh = UnixStream::connect(&sock).expect("second client");
    let got = read_until_marker(&mut fresh, marker, Duration::from_secs(30));
    let numbers = line_numbers(&got[..got.len() - marker.len()]);
    assert!(numbers.len() > 1000, "{} lines replayed", numbers.len());
    assert_eq!(
        *numbers.last().expect("lines"),
        lines - 1,
        "the newest output"
    );
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "queued output arrives in order, without gaps"
    );
    drop(stuck);
    wait_for("the queue drains", Duration::from_secs(10), || {
        console.counters().queued_bytes == 0
    });
    let c = console.counters();
    assert_eq!(c.clients_connected, 2);
    assert_consistent(&c);
}

#[test]
fn output_without_a_client_is_kept_up_to_the_backlog_and_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("serial.sock");
    let mut console = Console::open(&SerialConfig::Unix {
        path: sock.clone(),
        stdout: false,
    })
    .expect("open");
    let serial = uart(&mut console);
    console.start_input(serial.clone()).expect("start input");

    let data = numbered_lines(0, 4000); // 144000 bytes, over the 64 KiB backlog
    transmit(&serial, &data);
    let c = console.counters();
    assert_eq!(c.written_bytes, data.len() as u64);
    assert_eq!(c.queued_bytes, UNIX_BACKLOG_LIMIT as u64, "{c:?}");
    assert_eq!(
        c.backlog_discarded_bytes,
        (data.len() - UNIX_BACKLOG_LIMIT) as u64,
        "{c:?}"
    );
    assert_eq!(c.dropped_bytes, 0, "nothing is lost for a reader: {c:?}");

    let mut client = UnixStream::connect(&sock).expect("connect");
    let got = read_until_marker(
        &mut client,
        b"00003999 abcdefghijklmnopqrstuvwxyz\n",
        Duration::from_secs(30),
    );
    assert_eq!(
        got,
        data[data.len() - UNIX_BACKLOG_LIMIT..],
        "the newest 64 KiB"
    );
    // Live output follows the replay.
    transmit(&serial, b"live\n");
    let got = read_until_marker(&mut client, b"live\n", Duration::from_secs(30));
    assert_eq!(got, b"live\n");
    wait_for("the queue drains", Duration::from_secs(10), || {
        console.counters().queued_bytes == 0
    });
    let c = console.counters();
    assert_eq!(c.delivered_bytes, UNIX_BACKLOG_LIMIT as u64 + 5, "{c:?}");
    assert_consistent(&c);
}

/// Creates a FIFO at `path` and opens its read end without blocking; the
/// returned file is a reader that never reads.
fn fifo_with_idle_reader(path: &Path) -> std::fs::File {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open the FIFO's read end")
}

#[test]
fn a_pipe_nobody_reads_never_blocks_the_uart() {
    // The same situation as `vireo run | sleep`: the sink is a pipe whose
    // reader never reads. A FIFO stands in for stdout.
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("stdout.fifo");
    let _reader = fifo_with_idle_reader(&fifo);
    let mut console = Console::open(&SerialConfig::File { path: fifo }).expect("open");
    let serial = uart(&mut console);

    let data = numbered_lines(0, (2 << 20) / 36);
    let (tx, rx) = mpsc::channel();
    let vcpu = {
        let serial = serial.clone();
        std::thread::spawn(move || {
            let _ = tx.send(transmit(&serial, &data));
        })
    };
    let slowest = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the UART writes finish although nobody reads the pipe");
    vcpu.join().expect("vcpu thread");
    assert!(
        slowest < Duration::from_millis(500),
        "slowest byte {slowest:?}"
    );

    let c = console.counters();
    eprintln!("{c:?}");
    assert_consistent(&c);
    assert!(
        c.delivered_bytes <= 1 << 20,
        "no more than the pipe holds was delivered: {c:?}"
    );
    assert!(
        c.dropped_bytes > 1 << 20,
        "the rest was dropped and counted: {c:?}"
    );

    let start = Instant::now();
    assert!(
        !console.handle().flush(Duration::from_secs(5)),
        "a stuck pipe cannot be flushed"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "flush gives up on a sink that takes nothing: {:?}",
        start.elapsed()
    );
}

#[test]
fn file_output_is_complete_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("serial.log");
    let mut console = Console::open(&SerialConfig::File { path: path.clone() }).expect("open");
    let serial = uart(&mut console);
    let data = numbered_lines(0, 20_000);
    // At no more than 16 KiB ahead of the writer: a guest's pace, not a burst
    // the size of the queue.
    for chunk in data.chunks(16 << 10) {
        transmit(&serial, chunk);
        wait_for("the writer keeps up", Duration::from_secs(30), || {
            console.counters().queued_bytes < 16 << 10
        });
    }
    assert!(console.handle().flush(Duration::from_secs(30)), "flushed");
    assert_eq!(std::fs::read(&path).expect("read log"), data);
    let c = console.counters();
    assert_eq!(c.delivered_bytes, data.len() as u64, "{c:?}");
    assert_eq!(c.dropped_bytes, 0, "{c:?}");
    assert_consistent(&c);
}

/// Bytes for the KVM test: `VIREO_TEST_SPEW_BYTES` or 10 MiB.
fn spew_bytes() -> u64 {
    let bytes = match std::env::var("VIREO_TEST_SPEW_BYTES") {
        Ok(v) => v.parse().expect("VIREO_TEST_SPEW_BYTES is a byte count"),
        Err(_) => 10 << 20,
    };
    assert!(bytes >= 64 << 10, "spew at least 64 KiB, got {bytes}");
    bytes
}

/// Runs `f` on another thread and fails if it does not return within
/// `limit` (a hung call fails the test instead of hanging it).
fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let value = f();
        let _ = tx.send((value, start.elapsed()));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"))
}

#[test]
fn a_unix_client_that_never_reads_stalls_neither_the_guest_nor_pause() {
    let bytes = spew_bytes();
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("guest.elf");
    vireo_testguest::write_to(&kernel).expect("write guest");
    let sock = dir.path().join("serial.sock");
    let mut config = VmConfig::new(&kernel);
    config.memory_mib = 64;
    config.payload.cmdline = format!("spew {bytes}");
    config.serial = SerialConfig::Unix {
        path: sock.clone(),
        stdout: false,
    };
    let vm = Arc::new(VmBuilder::new(config).build().expect("build VM"));

    // The client connects before the guest starts and never reads.
    let stuck = UnixStream::connect(&sock).expect("connect");
    let started = Instant::now();
    vm.start().expect("start");

    // Wait until the guest's output reaches the client (peeked, not read),
    // then let it run on: a blocking console would have stalled the vCPU
    // within the first few hundred bytes.
    let mut peek = [0u8; 1];
    wait_for("output reaches the client", Duration::from_secs(30), || {
        peek_waiting(&stuck, &mut peek) > 0
    });
    std::thread::sleep(Duration::from_secs(2));

    for round in 0..2 {
        let v = vm.clone();
        let ((), took) = within("Vm::pause", Duration::from_secs(10), move || {
            v.pause().expect("pause")
        });
        eprintln!("pause {round} took {took:?}");
        assert!(took < Duration::from_secs(2), "pause took {took:?}");
        assert_eq!(vm.state(), VmState::Paused);
        let at_pause = vm.console_counters().written_bytes;
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            vm.console_counters().written_bytes,
            at_pause,
            "the guest prints nothing while paused"
        );
        let v = vm.clone();
        let ((), took) = within("Vm::resume", Duration::from_secs(10), move || {
            v.resume().expect("resume")
        });
        assert!(took < Duration::from_secs(2), "resume took {took:?}");
        let v = vm.clone();
        wait_for(
            "the guest prints again",
            Duration::from_secs(30),
            move || v.console_counters().written_bytes > at_pause,
        );
    }

    // The guest itself reports success on the debug exit port once it has
    // written every byte.
    let limit = Duration::from_secs(60) + Duration::from_micros(200) * bytes as u32;
    let v = vm.clone();
    let (reason, _) = within("the guest finishing", limit, move || v.wait());
    eprintln!("{bytes} bytes printed in {:?}", started.elapsed());
    assert_eq!(reason, ExitReason::DebugExit { status: 0 });

    let marker = format!("spew: done {bytes}\n");
    let c = vm.console_counters();
    eprintln!("{c:?}");
    assert_eq!(c.written_bytes, bytes + marker.len() as u64, "{c:?}");
    assert_consistent(&c);
    if bytes >= 1 << 20 {
        assert!(c.dropped_bytes > 0, "the stuck client lost output: {c:?}");
    }

    // A new client gets the newest output, which ends with the guest's own
    // final line.
    let mut fresh = UnixStream::connect(&sock).expect("second client");
    let got = read_until_marker(&mut fresh, marker.as_bytes(), Duration::from_secs(30));
    let tail = &got[got.len() - marker.len() - 64..got.len() - marker.len()];
    let expected: Vec<u8> = (bytes - 64..bytes).map(spew_byte).collect();
    assert_eq!(
        String::from_utf8_lossy(tail),
        String::from_utf8_lossy(&expected),
        "the guest's pattern, to its last byte, precedes the marker"
    );
    drop(stuck);
}

/// How many bytes are waiting in `stream`, without consuming them
/// (`recv(MSG_PEEK | MSG_DONTWAIT)`): the client still never reads.
fn peek_waiting(stream: &UnixStream, buf: &mut [u8]) -> usize {
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is valid for `buf.len()` bytes and the descriptor is open
    // (borrowed from `stream`) for the call; recv(2) does not keep the pointer.
    let rc = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "peek: {e}");
        return 0;
    }
    rc as usize
}

/// Byte `i` of the guest's `spew` pattern.
fn spew_byte(i: u64) -> u8 {
    let column = i % 64;
    if column == 63 {
        b'\n'
    } else {
        b'a' + (column % 26) as u8
    }
}
