//! Kernel ABI used by the tap code: ioctl request numbers, flag bits and `struct ifreq`.
//!
//! Values come from `<linux/if_tun.h>` and `<linux/sockios.h>` and were checked against the
//! headers of `linux-libc-dev` by compiling a C program that prints them. They are the same on
//! every Linux architecture that uses the generic `_IOC` encoding (x86_64, aarch64, riscv64).

use libc::{c_char, c_short, c_ulong};

/// Request type taken by `libc::ioctl` on glibc targets.
pub(crate) type IoctlRequest = c_ulong;

/// `_IOW('T', 202, int)`: attach the file to a tun/tap device, creating it if needed.
pub(crate) const TUNSETIFF: IoctlRequest = 0x4004_54ca;
/// `_IOW('T', 208, unsigned int)`: which offloaded packets the device may hand to us.
pub(crate) const TUNSETOFFLOAD: IoctlRequest = 0x4004_54d0;
/// `_IOR('T', 210, unsigned int)`: read back the name and flags of the attached device.
pub(crate) const TUNGETIFF: IoctlRequest = 0x8004_54d2;
/// `_IOW('T', 216, int)`: size of the virtio-net header prefixed to every frame.
pub(crate) const TUNSETVNETHDRSZ: IoctlRequest = 0x4004_54d8;

/// Get interface flags (`<linux/sockios.h>`).
pub(crate) const SIOCGIFFLAGS: IoctlRequest = 0x8913;
/// Set interface flags (`<linux/sockios.h>`).
pub(crate) const SIOCSIFFLAGS: IoctlRequest = 0x8914;

/// `TUNSETIFF` flag: a layer-2 (Ethernet) device.
pub(crate) const IFF_TAP: u16 = 0x0002;
/// `TUNSETIFF` flag: no 4-byte packet-information prefix.
pub(crate) const IFF_NO_PI: u16 = 0x1000;
/// `TUNSETIFF` flag: prefix every frame with a virtio-net header.
pub(crate) const IFF_VNET_HDR: u16 = 0x4000;
/// Mask of the device-type bits in the `TUNGETIFF` flags (`TUN_TYPE_MASK`).
pub(crate) const TUN_TYPE_MASK: u16 = 0x000f;

/// `TUNSETOFFLOAD` bit: we accept frames with a partial checksum.
pub(crate) const TUN_F_CSUM: u32 = 0x01;
/// `TUNSETOFFLOAD` bit: we accept IPv4 TCP segmentation offload frames.
pub(crate) const TUN_F_TSO4: u32 = 0x02;
/// `TUNSETOFFLOAD` bit: we accept IPv6 TCP segmentation offload frames.
pub(crate) const TUN_F_TSO6: u32 = 0x04;
/// `TUNSETOFFLOAD` bit: TSO frames may carry the ECN (CWR) bit.
pub(crate) const TUN_F_TSO_ECN: u32 = 0x08;
/// `TUNSETOFFLOAD` bit: we accept UDP fragmentation offload frames.
pub(crate) const TUN_F_UFO: u32 = 0x10;

/// Interface name buffer size, including the terminating NUL.
pub(crate) const IFNAMSIZ: usize = 16;

/// `struct ifreq` with the union member used here (`ifr_flags`) and padding to the kernel's size.
///
/// The kernel's union is 24 bytes on 64-bit targets (its largest member is `struct ifmap`), so the
/// whole struct is 40 bytes; the kernel copies exactly `sizeof(struct ifreq)` in and out.
#[repr(C)]
pub(crate) struct IfReq {
    /// NUL-terminated interface name.
    pub name: [c_char; IFNAMSIZ],
    /// `ifr_flags` (the first member of the union).
    pub flags: c_short,
    /// Rest of the union.
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

impl IfReq {
    /// An all-zero request carrying `name`, which must be shorter than [`IFNAMSIZ`] bytes and free
    /// of NUL (the caller validates it); longer input is truncated so the buffer stays
    /// NUL-terminated.
    pub(crate) fn with_name(name: &str) -> Self {
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes().take(IFNAMSIZ - 1)) {
            *dst = src as c_char;
        }
        req
    }

    /// The name in the buffer, up to the first NUL, lossily decoded.
    pub(crate) fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
