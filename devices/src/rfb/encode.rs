//! FramebufferUpdate messages: rectangles of the display translated to a
//! viewer's pixel format and encoded Raw or ZRLE (one persistent zlib
//! stream per viewer, as ZRLE requires).

use flate2::{Compress, Compression};
use rfb_encodings::translate::translate_pixels;

use super::protocol::{PixelFormat, ENCODING_RAW, ENCODING_ZRLE};
use crate::display::{Display, Rect};

/// Rows per encoded band: a large rectangle is sent as bands of at most
/// this many rows, so a viewer's buffers stay around `width × 64 × 4` bytes.
pub const BAND_ROWS: u16 = 64;

/// How pixel rectangles are sent to one viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Raw pixels.
    Raw,
    /// ZRLE (zlib-compressed run-length tiles).
    Zrle,
}

/// What a viewer's SetEncodings says the server may send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encodings {
    /// The pixel encoding: whichever of Raw and ZRLE the viewer listed
    /// first (Raw when it listed neither).
    pub pixels: Encoding,
    /// The viewer understands the DesktopSize pseudo-encoding.
    pub desktop_size: bool,
    /// The viewer understands QEMU's extended key event.
    pub qemu_ext_key: bool,
}

impl Default for Encodings {
    fn default() -> Self {
        Self {
            pixels: Encoding::Raw,
            desktop_size: false,
            qemu_ext_key: false,
        }
    }
}

impl Encodings {
    /// From a SetEncodings list (unknown encodings are ignored).
    pub fn from_list(list: &[i32]) -> Self {
        let pixels = list
            .iter()
            .find_map(|&e| match e {
                ENCODING_RAW => Some(Encoding::Raw),
                ENCODING_ZRLE => Some(Encoding::Zrle),
                _ => None,
            })
            .unwrap_or(Encoding::Raw);
        Self {
            pixels,
            desktop_size: list.contains(&super::protocol::ENCODING_DESKTOP_SIZE),
            qemu_ext_key: list.contains(&super::protocol::ENCODING_QEMU_EXT_KEY),
        }
    }
}

/// Appends a FramebufferUpdate header announcing `count` rectangles.
pub fn update_header(count: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&count.to_be_bytes());
}

/// Appends a rectangle header.
pub fn rect_header(x: u16, y: u16, w: u16, h: u16, encoding: i32, out: &mut Vec<u8>) {
    for v in [x, y, w, h] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&encoding.to_be_bytes());
}

/// `r` cut into bands of at most [`BAND_ROWS`] rows.
pub fn bands(r: Rect) -> impl Iterator<Item = Rect> {
    (0..r.h)
        .step_by(usize::from(BAND_ROWS))
        .map(move |dy| Rect {
            x: r.x,
            y: r.y + dy,
            w: r.w,
            h: BAND_ROWS.min(r.h - dy),
        })
}

/// One viewer's encoder state: its zlib stream and scratch buffers.
pub struct Encoder {
    zlib: Compress,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

fn to_lib_format(pf: &PixelFormat) -> rfb_encodings::PixelFormat {
    rfb_encodings::PixelFormat {
        bits_per_pixel: pf.bits_per_pixel,
        depth: pf.depth,
        big_endian_flag: u8::from(pf.big_endian),
        true_colour_flag: 1,
        red_max: pf.red_max,
        green_max: pf.green_max,
        blue_max: pf.blue_max,
        red_shift: pf.red_shift,
        green_shift: pf.green_shift,
        blue_shift: pf.blue_shift,
    }
}

impl Encoder {
    /// A fresh encoder (a new zlib stream: one per viewer connection).
    pub fn new() -> Self {
        Self {
            zlib: Compress::new(Compression::new(3), true),
            scratch: Vec::new(),
        }
    }

