//! [`Tap`]: one queue of a Linux tap device, configured for virtio-net.
//!
//! Every frame read from or written to a [`Tap`] is prefixed by a [`VNET_HDR_LEN`]-byte virtio 1.x
//! `struct virtio_net_hdr` (including `num_buffers`), so the device model can pass guest buffers
//! straight through with `readv`/`writev`.
//!
//! # Endianness
//! The tap reads and writes the header's 16-bit fields in the host's byte order unless told
//! otherwise with `TUNSETVNETLE`/`TUNSETVNETBE`. Virtio 1.x headers are always little-endian, so
//! on a little-endian host (x86_64, aarch64) the native order already matches and neither ioctl
//! is needed; they exist for legacy (pre-1.0) virtio on big-endian hosts. Big-endian hosts are
//! refused at compile time rather than silently corrupting headers.

use std::ffi::c_int;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::sys::{self, IfReq};
use crate::{NetError, Offloads};

#[cfg(target_endian = "big")]
compile_error!(
    "vireo-net assumes a little-endian host: virtio 1.x headers would need TUNSETVNETLE"
);

/// Length of the virtio-net header that prefixes every frame on a [`Tap`]: the virtio 1.x
/// `struct virtio_net_hdr` (10 bytes) plus `num_buffers` (2 bytes).
///
/// On reads the kernel fills bytes 0..10; what it does with bytes 10..12 depends on the kernel
/// version (older ones skip them, 6.x writes zeros), so the device model must store
/// `num_buffers` itself after the read. On writes the kernel ignores bytes 10..12.
pub const VNET_HDR_LEN: usize = 12;

/// Path of the tun/tap clone device.
const TUN_PATH: &str = "/dev/net/tun";

/// Most iovecs one `readv`/`writev` accepts (`UIO_MAXIOV` on Linux).
const IOV_MAX: usize = 1024;

