//! Where migration bytes travel: a unix socket, TCP, or TCP with mutual TLS, named by a URL.
//!
//! ```text
//!  unix:/run/vireo/migrate.sock   same host; can carry file descriptors (local handover)
//!  tcp:10.0.0.2:6000              another host, plain
//!  tls:node-b.example:6000        another host; both sides present certificates of one CA
//! ```
//! A [`Conn`] is one connection, whichever kind; it has read and write timeouts so a stuck
//! peer ends the migration with an error instead of holding it (and the VM) forever, and a
//! [`Canceller`] that another thread can use to cut it at once.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::tls::{self, TlsFiles, TlsStream};

/// How long a read or write may wait for the peer before the migration fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The most file descriptors one message carries.
const MAX_FDS: usize = 16;

/// A parsed migration URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationUrl {
    /// `unix:/path`.
    Unix(PathBuf),
    /// `tcp:host:port`.
    Tcp(String),
    /// `tls:host:port`.
    Tls(String),
}

/// Why a connection could not be made.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The URL is not `unix:/path`, `tcp:host:port` or `tls:host:port`.
    #[error("bad migration URL {0:?}: expected unix:/path, tcp:host:port or tls:host:port")]
    BadUrl(String),
    /// A `tls:` URL without certificates.
    #[error("a tls: migration URL needs tls_dir (ca.pem, cert.pem, key.pem)")]
    NoTlsDir,
    /// Connecting, binding or accepting failed.
    #[error("{what} {url}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The URL.
        url: String,
        /// The OS error.
        source: io::Error,
    },
    /// The TLS handshake failed (e.g. a certificate not signed by the CA).
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

impl std::str::FromStr for MigrationUrl {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TransportError::BadUrl(s.to_owned());
        let host_port = |rest: &str| -> Result<String, TransportError> {
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad());
            }
            Ok(rest.to_owned())
        };
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() || p.contains('\0') {
                return Err(bad());
            }
            Ok(MigrationUrl::Unix(PathBuf::from(p)))
        } else if let Some(rest) = s.strip_prefix("tcp:") {
            Ok(MigrationUrl::Tcp(host_port(rest)?))
        } else if let Some(rest) = s.strip_prefix("tls:") {
            Ok(MigrationUrl::Tls(host_port(rest)?))
        } else {
            Err(bad())
        }
    }
}

impl std::fmt::Display for MigrationUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrationUrl::Unix(p) => write!(f, "unix:{}", p.display()),
            MigrationUrl::Tcp(a) => write!(f, "tcp:{a}"),
            MigrationUrl::Tls(a) => write!(f, "tls:{a}"),
        }
    }
}

/// One migration connection.
pub enum Conn {
    /// A unix socket (file descriptors can travel with the bytes).
    Unix {
        /// The socket.
        stream: UnixStream,
        /// Descriptors received and not yet taken.
        fds: Vec<OwnedFd>,
    },
    /// Plain TCP.
    Tcp(TcpStream),
    /// TCP with TLS.
    Tls(Box<TlsStream>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Unix { .. } => "Conn::Unix",
            Conn::Tcp(_) => "Conn::Tcp",
            Conn::Tls(_) => "Conn::Tls",
        })
    }
}

/// Cuts a connection from another thread (a cancel), making blocked reads and writes fail.
#[derive(Debug)]
pub struct Canceller(Option<OwnedFd>);