    /// Appends `rect` (already clipped to the screen) of `display` as one
    /// rectangle in `format` and `encoding`. A rectangle off the screen is
    /// sent as an empty (0×0) Raw rectangle, so the count announced in the
    /// update header always holds; returns whether it had pixels.
    pub fn encode(
        &mut self,
        display: &Display,
        rect: Rect,
        format: &PixelFormat,
        encoding: Encoding,
        out: &mut Vec<u8>,
    ) -> std::io::Result<bool> {
        self.scratch.clear();
        let Some(r) = display.read_rect(rect, &mut self.scratch) else {
            rect_header(rect.x, rect.y, 0, 0, ENCODING_RAW, out);
            return Ok(false);
        };
        let client = to_lib_format(format);
        let pixels = translate_pixels(&self.scratch, &to_lib_format(&PixelFormat::SERVER), &client);
        match encoding {
            Encoding::Raw => {
                rect_header(r.x, r.y, r.w, r.h, ENCODING_RAW, out);
                out.extend_from_slice(&pixels);
            }
            Encoding::Zrle => {
                let data = rfb_encodings::zrle::encode_zrle_persistent(
                    &pixels,
                    r.w,
                    r.h,
                    &client,
                    &mut self.zlib,
                )?;
                rect_header(r.x, r.y, r.w, r.h, ENCODING_ZRLE, out);
                out.extend_from_slice(&data);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::Geometry;

    #[test]
    fn preference_order_between_raw_and_zrle() {
        assert_eq!(Encodings::from_list(&[]), Encodings::default());
        let e = Encodings::from_list(&[5, 16, 0, -258]);
        assert_eq!(e.pixels, Encoding::Zrle);
        assert!(e.qemu_ext_key && !e.desktop_size);
        let e = Encodings::from_list(&[0, 16, -223]);
        assert_eq!(e.pixels, Encoding::Raw);
        assert!(e.desktop_size && !e.qemu_ext_key);
        assert_eq!(Encodings::from_list(&[7, 1]).pixels, Encoding::Raw);
    }

    #[test]
    fn bands_cover_the_rect() {
        let r = Rect {
            x: 3,
            y: 5,
            w: 10,
            h: 130,
        };
        let b: Vec<Rect> = bands(r).collect();
        assert_eq!(b.len(), 3);
        assert_eq!(b[2].y, 5 + 128);
        assert_eq!(b[2].h, 2);
        assert_eq!(b.iter().map(|b| u32::from(b.h)).sum::<u32>(), 130);
    }

    #[test]
    fn raw_and_zrle_rects() {
        let d = Display::new(Geometry {
            width: 64,
            height: 64,
        })
        .expect("display");
        d.load(&[0x11, 0x22, 0x33, 0].repeat(64 * 64));
        let mut enc = Encoder::new();
        let mut out = Vec::new();
        let r = Rect {
            x: 1,
            y: 2,
            w: 2,
            h: 1,
        };
        assert!(enc
            .encode(&d, r, &PixelFormat::SERVER, Encoding::Raw, &mut out)
            .expect("raw"));
        assert_eq!(
            out,
            [0, 1, 0, 2, 0, 2, 0, 1, 0, 0, 0, 0, 0x11, 0x22, 0x33, 0, 0x11, 0x22, 0x33, 0]
        );
        out.clear();
        assert!(enc
            .encode(&d, r, &PixelFormat::SERVER, Encoding::Zrle, &mut out)
            .expect("zrle"));
        assert_eq!(&out[8..12], &ENCODING_ZRLE.to_be_bytes());
        let len = u32::from_be_bytes([out[12], out[13], out[14], out[15]]) as usize;
        assert_eq!(out.len(), 16 + len);
        // Off the screen: an empty Raw rect keeps the announced count true.
        out.clear();
        let off = Rect {
            x: 100,
            y: 0,
            w: 5,
            h: 5,
        };
        assert!(!enc
            .encode(&d, off, &PixelFormat::SERVER, Encoding::Raw, &mut out)
            .expect("raw"));
        assert_eq!(out, [0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
