//! Host key events to PC/XT scancode set 1, the bytes an i8042 with
//! translation on hands the guest.
//!
//! Keys are numbered the way QEMU's extended key event numbers them (the
//! numbering of [`Key::Scancode`]): the set-1 make code in the low 7 bits,
//! bit 7 set for the keys sent with an `0xe0` prefix (Up is `0xc8`, sent as
//! `e0 48`). A key's break code is its make code with bit 7 set, after the
//! same prefix.
//!
//! A guest that turns the controller's translation off reads set 2
//! instead: [`to_set2`] converts (same keys, break codes as `f0` + make).
//!
//! X11 keysyms ([`Key::Keysym`], what RFB viewers send) are mapped for a US
//! layout, one table row per keysym: a shifted symbol maps to the key that
//! carries it (`!` is the `1` key, `:` the `;` key, `A` the `a` key).
//! [`keysym_needs_shift`] tells which of them the US layout types with Shift,
//! so the VMM's input router can press Shift for a viewer that sends `A`
//! without it (as vncdotool does, and as QEMU's VNC server accepts).

use crate::display::Key;

/// Longest byte sequence one key event produces (`e0 f0 code`, a set-2
/// extended break).
pub const MAX_SEQUENCE: usize = 3;

/// Bit of a keycode that marks an `0xe0`-prefixed key (and, in a scancode
/// byte, a break code).
const EXTENDED: u8 = 0x80;
/// The prefix byte of the extended keys.
const PREFIX_E0: u8 = 0xe0;
/// The set-2 break prefix.
const PREFIX_BREAK2: u8 = 0xf0;

/// The scancode bytes of one key event (at most [`MAX_SEQUENCE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scancodes {
    bytes: [u8; MAX_SEQUENCE],
    len: usize,
}

