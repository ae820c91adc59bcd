//! The VNC console in the launch spec: where the RFB server listens, the screen size and the
//! password file.
//!
//! ```json
//! "vnc": { "listen": "127.0.0.1:5900", "width": 1024, "height": 768,
//!          "password_file": "/run/secrets/vnc" }
//! ```
//! A VM with `vnc` gets a linear framebuffer (announced to bzImage guests through the zero
//! page's `screen_info`), an i8042 keyboard the viewers type into and a virtio-input tablet
//! for their pointer. PVH boots get no `screen_info`: their guest does not see the screen.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Screen width when the spec gives none.
pub const DEFAULT_VNC_WIDTH: u32 = 1024;
/// Screen height when the spec gives none.
pub const DEFAULT_VNC_HEIGHT: u32 = 768;
/// Smallest screen side accepted, in pixels.
pub const MIN_VNC_SIDE: u32 = 64;
/// Largest screen side accepted, in pixels.
pub const MAX_VNC_SIDE: u32 = 4096;
/// Most pixels a screen may have (32 MiB of framebuffer: 3840x2160 fits), so a saved screen
/// always fits in a snapshot's state file.
pub const MAX_VNC_PIXELS: u32 = 8 << 20;

fn default_width() -> u32 {
    DEFAULT_VNC_WIDTH
}

fn default_height() -> u32 {
    DEFAULT_VNC_HEIGHT
}

/// The VNC console of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VncConfig {
    /// Where the RFB server listens.
    pub listen: VncListen,
    /// Screen width in pixels ([`MIN_VNC_SIDE`]..=[`MAX_VNC_SIDE`], a multiple of 8, at most
    /// [`MAX_VNC_PIXELS`] in all; default [`DEFAULT_VNC_WIDTH`]).
    #[serde(default = "default_width")]
    pub width: u32,
    /// Screen height in pixels ([`MIN_VNC_SIDE`]..=[`MAX_VNC_SIDE`]; default
    /// [`DEFAULT_VNC_HEIGHT`]).
    #[serde(default = "default_height")]
    pub height: u32,
    /// A file whose first line is the VNC password (VNC authentication uses its first 8
    /// bytes). Absent: no authentication. Never given on a command line, where `ps` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl VncConfig {
    /// A console listening at `listen` with the default screen size and no password.
    pub fn new(listen: VncListen) -> Self {
        Self {
            listen,
            width: DEFAULT_VNC_WIDTH,
            height: DEFAULT_VNC_HEIGHT,
            password_file: None,
        }
    }
}

/// Where a VNC server listens: a TCP address or a unix socket path.
///
/// Written `HOST:PORT` (`127.0.0.1:5900`, `[::1]:5900`), `:PORT` or `PORT` (both mean
/// `127.0.0.1:PORT`: loopback unless told otherwise), or `unix:PATH` (QEMU's spelling).
/// Port 0 picks a free port; `vm.info` reports the one chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VncListen {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

/// Why a VNC listen address could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a VNC address: use HOST:PORT, :PORT, PORT or unix:PATH")]
pub struct VncListenError {
    /// What was given.
    pub input: String,
}

impl FromStr for VncListen {
    type Err = VncListenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || VncListenError {
            input: s.to_string(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err());
            }
            return Ok(VncListen::Unix(PathBuf::from(path)));
        }
        let port_only = s.strip_prefix(':').unwrap_or(s);
        if let Ok(port) = port_only.parse::<u16>() {
            return Ok(VncListen::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        s.parse::<SocketAddr>()
            .map(VncListen::Tcp)
            .map_err(|_| err())
    }
}

impl fmt::Display for VncListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VncListen::Tcp(addr) => write!(f, "{addr}"),
            VncListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Serialize for VncListen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VncListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        let lo = |p| VncListen::Tcp(SocketAddr::from(([127, 0, 0, 1], p)));
        assert_eq!("5901".parse(), Ok(lo(5901)));
        assert_eq!(":0".parse(), Ok(lo(0)));
        assert_eq!("127.0.0.1:5900".parse(), Ok(lo(5900)));
        assert_eq!(
            "0.0.0.0:5900".parse::<VncListen>().map(|l| l.to_string()),
            Ok("0.0.0.0:5900".to_string())
        );
        assert_eq!(
            "[::1]:5900".parse::<VncListen>().map(|l| l.to_string()),
            Ok("[::1]:5900".to_string())
        );
        assert_eq!(
            "unix:/run/v.sock".parse(),
            Ok(VncListen::Unix("/run/v.sock".into()))
        );
        for bad in ["", "unix:", "host", "1.2.3.4", "99999", "localhost:5900x"] {
            assert!(bad.parse::<VncListen>().is_err(), "{bad}");
        }
    }

    #[test]
    fn json_defaults_and_round_trip() {
        let c: VncConfig = serde_json::from_str(r#"{"listen":":5900"}"#).expect("parse");
        assert_eq!(c, VncConfig::new("127.0.0.1:5900".parse().expect("addr")));
        let text = serde_json::to_string(&c).expect("json");
        assert_eq!(
            text,
            r#"{"listen":"127.0.0.1:5900","width":1024,"height":768}"#
        );
        assert!(serde_json::from_str::<VncConfig>(r#"{"listen":"x"}"#).is_err());
        assert!(serde_json::from_str::<VncConfig>(r#"{"listen":":1","depth":8}"#).is_err());
    }
}
