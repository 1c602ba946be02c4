//! Client certificates on the API port (`auth.mtls`), over real TLS
//! handshakes with certificates this test mints (rcgen):
//! - Required: no certificate, a certificate of another CA and an expired
//!   one are refused at the handshake (no HTTP answer, so a valid bearer
//!   beside them never reaches authentication); a valid certificate whose
//!   SPIFFE ID matches no allow entry, or that has none, is 403
//!   `identity_not_allowed`; an allowed one gets its entry's tier.
//! - Optional: bearer credentials alone work as before; a certificate with
//!   an unbound bearer is 401 `identity_mismatch`; a key bound to the
//!   certificate's SPIFFE ID works with it and is 401
//!   `certificate_required` without it.
//! - The trust bundle and the mode are hot-reloaded.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use securechat_crds::v1alpha1::Tier;
use securechat_server::{dev, keys_cli};
use securechat_test_support::https::client_certs::{self, Ca, ClientIdentity};
use securechat_test_support::https::{
    RELAXED, TestServer, add_keys, chat_body, eventually, sample, serve_prepared,
};

const WEB: &str = "spiffe://cluster.local/ns/apps/sa/web";
const OPS: &str = "spiffe://cluster.local/ns/ops/sa/admin";
const STRANGER: &str = "spiffe://cluster.local/ns/other/sa/web";
/// Not in the allow-list; a key bound to it is its identity.
const BILLING: &str = "spiffe://cluster.local/ns/billing/sa/api";

/// An HTTPS client of `s` presenting `identity`.
fn client(s: &TestServer, identity: Option<&ClientIdentity>) -> reqwest::Client {
    client_certs::client(&s.ca_path(), identity)
}

fn config(mode: &str) -> String {
    format!(
        "{RELAXED}files:\n  clientCaBundle: client-ca.crt\nauth:\n  mtls:\n    mode: {mode}\n    allow:\n      - spiffeID: spiffe://cluster.local/ns/apps/*\n        tier: Developer\n      - spiffeID: {OPS}\n        tier: Admin\n"
    )
}

/// A server whose client CA bundle is `ca`'s, in `mode`, with the usual
/// keys plus a Developer key bound to [`WEB`] (returned) and a ReadOnly one
/// bound to [`BILLING`].
async fn start(ca: &Ca, mode: &str) -> (TestServer, String) {
    let dir = tempfile::tempdir().unwrap();
    dev::ensure(dir.path()).unwrap();
    std::fs::write(dir.path().join("config.yaml"), config(mode)).unwrap();
    std::fs::write(dir.path().join("client-ca.crt"), &ca.pem).unwrap();
    let keys = add_keys(dir.path());
    let path = dir.path().join("api-keys.json");
    let mut table = keys_cli::load(&path).unwrap();
    let (id, bound) =
        keys_cli::create(&mut table, "web", Tier::Developer, None, Utc::now()).unwrap();
    table.get_mut(&id).unwrap().spiffe_id = Some(WEB.into());
    let (billing, _) =
        keys_cli::create(&mut table, "billing", Tier::ReadOnly, None, Utc::now()).unwrap();
    table.get_mut(&billing).unwrap().spiffe_id = Some(BILLING.into());
    keys_cli::save(&path, &table).unwrap();
    (serve_prepared(dir, keys, None).await, bound)
}

async fn chat(
    s: &TestServer,
    identity: Option<&ClientIdentity>,
    bearer: Option<&str>,
) -> reqwest::Result<reqwest::Response> {
    let mut request = client(s, identity)
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body("hello"));
    if let Some(b) = bearer {
        request = request.bearer_auth(b);
    }
    request.send().await
}

