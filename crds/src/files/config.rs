//! `config.yaml`: the server configuration.
//!
//! The policy sections reuse the SecureChatModel spec types, so the operator
//! copies them from the resource without translation and a standalone user
//! writes the same YAML they would write under `spec:`. Paths are relative
//! to the directory of the config file (in a pod: the mounted ConfigMap; the
//! operator writes absolute paths of the mounted Secrets).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ValidationError, names};
use crate::Duration;
use crate::v1alpha1::{
    AuditSpec, Cidr, CorsSpec, DEFAULT_MAX_TOKENS, DEFAULT_SHARED_STATE_TIMEOUT,
    DEFAULT_TEMPERATURE, DEFAULT_TOP_P, MAX_LEEWAY, MAX_TOKEN_TTL, MIN_PROMPT_TOKENS,
    MIN_TOKEN_TTL, ModelDtype, ModelFamily, MtlsMode, OidcIssuer, OnUnavailable, RateLimitSpec,
    RolesSpec, SensitiveDataSpec, ServingSpec, SpiffeAllow, SpiffePattern, TierSpec, TlsVersion,
    WebSsoKind, WebSsoProvider,
};

/// The whole configuration file. `Default` equals an empty YAML document:
/// every section's defaults live in its own type.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerConfig {
    /// The model id clients name in requests and /v1/models lists. The
    /// operator writes the SecureChatModel's name. Default: the model
    /// file's own name. The file's own name is accepted either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model_name: Option<String>,
    /// What the model files must be.
    #[serde(default, skip_serializing_if = "ModelConfig::is_default")]
    pub model: ModelConfig,
    /// Where the certificate, keyset and key table are.
    #[serde(default)]
    pub files: FilePaths,
    /// Listener TLS settings.
    #[serde(default)]
    pub tls: ServerTls,
    /// Sampling defaults for requests that do not set them.
    #[serde(default)]
    pub generation: GenerationDefaults,
    /// Token issuing and verification.
    #[serde(default)]
    pub auth: ServerAuth,
    /// Permission tiers and their quotas, as in `spec.roles`.
    #[serde(default)]
    pub roles: RolesSpec,
    /// Per-principal limits, as in `spec.rateLimit`.
    #[serde(default)]
    pub rate_limit: RateLimitSpec,
    /// Browser origins, as in `spec.cors`.
    #[serde(default)]
    pub cors: CorsSpec,
    /// The sensitive-data filter, as in `spec.sensitiveData`.
    #[serde(default)]
    pub sensitive_data: SensitiveDataSpec,
    /// The audit log, as in `spec.audit`.
    #[serde(default)]
    pub audit: AuditSpec,
    /// Limits that protect the server itself.
    #[serde(default)]
    pub limits: Limits,
    /// The web chat UI.
    #[serde(default, skip_serializing_if = "WebConfig::is_default")]
    pub web: WebConfig,
    /// Continuous batching, KV cache and queueing, as in `spec.serving`.
    #[serde(default)]
    pub serving: ServingSpec,
    /// The store the replicas share (`spec.sharedState`). Unset: limits,
    /// sessions and usage live in this process only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_state: Option<SharedStateConfig>,
    /// Calls to other services (OIDC issuers, the shared store): their
    /// timeout and circuit breakers. Read at start.
    #[serde(default, skip_serializing_if = "OutboundConfig::is_default")]
    pub outbound: OutboundConfig,
}

/// What the model files must be. The model path itself is a command-line
/// argument (in a pod: the Deployment's), read once at start.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelConfig {
    /// The family the files must hold (a SecureChatModel's
    /// `spec.model.family`): the server refuses to start when it detects
    /// another one. Unset: whatever the files hold is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<ModelFamily>,
    /// Context window in tokens (`spec.model.contextLength`): caps prompt +
    /// generation of every request and sizes the KV block tables. Unset:
    /// what the model file declares. Larger than the file's: refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    /// Number format of safetensors weights (`spec.model.dtype`). Unset:
    /// Auto (BF16 on a GPU, F16 on the CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<ModelDtype>,
}

impl ModelConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Where the other files are.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilePaths {
    /// The PEM certificate chain (default `tls/tls.crt`).
    #[serde(default = "default_tls_cert")]
    pub tls_cert: PathBuf,
    /// Its PEM private key (default `tls/tls.key`).
    #[serde(default = "default_tls_key")]
    pub tls_key: PathBuf,
    /// The signing keyset (default `signing-keys/keyset.json`).
    #[serde(default = "default_keyset")]
    pub signing_keys: PathBuf,
    /// The API-key table (default `api-keys.json`).
    #[serde(default = "default_api_keys")]
    pub api_keys: PathBuf,
    /// The PEM CA bundle client certificates must chain to, read when
    /// `auth.mtls.mode` is not Disabled (default `tls/ca.crt`). Like every
    /// path here it is fixed at start; its content is reloaded.
    #[serde(default = "default_client_ca_bundle")]
    pub client_ca_bundle: PathBuf,
}