/// One open queue of a tap device, set up for a virtio-net backend.
///
/// Guarantees, once [`Tap::open`] has returned it:
/// - the file descriptor is attached to a layer-2 tap named [`Tap::name`] with `IFF_NO_PI` and
///   `IFF_VNET_HDR`, and the header length is [`VNET_HDR_LEN`];
/// - the descriptor is non-blocking and close-on-exec;
/// - the link was administratively up when `open` returned;
/// - no offloads are enabled (even on a persistent tap that had some) until
///   [`Tap::set_offloads`] is called.
///
/// Dropping the `Tap` closes the descriptor; a tap that `open` created (not a persistent one) is
/// then deleted by the kernel. `Tap` is `Send` and `Sync`: reads and writes take `&self`, and
/// each call moves exactly one whole frame.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Open the tap named `name`, creating it if it does not exist (needs `CAP_NET_ADMIN`), with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, the vnet header size set to [`VNET_HDR_LEN`]
    /// (`TUNSETVNETHDRSZ`), `O_NONBLOCK | O_CLOEXEC`, and the link brought up (`SIOCSIFFLAGS`
    /// `IFF_UP` through a datagram socket; skipped if it is already up, so an unprivileged user
    /// can use a tap pre-created and set up for them).
    ///
    /// The tap lives in the network namespace of the calling thread.
    ///
    /// Errors: [`NetError::InvalidTapName`] before any system call; [`NetError::TunDeviceMissing`];
    /// [`NetError::PermissionDenied`] (`EPERM`/`EACCES`); [`NetError::TapBusy`] when another
    /// descriptor already has this single-queue tap open — including another `Tap` for the same
    /// name in this process; [`NetError::NotATap`] when the name belongs to a tun device, a
    /// multi-queue tap or a non-tun interface; [`NetError::Ioctl`] for anything else.
    pub fn open(name: &str) -> Result<Tap, NetError> {
        validate_name(name)?;

        let file = OpenOptions::new()
            .read(true)
            .write(true)
            // std sets O_CLOEXEC anyway; it is listed so the intent is visible here.
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => NetError::TunDeviceMissing,
                Some(libc::EPERM | libc::EACCES) => NetError::PermissionDenied {
                    name: name.to_owned(),
                },
                _ => NetError::OpenTun { source: e },
            })?;
        let tap = Tap {
            fd: OwnedFd::from(file),
            name: name.to_owned(),
        };

        let mut req = IfReq::with_name(name);
        req.flags = (sys::IFF_TAP | sys::IFF_NO_PI | sys::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a valid, exclusively
        // borrowed, correctly sized (40-byte, asserted in sys.rs) ifreq that outlives the call.
        let rc = unsafe { libc::ioctl(tap.fd.as_raw_fd(), sys::TUNSETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            let name = name.to_owned();
            return Err(match err.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => NetError::PermissionDenied { name },
                Some(libc::EBUSY) => NetError::TapBusy { name },
                Some(libc::EINVAL) => NetError::NotATap { name },
                _ => tap.ioctl_error("TUNSETIFF", err),
            });
        }

        tap.check_attached()?;

        let hdr_len: c_int = VNET_HDR_LEN as c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer; `hdr_len` is a live,
        // properly aligned `c_int` for the duration of the call.
        let rc = unsafe {
            libc::ioctl(
                tap.fd.as_raw_fd(),
                sys::TUNSETVNETHDRSZ,
                &hdr_len as *const c_int,
            )
        };
        if rc < 0 {
            return Err(tap.ioctl_error("TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }

        // A persistent tap keeps the offloads its previous user set; start from none, which is
        // what a guest that has negotiated nothing yet can receive.
        tap.set_offloads(Offloads::default())?;
        tap.link_up()?;
        tracing::debug!(tap = %tap.name, "tap opened (vnet_hdr {VNET_HDR_LEN}, link up)");
        Ok(tap)
    }

    /// Takes over a descriptor of an open tap queue that another [`Tap`] set up (a live
    /// migration to a `vireo` on this host hands it over by `SCM_RIGHTS`, so frames queued in
    /// the tap are not lost). The descriptor is checked to be attached to a tap with the flags
    /// [`Tap::open`] sets (else [`NetError::UnexpectedTap`] or an ioctl error); its name comes
    /// from the kernel. Vnet header size and offloads are the device's and stay as they were.
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, NetError> {
        let mut req = IfReq::with_name("");
        // SAFETY: TUNGETIFF writes one `struct ifreq`; `req` is a valid, exclusively borrowed,
        // correctly sized ifreq that outlives the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), sys::TUNGETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(NetError::Ioctl {
                what: "TUNGETIFF",
                name: "(handed-over descriptor)".to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            fd,
            name: req.name(),
        };
        tap.check_attached()?;
        Ok(tap)
    }

    /// The interface name, exactly as passed to [`Tap::open`] (and as reported by the kernel).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `TUNSETOFFLOAD` with `TUN_F_CSUM`/`TSO4`/`TSO6`/`TSO_ECN`/`UFO` from the flags the guest
    /// negotiated. Flags whose prerequisite is missing are dropped (see [`Offloads`]), so every
    /// combination succeeds on a working tap. Call it again whenever the guest's features change
    /// (e.g. after a device reset, with [`Offloads::default`]).
    pub fn set_offloads(&self, o: Offloads) -> Result<(), NetError> {
        let flags = o.tun_flags();
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long), not as a pointer,
        // so no memory is accessed through it.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                sys::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(self.ioctl_error("TUNSETOFFLOAD", io::Error::last_os_error()));
        }
        tracing::debug!(tap = %self.name, ?o, flags, "tap offloads set");
        Ok(())
    }

    /// Reads one frame, prefixed by its [`VNET_HDR_LEN`]-byte header, into `iovs` (`readv`).
    ///
    /// Returns the number of bytes stored (header included). `Ok(0)` never means end-of-file for
    /// a tap; it is only returned when `iovs` has total length zero. When no frame is queued the
    /// error has kind [`io::ErrorKind::WouldBlock`]. `EINTR` is retried.
    ///
    /// The buffers should hold `VNET_HDR_LEN` plus the largest frame the tap may deliver (MTU +
    /// 18 bytes of Ethernet/VLAN header without TSO/UFO, 64 KiB with them). Measured on Linux
    /// 6.18: a frame longer than the buffers is truncated to fit (the return value is the buffer
    /// size and the rest of the frame is discarded, not kept for the next read); buffers of
    /// fewer than `VNET_HDR_LEN` bytes fail with `EINVAL` and the frame is lost; with no buffer
    /// space at all the call returns `Ok(0)` and the frame stays queued.
    ///
    /// Contract on `iovs` (not checkable here, so the caller must uphold it): each entry must
    /// describe memory that is valid for writes of `iov_len` bytes for the duration of the call
    /// and that no Rust reference aliases (guest memory qualifies). More than 1024 entries are
    /// refused with [`io::ErrorKind::InvalidInput`].
    pub fn read_iovecs(&self, iovs: &[libc::iovec]) -> io::Result<usize> {
        let count = iov_count(iovs)?;
        loop {
            // SAFETY: `iovs` points at `count` initialised iovec structs that live for the call;
            // by this method's contract each one describes writable memory no Rust reference
            // aliases, and the kernel checks the addresses (EFAULT) before writing.
            let n = unsafe { libc::readv(self.fd.as_raw_fd(), iovs.as_ptr(), count) };
            match retry_or_result(n)? {
                Some(n) => return Ok(n),
                None => continue,
            }
        }
    }

    /// Writes one frame, prefixed by its [`VNET_HDR_LEN`]-byte header, from `iovs` (`writev`).
    ///
    /// Returns the number of bytes consumed, which is all of them on success (a tap never takes a
    /// partial frame). The header's `flags`/`gso_type` must be consistent with the frame, or the
    /// kernel refuses it with `EINVAL`; fewer than `VNET_HDR_LEN` bytes also give `EINVAL`.
    /// `EINTR` is retried; `WouldBlock` is passed through.
    ///
    /// Contract on `iovs`: each entry must describe memory valid for reads of `iov_len` bytes for
    /// the duration of the call. More than 1024 entries are refused with
    /// [`io::ErrorKind::InvalidInput`].
    pub fn write_iovecs(&self, iovs: &[libc::iovec]) -> io::Result<usize> {
        let count = iov_count(iovs)?;
        loop {
            // SAFETY: `iovs` points at `count` initialised iovec structs that live for the call;
            // by this method's contract each describes readable memory, and the kernel only
            // reads through them (checking the addresses itself).
            let n = unsafe { libc::writev(self.fd.as_raw_fd(), iovs.as_ptr(), count) };
            match retry_or_result(n)? {
                Some(n) => return Ok(n),
                None => continue,
            }
        }
    }

    /// Checks with `TUNGETIFF` that the kernel attached us to a tap of the requested name with
    /// the requested flags.
    fn check_attached(&self) -> Result<(), NetError> {
        let mut req = IfReq::with_name("");
        // SAFETY: TUNGETIFF writes one `struct ifreq`; `req` is a valid, exclusively borrowed,
        // correctly sized ifreq that outlives the call.
        let rc =
            unsafe { libc::ioctl(self.fd.as_raw_fd(), sys::TUNGETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(self.ioctl_error("TUNGETIFF", io::Error::last_os_error()));
        }
        let flags = req.flags as u16;
        let actual = req.name();
        let wanted = sys::IFF_NO_PI | sys::IFF_VNET_HDR;
        if flags & sys::TUN_TYPE_MASK != sys::IFF_TAP
            || flags & wanted != wanted
            || actual != self.name
        {
            return Err(NetError::UnexpectedTap {
                name: self.name.clone(),
                actual,
                flags,
            });
        }
        Ok(())
    }

    /// Sets `IFF_UP` on the interface unless it is already set.
    fn link_up(&self) -> Result<(), NetError> {
        let sock = control_socket().map_err(|source| NetError::Socket {
            name: self.name.clone(),
            source,
        })?;
        let mut req = IfReq::with_name(&self.name);
        // SAFETY: SIOCGIFFLAGS writes `ifr_flags` of one `struct ifreq`; `req` is a valid,
        // exclusively borrowed, correctly sized ifreq that outlives the call.
        let rc =
            unsafe { libc::ioctl(sock.as_raw_fd(), sys::SIOCGIFFLAGS, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(self.ioctl_error("SIOCGIFFLAGS", io::Error::last_os_error()));
        }
        let up = libc::IFF_UP as libc::c_short;
        if req.flags & up != 0 {
            return Ok(());
        }
        req.flags |= up;
        // SAFETY: SIOCSIFFLAGS reads one `struct ifreq`; `req` is valid and outlives the call.
        let rc =
            unsafe { libc::ioctl(sock.as_raw_fd(), sys::SIOCSIFFLAGS, &mut req as *mut IfReq) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => NetError::PermissionDenied {
                    name: self.name.clone(),
                },
                _ => self.ioctl_error("SIOCSIFFLAGS", err),
            });
        }
        Ok(())
    }

    fn ioctl_error(&self, what: &'static str, source: io::Error) -> NetError {
        NetError::Ioctl {
            what,
            name: self.name.clone(),
            source,
        }
    }
}

