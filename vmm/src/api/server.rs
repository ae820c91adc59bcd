//! The socket side of the control API: one accept thread, one thread per connection.
//!
//! ```text
//!  vireo-api (accept) ──► vireo-api-conn ×≤ MAX_CONNECTIONS ──read (deadline)──► decode
//!         │ over the cap: 503, sent without blocking           │
//!         ▼                                                     ▼ handler(ApiRequest) ──► write (timeout)
//! ```
//! Guarantees: no client I/O happens on a vCPU thread or with a lock held (the handler runs
//! between the read and the write, and only calls `Vm` methods); a client gets at most
//! [`Limits::request_timeout`] to send its whole request (then 408) and
//! [`Limits::write_timeout`] per write of the answer, so a slow or hostile client ties up only
//! its own thread, and at most [`Limits::max_connections`] of those exist at once. The socket
//! path appears only once it is listening (bound under a staging name, then renamed) and is
//! removed when the server is closed or dropped.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::http::{decode, HttpError, Response, Status};
use super::router::ApiRequest;
use super::ApiError;

/// What the server does with a decoded request; runs on the connection's thread.
pub type Handler = Arc<dyn Fn(ApiRequest) -> Response + Send + Sync>;

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Time from accept until the whole request is in; then 408.
    pub request_timeout: Duration,
    /// Time allowed for each write of the answer.
    pub write_timeout: Duration,
}

