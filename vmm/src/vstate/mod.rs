//! KVM vCPU and VM state, and the threads that run vCPUs.
//!
//! - [`vcpu`]: one thread per vCPU looping on `KVM_RUN`;
//! - [`cpu_state`]: a vCPU's saved state (registers, LAPIC, MSRs, …);
//! - [`vm_state`]: the VM-wide state (PICs, IOAPIC, PIT, KVM clock);
//! - [`dirty_ring`]: the KVM dirty ring, per vCPU, for live migration.

pub mod cpu_state;
pub mod dirty_ring;
pub mod vcpu;
pub mod vm_state;
