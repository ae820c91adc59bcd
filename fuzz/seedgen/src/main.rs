//! Seed-corpus generator for Vireo's fuzz targets (`fuzz/fuzz_targets`).
//!
//! A fuzzer that starts from nothing has to guess every magic number and length field before it
//! reaches the code it is meant to test. This tool writes well-formed inputs in each target's
//! input format, so fuzzing starts past the parsers' front doors:
//!
//! ```text
//! seedgen virtio DIR          DIR/{virtio_blk_request,virtio_net_chain,virtio_pci_registers}/
//! seedgen kernel DIR          DIR/ synthetic bzImage and ELF kernels (kernel_image)
//! seedgen strip-elf IN OUT    IN without section headers, symbols and strings
//! seedgen rfb DIR             DIR/ viewer byte streams (rfb_client)
//! seedgen qcow2 MAX SMALL LARGE IMAGE...
//!                             each qcow2 IMAGE (made by qemu-img, see scripts/fuzz-seeds.sh) as
//!                             qcow2_open inputs: a 16-byte request script + the image bytes,
//!                             into SMALL if at most MAX bytes (the fuzzing corpus), else LARGE
//!                             (run once each, as regression inputs)
//! ```
//!
//! Output is deterministic: the same arguments (and the same qemu-img output) give the same
//! files. Internal-snapshot timestamps in qcow2 images are zeroed for that reason.
//!
//! This is a build tool fed only with its own constants and qemu-img's output, so it panics
//! (with a message) on anything unexpected instead of carrying error types around.

mod kernel;
mod pci;
mod qcow2;
mod rfb;
mod virtq;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A named seed.
pub type Seed = (String, Vec<u8>);

/// Writes `seeds` into `dir` (created if missing), one file per seed.
pub fn write_all(dir: &Path, seeds: &[Seed]) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    for (name, bytes) in seeds {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: seedgen virtio DIR | seedgen kernel DIR | seedgen rfb DIR | seedgen strip-elf IN OUT\n       \
         seedgen qcow2 MAX_LEN SMALL_DIR LARGE_DIR IMAGE..."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["virtio", dir] => {
            let dir = PathBuf::from(dir);
            write_all(&dir.join("virtio_blk_request"), &virtq::blk_seeds());
            write_all(&dir.join("virtio_net_chain"), &virtq::net_seeds());
            write_all(&dir.join("virtio_pci_registers"), &pci::seeds());
        }
        ["kernel", dir] => write_all(Path::new(dir), &kernel::seeds()),
        ["rfb", dir] => write_all(Path::new(dir), &rfb::seeds()),
        ["strip-elf", input, output] => {
            let elf = std::fs::read(input).unwrap_or_else(|e| panic!("read {input}: {e}"));
            std::fs::write(output, kernel::strip(&elf))
                .unwrap_or_else(|e| panic!("write {output}: {e}"));
        }
        ["qcow2", max, small, large, images @ ..] if !images.is_empty() => {
            let max: usize = max.parse().expect("MAX_LEN is a byte count");
            let (mut fits, mut big) = (Vec::new(), Vec::new());
            for image in images {
                for seed in qcow2::seeds(Path::new(image)) {
                    if seed.1.len() <= max {
                        fits.push(seed);
                    } else {
                        big.push(seed);
                    }
                }
            }
            write_all(Path::new(small), &fits);
            write_all(Path::new(large), &big);
        }
        _ => return usage(),
    }
    ExitCode::SUCCESS
}
