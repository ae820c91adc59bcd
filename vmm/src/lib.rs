//! Vireo's VMM library: everything needed to run a KVM virtual machine.
//!
//! ```text
//!   VmConfig (serde launch spec)
//!       │  VmBuilder
//!       ▼
//!   Vm ── kvm (KvmContext) ── memory (GuestMemory, MMIO hole) ── boot (payload → BootPlan)
//!    │
//!    ├── device_manager: PIO/MMIO buses → vireo-devices models
//!    ├── vstate::vcpu: one thread per vCPU, KVM_RUN loop, kick signal
//!    ├── lifecycle: Created → Running ⇄ Paused → Stopped, typed ExitReason
//!    ├── vnc: framebuffer slot, refresher, RFB server, keyboard and tablet input
//!    ├── snapshot / migration: the VM saved to a directory, or moved live to another vireo
//!    └── api: the control API (HTTP/1.1 + JSON on a unix socket) over those methods
//! ```
//!
//! Embedding: build a [`VmConfig`], turn it into a [`Vm`] with
//! [`VmBuilder`], call [`Vm::start`], then [`Vm::pause`] / [`Vm::resume`] /
//! [`Vm::shutdown`] as needed and [`Vm::wait`] for the [`ExitReason`].
//! No method panics on guest-, file- or user-controlled input; failures are
//! typed errors ([`VmError`]).

pub mod acpi;
pub mod api;
pub mod arch;
pub mod boot;
pub mod builder;
pub mod config;
pub mod console;
pub mod device_manager;
pub mod kvm;
pub mod lifecycle;
pub mod memory;
pub mod migration;
pub mod snapshot;
pub mod vm;
pub mod vnc;
pub mod vstate;

pub use arch::x86_64::InitialCpuState;
pub use config::{DiskConfig, DiskFormat, NetConfig, PayloadConfig, SerialConfig, VmConfig};
pub use lifecycle::{ExitReason, VmState};
pub use vm::{Vm, VmBuilder, VmError};
