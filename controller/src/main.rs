//! `vireo-controller`: runs the controller, prints CRDs, or issues VM requests.

use anyhow::Context as _;
use clap::Parser;
use vireo_controller::cli::{Cli, Command};
use vireo_controller::requests::{self, Outcome};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
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
            let outcome = requests::request(client, &ns, &args.name, args.action)
                .await
                .with_context(|| format!("{:?} {ns}/{}", args.action, args.name))?;
            match outcome {
                Outcome::StrategyChanged(s) => println!("{}: runStrategy set to {s:?}", args.name),
                Outcome::Queued(r) => {
                    let acts: Vec<_> = r.iter().map(|r| format!("{:?}", r.action)).collect();
                    println!("{}: queued {}", args.name, acts.join(", "));
                }
                Outcome::PauseRequested(true) => println!("{}: pause requested", args.name),
                Outcome::PauseRequested(false) => println!("{}: unpause requested", args.name),
            }
        }
    }
    Ok(())
}
