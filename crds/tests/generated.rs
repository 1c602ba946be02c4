//! The committed CRD manifests are exactly what the Rust types generate, and
//! the Rust defaults agree with the schema defaults the API server applies.

use securechat_crds::crd;
use securechat_crds::v1alpha1::{ChatApiKeySpec, SecureChatModelSpec};

#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/securechat/crds");
    for (file, def) in crd::all() {
        let expected = crd::to_yaml(&def).expect("renders");
        let committed = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("{file} is missing ({e}): run `make crds`"));
        assert!(
            committed == expected,
            "{file} is out of date: run `make crds` and commit the result"
        );
    }
}

#[test]
fn an_empty_spec_deserialises_to_the_defaults() {
    let spec: SecureChatModelSpec = serde_json::from_str("{}").expect("empty spec is valid");
    assert_eq!(spec, SecureChatModelSpec::default());
    assert_eq!(spec.replicas, None);
    assert_eq!(spec.fixed_replicas(), Some(1));
    assert!(spec.model.source.embedded.is_some());
}

#[test]
fn schema_defaults_equal_rust_defaults() {
    // What the API server fills in for `spec: {}` must be what the operator
    // assumes when a field is absent: compare the schema's default for every
    // top-level field with the serialised Rust default.
    let (_, def) = crd::all().into_iter().next().expect("scm crd");
    let schema = serde_json::to_value(&def.spec.versions[0].schema).expect("schema json");
    let props = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let rust = serde_json::to_value(SecureChatModelSpec::default()).expect("json");
    for (field, value) in rust.as_object().expect("object") {
        let default = &props[field]["default"];
        assert!(!default.is_null(), "spec.{field} has no schema default");
        assert_eq!(
            default, value,
            "spec.{field}: schema default differs from the Rust default"
        );
    }
}

#[test]
fn api_key_spec_needs_a_model_ref() {
    assert!(serde_json::from_str::<ChatApiKeySpec>("{}").is_err());
    let spec: ChatApiKeySpec =
        serde_json::from_str(r#"{"modelRef":{"name":"m"}}"#).expect("minimal");
    assert_eq!(spec.model_ref.name, "m");
    assert!(!spec.suspended);
}
