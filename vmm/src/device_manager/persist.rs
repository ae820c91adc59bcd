//! Every device's saved state under its stable id, and applying it to the devices a restore
//! built from the same spec.
//!
//! ```text
//!  com1 · i8042 · cmos · acpi-sleep · acpi-ged · pci-config-io · pci-host-bridge
//!  disk0 … diskN · net0 … netN          (virtio-pci, in the spec's order)
//!  display                              (a VM with a VNC console: the framebuffer's pixels)
//! ```
//! A VM with a virtio-input tablet also has `tablet0`, after the NICs.
//! Records are matched by id, never by position: a snapshot whose devices differ from the
//! ones built here (a device missing, one too many, a disk where a NIC was, a disk of another
//! size) is refused naming the device, before any vCPU exists. The device models' own
//! `persist` modules check and apply each record ([`vireo_devices::persist`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vireo_devices::acpi_persist::{AcpiGedState, AcpiSleepState};
use vireo_devices::display::persist::DisplayState;
use vireo_devices::legacy::persist::{CmosState, I8042State, SerialState};
use vireo_devices::pci::persist::{PciConfigIoState, PciHostBridgeState};
use vireo_devices::persist::PersistError;
use vireo_devices::virtio::persist::{VirtioDeviceState, VirtioPciState};
use vireo_devices::virtio::VirtioPciDevice;

use super::{DeviceManager, SpecDevice};
use crate::config::VmConfig;

/// One device's state, by kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceState {
    /// The 8250 UART (COM1).
    Serial(SerialState),
    /// The i8042 controller.
    I8042(I8042State),
    /// The CMOS RTC.
    Cmos(CmosState),
    /// The ACPI sleep registers.
    AcpiSleep(AcpiSleepState),
    /// The ACPI Generic Event Device.
    AcpiGed(AcpiGedState),
    /// The 0xcf8/0xcfc configuration mechanism.
    PciConfigIo(PciConfigIoState),
    /// The host bridge at 00:00.0.
    PciHostBridge(PciHostBridgeState),
    /// A virtio-pci function (transport and device model).
    Virtio(VirtioPciState),
    /// The VNC console's screen (the framebuffer's pixels).
    Display(DisplayState),
}

/// One device's saved state under its stable id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// `com1`, `cmos`, `disk0`, `net0`, … (the ids of `vm.info` for virtio devices).
    pub id: String,
    /// The state.
    pub state: DeviceState,
}

