//! Prometheus metrics (text exposition format at /metrics).
//!
//! Expiry and last-use gauges are recomputed from the loaded files at every
//! scrape, so a key that was removed from the table disappears from the
//! metrics too. Names are a contract with the alert rules (chart): the full
//! list is in server/README.md; rename nothing without updating both.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use securechat_crds::v1alpha1::Tier;

use crate::breaker::CircuitMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedactionLabels {
    pub direction: String,
    pub detector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub file: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabels {
    pub file: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KidLabels {
    pub kid: String,
    /// next, active or previous.
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyIdLabels {
    pub key_id: String,
    pub name: String,
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpiffeLabels {
    pub spiffe_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub key_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyTokenLabels {
    pub key_id: String,
    /// prompt or completion.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// The watched file kinds, as the `file` label spells them.
pub const FILE_KINDS: [&str; 4] = ["config", "signing_keys", "api_keys", "tls"];

type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub tier: String,
}

fn token_latency_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// What the inference scheduler records as it works; registered with the
/// rest by [`Metrics::with_serving`]. Cheap to clone (shared counters).
#[derive(Clone, Debug)]
pub struct ServingMetrics {
    /// Between consecutive text pieces of one generation.
    pub inter_token_latency: Histogram,
    /// From arrival to admission into the running batch, by tier.
    queue_time: HistogramFamily<TierLabels>,
    /// One batched forward pass.
    pub step_seconds: Histogram,
    /// Sequences paused because the key/value cache was full.
    pub preemptions: Counter,
}

impl Default for ServingMetrics {
    fn default() -> Self {
        Self {
            inter_token_latency: token_latency_histogram(),
            queue_time: Family::new_with_constructor(token_latency_histogram),
            step_seconds: token_latency_histogram(),
            preemptions: Counter::default(),
        }
    }
}

impl ServingMetrics {
    pub fn observe_queue_time(&self, tier: Tier, seconds: f64) {
        self.queue_time
            .get_or_create(&TierLabels {
                tier: tier.to_string(),
            })
            .observe(seconds);
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "inter_token_latency_seconds",
            "Time between consecutive pieces of streamed text of one generation",
            self.inter_token_latency.clone(),
        );
        registry.register(
            "request_queue_time_seconds",
            "Time from arrival to a place in the running batch, by tier",
            self.queue_time.clone(),
        );
        registry.register(
            "engine_step_duration_seconds",
            "One batched forward pass over the running sequences",
            self.step_seconds.clone(),
        );
        registry.register(
            "preemptions",
            "Sequences paused (and later recomputed) because the key/value cache was full",
            self.preemptions.clone(),
        );
    }
}

/// The scheduler's state, set from the engine's snapshot at every scrape
/// (`routes::health`).
#[derive(Debug, Default)]
pub struct SchedulerGauges {
    pub requests_waiting: Gauge,
    pub sequences_running: Gauge,
    pub kv_cache_usage: FloatGauge,
    pub prefix_cache_hits: Counter,
    pub prefix_cache_queries: Counter,
}

impl SchedulerGauges {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests_waiting",
            "Requests waiting for a place in the running batch (queued or preempted)",
            self.requests_waiting.clone(),
        );
        registry.register(
            "sequences_running",
            "Sequences in the running batch",
            self.sequences_running.clone(),
        );
        registry.register(
            "kv_cache_usage_ratio",
            "Share of the key/value cache's blocks held by sequences (0 to 1)",
            self.kv_cache_usage.clone(),
        );
        registry.register(
            "prefix_cache_hits",
            "Prompt tokens whose keys and values were found in the prefix cache",
            self.prefix_cache_hits.clone(),
        );
        registry.register(
            "prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache",
            self.prefix_cache_queries.clone(),
        );
    }

    /// Catches a counter up with a total the engine keeps.
    pub fn catch_up(counter: &Counter, total: u64) {
        counter.inc_by(total.saturating_sub(counter.get()));
    }
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: HistogramFamily<RouteLabels>,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub rate_limited: Family<ReasonLabels, Counter>,
    pub redactions: Family<RedactionLabels, Counter>,
    pub tokens_generated: Counter,
    pub prompt_tokens: Counter,
    pub time_to_first_token: Histogram,
    pub reloads: Family<ReloadLabels, Counter>,
    pub file_stale: Family<FileLabels, Gauge>,
    pub cert_expiry: FloatGauge,
    pub signing_key_expiry: Family<KidLabels, FloatGauge>,
    pub api_key_expiry: Family<KeyIdLabels, FloatGauge>,
    pub client_certificate_expiry: Family<SpiffeLabels, FloatGauge>,
    pub certificate_renewals: Counter,
    pub signing_key_rotations: Counter,
    pub api_key_rotations: Counter,
    pub api_key_last_used: Family<KeyLabels, FloatGauge>,
    pub key_table_writes: Family<ResultLabels, Counter>,
    pub jwt_verifications: Family<ResultLabels, Counter>,
    pub queue_depth: Gauge,
    pub generations_abandoned: Counter,
    pub shared_state_errors: Family<KindLabels, Counter>,
    pub shared_state_fallback: Gauge,
    pub api_key_requests: Family<KeyLabels, Counter>,
    pub api_key_tokens: Family<KeyTokenLabels, Counter>,
    pub scheduler: SchedulerGauges,
    pub serving: ServingMetrics,
    /// `auth.policy` decisions by result.
    pub policy_decisions: Family<ResultLabels, Counter>,
    /// Every outbound dependency's breaker (`crate::breaker`).
    pub circuits: CircuitMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_serving(ServingMetrics::default())
    }

    /// The server's metrics, with those an engine records itself.
    pub fn with_serving(serving: ServingMetrics) -> Self {
        let mut registry = Registry::with_prefix("securechat");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by matched route and status",
            requests.clone(),
        );
        let latency: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time until the response head, by route",
            latency.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Failed authentications by reason",
            auth_failures.clone(),
        );
        let rate_limited = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a limiter (requests, tokens, auth_failures)",
            rate_limited.clone(),
        );
        let redactions = Family::<RedactionLabels, Counter>::default();
        registry.register(
            "redactions",
            "Sensitive-data detections by direction and detector",
            redactions.clone(),
        );
        let tokens_generated = Counter::default();
        registry.register(
            "tokens_generated",
            "Completion tokens generated",
            tokens_generated.clone(),
        );
        let prompt_tokens = Counter::default();
        registry.register(
            "prompt_tokens",
            "Prompt tokens processed",
            prompt_tokens.clone(),
        );
        let time_to_first_token = latency_histogram();
        registry.register(
            "time_to_first_token_seconds",
            "Time from request to the first generated text",
            time_to_first_token.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "file_reloads",
            "Reloads of watched files by file and result (ok, error)",
            reloads.clone(),
        );
        // Every kind starts at zero so that `increase()` in an alert sees
        // the first failure, not a series that appears already at 1.
        for file in FILE_KINDS {
            for result in ["ok", "error"] {
                let _ = reloads.get_or_create(&ReloadLabels {
                    file: file.into(),
                    result: result.into(),
                });
            }
        }
        let file_stale = Family::<FileLabels, Gauge>::default();
        registry.register(
            "file_stale",
            "1 while the file on disk is invalid and its last good version is in force",
            file_stale.clone(),
        );
        for file in FILE_KINDS {
            let _ = file_stale.get_or_create(&FileLabels { file: file.into() });
        }
        let cert_expiry = FloatGauge::default();
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until the serving certificate expires",
            cert_expiry.clone(),
        );
        let signing_key_expiry = Family::<KidLabels, FloatGauge>::default();
        registry.register(
            "signing_key_expiry_seconds",
            "Seconds until each signing key's notAfter, by kid and phase",
            signing_key_expiry.clone(),
        );
        let api_key_expiry = Family::<KeyIdLabels, FloatGauge>::default();
        registry.register(
            "api_key_expiry_seconds",
            "Seconds until each API key expires (keys without expiry and revoked keys are absent)",
            api_key_expiry.clone(),
        );
        let client_certificate_expiry = Family::<SpiffeLabels, FloatGauge>::default();
        registry.register(
            "client_certificate_expiry_seconds",
            "Seconds until the latest-expiring client certificate this server has accepted for each SPIFFE ID expires (auth.mtls; gone once it has expired)",
            client_certificate_expiry.clone(),
        );
        let certificate_renewals = Counter::default();
        registry.register(
            "certificate_renewals",
            "New serving certificates loaded since start",
            certificate_renewals.clone(),
        );
        let signing_key_rotations = Counter::default();
        registry.register(
            "signing_key_rotations",
            "Changes of the active signing key seen since start",
            signing_key_rotations.clone(),
        );
        let api_key_rotations = Counter::default();
        registry.register(
            "api_key_rotations",
            "API-key secret rotations seen in the key table since start",
            api_key_rotations.clone(),
        );
        let api_key_last_used = Family::<KeyLabels, FloatGauge>::default();
        registry.register(
            "api_key_last_used_timestamp_seconds",
            "Unix time of each API key's last successful use",
            api_key_last_used.clone(),
        );
        let key_table_writes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "key_table_writes",
            "Write-backs of lastUsedAt to a server-owned key table, by result",
            key_table_writes.clone(),
        );
        let jwt_verifications = Family::<ResultLabels, Counter>::default();
        registry.register(
            "jwt_verifications",
            "Verifications of tokens signed with this server's keys, by result (ok or failure reason)",
            jwt_verifications.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "engine_queue_depth",
            "Generations waiting or running",
            queue_depth.clone(),
        );
        let generations_abandoned = Counter::default();
        registry.register(
            "generations_abandoned",
            "Generations cancelled because their client went away before the answer was complete",
            generations_abandoned.clone(),
        );
        let shared_state_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "shared_state_errors",
            "Failed operations on the shared store, by kind (timeout, connection, auth, reply, config)",
            shared_state_errors.clone(),
        );
        // Both kinds an alert watches start at zero (see file_reloads).
        for kind in ["timeout", "connection", "auth"] {
            let _ = shared_state_errors.get_or_create(&KindLabels { kind: kind.into() });
        }
        let shared_state_fallback = Gauge::default();
        registry.register(
            "shared_state_local_fallback",
            "1 while the shared store is unreachable and this replica enforces its share of every limit alone (LocalFallback)",
            shared_state_fallback.clone(),
        );
        // Per key id: bounded by the key table (ids never come from
        // unauthenticated input). This replica's counts; sum over pods for
        // the model's.
        let api_key_requests = Family::<KeyLabels, Counter>::default();
        registry.register(
            "api_key_requests",
            "Requests made with each API key (and tokens minted from it)",
            api_key_requests.clone(),
        );
        let api_key_tokens = Family::<KeyTokenLabels, Counter>::default();
        registry.register(
            "api_key_tokens",
            "Tokens used by each API key, by kind (prompt, completion)",
            api_key_tokens.clone(),
        );
        let policy_decisions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_decisions",
            "Requests decided by auth.policy, by result (allow, deny, error: the policy failed and the request was denied)",
            policy_decisions.clone(),
        );
        let circuits = CircuitMetrics::default();
        registry.register(
            "circuit_state",
            "State of each outbound dependency's circuit breaker: 0 closed, 1 half-open (one probe call), 2 open (calls fail fast)",
            circuits.state.clone(),
        );
        registry.register(
            "circuit_transitions",
            "Circuit breaker state changes by target and the state entered (closed, half_open, open)",
            circuits.transitions.clone(),
        );
        let scheduler = SchedulerGauges::default();
        scheduler.register(&mut registry);
        serving.register(&mut registry);
        Self {
            registry,
            requests,
            latency,
            auth_failures,
            rate_limited,
            redactions,
            tokens_generated,
            prompt_tokens,
            time_to_first_token,
            reloads,
            file_stale,
            cert_expiry,
            signing_key_expiry,
            api_key_expiry,
            client_certificate_expiry,
            certificate_renewals,
            signing_key_rotations,
            api_key_rotations,
            api_key_last_used,
            key_table_writes,
            jwt_verifications,
            queue_depth,
            generations_abandoned,
            shared_state_errors,
            shared_state_fallback,
            api_key_requests,
            api_key_tokens,
            scheduler,
            serving,
            policy_decisions,
            circuits,
        }
    }

    /// Counts one `auth.policy` decision.
    pub fn policy_decision(&self, result: &str) {
        self.policy_decisions
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn limited(&self, reason: &str) {
        self.rate_limited
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn redacted(&self, direction: &str, detector: &str) {
        self.redactions
            .get_or_create(&RedactionLabels {
                direction: direction.into(),
                detector: detector.into(),
            })
            .inc();
    }

    pub fn reload(&self, file: &str, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                file: file.into(),
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
        self.file_stale
            .get_or_create(&FileLabels { file: file.into() })
            .set(i64::from(!ok));
    }

    pub fn jwt_verification(&self, result: &str) {
        self.jwt_verifications
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    pub fn key_table_write(&self, ok: bool) {
        self.key_table_writes
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    /// Counts one key's use: `requests` requests, `prompt` and
    /// `completion` tokens.
    pub fn key_usage(&self, key_id: &str, requests: u64, prompt: u64, completion: u64) {
        if requests > 0 {
            self.api_key_requests
                .get_or_create(&KeyLabels {
                    key_id: key_id.into(),
                })
                .inc_by(requests);
        }
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            if n > 0 {
                self.api_key_tokens
                    .get_or_create(&KeyTokenLabels {
                        key_id: key_id.into(),
                        kind: kind.into(),
                    })
                    .inc_by(n);
            }
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
