//! One viewer: a reader thread (the handshake, then the viewer's messages)
//! and a writer thread (framebuffer updates), sharing only a small
//! [`Link`]: the latest pixel format and encodings and one pending update
//! request, into which further requests are merged. So a flood of requests
//! costs no memory, and a viewer that never reads blocks only its writer.
//!
//! ```text
//!  socket ──► reader: Handshake, ClientMessage::parse ──► InputSink (keys, pointer)
//!                │ merges requests, format, encodings
//!                ▼
//!              Link (Mutex + Condvar, never held across I/O)
//!                │
//!  socket ◄── writer: waits for a request, then for display changes, encodes, writes
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::auth;
use super::encode::{self, Encoder, Encodings};
use super::protocol::{
    ClientMessage, Handshake, PixelFormat, ProtocolError, Security, ServerInit,
    ENCODING_DESKTOP_SIZE, ENCODING_QEMU_EXT_KEY, SERVER_VERSION,
};
use super::{RfbError, ServerShared};
use crate::display::{Geometry, Key, Rect};

/// How long a viewer may take over its whole handshake (version to
/// ClientInit), so a slow connection cannot hold a slot for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection that gave a wrong password waits before it is told
/// and closed (slows brute force down without blocking anyone else).
pub const AUTH_FAILURE_DELAY: Duration = Duration::from_secs(1);
/// How often a writer waiting for display changes looks at its viewer's
/// new requests and at the server stopping.
const POLL: Duration = Duration::from_millis(50);
/// Encoded bytes a writer gathers before writing them out.
const WRITE_CHUNK: usize = 256 * 1024;

/// A viewer's connection, TCP or Unix.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub(crate) fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    /// Shuts both directions (wakes any thread blocked on the socket).
    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    pub(crate) fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }

    pub(crate) fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    pub(crate) fn peer(&self) -> String {
        match self {
            Stream::Tcp(s) => s
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp:?".into()),
            Stream::Unix(_) => "unix".into(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A FramebufferUpdateRequest not yet answered (requests merged into one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    incremental: bool,
    rect: Rect,
}

/// The smallest rectangle holding both (coordinates saturate at u16).
fn union(a: Rect, b: Rect) -> Rect {
    let x0 = a.x.min(b.x);
    let y0 = a.y.min(b.y);
    let x1 = (u32::from(a.x) + u32::from(a.w)).max(u32::from(b.x) + u32::from(b.w));
    let y1 = (u32::from(a.y) + u32::from(a.h)).max(u32::from(b.y) + u32::from(b.h));
    let side = |lo: u16, hi: u32| (hi - u32::from(lo)).min(u32::from(u16::MAX)) as u16;
    Rect {
        x: x0,
        y: y0,
        w: side(x0, x1),
        h: side(y0, y1),
    }
}

/// The pixels both share.
fn intersect(a: Rect, b: Rect) -> Option<Rect> {
    let x0 = u32::from(a.x.max(b.x));
    let y0 = u32::from(a.y.max(b.y));
    let x1 = (u32::from(a.x) + u32::from(a.w)).min(u32::from(b.x) + u32::from(b.w));
    let y1 = (u32::from(a.y) + u32::from(a.h)).min(u32::from(b.y) + u32::from(b.h));
    (x1 > x0 && y1 > y0).then(|| Rect {
        x: x0 as u16,
        y: y0 as u16,
        w: (x1 - x0) as u16,
        h: (y1 - y0) as u16,
    })
}

/// Whether `outer` holds all of `inner`.
fn contains(outer: Rect, inner: Rect) -> bool {
    intersect(outer, inner) == Some(inner)
}

impl Request {
    fn merge(self, other: Option<Request>) -> Request {
        match other {
            None => self,
            Some(o) => Request {
                incremental: self.incremental && o.incremental,
                rect: union(self.rect, o.rect),
            },
        }
    }
}

/// What the reader tells the writer.
#[derive(Debug)]
struct Wants {
    request: Option<Request>,
    format: PixelFormat,
    encodings: Encodings,
    /// Bumped on every message that matters to the writer.
    seq: u64,
    closed: bool,
}

/// The state a viewer's reader and writer share.
#[derive(Debug)]
struct Link {
    wants: Mutex<Wants>,
    cond: Condvar,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Wants> {
        self.wants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut Wants)) {
        let mut w = self.lock();
        f(&mut w);
        w.seq = w.seq.wrapping_add(1);
        drop(w);
        self.cond.notify_all();
    }
}

/// Decrements the authenticated-viewer count when the viewer goes.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one viewer until it leaves, breaks the protocol or the server
/// stops; returns why it ended (`Ok` for a clean close).
pub(crate) fn serve(shared: &Arc<ServerShared>, mut stream: Stream) -> Result<(), RfbError> {
    stream.write_all(SERVER_VERSION)?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let security = match &shared.config.password {
        Some(password) => Security::VncAuth {
            password: password.clone(),
            challenge: auth::new_challenge()?,
        },
        None => Security::None,
    };
    let g = shared.display.geometry();
    let init = ServerInit {
        width: g.width as u16,
        height: g.height as u16,
        name: shared.config.name.clone(),
    };
    let mut hs = Handshake::new(security, init);
    let mut buf = Vec::with_capacity(4096);
    let mut pos = 0;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while !hs.is_done() {
        match hs.step(&buf[pos..], &mut out) {
            Ok(Some(n)) => pos += n,
            Ok(None) => {
                stream.write_all(&out)?;
                out.clear();
                buf.drain(..pos);
                pos = 0;
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(RfbError::HandshakeTimeout);
                }
                stream.set_read_timeout(Some(left))?;
                let n = match stream.read(&mut chunk) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Err(RfbError::HandshakeTimeout)
                    }
                    Err(e) => return Err(e.into()),
                };
                if n == 0 {
                    return Err(RfbError::ClosedInHandshake);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) => {
                if e == ProtocolError::AuthFailed {
                    shared.sleep_unless_stopped(AUTH_FAILURE_DELAY);
                }
                let _ = stream.write_all(&out);
                return Err(e.into());
            }
        }
    }
    // Counted before ServerInit goes out, so a viewer that has read it is
    // already in `clients()`.
    shared.authenticated.fetch_add(1, Ordering::SeqCst);
    let _counted = Counted(&shared.authenticated);
    stream.write_all(&out)?;
    stream.set_read_timeout(None)?;
    buf.drain(..pos);

    let link = Arc::new(Link {
        wants: Mutex::new(Wants {
            request: None,
            format: PixelFormat::SERVER,
            encodings: Encodings::default(),
            seq: 0,
            closed: false,
        }),
        cond: Condvar::new(),
    });
    let writer_stream = stream.try_clone()?;
    let writer = {
        let (shared, link) = (shared.clone(), link.clone());
        std::thread::Builder::new()
            .name("vnc-writer".into())
            .spawn(move || {
                let mut stream = writer_stream;
                let r = write_updates(&shared, &link, &mut stream);
                // Whatever ended the writer ends the viewer (and wakes the reader).
                link.update(|w| w.closed = true);
                stream.shutdown();
                r
            })?
    };
    let result = read_messages(shared, &link, &mut stream, buf);
    link.update(|w| w.closed = true);
    stream.shutdown();
    let written = writer.join().unwrap_or(Ok(()));
    match (result, written) {
        (Err(e), _) => Err(e),
        // A writer error (say, a reset while sending) also ends the reader;
        // report it only if the reader saw nothing worse.
        (Ok(()), Err(RfbError::Io(_))) | (Ok(()), Ok(())) => Ok(()),
        (Ok(()), Err(e)) => Err(e),
    }
}

