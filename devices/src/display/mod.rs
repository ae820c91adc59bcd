//! The guest's screen as the host sees it: a shadow copy of the linear
//! framebuffer, with a change generation per 64×64 tile, and the input
//! events viewers send back.
//!
//! ```text
//!  guest writes fb memory (its own KVM slot, dirty-logged)
//!        │  refresher thread (vmm), ~30 Hz: KVM_GET_DIRTY_LOG → dirty pages
//!        ▼
//!  Display::refresh(fb, pages)  — compares each dirty page with the shadow,
//!        │                        copies what changed, bumps those tiles' generation
//!        ▼
//!  RFB clients, each at its own pace: changes_since(my_generation) → rects → encode
//! ```
//!
//! The shadow is what viewers read, so no viewer ever touches guest memory
//! and a slow viewer only ever sees a later (merged) picture: per-viewer
//! dirty state is just "the generation I last sent". Pixels are 32 bits,
//! little-endian, red at bit 16, green at bit 8, blue at bit 0 (what Linux's
//! efifb is told through `screen_info`, and RFB's usual true-colour format).

pub mod persist;

use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Duration;

/// Bytes per pixel of the framebuffer.
pub const BYTES_PER_PIXEL: u32 = 4;
/// Side of a change-tracking tile, in pixels.
pub const TILE: u32 = 64;
/// Largest width or height a display may have.
pub const MAX_SIDE: u32 = 4096;
/// Most pixels a display may have (32 MiB of frame).
pub const MAX_PIXELS: u32 = 8 << 20;
/// Smallest width or height a display may have.
pub const MIN_SIDE: u32 = 64;
/// Host page size the refresher reports dirty pages in.
pub const PAGE_SIZE: usize = 4096;

/// The size of a display in pixels (stride is `width * 4` bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Geometry {
    /// Bytes in one row.
    pub fn stride(&self) -> usize {
        self.width as usize * BYTES_PER_PIXEL as usize
    }

    /// Bytes in the whole frame.
    pub fn frame_bytes(&self) -> usize {
        self.stride() * self.height as usize
    }

    /// Frame bytes rounded up to whole pages (the size of the memory slot).
    pub fn slot_bytes(&self) -> usize {
        self.frame_bytes().div_ceil(PAGE_SIZE) * PAGE_SIZE
    }

    /// Checks the limits ([`MIN_SIDE`]..=[`MAX_SIDE`], width a multiple of 8, at most
    /// [`MAX_PIXELS`]).
    pub fn validate(&self) -> Result<(), DisplayError> {
        let ok = |s: u32| (MIN_SIDE..=MAX_SIDE).contains(&s);
        if !ok(self.width)
            || !ok(self.height)
            || !self.width.is_multiple_of(8)
            || self.width * self.height > MAX_PIXELS
        {
            return Err(DisplayError::BadGeometry {
                width: self.width,
                height: self.height,
            });
        }
        Ok(())
    }

    fn tiles_x(&self) -> u32 {
        self.width.div_ceil(TILE)
    }

    fn tiles_y(&self) -> u32 {
        self.height.div_ceil(TILE)
    }
}

/// A rectangle of the screen in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left edge.
    pub x: u16,
    /// Top edge.
    pub y: u16,
    /// Width.
    pub w: u16,
    /// Height.
    pub h: u16,
}

impl Rect {
    /// This rectangle clipped to `g`; `None` when nothing is left.
    pub fn clip(&self, g: Geometry) -> Option<Rect> {
        let x0 = u32::from(self.x).min(g.width);
        let y0 = u32::from(self.y).min(g.height);
        let x1 = (u32::from(self.x) + u32::from(self.w)).min(g.width);
        let y1 = (u32::from(self.y) + u32::from(self.h)).min(g.height);
        if x1 <= x0 || y1 <= y0 {
            return None;
        }
        // All four are ≤ MAX_SIDE, so they fit in u16.
        Some(Rect {
            x: x0 as u16,
            y: y0 as u16,
            w: (x1 - x0) as u16,
            h: (y1 - y0) as u16,
        })
    }

