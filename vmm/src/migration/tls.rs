//! Mutually-authenticated TLS 1.3 over TCP, the transport for live migration.
//!
//! Every node has a [`TlsFiles`] triple: the CA that signs every node's
//! certificate, its own certificate chain and its private key. Both ends
//! present their certificate and both check the other's against the CA, so a
//! migration stream is only ever opened between two nodes of the same PKI.
//!
//! ```text
//!   source node (client)                           destination node (server)
//!   TlsFiles { ca, cert, key }                     TlsFiles { ca, cert, key }
//!        │                                                │
//!   TcpStream::connect ─────────────── TCP ─────────▶ TcpListener::accept
//!        │                                                │
//!   connect(tcp, "dst-host", &files) ◀── TLS 1.3 ──▶ accept(tcp, &files)
//!     server's cert: signed by ca.pem                   client's cert: signed
//!     and valid for "dst-host"                          by ca.pem (required)
//!        │          ◀──────── 1-byte "accepted" ─────────  │
//!        ▼                                                ▼
//!   TlsStream (Read + Write) ◀═══ encrypted bytes ═══▶ TlsStream
//! ```
//!
//! [`connect`] and [`accept`] return only after the handshake is complete, so
//! a refused certificate is an error there and not at the first read or
//! write. In TLS 1.3 the client finishes its half of the handshake before the
//! server has checked the client's certificate; to let the client learn of a
//! refusal inside [`connect`], the server sends one confirmation byte once it
//! has accepted the client and the client waits for it. Both ends must
//! therefore use this module.
//!
//! Timeouts are the caller's: set them on the [`TcpStream`] before calling
//! [`connect`] / [`accept`] (they apply to the handshake) or later through
//! [`TlsStream::tcp`]. There is no session resumption: every connection does
//! a full handshake, with the PEM files read anew.

use std::fmt;
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, RootCertStore,
    ServerConfig, ServerConnection, StreamOwned,
};

/// The byte the server sends once it has accepted the client's certificate.
const ACCEPTED: u8 = 0x01;

/// Bytes read from the socket at a time: rustls asks for a few KiB per read,
/// so without this a bulk receiver would make one syscall per TLS record.
const SOCKET_READ_BUFFER: usize = 256 * 1024;

/// Encrypted bytes rustls may hold before a write hands them to the socket:
/// each `write` call encrypts up to this much and sends it in one `writev`.
const SEND_BUFFER_LIMIT: usize = 256 * 1024;

/// PEM files of one node: the CA that signs every node's certificate, this
/// node's certificate chain and its private key.
///
/// The files are read by every [`connect`] / [`accept`] call, so they can be
/// replaced between connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate(s) (PEM `CERTIFICATE` blocks) that the peer's
    /// certificate must be signed by.
    pub ca: PathBuf,
    /// This node's certificate chain (PEM `CERTIFICATE` blocks, leaf first).
    pub cert: PathBuf,
    /// This node's private key (PEM PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// `DIR/ca.pem`, `DIR/cert.pem`, `DIR/key.pem`.
    ///
    /// Only builds the paths; nothing is read or checked until a connection
    /// is made.
    pub fn from_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

