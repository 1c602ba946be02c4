//! securechat-operator: reconciles SecureChatModel (and, later, ChatApiKey)
//! resources.

use std::sync::Arc;

use clap::{Parser, Subcommand};
use securechat_operator::controller::{self, State};

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
    /// Run the controller with the in-cluster config or $KUBECONFIG.
    Run {
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "SECURECHAT_NAMESPACE")]
        namespace: Option<String>,
        /// Server image for SecureChatModels that name none.
        #[arg(long, env = "SECURECHAT_SERVER_IMAGE", default_value = concat!("securechat/server:", env!("CARGO_PKG_VERSION")))]
        server_image: String,
    },
    /// Print the CustomResourceDefinitions as YAML (for `kubectl apply -f -`).
    Crds,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Run {
            namespace,
            server_image,
        } => {
            let client = kube::Client::try_default().await?;
            let state = Arc::new(State {
                client,
                default_image: server_image,
            });
            controller::run(state, namespace.as_deref()).await;
        }
        Command::Crds => {
            for (_, crd) in securechat_crds::crd::all() {
                print!("---\n{}", securechat_crds::crd::to_yaml(&crd)?);
            }
        }
    }
    Ok(())
}