    /// Whether the two rectangles share a pixel.
    pub fn intersects(&self, other: &Rect) -> bool {
        let (ax1, ay1) = (
            u32::from(self.x) + u32::from(self.w),
            u32::from(self.y) + u32::from(self.h),
        );
        let (bx1, by1) = (
            u32::from(other.x) + u32::from(other.w),
            u32::from(other.y) + u32::from(other.h),
        );
        u32::from(self.x) < bx1
            && u32::from(other.x) < ax1
            && u32::from(self.y) < by1
            && u32::from(other.y) < ay1
    }
}

/// Why a display could not be created or refreshed.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    /// Width or height out of range.
    #[error(
        "display {width}x{height} is not supported: each side must be {MIN_SIDE}..={MAX_SIDE} \
         pixels, the width a multiple of 8, and at most {MAX_PIXELS} pixels in all"
    )]
    BadGeometry {
        /// Asked width.
        width: u32,
        /// Asked height.
        height: u32,
    },
}

/// A key as a viewer sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// An X11 keysym (RFB KeyEvent), to be mapped with a US layout.
    Keysym(u32),
    /// QEMU's extended key event (pseudo-encoding −258): the XT keycode as
    /// QEMU numbers it — the set-1 make code in the low 7 bits, bit 7 set for
    /// the `0xe0`-prefixed keys (Up is `0xc8`) — used as sent, whatever the
    /// keysym.
    Scancode(u32),
}

/// Where viewers' key and pointer events go (the VM's keyboard and tablet).
///
/// Implementations must not block: they are called from viewer threads.
pub trait InputSink: Send + Sync {
    /// A key went down (`down`) or up.
    fn key(&self, key: Key, down: bool);
    /// The pointer is at (`x`, `y`) in screen pixels with `buttons` held
    /// (bit 0 left, bit 1 middle, bit 2 right, as RFB sends them).
    fn pointer(&self, x: u16, y: u16, buttons: u8);
}

struct Frame {
    pixels: Vec<u8>,
}

struct Generations {
    current: u64,
    /// Generation at which each tile last changed (row-major).
    tiles: Vec<u64>,
}

/// The host-side copy of the guest's screen (see the module docs).
pub struct Display {
    geometry: Geometry,
    frame: RwLock<Frame>,
    generations: Mutex<Generations>,
    changed: Condvar,
}

impl std::fmt::Debug for Display {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Display")
            .field("geometry", &self.geometry)
            .finish_non_exhaustive()
    }
}

impl Display {
    /// A black screen of `geometry`; every tile is at generation 1, so a
    /// viewer starting from generation 0 sees the whole screen as changed.
    pub fn new(geometry: Geometry) -> Result<Self, DisplayError> {
        geometry.validate()?;
        let tiles = (geometry.tiles_x() * geometry.tiles_y()) as usize;
        Ok(Self {
            geometry,
            frame: RwLock::new(Frame {
                pixels: vec![0; geometry.frame_bytes()],
            }),
            generations: Mutex::new(Generations {
                current: 1,
                tiles: vec![1; tiles],
            }),
            changed: Condvar::new(),
        })
    }

    /// The display's size.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn generations(&self) -> MutexGuard<'_, Generations> {
        self.generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn frame(&self) -> RwLockReadGuard<'_, Frame> {
        self.frame
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current generation (it grows with every refresh that changed a pixel).
    pub fn generation(&self) -> u64 {
        self.generations().current
    }

