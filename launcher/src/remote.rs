//! `vireo remote`: a client of the control API, in the manner of Cloud Hypervisor's
//! `ch-remote`. It sends one request over the unix socket, prints a JSON answer on stdout
//! (nothing for 204), and turns an error status into an error carrying the server's reason.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vireo_spec::api::ApiErrorBody;

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
    let reason = serde_json::from_slice::<ApiErrorBody>(&body)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
    bail!("{method} {path}: {status}: {reason}")
}

/// Sends `method path` with `body` (JSON, or empty) and returns the status and body of the
/// answer.
pub fn request(socket: &Path, method: &str, path: &str, body: &str) -> Result<(u16, Vec<u8>)> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    // vm.shutdown answers once the VM has stopped, and a snapshot or an eager restore of a
    // large guest once its memory is written or read.
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
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
    stream
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut answer)
        .context("cannot read the answer")?;
    parse_answer(&answer)
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
