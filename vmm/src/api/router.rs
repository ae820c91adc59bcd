//! Routing: a method and a path (Cloud Hypervisor's `/api/v1/…` names) to one [`ApiRequest`]
//! variant, or the 404 / 405 / 400 to answer. Adding an endpoint is one variant, one row in
//! [`ROUTES`] and one arm in the handler.

use vireo_spec::api::{
    ReceiveMigrationConfig, RestoreConfig, SendMigrationConfig, VmSnapshotConfig,
};

use super::http::{HttpError, Status};

/// Every action the control API offers; one variant per endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// `PUT /api/v1/vm.snapshot`: save the VM to a directory.
    VmSnapshot(VmSnapshotConfig),
    /// `PUT /api/v1/vm.restore`: restore a VM from a snapshot (a `vireo` without a VM only).
    VmRestore(RestoreConfig),
    /// `PUT /api/v1/vm.send-migration`: start a live migration of this VM.
    VmSendMigration(SendMigrationConfig),
    /// `GET /api/v1/vm.migration`: the current or last migration's progress.
    VmMigration,
    /// `PUT /api/v1/vm.cancel-migration`: cancel the running migration.
    VmCancelMigration,
    /// `PUT /api/v1/vm.receive-migration`: receive a VM (a `vireo` without a VM only).
    VmReceiveMigration(ReceiveMigrationConfig),
}

/// The endpoint of a request: which row of [`ROUTES`] and how its body is read.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    /// An endpoint without arguments: the request itself.
    Plain(fn() -> ApiRequest),
    /// An endpoint whose JSON body is its own type (unknown fields refused), read by the
    /// function.
    Body(fn(&[u8]) -> Result<ApiRequest, HttpError>),
}

/// The endpoints: path, method, endpoint.
pub const ROUTES: &[(&str, &str, Endpoint)] = &[
    (
        "/api/v1/vmm.ping",
        "GET",
        Endpoint::Plain(|| ApiRequest::VmmPing),
    ),
    (
        "/api/v1/vm.info",
        "GET",
        Endpoint::Plain(|| ApiRequest::VmInfo),
    ),
    (
        "/api/v1/vm.counters",
        "GET",
        Endpoint::Plain(|| ApiRequest::VmCounters),
    ),
    (
        "/api/v1/vm.pause",
        "PUT",
        Endpoint::Plain(|| ApiRequest::VmPause),
    ),
    (
        "/api/v1/vm.resume",
        "PUT",
        Endpoint::Plain(|| ApiRequest::VmResume),
    ),
    (
        "/api/v1/vm.power-button",
        "PUT",
        Endpoint::Plain(|| ApiRequest::VmPowerButton),
    ),
    (
        "/api/v1/vm.shutdown",
        "PUT",
        Endpoint::Plain(|| ApiRequest::VmShutdown),
    ),
    (
        "/api/v1/vmm.shutdown",
        "PUT",
        Endpoint::Plain(|| ApiRequest::VmmShutdown),
    ),
    (
        "/api/v1/vm.snapshot",
        "PUT",
        Endpoint::Body(|b| parse_body(b).map(ApiRequest::VmSnapshot)),
    ),
    (
        "/api/v1/vm.restore",
        "PUT",
        Endpoint::Body(|b| parse_body(b).map(ApiRequest::VmRestore)),
    ),
    (
        "/api/v1/vm.send-migration",
        "PUT",
        Endpoint::Body(|b| parse_body(b).map(ApiRequest::VmSendMigration)),
    ),
    (
        "/api/v1/vm.migration",
        "GET",
        Endpoint::Plain(|| ApiRequest::VmMigration),
    ),
    (
        "/api/v1/vm.cancel-migration",
        "PUT",
        Endpoint::Plain(|| ApiRequest::VmCancelMigration),
    ),
    (
        "/api/v1/vm.receive-migration",
        "PUT",
        Endpoint::Body(|b| parse_body(b).map(ApiRequest::VmReceiveMigration)),
    ),
];

