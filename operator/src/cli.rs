//! The command line of `securechat-operator`, in the library so tests can
//! check that what the Helm chart passes is what the binary accepts.

use std::net::SocketAddr;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "securechat-operator",
    version,
    about = "Deploys chat models securely on Kubernetes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the controller with the in-cluster config or $KUBECONFIG.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML (for `kubectl apply -f -`).
    Crds,
    /// Relay Alertmanager's webhook notifications to WeChat Work and
    /// DingTalk group robots (POST /robots/NAME; GET /healthz).
    AlertRelay(AlertRelayArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting of `run`, from flags or the environment (the chart sets
/// the environment).
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Watch only these namespaces (comma-separated; default: all).
    #[arg(
        long = "namespace",
        env = "SECURECHAT_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Server image for SecureChatModels that name none.
    #[arg(long, env = "SECURECHAT_SERVER_IMAGE", default_value = concat!("securechat/server:", env!("CARGO_PKG_VERSION")))]
    pub server_image: String,
    /// Server image built with CUDA, for SecureChatModels with
    /// `resources.gpu.count > 0` that name none. Default: the server
    /// image's tag with `-cuda` appended, as `make images` tags it.
    #[arg(long, env = "SECURECHAT_SERVER_CUDA_IMAGE")]
    pub server_cuda_image: Option<String>,
    /// Where /metrics, /healthz and /readyz are served (plain HTTP).
    #[arg(
        long,
        alias = "metrics-address",
        env = "SECURECHAT_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_addr: SocketAddr,
    /// Elect a leader through a Lease so only one replica reconciles.
    #[arg(long, env = "SECURECHAT_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        alias = "leader-election-lease",
        env = "SECURECHAT_LEASE_NAME",
        default_value = "securechat-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else "default").
    #[arg(
        long,
        alias = "leader-election-namespace",
        env = "SECURECHAT_LEASE_NAMESPACE"
    )]
    pub lease_namespace: Option<String>,
    /// How long a lease lasts without renewal (seconds): the longest a
    /// crashed leader blocks a standby.
    #[arg(long, env = "SECURECHAT_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// How often the leader renews and standbys retry (seconds).
    #[arg(long, env = "SECURECHAT_LEASE_RETRY", default_value_t = 2)]
    pub lease_retry_seconds: u64,
    /// This process's identity in the Lease (default: $POD_NAME, else
    /// hostname-pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Reconciles that run at once, per controller and watched scope. Bounds
    /// the operator's memory and CPU when many models change together (a
    /// restart, a mass apply); each object is still reconciled by one
    /// worker at a time.
    #[arg(long, env = "SECURECHAT_MAX_CONCURRENT_RECONCILES", default_value_t = crate::controller::DEFAULT_MAX_CONCURRENT_RECONCILES,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// Log format.
    #[arg(long, env = "SECURECHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. info or securechat_operator=debug).
    #[arg(long, env = "SECURECHAT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Every setting of `alert-relay`. Robots are named by the directories of
/// their mounted Secrets; their URLs, keys and secrets are never arguments.
#[derive(clap::Args, Debug)]
pub struct AlertRelayArgs {
    /// Where Alertmanager posts (plain HTTP, in-cluster).
    #[arg(
        long,
        env = "SECURECHAT_ALERT_RELAY_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub listen_address: SocketAddr,
    /// A robot, NAME=KIND:DIR (repeat, or comma-separated): KIND wecom or
    /// dingtalk; DIR holds the file `url` (the webhook URL with its key or
    /// access token) and, for a signed DingTalk robot, `secret`.
    /// Alertmanager posts to /robots/NAME.
    #[arg(
        long = "robot",
        env = "SECURECHAT_ALERT_RELAY_ROBOTS",
        value_delimiter = ',',
        required = true
    )]
    pub robots: Vec<crate::alert_relay::robot::RobotSpec>,
    /// The runbook link of alerts without a `runbook_url` annotation;
    /// `{alertname}` becomes the alert's name in lower case.
    #[arg(long, env = "SECURECHAT_ALERT_RELAY_RUNBOOK_URL")]
    pub runbook_url_template: Option<String>,
    /// Tries per message to a robot before the relay answers Alertmanager
    /// with 502 (Alertmanager then retries the notification).
    #[arg(long, env = "SECURECHAT_ALERT_RELAY_ATTEMPTS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=10))]
    pub attempts: u32,
    /// Log format.
    #[arg(long, env = "SECURECHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SECURECHAT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Cli {
    /// Parses a command line (the program name first), as the binary does.
    pub fn parse_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args)
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
    fn concurrent_reconciles_default_to_a_bound_and_zero_is_refused() {
        let parse = |extra: &[&str]| {
            let args = ["securechat-operator", "run"].iter().chain(extra);
            Cli::parse_from_args(args).map(|cli| match cli.command {
                Command::Run(args) => args.max_concurrent_reconciles,
                _ => unreachable!("parsed `run`"),
            })
        };
        assert_eq!(
            parse(&[]).expect("parses"),
            crate::controller::DEFAULT_MAX_CONCURRENT_RECONCILES
        );
        assert_eq!(
            parse(&["--max-concurrent-reconciles=32"]).expect("parses"),
            32
        );
        assert!(parse(&["--max-concurrent-reconciles=0"]).is_err());
    }

    #[test]
    fn the_charts_flag_names_are_accepted() {
        let cli = Cli::parse_from_args([
            "securechat-operator",
            "run",
            "--leader-elect",
            "--leader-election-namespace=ops",
            "--leader-election-lease=op-lease",
            "--metrics-address=127.0.0.1:9000",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert_eq!(args.lease_name, "op-lease");
        assert_eq!(args.lease_namespace.as_deref(), Some("ops"));
    }

    #[test]
    fn the_alert_relay_takes_robots_as_directories() {
        let cli = Cli::parse_from_args([
            "securechat-operator",
            "alert-relay",
            "--robot=oncall=wecom:/etc/robots/oncall,team=dingtalk:/etc/robots/team",
            "--listen-address=127.0.0.1:9095",
        ])
        .expect("parses");
        let Command::AlertRelay(args) = cli.command else {
            panic!("alert-relay")
        };
        let names: Vec<_> = args.robots.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["oncall", "team"]);
        assert_eq!(args.attempts, 4);
        assert!(
            Cli::parse_from_args(["securechat-operator", "alert-relay"]).is_err(),
            "a relay without robots"
        );
        let err = Cli::parse_from_args([
            "securechat-operator",
            "alert-relay",
            "--robot=oncall=https://qyapi.weixin.qq.com/x",
        ])
        .err()
        .expect("a URL is not a robot");
        assert!(err.to_string().contains("NAME=KIND:DIR"), "{err}");
    }
}