    /// Takes in the guest's framebuffer after the pages `dirty_pages`
    /// (indices of [`PAGE_SIZE`] pages of `fb`) were written: each such page
    /// is compared with the shadow and what differs is copied and marked
    /// changed. `fb` is the whole framebuffer (at least
    /// [`Geometry::frame_bytes`]); `read` copies `len` bytes at `offset` of
    /// it into the buffer (a volatile copy from guest memory). Returns
    /// whether any pixel changed.
    pub fn refresh(
        &self,
        dirty_pages: impl IntoIterator<Item = usize>,
        mut read: impl FnMut(usize, &mut [u8]),
    ) -> bool {
        let g = self.geometry;
        let frame_bytes = g.frame_bytes();
        let stride = g.stride();
        let mut page = [0u8; PAGE_SIZE];
        let mut changed_tiles: Vec<usize> = Vec::new();
        {
            let mut frame = self
                .frame
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for index in dirty_pages {
                let start = index.saturating_mul(PAGE_SIZE);
                if start >= frame_bytes {
                    continue;
                }
                let len = PAGE_SIZE.min(frame_bytes - start);
                let buf = &mut page[..len];
                read(start, buf);
                let shadow = &mut frame.pixels[start..start + len];
                if shadow == buf {
                    continue;
                }
                // Mark the tiles of every pixel that differs, 64 bytes (16
                // pixels) at a time.
                for (chunk, (s, n)) in shadow.chunks_mut(64).zip(buf.chunks(64)).enumerate() {
                    if s == n {
                        continue;
                    }
                    s.copy_from_slice(n);
                    let offset = start + chunk * 64;
                    let y = (offset / stride) as u32;
                    let x0 = ((offset % stride) / BYTES_PER_PIXEL as usize) as u32;
                    let x1 = x0 + (n.len() as u32).div_ceil(BYTES_PER_PIXEL) - 1;
                    for tx in (x0 / TILE)..=(x1.min(g.width - 1) / TILE) {
                        changed_tiles.push(((y / TILE) * g.tiles_x() + tx) as usize);
                    }
                }
            }
        }
        if changed_tiles.is_empty() {
            return false;
        }
        let mut gens = self.generations();
        gens.current += 1;
        let current = gens.current;
        for t in changed_tiles {
            if let Some(slot) = gens.tiles.get_mut(t) {
                *slot = current;
            }
        }
        drop(gens);
        self.changed.notify_all();
        true
    }

    /// Replaces the whole shadow (a restored or migrated display) and marks
    /// every tile changed. `pixels` shorter than a frame leaves the rest black.
    pub fn load(&self, pixels: &[u8]) {
        {
            let mut frame = self
                .frame
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = pixels.len().min(frame.pixels.len());
            frame.pixels[..n].copy_from_slice(&pixels[..n]);
            frame.pixels[n..].fill(0);
        }
        let mut gens = self.generations();
        gens.current += 1;
        let current = gens.current;
        gens.tiles.fill(current);
        drop(gens);
        self.changed.notify_all();
    }

    /// A copy of the whole shadow frame.
    pub fn pixels(&self) -> Vec<u8> {
        self.frame().pixels.clone()
    }

    /// The rectangles (whole tiles, clipped to the screen, horizontally
    /// adjacent tiles merged) that changed after generation `since`, and the
    /// generation they bring a viewer to.
    pub fn changes_since(&self, since: u64) -> (u64, Vec<Rect>) {
        let g = self.geometry;
        let gens = self.generations();
        let mut rects = Vec::new();
        let tx_n = g.tiles_x();
        for ty in 0..g.tiles_y() {
            let mut run: Option<(u32, u32)> = None;
            for tx in 0..=tx_n {
                let dirty = tx < tx_n && gens.tiles[(ty * tx_n + tx) as usize] > since;
                match (dirty, run) {
                    (true, None) => run = Some((tx, tx)),
                    (true, Some((a, _))) => run = Some((a, tx)),
                    (false, Some((a, b))) => {
                        let r = Rect {
                            x: (a * TILE) as u16,
                            y: (ty * TILE) as u16,
                            w: ((b - a + 1) * TILE).min(u32::from(u16::MAX)) as u16,
                            h: TILE as u16,
                        };
                        if let Some(r) = r.clip(g) {
                            rects.push(r);
                        }
                        run = None;
                    }
                    (false, None) => {}
                }
            }
        }
        (gens.current, rects)
    }

    /// Blocks until the generation is past `since` or `timeout` passes;
    /// returns the generation then.
    pub fn wait_for_change(&self, since: u64, timeout: Duration) -> u64 {
        let gens = self.generations();
        let (gens, _) = self
            .changed
            .wait_timeout_while(gens, timeout, |g| g.current <= since)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        gens.current
    }

