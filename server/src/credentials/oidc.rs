//! External OpenID Connect issuers: discovery, a JWKS cache per issuer,
//! and verification of their tokens.
//!
//! - Keys are fetched on first use (discovery -> `jwks_uri` -> JWKS).
//! - Refresh-ahead: once a cached JWKS is older than 80% of its lifetime
//!   (Cache-Control max-age, clamped to 1 min .. 24 h, default 10 min), the
//!   next request triggers a background refresh while it is served from the
//!   cache.
//! - An unknown `kid` triggers at most one refetch per issuer per
//!   `outbound.minRefetchInterval` (30 s), so a flood of tokens with random
//!   kids cannot turn the server into a load generator against the
//!   identity provider.
//! - A failed refresh keeps the last good JWKS (the issuer being down must
//!   not log everybody out).
//! - Each issuer's fetches go through a circuit breaker (`crate::breaker`,
//!   target `oidc:<issuer URL>`): once it opens, a token whose key is
//!   cached is still verified from the last good JWKS, and one whose key is
//!   not fails at once (401) instead of waiting for a timeout. The refetch
//!   interval above applies after a successful fetch; failed ones are the
//!   breaker's to pace.
//! - Each key's algorithm is pinned from the JWK (its `alg`, else its key
//!   type); only asymmetric algorithms are accepted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use securechat_crds::files::config::OutboundConfig;
use securechat_crds::v1alpha1::{OidcIssuer, Tier};
use serde_json::Value;

use crate::breaker::{Breaker, CircuitMetrics};
use crate::error::AuthFailure;

const DEFAULT_TTL: Duration = Duration::from_secs(600);

struct CachedJwks {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    fetched_at: Instant,
    ttl: Duration,
}

struct IssuerCache {
    jwks: ArcSwapOption<CachedJwks>,
    last_fetch: Mutex<Option<Instant>>,
    refreshing: std::sync::atomic::AtomicBool,
    breaker: Arc<Breaker>,
}

/// A verified external identity.
#[derive(Debug, Clone)]
pub struct OidcIdentity {
    pub issuer: String,
    pub subject: String,
    pub tier: Tier,
}

/// All configured issuers' caches.
pub struct OidcVerifier {
    client: reqwest::Client,
    caches: Mutex<HashMap<String, Arc<IssuerCache>>>,
    outbound: OutboundConfig,
    circuits: CircuitMetrics,
}

fn normalise(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// The unverified `iss` of a JWT, to pick the verifier. Nothing is trusted
/// from it: the chosen verifier checks the signature and `iss` again.
pub fn peek_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.get("iss")?.as_str().map(str::to_string)
}

/// The algorithm a JWK may be used with.
fn pinned_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let from_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        // Symmetric keys in a public JWKS would let anyone mint tokens.
        AlgorithmParameters::OctetKey(_) => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(from_type),
        Some(declared) => {
            let alg: Algorithm = declared.to_string().parse().ok()?;
            let compatible = matches!(
                (from_type, alg),
                (
                    Algorithm::RS256,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                )
            ) || from_type == alg;
            compatible.then_some(alg)
        }
    }
}

/// Why an issuer's discovery document or JWKS could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `step` is `discovery` or `jwks`.
    #[error("{step}: {source}")]
    Http {
        step: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("discovery: issuer does not match")]
    IssuerMismatch,
    #[error("discovery: no https jwks_uri")]
    NoJwksUri,
}

impl DiscoveryError {
    fn http(step: &'static str) -> impl FnOnce(reqwest::Error) -> Self {
        move |source| Self::Http { step, source }
    }
}

fn ttl_from(headers: &reqwest::header::HeaderMap) -> Duration {
    let max_age = headers
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',').find_map(|d| {
                d.trim()
                    .strip_prefix("max-age=")
                    .and_then(|n| n.parse::<u64>().ok())
            })
        });
    max_age
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TTL)
        .clamp(Duration::from_secs(60), Duration::from_secs(86_400))
}

impl OidcVerifier {
    /// `extra_roots`: PEM CA certificates trusted besides the system roots.
    /// Default timeouts and breakers, reporting nowhere.
    pub fn new(extra_roots: Option<&[u8]>) -> anyhow::Result<Self> {
        Self::with_outbound(
            extra_roots,
            &OutboundConfig::default(),
            CircuitMetrics::default(),
        )
    }

