//! RFB (RFC 6143) wire format, sans I/O: the version and handshake state
//! machine a server runs for one viewer, and the parser of the messages a
//! viewer sends after it. Nothing here reads or writes a socket, takes a lock
//! or spawns a thread, so the fuzzer can drive it with arbitrary bytes.
//!
//! ```text
//!  server: "RFB 003.008\n"          client: "RFB 003.00x\n"
//!  3.3:  u32 security type (+ challenge)       3.7/3.8: [n, types…] ← client picks one
//!  VNC auth: 16-byte challenge → 16-byte DES response → SecurityResult
//!  ClientInit (shared flag) → ServerInit (geometry, pixel format, name)
//!  then ClientMessage::parse, one message at a time
//! ```

use super::auth;

/// The version string the server announces.
pub const SERVER_VERSION: &[u8; 12] = b"RFB 003.008\n";
/// Security type "None".
pub const SECURITY_NONE: u8 = 1;
/// Security type "VNC Authentication".
pub const SECURITY_VNC_AUTH: u8 = 2;
/// Encoding number of Raw.
pub const ENCODING_RAW: i32 = 0;
/// Encoding number of ZRLE.
pub const ENCODING_ZRLE: i32 = 16;
/// Pseudo-encoding DesktopSize.
pub const ENCODING_DESKTOP_SIZE: i32 = -223;
/// QEMU's extended key event pseudo-encoding.
pub const ENCODING_QEMU_EXT_KEY: i32 = -258;
/// Most encodings a SetEncodings message may list.
pub const MAX_ENCODINGS: u16 = 1024;
/// Longest ClientCutText accepted (its text is read and discarded).
pub const MAX_CUT_TEXT: u32 = 1 << 20;
/// Largest complete message [`ClientMessage::parse`] ever needs buffered
/// (SetEncodings with [`MAX_ENCODINGS`] entries; cut text is not buffered).
pub const MAX_MESSAGE_LEN: usize = 4 + 4 * MAX_ENCODINGS as usize;

/// Why a viewer's bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The 12-byte ProtocolVersion was not `RFB xxx.yyy\n` with major 3.
    #[error("bad protocol version {0:?}")]
    BadVersion(String),
    /// The client chose a security type the server did not offer.
    #[error("client chose security type {got}, server offered {offered}")]
    BadSecurityType {
        /// The type offered.
        offered: u8,
        /// The type chosen.
        got: u8,
    },
    /// The VNC authentication response did not match the password.
    #[error("VNC authentication failed (wrong password)")]
    AuthFailed,
    /// A SetPixelFormat describing a colour-map (palette) format.
    #[error("colour-map pixel formats are not supported (true colour required)")]
    ColourMapNotSupported,
    /// A SetPixelFormat with impossible values.
    #[error("bad pixel format: {0}")]
    BadPixelFormat(&'static str),
    /// A SetEncodings listing more than [`MAX_ENCODINGS`].
    #[error("SetEncodings lists {0} encodings (at most {MAX_ENCODINGS})")]
    TooManyEncodings(u16),
    /// A ClientCutText longer than [`MAX_CUT_TEXT`].
    #[error("ClientCutText of {0} bytes (at most {MAX_CUT_TEXT})")]
    CutTextTooLong(u32),
    /// A message type the server does not know.
    #[error("unknown client message type {0}")]
    UnknownMessage(u8),
    /// A QEMU client message (type 255) of a subtype the server does not know.
    #[error("unknown QEMU client message subtype {0}")]
    UnknownQemuMessage(u8),
}

/// The protocol version a viewer speaks, as the server will treat it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// 3.3: the server picks the security type.
    V3_3,
    /// 3.7: the client picks from a list; no SecurityResult for None.
    V3_7,
    /// 3.8: as 3.7, plus SecurityResult for None and failure reasons.
    V3_8,
}