/// The reader: parses messages until the viewer leaves or errs.
fn read_messages(
    shared: &ServerShared,
    link: &Link,
    stream: &mut Stream,
    mut buf: Vec<u8>,
) -> Result<(), RfbError> {
    let g = shared.display.geometry();
    let mut chunk = vec![0u8; 8192];
    // Bytes of cut text still to discard.
    let mut skip: usize = 0;
    loop {
        let mut pos = 0;
        loop {
            if skip > 0 {
                let n = skip.min(buf.len() - pos);
                pos += n;
                skip -= n;
                if skip > 0 {
                    break;
                }
            }
            let Some((msg, n)) = ClientMessage::parse(&buf[pos..])? else {
                break;
            };
            pos += n;
            match msg {
                ClientMessage::SetPixelFormat(pf) => link.update(|w| w.format = pf),
                ClientMessage::SetEncodings(list) => {
                    let e = Encodings::from_list(&list);
                    link.update(|w| w.encodings = e);
                }
                ClientMessage::FramebufferUpdateRequest { incremental, rect } => {
                    let req = Request { incremental, rect };
                    link.update(|w| w.request = Some(req.merge(w.request)));
                }
                ClientMessage::KeyEvent { down, keysym } => {
                    shared.input.key(Key::Keysym(keysym), down);
                }
                ClientMessage::PointerEvent { buttons, x, y } => {
                    let x = u32::from(x).min(g.width - 1) as u16;
                    let y = u32::from(y).min(g.height - 1) as u16;
                    shared.input.pointer(x, y, buttons);
                }
                ClientMessage::ClientCutText { len } => skip = len as usize,
                ClientMessage::QemuKeyEvent {
                    down,
                    keysym,
                    keycode,
                } => {
                    let key = if keycode != 0 {
                        Key::Scancode(keycode)
                    } else {
                        Key::Keysym(keysym)
                    };
                    shared.input.key(key, down);
                }
            }
        }
        buf.drain(..pos);
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            if buf.is_empty() && skip == 0 {
                return Ok(());
            }
            return Err(RfbError::ClosedMidMessage);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The writer: answers requests with updates until the link closes.
fn write_updates(shared: &ServerShared, link: &Link, stream: &mut Stream) -> Result<(), RfbError> {
    let display = &*shared.display;
    let mut encoder = Encoder::new();
    let mut sent_gen = 0u64;
    // Changes seen but outside the requests answered so far.
    let mut deferred: Option<Rect> = None;
    let mut announced_ext_key = false;
    let mut told: Geometry = display.geometry();
    let mut out: Vec<u8> = Vec::new();
    'next: loop {
        let (req, format, encodings, seq) = {
            let mut w = link.lock();
            loop {
                if w.closed || shared.stopping() {
                    return Ok(());
                }
                if let Some(r) = w.request.take() {
                    break (r, w.format, w.encodings, w.seq);
                }
                w = link
                    .cond
                    .wait_timeout(w, POLL * 4)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
        };
        let g = display.geometry();
        let screen = Rect {
            x: 0,
            y: 0,
            w: g.width as u16,
            h: g.height as u16,
        };
        let ext_key = encodings.qemu_ext_key && !announced_ext_key;
        let resize = encodings.desktop_size && g != told;
        let rects: Vec<Rect> = if !req.incremental {
            if contains(req.rect, screen) {
                sent_gen = display.changes_since(sent_gen).0;
                deferred = None;
            }
            req.rect.clip(g).into_iter().collect()
        } else {
            loop {
                let (gen, changed) = display.changes_since(sent_gen);
                sent_gen = gen;
                let before = deferred.take();
                let mut send = Vec::new();
                for c in changed.into_iter().chain(before) {
                    if let Some(i) = intersect(c, req.rect) {
                        send.push(i);
                    }
                    if !contains(req.rect, c) {
                        deferred = Some(deferred.map_or(c, |d| union(d, c)));
                    }
                }
                if !send.is_empty() || ext_key || resize {
                    break send;
                }
                // Nothing to send yet: wait for the display, looking at the
                // viewer every POLL (no lock held while waiting).
                display.wait_for_change(sent_gen, POLL);
                let mut w = link.lock();
                if w.closed || shared.stopping() {
                    return Ok(());
                }
                if w.seq != seq {
                    w.request = Some(req.merge(w.request));
                    continue 'next;
                }
            }
        };
        let bands: Vec<Rect> = rects.iter().flat_map(|r| encode::bands(*r)).collect();
        let pseudo = usize::from(ext_key) + usize::from(resize);
        // At most 64 × 64 tiles of at most 64 rows each: far below u16::MAX.
        let count = u16::try_from(bands.len() + pseudo).unwrap_or(u16::MAX);
        out.clear();
        encode::update_header(count, &mut out);
        if ext_key {
            encode::rect_header(0, 0, 0, 0, ENCODING_QEMU_EXT_KEY, &mut out);
            announced_ext_key = true;
        }
        if resize {
            encode::rect_header(0, 0, screen.w, screen.h, ENCODING_DESKTOP_SIZE, &mut out);
            told = g;
        }
        for band in bands.into_iter().take(usize::from(count) - pseudo) {
            encoder.encode(display, band, &format, encodings.pixels, &mut out)?;
            if out.len() >= WRITE_CHUNK {
                stream.write_all(&out)?;
                out.clear();
            }
        }
        stream.write_all(&out)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(x: u16, y: u16, w: u16, h: u16) -> Rect {
        Rect { x, y, w, h }
    }

    #[test]
    fn rect_arithmetic() {
        assert_eq!(union(r(0, 0, 10, 10), r(20, 5, 5, 20)), r(0, 0, 25, 25));
        assert_eq!(
            union(r(65000, 0, 1000, 1), r(0, 0, 1, 1)),
            r(0, 0, u16::MAX, 1)
        );
        assert_eq!(
            intersect(r(0, 0, 10, 10), r(5, 5, 10, 10)),
            Some(r(5, 5, 5, 5))
        );
        assert_eq!(intersect(r(0, 0, 10, 10), r(10, 0, 10, 10)), None);
        assert!(contains(r(0, 0, 10, 10), r(2, 2, 3, 3)));
        assert!(!contains(r(0, 0, 10, 10), r(8, 8, 3, 3)));
        let a = Request {
            incremental: true,
            rect: r(0, 0, 1, 1),
        };
        let b = Request {
            incremental: false,
            rect: r(5, 5, 1, 1),
        };
        assert_eq!(
            a.merge(Some(b)),
            Request {
                incremental: false,
                rect: r(0, 0, 6, 6)
            }
        );
    }
}
