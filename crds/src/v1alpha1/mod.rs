//! `securechat.dev/v1alpha1`: the SecureChatModel and ChatApiKey resources.
//!
//! Every field has a doc comment (it becomes the `kubectl explain` text) and,
//! where the spec gives one, a default the API server fills in. Validation
//! that can be expressed in the schema is: bounds and patterns as OpenAPI
//! keywords, cross-field rules as CEL `x-kubernetes-validations`, so an
//! invalid spec is refused at `kubectl apply` time rather than discovered
//! later by the operator.

mod api_key;
mod model;
mod tier;

pub use api_key::*;
pub use model::*;
pub use tier::*;

/// The API version string of this module's resources.
pub const API_VERSION: &str = "securechat.dev/v1alpha1";