impl Default for FilePaths {
    fn default() -> Self {
        Self {
            tls_cert: default_tls_cert(),
            tls_key: default_tls_key(),
            signing_keys: default_keyset(),
            api_keys: default_api_keys(),
            client_ca_bundle: default_client_ca_bundle(),
        }
    }
}

fn default_tls_cert() -> PathBuf {
    Path::new("tls").join(names::TLS_CERT)
}
fn default_tls_key() -> PathBuf {
    Path::new("tls").join(names::TLS_KEY)
}
fn default_keyset() -> PathBuf {
    Path::new("signing-keys").join(names::KEYSET)
}
fn default_api_keys() -> PathBuf {
    PathBuf::from(names::API_KEYS)
}
fn default_client_ca_bundle() -> PathBuf {
    Path::new("tls").join(names::CA_CERT)
}

impl FilePaths {
    /// The same paths with absolute ones taken below `root` instead of `/`:
    /// a pod's config (which names its mounts, /etc/securechat/...) run
    /// outside the pod against a copy of those mounts under `root`.
    pub fn rerooted(&self, root: &Path) -> FilePaths {
        let r = |p: &PathBuf| match p.strip_prefix("/") {
            Ok(relative) => root.join(relative),
            Err(_) => p.clone(),
        };
        FilePaths {
            tls_cert: r(&self.tls_cert),
            tls_key: r(&self.tls_key),
            signing_keys: r(&self.signing_keys),
            api_keys: r(&self.api_keys),
            client_ca_bundle: r(&self.client_ca_bundle),
        }
    }

    /// The same paths with relative ones resolved against `base` (the
    /// config file's directory).
    pub fn resolved(&self, base: &Path) -> FilePaths {
        let r = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        };
        FilePaths {
            tls_cert: r(&self.tls_cert),
            tls_key: r(&self.tls_key),
            signing_keys: r(&self.signing_keys),
            api_keys: r(&self.api_keys),
            client_ca_bundle: r(&self.client_ca_bundle),
        }
    }
}

/// Listener TLS settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTls {
    /// "1.2" or "1.3" (default).
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// Sampling defaults for requests that do not set them (the seed's values).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenerationDefaults {
    /// Tokens generated per answer when a request does not say.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Sampling temperature; 0 means greedy.
    #[serde(default = "default_temperature", serialize_with = "shortest_f32")]
    pub temperature: f32,
    /// Nucleus-sampling probability mass.
    #[serde(default = "default_top_p", serialize_with = "shortest_f32")]
    pub top_p: f32,
}

/// Writes an f32 as the shortest decimal that reads back as the same f32,
/// which is what the user wrote: JSON and YAML numbers are f64, and the
/// plain widening turns 0.7 into 0.699999988079071 in `GET /admin/config`
/// and in the file every `PATCH` persists.
fn shortest_f32<S: serde::Serializer>(value: &f32, serializer: S) -> Result<S::Ok, S::Error> {
    // `Display` prints the shortest round-tripping digits; parsing them as
    // an f64 cannot fail (NaN and inf included), the fallback is a formality.
    let decimal = value.to_string().parse().unwrap_or(f64::from(*value));
    serializer.serialize_f64(decimal)
}

impl Default for GenerationDefaults {
    fn default() -> Self {
        Self {
            max_tokens: default_max_tokens(),
            temperature: default_temperature(),
            top_p: default_top_p(),
        }
    }
}

fn default_max_tokens() -> u32 {
    DEFAULT_MAX_TOKENS
}
fn default_temperature() -> f32 {
    DEFAULT_TEMPERATURE as f32
}
fn default_top_p() -> f32 {
    DEFAULT_TOP_P as f32
}

/// Token issuing and verification.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerAuth {
    /// `iss` of issued tokens, and required of tokens verified with the
    /// server's own keys.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// `aud` of issued tokens, and required of them.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Lifetime of issued access tokens.
    #[serde(default = "default_token_ttl", rename = "tokenTTL")]
    pub token_ttl: Duration,
    /// Clock-skew allowance for exp / nbf / iat.
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
    /// External OpenID Connect issuers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oidc: Vec<OidcIssuer>,
    /// A Rego module (`package securechat`, see [`crate::policy`]) asked
    /// about every authorised request; the operator writes the text of
    /// `spec.auth.policy` here. Unset: the tier table alone decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Client certificates on the API port, as in `spec.auth.mtls` (the
    /// trust bundle is the file `files.clientCaBundle`).
    #[serde(default, skip_serializing_if = "ServerMtls::is_default")]
    pub mtls: ServerMtls,
}

/// Client certificates on the API port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerMtls {
    /// Disabled (default), Optional or Required.
    #[serde(default)]
    pub mode: MtlsMode,
    /// SPIFFE ID patterns and their tiers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<SpiffeAllow>,
}

