//! securechat-server: the HTTPS chat server and its key-management verbs.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use securechat_crds::files::names;
use securechat_crds::v1alpha1::Tier;
use securechat_server::audit::Placement;
use securechat_server::files::reload;
use securechat_server::inference::{self, EngineOptions};
use securechat_server::startup::{LAST_USED_INTERVAL, ServeOptions, run};
use securechat_server::{dev, keys_cli};

#[derive(Parser)]
#[command(
    name = "securechat-server",
    version,
    about = "HTTPS chat server with auth, limits, filters and audit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and web ports over HTTPS.
    Serve(ServeArgs),
    /// Manage API keys in the local key table.
    Keys(KeysArgs),
    /// Download a model from a Hugging Face repository (the operator's init
    /// container for a huggingFace source); prints the model path last.
    Fetch(FetchArgs),
}

#[derive(Args)]
struct FetchArgs {
    /// Repository id, e.g. THUDM/chatglm3-6b.
    #[arg(long)]
    repo: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    revision: String,
    /// For a GGUF repository: the file to fetch. Default: the safetensors
    /// weights with config and tokenizer.
    #[arg(long)]
    file: Option<String>,
    /// File holding an access token (gated or private repositories).
    #[arg(long, env = "HF_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Directory to download into (created if absent).
    #[arg(long)]
    dest: PathBuf,
    /// Hub endpoint (a mirror); https, or http on loopback only.
    #[arg(long, env = "HF_ENDPOINT", default_value = securechat_server::fetch::DEFAULT_ENDPOINT)]
    endpoint: String,
    /// Extra PEM CA certificates to trust (a mirror behind a private CA).
    #[arg(long)]
    ca_bundle: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (config.yaml).
    #[arg(long, conflicts_with = "dev", required_unless_present = "dev")]
    config: Option<PathBuf>,
    /// Create dev TLS material, keys, key table and config in --data-dir if absent.
    #[arg(long, requires = "data_dir")]
    dev: bool,
    /// Directory for --dev (the images set /tmp/securechat, so `serve
    /// --dev` alone runs a local trial there).
    #[arg(long, env = "SECURECHAT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8000", env = "SECURECHAT_API_ADDR")]
    api_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8501", env = "SECURECHAT_WEB_ADDR")]
    web_addr: SocketAddr,
    /// Extra PEM CA bundle trusted for OIDC discovery/JWKS (private IdPs).
    #[arg(long, env = "SECURECHAT_OIDC_CA_BUNDLE")]
    oidc_ca_bundle: Option<PathBuf>,
    /// Read the config's absolute paths below this directory (run a pod's
    /// config outside the pod, against a projected copy of its mounts).
    #[arg(long, requires = "config")]
    path_root: Option<PathBuf>,
    /// Model file (GGUF) or GLM directory. Default: where `make model` puts
    /// the default model (`crds::default_model`).
    #[arg(long, env = "SECURECHAT_MODEL")]
    model: Option<PathBuf>,
    /// Where the model runs: auto (the first GPU if one is visible, else
    /// the CPU), cpu, cuda (GPU 0) or cuda:N. The cuda forms exit with an
    /// error when no GPU is visible instead of running on the CPU.
    #[arg(long, env = names::DEVICE_ENV, default_value = "auto")]
    device: inference::Placement,
}

#[derive(Args)]
struct KeysArgs {
    /// Directory holding api-keys.json.
    #[arg(long, global = true, default_value = ".")]
    data_dir: PathBuf,
    #[command(subcommand)]
    verb: KeysVerb,
}

#[derive(Subcommand)]
enum KeysVerb {
    /// Create a key; prints the plaintext key alone on the last line.
    Create {
        #[arg(long)]
        name: String,
        /// ReadOnly, Developer or Admin (guest/user/admin also accepted).
        #[arg(long, default_value = "ReadOnly")]
        tier: Tier,
        /// Lifetime, e.g. 30d or 720h. Default: no expiry.
        #[arg(long)]
        expires_in: Option<String>,
        /// Bind the key to this SPIFFE ID: it is then accepted only on an
        /// API-port connection whose client certificate carries the ID
        /// (auth.mtls).
        #[arg(long)]
        spiffe_id: Option<String>,
    },
    /// List keys (never secrets).
    List,
    /// Deactivate a key (can be resumed).
    Suspend { id: String },
    /// Reactivate a suspended key.
    Resume { id: String },
    /// New secret for the same id; the old one works until the grace ends.
    Rotate {
        id: String,
        #[arg(long, default_value = "1h")]
        grace: String,
    },
    /// Revoke a key for good.
    Revoke { id: String },
    /// Archive expired keys in the table's history and remove them.
    Prune,
}

fn main() -> anyhow::Result<()> {
    // Log lines (among them one audit line per request) are written by a
    // thread of their own, about a hundred times a second whatever the
    // request rate (see `log_writer`); never lossy. The guard writes what
    // is left when `main` returns, after a SIGTERM too.
    let (log_writer, _flush_logs_on_exit) =
        securechat_server::log_writer::batched(std::io::stderr(), "log-writer")
            .context("starting the log writer thread")?;
    let audit_lines = log_writer.clone();
    securechat_server::audit::set_sink(move |line| {
        let _ = (&audit_lines).write_all(line);
    });
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(log_writer)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Keys(args) => keys(args),
        Command::Fetch(args) => fetch(args),
    }
}

fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    use securechat_server::fetch::{self, FetchRequest};
    let read =
        |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let token = match &args.token_file {
        Some(path) => Some(String::from_utf8(read(path)?)?.trim().to_string()),
        None => None,
    };
    let extra_roots = args.ca_bundle.as_ref().map(read).transpose()?;
    let request = FetchRequest {
        endpoint: args.endpoint,
        repo: args.repo,
        revision: args.revision,
        file: args.file,
        token,
        dest: args.dest,
    };
    let client = fetch::client(extra_roots.as_deref())?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(fetch::fetch(&client, &request))?;
    println!("{}", request.model_path().display());
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Dev mode owns its key table (the `keys` verbs edit it), so it records
    // lastUsedAt there; with --config the table is usually a mounted Secret.
    let (config_path, record_last_used) = match (args.config, args.dev, args.data_dir) {
        // The images' default command names the config's mount point; a
        // bare `docker run` has nothing there and is told what to pass.
        (Some(config), _, _) if !config.exists() => anyhow::bail!(
            "no config file at {}: mount the server's config there (the operator does), \
             or run `serve --dev` for a local trial with generated keys",
            config.display()
        ),
        (Some(config), _, _) => (config, None),
        (None, true, Some(dir)) => (dev::ensure(&dir)?, Some(LAST_USED_INTERVAL)),
        _ => anyhow::bail!("either --config FILE or --dev --data-dir DIR is required"),
    };
    let model = args
        .model
        .or_else(inference::default_model_path)
        .context("no --model given and HOME is not set (the default model lives under it)")?;
    // The config may name the family the model files must hold (a
    // SecureChatModel's spec.model.family): checked before the load, which
    // can take minutes.
    let config = reload::load_config(&config_path)?;
    if let Some(declared) = config.config.model.family {
        inference::check_family(&model, declared)?;
    }
    // A GPU asked for is opened before the (slow) model load, and its
    // absence ends the process with a message the pod's termination log
    // keeps (the operator reports it as GpuUnavailable).
    if let inference::Placement::Gpu(ordinal) = args.device {
        args.device.device().map_err(|e| {
            anyhow::anyhow!(
                "--device cuda:{ordinal}: {}: {e}. A GPU pod needs a GPU that the node's \
                 NVIDIA driver, container toolkit and device plugin hand to the container",
                names::GPU_UNAVAILABLE_MESSAGE
            )
        })?;
    }
    let engine_options = EngineOptions {
        placement: args.device,
        serving: (&config.config.serving).into(),
        context_length: config.config.model.context_length.map(|n| n as usize),
        dtype: config.config.model.dtype.unwrap_or_default(),
        ..EngineOptions::default()
    };
    let engine = inference::load_engine(&model, engine_options)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", model.display()))?;
    let options = ServeOptions {
        config_path,
        api_addr: args.api_addr,
        web_addr: args.web_addr,
        oidc_ca_bundle: args.oidc_ca_bundle,
        record_last_used,
        path_root: args.path_root,
        placement: Placement::from_env(),
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(&options, engine))
}

fn keys(args: KeysArgs) -> anyhow::Result<()> {
    let path = args.data_dir.join(names::API_KEYS);
    let now = chrono::Utc::now();
    let _lock = match args.verb {
        KeysVerb::List => None,
        _ => Some(keys_cli::TableLock::acquire(&path).with_context(|| {
            format!(
                "cannot change the key table {}: it cannot be locked for writing",
                path.display()
            )
        })?),
    };
    let mut table = keys_cli::load(&path)?;
    // Nothing is reported before the table is saved: a failed save must
    // not leave "created key ..." on the screen.
    let (report, plaintext) = match args.verb {
        KeysVerb::List => {
            print!("{}", keys_cli::render_list(&table, now));
            return Ok(());
        }
        KeysVerb::Create {
            name,
            tier,
            expires_in,
            spiffe_id,
        } => {
            let lifetime = expires_in
                .as_deref()
                .map(keys_cli::parse_lifetime)
                .transpose()?;
            let (id, key) = keys_cli::create(&mut table, &name, tier, lifetime, now)?;
            if let Some(record) = table.get_mut(&id) {
                record.spiffe_id = spiffe_id;
            }
            (
                format!("created key {id} ({name}, {tier}); store it now, it is not shown again:"),
                Some(key),
            )
        }
        KeysVerb::Suspend { id } => {
            keys_cli::suspend(&mut table, &id)?;
            (format!("suspended {id}"), None)
        }
        KeysVerb::Resume { id } => {
            keys_cli::resume(&mut table, &id)?;
            (format!("resumed {id}"), None)
        }
        KeysVerb::Rotate { id, grace } => {
            let grace = keys_cli::parse_lifetime(&grace)?;
            let key = keys_cli::rotate(&mut table, &id, grace, now)?;
            (
                format!(
                    "rotated {id}; the previous secret works until {}; new key:",
                    now + grace
                ),
                Some(key),
            )
        }
        KeysVerb::Revoke { id } => {
            keys_cli::revoke(&mut table, &id)?;
            (format!("revoked {id}"), None)
        }
        KeysVerb::Prune => {
            let pruned = keys_cli::prune(&mut table, now);
            let report = if pruned.is_empty() {
                "no expired key".to_string()
            } else {
                format!(
                    "archived and removed {} expired key(s): {}",
                    pruned.len(),
                    pruned.join(", ")
                )
            };
            (report, None)
        }
    };
    keys_cli::save(&path, &table)
        .with_context(|| format!("cannot save the key table {}", path.display()))?;
    println!("{report}");
    if let Some(key) = plaintext {
        println!("{key}");
    }
    Ok(())
}
