//! Client certificates issued by the operator (issue 25, `ChatApiKey
//! spec.credential: ClientCertificate`), against the real API server and a
//! real securechat-server process on the model's projected Secrets, as
//! `rotation_under_load.rs` runs it:
//! - the certificate works: a real TLS handshake with `auth.mtls.mode:
//!   Required`, no bearer, answers 200;
//! - it is renewed under load (a one-minute lifetime, renewed at two
//!   thirds) without a failed request: the client reads its certificate
//!   from its projected Secret for every request, as a reloading app does;
//! - deleting the ChatApiKey revokes the identity at once: the next request
//!   with the still-valid certificate is 403 `identity_not_allowed`;
//! - a tier above `auth.apiKeys.maxTiers` is TierNotAllowed, and a model
//!   whose server asks for no certificate is ClientCertificateUnavailable.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use securechat_crds::v1alpha1::{ChatApiKey, SecureChatModel};
use securechat_operator::client_cert::SERIAL_ANNOTATION;
use securechat_operator::reasons::api_key::KeyReason;
use securechat_test_support::cluster::serving::{ServedModel, read};
use securechat_test_support::cluster::{
    self, TestNamespace, await_condition, client, install_crds,
};
use securechat_test_support::https::client_certs::{ClientIdentity, client as mtls_client};
use serde_json::json;

/// Requests per second of the load; each one makes a new TLS handshake.
const RATE: u64 = 20;
/// The certificate's lifetime during the load: renewed every 40 s.
const LIFETIME: &str = "1m";

/// The certificate and key projected under `app`, read as one pair: the
/// projection swaps both files at once, but two reads may straddle a swap,
/// so the certificate is read again after the key and the pair retried
/// until both reads agree (what a careful reloading client does).
fn identity(app: &Path) -> Option<ClientIdentity> {
    for _ in 0..10 {
        let cert_pem = read(&app.join("tls.crt"))?;
        let key_pem = read(&app.join("tls.key"))?;
        if read(&app.join("tls.crt")).as_deref() == Some(cert_pem.as_str()) {
            return Some(ClientIdentity { cert_pem, key_pem });
        }
    }
    None
}

/// `GET /v1/models` presenting `identity`, no bearer: (status, body).
async fn get_models(
    app: &Path,
    url: &str,
    identity: &ClientIdentity,
) -> Result<(u16, String), String> {
    let response = mtls_client(&app.join("ca.crt"), Some(identity))
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    Ok((status, response.text().await.unwrap_or_default()))
}

fn ready_reason(key: Option<&ChatApiKey>) -> Option<String> {
    key?.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone())
}

async fn await_reason(keys: &Api<ChatApiKey>, name: &str, reason: KeyReason) -> ChatApiKey {
    await_condition(
        keys.clone(),
        name,
        reason.as_str(),
        Duration::from_secs(60),
        move |k: Option<&ChatApiKey>| ready_reason(k).as_deref() == Some(reason.as_str()),
    )
    .await
}

fn serial(key: &ChatApiKey) -> String {
    key.status
        .as_ref()
        .and_then(|s| s.client_certificate.as_ref())
        .map(|c| c.serial.clone())
        .unwrap_or_default()
}

/// Waits until the key's certificate serial differs from `from`.
async fn renewed(keys: &Api<ChatApiKey>, from: &str, within: Duration) -> ChatApiKey {
    let from = from.to_string();
    await_condition(
        keys.clone(),
        "app",
        "a renewed client certificate",
        within,
        move |k: Option<&ChatApiKey>| k.is_some_and(|k| !serial(k).is_empty() && serial(k) != from),
    )
    .await
}

/// What became of one request of the load.
#[derive(Debug)]
struct Outcome {
    /// A slice of the certificate it presented, to count certificates.
    certificate_part: String,
    result: Result<u16, String>,
}

