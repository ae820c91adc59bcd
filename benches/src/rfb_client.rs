//! A minimal RFB (VNC) viewer for benchmarks: connects with security type
//! None, asks for one encoding, requests full or incremental updates of
//! the whole screen and reads them, counting bytes and rectangles and (for
//! Raw) keeping the pixels. Understands Raw, ZRLE (skipped by its length,
//! not decoded) and the DesktopSize / QEMU extended key pseudo-rectangles.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Raw encoding number.
pub const RAW: i32 = 0;
/// ZRLE encoding number.
pub const ZRLE: i32 = 16;
const DESKTOP_SIZE: i32 = -223;
const QEMU_EXT_KEY: i32 = -258;

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One rectangle of an update.
#[derive(Debug, Clone)]
pub struct UpdateRect {
    /// Left edge.
    pub x: u16,
    /// Top edge.
    pub y: u16,
    /// Width.
    pub w: u16,
    /// Height.
    pub h: u16,
    /// Encoding number.
    pub encoding: i32,
    /// For Raw: the pixels, 4 bytes each (server format, BGRX), row by row.
    pub pixels: Vec<u8>,
}

/// One FramebufferUpdate as received.
#[derive(Debug, Clone, Default)]
pub struct Update {
    /// Bytes the message took on the wire.
    pub bytes: usize,
    /// Rectangles, pseudo-rectangles included.
    pub rects: Vec<UpdateRect>,
}

/// A connected viewer (handshake done, server pixel format kept).
pub struct RfbClient {
    conn: Conn,
    width: u16,
    height: u16,
    name: String,
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl RfbClient {
    /// Connects over TCP (`host:port`) and does the 3.8 handshake.
    pub fn connect_tcp(addr: &str) -> io::Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Self::handshake(Conn::Tcp(s))
    }

    /// Connects over a Unix socket and does the 3.8 handshake.
    pub fn connect_unix(path: &Path) -> io::Result<Self> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Self::handshake(Conn::Unix(s))
    }

    fn handshake(mut conn: Conn) -> io::Result<Self> {
        let mut version = [0u8; 12];
        conn.read_exact(&mut version)?;
        if &version[..4] != b"RFB " {
            return Err(bad(format!("not an RFB server: {version:?}")));
        }
        conn.write_all(b"RFB 003.008\n")?;
        let mut n = [0u8; 1];
        conn.read_exact(&mut n)?;
        let mut types = vec![0u8; usize::from(n[0])];
        conn.read_exact(&mut types)?;
        if !types.contains(&1) {
            return Err(bad(format!(
                "server does not offer security None: {types:?}"
            )));
        }
        conn.write_all(&[1])?;
        let mut result = [0u8; 4];
        conn.read_exact(&mut result)?;
        if result != [0; 4] {
            return Err(bad("security handshake failed".into()));
        }
        conn.write_all(&[1])?; // shared
        let mut init = [0u8; 24];
        conn.read_exact(&mut init)?;
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
        let mut name = vec![0u8; name_len.min(4096) as usize];
        conn.read_exact(&mut name)?;
        if init[4] != 32 {
            return Err(bad(format!("server pixel format has {} bpp", init[4])));
        }
        Ok(Self {
            conn,
            width: u16::from_be_bytes([init[0], init[1]]),
            height: u16::from_be_bytes([init[2], init[3]]),
            name: String::from_utf8_lossy(&name).into_owned(),
        })
    }

    /// The screen size from ServerInit.
    pub fn geometry(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    /// The desktop name from ServerInit.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends SetEncodings with just `encoding` (e.g. [`RAW`] or [`ZRLE`]).
    pub fn set_encoding(&mut self, encoding: i32) -> io::Result<()> {
        let mut m = vec![2, 0, 0, 1];
        m.extend_from_slice(&encoding.to_be_bytes());
        self.conn.write_all(&m)
    }

    /// Requests an update of the whole screen.
    pub fn request(&mut self, incremental: bool) -> io::Result<()> {
        let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
        m.extend_from_slice(&self.width.to_be_bytes());
        m.extend_from_slice(&self.height.to_be_bytes());
        self.conn.write_all(&m)
    }

    /// Bytes the server has sent that this viewer has not read yet (`FIONREAD` on the
    /// socket): how far a viewer that stopped reading is behind.
    pub fn unread_bytes(&self) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let fd = match &self.conn {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
        };
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer, which is valid.
        if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn read_vec(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        self.conn.read_exact(&mut v)?;
        Ok(v)
    }

    /// Reads the next FramebufferUpdate (other server messages are errors).
    pub fn read_update(&mut self) -> io::Result<Update> {
        let h = self.read_vec(4)?;
        if h[0] != 0 {
            return Err(bad(format!(
                "expected FramebufferUpdate, got message {}",
                h[0]
            )));
        }
        let count = u16::from_be_bytes([h[2], h[3]]);
        let mut update = Update {
            bytes: 4,
            rects: Vec::with_capacity(usize::from(count)),
        };
        for _ in 0..count {
            let r = self.read_vec(12)?;
            update.bytes += 12;
            let v = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
            let mut rect = UpdateRect {
                x: v(0),
                y: v(2),
                w: v(4),
                h: v(6),
                encoding: i32::from_be_bytes([r[8], r[9], r[10], r[11]]),
                pixels: Vec::new(),
            };
            match rect.encoding {
                RAW => {
                    rect.pixels = self.read_vec(usize::from(rect.w) * usize::from(rect.h) * 4)?;
                    update.bytes += rect.pixels.len();
                }
                ZRLE => {
                    let len = self.read_vec(4)?;
                    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                    let got = io::copy(&mut (&mut self.conn).take(len as u64), &mut io::sink())?;
                    if got != len as u64 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("ZRLE rectangle cut short: {got} of {len} bytes"),
                        ));
                    }
                    update.bytes += 4 + len;
                }
                DESKTOP_SIZE => {
                    self.width = rect.w;
                    self.height = rect.h;
                }
                QEMU_EXT_KEY => {}
                other => return Err(bad(format!("unexpected encoding {other}"))),
            }
            update.rects.push(rect);
        }
        Ok(update)
    }
}
