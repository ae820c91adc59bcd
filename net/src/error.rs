//! The crate's one error type, [`NetError`].
//!
//! Each variant names one problem precisely enough that the person reading the message knows what
//! to change (a bad name, a missing capability, a device of the wrong kind), and says which tap it
//! concerns. Nothing in this crate panics on user- or guest-controlled input; it returns one of
//! these instead.

use std::io;

/// Everything that can go wrong while opening and configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A tap name the kernel would refuse or misinterpret: empty, longer than 15 bytes
    /// (`IFNAMSIZ - 1`), `.` or `..`, or containing `/`, `:`, `%`, whitespace or NUL. The string
    /// holds the name and the reason.
    #[error("invalid tap name {0}")]
    InvalidTapName(String),

    /// `/dev/net/tun` does not exist or has no driver behind it (the `tun` module is not loaded,
    /// or the container was started without the device).
    #[error(
        "/dev/net/tun is missing: load the tun module (`modprobe tun`) or pass the device into \
         the container"
    )]
    TunDeviceMissing,

    /// The kernel refused with `EPERM`/`EACCES`: creating a tap, attaching to a tap owned by
    /// someone else, or bringing a tap's link up needs `CAP_NET_ADMIN`.
    #[error(
        "permission denied on tap {name:?}: Vireo needs CAP_NET_ADMIN, or the tap must be \
         pre-created for this user and set up, e.g. `ip tuntap add dev {name} mode tap user \
         $(id -u) && ip link set {name} up`"
    )]
    PermissionDenied {
        /// The tap's name.
        name: String,
    },

    /// The kernel answered `EBUSY`: the tap is already attached to another file descriptor (in
    /// this or another process) and is not a multi-queue tap, so it cannot be shared.
    #[error(
        "tap {name:?} is busy: another process (or another Tap in this one) already has it open"
    )]
    TapBusy {
        /// The tap's name.
        name: String,
    },

    /// The kernel answered `EINVAL` to `TUNSETIFF`: a network device with this name exists but is
    /// not a single-queue tap (it is a tun device, a multi-queue tap, or another kind of
    /// interface such as a bridge or veth).
    #[error(
        "network device {name:?} exists but is not a single-queue tap (a tun, a multi-queue tap \
         or another kind of interface); pick another name or delete it"
    )]
    NotATap {
        /// The device's name.
        name: String,
    },

    /// Opening `/dev/net/tun` failed for a reason other than the ones above.
    #[error("cannot open /dev/net/tun")]
    OpenTun {
        /// The error from `open(2)`.
        #[source]
        source: io::Error,
    },

    /// Creating the datagram socket used for interface ioctls (link up) failed.
    #[error("cannot create a socket to configure tap {name:?}")]
    Socket {
        /// The tap's name.
        name: String,
        /// The error from `socket(2)`.
        #[source]
        source: io::Error,
    },

    /// An ioctl on the tap or its control socket failed for a reason not covered above.
    #[error("{what} failed on tap {name:?}")]
    Ioctl {
        /// The ioctl, e.g. `"TUNSETOFFLOAD"`.
        what: &'static str,
        /// The tap's name.
        name: String,
        /// The error from `ioctl(2)`.
        #[source]
        source: io::Error,
    },

    /// The kernel accepted `TUNSETIFF` but the device it attached us to does not have the
    /// properties we asked for (checked with `TUNGETIFF`); this should not happen.
    #[error("tap {name:?} was attached with unexpected flags {flags:#06x} or name {actual:?}")]
    UnexpectedTap {
        /// The name we asked for.
        name: String,
        /// The name the kernel reported.
        actual: String,
        /// The flags the kernel reported.
        flags: u16,
    },
}
