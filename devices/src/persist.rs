//! Saved device state: the error every `restore` returns.
//!
//! Following the Firecracker pattern, each device's snapshot state is a
//! serde struct in a `persist` module beside the device
//! ([`crate::legacy::persist`], [`crate::acpi_persist`], [`crate::pci::persist`],
//! [`crate::virtio::persist`] and the virtio-blk / virtio-net ones). Each
//! device has `save(&self) -> XState` and
//! `restore(&mut self, &XState) -> Result<(), PersistError>`; `restore` applies
//! the state onto a freshly built device of the same configuration.
//!
//! # Compatibility
//!
//! State structs do not deny unknown fields, and those a later version may
//! grow are `#[serde(default)]`: a field added later must take a default that
//! means "as a device built today behaves", so older saved state still loads.
//!
//! # Untrusted input
//!
//! Saved state comes from a file. Every index, length, vector number and
//! queue size in it is validated before anything is applied, and a bad value
//! is a [`PersistError`], never a panic. A failed restore leaves the device as
//! it was built.

/// Why saved state could not be applied to a device (the device is left as it was built).
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The saved device does not match the one built here (type, queue
    /// count, queue size, offered features, disk size, MAC, …).
    #[error("{device}: saved {what} is {saved} but this device has {here}")]
    Mismatch {
        /// The device model.
        device: &'static str,
        /// What differs.
        what: &'static str,
        /// The saved value.
        saved: String,
        /// The value of the device built here.
        here: String,
    },
    /// A value in the saved state is out of range (vector index, queue size
    /// not a power of two, ring not in guest memory, config space length…).
    #[error("{device}: invalid saved state: {reason}")]
    Invalid {
        /// The device model.
        device: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A host resource the restored device needs could not be set up.
    #[error("{device}: {what}: {source}")]
    Io {
        /// The device model.
        device: &'static str,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The device could not be restarted from its saved state.
    #[error(transparent)]
    Activate(#[from] crate::virtio::ActivateError),
}

impl PersistError {
    /// A [`PersistError::Mismatch`] from any displayable values.
    pub fn mismatch(
        device: &'static str,
        what: &'static str,
        saved: impl std::fmt::Display,
        here: impl std::fmt::Display,
    ) -> Self {
        Self::Mismatch {
            device,
            what,
            saved: saved.to_string(),
            here: here.to_string(),
        }
    }

    /// A [`PersistError::Invalid`].
    pub fn invalid(device: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            device,
            reason: reason.into(),
        }
    }
}
