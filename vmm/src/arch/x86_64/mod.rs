//! x86_64 vCPU and platform setup: memory layout of boot structures, page
//! tables, the GDT, CPUID and the initial register state of a vCPU.

pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod layout;
pub mod paging;
pub mod regs;
pub mod vcpu_platform;

pub use regs::{ControlRegisters, InitialCpuState, SegmentRegisters};
