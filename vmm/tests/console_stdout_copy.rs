//! A unix-socket console with a copy on stdout (`SerialConfig::Unix { stdout: true }`): the
//! guest's output reaches both the socket's client and the copy, and each is an independent
//! sink, so a pipe nobody reads never keeps the socket's client from getting everything, nor
//! the other way round.
//!
//! The copy goes to a pipe the test holds (through [`Console::open_with`] and
//! [`VmBuilder::serial_stdout_copy`]) instead of the test process's stdout. The first two
//! tests drive the real UART model the way a vCPU thread does (cheap enough for 10 MiB); the
//! last two run the ring-3 test guest under real KVM.

use std::fs::File;
use std::io::{PipeReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vireo_devices::irq::IrqLine;
use vireo_devices::legacy::Serial8250;
use vireo_devices::BusDevice;
use vireo_vmm::console::{Console, ConsoleCounters};
use vireo_vmm::{ExitReason, SerialConfig, VmBuilder, VmConfig};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A UART wired to `console`, as the device manager wires COM1.
fn uart(console: &mut Console) -> Arc<Mutex<Serial8250>> {
    let irq = IrqLine::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    Arc::new(Mutex::new(Serial8250::new(irq, console.take_output())))
}

/// What a vCPU thread does for `out 0x3f8, al`, byte by byte.
fn transmit(serial: &Mutex<Serial8250>, bytes: &[u8]) {
    for &b in bytes {
        serial.lock().expect("uart lock").write(0, &[b]);
    }
}

/// `lines` numbered lines of 36 bytes, so order and gaps show on the reading side.
fn numbered_lines(lines: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines as usize * 36);
    for n in 0..lines {
        out.extend_from_slice(format!("{n:08} abcdefghijklmnopqrstuvwxyz\n").as_bytes());
    }
    out
}

/// A pipe: the end the test reads (or never reads) and the copy's end as a `File`.
fn pipe() -> (PipeReader, File) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    (reader, File::from(OwnedFd::from(writer)))
}

/// A unix-socket console at a fresh path with its copy going to `copy`.
fn open_with_copy(dir: &tempfile::TempDir, copy: File) -> (Console, std::path::PathBuf) {
    let sock = dir.path().join("serial.sock");
    let config = SerialConfig::Unix {
        path: sock.clone(),
        stdout: true,
    };
    let console = Console::open_with(&config, false, Some(copy)).expect("open");
    (console, sock)
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads `stream` on a thread until `marker` ends what arrived (or `limit` passes): the
/// bytes, through the returned channel.
fn collect_until<R: Read + Send + 'static>(
    mut stream: R,
    marker: Vec<u8>,
    limit: Duration,
) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while !got.ends_with(&marker) && start.elapsed() < limit {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(got);
    });
    rx
}

fn assert_consistent(c: &ConsoleCounters) {
    assert_eq!(
        c.written_bytes,
        c.delivered_bytes + c.dropped_bytes + c.backlog_discarded_bytes + c.queued_bytes,
        "{c:?}"
    );
}

#[test]
fn ten_mib_reach_the_socket_client_whole_while_nobody_reads_the_stdout_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (unread, copy) = pipe();
    let (mut console, sock) = open_with_copy(&dir, copy);
    let serial = uart(&mut console);
    console.start_input(serial.clone()).expect("start input");

    let client = UnixStream::connect(&sock).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    wait_for("the client is accepted", Duration::from_secs(10), || {
        console.counters().clients_connected == 1
    });
    let data = numbered_lines((10 << 20) / 36 + 1);
    let marker = b"all sent\n".to_vec();
    let mut expected = data.clone();
    expected.extend_from_slice(&marker);
    let received = collect_until(client, marker.clone(), Duration::from_secs(300));

    // At most 64 KiB ahead of the socket's writer: a guest's pace. The counters are the
    // socket sink's; if the stuck copy held the socket's writer up, this would never drain.
    for chunk in data.chunks(16 << 10) {
        transmit(&serial, chunk);
        wait_for(
            "the socket's writer keeps up although the copy is stuck",
            Duration::from_secs(60),
            || console.counters().queued_bytes < 64 << 10,
        );
    }
    transmit(&serial, &marker);
    let got = received
        .recv_timeout(Duration::from_secs(300))
        .expect("the client's reader ends");
    assert!(
        got == expected,
        "the client got {} of {} bytes, or not in order",
        got.len(),
        expected.len()
    );
    let c = console.counters();
    assert_eq!(c.dropped_bytes, 0, "the socket lost nothing: {c:?}");
    assert_eq!(c.written_bytes, expected.len() as u64, "{c:?}");
    assert_consistent(&c);

    // The copy took what the pipe holds (read without making room for more): the oldest
    // output first.
    let flushed = console.handle().flush(Duration::from_secs(5));
    assert!(!flushed, "a pipe nobody reads cannot be flushed");
    let waiting = bytes_in_pipe(&unread);
    assert!(
        waiting > 0 && waiting < expected.len(),
        "{waiting} bytes in the pipe"
    );
    let mut piped = vec![0u8; waiting];
    let mut unread = unread;
    unread.read_exact(&mut piped).expect("read the pipe");
    assert!(
        piped == expected[..waiting],
        "the copy starts with the oldest output"
    );
}

