//! `vireo launch --ready-listen ADDR`: the launcher pod's readiness endpoint, for the kubelet's
//! `httpGet` probe.
//!
//! `GET /readyz` answers `200 ready` while the VM behind the launch spec's control API socket
//! is `Running`, and `503` with the reason otherwise (not built yet, paused, stopping, between
//! the boots of a reboot in place) — the same check as `vireo probe` ([`remote::probe`]), but
//! without a process per probe: an exec probe every second costs the node a container exec
//! per VM per second, which slowed the start of later pods on a busy node. Any other path is
//! `404`, anything that is not an HTTP request `400`.
//!
//! Each connection has its own thread and 1 s read and write timeouts, and at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once), so a client that connects
//! and sends nothing holds up neither the VM nor another prober.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::remote;

/// Connections served at once; more are closed without an answer.
pub const MAX_CONNECTIONS: usize = 8;
/// Read and write timeout of one connection.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest request head read.
const MAX_HEAD: usize = 4096;

/// Binds `addr` and serves the readiness endpoint for the VM behind `api_socket` from a
/// background thread for the rest of the process. Returns the bound address (port 0 picks one).
pub fn serve(addr: SocketAddr, api_socket: PathBuf) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for readiness probes on {addr}"))?;
    let bound = listener
        .local_addr()
        .context("readiness listener address")?;
    let api_socket = Arc::new(api_socket);
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("vireo-ready".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let (api_socket, busy) = (api_socket.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("vireo-ready-conn".into())
                    .spawn(move || {
                        answer(conn, &api_socket);
                        busy.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    tracing::warn!("cannot start a readiness connection thread");
                }
            }
        })
        .context("cannot start the readiness thread")?;
    tracing::info!(address = %bound, "readiness endpoint: GET /readyz");
    Ok(bound)
}

/// Reads one request head from `conn` and answers it.
fn answer(mut conn: TcpStream, api_socket: &std::path::Path) {
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
    let (status, body) = match request_path(&head) {
        Some("/readyz") => match remote::probe(api_socket) {
            Ok(()) => ("200 OK", "ready\n".to_owned()),
            Err(why) => ("503 Service Unavailable", format!("not ready: {why}\n")),
        },
        Some(_) => (
            "404 Not Found",
            "only GET /readyz is served here\n".to_owned(),
        ),
        None => ("400 Bad Request", "not an HTTP GET request\n".to_owned()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes());
}

/// The path of an HTTP `GET` request head (`GET /readyz HTTP/1.1`), if it is one.
fn request_path(head: &[u8]) -> Option<&str> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut words = line.split(' ');
    let (method, path, version) = (words.next()?, words.next()?, words.next()?);
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
        assert_eq!(request_path(b"POST /readyz HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_path(b"GET /readyz\r\n\r\n"), None);
        assert_eq!(request_path(b"\xff\xfe garbage"), None);
        assert_eq!(request_path(b""), None);
    }
}
