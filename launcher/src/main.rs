//! `vireo`: runs one virtual machine per process.
//!
//! - `vireo run --kernel PATH …` builds a VM from flags (local use);
//! - `vireo launch --spec FILE` builds it from a JSON launch spec (pods);
//! - `vireo vm start|stop|restart|pause|unpause NAME` asks the Kubernetes
//!   controller to act on a VirtualMachine (through `vireo-controller`);
//! - `vireo restore --source DIR` restores a snapshot and runs it; `vireo run --api-socket
//!   PATH` without `--kernel` waits for a `vm.restore` through the API;
//! - `vireo receive --listen URL` receives a VM by live migration and runs it;
//! - `vireo remote --api-socket PATH ACTION` talks to a running vireo's control API;
//! - `vireo probe --api-socket PATH` exits 0 iff that VM is Running (a readiness probe);
//!   `vireo launch --ready-listen ADDR` serves the same check as `GET /readyz`, and
//!   `--metrics-listen ADDR` Prometheus metrics as `GET /metrics`;
//! - `vireo launch --forward LISTEN=UNIX_PATH` relays a TCP port to a unix socket (the
//!   control API, the serial console) for `kubectl port-forward`;
//! - `vireo preflight` boots the built-in test guest to prove this node can run VMs.
//!
//! Logs go to stderr through `tracing` (filter with `VIREO_LOG`, default
//! `info`); the guest's serial console owns stdout. The exit status says how
//! the VM ended: see [`exit_code`]. `vireo run`, `launch` and `preflight` also say it in one
//! line in the container's termination-message file: see [`termination`].

mod cli;
mod exit_code;
mod forward;
mod http_endpoint;
mod kube;
mod logging;
mod metrics;
mod preflight;
mod readiness;
mod remote;
mod run;
mod tcp_service;
mod termination;

use std::process::ExitCode;

use clap::Parser;
use vireo_spec::ExitStatus;

use cli::{Cli, Command};

/// How a command ended.
enum Ending {
    /// A VM (or the wait for one) ended with this status.
    Status(ExitStatus),
    /// A command with its own report line, which is also the termination message.
    Reported(ExitStatus, String),
    /// A command that delegates or talks to another process, with that process's code.
    Code(ExitCode),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cli::report_usage_error(e),
    };
    logging::init();
    // The commands a launcher container runs say how they ended in its termination message.
    let tells_kubernetes = matches!(
        cli.command,
        Command::Run(_) | Command::Launch(_) | Command::Preflight(_)
    );
    let result = match cli.command {
        Command::Run(args) => args
            .into_plan()
            .and_then(|(plan, timeout)| match plan {
                cli::RunPlan::Boot(config) => run::run_vm(*config, timeout),
                cli::RunPlan::AwaitRestore(socket) => run::await_restore(&socket, timeout),
            })
            .map(Ending::Status),
        Command::Restore(args) => run::restore_vm(args).map(Ending::Status),
        Command::Receive(args) => run::receive_vm(args).map(Ending::Status),
        Command::Launch(args) => launch(&args).map(Ending::Status),
        Command::Preflight(args) => {
            let report = preflight::run(args.timeout);
            Ok(Ending::Reported(report.status, report.line))
        }
        Command::Vm(args) => kube::delegate(&args.args).map(Ending::Code),
        Command::Remote(args) => remote::run(&args.api_socket, args.action).map(Ending::Code),
        Command::Probe(args) => Ok(Ending::Code(match remote::probe(&args.api_socket) {
            Ok(()) => ExitCode::SUCCESS,
            Err(why) => {
                logging::error_line(&format!("vireo probe: not ready: {why}"));
                ExitCode::FAILURE
            }
        })),
    };
    let (status, message) = match result {
        Ok(Ending::Code(code)) => return code,
        Ok(Ending::Status(status)) => (status, termination::for_status(status)),
        Ok(Ending::Reported(status, line)) => (status, line),
        Err(e) => {
            let text = render_error(&e);
            logging::error_line(&format!("vireo: error: {text}"));
            (ExitStatus::VmmError, termination::for_error(&text))
        }
    };
    if tells_kubernetes {
        termination::write(&message);
    }
    exit_code::code(status)
}

/// `vireo launch`: runs the launch spec's VM, or refuses a live-migration target role.
fn launch(args: &cli::LaunchArgs) -> anyhow::Result<ExitStatus> {
    match run::migration_role() {
        Err(e) => Err(e),
        Ok(Some(run::MigrationRole::Target)) => {
            logging::error_line(&format!(
                "vireo: error: {}",
                ExitStatus::MigrationTargetUnsupported.description()
            ));
            logging::error_line(
                "vireo: this launcher was started with VIREO_MIGRATION_ROLE=target; it does \
                     not boot a second copy of the VM on the same disks",
            );
            Ok(ExitStatus::MigrationTargetUnsupported)
        }
        Ok(None) => {
            let config = run::load_spec(&args.spec)?;
            // Both HTTP listeners answer both paths (`/readyz`, `/metrics`).
            let listeners: Vec<_> = [
                ("--ready-listen", "readiness probes", args.ready_listen),
                ("--metrics-listen", "metrics scrapes", args.metrics_listen),
            ]
            .into_iter()
            .filter_map(|(flag, purpose, addr)| Some((flag, purpose, addr?)))
            .collect();
            if let Some((flag, _, _)) = listeners.first() {
                let Some(api_socket) = config.api_socket.clone() else {
                    anyhow::bail!(
                        "{flag} needs the launch spec's api_socket (the endpoint asks the \
                         control API for the VM's state)"
                    );
                };
                let routes = std::sync::Arc::new(http_endpoint::Routes {
                    api_socket,
                    identity: metrics::Identity::from_env(),
                });
                for (_, purpose, addr) in listeners {
                    http_endpoint::serve(addr, purpose, routes.clone())?;
                }
            }
            for fwd in &args.forwards {
                forward::start(fwd)?;
            }
            run::launch_vm(config, args.shutdown_timeout)
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text the
/// message before it already contains (many library errors quote their source).
fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