impl ServerMtls {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for ServerAuth {
    fn default() -> Self {
        Self {
            issuer: default_issuer(),
            audience: default_audience(),
            token_ttl: default_token_ttl(),
            leeway: default_leeway(),
            oidc: Vec::new(),
            policy: None,
            mtls: ServerMtls::default(),
        }
    }
}

fn default_issuer() -> String {
    "https://localhost:8000".into()
}
fn default_audience() -> String {
    "securechat".into()
}
fn default_token_ttl() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_leeway() -> Duration {
    Duration::from_secs(5)
}

/// Resource limits that protect the server itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Largest request body; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Failed authentications per minute from one client address before
    /// it is throttled (brute-force guard); at least 3, as a throttled
    /// address's valid keys are refused too.
    #[serde(default = "default_max_auth_failures")]
    pub max_auth_failures_per_minute: u32,
    /// Principals and addresses the limiters remember; the idlest are
    /// evicted beyond this, so memory stays bounded.
    #[serde(default = "default_max_tracked")]
    pub max_tracked_clients: u32,
    /// How long a client may take to send a request's headers (from the
    /// connection's first byte, or the end of its previous request); a
    /// slower one is disconnected (slowloris).
    #[serde(default = "default_read_timeout")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request body once the handler
    /// starts reading it; a slower one gets 408.
    #[serde(default = "default_read_timeout")]
    pub body_read_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` names the client address the
    /// brute-force guard keys on (`spec.network.trustedProxies`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<Cidr>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body_bytes(),
            max_auth_failures_per_minute: default_max_auth_failures(),
            max_tracked_clients: default_max_tracked(),
            header_read_timeout: default_read_timeout(),
            trusted_proxies: Vec::new(),
            body_read_timeout: default_read_timeout(),
        }
    }
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}
fn default_max_auth_failures() -> u32 {
    20
}
fn default_max_tracked() -> u32 {
    10_000
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The web chat UI on the web port: browser sessions and "Sign in with
/// SSO" (OpenID Connect authorization code flow with PKCE).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebConfig {
    /// Longest life of a browser session. An SSO session also ends with
    /// its ID token, an API-key session with its key.
    #[serde(default = "default_session_ttl", rename = "sessionTTL")]
    pub session_ttl: Duration,
    /// Identity providers offered on the login page. Each names an
    /// `auth.oidc` issuer, which supplies the role claim mapping.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sso: Vec<SsoClient>,
    /// Plain-OAuth2 sign-in providers (`spec.web.sso`: generic OAuth2 and
    /// WeChat Work).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oauth2: Vec<OAuth2Client>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            session_ttl: default_session_ttl(),
            sso: Vec::new(),
            oauth2: Vec::new(),
        }
    }
}

/// A plain-OAuth2 sign-in provider as the server reads it: the spec's
/// entry as it is, and its client secret as a mounted file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OAuth2Client {
    /// The `spec.web.sso` entry (its `clientSecretName` is not read).
    pub provider: WebSsoProvider,
    /// File holding the client secret (WeCom: the corpsecret), read at
    /// each login so a rotated Secret applies at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
}

/// The path an OAuth2 provider's redirect URL must end with.
pub const OAUTH2_CALLBACK_PATH: &str = "/web/oauth2/callback";

impl WebConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}

/// This server as an OpenID Connect relying party of one issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SsoClient {
    /// An `auth.oidc[].issuerURL`.
    #[serde(rename = "issuerURL")]
    pub issuer_url: String,
    /// OAuth2 client id; the ID token's `aud` must contain it. Default:
    /// that `auth.oidc` entry's `clientId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// File holding the client secret (a mounted Secret; read at each
    /// login so a rotated secret applies at once). Unset: a public client
    /// (PKCE alone protects the code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// Where the provider sends the browser back: must be registered with
    /// it and end in `/web/sso/callback`. Unset: `https://<Host of the
    /// login request>/web/sso/callback`.
    #[serde(
        default,
        rename = "redirectURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub redirect_url: Option<String>,
    /// Requested scopes; must include `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Label of the login button. Default: the issuer URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

impl SsoClient {
    /// A public client of `issuer_url` with every default (client id from
    /// the `auth.oidc` entry, redirect URL from the request's Host).
    pub fn for_issuer(issuer_url: &str) -> Self {
        Self {
            issuer_url: issuer_url.to_string(),
            client_id: None,
            client_secret_file: None,
            redirect_url: None,
            scopes: default_scopes(),
            display_name: None,
        }
    }
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into()]
}