async fn code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test]
async fn required_refuses_bad_certificates_at_the_handshake_and_unlisted_ids_with_403() {
    let ca = Ca::new("client CA");
    let (s, _) = start(&ca, "Required").await;
    let admin = s.keys.admin.clone();

    // Refused at the handshake: no HTTP answer at all, even with a valid
    // Admin key as the bearer.
    let other_ca = Ca::new("another CA");
    for (case, identity) in [
        ("no certificate", None),
        ("another CA", Some(other_ca.client(Some(WEB), -1, 2))),
        ("expired", Some(ca.client(Some(WEB), -3, -2))),
        ("not yet valid", Some(ca.client(Some(WEB), 2, 3))),
    ] {
        let result = chat(&s, identity.as_ref(), Some(&admin)).await;
        assert!(
            result.is_err(),
            "{case}: the handshake must fail, got {:?}",
            result.map(|r| r.status())
        );
    }

    // A valid certificate whose identity is not admitted: 403 JSON.
    for (case, id) in [("unlisted SPIFFE ID", Some(STRANGER)), ("no URI SAN", None)] {
        let response = chat(&s, Some(&ca.client(id, -1, 2)), None).await.unwrap();
        assert_eq!(
            code(response).await,
            (StatusCode::FORBIDDEN, "identity_not_allowed".to_string()),
            "{case}"
        );
    }

    // Admitted: the allow entry's tier. Developer chats but may not read
    // the admin API; the exact Admin entry beats the prefix.
    let web = ca.client(Some(WEB), -1, 2);
    let response = chat(&s, Some(&web), None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let keys = |id: &ClientIdentity| client(&s, Some(id)).get(s.url("/admin/keys")).send();
    assert_eq!(
        code(keys(&web).await.unwrap()).await,
        (StatusCode::FORBIDDEN, "permission_denied".to_string())
    );
    let ops = ca.client(Some(OPS), -1, 2);
    assert_eq!(keys(&ops).await.unwrap().status(), StatusCode::OK);

    // The web port never asks for a certificate; its /metrics shows the
    // accepted certificate's expiry under its SPIFFE ID (issued until the
    // day after tomorrow: between 1 and 2 days left).
    let web_port = |path: &str| format!("https://localhost:{}{path}", s.running.web_addr.port());
    let reply = client(&s, None).get(web_port("/")).send().await.unwrap();
    assert!(reply.status().is_success(), "{}", reply.status());
    let metrics = client(&s, None)
        .get(web_port("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let left = sample(
        &metrics,
        &format!("securechat_client_certificate_expiry_seconds{{spiffe_id=\"{WEB}\"}}"),
    )
    .expect("the client certificate expiry gauge");
    assert!((86_400.0..=2.0 * 86_400.0).contains(&left), "{left}");
}

#[tokio::test]
async fn optional_makes_a_certificate_and_a_bearer_agree() {
    let ca = Ca::new("client CA");
    let (s, bound) = start(&ca, "Optional").await;
    let web = ca.client(Some(WEB), -1, 2);

    // Bearer alone: as without mTLS.
    let response = chat(&s, None, Some(&s.keys.developer)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Certificate alone: its allow entry.
    let response = chat(&s, Some(&web), None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Both, not agreeing: an unbound key, and a key bound to another ID.
    let response = chat(&s, Some(&web), Some(&s.keys.developer)).await.unwrap();
    assert_eq!(
        code(response).await,
        (StatusCode::UNAUTHORIZED, "identity_mismatch".to_string())
    );
    let ops = ca.client(Some(OPS), -1, 2);
    let response = chat(&s, Some(&ops), Some(&bound)).await.unwrap();
    assert_eq!(
        code(response).await,
        (StatusCode::UNAUTHORIZED, "identity_mismatch".to_string())
    );
    // Both, agreeing.
    let response = chat(&s, Some(&web), Some(&bound)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The bound key without its certificate.
    let response = chat(&s, None, Some(&bound)).await.unwrap();
    assert_eq!(
        code(response).await,
        (StatusCode::UNAUTHORIZED, "certificate_required".to_string())
    );

    // A certificate that is presented must be valid even when optional.
    let other = Ca::new("another CA").client(Some(WEB), -1, 2);
    assert!(
        chat(&s, Some(&other), Some(&s.keys.developer))
            .await
            .is_err()
    );
}

/// The key table's bound records are certificate identities too: the
/// operator (or `keys create --spiffe-id`) adds one, and suspending or
/// removing it refuses the certificate at once, although the certificate
/// itself stays valid until it expires.
#[tokio::test]
async fn a_bound_key_is_its_certificates_identity_and_removing_it_revokes_it() {
    let ca = Ca::new("client CA");
    let (s, _) = start(&ca, "Required").await;
    let billing = ca.client(Some(BILLING), -1, 2);
    let response = chat(&s, Some(&billing), None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let path = s.data().join("api-keys.json");
    let edit = |change: &dyn Fn(&mut securechat_crds::files::api_keys::ApiKeyTable)| {
        let mut table = keys_cli::load(&path).unwrap();
        change(&mut table);
        keys_cli::save(&path, &table).unwrap();
    };
    let is_billing = |k: &securechat_crds::files::api_keys::ApiKeyRecord| {
        k.spiffe_id.as_deref() == Some(BILLING)
    };
    edit(&|t| {
        let id = t.keys.iter().find(|k| is_billing(k)).unwrap().id.clone();
        keys_cli::suspend(t, &id).unwrap();
    });
    assert!(
        eventually(async || {
            let response = chat(&s, Some(&billing), None).await.unwrap();
            code(response).await == (StatusCode::UNAUTHORIZED, "key_suspended".to_string())
        })
        .await,
        "suspending the bound key did not refuse its certificate"
    );
    edit(&|t| t.keys.retain(|k| !is_billing(k)));
    assert!(
        eventually(async || {
            let response = chat(&s, Some(&billing), None).await.unwrap();
            code(response).await == (StatusCode::FORBIDDEN, "identity_not_allowed".to_string())
        })
        .await,
        "removing the bound key did not revoke its certificate"
    );
}

#[tokio::test]
async fn the_trust_bundle_and_the_mode_are_reloaded_live() {
    let old_ca = Ca::new("old client CA");
    let (s, _) = start(&old_ca, "Required").await;
    let new_ca = Ca::new("new client CA");
    let from_new = new_ca.client(Some(WEB), -1, 2);
    assert!(chat(&s, Some(&from_new), None).await.is_err());

    // A bundle with both CAs (a rotation's overlap): both are accepted.
    let bundle = format!("{}{}", old_ca.pem, new_ca.pem);
    write(s.data(), "client-ca.crt", &bundle);
    assert!(
        eventually(async || chat(&s, Some(&from_new), None)
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK))
        .await,
        "the new CA was not trusted after the bundle changed"
    );
    let from_old = old_ca.client(Some(WEB), -1, 2);
    assert_eq!(
        chat(&s, Some(&from_old), None).await.unwrap().status(),
        StatusCode::OK
    );

    // An unreadable bundle keeps the last good one.
    write(s.data(), "client-ca.crt", "not PEM");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        chat(&s, Some(&from_old), None).await.unwrap().status(),
        StatusCode::OK
    );

    // Disabled: no certificate requested, bearer alone works again.
    write(s.data(), "config.yaml", &config("Disabled"));
    assert!(
        eventually(async || chat(&s, None, Some(&s.keys.developer))
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK))
        .await,
        "mode Disabled did not apply"
    );
}

fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}
