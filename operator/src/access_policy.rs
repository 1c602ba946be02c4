//! `spec.auth.policy`: the Rego module is read (inline, or from the
//! ConfigMap key it names) and compiled with the server's own code
//! (`securechat_crds::policy`) before the config is written, so a module
//! the server would refuse never reaches the pods: the reconcile stops at
//! a refusal (Ready=False, reason PolicyInvalid or PolicyNotFound, and a
//! Warning Event) and the pods keep the last good config. Observe
//! ([`observe`]) then decide ([`decide`], pure).

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::Api;
use securechat_crds::policy::Policy;
use securechat_crds::v1alpha1::AccessPolicySpec;

use crate::Result;
use crate::reasons;
use crate::status::Refusal;

/// Where the module was looked for and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// No `spec.auth.policy`.
    None,
    /// The module's text (inline, or the ConfigMap's key).
    Found(String),
    /// The ConfigMap of `configMapRef` does not exist.
    NoConfigMap { name: String },
    /// The ConfigMap exists without the key.
    NoKey { name: String, key: String },
}

/// Reads the module `spec` names (the ConfigMap's data only when it names
/// one).
pub async fn observe(
    client: &Client,
    namespace: &str,
    spec: Option<&AccessPolicySpec>,
) -> Result<Observed> {
    let Some(spec) = spec else {
        return Ok(Observed::None);
    };
    if let Some(rego) = &spec.rego {
        return Ok(Observed::Found(rego.clone()));
    }
    let Some(reference) = &spec.config_map_ref else {
        // Admission requires one of the two; a spec stored before that rule
        // has neither, which is no policy.
        return Ok(Observed::None);
    };
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let Some(map) = config_maps.get_opt(&reference.name).await? else {
        return Ok(Observed::NoConfigMap {
            name: reference.name.clone(),
        });
    };
    Ok(match map.data.unwrap_or_default().remove(&reference.key) {
        Some(text) => Observed::Found(text),
        None => Observed::NoKey {
            name: reference.name.clone(),
            key: reference.key.clone(),
        },
    })
}

/// The module to write into the config, or why none may be written.
pub fn decide(observed: Observed) -> Result<Option<String>, Refusal> {
    let refusal = |reason, message| Refusal {
        reason,
        message,
        condition: None,
    };
    match observed {
        Observed::None => Ok(None),
        Observed::NoConfigMap { name } => Err(refusal(
            reasons::POLICY_NOT_FOUND,
            format!("spec.auth.policy.configMapRef: ConfigMap {name} does not exist"),
        )),
        Observed::NoKey { name, key } => Err(refusal(
            reasons::POLICY_NOT_FOUND,
            format!("spec.auth.policy.configMapRef: ConfigMap {name} has no key {key}"),
        )),
        Observed::Found(text) => match Policy::compile(&text) {
            Ok(_) => Ok(Some(text)),
            Err(e) => Err(refusal(
                reasons::POLICY_INVALID,
                format!("spec.auth.policy: {e}"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_that_compiles_is_written_as_it_is() {
        let text = "package securechat\nallow := true\n".to_string();
        assert_eq!(decide(Observed::Found(text.clone())), Ok(Some(text)));
        assert_eq!(decide(Observed::None), Ok(None));
    }

    #[test]
    fn each_refusal_names_what_is_wrong() {
        let cases = [
            (
                Observed::Found("package securechat\nallow if {\n".into()),
                reasons::POLICY_INVALID,
                "spec.auth.policy: the policy does not compile",
            ),
            (
                Observed::Found("package other\nallow := true\n".into()),
                reasons::POLICY_INVALID,
                "must be `package securechat`",
            ),
            (
                Observed::NoConfigMap {
                    name: "rules".into(),
                },
                reasons::POLICY_NOT_FOUND,
                "ConfigMap rules does not exist",
            ),
            (
                Observed::NoKey {
                    name: "rules".into(),
                    key: "policy.rego".into(),
                },
                reasons::POLICY_NOT_FOUND,
                "ConfigMap rules has no key policy.rego",
            ),
        ];
        for (observed, reason, fragment) in cases {
            let refusal = decide(observed.clone()).expect_err("refused");
            assert_eq!(refusal.reason, reason, "{observed:?}");
            assert!(refusal.message.contains(fragment), "{}", refusal.message);
        }
    }
}