    /// With the config's `outbound` timeout, refetch interval and breaker
    /// thresholds; the breakers report into `circuits`.
    pub fn with_outbound(
        extra_roots: Option<&[u8]>,
        outbound: &OutboundConfig,
        circuits: CircuitMetrics,
    ) -> anyhow::Result<Self> {
        let tls = crate::tls::client_config(extra_roots)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(outbound.timeout.as_std())
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            caches: Mutex::new(HashMap::new()),
            outbound: outbound.clone(),
            circuits,
        })
    }

    fn cache(&self, issuer: &str) -> Arc<IssuerCache> {
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        let issuer = normalise(issuer);
        caches
            .entry(issuer.to_string())
            .or_insert_with(|| {
                Arc::new(IssuerCache {
                    jwks: ArcSwapOption::empty(),
                    last_fetch: Mutex::new(None),
                    refreshing: std::sync::atomic::AtomicBool::new(false),
                    breaker: Arc::new(Breaker::new(
                        format!("oidc:{issuer}"),
                        self.outbound.circuit_breaker,
                        self.circuits.clone(),
                    )),
                })
            })
            .clone()
    }

    /// The HTTP client that trusts the issuers' CAs (the web UI's SSO
    /// login exchanges codes with it).
    pub fn http(&self) -> &reqwest::Client {
        &self.client
    }

    /// The issuer's discovery document, checked to name that issuer.
    pub async fn discover(&self, issuer: &str) -> Result<Value, DiscoveryError> {
        let base = normalise(issuer);
        let discovery: Value = self
            .client
            .get(format!("{base}/.well-known/openid-configuration"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(DiscoveryError::http("discovery"))?
            .json()
            .await
            .map_err(DiscoveryError::http("discovery"))?;
        // OIDC Discovery §4.3: the document must name the issuer we asked.
        if discovery
            .get("issuer")
            .and_then(Value::as_str)
            .map(normalise)
            != Some(base)
        {
            return Err(DiscoveryError::IssuerMismatch);
        }
        Ok(discovery)
    }

    /// Fetches discovery then the JWKS.
    async fn fetch(&self, issuer: &str) -> Result<CachedJwks, DiscoveryError> {
        let discovery = self.discover(issuer).await?;
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("https://"))
            .ok_or(DiscoveryError::NoJwksUri)?;
        let response = self
            .client
            .get(jwks_uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(DiscoveryError::http("jwks"))?;
        let ttl = ttl_from(response.headers());
        let set: JwkSet = response
            .json()
            .await
            .map_err(DiscoveryError::http("jwks"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), pinned_algorithm(jwk)) else {
                continue;
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, (alg, key));
            }
        }
        Ok(CachedJwks {
            keys,
            fetched_at: Instant::now(),
            ttl,
        })
    }

    /// Refetches unless a fetch is under way or succeeded within the
    /// refetch interval, and the breaker lets it; keeps the old JWKS on
    /// failure.
    async fn refetch(&self, issuer: &str, cache: &IssuerCache) {
        let previous = {
            let mut last = cache.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
            let interval = self.outbound.min_refetch_interval.as_std();
            if last.is_some_and(|t| t.elapsed() < interval) {
                return;
            }
            last.replace(Instant::now())
        };
        match cache.breaker.call(self.fetch(issuer), |_| true).await {
            Ok(Ok(jwks)) => {
                cache.jwks.store(Some(Arc::new(jwks)));
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(issuer, error = %e, "OIDC key refresh failed; keeping the last good keys")
            }
            Err(refused) => tracing::debug!(issuer, error = %refused, "OIDC key refresh skipped"),
        }
        // The interval spaces successful fetches; failed ones are the
        // breaker's to pace, so the next token may try again (or be
        // refused at once while the breaker is open).
        *cache.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = previous;
    }

    /// Verifies a token from `issuer` (an entry of the config).
    pub async fn verify(
        self: &Arc<Self>,
        token: &str,
        issuer: &OidcIssuer,
        leeway_secs: u64,
    ) -> Result<OidcIdentity, AuthFailure> {
        self.verify_claims(token, issuer, leeway_secs)
            .await
            .map(|(identity, _)| identity)
    }

    /// Same, also returning every claim (an ID token's `nonce`, `exp` and
    /// name are checked or shown by the web login).
    pub async fn verify_claims(
        self: &Arc<Self>,
        token: &str,
        issuer: &OidcIssuer,
        leeway_secs: u64,
    ) -> Result<(OidcIdentity, Value), AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::InvalidToken)?;
        let kid = header.kid.clone().ok_or(AuthFailure::UnknownKid)?;
        let cache = self.cache(&issuer.issuer_url);
        let lookup = |cache: &IssuerCache| {
            cache
                .jwks
                .load_full()
                .and_then(|j| j.keys.get(&kid).map(|(alg, key)| (*alg, key.clone())))
        };
        let found = match lookup(&cache) {
            Some(hit) => {
                self.refresh_ahead(&issuer.issuer_url, &cache);
                hit
            }
            None => {
                self.refetch(&issuer.issuer_url, &cache).await;
                lookup(&cache).ok_or(AuthFailure::UnknownKid)?
            }
        };
        let (alg, key) = found;
        if header.alg != alg {
            return Err(AuthFailure::AlgorithmMismatch);
        }
        let mut validation = Validation::new(alg);
        validation.leeway = leeway_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&[
            normalise(&issuer.issuer_url),
            &format!("{}/", normalise(&issuer.issuer_url)),
        ]);
        validation.set_audience(&[&issuer.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => AuthFailure::TokenExpired,
            _ => AuthFailure::InvalidToken,
        })?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or(AuthFailure::InvalidToken)?;
        let tier = role_tier(claims.get(&issuer.role_claim))
            .or(issuer.default_tier)
            .ok_or(AuthFailure::InvalidToken)?;
        let identity = OidcIdentity {
            issuer: normalise(&issuer.issuer_url).to_string(),
            subject: subject.to_string(),
            tier,
        };
        Ok((identity, claims))
    }

    /// Starts a background refresh when the cache is getting old.
    fn refresh_ahead(self: &Arc<Self>, issuer: &str, cache: &Arc<IssuerCache>) {
        let Some(jwks) = cache.jwks.load_full() else {
            return;
        };
        if jwks.fetched_at.elapsed() < jwks.ttl.mul_f64(0.8) {
            return;
        }
        if cache
            .refreshing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let (this, cache, issuer) = (self.clone(), cache.clone(), issuer.to_string());
        tokio::spawn(async move {
            this.refetch(&issuer, &cache).await;
            cache
                .refreshing
                .store(false, std::sync::atomic::Ordering::Release);
        });
    }
}