impl Scancodes {
    /// The bytes, in the order the guest reads them.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The left Shift keysym (`XK_Shift_L`).
pub const KEYSYM_SHIFT_L: u32 = 0xffe1;
/// The right Shift keysym (`XK_Shift_R`).
pub const KEYSYM_SHIFT_R: u32 = 0xffe2;
/// The left Shift key's keycode.
pub const KEYCODE_SHIFT_L: u8 = 0x2a;

/// Whether the US layout types the printable ASCII keysym `keysym` with Shift held
/// (`Some(true)`: `A`, `!`, `:` …), without (`Some(false)`: `a`, `1`, `;`, space …), or
/// `None` for every other keysym (Return, arrows, modifiers: Shift does not matter).
pub fn keysym_needs_shift(keysym: u32) -> Option<bool> {
    let c = char::from_u32(keysym).filter(|c| c.is_ascii_graphic() || *c == ' ')?;
    Some(c.is_ascii_uppercase() || "~!@#$%^&*()_+{}|:\"<>?".contains(c))
}

/// X11 keysym → keycode (QEMU numbering, see the module doc), sorted by
/// keysym so that lookups can binary-search. US layout.
static KEYSYMS: &[(u32, u8)] = &[
    (0x0020, 0x39), // space
    (0x0021, 0x02), // exclam
    (0x0022, 0x28), // quotedbl
    (0x0023, 0x04), // numbersign
    (0x0024, 0x05), // dollar
    (0x0025, 0x06), // percent
    (0x0026, 0x08), // ampersand
    (0x0027, 0x28), // apostrophe
    (0x0028, 0x0a), // parenleft
    (0x0029, 0x0b), // parenright
    (0x002a, 0x09), // asterisk
    (0x002b, 0x0d), // plus
    (0x002c, 0x33), // comma
    (0x002d, 0x0c), // minus
    (0x002e, 0x34), // period
    (0x002f, 0x35), // slash
    (0x0030, 0x0b), // 0
    (0x0031, 0x02), // 1
    (0x0032, 0x03), // 2
    (0x0033, 0x04), // 3
    (0x0034, 0x05), // 4
    (0x0035, 0x06), // 5
    (0x0036, 0x07), // 6
    (0x0037, 0x08), // 7
    (0x0038, 0x09), // 8
    (0x0039, 0x0a), // 9
    (0x003a, 0x27), // colon
    (0x003b, 0x27), // semicolon
    (0x003c, 0x33), // less
    (0x003d, 0x0d), // equal
    (0x003e, 0x34), // greater
    (0x003f, 0x35), // question
    (0x0040, 0x03), // at
    (0x0041, 0x1e), // A
    (0x0042, 0x30), // B
    (0x0043, 0x2e), // C
    (0x0044, 0x20), // D
    (0x0045, 0x12), // E
    (0x0046, 0x21), // F
    (0x0047, 0x22), // G
    (0x0048, 0x23), // H
    (0x0049, 0x17), // I
    (0x004a, 0x24), // J
    (0x004b, 0x25), // K
    (0x004c, 0x26), // L
    (0x004d, 0x32), // M
    (0x004e, 0x31), // N
    (0x004f, 0x18), // O
    (0x0050, 0x19), // P
    (0x0051, 0x10), // Q
    (0x0052, 0x13), // R
    (0x0053, 0x1f), // S
    (0x0054, 0x14), // T
    (0x0055, 0x16), // U
    (0x0056, 0x2f), // V
    (0x0057, 0x11), // W
    (0x0058, 0x2d), // X
    (0x0059, 0x15), // Y
    (0x005a, 0x2c), // Z
    (0x005b, 0x1a), // bracketleft
    (0x005c, 0x2b), // backslash
    (0x005d, 0x1b), // bracketright
    (0x005e, 0x07), // asciicircum
    (0x005f, 0x0c), // underscore
    (0x0060, 0x29), // grave
    (0x0061, 0x1e), // a
    (0x0062, 0x30), // b
    (0x0063, 0x2e), // c
    (0x0064, 0x20), // d
    (0x0065, 0x12), // e
    (0x0066, 0x21), // f
    (0x0067, 0x22), // g
    (0x0068, 0x23), // h
    (0x0069, 0x17), // i
    (0x006a, 0x24), // j
    (0x006b, 0x25), // k
    (0x006c, 0x26), // l
    (0x006d, 0x32), // m
    (0x006e, 0x31), // n
    (0x006f, 0x18), // o
    (0x0070, 0x19), // p
    (0x0071, 0x10), // q
    (0x0072, 0x13), // r
    (0x0073, 0x1f), // s
    (0x0074, 0x14), // t
    (0x0075, 0x16), // u
    (0x0076, 0x2f), // v
    (0x0077, 0x11), // w
    (0x0078, 0x2d), // x
    (0x0079, 0x15), // y
    (0x007a, 0x2c), // z
    (0x007b, 0x1a), // braceleft
    (0x007c, 0x2b), // bar
    (0x007d, 0x1b), // braceright
    (0x007e, 0x29), // asciitilde
    (0xfe03, 0xb8), // ISO_Level3_Shift (AltGr): right Alt
    (0xfe20, 0x0f), // ISO_Left_Tab (Shift+Tab)
    (0xff08, 0x0e), // BackSpace
    (0xff09, 0x0f), // Tab
    (0xff0d, 0x1c), // Return
    (0xff14, 0x46), // Scroll_Lock
    (0xff1b, 0x01), // Escape
    (0xff50, 0xc7), // Home
    (0xff51, 0xcb), // Left
    (0xff52, 0xc8), // Up
    (0xff53, 0xcd), // Right
    (0xff54, 0xd0), // Down
    (0xff55, 0xc9), // Page_Up (Prior)
    (0xff56, 0xd1), // Page_Down (Next)
    (0xff57, 0xcf), // End
    (0xff61, 0xb7), // Print
    (0xff63, 0xd2), // Insert
    (0xff67, 0xdd), // Menu
    (0xff7f, 0x45), // Num_Lock
    (0xff8d, 0x9c), // KP_Enter
    (0xff95, 0x47), // KP_Home
    (0xff96, 0x4b), // KP_Left
    (0xff97, 0x48), // KP_Up
    (0xff98, 0x4d), // KP_Right
    (0xff99, 0x50), // KP_Down
    (0xff9a, 0x49), // KP_Prior
    (0xff9b, 0x51), // KP_Next
    (0xff9c, 0x4f), // KP_End
    (0xff9d, 0x4c), // KP_Begin
    (0xff9e, 0x52), // KP_Insert
    (0xff9f, 0x53), // KP_Delete
    (0xffaa, 0x37), // KP_Multiply
    (0xffab, 0x4e), // KP_Add
    (0xffad, 0x4a), // KP_Subtract
    (0xffae, 0x53), // KP_Decimal
    (0xffaf, 0xb5), // KP_Divide
    (0xffb0, 0x52), // KP_0
    (0xffb1, 0x4f), // KP_1
    (0xffb2, 0x50), // KP_2
    (0xffb3, 0x51), // KP_3
    (0xffb4, 0x4b), // KP_4
    (0xffb5, 0x4c), // KP_5
    (0xffb6, 0x4d), // KP_6
    (0xffb7, 0x47), // KP_7
    (0xffb8, 0x48), // KP_8
    (0xffb9, 0x49), // KP_9
    (0xffbe, 0x3b), // F1
    (0xffbf, 0x3c), // F2
    (0xffc0, 0x3d), // F3
    (0xffc1, 0x3e), // F4
    (0xffc2, 0x3f), // F5
    (0xffc3, 0x40), // F6
    (0xffc4, 0x41), // F7
    (0xffc5, 0x42), // F8
    (0xffc6, 0x43), // F9
    (0xffc7, 0x44), // F10
    (0xffc8, 0x57), // F11
    (0xffc9, 0x58), // F12
    (0xffe1, 0x2a), // Shift_L
    (0xffe2, 0x36), // Shift_R
    (0xffe3, 0x1d), // Control_L
    (0xffe4, 0x9d), // Control_R
    (0xffe5, 0x3a), // Caps_Lock
    (0xffe7, 0xdb), // Meta_L: left Windows key
    (0xffe8, 0xdc), // Meta_R: right Windows key
    (0xffe9, 0x38), // Alt_L
    (0xffea, 0xb8), // Alt_R
    (0xffeb, 0xdb), // Super_L
    (0xffec, 0xdc), // Super_R
    (0xffff, 0xd3), // Delete
];

/// The keycode (QEMU numbering) of X11 keysym `keysym` on a US layout;
/// `None` for a keysym this table does not know.
pub fn keysym_to_keycode(keysym: u32) -> Option<u8> {
    KEYSYMS
        .binary_search_by_key(&keysym, |&(sym, _)| sym)
        .ok()
        .and_then(|i| KEYSYMS.get(i))
        .map(|&(_, code)| code)
}

/// The set-1 bytes for keycode `code` (QEMU numbering) going down (make) or
/// up (break); `None` for keycode 0 (no key) and `0x80` (no key, extended).
pub fn keycode_scancodes(code: u8, down: bool) -> Option<Scancodes> {
    let make = code & !EXTENDED;
    if make == 0 {
        return None;
    }
    let last = if down { make } else { make | EXTENDED };
    Some(if code & EXTENDED != 0 {
        Scancodes {
            bytes: [PREFIX_E0, last, 0],
            len: 2,
        }
    } else {
        Scancodes {
            bytes: [last, 0, 0],
            len: 1,
        }
    })
}

/// Set-1 make code → set-2 make code, for 0x00..=0x5d (0: no such key).
static SET1_TO_SET2: [u8; 0x5e] = [
    0x00, 0x76, 0x16, 0x1e, 0x26, 0x25, 0x2e, 0x36, // -, Esc, 1–6
    0x3d, 0x3e, 0x46, 0x45, 0x4e, 0x55, 0x66, 0x0d, // 7–0, - =, BS, Tab
    0x15, 0x1d, 0x24, 0x2d, 0x2c, 0x35, 0x3c, 0x43, // q w e r t y u i
    0x44, 0x4d, 0x54, 0x5b, 0x5a, 0x14, 0x1c, 0x1b, // o p [ ], Enter, Ctrl, a s
    0x23, 0x2b, 0x34, 0x33, 0x3b, 0x42, 0x4b, 0x4c, // d f g h j k l ;
    0x52, 0x0e, 0x12, 0x5d, 0x1a, 0x22, 0x21, 0x2a, // ' `, LShift, \, z x c v
    0x32, 0x31, 0x3a, 0x41, 0x49, 0x4a, 0x59, 0x7c, // b n m , . /, RShift, KP*
    0x11, 0x29, 0x58, 0x05, 0x06, 0x04, 0x0c, 0x03, // Alt, space, Caps, F1–F5
    0x0b, 0x83, 0x0a, 0x01, 0x09, 0x77, 0x7e, 0x6c, // F6–F10, Num, Scroll, KP7
    0x75, 0x7d, 0x7b, 0x6b, 0x73, 0x74, 0x79, 0x69, // KP8 KP9 KP- KP4 KP5 KP6 KP+ KP1
    0x72, 0x7a, 0x70, 0x71, 0x84, 0x00, 0x61, 0x78, // KP2 KP3 KP0 KP., SysRq, -, 102nd, F11
    0x07, 0x00, 0x00, 0x1f, 0x27, 0x2f, // F12, -, -, LWin, RWin, Menu (e0-prefixed)
];

/// The set-2 bytes of the same key event as the set-1 `codes` (as made by
/// [`keycode_scancodes`]): `[e0] code` for a make, `[e0] f0 code` for a
/// break. `None` for a key set 2 has no code for here.
pub fn to_set2(codes: &Scancodes) -> Option<Scancodes> {
    let (extended, last) = match codes.as_slice() {
        [PREFIX_E0, last] => (true, *last),
        [last] => (false, *last),
        _ => return None,
    };
    let down = last & EXTENDED == 0;
    let code = *SET1_TO_SET2.get(usize::from(last & !EXTENDED))?;
    if code == 0 {
        return None;
    }
    let mut out = Scancodes {
        bytes: [0; MAX_SEQUENCE],
        len: 0,
    };
    let mut push = |b: u8| {
        if let Some(slot) = out.bytes.get_mut(out.len) {
            *slot = b;
            out.len += 1;
        }
    };
    if extended {
        push(PREFIX_E0);
    }
    if !down {
        push(PREFIX_BREAK2);
    }
    push(code);
    Some(out)
}

/// The set-1 bytes for `key` going down or up: keysyms through the US table,
/// QEMU keycodes as sent. `None` when the key has no scancode (an unknown
/// keysym, a keycode above `0xff` or of no key).
pub fn scancodes(key: Key, down: bool) -> Option<Scancodes> {
    let code = match key {
        Key::Keysym(sym) => keysym_to_keycode(sym)?,
        Key::Scancode(code) => u8::try_from(code).ok()?,
    };
    keycode_scancodes(code, down)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(key: Key, down: bool) -> Vec<u8> {
        scancodes(key, down)
            .map(|s| s.as_slice().to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn table_is_sorted_without_duplicates() {
        assert!(KEYSYMS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn letters_and_their_capitals_are_the_same_key() {
        assert_eq!(bytes(Key::Keysym(u32::from(b'a')), true), [0x1e]);
        assert_eq!(bytes(Key::Keysym(u32::from(b'A')), true), [0x1e]);
        assert_eq!(bytes(Key::Keysym(u32::from(b'a')), false), [0x9e]);
        assert_eq!(bytes(Key::Keysym(u32::from(b'z')), true), [0x2c]);
        assert_eq!(bytes(Key::Keysym(u32::from(b'Q')), false), [0x90]);
    }

    #[test]
    fn shifted_symbols_are_their_base_key() {
        for (sym, code) in [
            (b'!', 0x02),
            (b'1', 0x02),
            (b'@', 0x03),
            (b')', 0x0b),
            (b':', 0x27),
            (b';', 0x27),
            (b'"', 0x28),
            (b'?', 0x35),
            (b'~', 0x29),
            (b'|', 0x2b),
            (b' ', 0x39),
        ] {
            assert_eq!(
                bytes(Key::Keysym(u32::from(sym)), true),
                [code],
                "{}",
                sym as char
            );
        }
    }

    #[test]
    fn special_keys() {
        assert_eq!(bytes(Key::Keysym(0xff0d), true), [0x1c], "Return");
        assert_eq!(bytes(Key::Keysym(0xff08), true), [0x0e], "BackSpace");
        assert_eq!(bytes(Key::Keysym(0xff1b), false), [0x81], "Escape up");
        assert_eq!(bytes(Key::Keysym(0xffe1), true), [0x2a], "Shift_L");
        assert_eq!(bytes(Key::Keysym(0xffe4), true), [0xe0, 0x1d], "Control_R");
        assert_eq!(bytes(Key::Keysym(0xffbe), true), [0x3b], "F1");
        assert_eq!(bytes(Key::Keysym(0xffc9), true), [0x58], "F12");
        assert_eq!(bytes(Key::Keysym(0xff52), true), [0xe0, 0x48], "Up");
        assert_eq!(bytes(Key::Keysym(0xff52), false), [0xe0, 0xc8], "Up up");
        assert_eq!(bytes(Key::Keysym(0xffff), true), [0xe0, 0x53], "Delete");
        assert_eq!(bytes(Key::Keysym(0xffeb), true), [0xe0, 0x5b], "Super_L");
        assert_eq!(bytes(Key::Keysym(0xffb7), true), [0x47], "KP_7");
        assert_eq!(bytes(Key::Keysym(0xff8d), true), [0xe0, 0x1c], "KP_Enter");
    }

    #[test]
    fn qemu_keycodes_are_used_as_sent() {
        assert_eq!(bytes(Key::Scancode(0x1e), true), [0x1e]);
        assert_eq!(bytes(Key::Scancode(0x1e), false), [0x9e]);
        assert_eq!(bytes(Key::Scancode(0xc8), true), [0xe0, 0x48]);
        assert_eq!(bytes(Key::Scancode(0xc8), false), [0xe0, 0xc8]);
    }

    fn set2(key: Key, down: bool) -> Vec<u8> {
        scancodes(key, down)
            .and_then(|s| to_set2(&s))
            .map(|s| s.as_slice().to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn set2_codes_and_break_prefixes() {
        assert_eq!(set2(Key::Keysym(u32::from(b'a')), true), [0x1c]);
        assert_eq!(set2(Key::Keysym(u32::from(b'a')), false), [0xf0, 0x1c]);
        assert_eq!(set2(Key::Keysym(0xff1b), true), [0x76], "Escape");
        assert_eq!(set2(Key::Keysym(0xffc4), true), [0x83], "F7");
        assert_eq!(set2(Key::Keysym(0xffc9), true), [0x07], "F12");
        assert_eq!(set2(Key::Keysym(0xff52), true), [0xe0, 0x75], "Up");
        assert_eq!(set2(Key::Keysym(0xff52), false), [0xe0, 0xf0, 0x75]);
        assert_eq!(set2(Key::Keysym(0xffeb), true), [0xe0, 0x1f], "Super_L");
        assert!(set2(Key::Scancode(0x55), true).is_empty(), "no such key");
        assert!(set2(Key::Scancode(0x7f), true).is_empty(), "past the table");
    }

    /// No two set-1 keys share a set-2 code.
    #[test]
    fn set2_table_is_one_to_one() {
        let mut seen = std::collections::HashSet::new();
        for &c in SET1_TO_SET2.iter().filter(|&&c| c != 0) {
            assert!(seen.insert(c), "{c:#x} twice");
        }
    }

    #[test]
    fn unknown_keys_produce_nothing() {
        assert!(scancodes(Key::Keysym(0x1234_5678), true).is_none());
        assert!(scancodes(Key::Keysym(0), true).is_none());
        assert!(scancodes(Key::Scancode(0), true).is_none());
        assert!(scancodes(Key::Scancode(0x80), false).is_none());
        assert!(scancodes(Key::Scancode(0x1_1e), true).is_none());
    }
}
