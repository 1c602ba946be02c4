//! securechat-operator: reconciles SecureChatModel (and ChatApiKey)
//! resources.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use securechat_operator::alert_relay::{deliver, render, server};
use securechat_operator::cli::{AlertRelayArgs, Cli, Command, LogFormat, RunArgs};
use securechat_operator::controller::{self, Context};
use securechat_operator::key_controller;
use securechat_operator::leader::{LeaderElector, LeaseConfig};
use securechat_operator::metrics::{self, Metrics};
use tracing::{error, info};

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

    let cuda_image = args
        .server_cuda_image
        .unwrap_or_else(|| controller::cuda_image_of(&args.server_image));
    let state = Arc::new(
        Context::new(client, args.server_image, metrics.clone())
            .with_cuda_image(cuda_image)
            .with_max_concurrent_reconciles(args.max_concurrent_reconciles),
    );
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

/// `alert-relay`: checks every robot's files before serving, so a wrong
/// Secret mount fails the pod at start with the file it lacks.
async fn alert_relay(args: AlertRelayArgs) -> anyhow::Result<()> {
    let mut robots = std::collections::BTreeMap::new();
    for robot in args.robots {
        robot.load()?;
        if let Some(previous) = robots.insert(robot.name.clone(), robot) {
            anyhow::bail!("robot {:?} is named twice", previous.name);
        }
    }
    let policy = deliver::RetryPolicy {
        attempts: args.attempts,
        ..Default::default()
    };
    let relay = server::Relay {
        robots,
        runbooks: render::Runbooks {
            template: args.runbook_url_template,
        },
        client: deliver::client(&policy)?,
        policy,
    };
    tokio::select! {
        served = server::serve(args.listen_address, Arc::new(relay)) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            init_logs(args.log_format, &args.log_level);
            run(args).await?;
        }
        Command::AlertRelay(args) => {
            init_logs(args.log_format, &args.log_level);
            alert_relay(args).await?;
        }
        Command::Crds => {
            for (_, crd) in securechat_crds::crd::all() {
                print!("---\n{}", securechat_crds::crd::to_yaml(&crd)?);
            }
        }
    }
    Ok(())
}
