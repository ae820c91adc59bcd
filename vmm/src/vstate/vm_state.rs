//! The VM-wide KVM state: both PICs, the IOAPIC, the PIT and the KVM clock.
//!
//! The clock is restored with `KVM_CLOCK_REALTIME` where the host supports it: KVM then
//! advances the guest's clock by the wall-clock time that passed between the save and the
//! restore, so the guest's time never goes backwards and does not lag by the time the VM spent
//! saved. Without it the clock continues from the saved value.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why the VM-wide state could not be read or written.
#[derive(Debug, Error)]
#[error("cannot {what}: {source}")]
pub struct VmStateError {
    /// What was being read or written.
    pub what: &'static str,
    /// The ioctl error.
    #[source]
    pub source: kvm_ioctls::Error,
}

/// The in-kernel interrupt controllers, PIT and clock of one VM.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VmPlatformState {
    /// The master 8259 PIC.
    pub pic_master: kvm_irqchip,
    /// The slave 8259 PIC.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC (redirection table and IRR).
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT's channels.
    pub pit: kvm_pit_state2,
    /// The KVM clock, with the host's wall-clock time at saving when the host offers it.
    pub clock: kvm_clock_data,
}

fn err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError { what, source }
}

fn chip(vm: &VmFd, id: u32, what: &'static str) -> Result<kvm_irqchip, VmStateError> {
    let mut c = kvm_irqchip {
        chip_id: id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c).map_err(err(what))?;
    Ok(c)
}

/// Reads the state of `vm` (whose vCPUs must all be parked).
pub fn save(vm: &VmFd) -> Result<VmPlatformState, VmStateError> {
    Ok(VmPlatformState {
        pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER, "read the master PIC")?,
        pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE, "read the slave PIC")?,
        ioapic: chip(vm, KVM_IRQCHIP_IOAPIC, "read the IOAPIC")?,
        pit: vm.get_pit2().map_err(err("read the PIT"))?,
        clock: vm.get_clock().map_err(err("read the KVM clock"))?,
    })
}

/// Writes `state` into `vm`, whose irqchip and PIT exist and whose vCPUs have not run.
/// `realtime_clock` says whether the host supports `KVM_CLOCK_REALTIME`.
pub fn restore(
    vm: &VmFd,
    state: &VmPlatformState,
    realtime_clock: bool,
) -> Result<(), VmStateError> {
    let mut chips = [state.pic_master, state.pic_slave, state.ioapic];
    for (c, id) in chips.iter_mut().zip([
        KVM_IRQCHIP_PIC_MASTER,
        KVM_IRQCHIP_PIC_SLAVE,
        KVM_IRQCHIP_IOAPIC,
    ]) {
        // The chip a record is applied to is its position, not a saved field.
        c.chip_id = id;
        vm.set_irqchip(c)
            .map_err(err("set an interrupt controller"))?;
    }
    vm.set_pit2(&state.pit).map_err(err("set the PIT"))?;
    let mut clock = state.clock;
    clock.flags = if realtime_clock && state.clock.flags & KVM_CLOCK_REALTIME != 0 {
        KVM_CLOCK_REALTIME
    } else {
        0
    };
    vm.set_clock(&clock).map_err(err("set the KVM clock"))?;
    Ok(())
}
