//! Loading a payload (kernel, command line) into guest memory and deciding
//! where the boot vCPU starts.
//!
//! The kernel's format is probed from its bytes, never from its file name:
//!
//! | format                                   | protocol                      |
//! |------------------------------------------|-------------------------------|
//! | ELF64 with a `Vireo` note (type 1)       | ring-3 user-mode boot ([`user_elf`]) |
//! | ELF without that note (Linux `vmlinux`)  | PVH, or the 64-bit Linux entry ([`linux`]) |
//! | bzImage (`HdrS` at 0x202)                | Linux boot protocol, 64-bit entry ([`linux`]) |
//!
//! Anything else is refused as not a loadable kernel.

pub mod linux;
pub mod user_elf;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::arch::x86_64::paging::PagingError;
use crate::arch::x86_64::InitialCpuState;
use crate::config::PayloadConfig;
use crate::memory::GuestMemory;

/// What a kernel image turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF carrying Vireo's user-mode note: started directly in ring 3.
    UserModeElf,
    /// Any other ELF (a Linux `vmlinux`, booted through PVH).
    Elf,
    /// A Linux bzImage.
    BzImage,
}

/// Why a payload could not be loaded.
#[derive(Debug, Error)]
pub enum BootError {
    /// The kernel file could not be read.
    #[error("cannot read kernel {path}: {source}")]
    KernelRead {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel file is larger than guest memory.
    #[error("kernel {path} is {size} bytes, more than the guest's {memory} bytes of memory")]
    KernelTooLarge {
        /// The path given.
        path: PathBuf,
        /// File size.
        size: u64,
        /// Guest memory size.
        memory: u64,
    },
    /// The file is neither an ELF executable nor a bzImage.
    #[error("{path} is not a loadable kernel: expected an x86_64 ELF or a bzImage")]
    NotAKernel {
        /// The path given.
        path: PathBuf,
    },
    /// A recognised format this build cannot boot yet.
    #[error("{path}: {what} is not supported: {reason}")]
    Unsupported {
        /// The path given.
        path: PathBuf,
        /// The format found.
        what: &'static str,
        /// Why it cannot be booted.
        reason: &'static str,
    },
    /// A Linux kernel image is malformed or unsuitable.
    #[error("{path}: invalid {what}: {reason}")]
    InvalidKernel {
        /// The path given.
        path: PathBuf,
        /// The format being loaded.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The initramfs could not be read.
    #[error("cannot read initramfs {path}: {source}")]
    InitramfsRead {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The initramfs does not fit where the kernel can reach it.
    #[error("initramfs {path} is {size} bytes but only {available} bytes of guest memory are free for it below the kernel's limit")]
    InitramfsTooLarge {
        /// The path given.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Room available.
        available: u64,
    },
    /// Writing the zero page or PVH start info failed.
    #[error("cannot write boot parameters: {0}")]
    BootParams(String),
    /// Writing ACPI tables failed.
    #[error(transparent)]
    Acpi(#[from] crate::acpi::AcpiError),
    /// The ELF is malformed or unsuitable.
    #[error("{path}: invalid ELF: {reason}")]
    InvalidElf {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The command line does not fit.
    #[error("command line is {len} bytes; at most {max} are allowed")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit (without the terminating NUL).
        max: usize,
    },
    /// Building page tables failed.
    #[error(transparent)]
    Paging(#[from] PagingError),
    /// Writing boot data into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    GuestWrite {
        /// What was being written.
        what: &'static str,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
}

/// The outcome of loading a payload: how the boot vCPU starts and which
/// protocol-defined devices the guest expects.
#[derive(Debug, Clone)]
pub struct BootPlan {
    /// Initial state of vCPU 0.
    pub boot_cpu: InitialCpuState,
    /// The protocol reports results through the debug exit port.
    pub debug_exit: bool,
    /// The format that was loaded.
    pub format: KernelFormat,
}

impl BootPlan {
    /// Whether the guest is Linux-like and expects the ACPI platform
    /// (tables, sleep registers) and firmware-initialised vCPUs.
    pub fn is_linux(&self) -> bool {
        self.format != KernelFormat::UserModeElf
    }
}

/// Identifies a kernel image from its first bytes.
pub fn probe(bytes: &[u8]) -> Option<KernelFormat> {
    if bytes.starts_with(b"\x7fELF") {
        return Some(if user_elf::has_vireo_note(bytes) {
            KernelFormat::UserModeElf
        } else {
            KernelFormat::Elf
        });
    }
    if bytes.get(0x202..0x206) == Some(b"HdrS") && bytes.get(0x1fe..0x200) == Some(&[0x55, 0xaa]) {
        return Some(KernelFormat::BzImage);
    }
    None
}

/// The first bytes of a kernel read to identify it (a bzImage's setup header and an ELF's
/// headers lie well inside).
const PROBE_BYTES: u64 = 64 * 1024;

/// Reads what identifying and loading the kernel at `path` needs: its first [`PROBE_BYTES`],
/// and for an ELF everything up to the end of its last loadable segment's or note's data — not
/// the section and symbol tables after it, which are most of a debug build's file. (The Linux
/// loaders read their image themselves.)
fn read_kernel(path: &Path, memory_size: u64) -> Result<Vec<u8>, BootError> {
    use std::os::unix::fs::FileExt;
    let read_err = |source| BootError::KernelRead {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size > memory_size {
        return Err(BootError::KernelTooLarge {
            path: path.to_owned(),
            size,
            memory: memory_size,
        });
    }
    let read_prefix = |len: u64| -> Result<Vec<u8>, BootError> {
        let mut bytes = vec![0u8; usize::try_from(len.min(size)).unwrap_or(0)];
        file.read_exact_at(&mut bytes, 0).map_err(read_err)?;
        Ok(bytes)
    };
    let head = read_prefix(PROBE_BYTES)?;
    if !head.starts_with(b"\x7fELF") {
        return Ok(head);
    }
    let needed = match user_elf::data_end(&head) {
        Some(end) => end,
        // Program headers beyond the first bytes: read it all.
        None => size,
    };
    if needed <= head.len() as u64 {
        return Ok(head);
    }
    read_prefix(needed)
}

/// Loads `payload` into `mem` (of `memory_size` bytes, freshly allocated, so all zero: parts
/// of the payload that are zero, such as an ELF segment's BSS, are not written) and plans the boot.
pub fn load_payload(
    mem: &GuestMemory,
    memory_size: u64,
    payload: &PayloadConfig,
    vcpus: u8,
) -> Result<BootPlan, BootError> {
    let path = payload.kernel.as_path();
    let bytes = read_kernel(path, memory_size)?;
    match probe(&bytes) {
        Some(KernelFormat::UserModeElf) => {
            if payload.initramfs.is_some() {
                return Err(BootError::Unsupported {
                    path: path.to_owned(),
                    what: "an initramfs with a user-mode ELF",
                    reason: "the user-mode boot protocol has no initramfs",
                });
            }
            user_elf::load(mem, memory_size, path, &bytes, &payload.cmdline)
        }
        Some(KernelFormat::Elf) => linux::load_elf(mem, memory_size, payload, vcpus),
        Some(KernelFormat::BzImage) => linux::load_bzimage(mem, memory_size, payload, vcpus),
        None => Err(BootError::NotAKernel {
            path: path.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, MIB};

    #[test]
    fn a_user_mode_elf_is_read_up_to_its_segments_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("guest.elf");
        std::fs::write(&path, vireo_testguest::ELF).expect("write");
        let bytes = read_kernel(&path, 64 * MIB).expect("read");
        assert!(
            bytes.len() < vireo_testguest::ELF.len() / 2,
            "{} of {} bytes read",
            bytes.len(),
            vireo_testguest::ELF.len()
        );
        assert_eq!(bytes[..], vireo_testguest::ELF[..bytes.len()]);
        let mem = create_guest_memory(64 * MIB).expect("memory");
        let payload = PayloadConfig {
            kernel: path,
            initramfs: None,
            cmdline: "hello".into(),
        };
        let plan = load_payload(&mem, 64 * MIB, &payload, 1).expect("load");
        assert_eq!(plan.format, KernelFormat::UserModeElf);
    }

    #[test]
    fn a_file_too_short_for_its_segments_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("guest.elf");
        let full = read_kernel_of(vireo_testguest::ELF, &dir);
        std::fs::write(&path, &full[..full.len() - 1]).expect("write");
        let payload = PayloadConfig {
            kernel: path,
            initramfs: None,
            cmdline: String::new(),
        };
        let mem = create_guest_memory(64 * MIB).expect("memory");
        let e = load_payload(&mem, 64 * MIB, &payload, 1).expect_err("short");
        assert!(e.to_string().contains("outside the file"), "{e}");
    }

    /// What `read_kernel` reads of `image`.
    fn read_kernel_of(image: &[u8], dir: &tempfile::TempDir) -> Vec<u8> {
        let path = dir.path().join("whole.elf");
        std::fs::write(&path, image).expect("write");
        read_kernel(&path, 64 * MIB).expect("read")
    }
}
