//! Connects COM1 to the outside: stdio, a file, or a unix socket.
//!
//! Output is written synchronously by the vCPU thread that executed the
//! guest's write, so it is never reordered. Input is read by a console thread
//! and pushed into the UART's 64-byte FIFO as space frees up; bytes are held
//! back, never dropped, while the guest has not drained the FIFO.
//!
//! With a unix socket, one client is connected at a time (a new connection
//! replaces the old one). Output produced while no client is connected is
//! kept, up to [`UNIX_BACKLOG_LIMIT`] bytes, and replayed to the next client.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tracing::{debug, warn};
use vireo_devices::legacy::Serial8250;

use crate::config::SerialConfig;

/// Output kept for a unix-socket console while no client is connected.
pub const UNIX_BACKLOG_LIMIT: usize = 64 * 1024;

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
    /// A console thread could not be started.
    #[error("cannot start the console thread: {0}")]
    Thread(#[source] io::Error),
}

/// Where serial input comes from, started once the UART exists.
#[derive(Debug)]
enum InputSource {
    None,
    Stdin,
    Unix(Arc<UnixPeer>, UnixListener),
}

/// An opened console: the UART's output writer plus its input source.
pub struct Console {
    output: Option<Box<dyn Write + Send>>,
    input: InputSource,
    socket_path: Option<PathBuf>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("input", &self.input)
            .field("socket_path", &self.socket_path)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// Opens the console `config` describes.
    pub fn open(config: &SerialConfig) -> Result<Self, ConsoleError> {
        let (output, input, socket_path): (Box<dyn Write + Send>, _, _) = match config {
            SerialConfig::Stdio => (Box::new(io::stdout()), InputSource::Stdin, None),
            SerialConfig::Off => (Box::new(io::sink()), InputSource::None, None),
            SerialConfig::File { path } => {
                let file = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(path)
                    .map_err(|source| ConsoleError::File {
                        path: path.clone(),
                        source,
                    })?;
                (Box::new(file), InputSource::None, None)
            }
            SerialConfig::Unix { path } => {
                let listener = bind_socket(path)?;
                let peer = Arc::new(UnixPeer::default());
                (
                    Box::new(UnixWriter(peer.clone())),
                    InputSource::Unix(peer, listener),
                    Some(path.clone()),
                )
            }
        };
        Ok(Self {
            output: Some(output),
            input,
            socket_path,
        })
    }

    /// A console whose output goes to `writer` and that has no input (for
    /// embedders and tests).
    pub fn from_writer(writer: Box<dyn Write + Send>) -> Self {
        Self {
            output: Some(writer),
            input: InputSource::None,
            socket_path: None,
        }
    }

    /// Takes the writer the UART transmits into.
    pub fn take_output(&mut self) -> Box<dyn Write + Send> {
        self.output.take().unwrap_or_else(|| Box::new(io::sink()))
    }

    /// Starts feeding input into `serial`.
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
            InputSource::Stdin => spawn(
                "vireo-stdin",
                Box::new(move || pump_input(io::stdin(), &serial)),
            ),
            InputSource::Unix(peer, listener) => spawn(
                "vireo-console",
                Box::new(move || accept_clients(listener, peer, serial)),
            ),
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds the console socket so that `path` appears only once it accepts
/// connections.
///
/// `bind(2)` creates the socket file before `listen(2)` runs, and a client
/// that connects in between is refused. So the socket is bound and put in the
/// listening state under a temporary name in the same directory and then
/// renamed to `path`, which is atomic: whoever sees `path` can connect.
fn bind_socket(path: &Path) -> Result<UnixListener, ConsoleError> {
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
fn pump_input(mut src: impl Read, serial: &Mutex<Serial8250>) {
    let mut buf = [0u8; 256];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!(error = %e, "serial input closed");
                return;
            }
        };
        let mut sent = 0;
        while sent < n {
            let taken = serial
                .lock()
                .map(|mut s| s.enqueue_input(&buf[sent..n]))
                .unwrap_or(0);
            sent += taken;
            if taken == 0 {
                // The guest has not drained the FIFO yet.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// The connected client of a unix-socket console and the output backlog.
#[derive(Debug, Default)]
struct UnixPeer {
    state: Mutex<PeerState>,
}

#[derive(Debug, Default)]
struct PeerState {
    client: Option<UnixStream>,
    backlog: VecDeque<u8>,
}

impl PeerState {
    fn keep(&mut self, buf: &[u8]) {
        self.backlog.extend(buf);
        let excess = self.backlog.len().saturating_sub(UNIX_BACKLOG_LIMIT);
        self.backlog.drain(..excess);
    }
}

struct UnixWriter(Arc<UnixPeer>);

impl Write for UnixWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut st = self.0.state.lock().map_err(|_| io::ErrorKind::Other)?;
        let delivered = match st.client.as_mut() {
            Some(client) => client.write_all(buf).is_ok(),
            None => false,
        };
        if !delivered {
            st.client = None;
            st.keep(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn accept_clients(listener: UnixListener, peer: Arc<UnixPeer>, serial: Arc<Mutex<Serial8250>>) {
    for conn in listener.incoming() {
        let mut stream = match conn {
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
        if let Ok(mut st) = peer.state.lock() {
            let backlog: Vec<u8> = st.backlog.drain(..).collect();
            if stream.write_all(&backlog).is_ok() {
                st.client = Some(stream);
            }
        }
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
