//! HTTP/1.1 framing for the control API: turns the bytes a client sent so far into a typed
//! request (through [`crate::api::router`]), "need more bytes", or a typed [`HttpError`], and
//! writes answers. Parsing is `httparse`'s; this module adds the limits.
//!
//! Limits: the request line and headers at most [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] headers,
//! a body at most [`MAX_BODY_BYTES`] (413 beyond either), bodies framed by `Content-Length` only
//! (`Transfer-Encoding` is refused with 400). Every answer closes the connection.
//! [`decode`] is pure (no I/O), never panics, and is what the `api_request` fuzz target runs.

use std::fmt;
use std::io::{self, Write};

use super::router::{self, ApiRequest};

/// Largest request line plus headers accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most headers accepted in one request.
pub const MAX_HEADERS: usize = 64;

/// The statuses the control API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200: a JSON body follows.
    Ok,
    /// 204: done, no body.
    NoContent,
    /// 400: malformed request or body.
    BadRequest,
    /// 404: no such endpoint.
    NotFound,
    /// 405: the endpoint exists but takes another method.
    MethodNotAllowed,
    /// 408: the client did not send its request in time.
    RequestTimeout,
    /// 409: the VM's state forbids the action.
    Conflict,
    /// 413: headers or body over the limits.
    PayloadTooLarge,
    /// 500: the VMM failed to carry out a valid request.
    InternalServerError,
    /// 503: too many connections at once.
    ServiceUnavailable,
}

impl Status {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::NoContent => 204,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::Conflict => 409,
            Status::PayloadTooLarge => 413,
            Status::InternalServerError => 500,
            Status::ServiceUnavailable => 503,
        }
    }

    /// The reason phrase of the status line.
    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::NoContent => "No Content",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::Conflict => "Conflict",
            Status::PayloadTooLarge => "Payload Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::ServiceUnavailable => "Service Unavailable",
        }
    }
}

/// A request the API refuses or could not carry out: a status and a one-line reason, sent as
/// `{"error": reason}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// The status to answer with.
    pub status: Status,
    /// What went wrong, one line.
    pub reason: String,
}

impl HttpError {
    /// An error with `status` and `reason`.
    pub fn new(status: Status, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.code(), self.reason)
    }
}

impl std::error::Error for HttpError {}

/// Decodes the bytes received so far on a connection: `Ok(Some(request))` once the head and
/// the whole body are in, `Ok(None)` while more bytes are needed (and the limits allow them),
/// or the error to answer with. Bytes after the body are ignored (one request per connection).
pub fn decode(buf: &[u8]) -> Result<Option<ApiRequest>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(too_large_head());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(
                Status::PayloadTooLarge,
                format!("more than {MAX_HEADERS} headers"),
            ))
        }
        Err(e) => {
            return Err(HttpError::new(
                Status::BadRequest,
                format!("malformed request: {e}"),
            ))
        }
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(too_large_head());
    }
    let mut content_length: Option<usize> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::new(
                Status::BadRequest,
                "Transfer-Encoding is not supported; send a Content-Length",
            ));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HttpError::new(
                    Status::BadRequest,
                    "conflicting Content-Length headers",
                ));
            }
            content_length = Some(n);
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY_BYTES {
        return Err(HttpError::new(
            Status::PayloadTooLarge,
            format!("request body over {MAX_BODY_BYTES} bytes"),
        ));
    }
    let Some(body) = buf.get(head_len..head_len + body_len) else {
        return Ok(None);
    };
    // httparse guarantees both once the head is complete.
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Err(HttpError::new(Status::BadRequest, "malformed request line"));
    };
    router::route(method, path, body).map(Some)
}

fn too_large_head() -> HttpError {
    HttpError::new(
        Status::PayloadTooLarge,
        format!("request line and headers over {MAX_HEAD_BYTES} bytes"),
    )
}