impl Canceller {
    /// Shuts the connection down both ways.
    pub fn cancel(&self) {
        if let Some(fd) = &self.0 {
            // SAFETY: shutdown on a socket descriptor we own a duplicate of.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

fn io_err<'a>(
    what: &'static str,
    url: &'a MigrationUrl,
) -> impl Fn(io::Error) -> TransportError + 'a {
    move |source| TransportError::Io {
        what,
        url: url.to_string(),
        source,
    }
}

fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Connects to the target at `url` (`tls_dir` for `tls:`).
pub fn connect(url: &MigrationUrl, tls_dir: Option<&Path>) -> Result<Conn, TransportError> {
    let conn = match url {
        MigrationUrl::Unix(path) => Conn::Unix {
            stream: UnixStream::connect(path).map_err(io_err("cannot connect to", url))?,
            fds: Vec::new(),
        },
        MigrationUrl::Tcp(addr) => Conn::Tcp(tcp_connect(addr, url)?),
        MigrationUrl::Tls(addr) => {
            let dir = tls_dir.ok_or(TransportError::NoTlsDir)?;
            let tcp = tcp_connect(addr, url)?;
            Conn::Tls(Box::new(tls::connect(
                tcp,
                host_of(addr),
                &TlsFiles::from_dir(dir),
            )?))
        }
    };
    conn.set_timeouts(Some(IO_TIMEOUT))
        .map_err(io_err("cannot set timeouts on", url))?;
    Ok(conn)
}

fn tcp_connect(addr: &str, url: &MigrationUrl) -> Result<TcpStream, TransportError> {
    let addrs = addr
        .to_socket_addrs()
        .map_err(io_err("cannot resolve", url))?;
    let mut last = io::Error::other("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, IO_TIMEOUT) {
            Ok(s) => {
                s.set_nodelay(true).map_err(io_err("cannot set up", url))?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(io_err("cannot connect to", url)(last))
}

/// A listening socket for one incoming migration.
#[derive(Debug)]
pub enum Listener {
    /// `unix:` (the socket file is removed when this is dropped).
    Unix(UnixListener, PathBuf),
    /// `tcp:` or `tls:`.
    Tcp(TcpListener, Option<PathBuf>),
}

/// Listens at `url` (`tls_dir` for `tls:`).
pub fn listen(url: &MigrationUrl, tls_dir: Option<&Path>) -> Result<Listener, TransportError> {
    match url {
        MigrationUrl::Unix(path) => {
            // A stale socket file from an earlier run would make bind fail.
            if std::fs::symlink_metadata(path)
                .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                .unwrap_or(false)
            {
                let _ = std::fs::remove_file(path);
            }
            let l = UnixListener::bind(path).map_err(io_err("cannot listen on", url))?;
            Ok(Listener::Unix(l, path.clone()))
        }
        MigrationUrl::Tcp(addr) => Ok(Listener::Tcp(
            TcpListener::bind(addr.as_str()).map_err(io_err("cannot listen on", url))?,
            None,
        )),
        MigrationUrl::Tls(addr) => {
            let dir = tls_dir.ok_or(TransportError::NoTlsDir)?;
            Ok(Listener::Tcp(
                TcpListener::bind(addr.as_str()).map_err(io_err("cannot listen on", url))?,
                Some(dir.to_owned()),
            ))
        }
    }
}

impl Listener {
    /// The TCP port bound (for `tcp:…:0` URLs), if TCP.
    pub fn port(&self) -> Option<u16> {
        match self {
            Listener::Tcp(l, _) => l.local_addr().ok().map(|a| a.port()),
            Listener::Unix(..) => None,
        }
    }

    /// A handle that makes a blocked [`Listener::accept`] return (with an error).
    pub fn canceller(&self) -> Canceller {
        let fd = match self {
            Listener::Unix(l, _) => l.as_raw_fd(),
            Listener::Tcp(l, _) => l.as_raw_fd(),
        };
        Canceller(dup(fd).ok())
    }

    /// Waits for the source to connect (and, for TLS, completes the handshake).
    pub fn accept(&self) -> Result<Conn, TransportError> {
        let url = MigrationUrl::Tcp("(listener)".into());
        let conn = match self {
            Listener::Unix(l, path) => {
                let (stream, _) = l.accept().map_err(|source| TransportError::Io {
                    what: "cannot accept on",
                    url: format!("unix:{}", path.display()),
                    source,
                })?;
                Conn::Unix {
                    stream,
                    fds: Vec::new(),
                }
            }
            Listener::Tcp(l, tls_dir) => {
                let (tcp, _) = l.accept().map_err(io_err("cannot accept on", &url))?;
                tcp.set_nodelay(true)
                    .map_err(io_err("cannot set up", &url))?;
                match tls_dir {
                    None => Conn::Tcp(tcp),
                    Some(dir) => {
                        tcp.set_read_timeout(Some(IO_TIMEOUT))
                            .map_err(io_err("cannot set up", &url))?;
                        Conn::Tls(Box::new(tls::accept(tcp, &TlsFiles::from_dir(dir))?))
                    }
                }
            }
        };
        conn.set_timeouts(Some(IO_TIMEOUT))
            .map_err(io_err("cannot set timeouts on", &url))?;
        Ok(conn)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we hold returns a new descriptor or -1.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

impl Conn {
    fn raw_fd(&self) -> RawFd {
        match self {
            Conn::Unix { stream, .. } => stream.as_raw_fd(),
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Tls(t) => t.tcp().as_raw_fd(),
        }
    }

    /// Sets the read and write timeouts (`None`: wait forever).
    pub fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Unix { stream, .. } => {
                stream.set_read_timeout(t)?;
                stream.set_write_timeout(t)
            }
            Conn::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Conn::Tls(s) => {
                s.tcp().set_read_timeout(t)?;
                s.tcp().set_write_timeout(t)
            }
        }
    }

    /// A handle another thread can cut this connection with.
    pub fn canceller(&self) -> Canceller {
        Canceller(dup(self.raw_fd()).ok())
    }

    /// Whether file descriptors can travel on this connection.
    pub fn carries_fds(&self) -> bool {
        matches!(self, Conn::Unix { .. })
    }

    /// Sends `bytes` with `fds` attached (unix sockets only).
    pub fn send_with_fds(&mut self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let Conn::Unix { stream, .. } = self else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "file descriptors travel only on unix: migrations",
            ));
        };
        let sent = stream
            .send_with_fds(&[bytes], fds)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        stream.write_all(&bytes[sent..])
    }