/// The shared store as the server reads it: `spec.sharedState` with the
/// Secret and ConfigMap references turned into the files the operator
/// mounts (re-read when they change, like the other mounted files).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SharedStateConfig {
    /// `host:port` of the Valkey / Redis 7+ server.
    pub address: String,
    /// TLS to the store. Unset: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SharedStateTlsFiles>,
    /// File holding the ACL user name. Unset: the default user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_file: Option<PathBuf>,
    /// File holding the password. Unset: no AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Prefix of every key (the operator writes `<namespace>/<name>/`).
    pub key_prefix: String,
    /// What limited endpoints do while the store cannot be reached.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// Budget of one store operation.
    #[serde(default = "default_shared_state_timeout")]
    pub timeout: Duration,
    /// Replicas of the model (the operator writes `spec.replicas`): under
    /// `LocalFallback` each replica enforces limit / replicas.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
}

/// The store's CA bundle and the name its certificate must carry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SharedStateTlsFiles {
    /// PEM CA bundle file.
    pub ca_file: PathBuf,
    /// Name to verify. Default: the host of `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

fn default_shared_state_timeout() -> Duration {
    DEFAULT_SHARED_STATE_TIMEOUT
}
fn default_replicas() -> u32 {
    1
}

/// Calls to other services. Read once at start (the clients and breakers
/// are built then).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundConfig {
    /// Longest wait for one OIDC discovery or JWKS request (the shared
    /// store has its own, `sharedState.timeout`).
    #[serde(default = "default_outbound_timeout")]
    pub timeout: Duration,
    /// Least time between two JWKS refetches caused by tokens with an
    /// unknown `kid` after a successful fetch (failed fetches are governed
    /// by the circuit breaker instead).
    #[serde(default = "default_min_refetch")]
    pub min_refetch_interval: Duration,
    /// When a dependency's breaker opens, and for how long.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            timeout: default_outbound_timeout(),
            min_refetch_interval: default_min_refetch(),
            circuit_breaker: CircuitBreakerConfig::default(),
        }
    }
}

impl OutboundConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_outbound_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_min_refetch() -> Duration {
    Duration::from_secs(30)
}

/// A circuit breaker's thresholds: it opens after `consecutiveFailures`
/// failed calls in a row, or when at least `failureRatePercent` of the last
/// `window` calls failed (once `minimumCalls` were made); it stays open for
/// `coolDown`, then lets one call probe.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Failed calls in a row that open the breaker.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// Share of failed calls in the window that opens it (1-100).
    #[serde(default = "default_failure_rate")]
    pub failure_rate_percent: u32,
    /// Calls in the window before the rate counts.
    #[serde(default = "default_minimum_calls")]
    pub minimum_calls: u32,
    /// Calls the rate is taken over.
    #[serde(default = "default_breaker_window")]
    pub window: u32,
    /// How long an open breaker refuses calls before one probes.
    #[serde(default = "default_cool_down")]
    pub cool_down: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            failure_rate_percent: default_failure_rate(),
            minimum_calls: default_minimum_calls(),
            window: default_breaker_window(),
            cool_down: default_cool_down(),
        }
    }
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_failure_rate() -> u32 {
    50
}
fn default_minimum_calls() -> u32 {
    10
}
fn default_breaker_window() -> u32 {
    20
}
fn default_cool_down() -> Duration {
    Duration::from_secs(30)
}

/// The path the SSO redirect URL must end with (the route that finishes
/// the login).
pub const SSO_CALLBACK_PATH: &str = "/web/sso/callback";

impl ServerConfig {
    /// The client id of an SSO entry (its own, else its issuer's).
    pub fn sso_client_id<'a>(&'a self, sso: &'a SsoClient) -> Option<&'a str> {
        sso.client_id.as_deref().or_else(|| {
            self.auth
                .oidc
                .iter()
                .find(|o| {
                    o.issuer_url.trim_end_matches('/') == sso.issuer_url.trim_end_matches('/')
                })
                .and_then(|o| o.client_id.as_deref())
        })
    }

