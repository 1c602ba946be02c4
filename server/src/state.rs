//! What every request reads: the engine, and the hot-reloadable material
//! (config, signing keys, API-key table), each behind an ArcSwap so a
//! reload is one atomic pointer swap and readers never block.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use securechat_crds::files::ValidationError;
use securechat_crds::files::api_keys::ApiKeyTable;
use securechat_crds::files::config::ServerConfig;
use serde::Serialize;

use crate::audit::Placement;
use crate::credentials::jwt::{SigningMaterial, TokenPolicy};
use crate::credentials::oidc::OidcVerifier;
use crate::engine::Engine;
use crate::forwarded::{BadProxy, parse_trusted};
use crate::limits::Buckets;
use crate::metrics::Metrics;
use crate::pii::Filter;
use crate::request_window::Windows;
use crate::session::Sessions;
use crate::shared::Store;

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
    #[error(transparent)]
    TrustedProxies(#[from] BadProxy),
    #[error("auth.policy: {0}")]
    Policy(#[from] securechat_crds::policy::PolicyError),
}

/// The config in force: validated, with its compiled parts (the
/// sensitive-data filter, the token policy). A reload or an admin PATCH
/// builds a new one and swaps it in whole.
pub struct LiveConfig {
    pub config: ServerConfig,
    pub filter: Filter,
    pub policy: TokenPolicy,
    /// `limits.trustedProxies`, parsed.
    pub trusted_proxies: Vec<IpNet>,
    /// `auth.policy`, compiled.
    pub access_policy: Option<securechat_crds::policy::Policy>,
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
        let ranges: Vec<String> = config
            .limits
            .trusted_proxies
            .iter()
            .map(|c| c.0.clone())
            .collect();
        let trusted_proxies = parse_trusted(&ranges)?;
        let access_policy = match &config.auth.policy {
            Some(source) => Some(securechat_crds::policy::Policy::compile(source)?),
            None => None,
        };
        Ok(Self {
            config,
            filter,
            policy,
            trusted_proxies,
            access_policy,
        })
    }
}

pub use crate::shared::usage::KeyUsage;

/// Whose usage figures an answer reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum UsageScope {
    /// Every replica's (the shared store's totals).
    Model,
    /// This replica's since it started (no store, or the store failed).
    Replica,
}

/// What a state is built with besides its files: the metrics and, with
/// `sharedState`, the store (which reports into those metrics).
pub struct Services {
    pub metrics: Metrics,
    pub store: Option<Arc<Store>>,
    /// This process's pod and node, for the audit lines.
    pub placement: Placement,
}