/// How many bytes wait in the pipe behind `reader` (`FIONREAD`), without reading them.
fn bytes_in_pipe(reader: &PipeReader) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD stores one int through the pointer, which is valid for the call; the
    // descriptor is open (borrowed from `reader`).
    let rc = unsafe { libc::ioctl(reader.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    usize::try_from(n).expect("a byte count")
}

#[test]
fn a_socket_client_that_never_reads_does_not_stop_the_stdout_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut reader, copy) = pipe();
    let (mut console, sock) = open_with_copy(&dir, copy);
    let serial = uart(&mut console);
    console.start_input(serial.clone()).expect("start input");

    let stuck = UnixStream::connect(&sock).expect("connect");
    wait_for("the client is accepted", Duration::from_secs(10), || {
        console.counters().clients_connected == 1
    });
    // 2 MiB, far past the socket's buffers and queue; each chunk must come out of the pipe
    // before the next goes in, so a copy held up by the stuck client would hang here.
    let data = numbered_lines((2 << 20) / 36 + 1);
    let mut buf = vec![0u8; 64 * 1024];
    for chunk in data.chunks(16 << 10) {
        transmit(&serial, chunk);
        let mut got = Vec::with_capacity(chunk.len());
        while got.len() < chunk.len() {
            let n = reader.read(&mut buf).expect("read the copy");
            assert!(n > 0, "the copy's pipe closed");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == chunk, "the copy is whole and in order");
    }
    let c = console.counters();
    assert!(
        c.dropped_bytes > 0,
        "the stuck client (the counted sink) lost output: {c:?}"
    );
    assert_consistent(&c);
    drop(stuck);
}

/// Builds the test guest with `cmdline`, its console a unix socket at a fresh path with the
/// copy going to `copy`.
fn guest_vm(
    dir: &tempfile::TempDir,
    cmdline: &str,
    copy: File,
) -> (vireo_vmm::Vm, std::path::PathBuf) {
    let kernel = dir.path().join("guest.elf");
    vireo_testguest::write_to(&kernel).expect("write guest");
    let sock = dir.path().join("serial.sock");
    let mut config = VmConfig::new(&kernel);
    config.memory_mib = 64;
    config.payload.cmdline = cmdline.to_owned();
    config.serial = SerialConfig::Unix {
        path: sock.clone(),
        stdout: true,
    };
    let vm = VmBuilder::new(config)
        .serial_stdout_copy(copy)
        .build()
        .expect("build VM");
    (vm, sock)
}

#[test]
fn the_guests_output_reaches_both_the_socket_client_and_the_stdout_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (reader, copy) = pipe();
    let (vm, sock) = guest_vm(&dir, "count 200 1000", copy);
    let client = UnixStream::connect(&sock).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let marker = b"count: done\n".to_vec();
    let from_socket = collect_until(client, marker.clone(), Duration::from_secs(60));
    let from_copy = collect_until(reader, marker.clone(), Duration::from_secs(60));
    vm.start().expect("start");
    assert_eq!(vm.wait(), ExitReason::DebugExit { status: 0 });

    let mut expected = String::new();
    for i in 0..200 {
        expected.push_str(&format!("tick {i}\n"));
    }
    expected.push_str("count: done\n");
    let limit = Duration::from_secs(60);
    let socket = from_socket.recv_timeout(limit).expect("socket reader");
    let copy = from_copy.recv_timeout(limit).expect("copy reader");
    assert_eq!(
        String::from_utf8_lossy(&socket),
        expected,
        "the socket's client"
    );
    assert_eq!(String::from_utf8_lossy(&copy), expected, "the stdout copy");
    let c = vm.console_counters();
    assert_eq!(c.delivered_bytes, expected.len() as u64, "{c:?}");
}

#[test]
fn a_stdout_copy_nobody_reads_stalls_neither_the_guest_nor_the_socket_client() {
    // Each port write is a VM exit: 1 MiB (or VIREO_TEST_SPEW_BYTES) is past every buffer of
    // the pipe and the copy's queue.
    let bytes: u64 = match std::env::var("VIREO_TEST_SPEW_BYTES") {
        Ok(v) => v.parse().expect("VIREO_TEST_SPEW_BYTES is a byte count"),
        Err(_) => 1 << 20,
    };
    assert!(bytes >= 512 << 10, "spew at least 512 KiB, got {bytes}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (unread, copy) = pipe();
    let (vm, sock) = guest_vm(&dir, &format!("spew {bytes}"), copy);
    let client = UnixStream::connect(&sock).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let marker = format!("spew: done {bytes}\n").into_bytes();
    let limit = Duration::from_secs(60) + Duration::from_micros(200) * bytes as u32;
    let from_socket = collect_until(client, marker.clone(), limit);
    vm.start().expect("start");
    let got = from_socket
        .recv_timeout(limit)
        .expect("the socket's reader ends");
    assert_eq!(vm.wait(), ExitReason::DebugExit { status: 0 });

    let mut expected: Vec<u8> = (0..bytes)
        .map(|i| {
            let column = i % 64;
            if column == 63 {
                b'\n'
            } else {
                b'a' + (column % 26) as u8
            }
        })
        .collect();
    expected.extend_from_slice(&marker);
    assert!(
        got == expected,
        "the client got {} of {} bytes, or not the guest's pattern",
        got.len(),
        expected.len()
    );
    let c = vm.console_counters();
    assert_eq!(c.dropped_bytes, 0, "the socket sink lost nothing: {c:?}");
    assert_consistent(&c);
    drop(unread);
}
