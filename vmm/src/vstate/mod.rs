//! KVM vCPU state and the threads that run vCPUs.

pub mod vcpu;
