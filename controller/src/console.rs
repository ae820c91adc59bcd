//! `vireo vm console NAME` and `vireo vm vnc NAME`: a VM's serial console and VNC display,
//! reached with nothing but a kubeconfig, through port-forwards to its launcher pod
//! ([`crate::launcher_link`]; RBAC: `get` on VMIs, `get` and `create` on `pods/portforward`).
//!
//! - The console joins the terminal to the guest's first serial port, as `virtctl console`
//!   does: raw mode on a terminal, `Ctrl-]` to leave. When standard input is not a terminal it
//!   is sent as it is, and once it ends the console prints what the guest says for one more
//!   second ([`LINGER`]) and exits, so `echo cmd | vireo vm console NAME` works in scripts.
//!   `kubectl logs` keeps showing the guest's output meanwhile (the launcher copies it to its
//!   stdout too).
//! - `vnc` listens locally (default `127.0.0.1:5900`; port 0 picks one) and forwards every
//!   viewer that connects through its own port-forward, so any number of viewers can watch at
//!   once (`virtctl vnc` serves one). A viewer that stalls stalls only its own forward.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::crd::vmi::{VirtualMachineInstance, VmiPhase};
use crate::error::{optional, Error, Result};
use crate::launcher_link::{self, SERIAL_PORT, VNC_PORT};
use crate::pod::launcher_pod_name;

/// The byte that ends an interactive console session (`Ctrl-]`, as telnet and virtctl).
pub const ESCAPE: u8 = 0x1d;
/// How long the console keeps printing after a non-terminal standard input ended.
pub const LINGER: Duration = Duration::from_secs(1);

/// The launcher pod of running VMI `name`, after checking `usable` on its spec (which names
/// the field that would make the device exist when it does not).
async fn running_pod(
    client: &Client,
    ns: &str,
    name: &str,
    usable: impl Fn(&VirtualMachineInstance) -> Result<()>,
) -> Result<String> {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let vmi = optional(vmis.get(name).await)?
        .ok_or_else(|| Error::Request(format!("VM {ns}/{name} has no running instance")))?;
    usable(&vmi)?;
    let status = vmi.status.unwrap_or_default();
    if status.phase != Some(VmiPhase::Running) {
        return Err(Error::Request(format!(
            "VM {ns}/{name} is not running (phase {:?})",
            status.phase.unwrap_or_default()
        )));
    }
    Ok(status
        .launcher_pod
        .unwrap_or_else(|| launcher_pod_name(name)))
}

/// Joins this process's standard input and output to VM `name`'s serial console until
/// `Ctrl-]` (on a terminal), the end of standard input (plus [`LINGER`]), or the launcher
/// closing the console.
pub async fn console(client: Client, ns: &str, name: &str) -> Result<()> {
    let pod = running_pod(&client, ns, name, |vmi| {
        if vmi.spec.domain.devices.autoattach_serial_console == Some(false) {
            return Err(Error::Request(format!(
                "VM {ns}/{name} has no serial console (autoattachSerialConsole: false)"
            )));
        }
        Ok(())
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let (stream, forwarder) = launcher_link::open(&pods, &pod, SERIAL_PORT).await?;
    let tty = std::io::stdin().is_terminal();
    let _raw = if tty {
        eprint!("Connected to {name}'s console. Press Ctrl-] to leave.\r\n");
        Some(RawMode::enter()?)
    } else {
        None
    };
    let (mut from_vm, mut to_vm) = tokio::io::split(stream);
    let output = async {
        let mut out = tokio::io::stdout();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from_vm
                .read(&mut buf)
                .await
                .map_err(|e| Error::Io("reading the console".into(), e))?;
            if n == 0 {
                return Ok::<_, Error>(());
            }
            out.write_all(&buf[..n])
                .await
                .map_err(|e| Error::Io("writing standard output".into(), e))?;
            out.flush()
                .await
                .map_err(|e| Error::Io("writing standard output".into(), e))?;
        }
    };
    let input = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = stdin
                .read(&mut buf)
                .await
                .map_err(|e| Error::Io("reading standard input".into(), e))?;
            if n == 0 {
                tokio::time::sleep(LINGER).await;
                return Ok::<_, Error>(());
            }
            let chunk = &buf[..n];
            let (chunk, leave) = match chunk.iter().position(|&b| tty && b == ESCAPE) {
                Some(i) => (&chunk[..i], true),
                None => (chunk, false),
            };
            to_vm
                .write_all(chunk)
                .await
                .map_err(|e| Error::Io("writing to the console".into(), e))?;
            if leave {
                return Ok(());
            }
        }
    };
    let r = tokio::select! {
        r = output => r,
        r = input => r,
    };
    forwarder.abort();
    if tty {
        eprint!("\r\n");
    }
    r
}

/// Serves VM `name`'s VNC display on `listen` (any number of viewers, each through its own
/// port-forward) until interrupted. `on_listening` gets the bound address once viewers can
/// connect.
pub async fn vnc(
    client: Client,
    ns: &str,
    name: &str,
    listen: SocketAddr,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<()> {
    let pod = running_pod(&client, ns, name, |vmi| {
        if vmi.spec.domain.devices.autoattach_graphics_device != Some(true) {
            return Err(Error::Request(format!(
                "VM {ns}/{name} has no VNC display (set \
                 spec.domain.devices.autoattachGraphicsDevice: true)"
            )));
        }
        Ok(())
    })
    .await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Io(format!("cannot listen on {listen}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Io("listener address".into(), e))?;
    on_listening(bound);
    let pods: Api<Pod> = Api::namespaced(client, ns);
    loop {
        let (mut viewer, peer) = listener
            .accept()
            .await
            .map_err(|e| Error::Io(format!("accepting on {bound}"), e))?;
        let (pods, pod) = (pods.clone(), pod.clone());
        tokio::spawn(async move {
            match launcher_link::open(&pods, &pod, VNC_PORT).await {
                Ok((mut stream, forwarder)) => {
                    tracing::info!(%peer, "viewer connected");
                    let r = tokio::io::copy_bidirectional(&mut viewer, &mut stream).await;
                    forwarder.abort();
                    tracing::info!(%peer, ended = ?r.err(), "viewer left");
                }
                Err(e) => tracing::warn!(%peer, error = %e, "cannot reach the VM's display"),
            }
        });
    }
}

/// The terminal in raw mode (no echo, no line editing, no signals from keys) until dropped.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> Result<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let term = |e: nix::Error| Error::Io("terminal mode".into(), e.into());
        let saved = tcgetattr(&stdin).map_err(term)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).map_err(term)?;
        Ok(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.0);
    }
}
