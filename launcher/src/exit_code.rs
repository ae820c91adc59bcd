//! The exit status of `vireo`, one code per way a VM can end. The table itself is the launch
//! spec crate's [`ExitStatus`], which the controller reads back from a launcher container:
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | the guest powered off (or reported success on the debug exit port); also a guest without ACPI stopped by SIGTERM |
//! | 1    | VMM error: bad configuration, KVM unavailable, unreadable kernel, … |
//! | 2    | command-line usage error |
//! | 3    | the guest requested a reset (`vireo run`; `vireo launch` boots the VM again instead) |
//! | 4    | a vCPU triple-faulted |
//! | 5    | KVM internal error, including instruction-emulation failure |
//! | 6    | the guest reported a failure status on the debug exit port |
//! | 7    | another unexpected vCPU exit (failed VM entry, guest crash event) |
//! | 8    | forced stop: the VMM stopped a guest that had not powered off (shutdown timeout after SIGTERM, SIGINT, SIGHUP, the API's `vm.shutdown` or `vmm.shutdown`) |
//! | 9    | started as a live-migration target (`VIREO_MIGRATION_ROLE=target`), which this version refuses |
//! | 10   | the VM moved to another `vireo` by live migration and runs there |

use vireo_spec::ExitStatus;
use vireo_vmm::ExitReason;

/// The exit status for a VM that ended with `reason`; `forced` says the VMM itself stopped a
/// guest that was expected to power off (it only matters when `reason` is
/// [`ExitReason::Stopped`]).
pub fn for_exit(reason: &ExitReason, forced: bool) -> ExitStatus {
    match reason {
        ExitReason::Stopped if forced => ExitStatus::ForcedStop,
        ExitReason::PowerOff | ExitReason::Stopped | ExitReason::DebugExit { status: 0 } => {
            ExitStatus::PowerOff
        }
        ExitReason::DebugExit { .. } => ExitStatus::GuestFailure,
        ExitReason::Reset => ExitStatus::Reset,
        ExitReason::Migrated => ExitStatus::Migrated,
        ExitReason::TripleFault { .. } => ExitStatus::TripleFault,
        ExitReason::EmulationFailure { .. } | ExitReason::InternalError { .. } => {
            ExitStatus::InternalError
        }
        ExitReason::VcpuError { .. } => ExitStatus::VmmError,
        ExitReason::GuestCrash { .. }
        | ExitReason::FailEntry { .. }
        | ExitReason::UnexpectedExit { .. } => ExitStatus::UnexpectedExit,
    }
}

/// The process exit code of `status`.
pub fn code(status: ExitStatus) -> std::process::ExitCode {
    std::process::ExitCode::from(status.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_is_forced_only_when_the_vmm_says_so() {
        assert_eq!(for_exit(&ExitReason::Stopped, true), ExitStatus::ForcedStop);
        assert_eq!(for_exit(&ExitReason::Stopped, false), ExitStatus::PowerOff);
        // A guest that powered off on its own is a poweroff even if a forced stop raced it.
        assert_eq!(for_exit(&ExitReason::PowerOff, true), ExitStatus::PowerOff);
        assert_eq!(for_exit(&ExitReason::Reset, false).code(), 3);
    }
}
