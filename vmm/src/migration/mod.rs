//! Live migration: a running VM moved to another `vireo` process, on this host or another,
//! while its guest runs, with a pause of milliseconds.
//!
//! ```text
//!  source (this VM)                                   target (`vireo receive`, or vm.receive-migration)
//!  connect ─ Hello/Accept ─ Config ───────────────►   builds the KVM VM and guest memory
//!  logging on; pass 0: every populated page ──────►   pages into guest memory
//!  passes: dirty pages (ring or bitmap ∪ devices) ─►     … until bytes left ÷ bandwidth ≤ downtime_ms
//!     (auto-converge throttles the vCPUs when passes stop shrinking)
//!  pause + quiesce; last dirty pages; State ──────►
//!  Complete ──────────────────────────────────────►   devices, vCPUs, state; guest runs
//!  ◄────────────────────────────────────── Ready
//!  VM ends: ExitReason::Migrated
//! ```
//! Whatever fails before `Ready` arrives — the target dies or refuses, the connection is cut,
//! a cancel, a timeout with strategy cancel, a malformed answer — the source switches dirty
//! logging off, drops the throttle, resumes the guest if it paused it, and stays usable for
//! a later migration; the target drops the half-built VM and never runs it.
//!
//! With `local` (a unix socket, a VM whose memory is a memfd) guest memory is not copied: the
//! memfd travels with the Config frame (`SCM_RIGHTS`) and the target maps the same pages.
//!
//! - [`protocol`]: frames and version negotiation;
//! - [`transport`]: unix, TCP and TLS connections from URLs;
//! - [`tls`]: mutual TLS (rustls);
//! - `dirty`: dirty-page tracking for one migration;
//! - `send`: the source; [`receive`]: the target.

mod dirty;
pub mod protocol;
pub mod receive;
mod send;
pub mod tls;
pub mod transport;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use thiserror::Error;
pub use vireo_spec::api::{MigrationInfo, MigrationPhase, SendMigrationConfig, TimeoutStrategy};

use crate::lifecycle::VmState;
use crate::snapshot::SnapshotError;
use crate::vm::{Vm, VmError};
pub use protocol::ProtocolError;
pub use receive::{receive, ReceiveOptions};
pub use transport::{MigrationUrl, TransportError};

