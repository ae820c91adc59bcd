//! Connects COM1 to the outside: stdio, a file, or a unix socket.
//!
//! # Output never blocks a vCPU
//!
//! The UART hands every transmitted byte to the console on the vCPU thread
//! that executed the guest's write, with the UART lock held. For stdio, a file
//! and a unix socket the console only appends the byte to a bounded in-memory
//! queue (order kept) and returns; no I/O happens on the vCPU thread. A
//! dedicated writer thread (`vireo-serial-out`) drains the queue into the
//! sink. It waits for the sink with `poll(2)` and then writes at most 4 KiB
//! (`PIPE_BUF`, so a write to a pipe that polled writable cannot block) or
//! sends without blocking (`MSG_DONTWAIT`) to a socket client. It never holds
//! the queue lock while it writes, and while it waits for a sink that takes
//! nothing it looks again every 100 ms (for a new client, the VM's end).
//!
//! When the sink does not keep up — a console client that stopped reading, a
//! stdout pipe nobody reads, a paused terminal — the queue grows to
//! [`OUTPUT_QUEUE_LIMIT`] bytes (plus the at most 4 KiB the writer holds),
//! and then the **oldest** queued bytes are dropped to make room for the
//! newest. Dropping the oldest keeps what a reader needs when it catches up or
//! reconnects: the latest output (a panic, a prompt, the answer to what it
//! typed), as the unix-socket replay backlog always did. Every dropped byte is
//! counted ([`ConsoleCounters::dropped_bytes`]) and the writer thread logs a
//! warning with the count, at most once every 5 seconds. Nothing is ever
//! injected into the guest's byte stream.
//!
//! With a unix socket, one client is connected at a time (a new connection
//! replaces the old one, which is shut down). Output produced while no client
//! is connected is kept, up to [`UNIX_BACKLOG_LIMIT`] bytes (the newest), and
//! replayed to the next client; what ages out of that backlog is counted
//! separately ([`ConsoleCounters::backlog_discarded_bytes`]) and not warned
//! about. A client that cannot keep up is not disconnected: it loses the
//! oldest of its queued output (counted, warned) and gets the rest once it
//! reads again. Bytes queued for a client that goes away, or that is
//! replaced, stay queued (within the backlog limit once no client is
//! connected) for the next client.
//!
//! When the VM ends, [`ConsoleHandle::flush`] gives the writer a bounded time
//! ([`FLUSH_TIMEOUT`]) to deliver what is queued, so the last lines reach a
//! healthy sink before the process exits, but a stuck sink delays the exit by
//! at most that much.
//!
//! # A unix socket with a copy on stdout
//!
//! `SerialConfig::Unix { stdout: true, .. }` also copies every byte the guest
//! transmits to the VMM's stdout (so a pod's log shows the guest's output
//! while the console stays reachable through the socket). The copy is a
//! second, independent sink: its own bounded queue ([`OUTPUT_QUEUE_LIMIT`],
//! oldest dropped first) and its own writer thread (`vireo-serial-copy`),
//! written the same way as stdio. The UART's writer appends each byte to both
//! queues, taking one queue lock at a time, so a stdout pipe nobody reads
//! never delays the socket's client, a client that never reads never delays
//! stdout, and neither ever blocks a vCPU. [`ConsoleCounters`] (and so the VM
//! counters API) are those of the socket sink; what the copy lost is only
//! logged (the same rate-limited warning). [`ConsoleHandle::flush`] flushes
//! both within one bounded time.
//!
//! [`Console::from_writer`] is the exception: its writer (an embedder's or a
//! test's) is called synchronously on the vCPU thread and must not block.
//!
//! Input is read by a console thread and pushed into the UART's 64-byte FIFO
//! as space frees up; bytes are held back, never dropped, while the guest has
//! not drained the FIFO.
//!
//! # More than one console in a process
//!
//! A VM rebooted in place (`vireo launch`) gets a new console at the same
//! paths. Dropping a console ends its threads: the unix socket's accept
//! thread is woken (`shutdown(2)` of the listening socket) and ends, and when
//! the writer thread ends it shuts the connected client down, so that client
//! sees the end of the stream (and reconnects to the next boot's socket) and
//! its input thread ends. Stdin is read by one thread for the whole process,
//! which feeds the UART of the newest stdio console (input typed while none
//! is alive is discarded), so an old VM's UART never takes the new one's
//! input.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{debug, info, warn};
use vireo_devices::legacy::Serial8250;

