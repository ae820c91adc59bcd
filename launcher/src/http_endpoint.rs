//! The launcher's small HTTP endpoint for the kubelet and Prometheus: `GET /readyz`
//! ([`readiness`]) and `GET /metrics` ([`metrics`]).
//!
//! `vireo launch --ready-listen ADDR` and `--metrics-listen ADDR` each bind a TCP listener,
//! and both answer both paths through the one [`Routes`]: which port a pod exposes for what
//! is the pod's business. Any other path is `404`, anything that is not an HTTP `GET` `400`.
//!
//! Each connection has its own thread and 1 s read and write timeouts, and at most
//! [`MAX_CONNECTIONS`] per listener are served at once (more are closed at once), so a client
//! that connects and sends nothing holds up neither the VM nor another prober or scraper.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::{metrics, readiness};

/// Connections served at once per listener; more are closed without an answer.
pub const MAX_CONNECTIONS: usize = 8;
/// Read and write timeout of one connection.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest request head read.
const MAX_HEAD: usize = 4096;

/// One answer: status line text (`200 OK`), `Content-Type` and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code and reason, e.g. `503 Service Unavailable`.
    pub status: &'static str,
    /// The body's media type.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Reply {
    /// A `text/plain` answer.
    pub fn text(status: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// What the endpoint serves: the VM behind one control API socket.
#[derive(Debug)]
pub struct Routes {
    /// The launch spec's control API socket.
    pub api_socket: PathBuf,
    /// The labels every metric carries.
    pub identity: metrics::Identity,
}

impl Routes {
    /// The answer to `GET path`.
    pub fn answer(&self, path: &str) -> Reply {
        match path {
            "/readyz" => readiness::readyz(&self.api_socket),
            "/metrics" => metrics::scrape(&self.api_socket, &self.identity),
            _ => Reply::text(
                "404 Not Found",
                "only GET /readyz and GET /metrics are served here\n",
            ),
        }
    }
}

/// Binds `addr` and serves `routes` from a background thread for the rest of the process;
/// `purpose` names the listener in errors and logs. Returns the bound address (port 0 picks
/// one).
pub fn serve(addr: SocketAddr, purpose: &'static str, routes: Arc<Routes>) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for {purpose} on {addr}"))?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("{purpose} listener address"))?;
    crate::tcp_service::serve(listener, MAX_CONNECTIONS, "vireo-http", move |conn| {
        answer(conn, &routes)
    })?;
    tracing::info!(address = %bound, "{purpose}: GET /readyz, GET /metrics");
    Ok(bound)
}

/// Reads one request head from `conn` and answers it.
fn answer(mut conn: TcpStream, routes: &Routes) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let reply = match request_path(&head) {
        Some(path) => routes.answer(path),
        None => Reply::text("400 Bad Request", "not an HTTP GET request\n"),
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    let _ = conn
        .write_all(head.as_bytes())
        .and_then(|()| conn.write_all(reply.body.as_bytes()));
}

/// The path of an HTTP `GET` request head (`GET /readyz HTTP/1.1`), if it is one, without
/// a query string.
fn request_path(head: &[u8]) -> Option<&str> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut words = line.split(' ');
    let (method, target, version) = (words.next()?, words.next()?, words.next()?);
    let path = target.split('?').next()?;
    (method == "GET" && version.starts_with("HTTP/1.") && words.next().is_none()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::request_path;

    #[test]
    fn only_well_formed_gets_have_a_path() {
        assert_eq!(
            request_path(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("/readyz")
        );
        assert_eq!(request_path(b"GET /other HTTP/1.0\r\n\r\n"), Some("/other"));
        assert_eq!(
            request_path(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            Some("/metrics")
        );
        assert_eq!(request_path(b"POST /readyz HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_path(b"GET /readyz\r\n\r\n"), None);
        assert_eq!(request_path(b"\xff\xfe garbage"), None);
        assert_eq!(request_path(b""), None);
    }
}
