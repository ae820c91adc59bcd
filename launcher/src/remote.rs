//! `vireo remote`: a client of the control API, in the manner of Cloud Hypervisor's
//! `ch-remote`. It sends one request over the unix socket, prints a JSON answer on stdout
//! (nothing for 204), and turns an error status into an error carrying the server's reason.
//!
//! `vireo probe` uses the same client with a short deadline: see [`probe`].

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use vireo_spec::api::{ApiErrorBody, ApiVmState};

use crate::cli::RemoteAction;

/// Largest answer read (`vm.info` is a few KiB).
const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// Runs `action` against the API on `socket`.
pub fn run(socket: &Path, action: RemoteAction) -> Result<ExitCode> {
    let (method, path) = action.endpoint();
    let (status, body) = request(socket, method, path, &action.body()?)?;
    if (200..300).contains(&status) {
        if !body.is_empty() {
            let mut out = std::io::stdout().lock();
            out.write_all(&body)?;
            if !body.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let reason = ApiErrorBody::reason_of(&body);
    bail!("{method} {path}: {status}: {reason}")
}

/// Sends `method path` with `body` (JSON, or empty) and returns the status and body of the
/// answer.
pub fn request(socket: &Path, method: &str, path: &str, body: &str) -> Result<(u16, Vec<u8>)> {
    // vm.shutdown answers once the VM has stopped, and a snapshot or an eager restore of a
    // large guest once its memory is written or read.
    request_within(socket, method, path, body, Duration::from_secs(600))
}

/// [`request`] that gives up (with an error) once `limit` has passed since it started,
/// whether the server is slow to accept, to read the request or to answer.
pub fn request_within(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
    limit: Duration,
) -> Result<(u16, Vec<u8>)> {
    let deadline = Instant::now() + limit;
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .with_context(|| format!("no answer within {limit:?}"))
    };
    stream.set_write_timeout(Some(left()?.min(Duration::from_secs(10))))?;
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .context("cannot send the request")?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        stream.set_read_timeout(Some(left()?))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() as u64 > MAX_ANSWER_BYTES {
                    bail!("the answer is larger than {MAX_ANSWER_BYTES} bytes");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!("no answer within {limit:?}")
            }
            Err(e) => return Err(e).context("cannot read the answer"),
        }
    }
    parse_answer(&answer)
}

/// How long `vireo probe` waits for the API's answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The part of `vm.info` the probe reads.
#[derive(Deserialize)]
struct StateOnly {
    state: ApiVmState,
}

/// `vireo probe`: `Ok(())` iff the VM behind the control API on `socket` is `Running`;
/// otherwise the one-line reason (no socket, no answer within [`PROBE_TIMEOUT`], no VM, the
/// state it is in).
pub fn probe(socket: &Path) -> Result<(), String> {
    if let Err(e) = std::fs::symlink_metadata(socket) {
        return Err(format!("no API socket at {}: {e}", socket.display()));
    }
    let (status, body) = request_within(socket, "GET", "/api/v1/vm.info", "", PROBE_TIMEOUT)
        .map_err(|e| {
            format!(
                "the API at {} did not answer: {}",
                socket.display(),
                one_line(&e)
            )
        })?;
    if !(200..300).contains(&status) {
        let reason = ApiErrorBody::reason_of(&body);
        return Err(format!("no VM: vm.info answered {status}: {reason}"));
    }
    let info: StateOnly = serde_json::from_slice(&body)
        .map_err(|e| format!("vm.info answered something unreadable: {e}"))?;
    match info.state {
        ApiVmState::Running => Ok(()),
        state => Err(format!("VM state is {state:?}, not Running")),
    }
}

/// An error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// Splits a complete HTTP/1.1 answer (the server closes the connection after it) into its
/// status and body.
fn parse_answer(answer: &[u8]) -> Result<(u16, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(answer).context("malformed answer")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if answer.is_empty() => {
            bail!("the server closed the connection without answering")
        }
        httparse::Status::Partial => bail!("the answer ended early"),
    };
    let status = resp.code.context("answer without a status")?;
    Ok((status, answer[head_len..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_split_into_status_and_body() {
        let (status, body) =
            parse_answer(b"HTTP/1.1 409 Conflict\r\nContent-Length: 6\r\n\r\n{\"a\":1}")
                .expect("parse");
        assert_eq!(status, 409);
        assert_eq!(body, b"{\"a\":1}");
        assert!(parse_answer(b"").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
