//! The state file's framing: a header naming the format version and the Vireo that wrote it,
//! a CBOR body, and a CRC-32 over everything before it.
//!
//! ```text
//!  0        8      10     12     14          14+n        22+n             22+n+len  +4
//!  │"VIREOSNP"│ major│ minor│ n    │ vireo version│ body len u64│ CBOR body ... │ CRC-32 │
//! ```
//! All integers little-endian. The body is self-describing (CBOR maps with field names), so
//! a field added later with a default is read from older files: adding one bumps the minor
//! version. A reader accepts its own major version with a minor up to its own; a file of
//! another major version, or of a newer minor (which may hold state this reader would drop),
//! is refused by name before its body is parsed. The checksum is checked before the body is
//! parsed, so a truncated or corrupted file is reported as such, never half-applied.

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

/// The file's first eight bytes.
pub const MAGIC: [u8; 8] = *b"VIREOSNP";
/// The format's major version: files of another major version are refused.
pub const FORMAT_MAJOR: u16 = 1;
/// The format's minor version: bumped when a field with a default is added.
pub const FORMAT_MINOR: u16 = 0;
/// The largest state file accepted (the state of 254 vCPUs and 31 devices is far smaller).
pub const MAX_STATE_BYTES: usize = 64 << 20;
/// The longest Vireo version string in a header.
const MAX_VERSION_LEN: usize = 64;

/// The header of a state file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format major version.
    pub major: u16,
    /// Format minor version.
    pub minor: u16,
    /// The version of the Vireo that wrote the file.
    pub vireo_version: String,
}

/// Why a state file could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    /// The file does not start with the magic.
    #[error("not a Vireo snapshot state file (bad magic)")]
    BadMagic,
    /// The file ends before its header or body does.
    #[error("the state file is truncated: {need} bytes needed, {have} present")]
    Truncated {
        /// Bytes the header says the file holds.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// The file is larger than any state file.
    #[error("the state file is {0} bytes, more than the {MAX_STATE_BYTES} accepted")]
    TooLarge(u64),
    /// Another major format version.
    #[error(
        "snapshot format {major}.{minor} (written by Vireo {written_by}) is not supported: this \
         Vireo reads format {FORMAT_MAJOR}.0 to {FORMAT_MAJOR}.{FORMAT_MINOR}"
    )]
    UnsupportedVersion {
        /// The file's major version.
        major: u16,
        /// The file's minor version.
        minor: u16,
        /// The Vireo that wrote it.
        written_by: String,
    },
    /// The version string is not UTF-8 or too long.
    #[error("the state file's header is malformed: {0}")]
    BadHeader(&'static str),
    /// The checksum does not match the content.
    #[error(
        "the state file is corrupted: checksum {found:#010x}, content sums to {computed:#010x}"
    )]
    Checksum {
        /// The checksum stored in the file.
        found: u32,
        /// The checksum of the content.
        computed: u32,
    },
    /// Bytes after the checksum.
    #[error("the state file has {0} bytes after its checksum")]
    TrailingBytes(u64),
    /// The body does not decode as this version's state.
    #[error("the state file's body is invalid: {0}")]
    Body(String),
}

/// Encodes `body` with a header naming this Vireo and format version.
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, FormatError> {
    let version = env!("CARGO_PKG_VERSION").as_bytes();
    let mut cbor = Vec::new();
    ciborium::into_writer(body, &mut cbor).map_err(|e| FormatError::Body(e.to_string()))?;
    let mut out = Vec::with_capacity(cbor.len() + 64);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    out.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    out.extend_from_slice(&(version.len() as u16).to_le_bytes());
    out.extend_from_slice(version);
    out.extend_from_slice(&(cbor.len() as u64).to_le_bytes());
    out.extend_from_slice(&cbor);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// A cursor over untrusted bytes that reports truncation instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(FormatError::Truncated {
                need: self.pos as u64 + n as u64,
                have: self.bytes.len() as u64,
            });
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, FormatError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
}

/// Reads the header alone (to report a file's version without decoding its body).
pub fn read_header(bytes: &[u8]) -> Result<Header, FormatError> {
    Ok(split(bytes)?.0)
}