/// Why a TLS connection could not be set up.
///
/// File problems name the file; handshake problems say which side refused
/// what, as far as TLS lets this side know.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read (missing, no permission, ...).
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("{} is not valid PEM: {reason}", path.display())]
    InvalidPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser reported.
        reason: String,
    },
    /// A PEM file holds no block of the kind it should.
    #[error("{} contains no PEM {what}", path.display())]
    NothingInPem {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
    },
    /// A certificate in the CA file cannot be used as a trust anchor.
    #[error("the CA certificate in {} is not usable: {source}", path.display())]
    InvalidCa {
        /// The CA file.
        path: PathBuf,
        /// What rustls reported.
        source: rustls::Error,
    },
    /// This node's certificate chain and key cannot be used together (for
    /// example the key does not match the certificate, or is of an
    /// unsupported type).
    #[error(
        "the certificate in {} and the key in {} cannot be used: {source}",
        cert.display(),
        key.display()
    )]
    InvalidIdentity {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
        /// What rustls reported.
        source: rustls::Error,
    },
    /// The server name given to [`connect`] is neither a DNS name nor an IP
    /// address literal.
    #[error("{name:?} is neither a DNS name nor an IP address")]
    InvalidServerName {
        /// The name given.
        name: String,
    },
    /// rustls refused the configuration (should not happen with the fixed
    /// settings used here).
    #[error("cannot set up TLS: {source}")]
    Setup {
        /// What rustls reported.
        source: rustls::Error,
    },
    /// The peer's certificate is not signed by this node's CA.
    #[error("the peer's certificate is not signed by the CA in {}", ca.display())]
    PeerNotSignedByCa {
        /// This node's CA file.
        ca: PathBuf,
    },
    /// The server's certificate is signed by the CA but not valid for the
    /// name the client connected to.
    #[error("the peer's certificate is not valid for {name:?}")]
    PeerNameMismatch {
        /// The server name given to [`connect`].
        name: String,
    },
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    PeerNoCertificate,
    /// The peer's certificate is refused for another reason (expired, not
    /// yet valid, wrong key usage, ...).
    #[error("the peer's certificate is not acceptable: {source}")]
    PeerCertificate {
        /// What rustls reported.
        source: rustls::Error,
    },
    /// The peer refused this node's certificate.
    #[error(
        "the peer refused this node's certificate (TLS alert {alert:?}); is {} signed by the CA the peer trusts, and valid?",
        cert.display()
    )]
    RefusedByPeer {
        /// The TLS alert the peer sent.
        alert: AlertDescription,
        /// This node's certificate file.
        cert: PathBuf,
    },
    /// The handshake failed for a reason not covered above.
    #[error("TLS handshake failed: {source}")]
    Handshake {
        /// What rustls reported.
        source: rustls::Error,
    },
    /// The peer closed the connection before the handshake was complete.
    #[error("the peer closed the connection during the TLS handshake")]
    ClosedDuringHandshake,
    /// The server sent something other than the confirmation byte after the
    /// handshake.
    #[error("the peer sent {0:#04x} instead of the handshake confirmation (is it a Vireo migration endpoint?)")]
    BadConfirmation(u8),
    /// The socket failed during the handshake (including a timeout set on
    /// it).
    #[error("I/O error during the TLS handshake: {source}")]
    Io {
        /// The socket error.
        source: io::Error,
    },
}

/// The socket under rustls: reads go through a large buffer so a bulk
/// receiver makes few syscalls; writes go straight to the socket.
struct Socket {
    reader: BufReader<TcpStream>,
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reader.get_mut().write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.reader.get_mut().write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.reader.get_mut().flush()
    }
}

enum Inner {
    Client(StreamOwned<ClientConnection, Socket>),
    Server(StreamOwned<ServerConnection, Socket>),
}

/// A TLS session over TCP after a completed handshake in which both sides
/// presented certificates signed by the CA.
///
/// Implements [`Read`] and [`Write`]; is [`Send`]. A `write` encrypts up to
/// 256 KiB of the caller's buffer and hands it to the socket before
/// returning; [`Write::flush`] returns once everything written has been
/// handed to the socket. Read and write from one thread at a time (the
/// stream is not split into halves).
pub struct TlsStream {
    inner: Inner,
}

impl TlsStream {
    /// The TCP socket underneath (for timeouts, shutdown).
    ///
    /// Reading or writing it directly would corrupt the TLS session.
    pub fn tcp(&self) -> &TcpStream {
        match &self.inner {
            Inner::Client(s) => s.sock.reader.get_ref(),
            Inner::Server(s) => s.sock.reader.get_ref(),
        }
    }
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.inner {
            Inner::Client(_) => "client",
            Inner::Server(_) => "server",
        };
        f.debug_struct("TlsStream")
            .field("side", &side)
            .field("local", &self.tcp().local_addr().ok())
            .field("peer", &self.tcp().peer_addr().ok())
            .finish()
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Client(s) => s.read(buf),
            Inner::Server(s) => s.read(buf),
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Client(s) => s.write(buf),
            Inner::Server(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Client(s) => s.write_vectored(bufs),
            Inner::Server(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Client(s) => s.flush(),
            Inner::Server(s) => s.flush(),
        }
    }
}