impl AsRawFd for Tap {
    /// The tap's descriptor, for registering with an event loop (epoll). It stays owned by the
    /// `Tap`; do not close it.
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Tap {
    /// The tap's descriptor, borrowed for the lifetime of the `Tap`.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Refuses names the kernel would reject (`dev_valid_name`) or interpret as a template, so that
/// `TUNSETIFF`'s `EINVAL` can only mean "exists but is not a tap". The rule is the launch spec's
/// ([`vireo_spec::check_tap_name`]), so a spec that validates names a tap this accepts.
fn validate_name(name: &str) -> Result<(), NetError> {
    vireo_spec::check_tap_name(name)
        .map_err(|e| NetError::InvalidTapName(format!("{name:?}: {}", e.reason)))
}

/// A datagram socket for interface ioctls, in the calling thread's network namespace: AF_INET,
/// or AF_UNIX where IPv4 is unavailable.
fn control_socket() -> io::Result<OwnedFd> {
    let mut last = None;
    for domain in [libc::AF_INET, libc::AF_UNIX] {
        // SAFETY: socket(2) takes no pointers; on success we own the returned descriptor.
        let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd >= 0 {
            // SAFETY: `fd` was just returned by socket(2), is open and owned by nobody else.
            return Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        }
        last = Some(io::Error::last_os_error());
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::Unsupported)))
}

