//! Desired state: pure functions from a SecureChatModel to the objects that
//! should exist for it. Unit-tested without a cluster; the reconcile loop
//! applies whatever these return.

mod autoscaler;
mod config_map;
mod deployment;
pub mod expose;
mod network_policy;
mod pdb;
pub mod secrets;
mod service;
mod service_account;
pub mod shared_state;

pub use autoscaler::{ScaledObject, horizontal_pod_autoscaler, scaled_object};
pub use config_map::{config_map, config_map_with_policy, server_config};
pub use deployment::{CONFIG_DIR, deployment};
pub use network_policy::{NetworkPolicyPlan, RefusedRule, network_policy};
pub use pdb::pdb;
pub use service::service;
pub use service_account::service_account;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use securechat_crds::SecureChatModel;

use crate::{Error, Result, labels};

/// The builders' input: what every builder needs besides the resource
/// itself. (The reconciler's shared context is [`crate::controller::Context`].)
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub model: &'a SecureChatModel,
    pub name: String,
    pub namespace: String,
    /// Server image when the spec names none: the operator's own version.
    pub default_image: &'a str,
    /// Server image built with CUDA, for models with `resources.gpu.count
    /// > 0` that name no image (see [`Input::server_image`]).
    pub cuda_image: Option<&'a str>,
}

impl<'a> Input<'a> {
    pub fn new(model: &'a SecureChatModel, default_image: &'a str) -> Result<Self> {
        Ok(Self {
            name: model.name_any(),
            namespace: model
                .namespace()
                .ok_or(Error::MissingField("metadata.namespace"))?,
            model,
            default_image,
            cuda_image: None,
        })
    }

    /// With the CUDA server image GPU pods get.
    pub fn with_cuda_image(mut self, image: &'a str) -> Self {
        self.cuda_image = Some(image);
        self
    }

    /// The server image of the model's pods: the spec's own `image`, else
    /// the CUDA image when the pods get GPUs (the CPU image would leave
    /// them idle), else the default one.
    pub fn server_image(&self) -> String {
        let spec = &self.model.spec;
        match (&spec.image, self.cuda_image) {
            (Some(image), _) => image.clone(),
            (None, Some(cuda)) if spec.resources.gpu.count > 0 => cuda.to_string(),
            (None, _) => self.default_image.to_string(),
        }
    }

    fn owner_reference(&self) -> Option<OwnerReference> {
        self.model.controller_owner_ref(&())
    }

    /// Metadata for an owned object: name, namespace, labels, controller
    /// owner reference (so the garbage collector removes it with the model).
    pub fn metadata(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels::common(&self.name)),
            owner_references: self.owner_reference().map(|o| vec![o]),
            ..Default::default()
        }
    }

    /// The in-cluster DNS name of the model's Service.
    pub fn service_host(&self) -> String {
        format!(
            "{}.{}.svc",
            labels::Names::service(&self.name),
            self.namespace
        )
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use securechat_crds::SecureChatModel;
    use securechat_crds::v1alpha1::SecureChatModelSpec;

    /// A model as the API server would return it: defaults filled, uid set.
    pub fn model(name: &str, spec: serde_json::Value) -> SecureChatModel {
        let spec: SecureChatModelSpec = serde_json::from_value(spec).expect("valid spec");
        let mut model = SecureChatModel::new(name, spec);
        model.metadata.namespace = Some("team".into());
        model.metadata.uid = Some("0000-uid".into());
        model
    }
}
