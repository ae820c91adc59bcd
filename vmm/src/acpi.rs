//! ACPI tables for Linux guests, built with the `acpi_tables` crate.
//!
//! ```text
//!  RSDP (0xe_0000) ──► XSDT ──┬─► FADT (hardware-reduced, 8042 present) ──► DSDT
//!                              ├─► MADT  (one LAPIC per vCPU, IOAPIC, IRQ0→GSI2)
//!                              └─► MCFG  (PCIe ECAM for bus 0–255)
//!  DSDT: \_SB.PCI0 (PNP0A08 host bridge, bus/IO/MMIO windows), \_SB.COM1
//!        (PNP0501, 0x3f8, IRQ 4), \_SB.RTC_ (PNP0B00), \_SB.PS2K (PNP0303
//!        keyboard: i8042 ports 0x60 and 0x64, IRQ 1), \_SB.GED0 (ACPI0013,
//!        GSI 5) notifying \_SB.PWRB (PNP0C0C power button), \_S5_ (soft off)
//! ```
//! Power-off goes through the FADT sleep control register (the
//! `vireo-devices` `AcpiSleep` device at port 0x3c0); reset through the FADT
//! reset register, which points at the i8042 reset command (port 0x64, 0xfe).
//! All tables live between the RSDP and 1 MiB, a range E820 marks reserved.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, And, Device, EISAName, Field, FieldAccessType,
    FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt, Local, Method, Name, Notify,
    OpRegion, OpRegionSpace, Package, Path, ResourceTemplate, Store, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use thiserror::Error;
use vireo_devices::acpi_ged::{EVENT_POWER_BUTTON, GED_EVENT_PORT, GED_IRQ};
use vireo_devices::acpi_pm::{ACPI_SLEEP_PORT, SLP_TYP_S5};
use vireo_devices::legacy::i8042::{I8042_KBD_IRQ, I8042_PORT_BASE};
use vm_memory::{Bytes, GuestAddress};
use zerocopy::{Immutable, IntoBytes};

use crate::arch::x86_64::layout::{
    ACPI_RSDP_ADDR, HIGH_MEMORY_START, IOAPIC_ADDR, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO32_START,
};
use crate::memory::GuestMemory;

const OEM_ID: [u8; 6] = *b"VIREO ";
const OEM_TABLE_ID: [u8; 8] = *b"VIREOVMM";
const OEM_REVISION: u32 = 1;
/// Local APIC base address.
const LAPIC_ADDR: u32 = 0xfee0_0000;
/// The i8042 command port and its reset command, used as the reset register.
const RESET_PORT: u64 = 0x64;
const RESET_VALUE: u8 = 0xfe;
/// FADT IA-PC boot architecture flag: the platform has an 8042.
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;