    /// Parses YAML; an empty document gives the defaults.
    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml::Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text)
    }

    /// Checks that the regular-expression syntax of custom patterns cannot
    /// catch (the server compiles them and refuses the file if they do not
    /// compile).
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut problems = Vec::new();
        if self.auth.issuer.is_empty() {
            problems.push("auth.issuer: must not be empty".to_string());
        }
        if self.auth.audience.is_empty() {
            problems.push("auth.audience: must not be empty".to_string());
        }
        if self.auth.leeway > MAX_LEEWAY {
            problems.push(format!(
                "auth.leeway: must be at most {MAX_LEEWAY} (5s is recommended)"
            ));
        }
        if !(MIN_TOKEN_TTL..=MAX_TOKEN_TTL).contains(&self.auth.token_ttl) {
            problems.push(format!(
                "auth.tokenTTL: must be between {MIN_TOKEN_TTL} and {MAX_TOKEN_TTL}"
            ));
        }
        for (i, oidc) in self.auth.oidc.iter().enumerate() {
            if !oidc.issuer_url.starts_with("https://") {
                problems.push(format!("auth.oidc[{i}].issuerURL: must be an https URL"));
            }
        }
        let breaker = &self.outbound.circuit_breaker;
        if self.outbound.timeout.as_std().is_zero() {
            problems.push("outbound.timeout: must be more than 0s".to_string());
        }
        if breaker.consecutive_failures < 1 {
            problems.push("outbound.circuitBreaker.consecutiveFailures: at least 1".to_string());
        }
        if !(1..=100).contains(&breaker.failure_rate_percent) {
            problems
                .push("outbound.circuitBreaker.failureRatePercent: between 1 and 100".to_string());
        }
        if breaker.minimum_calls < 1 || breaker.minimum_calls > breaker.window {
            problems.push(
                "outbound.circuitBreaker.minimumCalls: at least 1 and at most window".to_string(),
            );
        }
        for (i, allow) in self.auth.mtls.allow.iter().enumerate() {
            if let Err(e) = SpiffePattern::parse(&allow.spiffe_id) {
                problems.push(format!("auth.mtls.allow[{i}].spiffeID: {e}"));
            }
        }
        if self.rate_limit.requests_per_minute < 1 {
            problems.push("rateLimit.requestsPerMinute: must be at least 1".to_string());
        }
        if self.rate_limit.burst.is_some_and(|b| b < 1) {
            problems.push("rateLimit.burst: must be at least 1".to_string());
        }
        if self.rate_limit.tokens_per_minute.is_some_and(|t| t < 1) {
            problems.push("rateLimit.tokensPerMinute: must be at least 1".to_string());
        }
        for (name, tier) in [
            ("readOnly", &self.roles.read_only),
            ("developer", &self.roles.developer),
            ("admin", &self.roles.admin),
        ] {
            tier_problems(name, tier, &mut problems);
        }
        if self.limits.max_auth_failures_per_minute < MIN_AUTH_FAILURES_PER_MINUTE {
            problems.push(format!(
                "limits.maxAuthFailuresPerMinute: must be at least {MIN_AUTH_FAILURES_PER_MINUTE}"
            ));
        }
        if !(0.0..=2.0).contains(&self.generation.temperature) {
            problems.push("generation.temperature: must be between 0 and 2".to_string());
        }
        if !(self.generation.top_p > 0.0 && self.generation.top_p <= 1.0) {
            problems.push("generation.topP: must be in (0, 1]".to_string());
        }
        if self.generation.max_tokens == 0 {
            problems.push("generation.maxTokens: must be at least 1".to_string());
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.limits.max_body_bytes) {
            problems.push("limits.maxBodyBytes: must be between 1KiB and 64MiB".to_string());
        }
        if self.limits.max_tracked_clients == 0 {
            problems.push("limits.maxTrackedClients: must be at least 1".to_string());
        }
        for (field, value) in [
            ("headerReadTimeout", self.limits.header_read_timeout),
            ("bodyReadTimeout", self.limits.body_read_timeout),
        ] {
            if value < Duration::from_secs(1) || value > Duration::from_secs(600) {
                problems.push(format!("limits.{field}: must be between 1s and 10m"));
            }
        }
        for (i, origin) in self.cors.allowed_origins.iter().enumerate() {
            if !(origin.0.starts_with("https://") || origin.0.starts_with("http://"))
                || origin.0.ends_with('/')
            {
                problems.push(format!(
                    "cors.allowedOrigins[{i}]: must be scheme://host[:port] without a path"
                ));
            }
        }
        if self.web.session_ttl < Duration::from_secs(60)
            || self.web.session_ttl > Duration::from_secs(7 * 24 * 3600)
        {
            problems.push("web.sessionTTL: must be between 1m and 7d".to_string());
        }
        for (i, sso) in self.web.sso.iter().enumerate() {
            let known = self.auth.oidc.iter().any(|o| {
                o.issuer_url.trim_end_matches('/') == sso.issuer_url.trim_end_matches('/')
            });
            if !known {
                problems.push(format!(
                    "web.sso[{i}].issuerURL: must be one of auth.oidc[].issuerURL"
                ));
            }
            if self.sso_client_id(sso).is_none_or(str::is_empty) {
                problems.push(format!(
                    "web.sso[{i}].clientId: required (here or in the auth.oidc entry)"
                ));
            }
            if let Some(url) = &sso.redirect_url
                && !(url.starts_with("https://") && url.ends_with(SSO_CALLBACK_PATH))
            {
                problems.push(format!(
                    "web.sso[{i}].redirectURL: must be an https URL ending in {SSO_CALLBACK_PATH}"
                ));
            }
            if !sso.scopes.iter().any(|s| s == "openid") {
                problems.push(format!("web.sso[{i}].scopes: must include openid"));
            }
            if sso
                .scopes
                .iter()
                .any(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
            {
                problems.push(format!(
                    "web.sso[{i}].scopes: each scope is one non-empty word"
                ));
            }
        }
        for (i, client) in self.web.oauth2.iter().enumerate() {
            oauth2_problems(i, client, &self.web.oauth2, &mut problems);
        }
        ValidationError::check(problems)
    }
}

