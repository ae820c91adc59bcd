//! Writes the embedded test guest ELF to the path given as the only argument.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: vireo-testguest OUTPUT.elf");
        return ExitCode::from(2);
    };
    let path = PathBuf::from(path);
    match vireo_testguest::write_to(&path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vireo-testguest: cannot write {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
