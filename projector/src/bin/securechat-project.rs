//! securechat-project: keeps one Secret or ConfigMap projected into a
//! directory the way the kubelet does, so a server process running outside
//! the cluster reads exactly what a pod would, updates included.
//!
//!     securechat-project --namespace demo --secret chat-tls --dir ./mnt/tls
//!
//! Like the kubelet, it keeps the last projected content when the object is
//! deleted or the API server is unreachable.

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Parser};
use kube::Client;
use securechat_projector::AtomicWriter;
use securechat_projector::follow;

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

/// A `--mode` that is not octal permission bits.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid mode {0:?}: expected octal permission bits such as 0644 or 0400")]
struct InvalidMode(String);

fn parse_mode(text: &str) -> Result<u32, InvalidMode> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(InvalidMode(text.to_string())),
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
    let (namespace, mode, once) = (cli.namespace.as_str(), cli.mode, cli.once);
    let follow_until_signal = async {
        match (&cli.secret, &cli.config_map) {
            (Some(name), _) => {
                follow::follow_secret(client, namespace, name, &writer, mode, once).await
            }
            (None, Some(name)) => {
                follow::follow_config_map(client, namespace, name, &writer, mode, once).await
            }
            (None, None) => unreachable!("clap requires --secret or --config-map"),
        }
    };
    tokio::select! {
        result = follow_until_signal => Ok(result?),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
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
