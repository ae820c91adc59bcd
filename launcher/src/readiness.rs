//! `GET /readyz` of `vireo launch --ready-listen ADDR` (served by [`http_endpoint`]): the
//! launcher pod's readiness endpoint, for the kubelet's `httpGet` probe.
//!
//! It answers `200 ready` while the VM behind the launch spec's control API socket is
//! `Running`, and `503` with the reason otherwise (not built yet, paused, stopping, between
//! the boots of a reboot in place) — the same check as `vireo probe` ([`remote::probe`]), but
//! without a process per probe: an exec probe every second costs the node a container exec
//! per VM per second, which slowed the start of later pods on a busy node.
//!
//! [`http_endpoint`]: crate::http_endpoint

use std::path::Path;

use crate::http_endpoint::Reply;
use crate::remote;

/// The answer to `GET /readyz` for the VM behind `api_socket`.
pub fn readyz(api_socket: &Path) -> Reply {
    match remote::probe(api_socket) {
        Ok(()) => Reply::text("200 OK", "ready\n"),
        Err(why) => Reply::text("503 Service Unavailable", format!("not ready: {why}\n")),
    }
}
