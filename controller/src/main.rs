//! `vireo-controller`: runs the controller, prints CRDs, issues VM requests, or opens a VM's
//! console or VNC display.

use anyhow::Context as _;
use clap::Parser;
use vireo_controller::cli::{Cli, Command, VmCommand};
use vireo_controller::console;
use vireo_controller::requests::{self, Outcome};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!(
                "{}",
                vireo_controller::crd::crds_yaml().context("rendering CRDs")?
            );
        }
        Command::Run(args) => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the apiserver")?;
            let config = args.config();
            tracing::info!(?config, "starting controller");
            tokio::select! {
                r = vireo_controller::run(client, config) => r.context("controller stopped")?,
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; exiting"),
            }
        }
        Command::Vm(args) => {
            let config = kube::Config::infer().await.context("loading kubeconfig")?;
            let ns = args
                .namespace
                .clone()
                .unwrap_or_else(|| config.default_namespace.clone());
            let client = kube::Client::try_from(config).context("building client")?;
            let (name, action) = args.command.request();
            let name = name.to_owned();
            match (action, &args.command) {
                (Some(action), _) => {
                    let outcome = requests::request(client, &ns, &name, action)
                        .await
                        .with_context(|| format!("{action:?} {ns}/{name}"))?;
                    print_outcome(&name, outcome);
                }
                (None, VmCommand::Vnc(v)) => {
                    let serve = console::vnc(client, &ns, &name, v.listen, |addr| {
                        println!("vnc: {ns}/{name}'s display at {addr} (any VNC viewer, several at once; Ctrl-C ends)");
                        let _ = std::io::Write::flush(&mut std::io::stdout());
                    });
                    tokio::select! {
                        r = serve => r.with_context(|| format!("vnc {ns}/{name}"))?,
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                (None, _) => {
                    let r = console::console(client, &ns, &name).await;
                    // The runtime would wait for the thread blocked reading standard input.
                    let code = match r {
                        Ok(()) => 0,
                        Err(e) => {
                            eprintln!("Error: console {ns}/{name}: {e}");
                            1
                        }
                    };
                    std::process::exit(code);
                }
            }
        }
    }
    Ok(())
}

fn print_outcome(name: &str, outcome: Outcome) {
    match outcome {
        Outcome::StrategyChanged(s) => println!("{name}: runStrategy set to {s:?}"),
        Outcome::Queued(r) => {
            let acts: Vec<_> = r.iter().map(|r| format!("{:?}", r.action)).collect();
            println!("{name}: queued {}", acts.join(", "));
        }
        Outcome::PauseRequested(true) => println!("{name}: pause requested"),
        Outcome::PauseRequested(false) => println!("{name}: unpause requested"),
    }
}
