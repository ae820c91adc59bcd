//! The container termination message: one line saying how `vireo` ended, which Kubernetes
//! shows in the pod's status next to the exit code (`terminated.message`).
//!
//! The file is the path in [`ENV`] when set, else `/dev/termination-log` when it exists and is
//! writable (the kubelet creates it in every container); otherwise there is no message. The
//! line is `<reason>: <description>` ([`for_status`], [`for_error`]) or the report of a
//! command that has its own (`vireo preflight`), cut to [`MAX_BYTES`]. Writing it never
//! changes the exit status: a failed write is a warning.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use tracing::warn;
use vireo_spec::ExitStatus;

/// Environment variable naming the termination-message file.
pub const ENV: &str = "VIREO_TERMINATION_LOG";

/// Kubernetes' default `terminationMessagePath`.
pub const DEFAULT_PATH: &str = "/dev/termination-log";

/// The most bytes Kubernetes keeps of a termination message.
pub const MAX_BYTES: usize = 4096;

/// The message for a VM that ended with `status`: its reason and description.
pub fn for_status(status: ExitStatus) -> String {
    format!("{}: {}", status.reason(), status.description())
}

/// The message for a VMM error (exit status 1) whose one-line text is `text`.
pub fn for_error(text: &str) -> String {
    format!("{}: {}", ExitStatus::VmmError.reason(), text)
}

/// Where the message goes: `env` (the value of [`ENV`]) when set and not empty, else
/// `default` when it is writable, else nowhere.
fn target(env: Option<std::ffi::OsString>, default: &Path) -> Option<PathBuf> {
    match env {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            let writable = OpenOptions::new().append(true).open(default).is_ok();
            writable.then(|| default.to_path_buf())
        }
    }
}

/// `message` on one line (line breaks become spaces) and at most [`MAX_BYTES`] bytes with
/// the newline, cut at a character boundary.
fn one_line(message: &str) -> String {
    let mut line: String = message
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    let limit = MAX_BYTES - 1;
    if line.len() > limit {
        let mut end = limit;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line.push('\n');
    line
}

/// Writes `message` to the termination-message file, if there is one; logs a warning if
/// that fails.
pub fn write(message: &str) {
    let Some(path) = target(std::env::var_os(ENV), Path::new(DEFAULT_PATH)) else {
        return;
    };
    if let Err(e) = std::fs::write(&path, one_line(message)) {
        warn!(path = %path.display(), error = %e, "cannot write the termination message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_reason() {
        assert_eq!(
            for_status(ExitStatus::TripleFault),
            "TripleFault: a vCPU triple-faulted"
        );
        assert_eq!(for_error("boom"), "VMMError: boom");
    }

    #[test]
    fn long_messages_are_cut_to_the_kubernetes_limit_on_a_char_boundary() {
        let line = one_line(&"é".repeat(3000));
        assert!(line.len() <= MAX_BYTES, "{}", line.len());
        assert!(line.ends_with("é\n"));
        assert_eq!(one_line("a\nb"), "a b\n");
        assert_eq!(one_line(&"x".repeat(5000)).len(), MAX_BYTES);
    }

    #[test]
    fn the_env_wins_and_an_unwritable_default_means_no_message() {
        let missing = Path::new("/nonexistent-dir/termination-log");
        assert_eq!(
            target(Some("/tmp/x".into()), missing),
            Some(PathBuf::from("/tmp/x"))
        );
        assert_eq!(target(None, missing), None);
        assert_eq!(target(Some("".into()), missing), None);
    }
}