/// Why a migration failed (on either side).
#[derive(Debug, Error)]
pub enum MigrationError {
    /// The VM is not in a state that can be migrated.
    #[error("cannot migrate a VM that is {0}")]
    State(VmState),
    /// A migration of this VM is already running.
    #[error("a migration of this VM is already running")]
    Busy,
    /// No migration is running (cancel).
    #[error("no migration is running")]
    NotRunning,
    /// The request is not possible as asked.
    #[error("{0}")]
    Invalid(String),
    /// The connection could not be made.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The peer sent something that is not a valid frame, or the connection failed.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The target refused.
    #[error("the target refused: {0}")]
    Refused(String),
    /// The source gave up.
    #[error("the source abandoned the migration: {0}")]
    Abandoned(String),
    /// A frame came where it does not belong.
    #[error("migration frame {got} where {expected} was expected")]
    OutOfOrder {
        /// What was expected.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// Pages or state that do not fit the VM.
    #[error("{0}")]
    Mismatch(String),
    /// Cancelled through the API.
    #[error("cancelled")]
    Cancelled,
    /// `timeout_s` passed with strategy cancel.
    #[error("timed out after {0} s")]
    Timeout(u64),
    /// Dirty logging could not be switched.
    #[error("cannot switch dirty logging: {0}")]
    Log(#[source] crate::memory::MemoryError),
    /// `KVM_GET_DIRTY_LOG` failed.
    #[error("cannot read KVM's dirty log: {0}")]
    DirtyLog(#[source] kvm_ioctls::Error),
    /// Guest memory could not be read or written.
    #[error("guest memory: {0}")]
    Memory(String),
    /// Saving or applying the VM state failed.
    #[error(transparent)]
    Snapshot(#[from] Box<SnapshotError>),
    /// Building or driving the VM failed.
    #[error(transparent)]
    Vm(#[from] Box<VmError>),
}

impl From<SnapshotError> for MigrationError {
    fn from(e: SnapshotError) -> Self {
        MigrationError::Snapshot(Box::new(e))
    }
}

impl From<VmError> for MigrationError {
    fn from(e: VmError) -> Self {
        MigrationError::Vm(Box::new(e))
    }
}

/// What a completed migration measured.
#[derive(Clone, Debug, PartialEq)]
pub struct MigrationReport {
    /// From the source's pause to the target's answer that the guest runs there.
    pub downtime: Duration,
    /// The whole migration.
    pub total: Duration,
    /// Pre-copy passes (pass 0 included; the final pass during downtime not).
    pub passes: u32,
    /// Guest pages sent, in all passes.
    pub pages_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// `ring` or `bitmap`; `none` for a local handover.
    pub dirty_log: &'static str,
    /// Times a vCPU exited because its dirty ring was full.
    pub ring_full_exits: u64,
    /// The highest throttle auto-converge applied, percent.
    pub max_throttle: u8,
}

/// The current (or last) outgoing migration of a VM: its progress and how to cancel it.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    info: Mutex<MigrationInfo>,
    cancel: AtomicBool,
    canceller: Mutex<Option<transport::Canceller>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Outgoing {
    pub(crate) fn info(&self) -> MigrationInfo {
        lock(&self.info).clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut MigrationInfo)) {
        f(&mut lock(&self.info));
    }

    fn running(&self) -> bool {
        matches!(
            lock(&self.info).phase,
            MigrationPhase::Setup | MigrationPhase::Precopy | MigrationPhase::Downtime
        )
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    pub(crate) fn set_canceller(&self, c: transport::Canceller) {
        *lock(&self.canceller) = Some(c);
        // A cancel that came while connecting cuts the new connection at once.
        if self.cancelled() {
            if let Some(c) = &*lock(&self.canceller) {
                c.cancel();
            }
        }
    }

    fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        if let Some(c) = &*lock(&self.canceller) {
            c.cancel();
        }
    }
}

impl Vm {
    /// Migrates this running VM as `config` asks and blocks until it is done. On success the
    /// VM has stopped with [`crate::ExitReason::Migrated`] and runs on the target; on any
    /// failure it runs on here (resumed if the migration paused it, dirty logging off).
    /// Progress is in [`Vm::migration_info`] meanwhile, and [`Vm::cancel_migration`] (from
    /// another thread) stops it.
    pub fn migrate(&self, config: &SendMigrationConfig) -> Result<MigrationReport, MigrationError> {
        send::check(self, config)?;
        let outgoing = self.begin_migration()?;
        send::run(self, config, &outgoing)
    }

    /// The progress of the current or last migration ([`MigrationPhase::None`] if none).
    pub fn migration_info(&self) -> MigrationInfo {
        lock(self.migration_slot())
            .as_ref()
            .map(|o| o.info())
            .unwrap_or_default()
    }

    /// Cancels the running migration: the VM runs on here. Returns once the cancel is
    /// signalled (the migration thread then unwinds in milliseconds).
    pub fn cancel_migration(&self) -> Result<(), MigrationError> {
        match &*lock(self.migration_slot()) {
            Some(o) if o.running() => {
                o.cancel();
                Ok(())
            }
            _ => Err(MigrationError::NotRunning),
        }
    }

    fn begin_migration(&self) -> Result<Arc<Outgoing>, MigrationError> {
        let mut slot = lock(self.migration_slot());
        if slot.as_ref().is_some_and(|o| o.running()) {
            return Err(MigrationError::Busy);
        }
        match self.state() {
            VmState::Running | VmState::Paused => {}
            other => return Err(MigrationError::State(other)),
        }
        let o = Arc::new(Outgoing::default());
        o.update(|i| i.phase = MigrationPhase::Setup);
        *slot = Some(o.clone());
        Ok(o)
    }
}
