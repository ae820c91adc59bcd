//! Turns the launch spec's disks and NICs into virtio devices: opens each
//! image with the `block` crate and each tap with the `net` crate, then adds
//! the device to the PCI bus (disks first, each list in order, from slot 1).
//! A VM with a display also gets a virtio-input tablet ([`attach_tablet`]),
//! after them.

use std::sync::Arc;

use kvm_ioctls::VmFd;
use tracing::info;
use vireo_block::{open_disk, OpenOptions};
use vireo_devices::virtio::block::VirtioBlock;
use vireo_devices::virtio::input::{TabletHandle, VirtioInput};
use vireo_devices::virtio::net::VirtioNet;
use vireo_devices::virtio::GuestMemory;
use vireo_net::{MacAddr, Tap};

use super::{DeviceError, DeviceManager};
use crate::config::{DiskConfig, NetConfig};

/// Opens `disks` and `nets` and attaches them to `dm`. Fills in what was chosen here: each
/// disk's probed format and each NIC's MAC (random when the spec has none), so the spec
/// describes the VM as built (what `vm.info`, snapshots and migrations carry). A NIC whose
/// entry in `handed` holds a tap (handed over by a live migration on this host) uses it
/// instead of opening its tap by name.
pub fn attach_devices(
    dm: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemory,
    disks: &mut [DiskConfig],
    nets: &mut [NetConfig],
    mut handed: Vec<Option<Tap>>,
) -> Result<(), DeviceError> {
    for (index, d) in disks.iter_mut().enumerate() {
        let opts = OpenOptions {
            format: d.format,
            read_only: d.readonly,
            ..OpenOptions::default()
        };
        let disk = open_disk(&d.path, &opts).map_err(|source| DeviceError::Disk {
            index,
            path: d.path.display().to_string(),
            source,
        })?;
        d.format = Some(disk.format());
        let dev = VirtioBlock::new(Arc::from(disk), index);
        dm.add_virtio(vm, Box::new(dev), mem)?;
    }
    for (index, n) in nets.iter_mut().enumerate() {
        let mac = n.mac.unwrap_or_else(MacAddr::random_local);
        n.mac = Some(mac);
        let tap = match handed.get_mut(index).and_then(Option::take) {
            Some(tap) => {
                info!(index, tap = %tap.name(), %mac, "tap handed over");
                tap
            }
            None => {
                let tap = Tap::open(&n.tap).map_err(|source| DeviceError::Net {
                    index,
                    tap: n.tap.clone(),
                    source,
                })?;
                info!(index, tap = %n.tap, %mac, "tap opened");
                tap
            }
        };
        dm.add_virtio(vm, Box::new(VirtioNet::new(tap, mac, index)), mem)?;
    }
    Ok(())
}

/// Adds a virtio-input tablet to `dm` (in the next free slot) and returns the handle that
/// injects pointer events into it (the VNC server's). Its id in saved state is `tablet0`.
pub fn attach_tablet(
    dm: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemory,
) -> Result<TabletHandle, DeviceError> {
    let dev = VirtioInput::new_tablet(0).map_err(DeviceError::EventFd)?;
    let handle = dev.handle();
    let slot = dm.add_virtio(vm, Box::new(dev), mem)?;
    info!(slot, "virtio-input tablet attached");
    dm.tablet = Some(handle.clone());
    Ok(handle)
}
