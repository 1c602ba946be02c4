//! What every request reads: the engine, and the hot-reloadable material
//! (config, signing keys, API-key table), each behind an ArcSwap so a
//! reload is one atomic pointer swap and readers never block.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use securechat_crds::files::ValidationError;
use securechat_crds::files::api_keys::ApiKeyTable;
use securechat_crds::files::config::ServerConfig;
use serde::Serialize;

use crate::credentials::jwt::{SigningMaterial, TokenPolicy};
use crate::credentials::oidc::OidcVerifier;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::pii::Filter;
use crate::ratelimit::KeyedBuckets;
use crate::session::Sessions;

/// Why a config was refused (the last good one stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not UTF-8")]
    NotUtf8,
    #[error(transparent)]
    Yaml(#[from] serde_yaml::Error),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("sensitiveData: {0}")]
    Patterns(#[source] securechat_crds::sensitive::PatternError),
}

/// The config in force: validated, with its compiled parts (the
/// sensitive-data filter, the token policy). A reload or an admin PATCH
/// builds a new one and swaps it in whole.
pub struct LiveConfig {
    pub config: ServerConfig,
    pub filter: Filter,
    pub policy: TokenPolicy,
}

impl LiveConfig {
    /// Validates and compiles; any error leaves the caller's last good
    /// config in force.
    pub fn new(config: ServerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let filter = Filter::new(&config.sensitive_data).map_err(ConfigError::Patterns)?;
        let policy = TokenPolicy {
            issuer: config.auth.issuer.clone(),
            audience: config.auth.audience.clone(),
            leeway_secs: config.auth.leeway.as_secs(),
        };
        Ok(Self {
            config,
            filter,
            policy,
        })
    }
}

/// Live usage of one API key, reported by /admin/keys (the key table is
/// read-only to the server: in Kubernetes it is a mounted Secret).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyUsage {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What every request reads; [`AppState`] clones it per request as one Arc.
pub struct AppStateInner {
    pub engine: Arc<dyn Engine>,
    /// The config in force, swapped whole on a reload or an admin PATCH.
    pub live_config: ArcSwap<LiveConfig>,
    pub signing: ArcSwap<SigningMaterial>,
    pub api_keys: ArcSwap<ApiKeyTable>,
    pub cert_not_after: Mutex<Option<DateTime<Utc>>>,
    /// Requests per principal.
    pub request_buckets: KeyedBuckets,
    /// Generated tokens per principal.
    pub token_buckets: KeyedBuckets,
    /// Failed authentications per client address.
    pub failure_buckets: KeyedBuckets,
    pub usage: Mutex<HashMap<String, KeyUsage>>,
    pub metrics: Metrics,
    /// JWKS caches of the external OIDC issuers.
    pub oidc: Arc<OidcVerifier>,
    /// Where PATCH /admin/config persists the merged config, when writable.
    pub config_path: Option<PathBuf>,
    /// Web UI sessions and SSO logins in progress.
    pub sessions: Sessions,
}

#[derive(Clone)]
pub struct AppState(pub Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        engine: Arc<dyn Engine>,
        live_config: LiveConfig,
        signing: SigningMaterial,
        api_keys: ApiKeyTable,
        oidc: Arc<OidcVerifier>,
        config_path: Option<PathBuf>,
    ) -> Self {
        let max = live_config.config.limits.max_tracked_clients as usize;
        Self(Arc::new(AppStateInner {
            metrics: Metrics::with_serving(engine.serving_metrics()),
            engine,
            live_config: ArcSwap::from_pointee(live_config),
            signing: ArcSwap::from_pointee(signing),
            api_keys: ArcSwap::from_pointee(api_keys),
            cert_not_after: Mutex::new(None),
            request_buckets: KeyedBuckets::new(max),
            token_buckets: KeyedBuckets::new(max),
            failure_buckets: KeyedBuckets::new(max),
            usage: Mutex::new(HashMap::new()),
            oidc,
            config_path,
            sessions: Sessions::new(max),
        }))
    }

    pub fn live_config(&self) -> Arc<LiveConfig> {
        self.live_config.load_full()
    }

    /// The model id clients use: the configured served name, else the
    /// model file's own name.
    pub fn model_id(&self) -> String {
        self.live_config()
            .config
            .served_model_name
            .clone()
            .unwrap_or_else(|| self.engine.info().id.clone())
    }

    /// Whether a request's `model` names this server's model: the served
    /// name or the file's own name.
    pub fn serves_model(&self, requested: &str) -> bool {
        requested == self.model_id() || requested == self.engine.info().id
    }

    /// Adds to a key's usage.
    pub fn record_usage(
        &self,
        key_id: &str,
        prompt: u64,
        completion: u64,
        request: bool,
        now: DateTime<Utc>,
    ) {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded like the limiters: ids come from the key table, which the
        // operator bounds, so this cannot grow from unauthenticated input.
        let entry = usage.entry(key_id.to_string()).or_default();
        entry.requests += u64::from(request);
        entry.prompt_tokens += prompt;
        entry.completion_tokens += completion;
        entry.last_used_at = Some(now);
    }
}