fn parse_content_length(value: &[u8]) -> Result<usize, HttpError> {
    let bad = || HttpError::new(Status::BadRequest, "invalid Content-Length");
    let text = std::str::from_utf8(value).map_err(|_| bad())?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // Digits only: a parse failure is an overflow, i.e. far over the limit.
    Ok(text.parse::<usize>().unwrap_or(usize::MAX))
}

/// A complete answer: a status and, for 200 and errors, a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status.
    pub status: Status,
    /// The JSON body (empty for 204).
    pub body: Vec<u8>,
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Self {
        Self {
            status: Status::NoContent,
            body: Vec::new(),
        }
    }

    /// 200 with `body` serialized as JSON.
    pub fn json<T: serde::Serialize>(body: &T) -> Self {
        match serde_json::to_vec(body) {
            Ok(body) => Self {
                status: Status::Ok,
                body,
            },
            Err(e) => Self::error(&HttpError::new(
                Status::InternalServerError,
                format!("cannot encode the answer: {e}"),
            )),
        }
    }

    /// `error`'s status with `{"error": reason}`.
    pub fn error(error: &HttpError) -> Self {
        let body = vireo_spec::api::ApiErrorBody {
            error: error.reason.clone(),
        };
        Self {
            status: error.status,
            // A struct of one string always serializes.
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }

    /// The bytes on the wire: status line, headers (`Connection: close`), body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: vireo\r\nConnection: close\r\n",
            self.status.code(),
            self.status.reason()
        )
        .into_bytes();
        if self.status != Status::NoContent {
            out.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    self.body.len() + 1
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(b"\r\n");
        if self.status != Status::NoContent {
            out.extend_from_slice(&self.body);
            out.push(b'\n');
        }
        out
    }

    /// Writes the answer to `w`.
    pub fn write_to(&self, mut w: impl Write) -> io::Result<()> {
        w.write_all(&self.to_bytes())?;
        w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(raw: &[u8]) -> Status {
        decode(raw).expect_err("refused").status
    }

    #[test]
    fn requests_decode_once_complete() {
        let raw = b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n";
        for n in 0..raw.len() {
            assert_eq!(decode(&raw[..n]), Ok(None), "prefix of {n} bytes");
        }
        assert_eq!(decode(raw), Ok(Some(ApiRequest::VmmPing)));
        let with_body = b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(decode(&with_body[..with_body.len() - 1]), Ok(None));
        assert_eq!(decode(with_body), Ok(Some(ApiRequest::VmPause)));
    }

    #[test]
    fn malformed_and_oversized_requests_get_their_status() {
        assert_eq!(status_of(b"garbage garbage\r\n\r\n"), Status::BadRequest);
        assert_eq!(
            status_of(b"\x00\x01\x02 / HTTP/1.1\r\n\r\n"),
            Status::BadRequest
        );
        assert_eq!(
            status_of(b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Status::BadRequest
        );
        assert_eq!(
            status_of(
                b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
            ),
            Status::BadRequest
        );
        assert_eq!(
            status_of(b"PUT /api/v1/vm.pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Status::BadRequest
        );
        assert_eq!(
            status_of(b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n"),
            Status::PayloadTooLarge
        );
        assert_eq!(
            status_of(
                b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"
            ),
            Status::PayloadTooLarge
        );
        let mut long = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(status_of(&long), Status::PayloadTooLarge);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET /api/v1/vmm.ping HTTP/1.1\r\n{many}\r\n");
        assert_eq!(status_of(many.as_bytes()), Status::PayloadTooLarge);
    }

    #[test]
    fn answers_carry_status_length_and_one_line_json() {
        let text = String::from_utf8(
            Response::error(&HttpError::new(Status::Conflict, "cannot resume")).to_bytes(),
        )
        .expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 409 Conflict\r\n"), "{text}");
        assert!(text.contains("Content-Length: 26\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n{\"error\":\"cannot resume\"}\n"),
            "{text}"
        );
        let empty = String::from_utf8(Response::no_content().to_bytes()).expect("utf-8");
        assert_eq!(
            empty,
            "HTTP/1.1 204 No Content\r\nServer: vireo\r\nConnection: close\r\n\r\n"
        );
    }
}
