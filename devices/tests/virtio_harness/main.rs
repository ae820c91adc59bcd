//! virtio-blk, virtio-net and virtio-input driven through the virtio-pci transport by a host-side virtio 1.2
//! driver (`driver.rs`) that sees only what a guest sees: PCI configuration space, BAR0 and
//! split virtqueues written into real guest memory. Backends are real: raw and qcow2 images in
//! temporary files, and a tap in a private network namespace (those tests need root and fail
//! otherwise).
//!
//! - `transport.rs`: feature negotiation, reset, queue and vector registers, MSI-X masking.
//! - `blk.rs`: virtio-blk requests, good and malformed, and ring corruption.
//! - `net.rs`: virtio-net transmit / receive through a tap, malformed chains.
//! - `input.rs`: the virtio-input tablet: configuration, events, malformed buffers, snapshot.

mod blk;
mod driver;
mod input;
mod net;
mod transport;

/// Network-namespace, `ip` and frame helpers shared with the `net` crate's tap tests.
#[path = "../../../net/tests/common/mod.rs"]
mod netcommon;