/// The highest tier named by a role claim (a string or a list of strings).
fn role_tier(claim: Option<&Value>) -> Option<Tier> {
    match claim? {
        Value::String(s) => Tier::from_role_name(s),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(Tier::from_role_name)
            .max(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn role_claims_map_to_the_highest_known_tier() {
        assert_eq!(role_tier(Some(&json!("admin"))), Some(Tier::Admin));
        assert_eq!(
            role_tier(Some(&json!(["guest", "user", "nobody"]))),
            Some(Tier::Developer)
        );
        assert_eq!(role_tier(Some(&json!("root"))), None);
        assert_eq!(role_tier(Some(&json!(3))), None);
        assert_eq!(role_tier(None), None);
    }

    #[test]
    fn jwk_algorithms_are_pinned_and_symmetric_keys_refused() {
        let ec: Jwk = serde_json::from_value(json!({"kty": "EC", "crv": "P-256", "kid": "a",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}))
        .unwrap();
        assert_eq!(pinned_algorithm(&ec), Some(Algorithm::ES256));
        let hmac: Jwk =
            serde_json::from_value(json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"})).unwrap();
        assert_eq!(pinned_algorithm(&hmac), None);
        let lying: Jwk = serde_json::from_value(json!({"kty": "EC", "crv": "P-256", "kid": "a", "alg": "HS256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}))
        .unwrap();
        assert_eq!(pinned_algorithm(&lying), None);
    }

    #[test]
    fn cache_control_sets_the_lifetime_within_bounds() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(ttl_from(&h), DEFAULT_TTL);
        h.insert(
            reqwest::header::CACHE_CONTROL,
            "public, max-age=3600".parse().unwrap(),
        );
        assert_eq!(ttl_from(&h), Duration::from_secs(3600));
        h.insert(reqwest::header::CACHE_CONTROL, "max-age=1".parse().unwrap());
        assert_eq!(ttl_from(&h), Duration::from_secs(60));
    }

    #[test]
    fn peeks_the_issuer_without_trusting_it() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"iss":"https://idp.example"}"#);
        assert_eq!(
            peek_issuer(&format!("h.{payload}.s")).as_deref(),
            Some("https://idp.example")
        );
        assert_eq!(peek_issuer("garbage"), None);
    }
}