use crate::config::SerialConfig;

/// Output kept for a unix-socket console while no client is connected (the
/// newest bytes), replayed to the next client.
pub const UNIX_BACKLOG_LIMIT: usize = 64 * 1024;

/// Output queued for a sink that is not keeping up (stdout, a file, a
/// connected unix-socket client) before the oldest bytes are dropped.
pub const OUTPUT_QUEUE_LIMIT: usize = 256 * 1024;

/// How long [`Vm::wait`](crate::Vm::wait) lets the console deliver queued
/// output at VM end before giving up on a sink that does not take it.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest single write to the sink: `PIPE_BUF`, so that a write to a pipe
/// that `poll(2)` reported writable never blocks.
const WRITE_CHUNK: usize = 4096;

/// Longest the writer thread waits for the sink before it looks again at the
/// queue (a new client, the console closing, drops to report).
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long the writer thread lets output gather after it is woken, so that
/// the UART's single bytes are written in batches (and vCPUs wake it at most
/// about a thousand times a second).
const COALESCE: Duration = Duration::from_millis(1);

/// Longest the writer thread sleeps with nothing to write.
const IDLE_INTERVAL: Duration = Duration::from_secs(1);

/// At most one dropped-output warning per interval.
const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// A flush gives up once the sink has taken nothing for this long.
const FLUSH_STALL: Duration = Duration::from_millis(250);

