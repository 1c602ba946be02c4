//! securechat-operator: reconciles SecureChatModel (and ChatApiKey)
//! resources.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use securechat_operator::controller::{self, State};
use securechat_operator::key_controller;
use securechat_operator::leader::{LeaderElector, LeaseConfig};
use securechat_operator::metrics::{self, Metrics};
use tracing::{error, info};

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
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML (for `kubectl apply -f -`).
    Crds,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Every setting of `run`, from flags or the environment (the chart sets
/// the environment).
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Watch only these namespaces (comma-separated; default: all).
    #[arg(
        long = "namespace",
        env = "SECURECHAT_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    /// Server image for SecureChatModels that name none.
    #[arg(long, env = "SECURECHAT_SERVER_IMAGE", default_value = concat!("securechat/server:", env!("CARGO_PKG_VERSION")))]
    server_image: String,
    /// Where /metrics, /healthz and /readyz are served (plain HTTP).
    #[arg(
        long,
        alias = "metrics-address",
        env = "SECURECHAT_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: SocketAddr,
    /// Elect a leader through a Lease so only one replica reconciles.
    #[arg(long, env = "SECURECHAT_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "SECURECHAT_LEASE_NAME",
        default_value = "securechat-operator"
    )]
    lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else "default").
    #[arg(
        long,
        alias = "leader-election-namespace",
        env = "SECURECHAT_LEASE_NAMESPACE"
    )]
    lease_namespace: Option<String>,
    /// How long a lease lasts without renewal (seconds): the longest a
    /// crashed leader blocks a standby.
    #[arg(long, env = "SECURECHAT_LEASE_DURATION", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// How often the leader renews and standbys retry (seconds).
    #[arg(long, env = "SECURECHAT_LEASE_RETRY", default_value_t = 2)]
    lease_retry_seconds: u64,
    /// This process's identity in the Lease (default: $POD_NAME, else
    /// hostname-pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, env = "SECURECHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. info or securechat_operator=debug).
    #[arg(long, env = "SECURECHAT_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn init_logs(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The in-cluster config or $KUBECONFIG, with a User-Agent that names us
/// (the API server's audit log and metrics then attribute our requests).
async fn client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("securechat-operator/", env!("CARGO_PKG_VERSION"))),
    ));
    Ok(kube::Client::try_from(config)?)
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "operator".into());
    format!("{host}-{}", std::process::id())
}

fn pod_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::spawn(metrics::serve(args.metrics_addr, metrics.clone()));
    info!(addr = %args.metrics_addr, "serving /metrics, /healthz, /readyz");

    let client = client().await?;
    let version = client.apiserver_version().await?;
    info!(version = %version.git_version, "connected to the API server");
    metrics.ready.store(true, Ordering::Relaxed);

    let elector = args.leader_elect.then(|| {
        LeaderElector::new(
            client.clone(),
            LeaseConfig {
                name: args.lease_name.clone(),
                namespace: args
                    .lease_namespace
                    .clone()
                    .or_else(pod_namespace)
                    .unwrap_or_else(|| "default".into()),
                identity: args.identity.clone().unwrap_or_else(default_identity),
                lease_duration: Duration::from_secs(args.lease_duration_seconds),
                retry_period: Duration::from_secs(args.lease_retry_seconds),
            },
        )
    });
    if let Some(elector) = &elector {
        tokio::select! {
            acquired = elector.acquire() => acquired?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        metrics.set_leader(true);
    }

    let state = Arc::new(State::new(client, args.server_image, metrics.clone()));
    let reconciling = async {
        tokio::join!(
            controller::run(state.clone(), &args.namespaces),
            key_controller::run(state.clone(), &args.namespaces),
        );
    };
    match &elector {
        Some(elector) => {
            tokio::select! {
                _ = reconciling => {
                    // Clean shutdown: hand over at once instead of making
                    // the standby wait out the lease.
                    if let Err(e) = elector.release().await {
                        error!(error = %e, "could not release the lease");
                    }
                }
                _ = elector.hold() => {
                    // Another process may be reconciling already; stopping
                    // at once is the only safe move (the pod restarts and
                    // stands by).
                    metrics.set_leader(false);
                    error!("lost leadership; exiting");
                    std::process::exit(1);
                }
            }
        }
        None => reconciling.await,
    }
    listener.abort();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            init_logs(args.log_format, &args.log_level);
            run(args).await?;
        }
        Command::Crds => {
            for (_, crd) in securechat_crds::crd::all() {
                print!("---\n{}", securechat_crds::crd::to_yaml(&crd)?);
            }
        }
    }
    Ok(())
}
