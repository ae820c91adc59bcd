//! The exit status of `vireo`, one code per way a VM can end.
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | the guest powered off (or reported success on the debug exit port) |
//! | 1    | VMM error: bad configuration, KVM unavailable, unreadable kernel, … |
//! | 2    | command-line usage error |
//! | 3    | the guest requested a reset |
//! | 4    | a vCPU triple-faulted |
//! | 5    | KVM internal error, including instruction-emulation failure |
//! | 6    | the guest reported a failure status on the debug exit port |
//! | 7    | another unexpected vCPU exit (failed VM entry, guest crash event) |

use vireo_vmm::ExitReason;

/// The VMM itself failed.
pub const VMM_ERROR: u8 = 1;
/// Bad command line.
pub const USAGE: u8 = 2;
/// Guest reset.
pub const RESET: u8 = 3;
/// Triple fault.
pub const TRIPLE_FAULT: u8 = 4;
/// KVM internal error / emulation failure.
pub const INTERNAL_ERROR: u8 = 5;
/// Debug exit with a non-zero status.
pub const GUEST_FAILURE: u8 = 6;
/// Other unexpected exits.
pub const UNEXPECTED_EXIT: u8 = 7;

/// The exit status for a VM that ended with `reason`.
pub fn for_exit(reason: &ExitReason) -> u8 {
    match reason {
        ExitReason::PowerOff | ExitReason::Stopped | ExitReason::DebugExit { status: 0 } => 0,
        ExitReason::DebugExit { .. } => GUEST_FAILURE,
        ExitReason::Reset => RESET,
        ExitReason::TripleFault { .. } => TRIPLE_FAULT,
        ExitReason::EmulationFailure { .. } | ExitReason::InternalError { .. } => INTERNAL_ERROR,
        ExitReason::VcpuError { .. } => VMM_ERROR,
        ExitReason::GuestCrash { .. }
        | ExitReason::FailEntry { .. }
        | ExitReason::UnexpectedExit { .. } => UNEXPECTED_EXIT,
    }
}
