//! `securechat.dev/v1alpha1`: the SecureChatModel and ChatApiKey resources.
//!
//! Every field has a doc comment (it becomes the `kubectl explain` text) and,
//! where the spec gives one, a default the API server fills in. Validation
//! that can be expressed in the schema is: bounds and patterns as OpenAPI
//! keywords, cross-field rules as CEL `x-kubernetes-validations`, so an
//! invalid spec is refused at `kubectl apply` time rather than discovered
//! later by the operator.
//!
//! The SecureChatModel's types live one file per section of its spec, as
//! cert-manager splits its API types per concern:
//!
//! | file | holds |
//! |---|---|
//! | `model.rs` | the resource and its root spec |
//! | `serving.rs` | `spec.model`: family, weight source, generation defaults |
//! | `engine.rs` | `spec.serving`: batching, KV cache, queue, tier weights |
//! | `shared_state.rs` | `spec.sharedState`: the store replicas share |
//! | `autoscaling.rs` | `spec.autoscaling`: HPA or KEDA on serving signals |
//! | `expose.rs` | `spec.expose`: external Service, Ingress, routes, InferencePool |
//! | `resources.rs` | `spec.resources`, `spec.scheduling` |
//! | `network.rs` | `spec.ports`, `spec.network`, `spec.cors` |
//! | `tls.rs` | `spec.tls` |
//! | `signing_keys.rs` | `spec.signingKeys` |
//! | `auth.rs` | `spec.auth` |
//! | `roles.rs` | `spec.roles`, `spec.rateLimit` |
//! | `sensitive_data.rs` | `spec.sensitiveData` |
//! | `audit.rs` | `spec.audit` |
//! | `status.rs` | `status` |
//! | `web.rs` | `spec.web`: the web UI's plain-OAuth2 sign-in (WeChat Work preset) |
//!
//! `api_key.rs` is the ChatApiKey resource; `tier.rs` the permission tiers
//! both resources name; `cel.rs` builds the CEL rules on durations. Everything is re-exported here, so users write
//! `securechat_crds::v1alpha1::TlsSpec` whatever file it lives in.

mod api_key;
mod audit;
mod auth;
mod autoscaling;
mod cel;
mod engine;
mod expose;
mod model;
mod mtls;
mod network;
mod resources;
mod roles;
mod sensitive_data;
mod serving;
mod shared_state;
mod signing_keys;
mod status;
mod tier;
mod tls;
mod web;

pub use api_key::*;
pub use audit::*;
pub use auth::*;
pub use autoscaling::*;
pub use engine::*;
pub use expose::*;
pub use model::*;
pub use mtls::*;
pub use network::*;
pub use resources::*;
pub use roles::*;
pub use sensitive_data::*;
pub use serving::*;
pub use shared_state::*;
pub use signing_keys::*;
pub use status::*;
pub use tier::*;
pub use tls::*;
pub use web::*;

/// The API version string of this module's resources.
pub const API_VERSION: &str = "securechat.dev/v1alpha1";

/// Serde default of the switches that are on unless turned off.
fn default_true() -> bool {
    true
}