/// What is wrong with `web.oauth2[i]` (the rules the CRD's CEL also
/// states, for standalone configs).
fn oauth2_problems(
    i: usize,
    client: &OAuth2Client,
    all: &[OAuth2Client],
    problems: &mut Vec<String>,
) {
    let p = &client.provider;
    let field = |f: &str| format!("web.oauth2[{i}].provider.{f}");
    if p.name.is_empty()
        || !p
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        problems.push(format!(
            "{}: lowercase letters, digits and '-'",
            field("name")
        ));
    }
    if all.iter().filter(|c| c.provider.name == p.name).count() > 1 {
        problems.push(format!(
            "{}: {:?} is used by another provider",
            field("name"),
            p.name
        ));
    }
    if p.client_id.is_empty() {
        problems.push(format!("{}: required", field("clientId")));
    }
    if p.client_secret_name.is_some() {
        problems.push(format!(
            "{}: not read by the server; give clientSecretFile (the operator mounts the Secret there)",
            field("clientSecretName")
        ));
    }
    if let Some(url) = &p.redirect_url
        && !(url.starts_with("https://") && url.ends_with(OAUTH2_CALLBACK_PATH))
    {
        problems.push(format!(
            "{}: must be an https URL ending in {OAUTH2_CALLBACK_PATH}",
            field("redirectURL")
        ));
    }
    let https = |name: &str, url: &str, problems: &mut Vec<String>| {
        if !url.starts_with("https://") {
            problems.push(format!("{}: must be an https URL", field(name)));
        }
    };
    match (p.kind, &p.oauth2, &p.wecom) {
        (WebSsoKind::OAuth2, Some(o), None) => {
            https("oauth2.authorizeURL", &o.authorize_url, problems);
            https("oauth2.tokenURL", &o.token_url, problems);
            https("oauth2.userInfoURL", &o.user_info_url, problems);
            let pointers = [
                ("oauth2.userIdPointer", Some(&o.user_id_pointer)),
                ("oauth2.displayNamePointer", o.display_name_pointer.as_ref()),
                ("oauth2.rolePointer", o.role_pointer.as_ref()),
            ];
            for (name, pointer) in pointers {
                if pointer.is_some_and(|ptr| !ptr.starts_with('/')) {
                    problems.push(format!("{}: a JSON pointer starts with /", field(name)));
                }
            }
        }
        (WebSsoKind::WeCom, None, Some(w)) => {
            if client.client_secret_file.is_none() {
                problems.push(format!(
                    "web.oauth2[{i}].clientSecretFile: WeCom needs the corpsecret"
                ));
            }
            if w.agent_id.is_empty() || !w.agent_id.bytes().all(|b| b.is_ascii_digit()) {
                problems.push(format!(
                    "{}: the app's numeric AgentId",
                    field("wecom.agentId")
                ));
            }
            https("wecom.apiBaseURL", w.api_base(), problems);
            https("wecom.authorizeURL", w.authorize(), problems);
        }
        (WebSsoKind::OAuth2, _, _) => problems.push(format!(
            "{}: kind OAuth2 needs the oauth2 section and no wecom section",
            field("kind")
        )),
        (WebSsoKind::WeCom, _, _) => problems.push(format!(
            "{}: kind WeCom needs the wecom section and no oauth2 section",
            field("kind")
        )),
    }
}

/// The fewest failed authentications an address may make per minute. The
/// guard refuses an address's valid keys too once it trips: at 0 or 1 a
/// single typo (or one stranger behind the same NAT) locks everyone there
/// out for a minute.
pub const MIN_AUTH_FAILURES_PER_MINUTE: u32 = 3;