impl ProtocolVersion {
    /// Parses a client's 12-byte ProtocolVersion. Major must be 3; minor 7
    /// and 8 are themselves, Apple's 889 is 3.8, any other minor ≥ 3 is
    /// treated as 3.3 (RFC 6143 §7.1.1).
    pub fn parse(bytes: &[u8; 12]) -> Result<Self, ProtocolError> {
        let bad = || ProtocolError::BadVersion(String::from_utf8_lossy(bytes).into_owned());
        if &bytes[..4] != b"RFB " || bytes[7] != b'.' || bytes[11] != b'\n' {
            return Err(bad());
        }
        let num = |s: &[u8]| -> Option<u32> {
            if !s.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(s).ok()?.parse().ok()
        };
        let (Some(major), Some(minor)) = (num(&bytes[4..7]), num(&bytes[8..11])) else {
            return Err(bad());
        };
        match (major, minor) {
            (3, 7) => Ok(Self::V3_7),
            (3, 8) | (3, 889) => Ok(Self::V3_8),
            (3, m) if m >= 3 => Ok(Self::V3_3),
            _ => Err(bad()),
        }
    }
}

/// A true-colour pixel format as RFB describes it (validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    /// Bits per pixel: 8, 16 or 32.
    pub bits_per_pixel: u8,
    /// Useful bits.
    pub depth: u8,
    /// Multi-byte pixels are big-endian.
    pub big_endian: bool,
    /// Largest red value.
    pub red_max: u16,
    /// Largest green value.
    pub green_max: u16,
    /// Largest blue value.
    pub blue_max: u16,
    /// Bit position of red.
    pub red_shift: u8,
    /// Bit position of green.
    pub green_shift: u8,
    /// Bit position of blue.
    pub blue_shift: u8,
}

impl PixelFormat {
    /// The server's (and the display's) format: 32 bpp, depth 24,
    /// little-endian, red at bit 16, green at 8, blue at 0.
    pub const SERVER: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    /// Reads the 16-byte PIXEL_FORMAT structure, refusing colour maps,
    /// bits per pixel other than 8/16/32, zero maxima, maxima that do not
    /// fit in the pixel and shifts outside it.
    pub fn parse(b: &[u8; 16]) -> Result<Self, ProtocolError> {
        let bpp = b[0];
        if !matches!(bpp, 8 | 16 | 32) {
            return Err(ProtocolError::BadPixelFormat(
                "bits per pixel must be 8, 16 or 32",
            ));
        }
        if b[3] == 0 {
            return Err(ProtocolError::ColourMapNotSupported);
        }
        let pf = PixelFormat {
            bits_per_pixel: bpp,
            depth: b[1],
            big_endian: b[2] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        };
        for (max, shift) in [
            (pf.red_max, pf.red_shift),
            (pf.green_max, pf.green_shift),
            (pf.blue_max, pf.blue_shift),
        ] {
            if max == 0 {
                return Err(ProtocolError::BadPixelFormat("colour maximum is zero"));
            }
            if shift >= bpp {
                return Err(ProtocolError::BadPixelFormat("shift outside the pixel"));
            }
            if u64::from(max) >= 1u64 << bpp {
                return Err(ProtocolError::BadPixelFormat("colour maximum does not fit"));
            }
        }
        Ok(pf)
    }

    /// The 16-byte PIXEL_FORMAT structure.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bits_per_pixel;
        b[1] = self.depth;
        b[2] = u8::from(self.big_endian);
        b[3] = 1;
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    /// Bytes per pixel (1, 2 or 4).
    pub fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }
}

/// A rectangle as a FramebufferUpdateRequest names it (not yet clipped).
pub type WireRect = crate::display::Rect;

