//! `vireo launch --forward LISTEN=UNIX_PATH`: local TCP ports relayed to unix sockets.
//!
//! Kubernetes port-forwards only to TCP ports of a pod, while the VMM's control API and
//! serial console are unix sockets (`/var/run/vireo/api.sock`, `/var/run/vireo/serial.sock`).
//! Each forward binds its TCP address at startup (a bind failure is a startup error) and,
//! for each accepted connection, connects to the unix socket — which may not exist yet (the
//! VM is still being built): then the TCP connection is closed — and copies bytes both ways.
//!
//! Each direction has its own thread. The end of one direction's input (EOF) is passed on as
//! a shutdown of the other socket's write side, so a client that half-closes still gets the
//! answer; once the unix side ends, or either direction fails, both sockets are shut down.
//! At most [`MAX_CONNECTIONS`] connections per forward are relayed at once (more are closed
//! at once), and a peer that stops reading or writing holds up only its own connection's
//! threads.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result};

/// Connections relayed at once per forward; more are closed without being relayed.
pub const MAX_CONNECTIONS: usize = 16;
/// The copy buffer of one direction.
const BUF_BYTES: usize = 16 * 1024;

/// One `--forward LISTEN=UNIX_PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The TCP address to listen on.
    pub listen: SocketAddr,
    /// The unix socket each connection is relayed to (absolute).
    pub target: PathBuf,
}

impl FromStr for Forward {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((listen, target)) = s.split_once('=') else {
            return Err(format!(
                "'{s}' is not LISTEN=UNIX_PATH (e.g. 127.0.0.1:8101=/var/run/vireo/api.sock)"
            ));
        };
        let listen = listen.parse().map_err(|e| {
            format!("'{listen}' is not a TCP address HOST:PORT (e.g. 127.0.0.1:8101): {e}")
        })?;
        let target = PathBuf::from(target);
        if !target.is_absolute() {
            return Err(format!(
                "'{}' is not an absolute path to a unix socket",
                target.display()
            ));
        }
        Ok(Self { listen, target })
    }
}

/// Binds `fwd.listen` and relays its connections from a background thread for the rest of
/// the process. Returns the bound address (port 0 picks one).
pub fn start(fwd: &Forward) -> Result<SocketAddr> {
    let listener = TcpListener::bind(fwd.listen).with_context(|| {
        format!(
            "cannot listen on {} to forward to {}",
            fwd.listen,
            fwd.target.display()
        )
    })?;
    let bound = listener.local_addr().context("forward listener address")?;
    let target = fwd.target.clone();
    crate::tcp_service::serve(listener, MAX_CONNECTIONS, "vireo-forward", move |conn| {
        relay(conn, &target)
    })?;
    tracing::info!(address = %bound, target = %fwd.target.display(), "forwarding TCP to a unix socket");
    Ok(bound)
}

/// Relays `tcp` to a new connection to `target` until both directions have ended.
fn relay(tcp: TcpStream, target: &Path) {
    let unix = match UnixStream::connect(target) {
        Ok(unix) => unix,
        Err(e) => {
            tracing::debug!(target = %target.display(), error = %e, "forward: no unix socket; closing");
            return;
        }
    };
    let (tcp_in, unix_in) = match (tcp.try_clone(), unix.try_clone()) {
        (Ok(t), Ok(u)) => (t, u),
        _ => {
            tracing::warn!("forward: cannot clone a socket; closing");
            return;
        }
    };
    let upstream = std::thread::Builder::new()
        .name("vireo-fwd-up".into())
        .spawn(move || copy(tcp_in, unix, false));
    // The unix side's output back to the client, on this thread.
    copy(unix_in, tcp, true);
    match upstream {
        Ok(handle) => {
            let _ = handle.join();
        }
        Err(_) => tracing::warn!("forward: cannot start a copy thread"),
    }
}

/// Socket halves [`copy`] moves bytes between.
trait Half: Read + Write {
    fn shutdown_half(&self, how: Shutdown);
}

impl Half for TcpStream {
    fn shutdown_half(&self, how: Shutdown) {
        let _ = self.shutdown(how);
    }
}

impl Half for UnixStream {
    fn shutdown_half(&self, how: Shutdown) {
        let _ = self.shutdown(how);
    }
}

/// Copies `from` into `to` until `from` ends or either fails. At EOF, shuts down `to`'s write
/// side, or both sockets entirely if `close_both_at_eof`; after an error, both entirely
/// (which ends the other direction's thread too).
fn copy(mut from: impl Half, mut to: impl Half, close_both_at_eof: bool) {
    let mut buf = vec![0u8; BUF_BYTES];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                if close_both_at_eof {
                    from.shutdown_half(Shutdown::Both);
                    to.shutdown_half(Shutdown::Both);
                } else {
                    to.shutdown_half(Shutdown::Write);
                }
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    from.shutdown_half(Shutdown::Both);
    to.shutdown_half(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_values() {
        assert_eq!(
            "127.0.0.1:8101=/var/run/vireo/api.sock".parse(),
            Ok(Forward {
                listen: "127.0.0.1:8101".parse().expect("addr"),
                target: "/var/run/vireo/api.sock".into(),
            })
        );
        assert_eq!(
            "[::1]:0=/a=b.sock".parse::<Forward>().map(|f| f.target),
            Ok(PathBuf::from("/a=b.sock")),
            "the path may hold '='"
        );
        let err = |s: &str| s.parse::<Forward>().expect_err(s);
        assert!(err("127.0.0.1:8101").contains("is not LISTEN=UNIX_PATH"));
        assert!(err("localhost:8101=/a.sock").contains("is not a TCP address"));
        assert!(err("127.0.0.1=/a.sock").contains("is not a TCP address"));
        assert!(err("127.0.0.1:8101=api.sock").contains("is not an absolute path"));
        assert!(err("127.0.0.1:8101=").contains("is not an absolute path"));
    }
}