/// Client side: completes the handshake on `tcp`, verifying the server's
/// certificate against the CA for `server_name` (a DNS name or an IP address
/// literal such as 127.0.0.1), presenting this node's certificate.
///
/// Returns only once the server has also accepted this node's certificate;
/// any refusal, by either side, is an error here.
pub fn connect(tcp: TcpStream, server_name: &str, files: &TlsFiles) -> Result<TlsStream, TlsError> {
    let name =
        ServerName::try_from(server_name.to_owned()).map_err(|_| TlsError::InvalidServerName {
            name: server_name.to_owned(),
        })?;
    let roots = load_roots(&files.ca)?;
    let (chain, key) = load_identity(files)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Setup { source })?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|source| identity_error(files, source))?;
    config.resumption = Resumption::disabled();
    let mut conn = ClientConnection::new(Arc::new(config), name)
        .map_err(|source| TlsError::Setup { source })?;
    conn.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
    let mut stream = StreamOwned::new(conn, socket(tcp));
    let ctx = Ctx {
        files,
        server_name: Some(server_name),
    };
    handshake(&mut stream.conn, &mut stream.sock).map_err(|e| ctx.error(e))?;
    let mut confirmation = [0u8; 1];
    stream
        .read_exact(&mut confirmation)
        .map_err(|e| ctx.error(e))?;
    if confirmation[0] != ACCEPTED {
        return Err(TlsError::BadConfirmation(confirmation[0]));
    }
    Ok(TlsStream {
        inner: Inner::Client(stream),
    })
}