/// Sends `RATE` requests a second with whatever certificate `app` holds
/// at that moment until `stop` is set.
fn start_load(
    app: std::path::PathBuf,
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
        let mut in_flight = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            let (app, url, outcomes) = (app.clone(), url.clone(), outcomes.clone());
            in_flight.push(tokio::spawn(async move {
                let Some(held) = identity(&app) else {
                    outcomes.lock().unwrap().push(Outcome {
                        certificate_part: String::new(),
                        result: Err("no certificate pair in the projected Secret".into()),
                    });
                    return;
                };
                // Base64 of the serial and the public key: differs between
                // certificates.
                let certificate_part = held.cert_pem.get(100..180).unwrap_or_default().to_string();
                let result = get_models(&app, &url, &held).await.map(|(s, _)| s);
                outcomes.lock().unwrap().push(Outcome {
                    certificate_part,
                    result,
                });
            }));
        }
        for task in in_flight {
            let _ = task.await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_issued_certificate_works_renews_under_load_and_dies_with_its_key() {
    let kube = client().await;
    install_crds();
    let ns = TestNamespace::create(&kube, "clientcert").await;
    let operator =
        cluster::InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;
    let models: Api<SecureChatModel> = Api::namespaced(kube.clone(), &ns.name);
    let keys: Api<ChatApiKey> = Api::namespaced(kube.clone(), &ns.name);
    models
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
                "metadata": {"name": "m", "namespace": ns.name},
                "spec": {
                    "replicas": 0,
                    "tls": {"dnsNames": ["localhost"]},
                    // No allow entry: only the key's binding admits the
                    // certificate's identity.
                    "auth": {"mtls": {"mode": "Required"}},
                    "rateLimit": {"requestsPerMinute": 1000000}
                }
            }))
            .unwrap(),
        )
        .await
        .expect("create the model");
    keys.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "securechat.dev/v1alpha1", "kind": "ChatApiKey",
            "metadata": {"name": "app", "namespace": ns.name},
            "spec": {
                "modelRef": {"name": "m"}, "tier": "Developer",
                "credential": "ClientCertificate",
                "clientCertificate": {"serviceAccountName": "billing", "lifetime": LIFETIME}
            }
        }))
        .unwrap(),
    )
    .await
    .expect("create the key");
    let key = await_reason(&keys, "app", KeyReason::Active).await;
    let status = key.status.clone().unwrap();
    let cert_status = status
        .client_certificate
        .clone()
        .expect("status.clientCertificate");
    let expected_id = format!("spiffe://cluster.local/ns/{}/sa/billing", ns.name);
    assert_eq!(cert_status.spiffe_id, expected_id);
    assert!(cert_status.not_after.is_some() && cert_status.renew_at.is_some());

    let served = ServedModel::start(&kube, &ns.name, "m", &["app"]).await;
    let (app, url) = (served.app("app"), served.url.clone());
    assert!(
        read(&app.join("api-key")).is_none(),
        "a ClientCertificate key has no API key in its Secret"
    );
    let first = identity(&app).expect("tls.crt and tls.key in the consumer Secret");
    assert_eq!(
        get_models(&app, &url, &first).await.map(|(s, _)| s),
        Ok(200),
        "the certificate alone, on a real handshake with mTLS Required"
    );

    // Renewal under load: two renewals, every request answered 200.
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = start_load(app.clone(), url.clone(), stop.clone(), outcomes.clone());
    let started = Instant::now();
    let second = renewed(&keys, &serial(&key), Duration::from_secs(120)).await;
    let third = renewed(&keys, &serial(&second), Duration::from_secs(120)).await;
    // Let the app's projection and the load catch up with the last one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.expect("the load ran");
    let load_took = started.elapsed();
    {
        let outcomes = outcomes.lock().unwrap();
        let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.result != Ok(200)).collect();
        let certificates: std::collections::BTreeSet<&str> = outcomes
            .iter()
            .map(|o| o.certificate_part.as_str())
            .collect();
        println!(
            "load: {} requests in {load_took:?}, each a new handshake, with {} certificates; serials {} -> {} -> {}",
            outcomes.len(),
            certificates.len(),
            serial(&key),
            serial(&second),
            serial(&third)
        );
        assert!(failed.is_empty(), "failed requests: {failed:#?}");
        assert!(
            certificates.len() >= 3,
            "the load used the first certificate and both renewals: {certificates:?}"
        );
    }

    // Revocation: a certificate good for ten minutes, then the key goes.
    keys.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({
            "metadata": {"annotations": {"securechat.dev/rotate": "before-revocation"}},
            "spec": {"clientCertificate": {"lifetime": "10m"}}
        })),
    )
    .await
    .expect("patch the key");
    let long = renewed(&keys, &serial(&third), Duration::from_secs(60)).await;
    let long_serial = serial(&long);
    let not_after: DateTime<Utc> = {
        let t = long
            .status
            .as_ref()
            .unwrap()
            .client_certificate
            .as_ref()
            .unwrap();
        let at = t.not_after.as_ref().expect("notAfter").0;
        DateTime::from_timestamp(at.as_second(), 0).unwrap()
    };
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &ns.name);
    let held = cluster::wait_for(
        "the ten-minute certificate projected for the app",
        Duration::from_secs(60),
        || async {
            let secret = secrets.get("app").await.ok()?;
            let serial_now = secret.metadata.annotations?.get(SERIAL_ANNOTATION)?.clone();
            (serial_now == long_serial).then_some(())?;
            let cert = String::from_utf8(secret.data?.get("tls.crt")?.0.clone()).ok()?;
            let held = identity(&app)?;
            (held.cert_pem == cert.trim()).then_some(held)
        },
    )
    .await;
    assert_eq!(get_models(&app, &url, &held).await.map(|(s, _)| s), Ok(200));
    let deleted_at = Instant::now();
    keys.delete("app", &DeleteParams::default())
        .await
        .expect("delete the key");
    let (status, body) = cluster::wait_for(
        "the deleted key's certificate to be refused",
        Duration::from_secs(60),
        || {
            let (app, url, held) = (app.clone(), url.clone(), &held);
            async move {
                tokio::time::sleep(Duration::from_millis(250)).await;
                match get_models(&app, &url, held).await {
                    Ok((200, _)) | Err(_) => None,
                    Ok(refused) => Some(refused),
                }
            }
        },
    )
    .await;
    let refused_at = Utc::now();
    println!(
        "revocation took effect in {:?} (certificate {long_serial} valid until {not_after})",
        deleted_at.elapsed()
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("identity_not_allowed"), "{body}");
    assert!(
        refused_at < not_after,
        "refused while the certificate was still valid ({refused_at} < {not_after})"
    );
    served.server.shutdown().await;
    drop(operator);
}