/// Why the tables could not be written.
#[derive(Debug, Error)]
pub enum AcpiError {
    /// The tables do not fit below 1 MiB.
    #[error("ACPI tables need {needed} bytes but only {available} fit below 1 MiB")]
    TooLarge {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// Writing into guest memory failed.
    #[error("cannot write ACPI tables into guest memory: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// MADT interrupt source override (type 2).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    kind: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// The DSDT: PCI host bridge, COM1, the RTC, the PS/2 keyboard, the power
/// button with its GED, and the S5 sleep state.
fn dsdt() -> Sdt {
    let mmio_end = (PCI_ECAM_START - 1) as u32;
    let pci0 = bytes(&Device::new(
        "_SB_.PCI0".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0A08")),
            &Name::new("_CID".into(), &EISAName::new("PNP0A03")),
            &Name::new("_ADR".into(), &aml::ZERO),
            &Name::new("_SEG".into(), &aml::ZERO),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_BBN".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &AddressSpace::new_bus_number(0u16, 0xffu16),
                    &IO::new(0xcf8, 0xcf8, 1, 8),
                    &AddressSpace::new_io(0u16, 0xcf7u16, None),
                    &AddressSpace::new_io(0xd00u16, 0xffffu16, None),
                    &AddressSpace::new_memory(
                        AddressSpaceCacheable::NotCacheable,
                        true,
                        PCI_MMIO32_START as u32,
                        mmio_end,
                        None,
                    ),
                ]),
            ),
        ],
    ));
    let com1 = bytes(&Device::new(
        "_SB_.COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &IO::new(0x3f8, 0x3f8, 0, 8),
                    &Interrupt::new(true, true, false, false, 4),
                ]),
            ),
        ],
    ));
    let rtc = bytes(&Device::new(
        "_SB_.RTC_".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0B00")),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&IO::new(0x70, 0x70, 1, 2)]),
            ),
        ],
    ));
    // The i8042 keyboard: Linux's i8042 driver finds the controller through
    // this PNP device (data port, command port, IRQ).
    let kbd_data = I8042_PORT_BASE as u16;
    let kbd_command = kbd_data + 4;
    let ps2k = bytes(&Device::new(
        "_SB_.PS2K".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0303")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &IO::new(kbd_data, kbd_data, 1, 1),
                    &IO::new(kbd_command, kbd_command, 1, 1),
                    &Interrupt::new(true, true, false, false, I8042_KBD_IRQ),
                ]),
            ),
        ],
    ));
    let ged_port = GED_EVENT_PORT as u32;
    let ged = bytes(&Device::new(
        "_SB_.GED0".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&Interrupt::new(true, true, false, false, GED_IRQ)]),
            ),
            &OpRegion::new("GDST".into(), OpRegionSpace::SystemIO, &ged_port, &1u8),
            &Field::new(
                "GDST".into(),
                FieldAccessType::Byte,
                FieldLockRule::NoLock,
                FieldUpdateRule::WriteAsZeroes,
                vec![FieldEntry::Named(*b"GDAT", 8)],
            ),
            &Method::new(
                "_EVT".into(),
                1,
                true,
                vec![
                    &Store::new(&Local(0), &Path::new("GDAT")),
                    &If::new(
                        &And::new(&Local(1), &Local(0), &EVENT_POWER_BUTTON),
                        vec![&Notify::new(&Path::new("\\_SB_.PWRB"), &0x80u8)],
                    ),
                ],
            ),
        ],
    ));
    let pwrb = bytes(&Device::new(
        "_SB_.PWRB".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C0C")),
            &Name::new("_UID".into(), &aml::ZERO),
        ],
    ));
    let s5 = bytes(&Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&SLP_TYP_S5, &SLP_TYP_S5, &aml::ZERO, &aml::ZERO]),
    ));
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for part in [pci0, com1, rtc, ps2k, ged, pwrb, s5] {
        sdt.append_slice(&part);
    }
    sdt
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let io =
        |bits: u8, port: u64| GAS::new(GasSpace::SystemIo, bits, 0, AccessSize::ByteAccess, port);
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    b.sleep_control_reg = io(8, ACPI_SLEEP_PORT);
    b.sleep_status_reg = io(8, ACPI_SLEEP_PORT + 1);
    // IA-PC boot architecture: an 8042 at 0x60/0x64, so that Linux probes
    // it even without ACPI PNP (which finds it through \_SB.PS2K).
    b.iapc_boot_arch = IAPC_BOOT_ARCH_8042.into();
    b.reset_reg = io(8, RESET_PORT);
    b.reset_value = RESET_VALUE;
    bytes(&b.finalize())
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR as u32, 0));
    // The PIT (ISA IRQ 0) is wired to IOAPIC pin 2, as on a PC.
    madt.add_structure(InterruptSourceOverride {
        kind: 2,
        length: 10,
        bus: 0,
        source: 0,
        gsi: 2,
        flags: 0,
    });
    bytes(&madt)
}

fn mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let last_bus = (PCI_ECAM_SIZE >> 20) - 1;
    mcfg.add_ecam(PCI_ECAM_START, 0, 0, last_bus as u8);
    bytes(&mcfg)
}

