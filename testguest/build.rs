//! Builds the test guest: a freestanding x86_64 ELF compiled with the host
//! target (`#![no_std]`, `#![no_main]`, panic=abort, our own link script), so
//! no extra Rust target or cross toolchain is needed.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let src = manifest.join("guest/main.rs");
    let script = manifest.join("guest/linker.ld");
    let out = out_dir.join("vireo-testguest.elf");
    println!("cargo:rerun-if-changed=guest");

    let status = Command::new(rustc)
        .arg("--edition=2021")
        .arg("--crate-type=bin")
        .arg("--crate-name=vireo_testguest")
        .args(["-C", "panic=abort"])
        .args(["-C", "opt-level=2"])
        .args(["-C", "debuginfo=0"])
        .args(["-C", "relocation-model=static"])
        .args(["-C", "code-model=small"])
        .args(["-C", "default-linker-libraries=no"])
        .args(["-C", "link-arg=-nostartfiles"])
        .args(["-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-static"])
        .args(["-C", "link-arg=-no-pie"])
        .args(["-C", "link-arg=-Wl,--build-id=none"])
        .arg("-C")
        .arg(format!("link-arg=-Wl,-T,{}", script.display()))
        .arg("-o")
        .arg(&out)
        .arg(&src)
        // The outer build's flags (e.g. coverage or sanitizers) are not
        // meant for a freestanding guest.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .status()
        .expect("failed to run rustc for the test guest");
    assert!(status.success(), "building the test guest failed");
    println!("cargo:rustc-env=VIREO_TESTGUEST_ELF={}", out.display());
}
