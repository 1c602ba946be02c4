//! The CRDs against a real kube-apiserver: they install, document
//! themselves, fill in defaults, show printer columns, and the API server
//! rejects invalid specs with a message that names the field.

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind, Status};
use securechat_crds::v1alpha1::{
    ChatApiKey, SecureChatModel, SigningAlgorithm, TlsMode, TlsVersion,
};
use securechat_test_support::cluster::{
    TestNamespace, client, install_crds, kubectl, kubectl_eventually, kubectl_ok,
};
use serde_json::{Value, json};

fn scm_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "securechat.dev",
        "v1alpha1",
        "SecureChatModel",
    ))
}

fn cak_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "securechat.dev",
        "v1alpha1",
        "ChatApiKey",
    ))
}

fn object(kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("valid object")
}

/// Creates the object and returns the API server's refusal.
async fn rejection(api: &Api<DynamicObject>, obj: &DynamicObject) -> Status {
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => panic!("the API server accepted an invalid spec: {}", obj.data),
        Err(kube::Error::Api(status)) => *status,
        Err(other) => panic!("unexpected error kind: {other}"),
    }
}

#[tokio::test]
async fn crds_are_established_and_documented() {
    let _ = client().await;
    install_crds();
    // The OpenAPI document is published a moment after Established.
    let explain = kubectl_eventually(&["explain", "scm.spec.network"]);
    assert!(
        explain.contains("security-group"),
        "kubectl explain lacks the field docs:\n{explain}"
    );
    let explain = kubectl_ok(&["explain", "scm.spec.signingKeys.gracePeriod"]);
    assert!(explain.contains("previous key still verifies"), "{explain}");
    let explain = kubectl_ok(&["explain", "cak.spec.expiresAfter"]);
    assert!(explain.contains("Mutually exclusive"), "{explain}");
    // The caps on certificate lifetimes are documented where users look.
    explain_eventually("scm.spec.tls.validity", "at most 8760h (1 year)");
    explain_eventually("scm.spec.tls.caValidity", "at most 87600h (10 years)");
    // Issue 26's fields.
    explain_eventually("cak.spec.reloader", "reloader.stakater.com/search");
    explain_eventually("cak.status.firstMintedAt", "expiresAfter counts from here");
    explain_eventually("cak.status.handledRotateRequest", "securechat.dev/rotate");
    explain_eventually("scm.spec.auth.tokenTTL", "at most signingKeys.gracePeriod");
    // Issue 23's fields.
    explain_eventually(
        "scm.spec.autoscaling.target",
        "The signal's target average per pod",
    );
    explain_eventually("scm.spec.expose.routes.mode", "BackendTLSPolicy");
    explain_eventually(
        "scm.spec.web.sso.wecom.login",
        "QrCode (a browser) or InApp (inside the WeChat Work app)",
    );
    explain_eventually(
        "scm.spec.network.monitoring",
        "Who may scrape the pods' `/metrics`",
    );
    let names = kubectl_ok(&["api-resources", "--api-group=securechat.dev", "-o", "wide"]);
    assert!(names.contains("scm") && names.contains("cak"), "{names}");
    let (ok, out, _) = kubectl(&["get", "securechat", "-A"]);
    assert!(ok, "the `securechat` category should be listable: {out}");
}

