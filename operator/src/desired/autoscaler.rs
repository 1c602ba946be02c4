//! The model's autoscaler: an `autoscaling/v2` HorizontalPodAutoscaler on
//! a serving signal of the pods (served by a custom-metrics adapter such as
//! prometheus-adapter), or a KEDA ScaledObject with a Prometheus trigger.
//!
//! Either one owns the Deployment's `replicas`: the operator leaves that
//! field out of what it applies (see `deployment`), so server-side apply
//! never takes it back and the two controllers do not fight.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use securechat_crds::v1alpha1::{AutoscalingEngine, AutoscalingSpec, ScalingBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Input;
use crate::labels::Names;

/// Scale-up pace once a scale-up is decided: double, or add four pods,
/// whichever is more, every 15 s (the HPA's own default policies, written
/// out because a `behavior` with only a stabilisation window would drop
/// them).
const SCALE_UP_PERCENT: i32 = 100;
const SCALE_UP_PODS: i32 = 4;
const SCALE_UP_PERIOD_SECONDS: i32 = 15;

/// KEDA's `threshold` on the activation trigger: that trigger only says
/// whether the model should run at all (value above 0), and must never be
/// what sizes it, so its per-pod target is far above any demand count.
const ACTIVATION_ONLY_THRESHOLD: &str = "1000000000";

/// The HorizontalPodAutoscaler for a model with `autoscaling.engine: HPA`.
pub fn horizontal_pod_autoscaler(input: &Input) -> Option<HorizontalPodAutoscaler> {
    let scaling = input.model.spec.autoscaling.as_ref()?;
    (scaling.engine == AutoscalingEngine::Hpa).then(|| HorizontalPodAutoscaler {
        metadata: input.metadata(Names::autoscaler(&input.name)),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: deployment_ref(input),
            min_replicas: Some(scaling.min_replicas),
            max_replicas: scaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Pods".into(),
                pods: Some(PodsMetricSource {
                    metric: MetricIdentifier {
                        name: scaling.metric.series().into(),
                        selector: None,
                    },
                    target: MetricTarget {
                        type_: "AverageValue".into(),
                        average_value: Some(Quantity(scaling.target.clone())),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            behavior: Some(behavior(&scaling.behavior)),
        },
        ..Default::default()
    })
}

fn deployment_ref(input: &Input) -> CrossVersionObjectReference {
    CrossVersionObjectReference {
        api_version: Some("apps/v1".into()),
        kind: "Deployment".into(),
        name: Names::deployment(&input.name),
    }
}

fn behavior(b: &ScalingBehavior) -> HorizontalPodAutoscalerBehavior {
    HorizontalPodAutoscalerBehavior {
        scale_up: Some(HPAScalingRules {
            stabilization_window_seconds: Some(b.scale_up_stabilization_seconds),
            select_policy: Some("Max".into()),
            policies: Some(vec![
                HPAScalingPolicy {
                    type_: "Percent".into(),
                    value: SCALE_UP_PERCENT,
                    period_seconds: SCALE_UP_PERIOD_SECONDS,
                },
                HPAScalingPolicy {
                    type_: "Pods".into(),
                    value: SCALE_UP_PODS,
                    period_seconds: SCALE_UP_PERIOD_SECONDS,
                },
            ]),
            ..Default::default()
        }),
        scale_down: Some(HPAScalingRules {
            stabilization_window_seconds: Some(b.scale_down_stabilization_seconds),
            select_policy: Some("Max".into()),
            policies: Some(vec![HPAScalingPolicy {
                type_: "Pods".into(),
                value: 1,
                period_seconds: b.scale_down_period_seconds,
            }]),
            ..Default::default()
        }),
    }
}

/// KEDA's ScaledObject (keda.sh/v1alpha1), the fields the operator sets.
/// KEDA's own CRD validates it; no schema is generated here.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keda.sh",
    version = "v1alpha1",
    kind = "ScaledObject",
    plural = "scaledobjects",
    namespaced,
    status = "ScaledObjectStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    pub scale_target_ref: Value,
    pub min_replica_count: i32,
    pub max_replica_count: i32,
    pub advanced: Value,
    pub triggers: Vec<Value>,
}

/// KEDA's status, read for its conditions only.
pub type ScaledObjectStatus = Value;

/// The ScaledObject for a model with `autoscaling.engine: KEDA`.
pub fn scaled_object(input: &Input) -> Option<ScaledObject> {
    let scaling = input.model.spec.autoscaling.as_ref()?;
    if scaling.engine != AutoscalingEngine::Keda {
        return None;
    }
    let keda = scaling.keda.as_ref()?;
    let mut triggers = vec![json!({
        "type": "prometheus",
        "name": "serving",
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": keda.prometheus_address,
            "query": serving_query(input, scaling),
            "threshold": scaling.target,
        },
    })];
    if let Some(activation) = &keda.activation_query {
        triggers.push(json!({
            "type": "prometheus",
            "name": "activation",
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": keda.prometheus_address,
                "query": activation,
                "threshold": ACTIVATION_ONLY_THRESHOLD,
                "activationThreshold": "0",
            },
        }));
    }
    let mut object = ScaledObject::new(
        &Names::autoscaler(&input.name),
        ScaledObjectSpec {
            scale_target_ref: json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": Names::deployment(&input.name),
            }),
            min_replica_count: scaling.min_replicas,
            max_replica_count: scaling.max_replicas,
            advanced: json!({
                "horizontalPodAutoscalerConfig": {
                    "behavior": behavior(&scaling.behavior),
                },
            }),
            triggers,
        },
    );
    object.metadata = input.metadata(Names::autoscaler(&input.name));
    Some(object)
}

