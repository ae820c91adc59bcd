//! The colours the framebuffer scenarios draw (`fb.rs`), shared with the host side: the
//! `vireo-testguest` crate includes this file too, so tests and benchmarks compare captures
//! with the very functions the guest drew with. Pure integer arithmetic, `no_std`.

/// The colour of pixel (`x`, `y`) of the `fb-pattern` picture for `seed` (0x00rrggbb).
pub fn pattern(x: u32, y: u32, seed: u32) -> u32 {
    let r = (x.wrapping_mul(3).wrapping_add(y).wrapping_add(seed)) & 0xff;
    let g = (y
        .wrapping_mul(5)
        .wrapping_add(x >> 2)
        .wrapping_add(seed.wrapping_mul(7)))
        & 0xff;
    let b = ((x ^ y).wrapping_add(seed.wrapping_mul(13))) & 0xff;
    (r << 16) | (g << 8) | b
}

/// The colour of frame `i` of `fb-anim` (0x00rrggbb, never black).
pub fn frame_color(i: u64) -> u32 {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    ((x as u32) & 0x00ff_ffff) | 0x0001_0101
}