    /// Appends the pixels of `rect` (clipped to the screen), row by row, 4
    /// bytes each, to `out`; returns the clipped rectangle.
    pub fn read_rect(&self, rect: Rect, out: &mut Vec<u8>) -> Option<Rect> {
        let g = self.geometry;
        let r = rect.clip(g)?;
        let frame = self.frame();
        let stride = g.stride();
        let bpp = BYTES_PER_PIXEL as usize;
        for row in u32::from(r.y)..u32::from(r.y) + u32::from(r.h) {
            let start = row as usize * stride + usize::from(r.x) * bpp;
            out.extend_from_slice(&frame.pixels[start..start + usize::from(r.w) * bpp]);
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g() -> Geometry {
        Geometry {
            width: 256,
            height: 128,
        }
    }

    #[test]
    fn geometry_limits() {
        assert!(g().validate().is_ok());
        for (w, h) in [
            (0, 100),
            (100, 100),
            (8192, 64),
            (64, 5000),
            (63, 64),
            (4096, 4096),
        ] {
            assert!(Geometry {
                width: w,
                height: h
            }
            .validate()
            .is_err());
        }
        assert_eq!(g().slot_bytes(), 256 * 128 * 4);
    }

    #[test]
    fn new_display_is_all_changed_then_only_written_tiles() {
        let d = Display::new(g()).expect("display");
        let (gen, rects) = d.changes_since(0);
        assert_eq!(
            rects,
            vec![
                Rect {
                    x: 0,
                    y: 0,
                    w: 256,
                    h: 64
                },
                Rect {
                    x: 0,
                    y: 64,
                    w: 256,
                    h: 64
                }
            ]
        );
        // Guest writes one pixel at (130, 70): page (70*1024 + 520)/4096.
        let mut fb = vec![0u8; g().frame_bytes()];
        let off = 70 * 1024 + 130 * 4;
        fb[off..off + 4].copy_from_slice(&[1, 2, 3, 0]);
        // An unchanged dirty page changes nothing.
        assert!(!d.refresh([0usize], |o, b| b.copy_from_slice(&fb[o..o + b.len()])));
        assert!(d.refresh([off / PAGE_SIZE], |o, b| b
            .copy_from_slice(&fb[o..o + b.len()])));
        let (gen2, rects) = d.changes_since(gen);
        assert!(gen2 > gen);
        assert_eq!(
            rects,
            vec![Rect {
                x: 128,
                y: 64,
                w: 64,
                h: 64
            }]
        );
        let mut px = Vec::new();
        let r = d.read_rect(
            Rect {
                x: 130,
                y: 70,
                w: 1,
                h: 1,
            },
            &mut px,
        );
        assert!(r.is_some());
        assert_eq!(px, vec![1, 2, 3, 0]);
        assert_eq!(d.changes_since(gen2).1, vec![]);
        // Out-of-range pages are ignored.
        assert!(!d.refresh([10_000usize], |_, _| panic!("not read")));
    }

    #[test]
    fn clip_and_read_outside_the_screen() {
        let d = Display::new(g()).expect("display");
        let mut out = Vec::new();
        assert!(d
            .read_rect(
                Rect {
                    x: 300,
                    y: 0,
                    w: 10,
                    h: 10
                },
                &mut out
            )
            .is_none());
        let r = d.read_rect(
            Rect {
                x: 250,
                y: 120,
                w: 100,
                h: 100,
            },
            &mut out,
        );
        assert_eq!(
            r,
            Some(Rect {
                x: 250,
                y: 120,
                w: 6,
                h: 8
            })
        );
        assert_eq!(out.len(), 6 * 8 * 4);
    }

    #[test]
    fn wait_for_change_times_out_and_wakes() {
        let d = std::sync::Arc::new(Display::new(g()).expect("display"));
        let gen = d.generation();
        assert_eq!(d.wait_for_change(gen, Duration::from_millis(10)), gen);
        let d2 = d.clone();
        let t = std::thread::spawn(move || d2.wait_for_change(gen, Duration::from_secs(30)));
        d.load(&[9u8; 16]);
        assert!(t.join().expect("join") > gen);
    }
}
