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
    /// Start, stop, restart, pause or unpause a VirtualMachine.
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
    /// start, stop, restart, pause or unpause.
    #[arg(value_enum)]
    pub action: VmAction,
    /// VirtualMachine name.
    pub name: String,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
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
                assert_eq!(a.action, VmAction::Restart);
                assert_eq!(a.name, "web");
                assert_eq!(a.namespace.as_deref(), Some("prod"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(Cli::try_parse_from(["vireo-controller", "vm", "explode", "web"]).is_err());
    }
}
