//! `auth.policy`: a Rego module decides about every authorised request of
//! a real server over TLS. The seed's example (reads allowed under 10 a
//! window), a namespace's lower max_tokens (for a key of the namespace,
//! and for a client certificate whose SPIFFE ID names it), a change of the
//! module applied to the next request without a restart, and a broken
//! module refused on reload with the last good one kept.

use chrono::Utc;
use securechat_crds::v1alpha1::Tier;
use securechat_server::{dev, keys_cli};
use securechat_test_support::https::client_certs::{self, Ca};
use securechat_test_support::https::{
    RELAXED, TestServer, add_keys, chat_body_with, eventually, metrics_text, post_chat, sample,
    serve_prepared, server,
};
use serde_json::{Value, json};

const SEED: &str = include_str!("../../examples/policies/reads-per-window.rego");
const NAMESPACE_CAP: &str = include_str!("../../examples/policies/namespace-max-tokens.rego");

/// The harness's relaxed limits with `policy` as `auth.policy`.
fn config_with(policy: &str) -> String {
    let indented: String = policy.lines().map(|l| format!("    {l}\n")).collect();
    format!("{RELAXED}auth:\n  policy: |\n{indented}")
}

async fn models(s: &TestServer, key: &str) -> reqwest::Response {
    s.client
        .get(s.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_seed_policy_allows_ten_reads_a_window_then_denies_with_its_reason() {
    let s = server(&config_with(SEED)).await;
    // The tier table decides first: ReadOnly has no Models permission by
    // default, so its read is refused before the policy is asked.
    let readonly = models(&s, &s.keys.readonly).await;
    assert_eq!(readonly.status(), 403);
    let readonly: Value = readonly.json().await.unwrap();
    assert_eq!(readonly["error"]["code"], "permission_denied");

    for n in 1..=10 {
        let r = models(&s, &s.keys.developer).await;
        let status = r.status();
        assert_eq!(status, 200, "read {n}: {}", r.text().await.unwrap());
    }
    let denied = models(&s, &s.keys.developer).await;
    assert_eq!(denied.status(), 403);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["error"]["code"], "policy_denied");
    assert_eq!(
        body["error"]["message"],
        "at most 10 requests per 60 s window may read; this is request 11"
    );
    // Per caller: another key's window is its own; and other methods are
    // the tier table's business, so the denied caller may still chat.
    assert_eq!(models(&s, &s.keys.admin).await.status(), 200);
    let chat = post_chat(&s, &s.keys.developer, &chat_body_with("hi", json!({}))).await;
    assert_eq!(chat.status(), 200, "{}", chat.text().await.unwrap());

    let metrics = metrics_text(&s).await;
    assert_eq!(
        sample(
            &metrics,
            "securechat_policy_decisions_total{result=\"deny\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    // 10 reads and the chat of the developer, 1 read of the admin; the
    // ReadOnly read never reached the policy.
    assert_eq!(
        sample(
            &metrics,
            "securechat_policy_decisions_total{result=\"allow\"}"
        ),
        Some(12.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_namespace_gets_shorter_answers_and_other_callers_do_not() {
    let s = server(&config_with(NAMESPACE_CAP)).await;
    // A key as the operator names a ChatApiKey's: <namespace>/<name>.
    let path = s.data().join("api-keys.json");
    let mut table = keys_cli::load(&path).unwrap();
    let (_, batch) = keys_cli::create(
        &mut table,
        "batch-jobs/nightly",
        Tier::Developer,
        None,
        Utc::now(),
    )
    .unwrap();
    keys_cli::save(&path, &table).unwrap();
    let prompt = vec!["word"; 60].join(" ");
    let body = chat_body_with(&prompt, json!({"max_tokens": 100}));
    let answer = |key: String| {
        let body = body.clone();
        let s = &s;
        async move {
            let r = post_chat(s, &key, &body).await;
            if r.status() != 200 {
                return None;
            }
            r.json::<Value>().await.ok()
        }
    };
    // The key table reload is asynchronous.
    let mut capped = None;
    assert!(
        eventually(async || {
            capped = answer(batch.clone()).await;
            capped.is_some()
        })
        .await
    );
    let capped = capped.unwrap();
    assert_eq!(capped["usage"]["completion_tokens"], 32, "{capped}");
    assert_eq!(capped["choices"][0]["finish_reason"], "length");
    let full = answer(s.keys.developer.clone()).await.unwrap();
    assert_eq!(full["usage"]["completion_tokens"], 60, "{full}");
    assert_eq!(full["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn a_client_certificate_gets_the_namespace_its_spiffe_id_names() {
    // Certificates alone (mTLS Required): no key behind the requests, so
    // input.namespace comes from the SPIFFE ID.
    let ca = Ca::new("client CA");
    let dir = tempfile::tempdir().unwrap();
    dev::ensure(dir.path()).unwrap();
    let indented: String = NAMESPACE_CAP
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    let config = format!(
        "{RELAXED}files:\n  clientCaBundle: client-ca.crt\nauth:\n  mtls:\n    mode: Required\n    allow:\n      - spiffeID: spiffe://cluster.local/ns/*\n        tier: Developer\n  policy: |\n{indented}"
    );
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
    std::fs::write(dir.path().join("client-ca.crt"), &ca.pem).unwrap();
    let keys = add_keys(dir.path());
    let s = serve_prepared(dir, keys, None).await;
    let prompt = vec!["word"; 60].join(" ");
    let body = chat_body_with(&prompt, json!({"max_tokens": 100}));
    let answer = async |spiffe_id: &str| -> Value {
        let identity = ca.client(Some(spiffe_id), -1, 2);
        let r = client_certs::client(&s.ca_path(), Some(&identity))
            .post(s.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{spiffe_id}");
        r.json().await.unwrap()
    };
    let batch = answer("spiffe://cluster.local/ns/batch-jobs/sa/nightly").await;
    assert_eq!(batch["usage"]["completion_tokens"], 32, "{batch}");
    let web = answer("spiffe://cluster.local/ns/apps/sa/web").await;
    assert_eq!(web["usage"]["completion_tokens"], 60, "{web}");
}

#[tokio::test]
async fn a_changed_policy_applies_to_the_next_request_and_a_broken_one_is_refused() {
    let allow_all = "package securechat\nimport rego.v1\nallow := true\n";
    let s = server(&config_with(allow_all)).await;
    assert_eq!(models(&s, &s.keys.developer).await.status(), 200);

    let deny_developers = "package securechat\nimport rego.v1\n\
        default allow := false\nallow if input.tier != \"Developer\"\n\
        reason := \"developers are off today\" if not allow\n";
    std::fs::write(s.data().join("config.yaml"), config_with(deny_developers)).unwrap();
    let mut last = None;
    assert!(
        eventually(async || {
            let r = models(&s, &s.keys.developer).await;
            last = Some(r.status());
            r.status() == 403
        })
        .await,
        "the new policy never applied: {last:?}"
    );
    let body: Value = models(&s, &s.keys.developer).await.json().await.unwrap();
    assert_eq!(body["error"]["message"], "developers are off today");
    assert_eq!(models(&s, &s.keys.admin).await.status(), 200);

    // A module that does not compile: refused, the last good one stays.
    std::fs::write(
        s.data().join("config.yaml"),
        config_with("package securechat\nallow if {\n"),
    )
    .unwrap();
    assert!(
        eventually(async || {
            let metrics = metrics_text(&s).await;
            sample(
                &metrics,
                "securechat_file_reloads_total{file=\"config\",result=\"error\"}",
            ) == Some(1.0)
        })
        .await
    );
    assert_eq!(models(&s, &s.keys.developer).await.status(), 403);
    assert_eq!(models(&s, &s.keys.admin).await.status(), 200);
}
