//! [`Offloads`]: which offloaded frames the tap may hand to the guest, and their `TUNSETOFFLOAD`
//! encoding.

use crate::sys::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO};

/// Receive offloads the guest driver accepted, i.e. what kind of frames the tap may deliver to
/// the guest. Each field corresponds to one virtio-net feature bit:
///
/// | field  | virtio feature               | tap flag        |
/// |--------|------------------------------|-----------------|
/// | `csum` | `VIRTIO_NET_F_GUEST_CSUM`    | `TUN_F_CSUM`    |
/// | `tso4` | `VIRTIO_NET_F_GUEST_TSO4`    | `TUN_F_TSO4`    |
/// | `tso6` | `VIRTIO_NET_F_GUEST_TSO6`    | `TUN_F_TSO6`    |
/// | `ecn`  | `VIRTIO_NET_F_GUEST_ECN`     | `TUN_F_TSO_ECN` |
/// | `ufo`  | `VIRTIO_NET_F_GUEST_UFO`     | `TUN_F_UFO`     |
///
/// The default (all `false`) means the tap delivers only complete, fully checksummed frames of at
/// most the MTU, with `flags = 0` and `gso_type = NONE` in the virtio-net header.
///
/// The virtio spec makes TSO/UFO depend on `csum` and `ecn` on TSO; the kernel refuses other
/// combinations. [`crate::Tap::set_offloads`] therefore drops a flag whose prerequisite is missing
/// instead of failing, which is always safe: the kernel then segments and checksums those frames
/// itself. This keeps a driver that negotiates an inconsistent set from causing an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Offloads {
    /// The guest accepts frames with a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    pub csum: bool,
    /// The guest accepts IPv4 TCP segmentation offload (large TCP) frames.
    pub tso4: bool,
    /// The guest accepts IPv6 TCP segmentation offload frames.
    pub tso6: bool,
    /// TSO frames may have the TCP CWR bit set (`VIRTIO_NET_HDR_GSO_ECN`).
    pub ecn: bool,
    /// The guest accepts UDP fragmentation offload frames.
    pub ufo: bool,
}

impl Offloads {
    /// The `TUNSETOFFLOAD` argument: the requested flags minus any whose prerequisite is missing
    /// (everything needs `csum`; `ecn` needs `tso4` or `tso6`). The result is always accepted by
    /// Linux's tun driver.
    pub(crate) fn tun_flags(self) -> u32 {
        if !self.csum {
            return 0;
        }
        let mut flags = TUN_F_CSUM;
        if self.tso4 {
            flags |= TUN_F_TSO4;
        }
        if self.tso6 {
            flags |= TUN_F_TSO6;
        }
        if self.ecn && (self.tso4 || self.tso6) {
            flags |= TUN_F_TSO_ECN;
        }
        if self.ufo {
            flags |= TUN_F_UFO;
        }
        flags
    }

    /// Every one of the 32 combinations of the five flags, for tests.
    #[cfg(test)]
    pub(crate) fn all_combinations() -> impl Iterator<Item = Offloads> {
        (0u8..32).map(|bits| Offloads {
            csum: bits & 1 != 0,
            tso4: bits & 2 != 0,
            tso6: bits & 4 != 0,
            ecn: bits & 8 != 0,
            ufo: bits & 16 != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_nothing() {
        assert_eq!(Offloads::default().tun_flags(), 0);
    }

    #[test]
    fn everything_maps_to_every_flag() {
        let all = Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            ecn: true,
            ufo: true,
        };
        assert_eq!(all.tun_flags(), 0x1f);
    }

    #[test]
    fn prerequisites_are_enforced() {
        for o in Offloads::all_combinations() {
            let f = o.tun_flags();
            if !o.csum {
                assert_eq!(f, 0, "{o:?}");
                continue;
            }
            assert_ne!(f & TUN_F_CSUM, 0, "{o:?}");
            assert_eq!(f & TUN_F_TSO4 != 0, o.tso4, "{o:?}");
            assert_eq!(f & TUN_F_TSO6 != 0, o.tso6, "{o:?}");
            assert_eq!(f & TUN_F_UFO != 0, o.ufo, "{o:?}");
            assert_eq!(f & TUN_F_TSO_ECN != 0, o.ecn && (o.tso4 || o.tso6), "{o:?}");
        }
    }
}
