//! Vireo's launch spec and the vocabulary around it: one serde crate that the VMM, the `vireo`
//! launcher and the Kubernetes controller share, so the contract between them has one
//! definition and one validator.
//!
//! - [`VmConfig`] and its parts: what `vireo run` builds from flags, the controller renders into
//!   a launcher pod, and embedders build in code; [`VmConfig::from_json`] is the one parser.
//! - [`DiskFormat`], [`MacAddr`] and tap names ([`check_tap_name`]): the typed pieces.
//! - Validation ([`VmConfig::validate`], [`VmConfig::validate_on`]) with errors that name their
//!   field ([`ConfigError::field`]).
//! - [`VncConfig`]: the VNC console (screen size, listen address, password file).
//! - [`ExitStatus`]: how a `vireo` process ends, read back by the controller.
//! - [`api`]: the control API's request and response bodies.
//!
//! This crate depends on no KVM, Kubernetes or device crate.

pub mod api;
mod config;
mod disk;
mod exit;
mod mac;
mod tap;
mod validate;
mod vnc;

pub use config::{
    DirtyLogMode, DiskConfig, MemoryBacking, NetConfig, PayloadConfig, SerialConfig, VmConfig,
    SPEC_VERSION,
};
pub use disk::{DiskFormat, UnknownFormat};
pub use exit::ExitStatus;
pub use mac::{MacAddr, MacError};
pub use tap::{check_tap_name, TapNameError, MAX_TAP_NAME_LEN};
pub use validate::{
    ConfigError, Field, HostLimits, LoadError, MAX_MEMORY_MIB, MAX_PCI_DEVICES,
    MAX_SOCKET_PATH_LEN, MAX_VCPUS, MIN_MEMORY_MIB,
};
pub use vnc::{
    VncConfig, VncListen, VncListenError, DEFAULT_VNC_HEIGHT, DEFAULT_VNC_WIDTH, MAX_VNC_PIXELS,
    MAX_VNC_SIDE, MIN_VNC_SIDE,
};

#[cfg(test)]
mod tests;