/// Waits until `kubectl explain field` says `wanted` (white space folded):
/// after a CRD changes, the API server republishes its OpenAPI a moment
/// later, so a cluster that had the old CRD explains the old text at first.
fn explain_eventually(field: &str, wanted: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let explain = kubectl_ok(&["explain", field]);
        let text = explain.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.contains(wanted) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{field} lacks {wanted:?} after 30s:\n{explain}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[tokio::test]
async fn empty_spec_is_accepted_and_read_back_with_defaults() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "defaults").await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &scm_resource());
    api.create(
        &PostParams::default(),
        &object("SecureChatModel", "empty", json!({})),
    )
    .await
    .expect("an empty spec is valid");

    let typed: Api<SecureChatModel> = Api::namespaced(client, &ns.name);
    let scm = typed.get("empty").await.expect("read back");
    let spec = &scm.spec;
    // No schema default: an unset count is what lets autoscaling own it.
    assert_eq!(spec.replicas, None);
    assert_eq!(spec.fixed_replicas(), Some(1));
    assert!(
        spec.model.source.embedded.is_some(),
        "default source is the embedded model"
    );
    assert_eq!(spec.model.max_tokens, 2048);
    assert_eq!(spec.model.temperature, 0.7);
    assert_eq!((spec.ports.api, spec.ports.web), (8000, 8501));
    assert_eq!(spec.tls.mode, TlsMode::Generated);
    assert_eq!(spec.tls.min_version, TlsVersion::V1_3);
    assert_eq!(spec.signing_keys.algorithm, SigningAlgorithm::EdDSA);
    assert_eq!(spec.signing_keys.rotation_period.as_secs(), 24 * 3600);
    assert_eq!(spec.signing_keys.grace_period.as_secs(), 3600);
    assert_eq!(spec.auth.token_ttl.as_secs(), 30 * 60);
    assert_eq!(spec.auth.leeway.as_secs(), 5);
    assert_eq!(spec.rate_limit.requests_per_minute, 10);
    assert_eq!(spec.resources.gpu.count, 0);
    assert_eq!(spec.resources.gpu.resource_name, "nvidia.com/gpu");
    assert_eq!(spec.sensitive_data.detectors.len(), 5);
    assert!(spec.sensitive_data.input && spec.sensitive_data.output);
    assert!(spec.audit.enabled && !spec.audit.include_prompts);
    assert!(
        spec.network.ingress.is_empty(),
        "locked down: no ingress by default"
    );
    assert!(spec.cors.allowed_origins.is_empty());
    assert_eq!(spec.roles.read_only.permissions.len(), 1);
    assert!(
        spec.network.monitoring.enabled,
        "Prometheus may scrape /metrics by default"
    );

    // The raw stored object shows the defaults too (what `kubectl get -o yaml` prints).
    let raw = api.get("empty").await.expect("raw read back");
    assert_eq!(
        raw.data["spec"]["signingKeys"]["rotationPeriod"],
        json!("24h")
    );
    // The scraper's default, as the API server stores it.
    assert_eq!(
        raw.data["spec"]["network"]["monitoring"],
        json!({"enabled": true,
            "fromNamespaces": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "fromPods": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}})
    );
    // No family is declared by default: the server detects it from the files.
    assert_eq!(raw.data["spec"]["model"].get("family"), None);
}

