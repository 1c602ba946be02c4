//! `spec.autoscaling`: how many pods a model runs, decided by a
//! HorizontalPodAutoscaler (or a KEDA ScaledObject) on the serving signals
//! the server exports, rather than by a fixed `spec.replicas`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default scale-down stabilisation: a GPU pod takes minutes to come back
/// (image pull, weights load), so a dip in load of less than ten minutes
/// does not give one away.
pub const DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS: i32 = 600;

/// Default pace of scale-down once stabilised: one pod per five minutes.
pub const DEFAULT_SCALE_DOWN_PERIOD_SECONDS: i32 = 300;

/// Autoscaling of the model's pods on a serving signal.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.minReplicas <= self.maxReplicas",
     "message": "autoscaling.minReplicas must not be greater than autoscaling.maxReplicas"},
    {"rule": "self.minReplicas > 0 || (self.engine == 'KEDA' && has(self.keda) && has(self.keda.activationQuery))",
     "message": "autoscaling.minReplicas: 0 needs engine KEDA with keda.activationQuery: a stopped model exports no serving metrics, so something outside its pods must say when to start one"},
    {"rule": "self.engine != 'KEDA' || has(self.keda)",
     "message": "autoscaling.keda: required with engine KEDA (at least keda.prometheusAddress)"}
]))]
pub struct AutoscalingSpec {
    /// Fewest pods (default 1). 0 only with the KEDA engine and an
    /// activation query.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub min_replicas: i32,

    /// Most pods. Each pod holds the model and its GPUs, so this bounds the
    /// model's GPU use.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,

    /// The per-pod signal to scale on: `RequestsWaiting` (requests queued
    /// for a batch slot, `securechat_requests_waiting`), `SequencesRunning`
    /// (`securechat_sequences_running`), or `KvCacheUsage`
    /// (`securechat_kv_cache_usage_ratio`, 0 to 1).
    #[serde(default)]
    pub metric: ServingMetric,

    /// The signal's target average per pod, as a Kubernetes quantity: e.g.
    /// `2` requests waiting, `12` sequences running, or `700m` (70%) of the
    /// KV cache in use. More pods are added while the average is above it.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
         "message": "autoscaling.target: must be a positive quantity, e.g. 2 or 700m"}
    ]))]
    pub target: String,

    /// Who scales: `HPA` (a HorizontalPodAutoscaler on the pods metric,
    /// served by a custom-metrics adapter such as prometheus-adapter), or
    /// `KEDA` (a ScaledObject with a Prometheus trigger; needs KEDA
    /// installed).
    #[serde(default)]
    pub engine: AutoscalingEngine,

    /// How fast to scale up and down.
    #[serde(default)]
    pub behavior: ScalingBehavior,

    /// Settings of the KEDA engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keda: Option<KedaSpec>,
}

fn default_min_replicas() -> i32 {
    1
}

/// The serving signal autoscaling follows.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServingMetric {
    /// Requests queued for a batch slot: the signal that users are waiting.
    #[default]
    RequestsWaiting,
    /// Sequences in the running batch.
    SequencesRunning,
    /// Share of the KV cache in use (0 to 1).
    KvCacheUsage,
}

impl ServingMetric {
    /// The server's Prometheus series for this signal (one home:
    /// `server/src/metrics.rs` registers these names).
    pub fn series(self) -> &'static str {
        match self {
            ServingMetric::RequestsWaiting => "securechat_requests_waiting",
            ServingMetric::SequencesRunning => "securechat_sequences_running",
            ServingMetric::KvCacheUsage => "securechat_kv_cache_usage_ratio",
        }
    }
}

/// Which autoscaler the operator renders.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AutoscalingEngine {
    /// An `autoscaling/v2` HorizontalPodAutoscaler on the pods metric.
    #[default]
    #[serde(rename = "HPA")]
    Hpa,
    /// A KEDA `ScaledObject` with a Prometheus trigger.
    #[serde(rename = "KEDA")]
    Keda,
}

/// Scale-up and scale-down pace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingBehavior {
    /// Seconds of higher demand to look back over before adding pods
    /// (default 0: at once).
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_up_stabilization_seconds: i32,

    /// Seconds of lower demand to look back over before removing pods
    /// (default 600: a GPU pod is slow to come back).
    #[serde(default = "default_scale_down_stabilization")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,

    /// At most one pod is removed per this many seconds (default 300).
    #[serde(default = "default_scale_down_period")]
    #[schemars(range(min = 1, max = 1800))]
    pub scale_down_period_seconds: i32,
}

fn default_scale_down_stabilization() -> i32 {
    DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS
}

fn default_scale_down_period() -> i32 {
    DEFAULT_SCALE_DOWN_PERIOD_SECONDS
}

impl Default for ScalingBehavior {
    fn default() -> Self {
        Self {
            scale_up_stabilization_seconds: 0,
            scale_down_stabilization_seconds: DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS,
            scale_down_period_seconds: DEFAULT_SCALE_DOWN_PERIOD_SECONDS,
        }
    }
}

/// KEDA's Prometheus trigger.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KedaSpec {
    /// URL of the Prometheus that scrapes the model's pods, e.g.
    /// `http://prometheus.monitoring.svc:9090`.
    #[schemars(length(min = 1, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.startsWith('http://') || self.startsWith('https://')",
         "message": "autoscaling.keda.prometheusAddress: must be an http:// or https:// URL"}
    ]))]
    pub prometheus_address: String,

    /// A PromQL query that is above 0 when the model should run at all,
    /// for scaling from zero: with no pod there is no serving metric, so
    /// this must count demand seen elsewhere (e.g. the gateway's requests
    /// for this model). Required with `minReplicas: 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub activation_query: Option<String>,
}
