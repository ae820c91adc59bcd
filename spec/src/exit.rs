//! How a `vireo` process ends: one exit status per way, shared by the launcher, which exits with
//! it, and the controller, which reads it back from the launcher container.

/// Every exit status `vireo` uses, each with one meaning. The numbers are a stable contract
/// (README's exit-status table): new ways of ending get new numbers, old ones never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// 0: the guest powered off, reported success on the debug exit port, or was stopped
    /// because it has no ACPI power button to press (as KubeVirt treats a destroyed domain
    /// without ACPI).
    PowerOff,
    /// 1: the VMM failed: bad configuration, KVM unavailable, unreadable or invalid kernel.
    VmmError,
    /// 2: command-line usage error.
    Usage,
    /// 3: the guest requested a reset.
    Reset,
    /// 4: a vCPU triple-faulted.
    TripleFault,
    /// 5: KVM internal error, including instruction-emulation failure.
    InternalError,
    /// 6: the guest reported a failure status on the debug exit port.
    GuestFailure,
    /// 7: another unexpected vCPU exit (failed VM entry, guest crash event).
    UnexpectedExit,
    /// 8: the VMM stopped a running guest that had not powered off: the shutdown timeout after
    /// SIGTERM expired, or SIGINT / SIGHUP.
    ForcedStop,
    /// 9: started as a live-migration target, which this version cannot receive; no guest ran.
    MigrationTargetUnsupported,
    /// 10: the VM moved to another `vireo` by live migration and runs there.
    Migrated,
}

impl ExitStatus {
    /// Every status, in code order.
    pub const ALL: [ExitStatus; 11] = [
        ExitStatus::PowerOff,
        ExitStatus::VmmError,
        ExitStatus::Usage,
        ExitStatus::Reset,
        ExitStatus::TripleFault,
        ExitStatus::InternalError,
        ExitStatus::GuestFailure,
        ExitStatus::UnexpectedExit,
        ExitStatus::ForcedStop,
        ExitStatus::MigrationTargetUnsupported,
        ExitStatus::Migrated,
    ];

    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::PowerOff => 0,
            ExitStatus::VmmError => 1,
            ExitStatus::Usage => 2,
            ExitStatus::Reset => 3,
            ExitStatus::TripleFault => 4,
            ExitStatus::InternalError => 5,
            ExitStatus::GuestFailure => 6,
            ExitStatus::UnexpectedExit => 7,
            ExitStatus::ForcedStop => 8,
            ExitStatus::MigrationTargetUnsupported => 9,
            ExitStatus::Migrated => 10,
        }
    }

    /// The status with exit code `code`, if `vireo` uses it.
    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|s| i64::from(s.code()) == code)
    }

    /// A one-word reason in Kubernetes condition style (`ForcedStop`), stable like the code.
    pub fn reason(self) -> &'static str {
        match self {
            ExitStatus::PowerOff => "GuestPoweredOff",
            ExitStatus::VmmError => "VMMError",
            ExitStatus::Usage => "UsageError",
            ExitStatus::Reset => "GuestReset",
            ExitStatus::TripleFault => "TripleFault",
            ExitStatus::InternalError => "KVMInternalError",
            ExitStatus::GuestFailure => "GuestFailure",
            ExitStatus::UnexpectedExit => "UnexpectedExit",
            ExitStatus::ForcedStop => "ForcedStop",
            ExitStatus::MigrationTargetUnsupported => "MigrationTargetUnsupported",
            ExitStatus::Migrated => "Migrated",
        }
    }

    /// What the status means, for a person (README's table and condition messages).
    pub fn description(self) -> &'static str {
        match self {
            ExitStatus::PowerOff => "the guest powered off",
            ExitStatus::VmmError => "the VMM failed (configuration, KVM, kernel image)",
            ExitStatus::Usage => "command-line usage error",
            ExitStatus::Reset => "the guest requested a reset",
            ExitStatus::TripleFault => "a vCPU triple-faulted",
            ExitStatus::InternalError => "KVM internal error or instruction-emulation failure",
            ExitStatus::GuestFailure => "the guest reported a failure on the debug exit port",
            ExitStatus::UnexpectedExit => "unexpected vCPU exit (failed entry, guest crash)",
            ExitStatus::ForcedStop => {
                "the VMM stopped a guest that had not powered off (shutdown timeout, SIGINT, SIGHUP, API shutdown)"
            }
            ExitStatus::MigrationTargetUnsupported => {
                "started as a live-migration target, which this version cannot receive"
            }
            ExitStatus::Migrated => "the VM moved to another vireo by live migration and runs there",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_map_back() {
        for (i, s) in ExitStatus::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(s.code()), i);
            assert_eq!(ExitStatus::from_code(i64::from(s.code())), Some(s));
        }
        assert_eq!(ExitStatus::from_code(137), None);
        assert_eq!(ExitStatus::from_code(-1), None);
    }
}
