//! Objects a spec names but the operator does not own (the shared store's
//! credentials Secret and CA bundle): read before the config and the
//! Deployment are written, because a pod that mounts a missing object or
//! key never starts, and a rollout to it would replace working pods with
//! ones stuck in ContainerCreating. Observe ([`observe`]) then decide
//! ([`refusal`], pure).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::Api;
use securechat_crds::v1alpha1::SharedStateSpec;

use crate::Result;
use crate::desired::shared_state::{Reference, ReferenceField, ReferenceKind, references};
use crate::reasons;
use crate::status::{Refusal, SHARED_STATE};

/// A reference and the keys its object holds (None: no such object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub reference: Reference,
    pub keys: Option<BTreeSet<String>>,
}

/// Reads the objects `spec.sharedState` names, keys only (values are not
/// kept).
pub async fn observe(
    client: &Client,
    namespace: &str,
    spec: Option<&SharedStateSpec>,
) -> Result<Vec<Found>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut found = Vec::new();
    for reference in references(spec) {
        let keys = match reference.kind {
            ReferenceKind::Secret => secrets.get_opt(&reference.name).await?.map(|s| {
                let data = s.data.unwrap_or_default().into_keys();
                data.chain(s.string_data.unwrap_or_default().into_keys())
                    .collect()
            }),
            ReferenceKind::ConfigMap => config_maps.get_opt(&reference.name).await?.map(|m| {
                let data = m.data.unwrap_or_default().into_keys();
                data.chain(m.binary_data.unwrap_or_default().into_keys())
                    .collect()
            }),
        };
        found.push(Found { reference, keys });
    }
    Ok(found)
}

/// Why the shared store cannot be rolled out as the spec says: an address
/// without a port, or a named object or key that is not there. Shown as
/// SharedState=False and Ready=False with the same reason.
pub fn refusal(spec: Option<&SharedStateSpec>, found: &[Found]) -> Option<Refusal> {
    let spec = spec?;
    if spec.port().is_none() {
        return Some(Refusal {
            reason: reasons::INVALID_SHARED_STATE_ADDRESS,
            message: format!(
                "sharedState.address: {:?} has no port between 1 and 65535",
                spec.address
            ),
            condition: Some(SHARED_STATE),
        });
    }
    found.iter().find_map(|Found { reference, keys }| {
        let kind = match reference.kind {
            ReferenceKind::Secret => "Secret",
            ReferenceKind::ConfigMap => "ConfigMap",
        };
        let problem = match keys {
            None => format!("{kind} {} does not exist", reference.name),
            Some(keys) => {
                let missing: Vec<&str> = reference
                    .keys
                    .iter()
                    .filter(|k| !keys.contains(*k))
                    .map(String::as_str)
                    .collect();
                if missing.is_empty() {
                    return None;
                }
                format!(
                    "{kind} {} has no key {}",
                    reference.name,
                    missing.join(", no key ")
                )
            }
        };
        let reason = match reference.field {
            ReferenceField::Credentials => reasons::CREDENTIALS_NOT_FOUND,
            ReferenceField::CaBundle => reasons::CA_BUNDLE_NOT_FOUND,
        };
        Some(Refusal {
            reason,
            message: format!(
                "{}: {problem} in the model's namespace; the config and the pods were not \
                 changed (create it, and the model continues within {}s)",
                reference.field.as_str(),
                crate::status::REQUEUE_AWAITING_REFERENCE_AT_MOST.as_secs()
            ),
            condition: Some(SHARED_STATE),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::test_support::model;
    use serde_json::json;

    fn spec() -> SharedStateSpec {
        model(
            "chat",
            json!({"sharedState": {"address": "valkey:6379", "network": {"to": ["10.0.5.0/24"]},
                "credentials": {"secretName": "acl", "usernameKey": "user"},
                "tls": {"caBundle": {"configMapName": "ca"}}}}),
        )
        .spec
        .shared_state
        .expect("sharedState")
    }

    fn found(keys: [Option<&[&str]>; 2]) -> Vec<Found> {
        references(Some(&spec()))
            .into_iter()
            .zip(keys)
            .map(|(reference, keys)| Found {
                reference,
                keys: keys.map(|k| k.iter().map(|s| s.to_string()).collect()),
            })
            .collect()
    }

    #[test]
    fn every_named_object_and_key_present_is_no_refusal() {
        let all = found([Some(&["user", "password", "extra"]), Some(&["ca.crt"])]);
        assert_eq!(refusal(Some(&spec()), &all), None);
        assert_eq!(refusal(None, &[]), None);
    }

    /// Keys the credentials Secret and the CA ConfigMap hold (None: no
    /// such object), and the refusal expected.
    struct Case {
        keys: [Option<&'static [&'static str]>; 2],
        reason: &'static str,
        message: &'static str,
    }

    #[test]
    fn a_missing_object_or_key_is_refused_naming_it() {
        let cases = [
            Case {
                keys: [None, Some(&["ca.crt"])],
                reason: reasons::CREDENTIALS_NOT_FOUND,
                message: "sharedState.credentials: Secret acl does not exist",
            },
            Case {
                keys: [Some(&["user"]), Some(&["ca.crt"])],
                reason: reasons::CREDENTIALS_NOT_FOUND,
                message: "sharedState.credentials: Secret acl has no key password",
            },
            Case {
                keys: [Some(&[]), Some(&["ca.crt"])],
                reason: reasons::CREDENTIALS_NOT_FOUND,
                message: "Secret acl has no key user, no key password",
            },
            Case {
                keys: [Some(&["user", "password"]), None],
                reason: reasons::CA_BUNDLE_NOT_FOUND,
                message: "sharedState.tls.caBundle: ConfigMap ca does not exist",
            },
        ];
        for case in cases {
            let refused = refusal(Some(&spec()), &found(case.keys)).expect("refused");
            assert_eq!(refused.reason, case.reason, "{}", case.message);
            assert!(
                refused.message.contains(case.message),
                "{}",
                refused.message
            );
            assert_eq!(refused.condition, Some(SHARED_STATE));
        }
    }

    #[test]
    fn an_address_without_a_valid_port_is_refused() {
        let mut bad = spec();
        bad.address = "valkey:0".into();
        let refused = refusal(Some(&bad), &[]).expect("refused");
        assert_eq!(refused.reason, reasons::INVALID_SHARED_STATE_ADDRESS);
    }
}
