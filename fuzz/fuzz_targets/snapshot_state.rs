//! Fuzzes snapshot state decoding: the state file's framing (`snapshot::format::decode`, which
//! checks magic, version, length and checksum) and, past the checksum, the CBOR body and every
//! device's `restore` — the code a corrupted or hostile `state.bin` reaches.
//!
//! Input: a state file. Properties: decoding never panics; a file that decodes re-encodes to a
//! file that decodes; whatever the checksum says, the body (located by the header's layout) is
//! decoded as a `VmSnapshot`, and each device record that decodes is applied to a freshly built
//! device of its kind (serial, i8042, CMOS, ACPI, PCI, a virtio-blk transport over a small raw
//! disk and a virtio-input tablet, each with a stand-in MSI sink, a 64x64 display), which must refuse bad state with an error, never a panic,
//! and route only vectors that exist.

#![no_main]

mod common;

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vireo_devices::acpi_ged::AcpiGed;
use vireo_devices::acpi_pm::AcpiSleep;
use vireo_devices::display::{Display, Geometry};
use vireo_devices::legacy::{Cmos, Serial8250, I8042};
use vireo_devices::pci::{PciConfigIo, PciHostBridge, PciRoot};
use vireo_devices::virtio::block::VirtioBlock;
use vireo_devices::virtio::input::VirtioInput;
use vireo_devices::virtio::{GuestMemory, VirtioDevice, VirtioPciDevice};
use vireo_devices::{ExitHandler, GuestExitRequest, IrqLine};
use vireo_vmm::device_manager::persist::DeviceState;
use vireo_vmm::snapshot::{format, VmSnapshot};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

struct NoExit;

impl ExitHandler for NoExit {
    fn request_exit(&self, _request: GuestExitRequest) {}
}

fn irq() -> IrqLine {
    IrqLine::new(EventFd::new(0).expect("eventfd"))
}

/// The body of a state file per its header's layout, whatever its checksum.
fn body(data: &[u8]) -> Option<&[u8]> {
    let n = usize::from(u16::from_le_bytes(data.get(12..14)?.try_into().ok()?));
    let at = 14 + n;
    let len = u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    data.get(at + 8..(at + 8).checked_add(len)?)
}

fn apply(state: &DeviceState) {
    match state {
        DeviceState::Serial(s) => {
            let _ = Serial8250::new(irq(), Box::new(std::io::sink())).restore(s);
        }
        DeviceState::I8042(s) => {
            let _ = I8042::new(Arc::new(NoExit), irq()).restore(s);
        }
        DeviceState::Cmos(s) => {
            let _ = Cmos::default().restore(s);
        }
        DeviceState::AcpiSleep(s) => {
            let _ = AcpiSleep::new(Arc::new(NoExit)).restore(s);
        }
        DeviceState::AcpiGed(s) => {
            let _ = AcpiGed::new(irq()).restore(s);
        }
        DeviceState::PciConfigIo(s) => {
            let root = Arc::new(Mutex::new(PciRoot::new()));
            let _ = PciConfigIo::new(root).restore(s);
        }
        DeviceState::PciHostBridge(s) => {
            let _ = PciHostBridge::default().restore(s);
        }
        DeviceState::Virtio(s) => {
            let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 64 * 1024)]).expect("memory");
            let blk = VirtioBlock::new(common::raw_disk("snapshot"), 0);
            let tablet = VirtioInput::new_tablet(0).expect("tablet");
            let models: [Box<dyn VirtioDevice>; 2] = [Box::new(blk), Box::new(tablet)];
            for model in models {
                if let Ok(mut dev) = VirtioPciDevice::new(
                    model,
                    mem.clone(),
                    0xc000_0000,
                    Arc::new(common::TwoVectors::default()),
                ) {
                    let _ = dev.restore(s, true);
                    dev.reset();
                }
            }
        }
        DeviceState::Display(s) => {
            let _ = s.pixels();
            let geometry = Geometry {
                width: 64,
                height: 64,
            };
            if let Ok(display) = Display::new(geometry) {
                let _ = display.restore(s);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok((_, snapshot)) = format::decode::<VmSnapshot>(data) {
        let again = format::encode(&snapshot).expect("re-encode");
        assert!(format::decode::<VmSnapshot>(&again).is_ok());
    }
    let Some(body) = body(data) else { return };
    if let Ok(snapshot) = format::decode_body::<VmSnapshot>(body) {
        for record in &snapshot.devices {
            apply(&record.state);
        }
    }
});
