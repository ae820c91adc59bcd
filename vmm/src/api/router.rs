//! Routing: a method and a path (Cloud Hypervisor's `/api/v1/…` names) to one [`ApiRequest`]
//! variant, or the 404 / 405 / 400 to answer. Adding an endpoint is one variant, one row in
//! [`ROUTES`] and one arm in the handler.

use super::http::{HttpError, Status};

/// Every action the control API offers; one variant per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /api/v1/vmm.ping`: the VMM's version and pid.
    VmmPing,
    /// `GET /api/v1/vm.info`: state, config, devices, memory.
    VmInfo,
    /// `GET /api/v1/vm.counters`: device and console counters.
    VmCounters,
    /// `PUT /api/v1/vm.pause`: Running → Paused.
    VmPause,
    /// `PUT /api/v1/vm.resume`: Paused → Running.
    VmResume,
    /// `PUT /api/v1/vm.power-button`: press the guest's ACPI power button.
    VmPowerButton,
    /// `PUT /api/v1/vm.shutdown`: stop the VM at once (a forced stop).
    VmShutdown,
    /// `PUT /api/v1/vmm.shutdown`: stop the VM if it runs; the `vireo` process then exits.
    VmmShutdown,
}

/// The endpoints: path, method, request.
pub const ROUTES: &[(&str, &str, ApiRequest)] = &[
    ("/api/v1/vmm.ping", "GET", ApiRequest::VmmPing),
    ("/api/v1/vm.info", "GET", ApiRequest::VmInfo),
    ("/api/v1/vm.counters", "GET", ApiRequest::VmCounters),
    ("/api/v1/vm.pause", "PUT", ApiRequest::VmPause),
    ("/api/v1/vm.resume", "PUT", ApiRequest::VmResume),
    ("/api/v1/vm.power-button", "PUT", ApiRequest::VmPowerButton),
    ("/api/v1/vm.shutdown", "PUT", ApiRequest::VmShutdown),
    ("/api/v1/vmm.shutdown", "PUT", ApiRequest::VmmShutdown),
];

/// The request for `method` on `path` (a query string is ignored). None of these endpoints
/// takes a body: an empty one or any well-formed JSON (as Cloud Hypervisor's clients send
/// `{}`) is accepted and ignored; anything else is a 400, so a client that meant to send
/// arguments learns they were not understood.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, HttpError> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let mut allowed = None;
    for (p, m, request) in ROUTES {
        if *p != path {
            continue;
        }
        if *m != method {
            allowed = Some(*m);
            continue;
        }
        check_body(body)?;
        return Ok(*request);
    }
    Err(match allowed {
        Some(m) => HttpError::new(
            Status::MethodNotAllowed,
            format!("{path} takes {m}, not {}", printable(method)),
        ),
        None => HttpError::new(Status::NotFound, format!("no endpoint {}", printable(path))),
    })
}

fn check_body(body: &[u8]) -> Result<(), HttpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| HttpError::new(Status::BadRequest, format!("the body is not JSON: {e}")))
}

/// `s` cut to 100 characters, for error messages that quote the client.
fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(100).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_reachable_by_its_method_only() {
        for (path, method, request) in ROUTES {
            assert_eq!(route(method, path, b""), Ok(*request), "{method} {path}");
            let other = if *method == "GET" { "PUT" } else { "GET" };
            assert_eq!(
                route(other, path, b"").map_err(|e| e.status),
                Err(Status::MethodNotAllowed),
                "{other} {path}"
            );
        }
    }

    #[test]
    fn unknown_paths_bodies_and_queries() {
        let err = route("GET", "/api/v1/vm.nothing", b"").expect_err("unknown");
        assert_eq!(err.status, Status::NotFound);
        assert_eq!(err.reason, "no endpoint /api/v1/vm.nothing");
        assert_eq!(
            route("GET", "/api/v1/vm.info?x=1", b""),
            Ok(ApiRequest::VmInfo)
        );
        assert_eq!(
            route("PUT", "/api/v1/vm.pause", b"{}"),
            Ok(ApiRequest::VmPause)
        );
        assert_eq!(
            route("PUT", "/api/v1/vm.pause", b" \r\n"),
            Ok(ApiRequest::VmPause)
        );
        let err = route("PUT", "/api/v1/vm.pause", b"pause!").expect_err("not JSON");
        assert_eq!(err.status, Status::BadRequest);
        assert!(
            err.reason.starts_with("the body is not JSON"),
            "{}",
            err.reason
        );
        let long = format!("/{}", "x".repeat(500));
        assert!(route("GET", &long, b"").expect_err("404").reason.len() < 150);
    }
}
