//! securechat-operator: reconciles SecureChatModel and ChatApiKey resources.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "securechat-operator",
    version,
    about = "Deploys chat models securely on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (for `kubectl apply -f -`).
    Crds,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds => {
            for (_, crd) in securechat_crds::crd::all() {
                print!("---\n{}", securechat_crds::crd::to_yaml(&crd)?);
            }
        }
    }
    Ok(())
}
