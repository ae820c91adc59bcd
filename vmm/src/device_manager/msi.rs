//! MSI delivery through KVM: a GSI per vector, an irqfd per GSI, and the
//! VM-wide GSI routing table.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, including the default
//! routes of the legacy interrupt lines, so [`GsiRouter`] keeps the complete
//! table: the 24 IOAPIC pins (the first 16 also on the PICs, as KVM's own
//! default table has them — COM1 and the GED keep working unchanged) plus
//! one MSI route per programmed vector. A vector is fired by writing its
//! irqfd; KVM injects it without a trip through the VMM's vCPU threads.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vireo_devices::virtio::interrupt::{MsiMessage, MsiVectors};
use vireo_devices::IrqLine;

use super::DeviceError;

/// Number of IOAPIC pins (GSIs below this are legacy lines).
const IOAPIC_PINS: u32 = 24;

/// The VM's GSI routing table and GSI allocator.
#[derive(Debug)]
pub struct GsiRouter {
    vm: Arc<VmFd>,
    state: Mutex<RouterState>,
}

#[derive(Debug)]
struct RouterState {
    msi_routes: BTreeMap<u32, MsiMessage>,
    next_gsi: u32,
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

impl GsiRouter {
    /// A router for `vm` with only the legacy routes.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            state: Mutex::new(RouterState {
                msi_routes: BTreeMap::new(),
                next_gsi: IOAPIC_PINS,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a GSI for an MSI vector.
    fn allocate(&self) -> u32 {
        let mut s = self.lock();
        let gsi = s.next_gsi;
        s.next_gsi += 1;
        gsi
    }

    /// Sets or removes the MSI route of `gsi` and commits the table.
    fn set_msi(&self, gsi: u32, message: Option<MsiMessage>) -> io::Result<()> {
        let mut s = self.lock();
        match message {
            Some(m) => s.msi_routes.insert(gsi, m),
            None => s.msi_routes.remove(&gsi),
        };
        let mut entries = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            if gsi < 8 {
                entries.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
            } else if gsi < 16 {
                entries.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
            }
            entries.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for (&gsi, m) in &s.msi_routes {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.address as u32;
            e.u.msi.address_hi = (m.address >> 32) as u32;
            e.u.msi.data = m.data;
            entries.push(e);
        }
        let mut table = KvmIrqRouting::new(entries.len())
            .map_err(|e| io::Error::other(format!("routing table: {e:?}")))?;
        table.as_mut_slice().copy_from_slice(&entries);
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// The MSI-X vectors of one PCI function: a GSI and an irqfd each.
#[derive(Debug)]
pub struct KvmMsiVectors {
    router: Arc<GsiRouter>,
    vectors: Vec<(u32, IrqLine)>,
}

impl KvmMsiVectors {
    /// Allocates `count` GSIs and registers an irqfd for each.
    pub fn new(router: Arc<GsiRouter>, count: usize) -> Result<Self, DeviceError> {
        let mut vectors = Vec::with_capacity(count);
        for _ in 0..count {
            let gsi = router.allocate();
            vectors.push((gsi, super::irq_line(&router.vm, gsi)?));
        }
        Ok(Self { router, vectors })
    }
}

impl MsiVectors for KvmMsiVectors {
    fn count(&self) -> usize {
        self.vectors.len()
    }

    fn set_route(&self, index: usize, message: Option<MsiMessage>) -> io::Result<()> {
        let (gsi, _) = self
            .vectors
            .get(index)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.router.set_msi(*gsi, message)
    }

    fn fire(&self, index: usize) -> io::Result<()> {
        let (_, line) = self
            .vectors
            .get(index)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        line.trigger()
    }
}