/// maxTiers applies to certificates as to keys; a model whose server asks
/// for no certificate cannot be given one; the schema refuses a rotation
/// on a certificate-only key.
#[tokio::test]
async fn certificates_follow_max_tiers_and_need_the_models_mtls() {
    let kube = client().await;
    install_crds();
    let models_ns = TestNamespace::create(&kube, "clientcert-model").await;
    let app = TestNamespace::create(&kube, "clientcert-app").await;
    let _operator = Operators::start(&kube, &[&models_ns.name, &app.name]);
    let models: Api<SecureChatModel> = Api::namespaced(kube.clone(), &models_ns.name);
    for (name, mode) in [("m", "Required"), ("plain", "Disabled")] {
        models
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
                    "metadata": {"name": name},
                    "spec": {"replicas": 0, "auth": {
                        "apiKeys": {"allowedNamespaces": [app.name]},
                        "mtls": {"mode": mode}
                    }}
                }))
                .unwrap(),
            )
            .await
            .expect("create a model");
    }
    let keys: Api<ChatApiKey> = Api::namespaced(kube.clone(), &app.name);
    let create = |name: &'static str, spec: serde_json::Value| {
        let keys = keys.clone();
        async move {
            keys.create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "securechat.dev/v1alpha1", "kind": "ChatApiKey",
                    "metadata": {"name": name}, "spec": spec
                }))
                .unwrap(),
            )
            .await
        }
    };
    let to = |model: &str| json!({"name": model, "namespace": models_ns.name});
    create(
        "admin",
        json!({"modelRef": to("m"), "tier": "Admin", "credential": "ClientCertificate"}),
    )
    .await
    .expect("create");
    create(
        "developer",
        json!({"modelRef": to("m"), "tier": "Developer", "credential": "ClientCertificate"}),
    )
    .await
    .expect("create");
    create(
        "no-mtls",
        json!({"modelRef": to("plain"), "credential": "Both"}),
    )
    .await
    .expect("create");
    let refused = create(
        "rotating",
        json!({"modelRef": to("m"), "credential": "ClientCertificate", "rotation": {"period": "1h"}}),
    )
    .await
    .expect_err("a rotation on a certificate-only key is refused");
    assert!(
        refused.to_string().contains("rotation rotates an API key"),
        "{refused}"
    );

    await_reason(&keys, "admin", KeyReason::TierNotAllowed).await;
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &app.name);
    assert!(
        secrets.get_opt("admin").await.unwrap().is_none(),
        "nothing issued"
    );
    let developer = await_reason(&keys, "developer", KeyReason::Active).await;
    assert_eq!(
        developer
            .status
            .unwrap()
            .client_certificate
            .unwrap()
            .spiffe_id,
        format!("spiffe://cluster.local/ns/{}/sa/developer", app.name)
    );
    await_reason(&keys, "no-mtls", KeyReason::ClientCertificateUnavailable).await;
    assert!(secrets.get_opt("no-mtls").await.unwrap().is_none());
}

/// Both controllers in-process, watching `namespaces`; stopped when
/// dropped.
struct Operators(Vec<tokio::task::JoinHandle<()>>);

impl Operators {
    fn start(kube: &kube::Client, namespaces: &[&str]) -> Self {
        use securechat_operator::controller::{self, Context};
        use securechat_operator::key_controller;
        use securechat_operator::metrics::Metrics;
        let state = Arc::new(Context::new(
            kube.clone(),
            "securechat/server:test".into(),
            Arc::new(Metrics::new()),
        ));
        let scopes: Vec<String> = namespaces.iter().map(|s| s.to_string()).collect();
        let (s1, n1) = (state.clone(), scopes.clone());
        Self(vec![
            tokio::spawn(async move { controller::run(s1, &n1).await }),
            tokio::spawn(async move { key_controller::run(state, &scopes).await }),
        ])
    }
}

impl Drop for Operators {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::JoinHandle::abort);
    }
}
