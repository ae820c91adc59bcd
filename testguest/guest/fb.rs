//! Framebuffer scenarios: the guest draws into the linear framebuffer Vireo maps at
//! [`FB_ADDR`] for a VM with a VNC console (32 bits per pixel, red/green/blue at bits
//! 16/8/0, stride = width × 4), so tests can compare what viewers capture with what the
//! guest drew.
//!
//! - `fb-pattern WIDTH HEIGHT SEED`: draws `fb_colors::pattern` over the whole screen, prints
//!   `fb drawn w=… h=… seed=…`, then idles (the test stops the VM).
//! - `fb-anim WIDTH HEIGHT FRAMES GAP-MS`: fills the whole screen with `fb_colors::frame_color(i)`
//!   for i = 1..=FRAMES, GAP-MS milliseconds apart (0: as fast as it can); with a gap it prints
//!   `fb frame=<i> color=0x<16 hex digits>` after each fill, without one every 64th; then
//!   `fb anim done frames=<n> us=<elapsed microseconds>` and exits 0.

use crate::fb_colors::{frame_color, pattern};
use crate::{put_dec, put_hex16, puts, tsc_hz, Args, Deadline};


/// Guest-physical (and, identity-mapped, virtual) address of the framebuffer.
pub const FB_ADDR: usize = 0xd000_0000;

fn fill(width: u32, height: u32, mut colour: impl FnMut(u32, u32) -> u32) {
    let fb = FB_ADDR as *mut u32;
    for y in 0..height {
        for x in 0..width {
            let i = (y * width + x) as usize;
            // SAFETY: the framebuffer is identity-mapped and holds width × height pixels
            // (the VMM sized it from the same spec the test passes on the command line).
            unsafe { fb.add(i).write_volatile(colour(x, y)) };
        }
    }
}

fn geometry(args: &mut Args<'_>) -> Option<(u32, u32)> {
    let w = crate::parse_u64(args.next(), 0);
    let h = crate::parse_u64(args.next(), 0);
    if w == 0 || h == 0 || w > 4096 || h > 4096 {
        puts("FAIL: fb: WIDTH and HEIGHT must be 1..=4096\n");
        return None;
    }
    Some((w as u32, h as u32))
}

/// `fb-pattern WIDTH HEIGHT SEED`.
pub fn scenario_pattern(args: &mut Args<'_>) -> u8 {
    let Some((w, h)) = geometry(args) else {
        return 1;
    };
    let seed = crate::parse_u64(args.next(), 0) as u32;
    fill(w, h, |x, y| pattern(x, y, seed));
    puts("fb drawn w=");
    put_dec(u64::from(w));
    puts(" h=");
    put_dec(u64::from(h));
    puts(" seed=");
    put_dec(u64::from(seed));
    puts("\n");
    loop {
        core::hint::spin_loop();
    }
}

/// `fb-anim WIDTH HEIGHT FRAMES GAP-MS`.
pub fn scenario_anim(args: &mut Args<'_>) -> u8 {
    let Some((w, h)) = geometry(args) else {
        return 1;
    };
    let frames = crate::parse_u64(args.next(), 100);
    let gap = crate::parse_u64(args.next(), 0);
    let start = crate::rdtsc();
    for i in 1..=frames {
        let c = frame_color(i);
        fill(w, h, |_, _| c);
        if gap > 0 || i % 64 == 0 {
            puts("fb frame=");
            put_dec(i);
            puts(" color=0x");
            put_hex16(u64::from(c));
            puts("\n");
        }
        if gap > 0 {
            let d = Deadline::after_ms(gap);
            while !d.expired() {
                core::hint::spin_loop();
            }
        }
    }
    let cycles = crate::rdtsc().wrapping_sub(start);
    puts("fb anim done frames=");
    put_dec(frames);
    puts(" us=");
    put_dec(cycles / (tsc_hz() / 1_000_000).max(1));
    puts("\n");
    0
}