/// The iovec count as `readv`/`writev` want it, refusing more than [`IOV_MAX`] entries.
fn iov_count(iovs: &[libc::iovec]) -> io::Result<c_int> {
    if iovs.len() > IOV_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} iovecs, at most {IOV_MAX} allowed", iovs.len()),
        ));
    }
    // At most 1024, so it fits.
    Ok(iovs.len() as c_int)
}

/// Turns a `readv`/`writev` return value into `Ok(Some(n))`, `Ok(None)` for `EINTR` (retry), or
/// the error.
fn retry_or_result(n: isize) -> io::Result<Option<usize>> {
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::Interrupted {
        Ok(None)
    } else {
        Err(err)
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tap>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for name in ["tap0", "vireo-tap.1", "a", "abcdefghijklmno", "tap_é"] {
            validate_name(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
    }

    #[test]
    fn invalid_names() {
        for name in [
            "",
            "abcdefghijklmnop",
            ".",
            "..",
            "a/b",
            "a:b",
            "tap%d",
            "a b",
            "a\tb",
            "a\nb",
            "a\u{b}b",
            "a\0b",
            "tap\u{a0}",
            "tap\u{2003}",
            "tap_à",
            "ééééééééé",
        ] {
            match validate_name(name) {
                Err(NetError::InvalidTapName(msg)) => assert!(!msg.is_empty()),
                other => panic!("{name:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn too_many_iovecs_refused() {
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let iovs = vec![iov; IOV_MAX + 1];
        assert_eq!(
            iov_count(&iovs).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(iov_count(&iovs[..IOV_MAX]).unwrap(), IOV_MAX as c_int);
    }
}