/// Splits a state file into its header and its body bytes, checking magic, version, length
/// and checksum.
fn split(bytes: &[u8]) -> Result<(Header, &[u8]), FormatError> {
    if bytes.len() > MAX_STATE_BYTES {
        return Err(FormatError::TooLarge(bytes.len() as u64));
    }
    let mut r = Reader { bytes, pos: 0 };
    if r.take(MAGIC.len()).map_err(|_| FormatError::BadMagic)? != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let major = r.u16()?;
    let minor = r.u16()?;
    let len = usize::from(r.u16()?);
    if len > MAX_VERSION_LEN {
        return Err(FormatError::BadHeader("the Vireo version is too long"));
    }
    let version = std::str::from_utf8(r.take(len)?)
        .map_err(|_| FormatError::BadHeader("the Vireo version is not UTF-8"))?
        .to_owned();
    let header = Header {
        major,
        minor,
        vireo_version: version,
    };
    if major != FORMAT_MAJOR || minor > FORMAT_MINOR {
        return Err(FormatError::UnsupportedVersion {
            major,
            minor,
            written_by: header.vireo_version,
        });
    }
    let body_len = r.take(8)?;
    let body_len = u64::from_le_bytes(body_len.try_into().unwrap_or([0xff; 8]));
    let body_len = usize::try_from(body_len)
        .ok()
        .filter(|&l| l <= MAX_STATE_BYTES)
        .ok_or(FormatError::TooLarge(body_len))?;
    let body = r.take(body_len)?;
    let covered = r.pos;
    let crc = r.take(4)?;
    let found = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(&bytes[..covered]);
    if found != computed {
        return Err(FormatError::Checksum { found, computed });
    }
    if r.pos != bytes.len() {
        return Err(FormatError::TrailingBytes((bytes.len() - r.pos) as u64));
    }
    Ok((header, body))
}

/// Decodes a state file written by [`encode`] (of this major version and a minor up to this
/// one). Never panics on any input.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(Header, T), FormatError> {
    let (header, body) = split(bytes)?;
    Ok((header, decode_body(body)?))
}

/// Decodes a body (the CBOR between the header and the checksum) on its own. Never panics
/// on any input; nesting deeper than ciborium's recursion limit is an error.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FormatError> {
    ciborium::from_reader(body).map_err(|e| FormatError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V1 {
        a: u32,
        b: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V1WithNewField {
        a: u32,
        b: Vec<u8>,
        #[serde(default)]
        c: u16,
    }

    fn sample() -> Vec<u8> {
        encode(&V1 {
            a: 7,
            b: vec![1, 2, 3],
        })
        .expect("encode")
    }

    #[test]
    fn round_trips_and_names_the_writer() {
        let (h, v): (Header, V1) = decode(&sample()).expect("decode");
        assert_eq!(h.major, FORMAT_MAJOR);
        assert_eq!(h.vireo_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(
            v,
            V1 {
                a: 7,
                b: vec![1, 2, 3]
            }
        );
    }

    #[test]
    fn a_field_added_with_a_default_reads_old_files() {
        let (_, v): (Header, V1WithNewField) = decode(&sample()).expect("decode");
        assert_eq!(v.c, 0);
        assert_eq!(v.a, 7);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for len in 0..bytes.len() {
            let e = decode::<V1>(&bytes[..len]).expect_err("truncated");
            assert!(
                matches!(
                    e,
                    FormatError::Truncated { .. }
                        | FormatError::BadMagic
                        | FormatError::Checksum { .. }
                ),
                "{len}: {e}"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = sample();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode::<V1>(&b).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn another_major_version_is_refused_by_name() {
        let mut b = sample();
        b[8..10].copy_from_slice(&2u16.to_le_bytes());
        let e = decode::<V1>(&b).expect_err("major 2");
        assert!(matches!(
            e,
            FormatError::UnsupportedVersion { major: 2, .. }
        ));
        assert!(
            e.to_string()
                .starts_with("snapshot format 2.0 (written by Vireo"),
            "{e}"
        );
        let mut b = sample();
        b[10..12].copy_from_slice(&(FORMAT_MINOR + 1).to_le_bytes());
        assert!(matches!(
            decode::<V1>(&b),
            Err(FormatError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn trailing_bytes_and_bad_bodies() {
        let mut b = sample();
        b.push(0);
        assert_eq!(decode::<V1>(&b), Err(FormatError::TrailingBytes(1)));
        // A body of the wrong shape, correctly framed.
        let b = encode(&"just a string").expect("encode");
        assert!(matches!(decode::<V1>(&b), Err(FormatError::Body(_))));
    }
}