#[tokio::test]
async fn invalid_model_specs_are_rejected_naming_the_field() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "invalid-scm").await;
    let api: Api<DynamicObject> = Api::namespaced_with(client, &ns.name, &scm_resource());

    // (case, spec, text the refusal must contain)
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "bad CIDR",
            json!({"network": {"ingress": [{"port": 8000, "from": ["10.0.0.0/33"]}]}}),
            "must be a CIDR",
        ),
        (
            "CIDR garbage",
            json!({"network": {"ingress": [{"port": 8000, "from": ["internal"]}]}}),
            "must be a CIDR",
        ),
        (
            "port 0",
            json!({"network": {"ingress": [{"port": 0, "from": ["10.0.0.0/16"]}]}}),
            "spec.network.ingress[0].port",
        ),
        (
            "port too high",
            json!({"ports": {"api": 70000}}),
            "spec.ports.api",
        ),
        (
            "duplicate ports",
            json!({"ports": {"api": 8443, "web": 8443}}),
            "api and web must be different",
        ),
        (
            "rule without source",
            json!({"network": {"ingress": [{"port": 8000}]}}),
            "each rule needs a source",
        ),
        (
            "monitoring open to every pod",
            json!({"network": {"monitoring": {"fromNamespaces": {}, "fromPods": {"matchLabels": {}}}}}),
            "fromNamespaces and fromPods cannot both be empty",
        ),
        (
            "egress bad CIDR",
            json!({"network": {"egress": [{"port": 443, "to": ["300.1.1.1/32"]}]}}),
            "must be a CIDR",
        ),
        (
            "renewBefore >= validity",
            json!({"tls": {"validity": "24h", "renewBefore": "48h"}}),
            "tls.renewBefore: must be shorter than tls.validity",
        ),
        (
            "validity malformed",
            json!({"tls": {"validity": "90d"}}),
            "spec.tls.validity",
        ),
        (
            "ExistingSecret without secretName",
            json!({"tls": {"mode": "ExistingSecret"}}),
            "tls.secretName: required",
        ),
        (
            "Generated with secretName",
            json!({"tls": {"secretName": "mine"}}),
            "tls.secretName: only allowed",
        ),
        (
            "unknown TLS mode",
            json!({"tls": {"mode": "SelfSigned"}}),
            "spec.tls.mode",
        ),
        (
            "grace >= rotation",
            json!({"signingKeys": {"rotationPeriod": "1h", "gracePeriod": "2h"}}),
            "signingKeys.gracePeriod: must be shorter",
        ),
        (
            "rotation too short",
            json!({"signingKeys": {"rotationPeriod": "1m", "gracePeriod": "30s"}}),
            "signingKeys.rotationPeriod: must be at least",
        ),
        (
            "unknown algorithm",
            json!({"signingKeys": {"algorithm": "HS256"}}),
            "spec.signingKeys.algorithm",
        ),
        (
            "zero requests per minute",
            json!({"rateLimit": {"requestsPerMinute": 0}}),
            "spec.rateLimit.requestsPerMinute",
        ),
        (
            "negative burst",
            json!({"rateLimit": {"burst": -1}}),
            "spec.rateLimit.burst",
        ),
        (
            "17 GPUs",
            json!({"resources": {"gpu": {"count": 17}}}),
            "spec.resources.gpu.count",
        ),
        (
            "negative GPUs",
            json!({"resources": {"gpu": {"count": -1}}}),
            "spec.resources.gpu.count",
        ),
        (
            "product without GPUs",
            json!({"resources": {"gpu": {"product": "NVIDIA-A100-SXM4-80GB"}}}),
            "resources.gpu.product",
        ),
        (
            "negative replicas",
            json!({"replicas": -1}),
            "spec.replicas",
        ),
        (
            "two model sources",
            json!({"model": {"source": {"embedded": {}, "volume": {"claimName": "w", "path": "m.gguf"}}}}),
            "set exactly one of",
        ),
        (
            "embedded with ChatGLM3",
            json!({"model": {"family": "ChatGLM3"}}),
            "model.family",
        ),
        (
            "unknown family",
            json!({"model": {"family": "GPT5"}}),
            "spec.model.family",
        ),
        (
            "temperature > 2",
            json!({"model": {"temperature": 3.5}}),
            "spec.model.temperature",
        ),
        (
            "leeway too large",
            json!({"auth": {"leeway": "10m"}}),
            "auth.leeway",
        ),
        (
            "http OIDC issuer",
            json!({"auth": {"oidc": [{"issuerURL": "http://idp.example.com", "audience": "chat"}]}}),
            "must be an https URL",
        ),
        (
            "bad allowed namespace",
            json!({"auth": {"apiKeys": {"allowedNamespaces": ["Not_A_Namespace"]}}}),
            "spec.auth.apiKeys.allowedNamespaces[0]",
        ),
        (
            "unknown detector",
            json!({"sensitiveData": {"detectors": ["Passport"]}}),
            "spec.sensitiveData.detectors[0]",
        ),
        (
            "bad CORS origin",
            json!({"cors": {"allowedOrigins": ["*"]}}),
            "spec.cors.allowedOrigins[0]",
        ),
        (
            "volume path escapes",
            json!({"model": {"family": "ChatGLM3", "source": {"volume": {"claimName": "w", "path": "../etc"}}}}),
            "must not contain '..'",
        ),
        (
            "SSO client secret without a client id",
            json!({"auth": {"oidc": [{"issuerURL": "https://idp.example", "audience": "chat",
                                      "clientSecretName": "idp-client"}]}}),
            "auth.oidc.clientSecretName: only with a clientId",
        ),
        (
            "GPU product that is not a label value",
            json!({"resources": {"gpu": {"count": 1, "product": "A100 \"; rm -rf /"}}}),
            "resources.gpu.product: must be a label value",
        ),
        // Durations: bounded, with a message that names the field, never
        // CEL's "type conversion error" (beyond Go's 2,562,047h).
        (
            "validity beyond CEL's duration range",
            json!({"tls": {"validity": "100000000h"}}),
            "tls.validity: must be at least 1h and at most 8760h",
        ),
        (
            "validity of 228 years",
            json!({"tls": {"validity": "2000000h"}}),
            "tls.validity: must be at least 1h and at most 8760h",
        ),
        (
            "renewBefore beyond range",
            json!({"tls": {"renewBefore": "100000000h"}}),
            "tls.renewBefore: must be at least 1m and at most 8760h",
        ),
        (
            "CA validity above 10 years",
            json!({"tls": {"caValidity": "87601h"}}),
            "tls.caValidity: must be at least 1h and at most 87600h",
        ),
        (
            "CA overlap beyond range",
            json!({"tls": {"caOverlap": "100000000h"}}),
            "tls.caOverlap: must be at most 8760h",
        ),
        (
            "rotation period beyond range",
            json!({"signingKeys": {"rotationPeriod": "100000000h"}}),
            "signingKeys.rotationPeriod: must be at least 5m and at most 8760h",
        ),
        (
            "grace period beyond range",
            json!({"signingKeys": {"gracePeriod": "100000000h"}}),
            "signingKeys.gracePeriod: must be at most 8760h",
        ),
        (
            "token TTL beyond range",
            json!({"auth": {"tokenTTL": "100000000h"}}),
            "auth.tokenTTL: must be at least 1m and at most 24h",
        ),
        // Issue 26: the previous signing key verifies only for the grace,
        // so a token may not outlive it.
        (
            "a token lifetime beyond the signing keys' grace",
            json!({"auth": {"tokenTTL": "2h"}, "signingKeys": {"gracePeriod": "1h"}}),
            "auth.tokenTTL: must not exceed signingKeys.gracePeriod",
        ),
        (
            "a token lifetime beyond the default grace (1h)",
            json!({"auth": {"tokenTTL": "90m"}}),
            "auth.tokenTTL: must not exceed signingKeys.gracePeriod",
        ),
        (
            "a grace shorter than the default token lifetime (30m)",
            json!({"signingKeys": {"gracePeriod": "10m"}}),
            "auth.tokenTTL: must not exceed signingKeys.gracePeriod",
        ),
        (
            "leeway beyond range",
            json!({"auth": {"leeway": "100000000h"}}),
            "auth.leeway: must be at most 1m",
        ),
        // Custom patterns: what CEL can tell of Rust regex syntax.
        (
            "look-around in a custom pattern",
            json!({"sensitiveData": {"customPatterns": [{"name": "x", "regex": "secret(?=:)"}]}}),
            "sensitiveData.customPatterns[].regex: Rust regex syntax has no look-around",
        ),
        (
            "backreference in a custom pattern",
            json!({"sensitiveData": {"customPatterns": [{"name": "x", "regex": "(a)\\1"}]}}),
            "sensitiveData.customPatterns[].regex: Rust regex syntax has no backreferences",
        ),
        (
            "custom patterns too long in all",
            json!({"sensitiveData": {"customPatterns": (0..9)
                .map(|i| json!({"name": format!("p{i}"), "regex": "a".repeat(1000)}))
                .collect::<Vec<_>>()}}),
            "sensitiveData.customPatterns: at most 8192 characters of regex in all",
        ),
        // spec.serving and spec.sharedState (issues 3/9 and 4/9).
        (
            "no sequences at once",
            json!({"serving": {"maxConcurrentSequences": 0}}),
            "spec.serving.maxConcurrentSequences",
        ),
        (
            "a KV cache smaller than one prefill chunk",
            json!({"serving": {"kvCacheTokens": 64, "prefillChunkTokens": 128}}),
            "serving.kvCacheTokens: must hold at least one prefill chunk",
        ),
        (
            "a negative queue",
            json!({"serving": {"maxQueue": -1}}),
            "spec.serving.maxQueue",
        ),
        (
            "a zero tier weight",
            json!({"serving": {"tierWeights": {"readOnly": 0}}}),
            "spec.serving.tierWeights.readOnly",
        ),
        (
            "a context window below the minimum",
            json!({"model": {"contextLength": 16}}),
            "spec.model.contextLength",
        ),
        (
            "a store address without a port",
            json!({"sharedState": {"address": "valkey.infra.svc", "network": {"to": ["10.0.5.0/24"]}}}),
            "sharedState.address: must be host:port",
        ),
        (
            "a store port out of range",
            json!({"sharedState": {"address": "valkey.infra.svc:70000", "network": {"to": ["10.0.5.0/24"]}}}),
            "sharedState.address: the port must be between 1 and 65535",
        ),
        (
            "a store port 0",
            json!({"sharedState": {"address": "[fd00::7]:0", "network": {"to": ["10.0.5.0/24"]}}}),
            "sharedState.address: the port must be between 1 and 65535",
        ),
        (
            "a store nobody says where it runs",
            json!({"sharedState": {"address": "valkey:6379", "network": {}}}),
            "sharedState.network: say where the store runs",
        ),
        (
            "a store range that is not a CIDR",
            json!({"sharedState": {"address": "valkey:6379", "network": {"to": ["valkey"]}}}),
            "must be a CIDR",
        ),
        (
            "a CA bundle in both a ConfigMap and a Secret",
            json!({"sharedState": {"address": "valkey:6379", "network": {"to": ["10.0.5.0/24"]},
                "tls": {"caBundle": {"configMapName": "ca", "secretName": "ca"}}}}),
            "caBundle: give exactly one of configMapName or secretName",
        ),
        (
            "a credentials Secret name that is not an object name",
            json!({"sharedState": {"address": "valkey:6379", "network": {"to": ["10.0.5.0/24"]},
                "credentials": {"secretName": "Valkey_ACL"}}}),
            "spec.sharedState.credentials.secretName",
        ),
        (
            "a password key that cannot be a Secret key",
            json!({"sharedState": {"address": "valkey:6379", "network": {"to": ["10.0.5.0/24"]},
                "credentials": {"secretName": "acl", "passwordKey": "../password"}}}),
            "spec.sharedState.credentials.passwordKey",
        ),
        (
            "a CA ConfigMap name that is not an object name",
            json!({"sharedState": {"address": "valkey:6379", "network": {"to": ["10.0.5.0/24"]},
                "tls": {"caBundle": {"configMapName": "CA bundle"}}}}),
            "spec.sharedState.tls.caBundle.configMapName",
        ),
        (
            "a store timeout that is not a duration",
            json!({"sharedState": {"address": "valkey:6379", "network": {"to": ["10.0.5.0/24"]},
                "timeout": "soon"}}),
            "spec.sharedState.timeout",
        ),
        // spec.web.sso: the fields each kind needs, https endpoints,
        // unique names.
        (
            "a WeCom provider without its wecom section",
            json!({"web": {"sso": [{"name": "wecom", "kind": "WeCom", "clientId": "ww1",
                "clientSecretName": "wecom-app"}]}}),
            "kind WeCom needs the wecom section",
        ),
        (
            "a WeCom provider without the corpsecret",
            json!({"web": {"sso": [{"name": "wecom", "kind": "WeCom", "clientId": "ww1",
                "wecom": {"agentId": "1000002"}}]}}),
            "kind WeCom needs clientSecretName",
        ),
        (
            "an OAuth2 provider without its endpoints",
            json!({"web": {"sso": [{"name": "corp", "kind": "OAuth2", "clientId": "c"}]}}),
            "kind OAuth2 needs the oauth2 section",
        ),
        (
            "an OAuth2 token endpoint over http",
            json!({"web": {"sso": [{"name": "corp", "kind": "OAuth2", "clientId": "c",
                "oauth2": {"authorizeURL": "https://idp.example/authorize",
                    "tokenURL": "http://idp.example/token",
                    "userInfoURL": "https://idp.example/me"}}]}}),
            "web.sso.oauth2.tokenURL: must be an https URL",
        ),
        (
            "two providers with one name",
            json!({"web": {"sso": [
                {"name": "corp", "kind": "WeCom", "clientId": "a", "clientSecretName": "s",
                 "wecom": {"agentId": "1"}},
                {"name": "corp", "kind": "WeCom", "clientId": "b", "clientSecretName": "s",
                 "wecom": {"agentId": "2"}}]}}),
            "each provider needs its own name",
        ),
        (
            "a redirect URL that is not the OAuth2 callback",
            json!({"web": {"sso": [{"name": "wecom", "kind": "WeCom", "clientId": "ww1",
                "clientSecretName": "s", "redirectURL": "https://chat.example/web/sso/callback",
                "wecom": {"agentId": "1000002"}}]}}),
            "must be an https URL ending in /web/oauth2/callback",
        ),
        (
            "mtls allow entry that is not a SPIFFE ID",
            json!({"auth": {"mtls": {"allow": [{"spiffeID": "https://apps/web", "tier": "Developer"}]}}}),
            "spec.auth.mtls.allow[0].spiffeID",
        ),
        (
            "mtls allow entry with a wildcard inside",
            json!({"auth": {"mtls": {"allow": [{"spiffeID": "spiffe://cluster.local/ns/*/sa/web", "tier": "Developer"}]}}}),
            "spec.auth.mtls.allow[0].spiffeID",
        ),
        (
            "mtls with an existing TLS Secret and no trust bundle",
            json!({"tls": {"mode": "ExistingSecret", "secretName": "tls"}, "auth": {"mtls": {"mode": "Required"}}}),
            "spec.auth.mtls.trustBundle: required with tls.mode ExistingSecret",
        ),
        (
            "maxTiers key that is not a namespace",
            json!({"auth": {"apiKeys": {"maxTiers": {"Team_A": "Admin"}}}}),
            "auth.apiKeys.maxTiers: keys must be namespace names or *",
        ),
        (
            "maxTiers value that is not a tier",
            json!({"auth": {"apiKeys": {"maxTiers": {"apps": "Root"}}}}),
            "spec.auth.apiKeys.maxTiers.apps",
        ),
    ];
    assert!(cases.len() >= 10);
    let mut failures = Vec::new();
    for (i, (case, spec, expected)) in cases.iter().enumerate() {
        let refusal = match api
            .create(
                &PostParams::default(),
                &object("SecureChatModel", &format!("bad-{i}"), spec.clone()),
            )
            .await
        {
            Ok(_) => {
                failures.push(format!("{case}: accepted {spec}"));
                continue;
            }
            Err(kube::Error::Api(status)) => *status,
            Err(other) => panic!("{case}: unexpected error {other}"),
        };
        if refusal.code != 422
            || !refusal.message.contains(expected)
            || refusal.message.contains(CEL_FAILURE)
        {
            failures.push(format!(
                "{case}: expected 422 mentioning {expected:?} (and no rule failing to evaluate), got {}: {}",
                refusal.code, refusal.message
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // A token lifetime equal to the grace is what the rule allows.
    api.create(
        &PostParams::default(),
        &object(
            "SecureChatModel",
            "ttl-equals-grace",
            json!({"auth": {"tokenTTL": "45m"}, "signingKeys": {"gracePeriod": "45m"}}),
        ),
    )
    .await
    .expect("tokenTTL equal to signingKeys.gracePeriod is accepted");

    let long_name = "a".repeat(41);
    let refusal = rejection(&api, &object("SecureChatModel", &long_name, json!({}))).await;
    assert!(
        refusal
            .message
            .contains("metadata.name: must be at most 40"),
        "{}",
        refusal.message
    );
    // Valid object names that are not DNS labels cannot name the model's
    // Service: refused at admission instead of failing every reconcile.
    for name in ["my.model", "1model"] {
        let refusal = rejection(&api, &object("SecureChatModel", name, json!({}))).await;
        assert!(
            refusal
                .message
                .contains("metadata.name: must be a DNS label"),
            "{name}: {}",
            refusal.message
        );
    }
}

/// What the API server says when a CEL rule fails to evaluate instead of
/// refusing with its message.
const CEL_FAILURE: &str = "evaluating rule";

#[tokio::test]
async fn invalid_api_key_specs_are_rejected_naming_the_field() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "invalid-cak").await;
    let api: Api<DynamicObject> = Api::namespaced_with(client, &ns.name, &cak_resource());
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no modelRef",
            json!({"tier": "Developer"}),
            "spec.modelRef: Required",
        ),
        (
            "modelRef without name",
            json!({"modelRef": {}}),
            "spec.modelRef.name: Required",
        ),
        (
            "unknown tier",
            json!({"modelRef": {"name": "m"}, "tier": "SuperUser"}),
            "spec.tier",
        ),
        (
            "both expiries",
            json!({"modelRef": {"name": "m"}, "expiresAfter": "24h", "expiresAt": "2030-01-01T00:00:00Z"}),
            "mutually exclusive",
        ),
        (
            "expiresAt not RFC 3339",
            json!({"modelRef": {"name": "m"}, "expiresAt": "tomorrow"}),
            "spec.expiresAt",
        ),
        (
            "expiresAfter in days",
            json!({"modelRef": {"name": "m"}, "expiresAfter": "30d"}),
            "spec.expiresAfter",
        ),
        (
            "rotation grace >= period",
            json!({"modelRef": {"name": "m"}, "rotation": {"period": "1h", "gracePeriod": "1h"}}),
            "rotation.gracePeriod: must be shorter",
        ),
        (
            "bad secret name",
            json!({"modelRef": {"name": "m"}, "secretName": "Has Spaces"}),
            "spec.secretName",
        ),
        (
            "expiresAfter beyond CEL's duration range",
            json!({"modelRef": {"name": "m"}, "expiresAfter": "100000000h"}),
            "expiresAfter: must be at least 1m and at most 87600h",
        ),
        (
            "rotation period beyond range",
            json!({"modelRef": {"name": "m"}, "rotation": {"period": "100000000h"}}),
            "rotation.period: must be at least 1m and at most 8760h",
        ),
        (
            "rotation grace period beyond range",
            json!({"modelRef": {"name": "m"}, "rotation": {"gracePeriod": "100000000h"}}),
            "rotation.gracePeriod: must be at most 8760h",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (case, spec, expected)) in cases.iter().enumerate() {
        let refusal = rejection(
            &api,
            &object("ChatApiKey", &format!("bad-{i}"), spec.clone()),
        )
        .await;
        if refusal.code != 422
            || !refusal.message.contains(expected)
            || refusal.message.contains(CEL_FAILURE)
        {
            failures.push(format!(
                "{case}: expected 422 mentioning {expected:?}, got {}: {}",
                refusal.code, refusal.message
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The key's name labels its consumer Secret: at most 63 characters.
    let long_name = "k".repeat(64);
    let refusal = rejection(
        &api,
        &object("ChatApiKey", &long_name, json!({"modelRef": {"name": "m"}})),
    )
    .await;
    assert!(
        refusal
            .message
            .contains("metadata.name: must be at most 63 characters"),
        "{}",
        refusal.message
    );

    // modelRef is immutable.
    api.create(
        &PostParams::default(),
        &object("ChatApiKey", "good", json!({"modelRef": {"name": "m"}})),
    )
    .await
    .expect("a minimal ChatApiKey is valid");
    let typed: Api<ChatApiKey> = Api::namespaced(api.clone().into_client(), &ns.name);
    let key = typed.get("good").await.expect("read back");
    assert_eq!(
        key.spec.tier,
        securechat_crds::v1alpha1::Tier::ReadOnly,
        "least privilege by default"
    );
    let patch = json!({"spec": {"modelRef": {"name": "other"}}});
    match api
        .patch("good", &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Err(kube::Error::Api(status)) => assert!(
            status.message.contains("modelRef is immutable"),
            "{}",
            status.message
        ),
        other => panic!("changing modelRef must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn printer_columns_are_shown() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "columns").await;
    let scm: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &scm_resource());
    scm.create(
        &PostParams::default(),
        &object("SecureChatModel", "cols", json!({})),
    )
    .await
    .expect("create scm");
    let cak: Api<DynamicObject> = Api::namespaced_with(client, &ns.name, &cak_resource());
    cak.create(
        &PostParams::default(),
        &object(
            "ChatApiKey",
            "cols",
            json!({"modelRef": {"name": "cols"}, "tier": "Admin"}),
        ),
    )
    .await
    .expect("create cak");

    let out = kubectl_ok(&["get", "scm", "-n", &ns.name]);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "MODEL", "REPLICAS", "ENDPOINT", "AGE"],
        "{out}"
    );
    let out = kubectl_ok(&["get", "cak", "-n", &ns.name]);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "MODEL", "TIER", "EXPIRES", "AGE"],
        "{out}"
    );
    assert!(out.contains("cols") && out.contains("Admin"), "{out}");
}