/// Why device state could not be saved or applied.
#[derive(Debug, Error)]
pub enum DevicePersistError {
    /// The snapshot has no state for a device this VM has.
    #[error("the snapshot has no state for device {0}")]
    Missing(String),
    /// The snapshot has a device this VM does not.
    #[error("the snapshot has device {0}, which this VM does not have")]
    Unexpected(String),
    /// Two records share an id.
    #[error("the snapshot has device {0} twice")]
    Duplicate(String),
    /// A record of another kind than the device with its id.
    #[error("device {id}: the snapshot holds state of another kind of device")]
    WrongKind {
        /// The device.
        id: String,
    },
    /// The device refused its state.
    #[error("device {id}: {source}")]
    Device {
        /// The device.
        id: String,
        /// Why.
        source: PersistError,
    },
    /// A disk could not be flushed before saving.
    #[error("device {id}: cannot flush before the snapshot: {source}")]
    Flush {
        /// The device.
        id: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The virtio devices with their ids: `disk<N>`, `net<N>` and `tablet<N>`, counting each kind
/// in slot order.
fn virtio_ids(dm: &DeviceManager) -> Vec<(String, &Arc<Mutex<VirtioPciDevice>>)> {
    let (mut disks, mut nets, mut tablets) = (0, 0, 0);
    dm.virtio
        .iter()
        .map(|d| {
            let id = match lock(d).name() {
                "virtio-blk" => {
                    disks += 1;
                    SpecDevice::Disk.id(disks - 1)
                }
                "virtio-input" => {
                    tablets += 1;
                    format!("tablet{}", tablets - 1)
                }
                _ => {
                    nets += 1;
                    SpecDevice::Net.id(nets - 1)
                }
            };
            (id, d)
        })
        .collect()
}

/// Makes every completed disk write durable (call with the VM paused).
pub fn flush_disks(dm: &DeviceManager) -> Result<(), DevicePersistError> {
    for (id, dev) in virtio_ids(dm) {
        lock(dev)
            .flush_backend()
            .map_err(|source| DevicePersistError::Flush { id, source })?;
    }
    Ok(())
}

/// Saves every device (call with the VM paused: vCPUs parked, virtio devices quiesced).
pub fn save(dm: &DeviceManager) -> Vec<DeviceRecord> {
    let rec = |id: &str, state| DeviceRecord {
        id: id.to_owned(),
        state,
    };
    let mut out = vec![
        rec("com1", DeviceState::Serial(lock(&dm.serial).save())),
        rec("i8042", DeviceState::I8042(lock(&dm.i8042).save())),
        rec("cmos", DeviceState::Cmos(lock(&dm.cmos).save())),
    ];
    if let Some(d) = &dm.acpi_sleep {
        out.push(rec("acpi-sleep", DeviceState::AcpiSleep(lock(d).save())));
    }
    if let Some(d) = &dm.ged {
        out.push(rec("acpi-ged", DeviceState::AcpiGed(lock(d).save())));
    }
    out.push(rec(
        "pci-config-io",
        DeviceState::PciConfigIo(lock(&dm.pci_config_io).save()),
    ));
    out.push(rec(
        "pci-host-bridge",
        DeviceState::PciHostBridge(lock(&dm.host_bridge).save()),
    ));
    for (id, dev) in virtio_ids(dm) {
        out.push(rec(&id, DeviceState::Virtio(lock(dev).save())));
    }
    if let Some(vnc) = &dm.vnc {
        out.push(rec("display", DeviceState::Display(vnc.save())));
    }
    out
}

/// Applies `records` to the devices of `dm` (built from the snapshot's spec, never run).
/// virtio devices that were running restart parked: [`resume`] lets them go.
pub fn restore(dm: &DeviceManager, records: &[DeviceRecord]) -> Result<(), DevicePersistError> {
    let mut by_id: BTreeMap<&str, &DeviceState> = BTreeMap::new();
    for r in records {
        if by_id.insert(r.id.as_str(), &r.state).is_some() {
            return Err(DevicePersistError::Duplicate(r.id.clone()));
        }
    }
    let mut take = |id: &str| {
        by_id
            .remove(id)
            .ok_or_else(|| DevicePersistError::Missing(id.to_owned()))
    };
    let wrong = |id: &str| DevicePersistError::WrongKind { id: id.to_owned() };
    let dev = |id: &str| {
        let id = id.to_owned();
        move |source| DevicePersistError::Device { id, source }
    };
    match take("com1")? {
        DeviceState::Serial(s) => lock(&dm.serial).restore(s).map_err(dev("com1"))?,
        _ => return Err(wrong("com1")),
    }
    match take("i8042")? {
        DeviceState::I8042(s) => lock(&dm.i8042).restore(s).map_err(dev("i8042"))?,
        _ => return Err(wrong("i8042")),
    }
    match take("cmos")? {
        DeviceState::Cmos(s) => lock(&dm.cmos).restore(s).map_err(dev("cmos"))?,
        _ => return Err(wrong("cmos")),
    }
    if let Some(d) = &dm.acpi_sleep {
        match take("acpi-sleep")? {
            DeviceState::AcpiSleep(s) => lock(d).restore(s).map_err(dev("acpi-sleep"))?,
            _ => return Err(wrong("acpi-sleep")),
        }
    }
    if let Some(d) = &dm.ged {
        match take("acpi-ged")? {
            DeviceState::AcpiGed(s) => lock(d).restore(s).map_err(dev("acpi-ged"))?,
            _ => return Err(wrong("acpi-ged")),
        }
    }
    match take("pci-config-io")? {
        DeviceState::PciConfigIo(s) => lock(&dm.pci_config_io)
            .restore(s)
            .map_err(dev("pci-config-io"))?,
        _ => return Err(wrong("pci-config-io")),
    }
    match take("pci-host-bridge")? {
        DeviceState::PciHostBridge(s) => lock(&dm.host_bridge)
            .restore(s)
            .map_err(dev("pci-host-bridge"))?,
        _ => return Err(wrong("pci-host-bridge")),
    }
    for (id, d) in virtio_ids(dm) {
        match take(&id)? {
            DeviceState::Virtio(s) => lock(d).restore(s, true).map_err(dev(&id))?,
            _ => return Err(wrong(&id)),
        }
    }
    if let Some(vnc) = &dm.vnc {
        match take("display")? {
            DeviceState::Display(s) => vnc.restore(s).map_err(dev("display"))?,
            _ => return Err(wrong("display")),
        }
    }
    if let Some(extra) = by_id.keys().next() {
        return Err(DevicePersistError::Unexpected((*extra).to_owned()));
    }
    Ok(())
}

/// Lets the virtio devices [`restore`] left parked run.
/// The descriptors a live migration to a `vireo` on this host hands over, in NIC order
/// (`net0`, `net1`, …): each NIC's tap queue.
pub fn handover_fds(dm: &DeviceManager) -> Vec<std::os::fd::RawFd> {
    virtio_ids(dm)
        .into_iter()
        .filter_map(|(_, d)| lock(d).handover_fd())
        .collect()
}

pub fn resume(dm: &DeviceManager) {
    for d in &dm.virtio {
        lock(d).resume();
    }
}

/// `config` with what the VM decided at boot filled in from the saved state: each NIC's MAC
/// (a NIC without one in the spec got a random one; a restore must give the guest the same)
/// and each disk's image format (probed when the spec named none; a restore opens the image
/// as that format, so another format behind the path is refused, not reinterpreted).
pub fn effective_config(config: &VmConfig, records: &[DeviceRecord]) -> VmConfig {
    let mut config = config.clone();
    for (i, disk) in config.disks.iter_mut().enumerate() {
        let id = SpecDevice::Disk.id(i);
        let format = records.iter().find_map(|r| match &r.state {
            DeviceState::Virtio(VirtioPciState {
                device: VirtioDeviceState::Block(b),
                ..
            }) if r.id == id => b.format,
            _ => None,
        });
        if format.is_some() {
            disk.format = format;
        }
    }
    for (i, nic) in config.nets.iter_mut().enumerate() {
        let id = SpecDevice::Net.id(i);
        let mac = records.iter().find_map(|r| match &r.state {
            DeviceState::Virtio(VirtioPciState {
                device: VirtioDeviceState::Net(n),
                ..
            }) if r.id == id => Some(n.mac),
            _ => None,
        });
        if let Some(mac) = mac {
            nic.mac = Some(vireo_spec::MacAddr::from_bytes(mac));
        }
    }
    config
}
