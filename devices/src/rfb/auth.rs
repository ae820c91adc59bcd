//! VNC Authentication (RFC 6143 §7.2.2): the server sends a random 16-byte
//! challenge, the viewer returns it DES-ECB-encrypted with the password as
//! the key — at most 8 bytes, zero padded, each byte's bits reversed (the
//! historical VNC quirk that every viewer reproduces).

use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockEncrypt, KeyInit};
use des::Des;

/// A fresh random challenge from the OS generator.
pub fn new_challenge() -> std::io::Result<[u8; 16]> {
    let mut c = [0u8; 16];
    getrandom::fill(&mut c).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(c)
}

/// The DES key VNC derives from `password`: its first 8 bytes, zero padded,
/// each bit-reversed.
fn key(password: &[u8]) -> [u8; 8] {
    let mut k = [0u8; 8];
    for (slot, b) in k.iter_mut().zip(password) {
        *slot = b.reverse_bits();
    }
    k
}

/// The response a viewer knowing `password` sends to `challenge`.
pub fn response(password: &[u8], challenge: &[u8; 16]) -> [u8; 16] {
    let cipher = Des::new(&GenericArray::from(key(password)));
    let mut out = [0u8; 16];
    for (dst, src) in out.chunks_exact_mut(8).zip(challenge.chunks_exact(8)) {
        let mut block = GenericArray::clone_from_slice(src);
        cipher.encrypt_block(&mut block);
        dst.copy_from_slice(&block);
    }
    out
}

/// Whether `answer` is the right response to `challenge` for `password`,
/// compared in constant time (every byte is looked at whatever differs).
pub fn verify(password: &[u8], challenge: &[u8; 16], answer: &[u8; 16]) -> bool {
    let expected = response(password, challenge);
    let diff = expected
        .iter()
        .zip(answer)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently with pycryptodome: DES-ECB, key = "secret"
    /// zero padded with each byte bit-reversed, plaintext 00 01 .. 0f.
    #[test]
    fn known_vector() {
        let challenge: [u8; 16] = std::array::from_fn(|i| i as u8);
        let expected = [
            0xee, 0x22, 0x53, 0x9f, 0x33, 0xa5, 0x98, 0x3e, 0xc1, 0x2f, 0x9c, 0x2e, 0xdb, 0xc9,
            0x95, 0xdd,
        ];
        assert_eq!(response(b"secret", &challenge), expected);
        assert!(verify(b"secret", &challenge, &expected));
        assert!(!verify(b"secreT", &challenge, &expected));
        // The fuzz seeds' vector (fuzz/seedgen/src/rfb.rs), also from pycryptodome.
        let fuzz = [
            0x2c, 0xa2, 0x43, 0x64, 0xf2, 0x3c, 0x48, 0x11, 0x2c, 0xa2, 0x43, 0x64, 0xf2, 0x3c,
            0x48, 0x11,
        ];
        assert_eq!(response(b"fuzz", &[0x5a; 16]), fuzz);
        // Only the first 8 bytes of a password count.
        assert_eq!(
            response(b"12345678", &challenge),
            response(b"123456789abc", &challenge)
        );
    }

    #[test]
    fn challenges_differ() {
        assert_ne!(new_challenge().expect("rng"), new_challenge().expect("rng"));
    }
}
