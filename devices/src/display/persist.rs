//! Saved state of the display: its geometry and the shadow frame.
//!
//! The framebuffer's guest memory is its own slot, not guest RAM, so the
//! snapshot and migration carry its pixels here. Restoring refuses a saved
//! display of another size.

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
    /// The frame, `width * height * 4` bytes.
    pub pixels: Vec<u8>,
}

impl Display {
    /// The display's saved state.
    pub fn save(&self) -> DisplayState {
        let g = self.geometry();
        DisplayState {
            width: g.width,
            height: g.height,
            pixels: self.pixels(),
        }
    }

    /// Checks `state` against this display and loads its pixels into the
    /// shadow (the VMM writes the same pixels back into framebuffer memory).
    pub fn restore(&self, state: &DisplayState) -> Result<(), PersistError> {
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
        if state.pixels.len() != saved.frame_bytes() {
            return Err(PersistError::Invalid {
                device: "display",
                reason: format!(
                    "{} bytes of pixels for a {}x{} frame",
                    state.pixels.len(),
                    saved.width,
                    saved.height
                ),
            });
        }
        self.load(&state.pixels);
        Ok(())
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
        let mut bad = s.clone();
        bad.pixels.pop();
        assert!(d2.restore(&bad).is_err());
        let other = Display::new(Geometry {
            width: 128,
            height: 64,
        })
        .expect("display");
        assert!(other.restore(&s).is_err());
    }
}