/// What every request reads; [`AppState`] clones it per request as one Arc.
pub struct AppStateInner {
    pub engine: Arc<dyn Engine>,
    /// The config in force, swapped whole on a reload or an admin PATCH.
    pub live_config: ArcSwap<LiveConfig>,
    pub signing: ArcSwap<SigningMaterial>,
    pub api_keys: ArcSwap<ApiKeyTable>,
    pub cert_not_after: Mutex<Option<DateTime<Utc>>>,
    /// The latest notAfter of the client certificates accepted for each
    /// SPIFFE ID (`auth.mtls`), for the expiry gauge: a client still
    /// presenting a nearly expired certificate is not getting its renewals.
    pub client_cert_not_after: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Requests per principal.
    pub request_buckets: Buckets,
    /// Prompt and generated tokens per principal (minute and day budgets).
    pub token_buckets: Buckets,
    /// Failed authentications per client address.
    pub failure_buckets: Buckets,
    /// The store the replicas share, when configured.
    pub store: Option<Arc<Store>>,
    /// This process's usage per key since it started.
    pub usage: Mutex<HashMap<String, KeyUsage>>,
    /// With a store: usage not yet flushed to it (`shared::usage`).
    pub usage_pending: Mutex<HashMap<String, KeyUsage>>,
    pub metrics: Metrics,
    /// JWKS caches of the external OIDC issuers.
    pub oidc: Arc<OidcVerifier>,
    /// Where PATCH /admin/config persists the merged config, when writable.
    pub config_path: Option<PathBuf>,
    /// Web UI sessions and SSO logins in progress.
    pub sessions: Sessions,
    /// Requests per caller in its current window (`auth.policy`'s
    /// `input.usage`).
    pub policy_windows: Windows,
    /// This process's pod and node, written into every audit line.
    pub placement: Placement,
    /// WeChat Work corp access tokens (its documents ask for caching).
    pub wecom_tokens: crate::credentials::wecom::TokenCache,
    /// One breaker per web sign-in provider (`oauth2:<name>`), around the
    /// code exchange and the user lookups behind it.
    pub sign_in_breakers: crate::breaker::Breakers,
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
        services: Services,
    ) -> Self {
        let Services {
            metrics,
            store,
            placement,
        } = services;
        let max = live_config.config.limits.max_tracked_clients as usize;
        let sign_in_breakers = crate::breaker::Breakers::new(
            live_config.config.outbound.circuit_breaker,
            metrics.circuits.clone(),
        );
        let sessions = Sessions::new(max, store.clone());
        let buckets = |family: &'static str| match &store {
            Some(store) => Buckets::shared(store.clone(), family, max),
            None => Buckets::memory(max),
        };
        Self(Arc::new(AppStateInner {
            engine,
            live_config: ArcSwap::from_pointee(live_config),
            signing: ArcSwap::from_pointee(signing),
            api_keys: ArcSwap::from_pointee(api_keys),
            cert_not_after: Mutex::new(None),
            client_cert_not_after: Mutex::new(HashMap::new()),
            request_buckets: buckets("requests"),
            token_buckets: buckets("tokens"),
            failure_buckets: buckets("auth_failures"),
            store,
            usage: Mutex::new(HashMap::new()),
            usage_pending: Mutex::new(HashMap::new()),
            metrics,
            oidc,
            config_path,
            sessions,
            policy_windows: Windows::new(max),
            placement,
            wecom_tokens: Default::default(),
            sign_in_breakers,
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

    /// Remembers an accepted client certificate's expiry. At most
    /// `limits.maxTrackedClients` identities are tracked; expired entries
    /// are dropped at each scrape.
    pub fn note_client_certificate(&self, spiffe_id: &str, not_after: DateTime<Utc>) {
        let max = self.live_config().config.limits.max_tracked_clients as usize;
        let mut map = self
            .client_cert_not_after
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let full = map.len() >= max;
        match map.get_mut(spiffe_id) {
            Some(latest) => *latest = (*latest).max(not_after),
            None if !full => {
                map.insert(spiffe_id.to_string(), not_after);
            }
            None => {}
        }
    }

    /// Adds to a key's usage: this process's figures and counters, and,
    /// with a store, the deltas its next flush sends.
    pub fn record_usage(
        &self,
        key_id: &str,
        prompt: u64,
        completion: u64,
        request: bool,
        now: DateTime<Utc>,
    ) {
        // Bounded like the limiters: ids come from the key table, which the
        // operator bounds, so this cannot grow from unauthenticated input.
        let delta = KeyUsage {
            requests: u64::from(request),
            prompt_tokens: prompt,
            completion_tokens: completion,
            last_used_at: Some(now),
        };
        self.metrics
            .key_usage(key_id, delta.requests, prompt, completion);
        self.usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key_id.to_string())
            .or_default()
            .add(&delta);
        if self.store.is_some() {
            self.usage_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key_id.to_string())
                .or_default()
                .add(&delta);
        }
    }

    /// Sends the pending deltas to the store; on failure they stay pending
    /// (merged with what was recorded meanwhile) for the next flush.
    pub async fn flush_usage(&self) {
        let Some(store) = &self.store else { return };
        let deltas =
            std::mem::take(&mut *self.usage_pending.lock().unwrap_or_else(|e| e.into_inner()));
        if deltas.is_empty() {
            return;
        }
        if store.add_usage(&deltas).await.is_err() {
            let mut pending = self.usage_pending.lock().unwrap_or_else(|e| e.into_inner());
            for (id, delta) in deltas {
                pending.entry(id).or_default().add(&delta);
            }
        }
    }

    /// Usage of `ids`: the whole model's (store totals plus this replica's
    /// unflushed deltas) when there is a store that answers, else this
    /// replica's.
    pub async fn usage_of(&self, ids: &[String]) -> (HashMap<String, KeyUsage>, UsageScope) {
        if let Some(store) = &self.store
            && let Ok(mut totals) = store.usage(ids).await
        {
            let pending = self.usage_pending.lock().unwrap_or_else(|e| e.into_inner());
            for (id, total) in &mut totals {
                if let Some(delta) = pending.get(id) {
                    total.add(delta);
                }
            }
            return (totals, UsageScope::Model);
        }
        let local = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let figures = ids
            .iter()
            .map(|id| (id.clone(), local.get(id).cloned().unwrap_or_default()))
            .collect();
        (figures, UsageScope::Replica)
    }
}
