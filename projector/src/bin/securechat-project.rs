//! securechat-project: keeps one Secret or ConfigMap projected into a
//! directory the way the kubelet does, so a server process running outside
//! the cluster reads exactly what a pod would, updates included.
//!
//!     securechat-project --namespace demo --secret chat-tls --dir ./mnt/tls
//!
//! Like the kubelet, it keeps the last projected content when the object is
//! deleted or the API server is unreachable.

use std::fmt::Debug;
use std::path::PathBuf;

use anyhow::Context;
use chrono::Utc;
use clap::{ArgGroup, Parser};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use securechat_projector::source::{config_map_payload, secret_payload};
use securechat_projector::{AtomicWriter, Outcome, Payload};
use serde::de::DeserializeOwned;

#[derive(Parser)]
#[command(
    name = "securechat-project",
    version,
    about = "Project a Secret or ConfigMap into a directory as the kubelet does"
)]
#[command(group(ArgGroup::new("object").required(true).args(["secret", "config_map"])))]
struct Cli {
    /// Namespace of the object.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// Name of the Secret to project.
    #[arg(long)]
    secret: Option<String>,
    /// Name of the ConfigMap to project.
    #[arg(long)]
    config_map: Option<String>,
    /// Target directory (created if absent).
    #[arg(long)]
    dir: PathBuf,
    /// File mode, octal (the volume's defaultMode).
    #[arg(long, default_value = "0644", value_parser = parse_mode)]
    mode: u32,
    /// Project the current content once and exit instead of watching.
    #[arg(long)]
    once: bool,
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!(
            "invalid mode {text:?}: expected octal permission bits such as 0644 or 0400"
        )),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let writer = AtomicWriter::new(&cli.dir);
    let mode = cli.mode;
    let follow_until_signal = async {
        match (&cli.secret, &cli.config_map) {
            (Some(name), _) => {
                let api: Api<Secret> = Api::namespaced(client, &cli.namespace);
                follow(api, name, &writer, cli.once, move |s| {
                    secret_payload(s, mode)
                })
                .await
            }
            (None, Some(name)) => {
                let api: Api<ConfigMap> = Api::namespaced(client, &cli.namespace);
                follow(api, name, &writer, cli.once, move |c| {
                    config_map_payload(c, mode)
                })
                .await
            }
            (None, None) => unreachable!("clap requires --secret or --config-map"),
        }
    };
    tokio::select! {
        result = follow_until_signal => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Projects `name` now and, unless `once`, after every change.
async fn follow<K>(
    api: Api<K>,
    name: &str,
    writer: &AtomicWriter,
    once: bool,
    payload: impl Fn(&K) -> Payload,
) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let kind = K::kind(&());
    if once {
        let object = api
            .get(name)
            .await
            .with_context(|| format!("reading {kind} {name}"))?;
        return project(writer, &kind, name, &payload(&object));
    }
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    // Retries with backoff while the API server is unreachable; the last
    // projected content stays in place meanwhile, as with the kubelet.
    let mut objects = watcher(api, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    tracing::info!(%kind, name, dir = %writer.dir().display(), "watching");
    while let Some(object) = objects
        .try_next()
        .await
        .with_context(|| format!("watching {kind} {name}"))?
    {
        if let Err(e) = project(writer, &kind, name, &payload(&object)) {
            // A payload the writer refuses (a key that is not a valid
            // file name) is reported; the next change may fix it.
            tracing::error!(%kind, name, error = %e, "cannot project");
        }
    }
    Ok(())
}

fn project(writer: &AtomicWriter, kind: &str, name: &str, payload: &Payload) -> anyhow::Result<()> {
    match writer
        .write(payload, Utc::now())
        .with_context(|| format!("projecting {kind} {name} into {}", writer.dir().display()))?
    {
        Outcome::Written { generation } => {
            tracing::info!(kind, name, generation, files = payload.len(), "projected")
        }
        Outcome::Unchanged => tracing::debug!(kind, name, "unchanged"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("0o400"), Ok(0o400));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("rw").is_err());
        assert!(parse_mode("17777").is_err());
    }

    #[test]
    fn exactly_one_object_is_named() {
        assert!(Cli::try_parse_from(["p", "--dir", "d"]).is_err());
        assert!(
            Cli::try_parse_from(["p", "--dir", "d", "--secret", "a", "--config-map", "b"]).is_err()
        );
        let cli = Cli::try_parse_from(["p", "--dir", "d", "-n", "x", "--config-map", "b"]).unwrap();
        assert_eq!(
            (cli.namespace.as_str(), cli.config_map.as_deref()),
            ("x", Some("b"))
        );
    }
}