/// A message from a viewer after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// Type 0: pixels from now on in this (validated) format.
    SetPixelFormat(PixelFormat),
    /// Type 2: the encodings the viewer supports, preferred first.
    SetEncodings(Vec<i32>),
    /// Type 3: send (the changed part of, if `incremental`) `rect`.
    FramebufferUpdateRequest {
        /// Only changes are wanted.
        incremental: bool,
        /// The area wanted (may reach outside the screen).
        rect: WireRect,
    },
    /// Type 4: a key (X11 keysym) went down or up.
    KeyEvent {
        /// Pressed (true) or released.
        down: bool,
        /// X11 keysym.
        keysym: u32,
    },
    /// Type 5: the pointer moved or a button changed.
    PointerEvent {
        /// Button mask (bit 0 left).
        buttons: u8,
        /// X (not yet clipped).
        x: u16,
        /// Y (not yet clipped).
        y: u16,
    },
    /// Type 6: cut text of `len` (≤ [`MAX_CUT_TEXT`]) bytes follows; the
    /// parse consumed only the 8-byte header, the caller skips the text.
    ClientCutText {
        /// Bytes of text that follow.
        len: u32,
    },
    /// Type 255 subtype 0: QEMU extended key event.
    QemuKeyEvent {
        /// Pressed (true) or released.
        down: bool,
        /// X11 keysym.
        keysym: u32,
        /// XT keycode as QEMU numbers it (0: none, use the keysym).
        keycode: u32,
    },
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl ClientMessage {
    /// Parses one message at the start of `input`: `Ok(None)` when more
    /// bytes are needed, else the message and the bytes it took. Never
    /// needs more than [`MAX_MESSAGE_LEN`] bytes buffered.
    pub fn parse(input: &[u8]) -> Result<Option<(ClientMessage, usize)>, ProtocolError> {
        let Some(&kind) = input.first() else {
            return Ok(None);
        };
        let need = |n: usize| input.len() < n;
        let msg = match kind {
            0 => {
                if need(20) {
                    return Ok(None);
                }
                let mut pf = [0u8; 16];
                pf.copy_from_slice(&input[4..20]);
                (ClientMessage::SetPixelFormat(PixelFormat::parse(&pf)?), 20)
            }
            2 => {
                if need(4) {
                    return Ok(None);
                }
                let count = be16(input, 2);
                if count > MAX_ENCODINGS {
                    return Err(ProtocolError::TooManyEncodings(count));
                }
                let len = 4 + 4 * usize::from(count);
                if need(len) {
                    return Ok(None);
                }
                let list = input[4..len]
                    .chunks_exact(4)
                    .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                (ClientMessage::SetEncodings(list), len)
            }
            3 => {
                if need(10) {
                    return Ok(None);
                }
                let rect = WireRect {
                    x: be16(input, 2),
                    y: be16(input, 4),
                    w: be16(input, 6),
                    h: be16(input, 8),
                };
                let incremental = input[1] != 0;
                (
                    ClientMessage::FramebufferUpdateRequest { incremental, rect },
                    10,
                )
            }
            4 => {
                if need(8) {
                    return Ok(None);
                }
                let msg = ClientMessage::KeyEvent {
                    down: input[1] != 0,
                    keysym: be32(input, 4),
                };
                (msg, 8)
            }
            5 => {
                if need(6) {
                    return Ok(None);
                }
                let msg = ClientMessage::PointerEvent {
                    buttons: input[1],
                    x: be16(input, 2),
                    y: be16(input, 4),
                };
                (msg, 6)
            }
            6 => {
                if need(8) {
                    return Ok(None);
                }
                let len = be32(input, 4);
                if len > MAX_CUT_TEXT {
                    return Err(ProtocolError::CutTextTooLong(len));
                }
                (ClientMessage::ClientCutText { len }, 8)
            }
            255 => {
                if need(2) {
                    return Ok(None);
                }
                if input[1] != 0 {
                    return Err(ProtocolError::UnknownQemuMessage(input[1]));
                }
                if need(12) {
                    return Ok(None);
                }
                let msg = ClientMessage::QemuKeyEvent {
                    down: be16(input, 2) != 0,
                    keysym: be32(input, 4),
                    keycode: be32(input, 8),
                };
                (msg, 12)
            }
            other => return Err(ProtocolError::UnknownMessage(other)),
        };
        Ok(Some(msg))
    }
}

/// How the server asks a viewer to prove itself.
#[derive(Clone)]
pub enum Security {
    /// No password configured: security type None.
    None,
    /// VNC Authentication against `password` with this `challenge`.
    VncAuth {
        /// The password (only its first 8 bytes count).
        password: Vec<u8>,
        /// The random 16-byte challenge sent to this viewer.
        challenge: [u8; 16],
    },
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Security::None => f.write_str("None"),
            Security::VncAuth { .. } => f.write_str("VncAuth"),
        }
    }
}

