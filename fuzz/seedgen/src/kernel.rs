//! Inputs for `kernel_image`: small, well-formed kernel images of each format the loader
//! probes — a bzImage (Linux boot protocol setup header), ELF `vmlinux` images with and without
//! the Xen PVH entry note, and an ELF carrying Vireo's user-mode note. The target loads them
//! into 16 MiB of guest memory, so everything is placed just above 1 MiB and kept to a few KiB.
//! (scripts/fuzz-seeds.sh adds the real test guest ELF next to these, stripped by [`strip`].)

use crate::Seed;

/// A recognisable filler.
fn filler(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

/// Code at a kernel's entry: `hlt; jmp $-1`.
const HALT_LOOP: [u8; 3] = [0xf4, 0xeb, 0xfd];

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Setup-header fields of one bzImage.
struct BzImage {
    version: u16,
    /// 0 means 4, as in the boot protocol.
    setup_sects: u8,
    loadflags: u8,
    xloadflags: u16,
    code32_start: u32,
    /// Size of the protected-mode kernel after the setup sectors.
    kernel_len: usize,
}

impl BzImage {
    fn build(&self) -> Vec<u8> {
        let sects = if self.setup_sects == 0 {
            4
        } else {
            usize::from(self.setup_sects)
        };
        let setup_len = (sects + 1) * 512;
        let mut img = vec![0u8; setup_len];
        put(&mut img, 0x1f1, &[self.setup_sects]);
        let syssize = self.kernel_len.div_ceil(16) as u32;
        put(&mut img, 0x1f4, &syssize.to_le_bytes());
        put(&mut img, 0x1fe, &[0x55, 0xaa]);
        put(&mut img, 0x200, &[0xeb, 0x66]); // jmp to the setup code
        put(&mut img, 0x202, b"HdrS");
        put(&mut img, 0x206, &self.version.to_le_bytes());
        put(&mut img, 0x20e, &0x0100u16.to_le_bytes()); // kernel_version string offset
        put(&mut img, 0x211, &[self.loadflags]);
        put(&mut img, 0x214, &self.code32_start.to_le_bytes());
        put(&mut img, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        if self.version >= 0x0205 {
            put(&mut img, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
            put(&mut img, 0x234, &[1, 21]); // relocatable, min_alignment
        }
        if self.version >= 0x0206 {
            put(&mut img, 0x238, &2047u32.to_le_bytes()); // cmdline_size
        }
        if self.version >= 0x020c {
            put(&mut img, 0x236, &self.xloadflags.to_le_bytes());
        }
        if self.version >= 0x020a {
            put(&mut img, 0x258, &0x100_0000u64.to_le_bytes()); // pref_address
            put(&mut img, 0x260, &0x40_0000u32.to_le_bytes()); // init_size
        }
        put(&mut img, 0x300, b"6.1.0-vireo-seed (fuzz@vireo) #1 SMP\0");
        let mut kernel = filler(self.kernel_len, 0x42);
        put(&mut kernel, 0x200, &HALT_LOOP); // the 64-bit entry
        img.extend_from_slice(&kernel);
        img
    }
}

/// A program header of an ELF being built.
struct Segment {
    kind: u32,
    flags: u32,
    vaddr: u64,
    paddr: u64,
    data: Vec<u8>,
    memsz: u64,
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PT_GNU_STACK: u32 = 0x6474_e551;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;

/// ELF notes: (name, type, descriptor), 4-byte aligned.
fn notes(list: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(name, kind, desc) in list {
        let name = [name.as_bytes(), b"\0"].concat();
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&name);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(desc);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

/// An x86_64 ELF64 executable (`ET_EXEC`, no section headers) with `segments`, file contents
/// 16-byte aligned.
fn elf(entry: u64, segments: &[Segment]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let data_start = (EHDR + PHDR * segments.len()).next_multiple_of(16);
    let mut headers = Vec::new();
    let mut contents = Vec::new();
    for s in segments {
        let file_off = if s.data.is_empty() {
            0
        } else {
            data_start + contents.len()
        };
        let mut ph = Vec::with_capacity(PHDR);
        ph.extend_from_slice(&s.kind.to_le_bytes());
        ph.extend_from_slice(&s.flags.to_le_bytes());
        ph.extend_from_slice(&(file_off as u64).to_le_bytes());
        ph.extend_from_slice(&s.vaddr.to_le_bytes());
        ph.extend_from_slice(&s.paddr.to_le_bytes());
        ph.extend_from_slice(&(s.data.len() as u64).to_le_bytes());
        ph.extend_from_slice(&s.memsz.to_le_bytes());
        let align: u64 = if s.kind == PT_NOTE { 4 } else { 16 };
        ph.extend_from_slice(&align.to_le_bytes());
        headers.extend_from_slice(&ph);
        contents.extend_from_slice(&s.data);
        contents.resize(contents.len().next_multiple_of(16), 0);
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF");
    out.extend_from_slice(&[2, 1, 1, 0]); // ELFCLASS64, little endian, version 1, SysV
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&entry.to_le_bytes());
    out.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&(EHDR as u16).to_le_bytes());
    out.extend_from_slice(&(PHDR as u16).to_le_bytes());
    out.extend_from_slice(&(segments.len() as u16).to_le_bytes());
    out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    out.extend_from_slice(&headers);
    out.resize(out.len().next_multiple_of(16), 0);
    out.extend_from_slice(&contents);
    out
}

fn code(len: usize) -> Vec<u8> {
    let mut c = filler(len, 7);
    put(&mut c, 0, &HALT_LOOP);
    put(&mut c, 0x40, &HALT_LOOP);
    c
}

fn load(flags: u32, vaddr: u64, paddr: u64, data: Vec<u8>, memsz: u64) -> Segment {
    Segment {
        kind: PT_LOAD,
        flags,
        vaddr,
        paddr,
        data,
        memsz,
    }
}

fn note_segment(data: Vec<u8>) -> Segment {
    Segment {
        kind: PT_NOTE,
        flags: PF_R,
        vaddr: 0,
        paddr: 0,
        memsz: data.len() as u64,
        data,
    }
}

fn gnu_stack() -> Segment {
    Segment {
        kind: PT_GNU_STACK,
        flags: PF_R | PF_W,
        vaddr: 0,
        paddr: 0,
        data: Vec::new(),
        memsz: 0,
    }
}

/// Linux's usual notes: Xen guest OS, GNU build ID, Linux version.
fn linux_notes() -> Vec<(&'static str, u32, &'static [u8])> {
    vec![
        ("Xen", 6, b"linux\0"),
        ("GNU", 3, &[0xab; 20]),
        ("Linux", 0x100, b"6.1.0\0"),
    ]
}

/// All `kernel_image` seeds.
pub fn seeds() -> Vec<Seed> {
    // A vmlinux as Linux links it: virtual addresses in the kernel map, physical ones at
    // 1 MiB (CONFIG_PHYSICAL_START, shrunk to fit the target's 16 MiB), PVH entry note.
    const KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
    let phys = 0x10_0000u64;
    let pvh_entry = (phys as u32 + 0x40).to_le_bytes();
    let mut pvh_notes = linux_notes();
    pvh_notes.push(("Xen", 18, &pvh_entry)); // XEN_ELFNOTE_PHYS32_ENTRY
    let vmlinux_pvh = elf(
        KERNEL_MAP + phys,
        &[
            load(PF_R | PF_X, KERNEL_MAP + phys, phys, code(4096), 4096),
            load(
                PF_R | PF_W,
                KERNEL_MAP + phys + 0x2000,
                phys + 0x2000,
                filler(512, 1),
                0x3000,
            ),
            note_segment(notes(&pvh_notes)),
            gnu_stack(),
        ],
    );
    // Without the PVH note: booted at the ELF entry (a physical address here).
    let vmlinux_64 = elf(
        phys + 0x40,
        &[
            load(PF_R | PF_X, phys, phys, code(4096), 0x2000),
            note_segment(notes(&linux_notes())),
        ],
    );
    // Vireo's user-mode protocol: note "Vireo", type 1, version 1.
    let user = elf(
        0x20_0000,
        &[
            note_segment(notes(&[("Vireo", 1, &1u32.to_le_bytes())])),
            load(PF_R | PF_X, 0x20_0000, 0x20_0000, code(1024), 1024),
            load(PF_R | PF_W, 0x20_1000, 0x20_1000, filler(256, 2), 0x1000),
        ],
    );
    let bz = |version, setup_sects, xloadflags| {
        BzImage {
            version,
            setup_sects,
            loadflags: 0x01, // LOADED_HIGH
            xloadflags,
            code32_start: 0x10_0000,
            kernel_len: 8192,
        }
        .build()
    };
    vec![
        ("vmlinux-pvh.elf".into(), vmlinux_pvh),
        ("vmlinux-64bit-entry.elf".into(), vmlinux_64),
        ("user-mode.elf".into(), user),
        ("bzImage-2.15".into(), bz(0x020f, 27, 0x0003)),
        ("bzImage-2.06".into(), bz(0x0206, 4, 0)),
        ("bzImage-2.04-default-setup".into(), bz(0x0204, 0, 0)),
    ]
}

/// `elf` without its section headers and whatever lies past its segments (symbols, strings):
/// what the loaders read, at a size fit for mutation.
pub fn strip(elf: &[u8]) -> Vec<u8> {
    assert!(
        elf.starts_with(b"\x7fELF") && elf[4] == 2 && elf[5] == 1,
        "an ELF64 LE file"
    );
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().expect("2 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().expect("8 bytes"));
    let phoff = u64_at(0x20) as usize;
    let phentsize = usize::from(u16_at(0x36));
    let phnum = usize::from(u16_at(0x38));
    let mut end = phoff + phentsize * phnum;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        end = end.max((u64_at(ph + 8) + u64_at(ph + 32)) as usize);
    }
    let mut out = elf[..end].to_vec();
    out[0x28..0x30].fill(0); // e_shoff
    out[0x3c..0x40].fill(0); // e_shnum, e_shstrndx
    out
}
