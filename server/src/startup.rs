//! Starting the server: load every file (strictly: a bad file at startup
//! is an error, there is no last good version yet), then serve both ports
//! and watch the files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::audit::Placement;
use crate::breaker::{Breaker, BreakerConfig};
use crate::credentials::oidc::OidcVerifier;
use crate::engine::Engine;
use crate::files::last_used;
use crate::files::reload::{self, Reloader, TlsSettings, TlsState};
use crate::listener::serve_tls;
use crate::metrics::Metrics;
use crate::routes::{app, web_app};
use crate::shared::{Store, StoreMetrics, usage};
use crate::state::{AppState, Services};

/// Where to listen and what to read.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config_path: PathBuf,
    pub api_addr: SocketAddr,
    pub web_addr: SocketAddr,
    /// Extra PEM CA certificates trusted when fetching OIDC discovery and
    /// JWKS (identity providers behind a private CA); system roots are
    /// always trusted.
    pub oidc_ca_bundle: Option<PathBuf>,
    /// `Some(interval)` when this process owns the API-key table
    /// (standalone mode): each key's `lastUsedAt` is written back at most
    /// once per interval. `None` for a table that is a mounted Secret.
    pub record_last_used: Option<Duration>,
    /// Absolute paths in the config are read below this directory: runs a
    /// pod's config outside the pod against a projected copy of its mounts
    /// (`make demo`). `None`: as written.
    pub path_root: Option<PathBuf>,
    /// This process's pod and node, written into every audit line
    /// (`Placement::from_env` in a pod).
    pub placement: Placement,
}

/// How often standalone mode writes `lastUsedAt` back: at most one table
/// rewrite a minute however busy the keys are.
pub const LAST_USED_INTERVAL: Duration = Duration::from_secs(60);

/// A started server.
pub struct Running {
    pub api_addr: SocketAddr,
    pub web_addr: SocketAddr,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Running {
    /// Stops accepting connections and writes pending `lastUsedAt` times.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// How long the shared store's breaker stays open before a call probes.
const SHARED_STATE_COOL_DOWN: securechat_crds::Duration = securechat_crds::Duration::from_secs(1);

/// Loads the files, binds both ports and starts serving.
pub async fn start(options: &ServeOptions, engine: Arc<dyn Engine>) -> anyhow::Result<Running> {
    let config_path = options.config_path.clone();
    let base = config_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let runtime = reload::load_config(&config_path)?;
    let files = runtime.config.files.resolved(&base);
    let files = match &options.path_root {
        Some(root) => files.rerooted(root),
        None => files,
    };
    let signing = reload::load_keyset(&files.signing_keys)?;
    let table = reload::load_table(&files.api_keys)?;
    let cert = reload::load_cert(&files).context("loading the TLS certificate")?;
    let tls_settings = TlsSettings {
        min_version: runtime.config.tls.min_version,
        mtls: runtime.config.auth.mtls.mode,
    };
    let extra_roots = match &options.oidc_ca_bundle {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    // The engine records its scheduler's series; they are exported with
    // the rest.
    let metrics = Metrics::with_serving(engine.serving_metrics());
    let oidc = Arc::new(
        OidcVerifier::with_outbound(
            extra_roots.as_deref(),
            &runtime.config.outbound,
            metrics.circuits.clone(),
        )
        .context("building the OIDC client")?,
    );
    let store = match &runtime.config.shared_state {
        Some(shared) => {
            let store_metrics = StoreMetrics {
                errors: metrics.shared_state_errors.clone(),
                fallback: metrics.shared_state_fallback.clone(),
            };
            // The store is in-cluster and cheap to probe, and while its
            // breaker is open limits are not global: its cool-down is
            // short (the keepalive probes right after it), the thresholds
            // are the config's.
            let store_breaker = Arc::new(Breaker::new(
                "shared_state",
                BreakerConfig {
                    cool_down: SHARED_STATE_COOL_DOWN,
                    ..runtime.config.outbound.circuit_breaker
                },
                metrics.circuits.clone(),
            ));
            let store = Arc::new(
                Store::new(shared.clone(), &base, store_metrics)
                    .context("the shared store (sharedState)")?
                    .with_breaker(store_breaker),
            );
            store.spawn_keepalive();
            store.spawn_batcher();
            Some(store)
        }
        None => None,
    };
    let state = AppState::new(
        engine,
        runtime,
        signing,
        table,
        oidc,
        Some(config_path.clone()),
        Services {
            metrics,
            store,
            placement: options.placement.clone(),
        },
    );
    *state
        .cert_not_after
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = cert.not_after;
    let tls = Arc::new(TlsState::new(cert, tls_settings, &files.client_ca_bundle)?);
    let reloader = Arc::new(Reloader::new(
        state.clone(),
        tls.clone(),
        Some(config_path),
        files.clone(),
    ));
    let watcher = match reload::spawn(reloader) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; polling only");
            None
        }
    };
    let api = TcpListener::bind(options.api_addr)
        .await
        .with_context(|| format!("binding the API port {}", options.api_addr))?;
    let web = TcpListener::bind(options.web_addr)
        .await
        .with_context(|| format!("binding the web port {}", options.web_addr))?;
    let (api_addr, web_addr) = (api.local_addr()?, web.local_addr()?);
    let (shutdown, rx) = watch::channel(false);
    let header_timeout = |state: AppState| {
        move || {
            state
                .live_config()
                .config
                .limits
                .header_read_timeout
                .as_std()
        }
    };
    let mut tasks = vec![
        tokio::spawn(serve_tls(
            api,
            tls.api_acceptor.clone(),
            app(state.clone()),
            header_timeout(state.clone()),
            rx.clone(),
        )),
        tokio::spawn(serve_tls(
            web,
            tls.acceptor.clone(),
            web_app(state.clone()),
            header_timeout(state.clone()),
            rx.clone(),
        )),
    ];
    if state.store.is_some() {
        tasks.push(tokio::spawn(flush_usage(state.clone(), rx.clone())));
    }
    if let Some(interval) = options.record_last_used {
        if last_used::is_projected(&files.api_keys) {
            // A projected Secret is read-only and shared by replicas.
            tracing::warn!(
                path = %files.api_keys.display(),
                "the API-key table is a projected file; lastUsedAt is exported as a metric only"
            );
        } else {
            tasks.push(tokio::spawn(last_used::run(
                state.clone(),
                files.api_keys.clone(),
                interval,
                rx,
            )));
        }
    }
    Ok(Running {
        api_addr,
        web_addr,
        state,
        shutdown,
        tasks,
        _watcher: watcher,
    })
}

/// Flushes usage deltas to the shared store every
/// [`usage::FLUSH_INTERVAL`], and once more at shutdown.
async fn flush_usage(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(usage::FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        state.flush_usage().await;
        if stopping {
            return;
        }
    }
}

/// Serves until SIGINT / SIGTERM.
pub async fn run(options: &ServeOptions, engine: Arc<dyn Engine>) -> anyhow::Result<()> {
    let running = start(options, engine).await?;
    tracing::info!(api = %running.api_addr, web = %running.web_addr, "serving HTTPS");
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
