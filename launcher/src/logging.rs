//! Where the launcher's logs and error lines go: stderr, written so that a
//! closed stderr can never take a thread down.
//!
//! `tracing-subscriber` reports a failed write with `eprintln!`, which panics
//! when stderr is a pipe whose reader has gone (`vireo run … 2>&1 | head`, a
//! log collector that restarted). A panic on the signal thread would leave
//! SIGTERM unanswered and the VM running; on a vCPU thread it would stop the
//! guest. So log lines that cannot be written are dropped instead.

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::EnvFilter;

/// Installs the global `tracing` subscriber: filtered by `VIREO_LOG`
/// (default `info`), colours only on a terminal, written by [`LossyStderr`].
pub fn init() {
    let filter = EnvFilter::try_from_env("VIREO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Writes `line` and a newline to stderr, ignoring a closed stderr (what
/// `eprintln!` would panic on).
pub fn error_line(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// Stderr that reports every write as done: bytes that cannot be written
/// (closed pipe, full disk behind a redirect) are dropped, never an error.
#[derive(Clone, Copy, Debug, Default)]
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().lock().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}