/// Writes every table for a guest with `vcpus` vCPUs; returns the RSDP's
/// address.
pub fn write_tables(mem: &GuestMemory, vcpus: u8) -> Result<u64, AcpiError> {
    let mut next = ACPI_RSDP_ADDR + 64;
    let mut place = |table: &[u8]| -> Result<u64, AcpiError> {
        let addr = next;
        let end = addr + table.len() as u64;
        if end > HIGH_MEMORY_START {
            return Err(AcpiError::TooLarge {
                needed: end - ACPI_RSDP_ADDR,
                available: HIGH_MEMORY_START - ACPI_RSDP_ADDR,
            });
        }
        mem.write_slice(table, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
        next = end.div_ceil(16) * 16;
        Ok(addr)
    };
    let mut dsdt = dsdt();
    dsdt.update_checksum();
    let dsdt_addr = place(dsdt.as_slice())?;
    let fadt_addr = place(&fadt(dsdt_addr))?;
    let madt_addr = place(&madt(vcpus))?;
    let mcfg_addr = place(&mcfg())?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for addr in [fadt_addr, madt_addr, mcfg_addr] {
        xsdt.add_entry(addr);
    }
    let xsdt_addr = place(&bytes(&xsdt))?;
    let rsdp = bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    mem.write_slice(&rsdp, GuestAddress(ACPI_RSDP_ADDR))
        .map_err(AcpiError::Write)?;
    Ok(ACPI_RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, MIB};

    fn table_at(mem: &GuestMemory, addr: u64) -> Vec<u8> {
        let mut header = [0u8; 36];
        mem.read_slice(&mut header, GuestAddress(addr))
            .expect("read");
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let mut t = vec![0u8; len];
        mem.read_slice(&mut t, GuestAddress(addr)).expect("read");
        t
    }

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_chain_from_the_rsdp_with_valid_checksums() {
        let mem = create_guest_memory(64 * MIB).expect("mem");
        let rsdp_addr = write_tables(&mem, 2).expect("tables");
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(rsdp_addr))
            .expect("rsdp");
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(&rsdp));
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().expect("8 bytes"));
        let xsdt = table_at(&mem, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let mut sigs = Vec::new();
        for entry in xsdt[36..].chunks_exact(8) {
            let t = table_at(&mem, u64::from_le_bytes(entry.try_into().expect("8")));
            assert!(checksum_ok(&t), "{:?}", &t[..4]);
            sigs.push(String::from_utf8_lossy(&t[..4]).into_owned());
            if &t[..4] == b"APIC" {
                // Two local APICs (type 0), one IOAPIC (type 1), one override (type 2).
                let mut kinds = Vec::new();
                let mut i = 44;
                while i + 1 < t.len() {
                    kinds.push(t[i]);
                    i += usize::from(t[i + 1].max(1));
                }
                assert_eq!(kinds, vec![0, 0, 1, 2]);
            }
            if &t[..4] == b"FACP" {
                let dsdt_addr = u64::from_le_bytes(t[140..148].try_into().expect("8"));
                let dsdt = table_at(&mem, dsdt_addr);
                assert_eq!(&dsdt[..4], b"DSDT");
                assert!(checksum_ok(&dsdt));
                assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
                assert!(dsdt.windows(4).any(|w| w == b"PCI0"));
                assert!(dsdt.windows(8).any(|w| w == b"ACPI0013"));
                assert!(dsdt.windows(4).any(|w| w == b"_EVT"));
                assert!(dsdt.windows(4).any(|w| w == b"PS2K"));
            }
        }
        assert_eq!(sigs, vec!["FACP", "APIC", "MCFG"]);
    }

    /// Disassembles every table with ACPICA's `iasl` (Debian package
    /// acpica-tools), the reference implementation, and checks it parses our
    /// AML without errors and finds the devices we declared.
    #[test]
    fn iasl_disassembles_every_table() {
        let mem = create_guest_memory(64 * MIB).expect("mem");
        write_tables(&mem, 2).expect("tables");
        let dir = tempfile::tempdir().expect("dir");
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(ACPI_RSDP_ADDR))
            .expect("rsdp");
        let xsdt = table_at(
            &mem,
            u64::from_le_bytes(rsdp[24..32].try_into().expect("8")),
        );
        let mut tables = vec![xsdt.clone()];
        for entry in xsdt[36..].chunks_exact(8) {
            let t = table_at(&mem, u64::from_le_bytes(entry.try_into().expect("8")));
            if &t[..4] == b"FACP" {
                let dsdt = u64::from_le_bytes(t[140..148].try_into().expect("8"));
                tables.push(table_at(&mem, dsdt));
            }
            tables.push(t);
        }
        let mut dsl = String::new();
        for t in &tables {
            let name = String::from_utf8_lossy(&t[..4]).to_lowercase();
            let bin = dir.path().join(format!("{name}.dat"));
            std::fs::write(&bin, t).expect("write table");
            let out = std::process::Command::new("iasl")
                .arg("-d")
                .arg(&bin)
                .output()
                .expect("iasl must be installed (Debian package acpica-tools)");
            let log = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "iasl failed on {name}: {log}");
            assert!(
                !log.contains("Error"),
                "iasl reported errors on {name}: {log}"
            );
            dsl += &std::fs::read_to_string(dir.path().join(format!("{name}.dsl"))).expect("dsl");
        }
        for needle in [
            "PNP0A08",
            "PNP0501",
            "PNP0B00",
            "Device (_SB.PS2K)",
            "EisaId (\"PNP0303\")",
            "IO (Decode16,\n                0x0060,",
            "IO (Decode16,\n                0x0064,",
            "ACPI0013",
            "PNP0C0C",
            "Name (_S5,",
            "Notify (\\_SB.PWRB, 0x80)",
            "Hardware Reduced (V5) : 1",
            "8042 Present on ports 60/64 (V2) : 1",
            "Local Apic ID : 01",
            "Base Address : 00000000E0000000",
        ] {
            assert!(
                dsl.contains(needle),
                "'{needle}' missing from the disassembly:\n{dsl}"
            );
        }
        // The keyboard's interrupt is IRQ 1, edge, active high.
        let ps2k = dsl
            .split("Device (_SB.PS2K)")
            .nth(1)
            .and_then(|rest| rest.split("Device (").next())
            .expect("PS2K in the disassembly");
        assert!(
            ps2k.contains("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )")
                && ps2k.contains("0x00000001,"),
            "PS2K's interrupt:\n{ps2k}"
        );
    }
}
