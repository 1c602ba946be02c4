//! The operator's Prometheus metrics and its health endpoints, served on one
//! plain-HTTP listener (`--metrics-addr`, default :8080) for the kubelet's
//! probes and for scraping inside the cluster.
//!
//! Exported (names are stable: the chart's alert rules use them):
//! - `securechat_operator_reconciles_total{result="success|error"}`
//! - `securechat_operator_reconcile_errors_total{reason}`
//! - `securechat_operator_reconcile_duration_seconds` (histogram)
//! - `securechat_operator_managed_models` (models seen by the last reconciles)
//! - `securechat_operator_object_writes_total{kind}` (creates/updates/deletes
//!   of owned objects; flat in a steady state)
//! - `securechat_operator_leader` (1 while this process holds the lease)
//! - `securechat_operator_material_failures_total{material="tls|signing_keys"}`
//!   (certificate issuance/renewal or key rotation that failed; the model
//!   also gets TLSReady / SigningKeysReady = False, reason RenewalFailed)

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    duration: Histogram,
    managed: Gauge,
    writes: Family<Labels, Counter>,
    leader: Gauge,
    material_failures: Family<Labels, Counter>,
    models: Mutex<HashSet<(String, String)>>,
    /// Set once the API server answered; /readyz reports it.
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let managed = Gauge::default();
        let writes = Family::<Labels, Counter>::default();
        let leader = Gauge::default();
        registry.register(
            "securechat_operator_reconciles",
            "Reconciles of SecureChatModels by result",
            reconciles.clone(),
        );
        registry.register(
            "securechat_operator_reconcile_errors",
            "Failed reconciles by reason",
            errors.clone(),
        );
        registry.register(
            "securechat_operator_reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        registry.register(
            "securechat_operator_managed_models",
            "SecureChatModels this operator reconciles",
            managed.clone(),
        );
        registry.register(
            "securechat_operator_object_writes",
            "Writes of owned objects (create, update, delete) by kind",
            writes.clone(),
        );
        let material_failures = Family::<Labels, Counter>::default();
        registry.register(
            "securechat_operator_material_failures",
            "Certificate renewals and signing-key rotations that failed, by material",
            material_failures.clone(),
        );
        registry.register(
            "securechat_operator_leader",
            "1 while this process holds the leader-election lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            managed,
            writes,
            leader,
            material_failures,
            models: Mutex::default(),
            ready: AtomicBool::new(false),
        }
    }

    /// A certificate renewal or key rotation failed.
    pub fn material_failed(&self, material: &str) {
        self.material_failures
            .get_or_create(&vec![("material", material.to_string())])
            .inc();
    }

    pub fn reconciled(&self, namespace: &str, name: &str, took: Duration, error: Option<&str>) {
        let result = if error.is_some() { "error" } else { "success" };
        self.reconciles
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
        if let Some(reason) = error {
            self.errors
                .get_or_create(&vec![("reason", reason.to_string())])
                .inc();
        }
        self.duration.observe(took.as_secs_f64());
        let mut models = self.models.lock().expect("metrics lock");
        models.insert((namespace.to_string(), name.to_string()));
        self.managed.set(models.len() as i64);
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        let mut models = self.models.lock().expect("metrics lock");
        models.remove(&(namespace.to_string(), name.to_string()));
        self.managed.set(models.len() as i64);
    }

    pub fn wrote(&self, kind: &str) {
        self.writes
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Serves /metrics, /healthz and /readyz until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

async fn ready(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the API server yet",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_the_documented_names() {
        let m = Metrics::new();
        m.reconciled("ns", "a", Duration::from_millis(3), None);
        m.reconciled("ns", "a", Duration::from_millis(3), Some("kube_api"));
        m.wrote("Deployment");
        let text = m.render();
        for name in [
            "securechat_operator_reconciles_total{result=\"success\"} 1",
            "securechat_operator_reconciles_total{result=\"error\"} 1",
            "securechat_operator_reconcile_errors_total{reason=\"kube_api\"} 1",
            "securechat_operator_reconcile_duration_seconds_count 2",
            "securechat_operator_managed_models 1",
            "securechat_operator_object_writes_total{kind=\"Deployment\"} 1",
            "securechat_operator_leader 0",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        m.forget("ns", "a");
        assert!(m.render().contains("securechat_operator_managed_models 0"));
    }
}
