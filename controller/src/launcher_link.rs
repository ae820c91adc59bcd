//! Reaching a running launcher through the apiserver: the pod's `portforward` subresource.
//!
//! ```text
//! controller / vireo vm …  ──portforward (RBAC: get+create pods/portforward)──▶ launcher pod
//!                                                         127.0.0.1:8101 ─▶ api.sock    (control API)
//!                                                         127.0.0.1:8102 ─▶ serial.sock (console)
//!                                                         127.0.0.1:5900    RFB server  (VNC)
//! ```
//!
//! The launcher binds these ports on the pod's loopback only (`vireo launch --forward`, the
//! spec's `vnc.listen`), so nothing on the pod network — another launcher included — can reach
//! them; the only way in is a port-forward the apiserver authorized. No node daemon is needed,
//! the launcher needs no Kubernetes credentials, and a request costs one WebSocket stream, not
//! a process in the container (as an `exec` would).
//!
//! [`api_call`] sends one HTTP/1.1 request to the control API over such a stream, with a
//! deadline, and reads at most [`MAX_ANSWER_BYTES`] of answer.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Portforwarder};
use tokio::io::DuplexStream;
use vireo_spec::api::{ApiErrorBody, ApiVmState, VmInfo};

use crate::error::{Error, Result};

/// The launcher's pod-local TCP port for its control API (`--forward 127.0.0.1:8101=api.sock`).
pub const API_PORT: u16 = 8101;
/// The launcher's pod-local TCP port for its serial console (`--forward …:8102=serial.sock`).
pub const SERIAL_PORT: u16 = 8102;
/// The pod-local TCP port of the VM's RFB (VNC) server.
pub const VNC_PORT: u16 = 5900;

/// Largest control-API answer read (`vm.info` is a few KiB).
pub const MAX_ANSWER_BYTES: usize = 4 << 20;
/// How long one control-API call may take, port-forward set-up included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a port-forward to `port` of pod `pod`: the byte stream and the forwarder that must
/// outlive it (dropping the stream ends the forward).
pub async fn open(pods: &Api<Pod>, pod: &str, port: u16) -> Result<(DuplexStream, Portforwarder)> {
    let mut forwarder = pods.portforward(pod, &[port]).await?;
    let stream = forwarder
        .take_stream(port)
        .ok_or_else(|| Error::Launcher(format!("pod {pod}: no stream for port {port}")))?;
    Ok((stream, forwarder))
}

/// Sends `method path` (no body) to the control API of the launcher in `pod` and returns the
/// body of a 2xx answer. Fails with [`Error::Launcher`] when the launcher cannot be reached,
/// does not answer within [`CALL_TIMEOUT`], answers more than [`MAX_ANSWER_BYTES`], or answers
/// an error (carrying the API's reason).
pub async fn api_call(pods: &Api<Pod>, pod: &str, method: &str, path: &str) -> Result<Bytes> {
    let fail =
        |e: &dyn std::fmt::Display| Error::Launcher(format!("pod {pod}: {method} {path}: {e}"));
    let exchange = async {
        let (stream, forwarder) = open(pods, pod, API_PORT).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(&e))?;
        let driver = tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(&e))?;
        let answer = sender.send_request(req).await.map_err(|e| fail(&e))?;
        let status = answer.status();
        let bytes = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| fail(&e))?
            .to_bytes();
        driver.abort();
        forwarder.abort();
        if !status.is_success() {
            let reason = ApiErrorBody::reason_of(&bytes);
            return Err(fail(&format!("{}: {reason}", status.as_u16())));
        }
        Ok(bytes)
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| fail(&format!("no answer within {CALL_TIMEOUT:?}")))?
}

/// The VM's `vm.info` (state, memory, devices) from the launcher in `pod`.
pub async fn vm_info(pods: &Api<Pod>, pod: &str) -> Result<VmInfo> {
    let bytes = api_call(pods, pod, "GET", "/api/v1/vm.info").await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Launcher(format!("pod {pod}: vm.info is unreadable: {e}")))
}

/// Pauses (`true`) or resumes (`false`) the VM in `pod`; on success the VM is in the returned
/// state (the API answers once every vCPU has stopped or been released).
pub async fn set_paused(pods: &Api<Pod>, pod: &str, paused: bool) -> Result<ApiVmState> {
    let (path, state) = if paused {
        ("/api/v1/vm.pause", ApiVmState::Paused)
    } else {
        ("/api/v1/vm.resume", ApiVmState::Running)
    };
    api_call(pods, pod, "PUT", path).await?;
    Ok(state)
}