/// Server side: completes the handshake on `tcp`, requiring a client
/// certificate signed by the CA.
///
/// On success the client has been told it was accepted (see the module
/// documentation).
pub fn accept(tcp: TcpStream, files: &TlsFiles) -> Result<TlsStream, TlsError> {
    let roots = load_roots(&files.ca)?;
    let (chain, key) = load_identity(files)?;
    let provider = provider();
    // Client certificates are required: the builder allows no anonymous
    // clients unless told to.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::InvalidCa {
            path: files.ca.clone(),
            source: rustls::Error::General(e.to_string()),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Setup { source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| identity_error(files, source))?;
    config.send_tls13_tickets = 0;
    let mut conn =
        ServerConnection::new(Arc::new(config)).map_err(|source| TlsError::Setup { source })?;
    conn.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
    let mut stream = StreamOwned::new(conn, socket(tcp));
    let ctx = Ctx {
        files,
        server_name: None,
    };
    handshake(&mut stream.conn, &mut stream.sock).map_err(|e| ctx.error(e))?;
    stream
        .write_all(&[ACCEPTED])
        .and_then(|()| stream.flush())
        .map_err(|e| ctx.error(e))?;
    Ok(TlsStream {
        inner: Inner::Server(stream),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn socket(tcp: TcpStream) -> Socket {
    Socket {
        reader: BufReader::with_capacity(SOCKET_READ_BUFFER, tcp),
    }
}

/// Drives the handshake to its end, so that errors surface here.
fn handshake<C, S>(conn: &mut C, sock: &mut Socket) -> io::Result<()>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    while conn.is_handshaking() {
        conn.complete_io(sock)?;
    }
    // The last flight (e.g. the client's Finished) may still be queued.
    while conn.wants_write() {
        conn.write_tls(sock)?;
    }
    sock.flush()
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, what: &'static str, e: rustls::pki_types::pem::Error) -> TlsError {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NothingInPem {
            path: path.to_owned(),
            what,
        },
        other => TlsError::InvalidPem {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(TlsError::NothingInPem {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::InvalidCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

fn load_identity(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = load_certs(&files.cert)?;
    let pem = read_file(&files.key)?;
    let key =
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| pem_error(&files.key, "private key", e))?;
    Ok((chain, key))
}

fn identity_error(files: &TlsFiles, source: rustls::Error) -> TlsError {
    TlsError::InvalidIdentity {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    }
}

/// What a handshake error is reported against.
struct Ctx<'a> {
    files: &'a TlsFiles,
    /// The name the client checks the server's certificate for (client only).
    server_name: Option<&'a str>,
}

impl Ctx<'_> {
    /// Turns an I/O error from the handshake (rustls wraps its own errors in
    /// `io::Error`) into a [`TlsError`] that says who refused what.
    fn error(&self, err: io::Error) -> TlsError {
        let tls = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned();
        match tls {
            Some(tls) => self.tls_error(tls),
            None if err.kind() == io::ErrorKind::UnexpectedEof => TlsError::ClosedDuringHandshake,
            None => TlsError::Io { source: err },
        }
    }

    fn tls_error(&self, err: rustls::Error) -> TlsError {
        match &err {
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => TlsError::PeerNotSignedByCa {
                ca: self.files.ca.clone(),
            },
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => TlsError::PeerNameMismatch {
                name: self.server_name.unwrap_or_default().to_owned(),
            },
            rustls::Error::InvalidCertificate(_) => TlsError::PeerCertificate { source: err },
            rustls::Error::NoCertificatesPresented => TlsError::PeerNoCertificate,
            rustls::Error::AlertReceived(alert) if refuses_certificate(*alert) => {
                TlsError::RefusedByPeer {
                    alert: *alert,
                    cert: self.files.cert.clone(),
                }
            }
            _ => TlsError::Handshake { source: err },
        }
    }
}

/// Alerts a peer sends when it refuses our certificate (what rustls sends
/// for each certificate error; `DecryptError` is a bad signature on it).
fn refuses_certificate(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::DecryptError
            | AlertDescription::AccessDenied
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    /// Writes a fresh CA and, for each name, `DIR/<name>/{ca.pem,cert.pem,key.pem}`
    /// whose certificate is signed by that CA and valid for `localhost`,
    /// `127.0.0.1` and `::1`. Returns the CA's directory (`DIR/ca`).
    fn write_pki(dir: &Path, names: &[&str]) -> PathBuf {
        write_pki_with_ca_name(dir, "Vireo test CA", names)
    }

    /// [`write_pki`] with the CA's common name chosen: two CAs of the same
    /// name make a foreign certificate fail on its signature, two of
    /// different names on its unknown issuer.
    fn write_pki_with_ca_name(dir: &Path, ca_name: &str, names: &[&str]) -> PathBuf {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca_dir = dir.join("ca");
        std::fs::create_dir_all(&ca_dir).unwrap();
        std::fs::write(ca_dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(ca_dir.join("key.pem"), ca_key.serialize_pem()).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        for name in names {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ])
            .unwrap();
            params.distinguished_name.push(DnType::CommonName, *name);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &issuer).unwrap();
            let node = dir.join(name);
            std::fs::create_dir_all(&node).unwrap();
            std::fs::write(node.join("ca.pem"), ca_cert.pem()).unwrap();
            std::fs::write(node.join("cert.pem"), cert.pem()).unwrap();
            std::fs::write(node.join("key.pem"), key.serialize_pem()).unwrap();
        }
        ca_dir
    }

    /// Runs `accept` on a listener in a thread and `connect` in this one;
    /// returns both results.
    fn handshake_pair(
        server: TlsFiles,
        client: TlsFiles,
        server_name: &str,
    ) -> (Result<TlsStream, TlsError>, Result<TlsStream, TlsError>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let srv = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            accept(tcp, &server)
        });
        let tcp = TcpStream::connect(addr).unwrap();
        // A failed connect drops its socket, so a server still in its
        // handshake sees the alert or EOF rather than waiting forever.
        let c = connect(tcp, server_name, &client);
        let s = srv.join().unwrap();
        (s, c)
    }

    /// Deterministic, position-dependent test data (not all-equal bytes, so a
    /// lost or duplicated chunk is noticed).
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn same_ca_moves_64_mib_both_ways() {
        const LEN: usize = 64 << 20;
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path(), &["src", "dst"]);
        let server_files = TlsFiles::from_dir(&dir.path().join("dst"));
        let client_files = TlsFiles::from_dir(&dir.path().join("src"));

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let up = pattern(LEN, 1);
        let down = pattern(LEN, 2);
        let (up_expected, down_sent) = (up.clone(), down.clone());
        let srv = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let mut s = accept(tcp, &server_files).unwrap();
            let mut got = vec![0u8; LEN];
            s.read_exact(&mut got).unwrap();
            assert!(got == up_expected, "server received corrupted data");
            s.write_all(&down_sent).unwrap();
            s.flush().unwrap();
            // Wait for the client's goodbye so the socket stays open until
            // everything has been read.
            let mut bye = [0u8; 1];
            s.read_exact(&mut bye).unwrap();
            assert_eq!(bye, [0xBB]);
        });

        let tcp = TcpStream::connect(addr).unwrap();
        let mut c = connect(tcp, "127.0.0.1", &client_files).unwrap();
        c.write_all(&up).unwrap();
        c.flush().unwrap();
        let mut got = vec![0u8; LEN];
        c.read_exact(&mut got).unwrap();
        assert!(got == down, "client received corrupted data");
        c.write_all(&[0xBB]).unwrap();
        c.flush().unwrap();
        srv.join().unwrap();
    }

    #[test]
    fn stream_is_send_and_tcp_is_reachable() {
        fn is_send<T: Send>() {}
        is_send::<TlsStream>();
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path(), &["a", "b"]);
        let (s, c) = handshake_pair(
            TlsFiles::from_dir(&dir.path().join("a")),
            TlsFiles::from_dir(&dir.path().join("b")),
            "localhost",
        );
        let (s, c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.tcp().local_addr().unwrap(), c.tcp().peer_addr().unwrap());
        assert!(format!("{c:?}").contains("client"));
    }

    #[test]
    fn server_refuses_client_from_another_ca() {
        // The other CA has another name: the client's issuer is unknown.
        let dir = tempfile::tempdir().unwrap();
        write_pki(&dir.path().join("one"), &["dst"]);
        write_pki_with_ca_name(&dir.path().join("two"), "Other CA", &["src"]);
        let mut client = TlsFiles::from_dir(&dir.path().join("two/src"));
        // The client trusts the server's CA, but its own certificate is
        // signed by another CA.
        client.ca = dir.path().join("one/ca/ca.pem");
        let server = TlsFiles::from_dir(&dir.path().join("one/dst"));
        let (s, c) = handshake_pair(server.clone(), client.clone(), "127.0.0.1");
        match s {
            Err(TlsError::PeerNotSignedByCa { ca }) => assert_eq!(ca, server.ca),
            other => panic!("server: expected PeerNotSignedByCa, got {other:?}"),
        }
        match c {
            Err(TlsError::RefusedByPeer { cert, .. }) => assert_eq!(cert, client.cert),
            other => panic!("client: expected RefusedByPeer, got {other:?}"),
        }
    }

    #[test]
    fn client_refuses_server_from_another_ca() {
        // Both CAs have the same name: the server's certificate names the
        // client's CA as issuer but its signature does not verify.
        let dir = tempfile::tempdir().unwrap();
        write_pki(&dir.path().join("one"), &["src"]);
        write_pki(&dir.path().join("two"), &["dst"]);
        let client = TlsFiles::from_dir(&dir.path().join("one/src"));
        let mut server = TlsFiles::from_dir(&dir.path().join("two/dst"));
        // The server would accept the client, but its own certificate is
        // signed by a CA the client does not trust.
        server.ca = dir.path().join("one/ca/ca.pem");
        let (s, c) = handshake_pair(server.clone(), client.clone(), "127.0.0.1");
        match c {
            Err(TlsError::PeerNotSignedByCa { ca }) => assert_eq!(ca, client.ca),
            other => panic!("client: expected PeerNotSignedByCa, got {other:?}"),
        }
        match s {
            Err(TlsError::RefusedByPeer { cert, .. }) => assert_eq!(cert, server.cert),
            other => panic!("server: expected RefusedByPeer, got {other:?}"),
        }
        let msg = TlsError::PeerNotSignedByCa {
            ca: client.ca.clone(),
        }
        .to_string();
        assert!(msg.contains(&client.ca.display().to_string()), "{msg}");
    }

    #[test]
    fn client_refuses_wrong_server_name() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path(), &["src", "dst"]);
        let (s, c) = handshake_pair(
            TlsFiles::from_dir(&dir.path().join("dst")),
            TlsFiles::from_dir(&dir.path().join("src")),
            "other.example",
        );
        match c {
            Err(TlsError::PeerNameMismatch { name }) => assert_eq!(name, "other.example"),
            other => panic!("client: expected PeerNameMismatch, got {other:?}"),
        }
        assert!(matches!(s, Err(TlsError::RefusedByPeer { .. })), "{s:?}");
    }

    #[test]
    fn missing_or_garbage_pem_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path(), &["src", "dst"]);
        let good = TlsFiles::from_dir(&dir.path().join("src"));
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "this is not PEM\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let missing = dir.path().join("nope/ca.pem");

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let tcp = || TcpStream::connect(addr).unwrap();

        // Each case fails before any TLS byte is sent, on either side.
        type Expected = fn(&TlsError) -> bool;
        let read_file: Expected = |e| matches!(e, TlsError::ReadFile { .. });
        let nothing: Expected = |e| matches!(e, TlsError::NothingInPem { .. });
        let invalid: Expected = |e| matches!(e, TlsError::InvalidPem { .. });
        let cases: Vec<(TlsFiles, &Path, Expected)> = vec![
            (
                TlsFiles {
                    ca: missing.clone(),
                    ..good.clone()
                },
                &missing,
                read_file,
            ),
            (
                TlsFiles {
                    cert: garbage.clone(),
                    ..good.clone()
                },
                &garbage,
                nothing,
            ),
            (
                TlsFiles {
                    key: garbage.clone(),
                    ..good.clone()
                },
                &garbage,
                nothing,
            ),
            (
                TlsFiles {
                    ca: broken.clone(),
                    ..good.clone()
                },
                &broken,
                invalid,
            ),
            // A certificate where the key should be: no key in it.
            (
                TlsFiles {
                    key: good.cert.clone(),
                    ..good.clone()
                },
                &good.cert,
                nothing,
            ),
        ];
        for (files, path, expected) in &cases {
            for err in [
                connect(tcp(), "127.0.0.1", files).unwrap_err(),
                accept(tcp(), files).unwrap_err(),
            ] {
                let msg = err.to_string();
                assert!(
                    msg.contains(&path.display().to_string()),
                    "error for {path:?} does not name it: {msg}"
                );
                assert!(expected(&err), "unexpected error for {path:?}: {err:?}");
            }
        }

        // A key that does not belong to the certificate.
        let mismatched = TlsFiles {
            key: dir.path().join("dst/key.pem"),
            ..good.clone()
        };
        let err = accept(tcp(), &mismatched).unwrap_err();
        assert!(matches!(err, TlsError::InvalidIdentity { .. }), "{err:?}");
    }

    #[test]
    fn invalid_server_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path(), &["src"]);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let err = connect(
            tcp,
            "not a name!",
            &TlsFiles::from_dir(&dir.path().join("src")),
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::InvalidServerName { .. }), "{err:?}");
    }
}