/// How long the writer keeps draining after the console is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why the console could not be opened.
#[derive(Debug, Error)]
pub enum ConsoleError {
    /// The output file could not be opened.
    #[error("cannot open serial output file {path}: {source}")]
    File {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The unix socket could not be bound.
    #[error("cannot listen on serial socket {path}: {source}")]
    Socket {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Standard output could not be duplicated for the writer thread.
    #[error("cannot use stdout for the serial console: {0}")]
    Stdout(#[source] io::Error),
    /// A console thread could not be started.
    #[error("cannot start the console thread: {0}")]
    Thread(#[source] io::Error),
}

/// What happened to the guest's serial output, in bytes since the console was
/// opened. For monitoring (e.g. a VM counters API); a snapshot, taken
/// atomically, so that `written_bytes == delivered_bytes + dropped_bytes +
/// backlog_discarded_bytes + queued_bytes` always holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleCounters {
    /// Bytes the guest transmitted through the UART.
    pub written_bytes: u64,
    /// Bytes handed to the sink: written to stdout or the file, or sent to
    /// a unix-socket client.
    pub delivered_bytes: u64,
    /// Bytes lost because the sink did not keep up (the oldest queued bytes,
    /// dropped when the queue was full) or failed (a write error on stdout or
    /// the file). Each increase is logged as a warning (rate-limited).
    pub dropped_bytes: u64,
    /// Unix socket only: bytes that aged out of the replay backlog while no
    /// client was connected (by design; not warned about).
    pub backlog_discarded_bytes: u64,
    /// Bytes waiting for the sink right now (including the replay backlog).
    pub queued_bytes: u64,
    /// Unix socket only: clients that have connected.
    pub clients_connected: u64,
}

impl ConsoleCounters {
    /// The counters as (name, value) pairs, in the shape of
    /// [`Vm::device_counters`](crate::Vm::device_counters).
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("written_bytes", self.written_bytes),
            ("delivered_bytes", self.delivered_bytes),
            ("dropped_bytes", self.dropped_bytes),
            ("backlog_discarded_bytes", self.backlog_discarded_bytes),
            ("queued_bytes", self.queued_bytes),
            ("clients_connected", self.clients_connected),
        ]
    }
}

/// Where serial input comes from, started once the UART exists.
#[derive(Debug)]
enum InputSource {
    None,
    Stdin,
    Unix(UnixListener),
}

/// An opened console: the UART's output writer plus its input source.
///
/// Dropping it removes the unix socket's path and lets the writer threads
/// finish (they keep delivering queued output for at most one more second).
pub struct Console {
    output: Option<Box<dyn Write + Send>>,
    input: InputSource,
    /// The unix socket's path and the (device, inode) it had once bound.
    socket_path: Option<(PathBuf, Option<(u64, u64)>)>,
    shared: Arc<Shared>,
    /// The second sink of a unix socket with a stdout copy.
    copy: Option<Arc<Shared>>,
    /// A duplicate of the unix socket's listening descriptor, shut down on drop to end the
    /// accept thread.
    accept_waker: Option<UnixListener>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("input", &self.input)
            .field("socket_path", &self.socket_path)
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl Console {
    /// Opens the console `config` describes. For stdio, a file and a unix
    /// socket it starts the writer thread, so that the UART's output never
    /// blocks a vCPU (see the module docs).
    pub fn open(config: &SerialConfig) -> Result<Self, ConsoleError> {
        Self::open_with(config, false, None)
    }

    /// [`Console::open`] for a VM that continues elsewhere begun (restored or received by
    /// migration): a file console is appended to, not truncated, so a guest moved between
    /// processes on one host keeps one log.
    pub fn open_continuing(config: &SerialConfig) -> Result<Self, ConsoleError> {
        Self::open_with(config, true, None)
    }

    /// [`Console::open`] (or [`Console::open_continuing`] with `append`), where the copy of a
    /// unix socket's output that `stdout: true` asks for goes to `stdout_copy` instead of a
    /// duplicate of fd 1 (for embedders and tests; ignored for every other kind of console and
    /// when `stdout` is false). The copy is written as stdout would be: polled, at most 4 KiB
    /// at a time, from its own thread.
    pub fn open_with(
        config: &SerialConfig,
        append: bool,
        stdout_copy: Option<File>,
    ) -> Result<Self, ConsoleError> {
        let mut copy_sink = None;
        let mut accept_waker = None;
        let (sink, input, socket_path) = match config {
            SerialConfig::Stdio => {
                let fd = io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(ConsoleError::Stdout)?;
                (Some(Sink::Fd(File::from(fd))), InputSource::Stdin, None)
            }
            SerialConfig::Off => (None, InputSource::None, None),
            SerialConfig::File { path } => {
                let file = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(append)
                    .truncate(!append)
                    .open(path)
                    .map_err(|source| ConsoleError::File {
                        path: path.clone(),
                        source,
                    })?;
                (Some(Sink::Fd(file)), InputSource::None, None)
            }
            SerialConfig::Unix { path, stdout } => {
                if *stdout {
                    let file = match stdout_copy {
                        Some(file) => file,
                        None => File::from(
                            io::stdout()
                                .as_fd()
                                .try_clone_to_owned()
                                .map_err(ConsoleError::Stdout)?,
                        ),
                    };
                    copy_sink = Some(Sink::Fd(file));
                }
                let listener = bind_socket(path)?;
                accept_waker =
                    Some(
                        listener
                            .try_clone()
                            .map_err(|source| ConsoleError::Socket {
                                path: path.clone(),
                                source,
                            })?,
                    );
                (
                    Some(Sink::Unix),
                    InputSource::Unix(listener),
                    Some((path.clone(), file_identity(path))),
                )
            }
        };
        let Some(sink) = sink else {
            return Ok(Self::from_writer(Box::new(io::sink())));
        };
        let shared = Arc::new(Shared::new(matches!(sink, Sink::Unix)));
        let copy = match copy_sink {
            Some(copy_sink) => {
                let copy = Arc::new(Shared::new(false));
                spawn_writer("vireo-serial-copy", &copy, copy_sink)?;
                Some(copy)
            }
            None => None,
        };
        let console = Self {
            output: Some(Box::new(QueueWriter {
                main: shared.clone(),
                copy: copy.clone(),
            })),
            input,
            socket_path,
            shared,
            copy,
            accept_waker,
        };
        // From here on, dropping `console` on an error closes the copy's writer thread too.
        spawn_writer("vireo-serial-out", &console.shared, sink)?;
        Ok(console)
    }

    /// A console whose output goes to `writer` and that has no input (for
    /// embedders and tests). `writer` is called synchronously on the vCPU
    /// thread, with the UART lock held, so it must not block (an in-memory
    /// buffer, for instance); output is counted but not queued.
    pub fn from_writer(writer: Box<dyn Write + Send>) -> Self {
        let shared = Arc::new(Shared::new(false));
        Self {
            output: Some(Box::new(DirectWriter {
                inner: writer,
                shared: shared.clone(),
            })),
            input: InputSource::None,
            socket_path: None,
            shared,
            copy: None,
            accept_waker: None,
        }
    }

    /// Takes the writer the UART transmits into. It only queues (or, for
    /// [`Console::from_writer`], passes on) the bytes; a second call gets a
    /// writer that discards them.
    pub fn take_output(&mut self) -> Box<dyn Write + Send> {
        self.output.take().unwrap_or_else(|| Box::new(io::sink()))
    }

    /// A snapshot of the output counters.
    pub fn counters(&self) -> ConsoleCounters {
        self.handle().counters()
    }

    /// A cloneable handle to this console's output (counters and flush) for
    /// other threads, usable without access to the `Console`.
    pub fn handle(&self) -> ConsoleHandle {
        ConsoleHandle {
            main: self.shared.clone(),
            copy: self.copy.clone(),
        }
    }

    /// Starts feeding input into `serial` (and, for a unix socket, accepting
    /// clients).
    pub fn start_input(&mut self, serial: Arc<Mutex<Serial8250>>) -> Result<(), ConsoleError> {
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map(|_| ())
                .map_err(ConsoleError::Thread)
        };
        match std::mem::replace(&mut self.input, InputSource::None) {
            InputSource::None => Ok(()),
            InputSource::Stdin => start_stdin(&serial),
            InputSource::Unix(listener) => {
                let shared = self.shared.clone();
                spawn(
                    "vireo-console",
                    Box::new(move || accept_clients(listener, &shared, &serial)),
                )
            }
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let end = Instant::now() + CLOSE_GRACE;
        for shared in std::iter::once(&self.shared).chain(self.copy.as_ref()) {
            shared.lock().closing = Some(end);
            shared.wake.notify_all();
        }
        if let Some(listener) = &self.accept_waker {
            // SAFETY: shutdown(2) on a descriptor this console owns (open until the end of
            // this call); it only wakes the accept thread's accept(2), which then sees
            // `closing` and ends.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        // Only the socket this console bound: a console opened since at the same path (the
        // next boot of a VM that rebooted in place) keeps its own.
        if let Some((path, identity)) = &self.socket_path {
            if identity.is_none() || file_identity(path) == *identity {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// A cheap, cloneable view of a console's output: its counters, and a
/// bounded flush. Its methods never wait for the console's sink beyond what
/// they say.
#[derive(Clone)]
pub struct ConsoleHandle {
    main: Arc<Shared>,
    /// The stdout copy of a unix socket console, flushed with the main sink.
    copy: Option<Arc<Shared>>,
}

impl std::fmt::Debug for ConsoleHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConsoleHandle")
            .field(&self.counters())
            .finish()
    }
}

impl ConsoleHandle {
    /// A snapshot of the output counters (taken under a lock that is only
    /// ever held for queue bookkeeping, never across I/O). For a unix socket
    /// with a stdout copy, the socket sink's: the copy is not counted.
    pub fn counters(&self) -> ConsoleCounters {
        self.main.lock().snapshot()
    }

    /// Waits until everything queued has been handed to the sink (and to
    /// the stdout copy, if there is one), for at most `timeout` in all,
    /// giving up on a sink earlier once it has taken nothing for a quarter
    /// of a second. Output kept for a unix-socket client that is not
    /// connected counts as delivered here (it waits for the next client).
    /// Returns whether every queue was drained.
    pub fn flush(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        let main = flush_shared(&self.main, timeout);
        let copy = match &self.copy {
            Some(copy) => flush_shared(copy, timeout.saturating_sub(start.elapsed())),
            None => true,
        };
        main && copy
    }
}

/// [`ConsoleHandle::flush`] for one sink.
fn flush_shared(shared: &Shared, timeout: Duration) -> bool {
    let start = Instant::now();
    let mut st = shared.lock();
    let mut delivered = st.delivered;
    let mut progress_at = start;
    loop {
        if st.is_drained() {
            return true;
        }
        if st.writer_ended {
            return false;
        }
        let now = Instant::now();
        if st.delivered != delivered {
            delivered = st.delivered;
            progress_at = now;
        }
        let end = (start + timeout).min(progress_at + FLUSH_STALL);
        if now >= end {
            return false;
        }
        let wait = (end - now).min(POLL_INTERVAL);
        st = shared
            .idle
            .wait_timeout(st, wait)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

/// Where the writer thread delivers output.
enum Sink {
    /// Standard output (a duplicate of fd 1) or a file.
    Fd(File),
    /// The unix-socket client currently in [`State::client`].
    Unix,
}

/// The queue and counters shared by the UART's writer (vCPU threads), the
/// writer thread, the accept thread and [`ConsoleHandle`]s.
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer thread: bytes queued, a client connected, closing.
    wake: Condvar,
    /// Signalled by the writer thread whenever it has made progress, has
    /// nothing left to do, or ends.
    idle: Condvar,
}

#[derive(Default)]
struct State {
    /// Bytes waiting for the sink, oldest first.
    queue: VecDeque<u8>,
    /// Bytes the writer thread has taken from `queue` but not yet written.
    in_flight: usize,
    written: u64,
    delivered: u64,
    dropped: u64,
    backlog_discarded: u64,
    clients: u64,
    /// Whether the sink is a unix socket (and so may have no client).
    unix: bool,
    /// The connected unix-socket client.
    client: Option<Arc<UnixStream>>,
    /// Bumped whenever `client` is replaced.
    generation: u64,
    /// The writer thread is asleep waiting for work.
    writer_waiting: bool,
    /// Set when the console is dropped: the writer delivers what it can until
    /// this instant, then ends.
    closing: Option<Instant>,
    writer_ended: bool,
}

impl State {
    /// Whether there is somewhere to deliver output right now.
    fn has_sink(&self) -> bool {
        !self.unix || self.client.is_some()
    }

    fn limit(&self) -> usize {
        if self.has_sink() {
            OUTPUT_QUEUE_LIMIT
        } else {
            UNIX_BACKLOG_LIMIT
        }
    }

    /// Drops the oldest bytes beyond the limit, counting them.
    fn trim(&mut self) {
        let excess = self.queue.len().saturating_sub(self.limit());
        if excess == 0 {
            return;
        }
        self.queue.drain(..excess);
        if self.has_sink() {
            self.dropped += excess as u64;
        } else {
            self.backlog_discarded += excess as u64;
        }
    }

    fn is_drained(&self) -> bool {
        !self.has_sink() || (self.queue.is_empty() && self.in_flight == 0)
    }

    fn snapshot(&self) -> ConsoleCounters {
        ConsoleCounters {
            written_bytes: self.written,
            delivered_bytes: self.delivered,
            dropped_bytes: self.dropped,
            backlog_discarded_bytes: self.backlog_discarded,
            queued_bytes: (self.queue.len() + self.in_flight) as u64,
            clients_connected: self.clients,
        }
    }
}

impl Shared {
    fn new(unix: bool) -> Self {
        Self {
            state: Mutex::new(State {
                unix,
                ..State::default()
            }),
            wake: Condvar::new(),
            idle: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The UART's writer for queued consoles: appends, trims, returns (to the
/// main queue, then to the stdout copy's, one lock at a time). Runs on vCPU
/// threads; never does I/O and never waits for anything but the queue locks,
/// which nobody holds across I/O.
struct QueueWriter {
    main: Arc<Shared>,
    copy: Option<Arc<Shared>>,
}

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        enqueue(&self.main, buf);
        if let Some(copy) = &self.copy {
            enqueue(copy, buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // The UART flushes after every byte; delivery is the writer thread's.
        Ok(())
    }
}

/// Appends `buf` to one sink's queue, trims it, and wakes its writer thread
/// if it sleeps.
fn enqueue(shared: &Shared, buf: &[u8]) {
    let mut st = shared.lock();
    st.written += buf.len() as u64;
    st.queue.extend(buf);
    st.trim();
    let wake = st.writer_waiting && st.has_sink();
    if wake {
        st.writer_waiting = false;
    }
    drop(st);
    if wake {
        shared.wake.notify_one();
    }
}

/// Starts the writer thread `name` that drains `shared` into `sink`.
fn spawn_writer(name: &'static str, shared: &Arc<Shared>, sink: Sink) -> Result<(), ConsoleError> {
    let shared = shared.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || run_writer(&shared, &sink, name))
        .map(|_| ())
        .map_err(ConsoleError::Thread)
}

/// The UART's writer for [`Console::from_writer`] (and `Off`): passes bytes
/// straight on, counting them.
struct DirectWriter {
    inner: Box<dyn Write + Send>,
    shared: Arc<Shared>,
}

impl Write for DirectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.inner.write_all(buf);
        let mut st = self.shared.lock();
        st.written += buf.len() as u64;
        match result {
            Ok(()) => st.delivered += buf.len() as u64,
            Err(_) => st.dropped += buf.len() as u64,
        }
        drop(st);
        result.map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Rate-limits the dropped-output warning of one writer thread.
#[derive(Default)]
struct DropReport {
    reported: u64,
    last: Option<Instant>,
    /// The last sink error, shown with the next warning.
    error: Option<String>,
}

/// A warning the writer thread emits once it has released the queue lock.
struct DropNote {
    dropped: u64,
    total: u64,
    error: Option<String>,
}

impl DropReport {
    /// Decides under the lock whether a warning is due.
    fn due(&mut self, st: &State, force: bool) -> Option<DropNote> {
        if st.dropped == self.reported {
            return None;
        }
        let now = Instant::now();
        if !force && self.last.is_some_and(|t| now - t < DROP_REPORT_INTERVAL) {
            return None;
        }
        let note = DropNote {
            dropped: st.dropped - self.reported,
            total: st.dropped,
            error: self.error.take(),
        };
        self.reported = st.dropped;
        self.last = Some(now);
        Some(note)
    }
}

fn emit(note: Option<DropNote>, writer: &str) {
    let Some(note) = note else { return };
    match note.error {
        Some(error) => warn!(
            writer,
            dropped_bytes = note.dropped,
            total_dropped_bytes = note.total,
            %error,
            "serial output dropped: writing to the console failed"
        ),
        None => warn!(
            writer,
            dropped_bytes = note.dropped,
            total_dropped_bytes = note.total,
            "serial output dropped: the console reader is not keeping up (oldest output discarded)"
        ),
    }
}

/// The writer thread (named `writer` in its warnings): moves queued bytes to
/// `sink` until the console is dropped. Holds the queue lock only for
/// bookkeeping.
fn run_writer(shared: &Shared, sink: &Sink, writer: &str) {
    let mut pending: Vec<u8> = Vec::with_capacity(WRITE_CHUNK);
    let mut done = 0usize;
    let mut report = DropReport::default();
    loop {
        let mut st = shared.lock();
        let has_work = st.has_sink() && (done < pending.len() || !st.queue.is_empty());
        let closed = st.closing.is_some_and(|end| Instant::now() >= end);
        if closed || (!has_work && st.closing.is_some()) {
            st.writer_ended = true;
            let client = st.client.take();
            let note = report.due(&st, true);
            drop(st);
            if let Some(client) = client {
                // The console is gone: its client gets the end of the stream (and its
                // input thread ends).
                let _ = client.shutdown(std::net::Shutdown::Both);
            }
            shared.idle.notify_all();
            emit(note, writer);
            return;
        }
        if !has_work {
            shared.idle.notify_all();
            st.writer_waiting = true;
            st = shared
                .wake
                .wait_timeout(st, IDLE_INTERVAL)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            st.writer_waiting = false;
            let note = report.due(&st, false);
            drop(st);
            emit(note, writer);
            // Let a burst of single bytes from the UART gather into one write.
            std::thread::sleep(COALESCE);
            continue;
        }
        if done == pending.len() {
            pending.clear();
            done = 0;
            let n = st.queue.len().min(WRITE_CHUNK);
            pending.extend(st.queue.drain(..n));
            st.in_flight = n;
        }
        let client = st.client.clone();
        let generation = st.generation;
        let note = report.due(&st, false);
        drop(st);
        emit(note, writer);

        let chunk = &pending[done..];
        let result = match (sink, &client) {
            (Sink::Fd(file), _) => write_fd(file, chunk),
            (Sink::Unix, Some(client)) => send_nonblocking(client, chunk),
            (Sink::Unix, None) => Err(io::ErrorKind::NotConnected.into()),
        };

        let mut st = shared.lock();
        match result {
            Ok(n) => {
                done += n;
                st.in_flight -= n;
                st.delivered += n as u64;
                drop(st);
                shared.idle.notify_all();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if matches!(sink, Sink::Unix) => {
                // The client went away: what it did not take goes back to
                // the front of the queue, for the next client.
                if st.generation == generation {
                    st.client = None;
                }
                for &b in pending[done..].iter().rev() {
                    st.queue.push_front(b);
                }
                done = pending.len();
                st.in_flight = 0;
                st.trim();
                drop(st);
                debug!(error = %e, "serial console client went away");
            }
            Err(e) => {
                // stdout or the file failed: this chunk is lost.
                let lost = pending.len() - done;
                st.dropped += lost as u64;
                st.in_flight = 0;
                done = pending.len();
                report.error = Some(e.to_string());
            }
        }
    }
}

/// Waits up to [`POLL_INTERVAL`] for `fd` to take output; `Ok(false)` if it
/// did not (or the wait was interrupted).
fn wait_writable(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let timeout_ms = POLL_INTERVAL.as_millis() as libc::c_int;
    // SAFETY: `pfd` is one valid pollfd, and its descriptor stays open for
    // the call because `fd` borrows it.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0)
}

/// One write of at most [`WRITE_CHUNK`] bytes to stdout or the file, once it
/// polls writable; `WouldBlock` if it did not within [`POLL_INTERVAL`].
fn write_fd(file: &File, buf: &[u8]) -> io::Result<usize> {
    if !wait_writable(file.as_fd())? {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    let buf = &buf[..buf.len().min(WRITE_CHUNK)];
    match (&*file).write(buf) {
        Ok(0) => Err(io::ErrorKind::WriteZero.into()),
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(io::ErrorKind::WouldBlock.into()),
        Err(e) => Err(e),
    }
}

/// One non-blocking send to a unix-socket client, once it polls writable;
/// `WouldBlock` if it takes nothing within [`POLL_INTERVAL`]. Never raises
/// `SIGPIPE`.
fn send_nonblocking(client: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    if !wait_writable(client.as_fd())? {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    // SAFETY: `buf` is valid for `buf.len()` bytes and the descriptor is
    // open for the call (borrowed from `client`); send(2) does not keep the
    // pointer.
    let rc = unsafe {
        libc::send(
            client.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {
                Err(io::ErrorKind::WouldBlock.into())
            }
            _ => Err(e),
        };
    }
    Ok(rc as usize)
}

/// Binds the console socket so that `path` appears only once it accepts
/// connections.
///
/// `bind(2)` creates the socket file before `listen(2)` runs, and a client
/// that connects in between is refused. So the socket is bound and put in the
/// listening state under a temporary name in the same directory and then
/// renamed to `path`, which is atomic: whoever sees `path` can connect.
pub(crate) fn bind_socket(path: &Path) -> Result<UnixListener, ConsoleError> {
    let err = |source| ConsoleError::Socket {
        path: path.to_owned(),
        source,
    };
    // Replace a stale socket left by an earlier run, but never a regular file.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(err)?;
        } else {
            return Err(err(io::Error::from(io::ErrorKind::AlreadyExists)));
        }
    }
    let staging = staging_path(path);
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging).map_err(err)?;
    if let Err(e) = std::fs::rename(&staging, path) {
        let _ = std::fs::remove_file(&staging);
        return Err(err(e));
    }
    Ok(listener)
}

/// The (device, inode) of what is at `path` (not following a symlink), if anything.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// A name beside `path` to bind under before the socket is renamed into
/// place: `.<name>.<pid>` in the same directory, so the rename cannot cross a
/// file system.
fn staging_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}", std::process::id()))
}

/// Copies bytes from `src` into the UART until `src` ends.
fn pump_input(src: impl Read, serial: &Mutex<Serial8250>) {
    read_chunks(src, |bytes| feed(serial, bytes));
}

/// Calls `each` with every chunk read from `src` until `src` ends.
fn read_chunks(mut src: impl Read, mut each: impl FnMut(&[u8])) {
    let mut buf = [0u8; 256];
    loop {
        match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => each(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!(error = %e, "serial input closed");
                return;
            }
        }
    }
}

/// Pushes `bytes` into the UART's input FIFO, waiting while the guest has not drained it.
/// Gives up when the UART's lock is poisoned (its VM is gone).
fn feed(serial: &Mutex<Serial8250>, bytes: &[u8]) {
    let mut sent = 0;
    while sent < bytes.len() {
        let Ok(mut uart) = serial.lock() else { return };
        let taken = uart.enqueue_input(&bytes[sent..]);
        drop(uart);
        sent += taken;
        if taken == 0 {
            // The guest has not drained the FIFO yet.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The UART that stdin feeds: the newest stdio console's, while its VM lives.
static STDIN_TARGET: Mutex<Option<Weak<Mutex<Serial8250>>>> = Mutex::new(None);

/// Whether the stdin thread has been started (once per process).
static STDIN_STARTED: AtomicBool = AtomicBool::new(false);

/// Points stdin at `serial` and starts the one stdin thread if it is not running yet.
fn start_stdin(serial: &Arc<Mutex<Serial8250>>) -> Result<(), ConsoleError> {
    *STDIN_TARGET.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::downgrade(serial));
    if STDIN_STARTED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let spawned = std::thread::Builder::new()
        .name("vireo-stdin".into())
        .spawn(|| {
            read_chunks(io::stdin(), |bytes| {
                let target = STDIN_TARGET
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .and_then(Weak::upgrade);
                // With no live stdio console the input has nowhere to go.
                if let Some(serial) = target {
                    feed(&serial, bytes);
                }
            });
        });
    if let Err(e) = spawned {
        STDIN_STARTED.store(false, Ordering::SeqCst);
        return Err(ConsoleError::Thread(e));
    }
    Ok(())
}

/// Accepts unix-socket clients: each new one replaces (and shuts down) the
/// previous one and gets the queued output, starting with the replay
/// backlog, from the writer thread.
fn accept_clients(listener: UnixListener, shared: &Shared, serial: &Arc<Mutex<Serial8250>>) {
    for conn in listener.incoming() {
        if shared.lock().closing.is_some() {
            // The console was dropped (and woke this thread).
            return;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "serial socket accept failed");
                continue;
            }
        };
        let reader = match stream.try_clone() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot clone serial client socket");
                continue;
            }
        };
        let (old, backlog) = {
            let mut st = shared.lock();
            st.clients += 1;
            st.generation += 1;
            let backlog = st.queue.len() + st.in_flight;
            (st.client.replace(Arc::new(stream)), backlog)
        };
        shared.wake.notify_all();
        if let Some(old) = old {
            // Ends its input pump; its unsent output goes to the new client.
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
        info!(replay_bytes = backlog, "serial console client connected");
        let serial = serial.clone();
        let spawned = std::thread::Builder::new()
            .name("vireo-console-in".into())
            .spawn(move || pump_input(reader, &serial));
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start serial input thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vireo-console-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn bound_socket_accepts_at_its_path_and_leaves_no_staging_file() {
        let dir = scratch_dir("bind");
        let path = dir.join("serial.sock");
        let listener = bind_socket(&path).expect("bind");
        UnixStream::connect(&path).expect("connect");
        let (_peer, _) = listener.accept().expect("accept");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("serial.sock")]);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn stale_socket_is_replaced_but_a_regular_file_is_kept() {
        let dir = scratch_dir("stale");
        let path = dir.join("serial.sock");
        drop(bind_socket(&path).expect("first bind"));
        let listener = bind_socket(&path).expect("stale socket replaced");
        UnixStream::connect(&path).expect("connect");
        drop(listener);

        let file = dir.join("notes.txt");
        std::fs::write(&file, b"keep me").expect("write");
        let e = bind_socket(&file).expect_err("a regular file is not replaced");
        assert!(matches!(e, ConsoleError::Socket { .. }), "{e}");
        assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
