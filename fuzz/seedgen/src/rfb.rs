//! Seeds for `rfb_client`: viewer byte streams as VNC viewers send them — vncdotool (3.8, Raw,
//! keysyms, pointer), a QEMU-aware viewer (ZRLE, extended key events), 3.7 and 3.3 sessions,
//! VNC authentication with the target's fixed password and challenge, and refused ones.
//!
//! Input format (see fuzz_targets/rfb_client.rs): byte 0 = mode (bit 0 VNC auth; bits 1..=7
//! piece size − 1), then the stream.

use crate::Seed;

/// DES response to the target's challenge (sixteen 0x5a bytes) for its password `fuzz`, VNC
/// style (key bytes bit-reversed); computed with pycryptodome and checked by the target, which
/// asserts that an accepted response equals `vireo_devices::rfb::auth::response`.
const FUZZ_RESPONSE: [u8; 16] = [
    0x2c, 0xa2, 0x43, 0x64, 0xf2, 0x3c, 0x48, 0x11, 0x2c, 0xa2, 0x43, 0x64, 0xf2, 0x3c, 0x48, 0x11,
];

fn set_pixel_format(pf: [u8; 16]) -> Vec<u8> {
    let mut m = vec![0, 0, 0, 0];
    m.extend_from_slice(&pf);
    m
}

const RGB32: [u8; 16] = [32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0];
const RGB565_BE: [u8; 16] = [16, 16, 1, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0];
const BGR233: [u8; 16] = [8, 8, 0, 1, 0, 7, 0, 7, 0, 3, 0, 3, 6, 0, 0, 0];

fn set_encodings(list: &[i32]) -> Vec<u8> {
    let mut m = vec![2, 0];
    m.extend_from_slice(&(list.len() as u16).to_be_bytes());
    for e in list {
        m.extend_from_slice(&e.to_be_bytes());
    }
    m
}

fn request(incremental: bool, x: u16, y: u16, w: u16, h: u16) -> Vec<u8> {
    let mut m = vec![3, u8::from(incremental)];
    for v in [x, y, w, h] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m
}

fn key(down: bool, keysym: u32) -> Vec<u8> {
    let mut m = vec![4, u8::from(down), 0, 0];
    m.extend_from_slice(&keysym.to_be_bytes());
    m
}

fn pointer(buttons: u8, x: u16, y: u16) -> Vec<u8> {
    let mut m = vec![5, buttons];
    m.extend_from_slice(&x.to_be_bytes());
    m.extend_from_slice(&y.to_be_bytes());
    m
}

fn cut_text(text: &[u8]) -> Vec<u8> {
    let mut m = vec![6, 0, 0, 0];
    m.extend_from_slice(&(text.len() as u32).to_be_bytes());
    m.extend_from_slice(text);
    m
}

fn qemu_key(down: bool, keysym: u32, keycode: u32) -> Vec<u8> {
    let mut m = vec![255, 0];
    m.extend_from_slice(&u16::from(down).to_be_bytes());
    m.extend_from_slice(&keysym.to_be_bytes());
    m.extend_from_slice(&keycode.to_be_bytes());
    m
}

fn seed(name: &str, mode: u8, parts: &[Vec<u8>]) -> Seed {
    let mut bytes = vec![mode];
    for p in parts {
        bytes.extend_from_slice(p);
    }
    (name.to_string(), bytes)
}

/// The seeds.
pub fn seeds() -> Vec<Seed> {
    let v38 = b"RFB 003.008\n".to_vec();
    let v37 = b"RFB 003.007\n".to_vec();
    let v33 = b"RFB 003.003\n".to_vec();
    let none38 = vec![v38.clone(), vec![1], vec![1]];
    let auth38 = vec![v38.clone(), vec![2], FUZZ_RESPONSE.to_vec(), vec![1]];
    // What vncdotool sends: Raw + cursor, desktop size, last rect, QEMU key; a full request.
    let vncdotool = vec![
        set_encodings(&[0, -239, -223, -224, -258]),
        request(false, 0, 0, 1024, 768),
        key(true, 0x61),
        key(false, 0x61),
        pointer(0, 10, 20),
        pointer(1, 10, 20),
        pointer(0, 10, 20),
        request(true, 0, 0, 1024, 768),
    ];
    let qemu_viewer = vec![
        set_pixel_format(RGB32),
        set_encodings(&[16, 0, -223, -258, -257, -261]),
        request(false, 0, 0, 1024, 768),
        qemu_key(true, 0xff52, 0xc8),
        qemu_key(false, 0xff52, 0xc8),
        qemu_key(true, 0x61, 0),
        cut_text(b"hello clipboard"),
        request(true, 0, 0, 1024, 768),
    ];
    let formats = vec![
        set_pixel_format(RGB565_BE),
        set_encodings(&[16]),
        request(false, 100, 100, 64, 64),
        set_pixel_format(BGR233),
        request(true, 5000, 5000, 10, 10),
    ];
    let cat = |a: &[Vec<u8>], b: &[Vec<u8>]| [a, b].concat();
    vec![
        seed("none-38-vncdotool", 0, &cat(&none38, &vncdotool)),
        seed("none-38-qemu-viewer-1byte", 0, &cat(&none38, &qemu_viewer)),
        seed(
            "none-37-formats",
            2 * 15,
            &cat(&[v37.clone(), vec![1], vec![0]], &formats),
        ),
        seed("none-33", 2 * 3, &cat(&[v33.clone(), vec![1]], &vncdotool)),
        seed(
            "apple-889",
            0,
            &[b"RFB 003.889\n".to_vec(), vec![1], vec![1]],
        ),
        seed("auth-38-qemu-viewer", 1, &cat(&auth38, &qemu_viewer)),
        seed(
            "auth-33-vncdotool",
            1 + 2 * 7,
            &cat(&[v33, FUZZ_RESPONSE.to_vec(), vec![0]], &vncdotool),
        ),
        seed("auth-38-wrong", 1, &[v38.clone(), vec![2], vec![0; 16]]),
        seed("bad-version", 0, &[b"GET / HTTP/1.1\r\n".to_vec()]),
        seed("bad-security-type", 0, &[v38.clone(), vec![2]]),
        seed(
            "colour-map",
            0,
            &cat(&none38, &[vec![0, 0, 0, 0, 8, 8, 0, 0], vec![0; 12]]),
        ),
        seed(
            "too-many-encodings",
            0,
            &cat(&none38, &[vec![2, 0, 0x04, 0x01]]),
        ),
        seed(
            "cut-text-too-long",
            0,
            &cat(&none38, &[vec![6, 0, 0, 0, 0, 0x10, 0, 1]]),
        ),
        seed("unknown-message", 0, &cat(&none38, &[vec![42]])),
        seed("truncated", 0, &cat(&none38, &[vec![3, 1, 0]])),
    ]
}
