//! The model's ServiceAccount: an identity with no API token mounted.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::Input;
use crate::labels::Names;

/// The pods' own identity. The server never calls the Kubernetes API, so no
/// token is mounted: a stolen pod has no credentials to steal.
pub fn service_account(input: &Input) -> ServiceAccount {
    ServiceAccount {
        metadata: input.metadata(Names::service_account(&input.name)),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::test_support::model;

    #[test]
    fn no_token_is_mounted_and_the_model_owns_it() {
        let m = model("chat", serde_json::json!({}));
        let sa = service_account(&Input::new(&m, "img").expect("input"));
        assert_eq!(sa.automount_service_account_token, Some(false));
        let owner = &sa.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("SecureChatModel", Some(true))
        );
    }
}
