//! Prometheus metrics (text exposition format at /metrics).
//!
//! Expiry gauges are recomputed from the loaded files at every scrape, so a
//! key that was removed from the table disappears from the metrics too.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
pub struct KidLabels {
    pub kid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyIdLabels {
    pub key_id: String,
    pub name: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
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
    pub cert_expiry: FloatGauge,
    pub signing_key_expiry: Family<KidLabels, FloatGauge>,
    pub api_key_expiry: Family<KeyIdLabels, FloatGauge>,
    pub queue_depth: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
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
        let cert_expiry = FloatGauge::default();
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until the serving certificate expires",
            cert_expiry.clone(),
        );
        let signing_key_expiry = Family::<KidLabels, FloatGauge>::default();
        registry.register(
            "signing_key_expiry_seconds",
            "Seconds until each signing key's notAfter",
            signing_key_expiry.clone(),
        );
        let api_key_expiry = Family::<KeyIdLabels, FloatGauge>::default();
        registry.register(
            "api_key_expiry_seconds",
            "Seconds until each API key expires (keys without expiry are absent)",
            api_key_expiry.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "engine_queue_depth",
            "Generations waiting or running",
            queue_depth.clone(),
        );
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
            cert_expiry,
            signing_key_expiry,
            api_key_expiry,
            queue_depth,
        }
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
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