impl Default for Limits {
    /// 16 connections, 10 s to send a request, 5 s per write.
    fn default() -> Self {
        Self {
            max_connections: 16,
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Connections open (for the cap) and requests being carried out or answered (so closing can
/// wait for those, but not for clients still sending).
#[derive(Default)]
struct Active {
    count: Mutex<Counts>,
    idle: Condvar,
}

#[derive(Default)]
struct Counts {
    open: usize,
    answering: usize,
}

impl Active {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.count.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn answering(&self, delta: isize) {
        let mut c = self.lock();
        c.answering = c.answering.saturating_add_signed(delta);
        self.idle.notify_all();
    }
}

/// A listening control API socket. Closing or dropping it stops accepting and removes the
/// socket path.
pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    active: Arc<Active>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Binds `path` (replacing a stale socket, never another file) and starts accepting; every
    /// decoded request goes to `handler`.
    pub fn start(path: &Path, handler: Handler, limits: Limits) -> Result<Self, ApiError> {
        let listener = crate::console::bind_socket(path).map_err(ApiError::Bind)?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(Active::default());
        let accept = {
            let (stop, active) = (stop.clone(), active.clone());
            std::thread::Builder::new()
                .name("vireo-api".into())
                .spawn(move || accept_loop(&listener, &stop, &active, &handler, limits))
                .map_err(ApiError::Thread)
        };
        let accept = match accept {
            Ok(a) => a,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        Ok(Self {
            path: path.to_owned(),
            stop,
            active,
            accept: Some(accept),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, removes the socket path, then waits up to `grace` for requests still
    /// being carried out or answered (e.g. the `vm.shutdown` that ended the VM); clients
    /// still sending their request are not waited for.
    pub fn close(mut self, grace: Duration) {
        self.stop_accepting();
        let deadline = Instant::now() + grace;
        let mut count = self.active.lock();
        while count.answering > 0 {
            let now = Instant::now();
            if now >= deadline {
                debug!(
                    answering = count.answering,
                    "API answers still unsent at exit"
                );
                break;
            }
            count = self
                .active
                .idle
                .wait_timeout(count, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn stop_accepting(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept thread with a connection of our own; it sees `stop` and ends.
        let woke = UnixStream::connect(&self.path).is_ok();
        let _ = std::fs::remove_file(&self.path);
        if woke {
            let _ = accept.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_accepting();
    }
}

fn accept_loop(
    listener: &UnixListener,
    stop: &AtomicBool,
    active: &Arc<Active>,
    handler: &Handler,
    limits: Limits,
) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                warn!(error = %e, "control API accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut count = active.lock();
            if count.open >= limits.max_connections {
                drop(count);
                refuse_busy(stream);
                continue;
            }
            count.open += 1;
        }
        let (active_conn, handler) = (active.clone(), handler.clone());
        let spawned = std::thread::Builder::new()
            .name("vireo-api-conn".into())
            .spawn(move || {
                let counted = |request| {
                    active_conn.answering(1);
                    handler(request)
                };
                if serve(stream, &counted, limits) {
                    active_conn.answering(-1);
                }
                active_conn.lock().open -= 1;
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a control API connection thread");
            active.lock().open -= 1;
        }
    }
}

/// Answers 503 without ever blocking the accept thread: one non-blocking write, then close.
fn refuse_busy(mut stream: UnixStream) {
    let answer = Response::error(&HttpError::new(
        Status::ServiceUnavailable,
        "too many control API connections; retry later",
    ));
    if stream.set_nonblocking(true).is_ok() {
        let _ = stream.write(&answer.to_bytes());
    }
}

/// Reads one request within the limits, answers it and closes the connection.
pub fn serve_connection(stream: UnixStream, handler: &Handler, limits: Limits) {
    serve(stream, &|request| handler(request), limits);
}

/// [`serve_connection`]; says whether a request was decoded and handed to `handler`.
fn serve(mut stream: UnixStream, handler: &dyn Fn(ApiRequest) -> Response, limits: Limits) -> bool {
    let mut handled = false;
    let answer = match read_request(&mut stream, limits.request_timeout) {
        Ok(Some(request)) => {
            handled = true;
            handler(request)
        }
        Ok(None) => return false,
        Err(e) => Response::error(&e),
    };
    if let Err(e) = stream
        .set_write_timeout(Some(limits.write_timeout))
        .and_then(|()| answer.write_to(&mut stream))
    {
        debug!(error = %e, "control API client did not take its answer");
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    handled
}

/// The client's request, `None` if it hung up before sending one, or the error to answer.
fn read_request(
    stream: &mut UnixStream,
    timeout: Duration,
) -> Result<Option<ApiRequest>, HttpError> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(request) = decode(&buf)? {
            return Ok(Some(request));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out(timeout));
        }
        if stream.set_read_timeout(Some(deadline - now)).is_err() {
            return Ok(None);
        }
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(HttpError::new(Status::BadRequest, "request ended early")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out(timeout));
            }
            Err(_) => return Ok(None),
        }
    }
}

fn timed_out(timeout: Duration) -> HttpError {
    HttpError::new(
        Status::RequestTimeout,
        format!(
            "the request did not arrive within {} ms",
            timeout.as_millis()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping_handler() -> Handler {
        Arc::new(|r| match r {
            ApiRequest::VmmPing => Response::json(&"pong"),
            _ => Response::no_content(),
        })
    }

    fn exchange(raw: &[u8], limits: Limits) -> String {
        let (mut client, server) = UnixStream::pair().expect("pair");
        let handler = ping_handler();
        let t = std::thread::spawn(move || serve_connection(server, &handler, limits));
        client.write_all(raw).expect("send");
        let mut answer = String::new();
        client.read_to_string(&mut answer).expect("answer");
        t.join().expect("server thread");
        answer
    }

    #[test]
    fn a_request_gets_its_answer_and_the_connection_closes() {
        let a = exchange(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n", Limits::default());
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
        assert!(a.ends_with("\r\n\r\n\"pong\"\n"), "{a}");
        let a = exchange(b"PUT /api/v1/vm.nope HTTP/1.1\r\n\r\n", Limits::default());
        assert!(a.starts_with("HTTP/1.1 404 Not Found\r\n"), "{a}");
    }

    #[test]
    fn a_stalled_client_gets_408_at_its_deadline() {
        let limits = Limits {
            request_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let start = Instant::now();
        let a = exchange(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x", limits);
        let took = start.elapsed();
        assert!(a.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{a}");
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn connections_over_the_cap_get_503_and_the_path_goes_away_on_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let server = ApiServer::start(&path, ping_handler(), limits).expect("start");
        let _stalled = UnixStream::connect(&path).expect("first connection");
        // Accept is first come, first served: the first connection is counted before the
        // second is accepted.
        let mut second = UnixStream::connect(&path).expect("second connection");
        let mut answer = String::new();
        second.read_to_string(&mut answer).expect("answer");
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer}"
        );
        // The stalled client is not waited for.
        let start = Instant::now();
        server.close(Duration::from_secs(5));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert!(!path.exists());
    }
}
