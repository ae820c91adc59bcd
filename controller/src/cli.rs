//! Command line of the `vireo-controller` binary (clap definitions only; `main.rs` dispatches).

use clap::{Args, Parser, Subcommand};

use crate::pod::LauncherConfig;
use crate::reconcile::ControllerConfig;
use crate::requests::VmAction;

/// Vireo's Kubernetes controller.
#[derive(Debug, Parser)]
#[command(name = "vireo-controller", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (kubeconfig from KUBECONFIG, ~/.kube/config or the in-cluster account).
    Run(RunArgs),
    /// Print every CRD as multi-document YAML (`vireo-controller crd | kubectl apply -f -`).
    Crd,
    /// Act on a VirtualMachine: start, stop, restart, pause, unpause, console, vnc.
    Vm(VmArgs),
}

/// Flags of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Only watch this namespace (default: all namespaces).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Name of the VMRuntime singleton.
    #[arg(long, default_value = crate::crd::vmruntime::DEFAULT_NAME)]
    pub runtime_name: String,
    /// Namespace for preflight Jobs.
    #[arg(long, default_value = "vireo-system")]
    pub system_namespace: String,
    /// Image of preflight Jobs, which run `vireo preflight` (default: the launcher image).
    #[arg(long)]
    pub preflight_image: Option<String>,
    /// Launcher image (contains the `vireo` binary).
    #[arg(long, default_value = "ghcr.io/vireo/launcher:latest")]
    pub launcher_image: String,
    /// Memory the VMM needs beyond guest RAM, added to the pod's memory request (MiB).
    #[arg(long, default_value_t = 64)]
    pub vmm_overhead_mib: u64,
    /// Run launchers privileged (clusters without a /dev/kvm device plugin).
    #[arg(long)]
    pub privileged_launcher: bool,
}

impl RunArgs {
    /// The controller configuration these flags describe.
    pub fn config(&self) -> ControllerConfig {
        ControllerConfig {
            namespace: self.namespace.clone(),
            runtime_name: self.runtime_name.clone(),
            system_namespace: self.system_namespace.clone(),
            preflight_image: self
                .preflight_image
                .clone()
                .unwrap_or_else(|| self.launcher_image.clone()),
            launcher: LauncherConfig {
                image: self.launcher_image.clone(),
                overhead_mib: self.vmm_overhead_mib,
                privileged: self.privileged_launcher,
            },
        }
    }
}

/// Arguments of `vm`.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: VmCommand,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

/// `vm` subcommands.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Run the VM.
    Start(VmName),
    /// Stop the VM.
    Stop(VmName),
    /// Stop and start the VM.
    Restart(VmName),
    /// Pause the guest's vCPUs (the VMI shows Paused once they have stopped).
    Pause(VmName),
    /// Resume a paused guest.
    Unpause(VmName),
    /// Join this terminal to the VM's serial console (Ctrl-] leaves).
    Console(VmName),
    /// Serve the VM's VNC display on a local address, for any number of viewers.
    Vnc(VncArgs),
}

impl VmCommand {
    /// The VM named, and the state request this is, if it is one.
    pub fn request(&self) -> (&str, Option<VmAction>) {
        match self {
            Self::Start(v) => (&v.name, Some(VmAction::Start)),
            Self::Stop(v) => (&v.name, Some(VmAction::Stop)),
            Self::Restart(v) => (&v.name, Some(VmAction::Restart)),
            Self::Pause(v) => (&v.name, Some(VmAction::Pause)),
            Self::Unpause(v) => (&v.name, Some(VmAction::Unpause)),
            Self::Console(v) => (&v.name, None),
            Self::Vnc(v) => (&v.vm.name, None),
        }
    }
}

/// The VM a `vm` subcommand acts on.
#[derive(Debug, Args)]
pub struct VmName {
    /// VirtualMachine name.
    pub name: String,
}

/// Arguments of `vm vnc`.
#[derive(Debug, Args)]
pub struct VncArgs {
    /// The VM.
    #[command(flatten)]
    pub vm: VmName,
    /// Local address viewers connect to (port 0 picks a free one, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:5900")]
    pub listen: std::net::SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_request() {
        let cli = Cli::try_parse_from(["vireo-controller", "vm", "restart", "web", "-n", "prod"])
            .expect("parse");
        match cli.command {
            Command::Vm(a) => {
                assert_eq!(a.command.request(), ("web", Some(VmAction::Restart)));
                assert_eq!(a.namespace.as_deref(), Some("prod"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(Cli::try_parse_from(["vireo-controller", "vm", "explode", "web"]).is_err());
        let cli = Cli::try_parse_from(["vireo-controller", "vm", "vnc", "web", "--listen", ":1"]);
        assert!(cli.is_err(), "a listen address needs a host");
        let cli = Cli::try_parse_from([
            "vireo-controller",
            "vm",
            "vnc",
            "-n",
            "a",
            "web",
            "--listen",
            "127.0.0.1:0",
        ])
        .expect("parse");
        match cli.command {
            Command::Vm(a) => match a.command {
                VmCommand::Vnc(v) => {
                    assert_eq!(v.vm.name, "web");
                    assert_eq!(v.listen.port(), 0);
                    assert_eq!(a.namespace.as_deref(), Some("a"));
                }
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }
}
