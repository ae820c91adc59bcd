//! Ethernet MAC addresses for guest NICs: parsing, formatting, serde and random generation.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a MAC address a NIC can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0}")]
pub struct MacError(pub String);

/// A 48-bit Ethernet MAC address.
///
/// Any six bytes can be held (see [`MacAddr::from_bytes`]); the parser ([`FromStr`]) and
/// [`MacAddr::random_local`] only produce addresses usable by a NIC: unicast and not all-zero.
/// [`fmt::Display`] prints the lowercase colon form (`52:54:00:12:34:56`), which [`FromStr`]
/// parses back to the same value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr([u8; 6]);

/// Bit 0 of the first octet: the address is a group (multicast or broadcast) address.
const MULTICAST_BIT: u8 = 0x01;
/// Bit 1 of the first octet: the address is locally administered, not assigned by an OUI owner.
const LOCAL_BIT: u8 = 0x02;

impl MacAddr {
    /// The six octets, most significant (first transmitted) first.
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }

    /// Wraps six octets as given, without validation (a snapshot or the guest may hold any value).
    pub fn from_bytes(bytes: [u8; 6]) -> Self {
        MacAddr(bytes)
    }

    /// A random locally administered unicast address: bit 1 of the first octet set, bit 0 clear,
    /// the other 46 bits random. Never all-zero, and never in a vendor's (OUI) space, so it cannot
    /// clash with real hardware. No fixed prefix is used (QEMU's `52:54:00` is also locally
    /// administered, 0x52 having bit 1 set), so all 46 free bits vary and collisions between VMs
    /// are as unlikely as possible.
    ///
    /// Randomness comes from `getrandom(2)`, falling back to `/dev/urandom`, and as a last resort
    /// (neither available) to std's randomly keyed hasher mixed with the time, so this never fails.
    pub fn random_local() -> Self {
        let mut bytes = [0u8; 6];
        fill_random(&mut bytes);
        bytes[0] = (bytes[0] & !MULTICAST_BIT) | LOCAL_BIT;
        MacAddr(bytes)
    }

    /// Whether bit 0 of the first octet is set (multicast, including broadcast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & MULTICAST_BIT != 0
    }

    /// Whether bit 1 of the first octet is set (locally administered).
    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & LOCAL_BIT != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    /// Parses six colon-separated pairs of hex digits, either case (`52:54:00:AB:cd:0f`).
    /// Refuses any other shape, multicast and broadcast addresses, and `00:00:00:00:00:00`,
    /// with [`MacError`] (which holds the input and the reason).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| MacError(format!("{s:?}: {why}"));
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in bytes.iter_mut() {
            let part = parts
                .next()
                .ok_or_else(|| invalid("expected six colon-separated octets"))?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid("each octet must be exactly two hex digits"));
            }
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| invalid("each octet must be exactly two hex digits"))?;
        }
        if parts.next().is_some() {
            return Err(invalid("expected six colon-separated octets"));
        }
        let mac = MacAddr(bytes);
        if mac.is_multicast() {
            return Err(invalid(
                "multicast/broadcast address (bit 0 of the first octet is set); a NIC needs a \
                 unicast address",
            ));
        }
        if bytes == [0; 6] {
            return Err(invalid("the all-zero address is not usable"));
        }
        Ok(mac)
    }
}

impl serde::Serialize for MacAddr {
    /// The colon form [`fmt::Display`] prints.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    /// Only what [`FromStr`] accepts: a unicast, non-zero address in colon form.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Fills `buf` with random bytes; see [`MacAddr::random_local`] for the sources tried.
fn fill_random(buf: &mut [u8]) {
    if getrandom(buf).is_ok() {
        return;
    }
    if let Ok(()) =
        std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, buf))
    {
        return;
    }
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(t.as_nanos());
    }
    hasher.write_u32(std::process::id());
    for (dst, src) in buf.iter_mut().zip(hasher.finish().to_le_bytes()) {
        *dst = src;
    }
}

/// `getrandom(2)` until `buf` is full, retrying on `EINTR` and short reads.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes for the duration of the
        // call; getrandom writes at most that many bytes and keeps no reference to it.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // `n` is non-negative and at most `rest.len()`.
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(s: &str) -> String {
        match s.parse::<MacAddr>() {
            Err(MacError(msg)) => msg,
            other => panic!("{s:?} parsed as {other:?}, expected InvalidMac"),
        }
    }

    #[test]
    fn parses_and_formats_round_trip() {
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(mac.bytes(), [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(format!("{mac:?}"), "MacAddr(52:54:00:12:34:56)");
    }

    #[test]
    fn parsing_is_case_insensitive_and_display_is_lowercase() {
        let upper: MacAddr = "02:AB:CD:EF:0A:FF".parse().unwrap();
        let mixed: MacAddr = "02:ab:Cd:eF:0a:fF".parse().unwrap();
        assert_eq!(upper, mixed);
        assert_eq!(upper.bytes(), [0x02, 0xab, 0xcd, 0xef, 0x0a, 0xff]);
        assert_eq!(upper.to_string(), "02:ab:cd:ef:0a:ff");
    }

    #[test]
    fn rejects_wrong_shapes() {
        for s in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:",
            ":52:54:00:12:34",
            "52-54-00-12-34-56",
            "525400123456",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52:54:00:12:3:456",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:+5",
            " 52:54:00:12:34:56",
            "52:54:00:12:34:56 ",
            "52:54:00:12:34:٥٦",
        ] {
            let msg = parse_err(s);
            assert!(msg.contains("octet"), "{s:?}: {msg}");
        }
    }

    #[test]
    fn rejects_multicast_broadcast_and_zero() {
        assert!(parse_err("01:00:5e:00:00:01").contains("multicast"));
        assert!(parse_err("ff:ff:ff:ff:ff:ff").contains("multicast"));
        assert!(parse_err("33:33:00:00:00:01").contains("multicast"));
        assert!(parse_err("00:00:00:00:00:00").contains("all-zero"));
        // Error display names the input.
        let err = "03:00:00:00:00:00".parse::<MacAddr>().unwrap_err();
        assert!(err.to_string().contains("03:00:00:00:00:00"), "{err}");
    }

    #[test]
    fn from_bytes_keeps_any_value() {
        let b = [0xff; 6];
        assert_eq!(MacAddr::from_bytes(b).bytes(), b);
        assert!(MacAddr::from_bytes(b).is_multicast());
    }

    #[test]
    fn random_local_is_local_unicast_parseable_and_varies() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..256 {
            let mac = MacAddr::random_local();
            assert!(mac.is_locally_administered(), "{mac}");
            assert!(!mac.is_multicast(), "{mac}");
            assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
            seen.insert(mac);
        }
        // 46 random bits: 256 draws colliding more than once would mean broken randomness.
        assert!(seen.len() >= 255, "only {} distinct of 256", seen.len());
        // Every random bit position takes both values across the draws.
        let mut ones = [0u8; 6];
        let mut zeros = [0u8; 6];
        for mac in &seen {
            for (i, b) in mac.bytes().iter().enumerate() {
                ones[i] |= b;
                zeros[i] |= !b;
            }
        }
        assert_eq!(ones, [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(zeros, [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn serde_uses_the_colon_form_and_refuses_what_parse_refuses() {
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            r#""52:54:00:12:34:56""#
        );
        assert_eq!(
            serde_json::from_str::<MacAddr>(r#""52:54:00:12:34:56""#).unwrap(),
            mac
        );
        let err = serde_json::from_str::<MacAddr>(r#""01:00:5e:00:00:01""#).unwrap_err();
        assert!(err.to_string().contains("multicast"), "{err}");
    }
}
