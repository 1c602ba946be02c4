//! Names and labels of the objects made for a SecureChatModel.
//!
//! Every owned object carries the recommended `app.kubernetes.io/*` labels;
//! the pod selector uses only the immutable subset (name + instance), since a
//! Deployment's selector cannot change after creation.

use std::collections::BTreeMap;

pub const APP_NAME: &str = "securechat-server";
pub const MANAGED_BY: &str = "securechat-operator";
pub const COMPONENT: &str = "inference";
/// Label on every owned object naming its SecureChatModel, used to find
/// orphans.
pub const MODEL_LABEL: &str = "securechat.dev/model";

/// Labels that select the model's pods.
pub fn selector(model: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        ("app.kubernetes.io/instance".to_string(), model.to_string()),
    ])
}

/// Labels on every object the operator makes for this model.
pub fn common(model: &str) -> BTreeMap<String, String> {
    let mut labels = selector(model);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    labels.insert("app.kubernetes.io/component".into(), COMPONENT.into());
    labels.insert("app.kubernetes.io/part-of".into(), "securechat".into());
    labels.insert(MODEL_LABEL.into(), model.into());
    labels
}

/// Names of the owned objects.
pub struct Names;

impl Names {
    pub fn service_account(model: &str) -> String {
        model.to_string()
    }
    pub fn service(model: &str) -> String {
        model.to_string()
    }
    pub fn deployment(model: &str) -> String {
        model.to_string()
    }
    pub fn network_policy(model: &str) -> String {
        model.to_string()
    }
    pub fn pdb(model: &str) -> String {
        model.to_string()
    }
    /// The NodePort or LoadBalancer Service of `expose.service`.
    pub fn external_service(model: &str) -> String {
        format!("{model}-external")
    }
    /// The Ingress of one exposed port (`api` or `web`).
    pub fn ingress(model: &str, port: &str) -> String {
        format!("{model}-{port}")
    }
    /// The Gateway API route (and BackendTLSPolicy) of one exposed port.
    pub fn route(model: &str, port: &str) -> String {
        format!("{model}-{port}")
    }
    pub fn inference_pool(model: &str) -> String {
        model.to_string()
    }
    /// The CA bundle as a Secret (`ca.crt` only), for Ingress controllers
    /// that verify backends with Secrets only.
    pub fn ca_bundle_secret(model: &str) -> String {
        format!("{model}-ca-bundle")
    }
    /// The HorizontalPodAutoscaler or KEDA ScaledObject.
    pub fn autoscaler(model: &str) -> String {
        model.to_string()
    }
    pub fn config_map(model: &str) -> String {
        format!("{model}-config")
    }
    pub fn tls_secret(model: &str) -> String {
        format!("{model}-tls")
    }
    /// The operator-only Secret with the CA's keys and rotation state.
    pub fn ca_secret(model: &str) -> String {
        format!("{model}-ca")
    }
    pub fn ca_bundle(model: &str) -> String {
        format!("{model}-ca-bundle")
    }
    pub fn signing_keys(model: &str) -> String {
        format!("{model}-signing-keys")
    }
    pub fn api_keys(model: &str) -> String {
        format!("{model}-api-keys")
    }
}