/// A tier's quotas: a value below its minimum would refuse every caller of
/// the tier (the limiters count 0 as 1, which is no less of a lockout).
fn tier_problems(name: &str, tier: &TierSpec, problems: &mut Vec<String>) {
    for (field, value, min) in [
        ("requestsPerMinute", tier.requests_per_minute, 1),
        ("tokensPerMinute", tier.tokens_per_minute, 1),
        ("tokensPerDay", tier.tokens_per_day, 1),
        ("maxTokensPerRequest", tier.max_tokens_per_request, 1),
        ("maxPromptTokens", tier.max_prompt_tokens, MIN_PROMPT_TOKENS),
    ] {
        if value.is_some_and(|v| v < min) {
            problems.push(format!("roles.{name}.{field}: must be at least {min}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1alpha1::{FilterAction, Origin};

    #[test]
    fn empty_document_gives_seed_defaults() {
        let c = ServerConfig::from_yaml("").unwrap();
        assert_eq!(c, ServerConfig::from_yaml("{}").unwrap());
        assert_eq!(c.rate_limit.requests_per_minute, 10);
        assert_eq!(c.auth.token_ttl, Duration::from_secs(1800));
        assert_eq!(c.auth.leeway, Duration::from_secs(5));
        assert_eq!(c.generation.max_tokens, 2048);
        assert!(c.cors.allowed_origins.is_empty());
        assert_eq!(c.tls.min_version, TlsVersion::V1_3);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(30));
        assert_eq!(c.limits.body_read_timeout, Duration::from_secs(30));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn reads_the_spec_shaped_sections() {
        let yaml = r#"
auth:
  issuer: https://chat.example
  audience: chat
  tokenTTL: 10m
rateLimit:
  requestsPerMinute: 60
  burst: 5
cors:
  allowedOrigins: ["https://app.example"]
sensitiveData:
  action: Reject
  customPatterns:
    - name: employee-id
      regex: "EMP-[0-9]{6}"
tls:
  minVersion: "1.2"
files:
  apiKeys: /etc/securechat/api-keys/api-keys.json
"#;
        let c = ServerConfig::from_yaml(yaml).unwrap();
        assert_eq!(c.auth.token_ttl, Duration::from_secs(600));
        assert_eq!(c.rate_limit.burst, Some(5));
        assert_eq!(
            c.cors.allowed_origins,
            vec![Origin("https://app.example".into())]
        );
        assert_eq!(c.sensitive_data.action, FilterAction::Reject);
        assert_eq!(c.tls.min_version, TlsVersion::V1_2);
        let files = c.files.resolved(Path::new("/cfg"));
        assert_eq!(
            files.api_keys,
            PathBuf::from("/etc/securechat/api-keys/api-keys.json")
        );
        assert_eq!(files.tls_cert, PathBuf::from("/cfg/tls/tls.crt"));
        assert!(c.validate().is_ok());
        let outside = files.rerooted(Path::new("demo/pod"));
        assert_eq!(
            outside.api_keys,
            PathBuf::from("demo/pod/etc/securechat/api-keys/api-keys.json")
        );
        assert_eq!(outside.tls_cert, PathBuf::from("demo/pod/cfg/tls/tls.crt"));
    }

    #[test]
    fn the_model_family_is_read_and_absent_when_unset() {
        let c = ServerConfig::from_yaml("model:\n  family: ChatGLM3\n").unwrap();
        assert_eq!(c.model.family, Some(ModelFamily::ChatGLM3));
        let yaml = serde_yaml::to_string(&ServerConfig::default()).unwrap();
        assert!(!yaml.contains("model:"), "{yaml}");
    }

    #[test]
    fn the_model_dtype_is_read_and_a_wrong_one_refused() {
        let c = ServerConfig::from_yaml("model:\n  dtype: BF16\n").unwrap();
        assert_eq!(c.model.dtype, Some(ModelDtype::BF16));
        let c = ServerConfig::from_yaml("model:\n  family: GLM4\n").unwrap();
        assert_eq!(c.model.dtype, None);
        assert!(ServerConfig::from_yaml("model:\n  dtype: int3\n").is_err());
    }

    #[test]
    fn typos_are_refused_not_ignored() {
        let err = ServerConfig::from_yaml("rateLimits: {}\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validation_names_each_bad_field() {
        let mut c = ServerConfig::default();
        c.auth.issuer.clear();
        c.auth.leeway = Duration::from_secs(120);
        c.auth.token_ttl = Duration::from_secs(10);
        c.rate_limit.requests_per_minute = 0;
        c.generation.temperature = 3.0;
        c.limits.max_body_bytes = 10;
        c.limits.header_read_timeout = Duration::from_secs(0);
        c.limits.body_read_timeout = Duration::from_secs(3600);
        c.cors.allowed_origins = vec![Origin("https://x.example/".into())];
        let text = c.validate().unwrap_err().to_string();
        for needle in [
            "auth.issuer",
            "auth.leeway",
            "auth.tokenTTL",
            "rateLimit.requestsPerMinute",
            "generation.temperature",
            "limits.maxBodyBytes",
            "limits.headerReadTimeout",
            "limits.bodyReadTimeout",
            "cors.allowedOrigins[0]",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }

    #[test]
    fn limits_that_would_refuse_everyone_are_refused() {
        let mut c = ServerConfig::default();
        c.limits.max_auth_failures_per_minute = 0;
        c.rate_limit.tokens_per_minute = Some(0);
        c.roles.read_only.requests_per_minute = Some(0);
        c.roles.developer.tokens_per_minute = Some(-1);
        c.roles.admin.max_tokens_per_request = Some(0);
        c.roles.read_only.max_prompt_tokens = Some(MIN_PROMPT_TOKENS - 1);
        let text = c.validate().unwrap_err().to_string();
        for needle in [
            "limits.maxAuthFailuresPerMinute",
            "rateLimit.tokensPerMinute",
            "roles.readOnly.requestsPerMinute",
            "roles.developer.tokensPerMinute",
            "roles.admin.maxTokensPerRequest",
            "roles.readOnly.maxPromptTokens",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
        c = ServerConfig::default();
        c.limits.max_auth_failures_per_minute = MIN_AUTH_FAILURES_PER_MINUTE;
        c.roles.read_only.max_prompt_tokens = Some(MIN_PROMPT_TOKENS);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
    }

    #[test]
    fn sampling_defaults_keep_the_digits_written() {
        let mut c = ServerConfig::default();
        c.generation.temperature = 0.7;
        c.generation.top_p = 0.95;
        // The admin endpoint's path: to JSON, then YAML on disk, then back.
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["generation"]["temperature"], serde_json::json!(0.7));
        assert_eq!(json["generation"]["topP"], serde_json::json!(0.95));
        let from_json: ServerConfig = serde_json::from_value(json).unwrap();
        let yaml = serde_yaml::to_string(&from_json).unwrap();
        assert!(yaml.contains("temperature: 0.7\n"), "{yaml}");
        assert!(yaml.contains("topP: 0.95\n"), "{yaml}");
        assert_eq!(ServerConfig::from_yaml(&yaml).unwrap(), c);
    }

    #[test]
    fn sso_entries_are_checked_against_the_oidc_issuers() {
        let yaml = r#"
auth:
  oidc:
    - issuerURL: https://idp.example
      audience: chat
      clientId: chat-web
web:
  sessionTTL: 1h
  sso:
    - issuerURL: https://idp.example/
"#;
        let c = ServerConfig::from_yaml(yaml).unwrap();
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        assert_eq!(c.sso_client_id(&c.web.sso[0]), Some("chat-web"));
        assert_eq!(c.web.sso[0].scopes, ["openid", "profile"]);
        assert_eq!(c.web.session_ttl, Duration::from_secs(3600));

        let mut bad = c.clone();
        bad.web.sso[0].issuer_url = "https://other.example".into();
        bad.web.sso[0].redirect_url = Some("http://chat.example/web/sso/callback".into());
        bad.web.sso[0].scopes = vec!["profile".into()];
        bad.web.session_ttl = Duration::from_secs(10);
        let text = bad.validate().unwrap_err().to_string();
        for needle in [
            "web.sso[0].issuerURL",
            "web.sso[0].clientId",
            "web.sso[0].redirectURL",
            "web.sso[0].scopes",
            "web.sessionTTL",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }

    #[test]
    fn oauth2_providers_are_checked_like_the_crd_checks_them() {
        let yaml = r#"
web:
  oauth2:
    - clientSecretFile: /etc/securechat/oauth2/wecom/client-secret
      provider:
        name: wecom
        kind: WeCom
        clientId: ww1
        wecom:
          agentId: "1000002"
          departmentTiers: [{id: 2, tier: Developer}]
    - provider:
        name: corp
        kind: OAuth2
        clientId: web
        oauth2:
          authorizeURL: https://idp.example/authorize
          tokenURL: https://idp.example/token
          userInfoURL: https://idp.example/me
"#;
        let c = ServerConfig::from_yaml(yaml).unwrap();
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        let generic = c.web.oauth2[1].provider.oauth2.as_ref().unwrap();
        assert!(generic.pkce, "PKCE is on unless turned off");
        assert_eq!(generic.user_id_pointer, "/sub");

        let mut bad = c.clone();
        bad.web.oauth2[0].client_secret_file = None;
        bad.web.oauth2[0].provider.client_secret_name = Some("wecom-app".into());
        bad.web.oauth2[1].provider.name = "wecom".into();
        bad.web.oauth2[1].provider.redirect_url = Some("https://chat/web/sso/callback".into());
        let o = bad.web.oauth2[1].provider.oauth2.as_mut().unwrap();
        o.token_url = "http://idp.example/token".into();
        o.role_pointer = Some("groups".into());
        let text = bad.validate().unwrap_err().to_string();
        for needle in [
            "web.oauth2[0].clientSecretFile: WeCom needs the corpsecret",
            "web.oauth2[0].provider.clientSecretName: not read by the server",
            "web.oauth2[1].provider.name: \"wecom\" is used by another provider",
            "web.oauth2[1].provider.redirectURL",
            "web.oauth2[1].provider.oauth2.tokenURL: must be an https URL",
            "web.oauth2[1].provider.oauth2.rolePointer",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }

    #[test]
    fn serialises_back_to_yaml_that_reads_the_same() {
        let c = ServerConfig::default();
        let yaml = serde_yaml::to_string(&c).unwrap();
        assert!(yaml.contains("tokenTTL: 30m"), "{yaml}");
        assert_eq!(ServerConfig::from_yaml(&yaml).unwrap(), c);
    }
}