impl Security {
    fn kind(&self) -> u8 {
        match self {
            Security::None => SECURITY_NONE,
            Security::VncAuth { .. } => SECURITY_VNC_AUTH,
        }
    }
}

/// What the ServerInit message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInit {
    /// Screen width.
    pub width: u16,
    /// Screen height.
    pub height: u16,
    /// Desktop name.
    pub name: String,
}

impl ServerInit {
    /// The ServerInit message (server pixel format [`PixelFormat::SERVER`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let mut out = Vec::with_capacity(24 + name.len());
        out.extend_from_slice(&self.width.to_be_bytes());
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&PixelFormat::SERVER.to_bytes());
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name);
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Version,
    SecurityType,
    AuthResponse,
    ClientInit,
    Done,
    Failed,
}

/// The server side of one viewer's handshake, from its ProtocolVersion to
/// its ClientInit; the server has already sent [`SERVER_VERSION`].
///
/// Feed it the viewer's bytes with [`Handshake::step`]; send what it puts in
/// `out`, also when it returns an error (a failure reason), then close.
#[derive(Debug)]
pub struct Handshake {
    security: Security,
    init: ServerInit,
    stage: Stage,
    version: Option<ProtocolVersion>,
}

/// Writes a SecurityResult "failed", with `reason` if the version has one.
fn failure(out: &mut Vec<u8>, version: Option<ProtocolVersion>, reason: &str) {
    out.extend_from_slice(&1u32.to_be_bytes());
    if version == Some(ProtocolVersion::V3_8) {
        push_reason(out, reason);
    }
}

