//! `cargo run -p vireo-testguest --example write-elf -- PATH`: writes the test guest ELF to PATH
//! (the test node's launcher image carries it; `vireo run --kernel PATH` boots it).

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: write-elf PATH");
        return ExitCode::from(2);
    };
    match vireo_testguest::write_to(std::path::Path::new(&path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write-elf: cannot write {}: {e}", path.to_string_lossy());
            ExitCode::FAILURE
        }
    }
}