/// The total of the signal over the model's pods (KEDA divides by the pod
/// count for AverageValue). Pods are matched by name: the Deployment's
/// pods are `<deployment>-<replicaset hash>-<suffix>`, and Prometheus'
/// Kubernetes discovery labels every series with `namespace` and `pod`.
fn serving_query(input: &Input, scaling: &AutoscalingSpec) -> String {
    format!(
        "sum({}{{namespace=\"{}\",pod=~\"{}-[a-z0-9]+-[a-z0-9]+\"}})",
        scaling.metric.series(),
        input.namespace,
        Names::deployment(&input.name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::test_support::model;

    fn hpa_of(spec: serde_json::Value) -> Option<HorizontalPodAutoscaler> {
        let m = model("chat", spec);
        horizontal_pod_autoscaler(&Input::new(&m, "img").expect("input"))
    }

    #[test]
    fn no_autoscaler_without_autoscaling() {
        assert!(hpa_of(json!({"replicas": 2})).is_none());
        let m = model("chat", json!({}));
        assert!(scaled_object(&Input::new(&m, "img").expect("input")).is_none());
    }

    #[test]
    fn hpa_scales_the_deployment_on_the_pods_metric() {
        let hpa = hpa_of(json!({"autoscaling": {
            "minReplicas": 1, "maxReplicas": 4,
            "metric": "KvCacheUsage", "target": "700m"
        }}))
        .expect("hpa");
        let spec = hpa.spec;
        assert_eq!(spec.scale_target_ref.kind, "Deployment");
        assert_eq!(spec.scale_target_ref.name, "chat");
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(1), 4));
        let metric = &spec.metrics.expect("metrics")[0];
        assert_eq!(metric.type_, "Pods");
        let pods = metric.pods.as_ref().expect("pods");
        assert_eq!(pods.metric.name, "securechat_kv_cache_usage_ratio");
        assert_eq!(pods.target.type_, "AverageValue");
        assert_eq!(pods.target.average_value, Some(Quantity("700m".into())));
    }

    #[test]
    fn scale_down_is_slow_by_default_and_configurable() {
        let default = hpa_of(json!({"autoscaling": {"maxReplicas": 3, "target": "2"}}))
            .expect("hpa")
            .spec
            .behavior
            .expect("behavior");
        let down = default.scale_down.expect("down");
        assert_eq!(down.stabilization_window_seconds, Some(600));
        let policy = &down.policies.expect("policies")[0];
        assert_eq!((policy.type_.as_str(), policy.value), ("Pods", 1));
        assert_eq!(policy.period_seconds, 300);
        assert_eq!(
            default.scale_up.expect("up").stabilization_window_seconds,
            Some(0)
        );

        let quick = hpa_of(json!({"autoscaling": {"maxReplicas": 3, "target": "2",
            "behavior": {"scaleDownStabilizationSeconds": 5, "scaleDownPeriodSeconds": 10}}}))
        .expect("hpa")
        .spec
        .behavior
        .expect("behavior")
        .scale_down
        .expect("down");
        assert_eq!(quick.stabilization_window_seconds, Some(5));
        assert_eq!(quick.policies.expect("policies")[0].period_seconds, 10);
    }

    #[test]
    fn keda_gets_a_scaled_object_and_no_hpa() {
        let spec = json!({"autoscaling": {
            "minReplicas": 0, "maxReplicas": 5, "target": "2", "engine": "KEDA",
            "keda": {"prometheusAddress": "http://prom.monitoring.svc:9090",
                     "activationQuery": "sum(rate(gateway_requests_total{model=\"chat\"}[2m]))"}
        }});
        assert!(hpa_of(spec.clone()).is_none());
        let m = model("chat", spec);
        let object = scaled_object(&Input::new(&m, "img").expect("input")).expect("scaled object");
        assert_eq!(object.metadata.name.as_deref(), Some("chat"));
        assert_eq!(object.spec.min_replica_count, 0);
        assert_eq!(object.spec.max_replica_count, 5);
        let serving = &object.spec.triggers[0];
        assert_eq!(
            serving["metadata"]["query"],
            "sum(securechat_requests_waiting{namespace=\"team\",pod=~\"chat-[a-z0-9]+-[a-z0-9]+\"})"
        );
        assert_eq!(serving["metadata"]["threshold"], "2");
        let activation = &object.spec.triggers[1];
        assert_eq!(activation["metadata"]["activationThreshold"], "0");
        assert_eq!(
            object.spec.advanced["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            600
        );
    }
}
