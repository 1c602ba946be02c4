//! `spec.resources` and `spec.scheduling`: GPUs, compute and placement of
//! the pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// GPUs and compute resources of each pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// GPUs per pod.
    #[serde(default)]
    pub gpu: GpuSpec,

    /// CPU and memory requests, e.g. `{cpu: "2", memory: 8Gi}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ComputeResources>,

    /// CPU and memory limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ComputeResources>,
}

/// CPU and memory quantities.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeResources {
    /// CPU, e.g. `500m` or `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory, e.g. `512Mi` or `16Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// GPUs per pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.product) || self.count > 0",
     "message": "resources.gpu.product: a GPU product can only be chosen when resources.gpu.count > 0"}
]))]
pub struct GpuSpec {
    /// Number of GPUs per pod (0–16). When above 0, the pod requests and is
    /// limited to this many `resourceName` and tolerates the
    /// `nvidia.com/gpu:NoSchedule` taint.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub count: i32,

    /// Extended resource name of the GPU device plugin.
    #[serde(default = "default_gpu_resource_name")]
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
        )
    )]
    pub resource_name: String,

    /// GPU product, matched against the node label `nvidia.com/gpu.product`
    /// (e.g. `NVIDIA-A100-SXM4-80GB`): a label value, since it becomes the
    /// pods' nodeSelector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')",
         "message": "resources.gpu.product: must be a label value (letters, digits, '-', '_' and '.', starting and ending with a letter or digit, e.g. NVIDIA-A100-SXM4-80GB): it becomes the pods' nodeSelector"}
    ]))]
    pub product: Option<String>,
}

impl Default for GpuSpec {
    fn default() -> Self {
        Self {
            count: 0,
            resource_name: default_gpu_resource_name(),
            product: None,
        }
    }
}

/// The GPU resource name NVIDIA's device plugin advertises.
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";

fn default_gpu_resource_name() -> String {
    DEFAULT_GPU_RESOURCE.into()
}

/// Placement of the pods, passed through to the pod spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// Node labels the pods require.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Extra tolerations. A toleration for `nvidia.com/gpu:NoSchedule` is
    /// added automatically when GPUs are requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,

    /// Node and pod (anti-)affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// RuntimeClass for the pods (e.g. `nvidia`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub runtime_class_name: Option<String>,

    /// PriorityClass for the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,

    /// How replicas spread across zones or nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
}