/// The request for `method` on `path` (a query string is ignored). An endpoint without
/// arguments accepts an empty body or any well-formed JSON (as Cloud Hypervisor's clients
/// send `{}`), which it ignores; anything else is a 400, so a client that meant to send
/// arguments learns they were not understood. Endpoints with a body (`vm.snapshot`,
/// `vm.restore`, `vm.send-migration`, `vm.receive-migration`) need it, with no unknown field.
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
        return match request {
            Endpoint::Plain(make) => {
                check_body(body)?;
                Ok(make())
            }
            Endpoint::Body(parse) => parse(body),
        };
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

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(body).map_err(|e| {
        HttpError::new(
            Status::BadRequest,
            printable(&format!("invalid request body: {e}")),
        )
    })
}

/// `s` cut to 100 characters, for error messages that quote the client.
fn printable(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 100 {
            out.push('…');
            break;
        }
        // A client's control characters (a CR or LF in a JSON key it sent) stay escaped, so
        // every reason is one line.
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_reachable_by_its_method_only() {
        for (path, method, endpoint) in ROUTES {
            let body: &[u8] = match *path {
                "/api/v1/vm.snapshot" => br#"{"destination_url": "file:///tmp/s"}"#,
                "/api/v1/vm.restore" => br#"{"source_url": "file:///tmp/s"}"#,
                "/api/v1/vm.send-migration" => br#"{"destination_url": "unix:/tmp/m"}"#,
                "/api/v1/vm.receive-migration" => br#"{"receiver_url": "unix:/tmp/m"}"#,
                _ => b"",
            };
            let got = route(method, path, body).expect("routes");
            if let Endpoint::Plain(make) = endpoint {
                assert_eq!(got, make(), "{method} {path}");
            }
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

    #[test]
    fn control_characters_a_client_sent_are_escaped_in_reasons() {
        let e = route("PUT", "/api/v1/vm.restore", b"{\"a\\rb\": 1}").expect_err("unknown field");
        assert!(!e.reason.contains(['\r', '\n']), "{}", e.reason);
        assert!(e.reason.contains("a\\rb"), "{}", e.reason);
    }

    #[test]
    fn migration_bodies_take_their_defaults() {
        let got = route(
            "PUT",
            "/api/v1/vm.send-migration",
            br#"{"destination_url":"tcp:10.0.0.2:6000","downtime_ms":50}"#,
        )
        .expect("route");
        let mut want = SendMigrationConfig::to("tcp:10.0.0.2:6000");
        want.downtime_ms = 50;
        assert_eq!(got, ApiRequest::VmSendMigration(want));
        let e = route(
            "PUT",
            "/api/v1/vm.send-migration",
            br#"{"destination_url":"u","speed":1}"#,
        )
        .expect_err("unknown field");
        assert_eq!(e.status, Status::BadRequest);
    }

    #[test]
    fn snapshot_and_restore_bodies_are_typed() {
        assert_eq!(
            route(
                "PUT",
                "/api/v1/vm.snapshot",
                br#"{"destination_url":"file:///d"}"#
            ),
            Ok(ApiRequest::VmSnapshot(VmSnapshotConfig {
                destination_url: "file:///d".into()
            }))
        );
        assert_eq!(
            route(
                "PUT",
                "/api/v1/vm.restore",
                br#"{"source_url":"file:///d","prefault":true}"#
            ),
            Ok(ApiRequest::VmRestore(RestoreConfig {
                source_url: "file:///d".into(),
                prefault: true,
                resume: false,
            }))
        );
        for bad in [
            &b""[..],
            b"{}",
            b"[1]",
            br#"{"destination_url":"file:///d","x":1}"#,
        ] {
            let e = route("PUT", "/api/v1/vm.snapshot", bad).expect_err("bad body");
            assert_eq!(e.status, Status::BadRequest);
            assert!(e.reason.starts_with("invalid request body"), "{}", e.reason);
        }
    }
}
