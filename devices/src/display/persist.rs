//! Saved state of the display: its geometry and the frame, deflated.
//!
//! The framebuffer's guest memory is its own slot, not guest RAM, so the
//! snapshot and migration carry its pixels here (a screen deflates well: a
//! text console of 3 MiB to a few KiB). Restoring refuses a saved display of
//! another size, and a frame that does not inflate to exactly one frame.

use std::io::Read;

use serde::{Deserialize, Serialize};

use super::{Display, Geometry};
use crate::PersistError;

/// A display as saved: size and pixels (row-major, 4 bytes per pixel).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DisplayState {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The frame, `width * height * 4` bytes, zlib-deflated.
    #[serde(with = "serde_bytes")]
    pub pixels_deflated: Vec<u8>,
}

impl DisplayState {
    /// The state of a `geometry` screen showing `pixels` (one frame; a shorter slice is
    /// padded with black).
    pub fn new(geometry: Geometry, pixels: &[u8]) -> Self {
        let mut frame = pixels.to_vec();
        frame.resize(geometry.frame_bytes(), 0);
        let mut z = flate2::read::ZlibEncoder::new(&frame[..], flate2::Compression::fast());
        let mut pixels_deflated = Vec::new();
        // Reading from a slice cannot fail.
        let _ = z.read_to_end(&mut pixels_deflated);
        Self {
            width: geometry.width,
            height: geometry.height,
            pixels_deflated,
        }
    }

    /// The frame, checked to be exactly one frame of this state's size.
    pub fn pixels(&self) -> Result<Vec<u8>, PersistError> {
        let invalid = |reason: String| PersistError::Invalid {
            device: "display",
            reason,
        };
        let geometry = Geometry {
            width: self.width,
            height: self.height,
        };
        // Sizes come from a file: check them before allocating a frame.
        geometry.validate().map_err(|e| invalid(e.to_string()))?;
        let want = geometry.frame_bytes();
        let mut out = Vec::with_capacity(want);
        flate2::read::ZlibDecoder::new(&self.pixels_deflated[..])
            .take(want as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| invalid(format!("the frame does not inflate: {e}")))?;
        if out.len() != want {
            return Err(invalid(format!(
                "{} bytes of pixels for a {}x{} frame",
                out.len(),
                self.width,
                self.height
            )));
        }
        Ok(out)
    }
}

impl Display {
    /// The display's saved state (the shadow's pixels).
    pub fn save(&self) -> DisplayState {
        DisplayState::new(self.geometry(), &self.pixels())
    }

    /// Checks `state` against this display and loads its pixels into the
    /// shadow; returns them (the VMM writes them back into framebuffer memory).
    pub fn restore(&self, state: &DisplayState) -> Result<Vec<u8>, PersistError> {
        let saved = Geometry {
            width: state.width,
            height: state.height,
        };
        if saved != self.geometry() {
            return Err(PersistError::Mismatch {
                device: "display",
                what: "geometry",
                saved: format!("{}x{}", saved.width, saved.height),
                here: format!("{}x{}", self.geometry().width, self.geometry().height),
            });
        }
        let pixels = state.pixels()?;
        self.load(&pixels);
        Ok(pixels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let g = Geometry {
            width: 64,
            height: 64,
        };
        let d = Display::new(g).expect("display");
        d.load(&[7u8; 64 * 64 * 4]);
        let s = d.save();
        let d2 = Display::new(g).expect("display");
        d2.restore(&s).expect("restore");
        assert_eq!(d2.pixels(), d.pixels());
        assert!(s.pixels_deflated.len() < 1000, "a flat screen deflates");
        let mut bad = s.clone();
        bad.pixels_deflated.pop();
        assert!(d2.restore(&bad).is_err());
        let short = DisplayState {
            pixels_deflated: DisplayState::new(g, &[1; 16]).pixels_deflated[..8].to_vec(),
            ..s.clone()
        };
        assert!(d2.restore(&short).is_err());
        let mut long = DisplayState::new(g, &[]);
        long.height = 32;
        assert!(long.pixels().is_err(), "a frame longer than its size says");
        let mut huge = DisplayState::new(g, &[]);
        (huge.width, huge.height) = (u32::MAX, u32::MAX);
        assert!(huge.pixels().is_err(), "refused before any allocation");
        let other = Display::new(Geometry {
            width: 128,
            height: 64,
        })
        .expect("display");
        assert!(other.restore(&s).is_err());
    }
}
