//! Host side of Vireo's virtio-net: tap devices and MAC addresses.
//!
//! ```text
//!   virtio-net device model (devices crate)
//!        │ read_iovecs / write_iovecs: guest buffers, each frame prefixed by a
//!        │ VNET_HDR_LEN-byte virtio-net header; set_offloads from the negotiated features
//!   ┌────┴─────┐
//!   │   Tap    │  tap.rs: TUNSETIFF (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), TUNSETVNETHDRSZ,
//!   └────┬─────┘          TUNSETOFFLOAD, link up; non-blocking, close-on-exec
//!        │ /dev/net/tun
//!     kernel tap interface (bridge, masquerade, … configured outside this crate)
//! ```
//!
//! This crate knows nothing about virtio queues: it moves whole frames between caller-supplied
//! buffers and the kernel. Entry points: [`Tap::open`], [`MacAddr`] (parse with
//! [`str::parse`], or [`MacAddr::random_local`]). Errors are [`NetError`]; nothing here panics on
//! user- or guest-controlled input.

mod error;
mod offload;
mod sys;
mod tap;

pub use error::NetError;
pub use offload::Offloads;
pub use tap::{Tap, VNET_HDR_LEN};
/// MAC addresses are the launch spec's type, re-exported for the device models.
pub use vireo_spec::MacAddr;
