//! An RFB (VNC, RFC 6143) server showing a [`Display`] to any number of
//! viewers at once and passing their keys and pointer to an [`InputSink`].
//!
//! ```text
//!  VMM binds the listener ──► RfbServer::start ──► "vnc-accept" thread
//!                                                     │ one per connection
//!                                                     ▼
//!                       client reader thread ◄──► client writer thread
//!                       (handshake, messages)     (updates at the viewer's pace)
//! ```
//!
//! The module is split by job: [`protocol`] is the pure wire format and
//! handshake state machine (fuzzed), [`auth`] VNC authentication,
//! [`encode`] Raw/ZRLE updates, `client` the two threads of one viewer.
//! Security: type None when no password is configured, else VNC
//! Authentication (DES challenge-response; a wrong password costs that
//! connection [`AUTH_FAILURE_DELAY`] before it is told and closed).
//! The desktop is always shared. Devices never open sockets: the VMM binds
//! the listener and reads the password, then hands them in.

pub mod auth;
mod client;
pub mod encode;
pub mod protocol;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::display::{Display, InputSink};
use client::Stream;
pub use client::{AUTH_FAILURE_DELAY, HANDSHAKE_TIMEOUT};
pub use protocol::ProtocolError;

/// How often the accept thread looks for connections and for [`RfbServer::stop`].
const ACCEPT_POLL: Duration = Duration::from_millis(25);
/// Most refused connections being told why at once (more are just closed).
const MAX_REFUSING: usize = 16;

/// A bound listening socket the server accepts viewers on.
#[derive(Debug)]
pub enum RfbListener {
    /// A TCP listener (`-vnc :N` style).
    Tcp(std::net::TcpListener),
    /// A Unix-domain listener.
    Unix(std::os::unix::net::UnixListener),
}

/// How the server greets viewers. Its `Debug` output hides the password.
#[derive(Clone)]
pub struct RfbConfig {
    /// VNC password (only the first 8 bytes count); `None`: no
    /// authentication (security type None).
    pub password: Option<Vec<u8>>,
    /// Desktop name sent in ServerInit.
    pub name: String,
    /// Most simultaneous connections (authenticated or handshaking); more
    /// are refused with a reason and closed.
    pub max_clients: usize,
}

impl std::fmt::Debug for RfbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RfbConfig")
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("name", &self.name)
            .field("max_clients", &self.max_clients)
            .finish()
    }
}

impl Default for RfbConfig {
    fn default() -> Self {
        Self {
            password: None,
            name: "vireo".into(),
            max_clients: 16,
        }
    }
}

/// Every way a viewer's connection can end other than a clean close.
#[derive(Debug, thiserror::Error)]
pub enum RfbError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The viewer broke the protocol or failed authentication.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The viewer did not finish its handshake within [`HANDSHAKE_TIMEOUT`].
    #[error("handshake not finished within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    /// The viewer hung up before finishing the handshake.
    #[error("connection closed during the handshake")]
    ClosedInHandshake,
    /// The viewer hung up in the middle of a message.
    #[error("connection closed in the middle of a message")]
    ClosedMidMessage,
    /// The server already has `0` connections.
    #[error("too many viewers (at most {0})")]
    TooManyClients(usize),
}

/// State shared by the accept thread and every viewer's threads.
pub(crate) struct ServerShared {
    display: Arc<Display>,
    input: Arc<dyn InputSink>,
    config: RfbConfig,
    stop: AtomicBool,
    /// Every open connection (handshaking or not), to shut them down on stop.
    conns: Mutex<HashMap<u64, Stream>>,
    authenticated: AtomicUsize,
    refusing: AtomicUsize,
}

impl std::fmt::Debug for ServerShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerShared")
            .field("display", &self.display)
            .field("clients", &self.authenticated.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl ServerShared {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Stream>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `d`, returning early if the server stops.
    pub(crate) fn sleep_unless_stopped(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.stopping() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            std::thread::sleep((end - now).min(ACCEPT_POLL));
        }
    }
}