    /// Takes the file descriptors received so far (unix sockets only).
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        match self {
            Conn::Unix { fds, .. } => std::mem::take(fds),
            _ => Vec::new(),
        }
    }

    /// Shuts the connection down both ways.
    pub fn shutdown(&self) {
        let _ = match self {
            Conn::Unix { stream, .. } => stream.shutdown(Shutdown::Both),
            Conn::Tcp(s) => s.shutdown(Shutdown::Both),
            Conn::Tls(s) => s.tcp().shutdown(Shutdown::Both),
        };
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix { stream, fds } => {
                let mut raw = [0 as RawFd; MAX_FDS];
                let (n, nfds) = {
                    // SAFETY: the iovec covers `buf`, which recv_with_fds writes at most
                    // `buf.len()` bytes into.
                    let mut iov = [libc::iovec {
                        iov_base: buf.as_mut_ptr().cast(),
                        iov_len: buf.len(),
                    }];
                    // SAFETY: as above; `raw` has room for MAX_FDS descriptors.
                    unsafe { stream.recv_with_fds(&mut iov, &mut raw) }
                        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?
                };
                for fd in &raw[..nfds] {
                    // SAFETY: the kernel installed these descriptors for us; nothing else owns them.
                    fds.push(unsafe { OwnedFd::from_raw_fd(*fd) });
                }
                Ok(n)
            }
            Conn::Tcp(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix { stream, .. } => stream.write(buf),
            Conn::Tcp(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Unix { stream, .. } => stream.flush(),
            Conn::Tcp(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_are_named() {
        assert_eq!(
            "unix:/run/m.sock".parse::<MigrationUrl>().expect("unix"),
            MigrationUrl::Unix("/run/m.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:6000".parse::<MigrationUrl>().expect("tcp"),
            MigrationUrl::Tcp("127.0.0.1:6000".into())
        );
        assert_eq!(
            "tls:[::1]:6000".parse::<MigrationUrl>().expect("tls"),
            MigrationUrl::Tls("[::1]:6000".into())
        );
        for bad in [
            "http://x",
            "tcp:nohost",
            "tcp::80",
            "tcp:h:99999",
            "unix:",
            "",
        ] {
            let e = bad.parse::<MigrationUrl>().expect_err(bad);
            assert!(e.to_string().starts_with("bad migration URL"), "{e}");
        }
        assert_eq!(host_of("[::1]:6000"), "::1");
        assert_eq!(host_of("node-b:6000"), "node-b");
    }
}
