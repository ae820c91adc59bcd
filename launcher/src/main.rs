//! `vireo`: runs one virtual machine per process.
//!
//! - `vireo run --kernel PATH …` builds a VM from flags (local use);
//! - `vireo launch --spec FILE` builds it from a JSON launch spec (pods);
//! - `vireo vm start|stop|restart|pause|unpause NAME` asks the Kubernetes
//!   controller to act on a VirtualMachine (through `vireo-controller`);
//! - `vireo restore --source DIR` restores a snapshot and runs it; `vireo run --api-socket
//!   PATH` without `--kernel` waits for a `vm.restore` through the API;
//! - `vireo receive --listen URL` receives a VM by live migration and runs it;
//! - `vireo remote --api-socket PATH ACTION` talks to a running vireo's control API.
//!
//! Logs go to stderr through `tracing` (filter with `VIREO_LOG`, default
//! `info`); the guest's serial console owns stdout. The exit status says how
//! the VM ended: see [`exit_code`].

mod cli;
mod exit_code;
mod kube;
mod logging;
mod remote;
mod run;

use std::process::ExitCode;

use clap::Parser;
use vireo_spec::ExitStatus;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cli::report_usage_error(e),
    };
    logging::init();
    let result = match cli.command {
        Command::Run(args) => args.into_plan().and_then(|(plan, timeout)| match plan {
            cli::RunPlan::Boot(config) => run::run_vm(*config, timeout),
            cli::RunPlan::AwaitRestore(socket) => run::await_restore(&socket, timeout),
        }),
        Command::Restore(args) => run::restore_vm(args),
        Command::Receive(args) => run::receive_vm(args),
        Command::Launch(args) => match run::migration_role() {
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
                return exit_code::code(ExitStatus::MigrationTargetUnsupported);
            }
            Ok(None) => {
                run::load_spec(&args.spec).and_then(|c| run::run_vm(c, args.shutdown_timeout))
            }
        },
        Command::Vm(args) => kube::delegate(&args.args),
        Command::Remote(args) => remote::run(&args.api_socket, args.action),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            logging::error_line(&format!("vireo: error: {}", render_error(&e)));
            exit_code::code(ExitStatus::VmmError)
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