/// Appends a length-prefixed reason string.
pub fn push_reason(out: &mut Vec<u8>, reason: &str) {
    out.extend_from_slice(&(reason.len() as u32).to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
}

impl Handshake {
    /// A handshake that will authenticate with `security` and answer the
    /// ClientInit with `init`.
    pub fn new(security: Security, init: ServerInit) -> Self {
        Self {
            security,
            init,
            stage: Stage::Version,
            version: None,
        }
    }

    /// Whether the ClientInit was received (ServerInit is in `out`).
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// The version agreed, once the client's was read.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Consumes what it can of `input`: `Ok(None)` when more bytes are
    /// needed, `Ok(Some(n))` when it took `n` bytes (call again with the
    /// rest until [`is_done`](Self::is_done)). Replies go to `out`. After an
    /// error, or once done, it consumes nothing more.
    pub fn step(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>, ProtocolError> {
        match self.stage {
            Stage::Done | Stage::Failed => Ok(None),
            Stage::Version => {
                let Some(v) = input.first_chunk::<12>() else {
                    return Ok(None);
                };
                let version =
                    ProtocolVersion::parse(v).inspect_err(|_| self.stage = Stage::Failed)?;
                self.version = Some(version);
                let kind = self.security.kind();
                if version == ProtocolVersion::V3_3 {
                    out.extend_from_slice(&u32::from(kind).to_be_bytes());
                    self.after_security_type(out);
                } else {
                    out.extend_from_slice(&[1, kind]);
                    self.stage = Stage::SecurityType;
                }
                Ok(Some(12))
            }
            Stage::SecurityType => {
                let Some(&got) = input.first() else {
                    return Ok(None);
                };
                let offered = self.security.kind();
                if got != offered {
                    self.stage = Stage::Failed;
                    failure(out, self.version, "security type not offered");
                    return Err(ProtocolError::BadSecurityType { offered, got });
                }
                self.after_security_type(out);
                Ok(Some(1))
            }
            Stage::AuthResponse => {
                let Some(response) = input.first_chunk::<16>() else {
                    return Ok(None);
                };
                let ok = match &self.security {
                    Security::VncAuth {
                        password,
                        challenge,
                    } => auth::verify(password, challenge, response),
                    Security::None => false,
                };
                if !ok {
                    self.stage = Stage::Failed;
                    failure(out, self.version, "authentication failed");
                    return Err(ProtocolError::AuthFailed);
                }
                out.extend_from_slice(&0u32.to_be_bytes());
                self.stage = Stage::ClientInit;
                Ok(Some(16))
            }
            Stage::ClientInit => {
                if input.is_empty() {
                    return Ok(None);
                }
                // The shared flag is ignored: the desktop is always shared.
                out.extend_from_slice(&self.init.to_bytes());
                self.stage = Stage::Done;
                Ok(Some(1))
            }
        }
    }

    fn after_security_type(&mut self, out: &mut Vec<u8>) {
        match &self.security {
            Security::None => {
                if self.version == Some(ProtocolVersion::V3_8) {
                    out.extend_from_slice(&0u32.to_be_bytes());
                }
                self.stage = Stage::ClientInit;
            }
            Security::VncAuth { challenge, .. } => {
                out.extend_from_slice(challenge);
                self.stage = Stage::AuthResponse;
            }
        }
    }
}

/// What a server sends a connection it refuses before any handshake (too
/// many viewers): its version, zero security types and `reason` (the 3.8
/// form of a refusal).
pub fn refusal(reason: &str) -> Vec<u8> {
    let mut out = SERVER_VERSION.to_vec();
    out.push(0);
    push_reason(&mut out, reason);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::Rect;

    fn v(s: &[u8; 12]) -> Result<ProtocolVersion, ProtocolError> {
        ProtocolVersion::parse(s)
    }

    #[test]
    fn versions() {
        assert_eq!(v(b"RFB 003.003\n"), Ok(ProtocolVersion::V3_3));
        assert_eq!(v(b"RFB 003.005\n"), Ok(ProtocolVersion::V3_3));
        assert_eq!(v(b"RFB 003.007\n"), Ok(ProtocolVersion::V3_7));
        assert_eq!(v(b"RFB 003.008\n"), Ok(ProtocolVersion::V3_8));
        assert_eq!(v(b"RFB 003.889\n"), Ok(ProtocolVersion::V3_8));
        assert_eq!(v(b"RFB 003.010\n"), Ok(ProtocolVersion::V3_3));
        for bad in [
            b"RFB 004.000\n",
            b"RFB 003.002\n",
            b"GET / HTTP/1",
            b"RFB 003.00+\n",
            b"RFB 003.008 ",
            b"RFB 0x3.008\n",
        ] {
            assert!(
                matches!(v(bad), Err(ProtocolError::BadVersion(_))),
                "{bad:?}"
            );
        }
    }

    fn init() -> ServerInit {
        ServerInit {
            width: 640,
            height: 480,
            name: "vm".into(),
        }
    }

    /// Drives a handshake with all of `input` at once.
    fn run(hs: &mut Handshake, input: &[u8]) -> (Result<usize, ProtocolError>, Vec<u8>) {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            match hs.step(&input[pos..], &mut out) {
                Ok(Some(n)) => pos += n,
                Ok(None) => return (Ok(pos), out),
                Err(e) => return (Err(e), out),
            }
        }
    }

    #[test]
    fn handshake_none_38_37_33() {
        let si = init().to_bytes();
        assert_eq!(&si[..4], &[2, 128, 1, 224]);
        assert_eq!(&si[4..20], &PixelFormat::SERVER.to_bytes());
        assert_eq!(&si[20..], &[0, 0, 0, 2, b'v', b'm']);

        let mut hs = Handshake::new(Security::None, init());
        let (r, out) = run(&mut hs, b"RFB 003.008\n\x01\x01");
        assert_eq!(r, Ok(14));
        assert!(hs.is_done());
        let mut want = vec![1, 1, 0, 0, 0, 0];
        want.extend_from_slice(&si);
        assert_eq!(out, want);

        let mut hs = Handshake::new(Security::None, init());
        let (r, out) = run(&mut hs, b"RFB 003.007\n\x01\x00");
        assert_eq!(r, Ok(14));
        let mut want = vec![1, 1];
        want.extend_from_slice(&si);
        assert_eq!(out, want);

        let mut hs = Handshake::new(Security::None, init());
        let (r, out) = run(&mut hs, b"RFB 003.003\n\x00");
        assert_eq!(r, Ok(13));
        assert_eq!(hs.version(), Some(ProtocolVersion::V3_3));
        let mut want = vec![0, 0, 0, 1];
        want.extend_from_slice(&si);
        assert_eq!(out, want);
    }

    #[test]
    fn handshake_needs_more_bytes_one_at_a_time() {
        let input = b"RFB 003.008\n\x01\x01";
        let mut hs = Handshake::new(Security::None, init());
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for &b in input {
            buf.push(b);
            while let Some(n) = hs.step(&buf, &mut out).expect("valid") {
                buf.drain(..n);
            }
        }
        assert!(hs.is_done());
    }

    #[test]
    fn handshake_vnc_auth() {
        let challenge = [7u8; 16];
        let sec = Security::VncAuth {
            password: b"pw".to_vec(),
            challenge,
        };
        let good = auth::response(b"pw", &challenge);

        let mut hs = Handshake::new(sec.clone(), init());
        let mut input = b"RFB 003.008\n\x02".to_vec();
        input.extend_from_slice(&good);
        input.push(1);
        let (r, out) = run(&mut hs, &input);
        assert_eq!(r, Ok(input.len()));
        assert_eq!(&out[..2], &[1, 2]);
        assert_eq!(&out[2..18], &challenge);
        assert_eq!(&out[18..22], &[0, 0, 0, 0]);

        // Wrong password: failed + reason in 3.8, no reason in 3.3.
        let mut hs = Handshake::new(sec.clone(), init());
        let mut input = b"RFB 003.008\n\x02".to_vec();
        input.extend_from_slice(&[0u8; 16]);
        let (r, out) = run(&mut hs, &input);
        assert_eq!(r, Err(ProtocolError::AuthFailed));
        assert_eq!(&out[18..22], &[0, 0, 0, 1]);
        assert!(out.len() > 26);
        let mut hs = Handshake::new(sec, init());
        let mut input = b"RFB 003.003\n".to_vec();
        input.extend_from_slice(&[0u8; 16]);
        let (r, out) = run(&mut hs, &input);
        assert_eq!(r, Err(ProtocolError::AuthFailed));
        assert_eq!(&out[..4], &[0, 0, 0, 2]);
        assert_eq!(&out[20..], &[0, 0, 0, 1]);
        // After an error nothing more is consumed.
        assert_eq!(hs.step(b"x", &mut Vec::new()), Ok(None));
    }

    #[test]
    fn handshake_bad_security_type_and_version() {
        let mut hs = Handshake::new(Security::None, init());
        let (r, out) = run(&mut hs, b"RFB 003.008\n\x02");
        assert_eq!(
            r,
            Err(ProtocolError::BadSecurityType { offered: 1, got: 2 })
        );
        assert_eq!(&out[2..6], &[0, 0, 0, 1]);
        let mut hs = Handshake::new(Security::None, init());
        let (r, _) = run(&mut hs, b"HELLO WORLD!");
        assert!(matches!(r, Err(ProtocolError::BadVersion(_))));
    }

    fn parse(b: &[u8]) -> Result<Option<(ClientMessage, usize)>, ProtocolError> {
        ClientMessage::parse(b)
    }

    /// Every proper prefix of a valid message asks for more bytes.
    fn all_prefixes_need_more(b: &[u8]) {
        for n in 0..b.len() {
            assert_eq!(parse(&b[..n]), Ok(None), "prefix {n} of {b:?}");
        }
    }

    #[test]
    fn messages() {
        let mut spf = vec![0, 0, 0, 0];
        spf.extend_from_slice(&PixelFormat::SERVER.to_bytes());
        let cases: Vec<(Vec<u8>, ClientMessage)> = vec![
            (spf, ClientMessage::SetPixelFormat(PixelFormat::SERVER)),
            (
                vec![2, 0, 0, 2, 0, 0, 0, 16, 0xff, 0xff, 0xfe, 0xfe],
                ClientMessage::SetEncodings(vec![16, -258]),
            ),
            (
                vec![3, 1, 0, 1, 0, 2, 0, 3, 0, 4],
                ClientMessage::FramebufferUpdateRequest {
                    incremental: true,
                    rect: Rect {
                        x: 1,
                        y: 2,
                        w: 3,
                        h: 4,
                    },
                },
            ),
            (
                vec![4, 1, 0, 0, 0, 0, 0, 0x61],
                ClientMessage::KeyEvent {
                    down: true,
                    keysym: 0x61,
                },
            ),
            (
                vec![5, 1, 0, 10, 0, 20],
                ClientMessage::PointerEvent {
                    buttons: 1,
                    x: 10,
                    y: 20,
                },
            ),
            (
                vec![6, 0, 0, 0, 0, 0, 0, 5],
                ClientMessage::ClientCutText { len: 5 },
            ),
            (
                vec![255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e],
                ClientMessage::QemuKeyEvent {
                    down: true,
                    keysym: 0x61,
                    keycode: 0x1e,
                },
            ),
        ];
        for (bytes, msg) in cases {
            all_prefixes_need_more(&bytes);
            let mut more = bytes.clone();
            more.extend_from_slice(&[3, 0]);
            assert_eq!(parse(&more), Ok(Some((msg, bytes.len()))));
        }
    }

    #[test]
    fn bad_messages() {
        assert_eq!(parse(&[1]), Err(ProtocolError::UnknownMessage(1)));
        assert_eq!(parse(&[7, 0, 0]), Err(ProtocolError::UnknownMessage(7)));
        assert_eq!(parse(&[255, 1]), Err(ProtocolError::UnknownQemuMessage(1)));
        assert_eq!(
            parse(&[2, 0, 0x04, 0x01]),
            Err(ProtocolError::TooManyEncodings(1025))
        );
        assert_eq!(
            parse(&[6, 0, 0, 0, 0, 0x10, 0, 1]),
            Err(ProtocolError::CutTextTooLong((1 << 20) + 1))
        );
        assert_eq!(
            parse(&[6, 0, 0, 0, 0, 0x10, 0, 0]),
            Ok(Some((ClientMessage::ClientCutText { len: 1 << 20 }, 8)))
        );
    }

    #[test]
    fn pixel_formats() {
        let ok = PixelFormat::SERVER.to_bytes();
        assert_eq!(PixelFormat::parse(&ok), Ok(PixelFormat::SERVER));
        // rgb565 big-endian
        let mut b = ok;
        b[..4].copy_from_slice(&[16, 16, 1, 1]);
        b[4..10].copy_from_slice(&[0, 31, 0, 63, 0, 31]);
        b[10..13].copy_from_slice(&[11, 5, 0]);
        assert!(PixelFormat::parse(&b).is_ok());
        // bgr233
        let mut b = ok;
        b[..4].copy_from_slice(&[8, 8, 0, 1]);
        b[4..10].copy_from_slice(&[0, 7, 0, 7, 0, 3]);
        b[10..13].copy_from_slice(&[0, 3, 6]);
        assert!(PixelFormat::parse(&b).is_ok());

        let with = |f: &dyn Fn(&mut [u8; 16])| {
            let mut b = ok;
            f(&mut b);
            PixelFormat::parse(&b)
        };
        assert_eq!(
            with(&|b| b[3] = 0),
            Err(ProtocolError::ColourMapNotSupported)
        );
        assert!(matches!(
            with(&|b| b[0] = 24),
            Err(ProtocolError::BadPixelFormat(_))
        ));
        assert!(matches!(
            with(&|b| b[4..6].copy_from_slice(&[0, 0])),
            Err(ProtocolError::BadPixelFormat(_))
        ));
        assert!(matches!(
            with(&|b| b[10] = 32),
            Err(ProtocolError::BadPixelFormat(_))
        ));
        assert!(matches!(
            with(&|b| {
                b[0] = 8;
                b[4..6].copy_from_slice(&[1, 0]);
                b[10..13].copy_from_slice(&[0, 0, 0]);
            }),
            Err(ProtocolError::BadPixelFormat(_))
        ));
        let mut msg = vec![0, 0, 0, 0];
        msg.extend_from_slice(&{
            let mut b = ok;
            b[3] = 0;
            b
        });
        assert_eq!(parse(&msg), Err(ProtocolError::ColourMapNotSupported));
    }

    #[test]
    fn refusal_is_a_38_failure() {
        let r = refusal("busy");
        assert_eq!(&r[..12], SERVER_VERSION);
        assert_eq!(&r[12..], &[0, 0, 0, 0, 4, b'b', b'u', b's', b'y']);
    }
}
