//! An edge-triggered interrupt line backed by an eventfd (a KVM irqfd).

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line into the guest's interrupt controller.
///
/// The VMM registers the eventfd with KVM as an irqfd for a GSI; writing to
/// it injects the interrupt without leaving the kernel. Cloning shares the
/// same eventfd.
#[derive(Debug)]
pub struct IrqLine {
    event: EventFd,
}

impl IrqLine {
    /// Wraps an eventfd that the VMM has registered as an irqfd.
    pub fn new(event: EventFd) -> Self {
        Self { event }
    }

    /// Raises the interrupt once.
    pub fn trigger(&self) -> io::Result<()> {
        self.event.write(1)
    }

    /// The eventfd behind the line, for registration with KVM.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// A second handle to the same line.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            event: self.event.try_clone()?,
        })
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        IrqLine::trigger(self)
    }
}