/// A running RFB server. Dropping it stops it.
#[derive(Debug)]
pub struct RfbServer {
    shared: Arc<ServerShared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl RfbServer {
    /// Starts serving viewers on `listener` (already bound by the VMM): an
    /// accept thread named `vnc-accept`, and two threads per viewer.
    /// Fails only if the listener cannot be made non-blocking or the
    /// thread cannot be spawned.
    pub fn start(
        listener: RfbListener,
        display: Arc<Display>,
        input: Arc<dyn InputSink>,
        config: RfbConfig,
    ) -> std::io::Result<RfbServer> {
        match &listener {
            RfbListener::Tcp(l) => l.set_nonblocking(true)?,
            RfbListener::Unix(l) => l.set_nonblocking(true)?,
        }
        let shared = Arc::new(ServerShared {
            display,
            input,
            config,
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            authenticated: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
        });
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("vnc-accept".into())
                .spawn(move || accept_loop(&shared, listener))?
        };
        Ok(RfbServer {
            shared,
            accept: Mutex::new(Some(accept)),
        })
    }

    /// Viewers connected and past the handshake right now.
    pub fn clients(&self) -> usize {
        self.shared.authenticated.load(Ordering::SeqCst)
    }

    /// Stops accepting, shuts every connection down and joins all the
    /// server's threads. Idempotent; also done on drop.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let handle = self
            .accept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for RfbServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_one(listener: &RfbListener) -> std::io::Result<Stream> {
    Ok(match listener {
        RfbListener::Tcp(l) => {
            let (s, _) = l.accept()?;
            s.set_nonblocking(false)?;
            // Updates are written in large chunks; small replies should go now.
            let _ = s.set_nodelay(true);
            Stream::Tcp(s)
        }
        RfbListener::Unix(l) => {
            let (s, _) = l.accept()?;
            s.set_nonblocking(false)?;
            Stream::Unix(s)
        }
    })
}

fn accept_loop(shared: &Arc<ServerShared>, listener: RfbListener) {
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    while !shared.stopping() {
        match accept_one(&listener) {
            Ok(stream) => {
                next_id += 1;
                if let Some(t) = admit(shared, next_id, stream) {
                    threads.push(t);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) => {
                tracing::warn!("vnc: accept failed: {e}");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
        let (done, running): (Vec<_>, Vec<_>) = threads.into_iter().partition(|t| t.is_finished());
        for t in done {
            let _ = t.join();
        }
        threads = running;
    }
    drop(listener);
    for s in shared.conns().values() {
        s.shutdown();
    }
    for t in threads {
        let _ = t.join();
    }
}

/// Starts serving (or refusing) a new connection; returns its thread.
fn admit(shared: &Arc<ServerShared>, id: u64, stream: Stream) -> Option<JoinHandle<()>> {
    let peer = stream.peer();
    let max = shared.config.max_clients;
    let mut conns = shared.conns();
    if conns.len() >= max {
        drop(conns);
        tracing::warn!("vnc: refusing {peer}: {}", RfbError::TooManyClients(max));
        if shared.refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSING {
            shared.refusing.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("vnc-refuse".into())
            .spawn(move || {
                refuse(stream, &RfbError::TooManyClients(max).to_string());
                shared.refusing.fetch_sub(1, Ordering::SeqCst);
            });
        return spawned
            .inspect_err(|e| tracing::warn!("vnc: cannot spawn a thread: {e}"))
            .ok();
    }
    let copy = match stream.try_clone() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("vnc: dropping {peer}: {e}");
            return None;
        }
    };
    conns.insert(id, copy);
    drop(conns);
    let thread_shared = shared.clone();
    let thread_peer = peer.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("vnc-client-{id}"))
        .spawn(move || {
            let peer = thread_peer;
            tracing::info!("vnc: viewer {id} connected from {peer}");
            match client::serve(&thread_shared, stream) {
                Ok(()) => tracing::info!("vnc: viewer {id} ({peer}) disconnected"),
                Err(e) => tracing::warn!("vnc: viewer {id} ({peer}) dropped: {e}"),
            }
            if let Some(s) = thread_shared.conns().remove(&id) {
                s.shutdown();
            }
        });
    match spawned {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("vnc: cannot spawn a thread for {peer}: {e}");
            if let Some(s) = shared.conns().remove(&id) {
                s.shutdown();
            }
            None
        }
    }
}

/// Tells a connection why it is refused (the 3.8 way), then closes it,
/// giving the viewer up to a second to read the reason.
fn refuse(mut stream: Stream, reason: &str) {
    use std::io::{Read, Write};
    if stream.write_all(&protocol::refusal(reason)).is_ok() {
        stream.shutdown_write();
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut sink = [0u8; 64];
        let end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < end {
            match stream.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    stream.shutdown();
}
