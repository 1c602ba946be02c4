//! Proof under load (issue 5/8): a steady 50 requests/s against a running
//! securechat-server while, in turn, the CA and server certificate rotate,
//! the signing keys rotate, an API key rotates, is suspended, resumed and
//! revoked. Everything is real: the operator reconciles against the API
//! server, the server reads the Secrets and ConfigMap projected the way the
//! kubelet mounts them (securechat-projector), and the client reads its key
//! and CA from its own projected consumer Secret for every request.
//!
//! Expected: no failed request for a valid credential, every request
//! accounted for; suspension, resumption and revocation take effect within
//! a propagation time that the test measures and prints.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use securechat_crds::{ChatApiKey, SecureChatModel};
use securechat_test_support::cluster::serving::{
    Credential, Outcome, ServedModel, get_models, mint_jwt, read,
};
use securechat_test_support::cluster::{
    self, TestNamespace, await_condition, client, install_crds,
};
use serde_json::json;

/// Requests per second, and how long the load runs at most.
const RATE: u64 = 50;
const MAX_LOAD: Duration = Duration::from_secs(150);

/// When the API key is expected to work: the load skips it while it is
/// known to be off, so the failure limiter never throttles the test client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyState {
    Valid,
    /// Suspended or revoked since the instant: sent anyway until the first
    /// rejection proves the change arrived.
    Off(Instant),
    /// Rejected: no more requests with it until it is valid again.
    Rejected,
    /// Resumed at the instant: a rejection before the first success is
    /// propagation, not a failure.
    Resuming(Instant),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_requests_a_second_through_every_rotation_without_a_failed_request() {
    let kube = client().await;
    install_crds();
    let ns = TestNamespace::create(&kube, "load").await;
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
                    "tls": {"dnsNames": ["localhost"], "caOverlap": "5s"},
                    "signingKeys": {"rotationPeriod": "10m", "gracePeriod": "5m"},
                    // The grace must cover the tokens' lifetime (admission checks).
                    "auth": {"tokenTTL": "5m"},
                    "rateLimit": {"requestsPerMinute": 1000000}
                }
            }))
            .unwrap(),
        )
        .await
        .expect("create the model");
    for (name, rotation) in [
        ("app", json!({"period": "1m", "gracePeriod": "30s"})),
        ("minter", serde_json::Value::Null),
    ] {
        let mut spec = json!({"modelRef": {"name": "m"}, "tier": "Developer", "secretName": name});
        if !rotation.is_null() {
            spec["rotation"] = rotation;
        }
        keys.create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "securechat.dev/v1alpha1", "kind": "ChatApiKey",
                "metadata": {"name": name, "namespace": ns.name}, "spec": spec
            }))
            .unwrap(),
        )
        .await
        .expect("create a key");
    }
    let ready = |name: &'static str| {
        await_condition(
            keys.clone(),
            name,
            "a minted key",
            Duration::from_secs(60),
            |k: Option<&ChatApiKey>| {
                k.and_then(|k| k.status.as_ref()).is_some_and(|s| {
                    securechat_crds::conditions::condition_status(&s.conditions, "Ready")
                        == Some("True")
                })
            },
        )
    };
    ready("app").await;
    ready("minter").await;

    // The pod's mounts and the apps' mounts, projected as the kubelet would.
    let served = ServedModel::start(&kube, &ns.name, "m", &["app", "minter"]).await;
    let (etc, url) = (served.etc.clone(), served.url.clone());
    let (app, minter) = (served.app("app"), served.app("minter"));
    let first_leaf = read(&etc.join("tls/tls.crt")).unwrap();
    let first_api_key = read(&app.join("api-key")).unwrap();
    let first_kid = models
        .get("m")
        .await
        .unwrap()
        .status
        .unwrap()
        .signing_keys
        .unwrap()
        .active_kid;

    // The load: one request every 1/RATE s, alternating credentials.
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let key_state = Arc::new(Mutex::new(KeyState::Valid));
    let jwt = Arc::new(Mutex::new(
        mint_jwt(&minter, &url, &read(&minter.join("api-key")).unwrap())
            .await
            .expect("a first token"),
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (outcomes, key_state, jwt, stop) = (
            outcomes.clone(),
            key_state.clone(),
            jwt.clone(),
            stop.clone(),
        );
        let (app, minter, url) = (app.clone(), minter.clone(), url.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            let started = Instant::now();
            let mut n: u64 = 0;
            let mut in_flight = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < MAX_LOAD {
                tick.tick().await;
                n += 1;
                // A fresh token every 2 s: tokens minted before, during and
                // after the signing-key rotation are all in use.
                if n.is_multiple_of(2 * RATE) {
                    let key = read(&minter.join("api-key")).unwrap_or_default();
                    match mint_jwt(&minter, &url, &key).await {
                        Ok(token) => *jwt.lock().unwrap() = token,
                        Err(e) => outcomes.lock().unwrap().push(Outcome {
                            credential: Credential::Jwt,
                            sent: Instant::now(),
                            result: Err(format!("minting: {e}")),
                        }),
                    }
                }
                let credential = if n.is_multiple_of(2) {
                    Credential::ApiKey
                } else {
                    Credential::Jwt
                };
                let bearer = match credential {
                    Credential::ApiKey => {
                        // While a change is propagating, probe 2.5 times a
                        // second only: each rejection counts against the
                        // server's brute-force guard (20 a minute).
                        match *key_state.lock().unwrap() {
                            KeyState::Rejected => continue,
                            KeyState::Off(_) | KeyState::Resuming(_) if !n.is_multiple_of(20) => {
                                continue;
                            }
                            _ => {}
                        }
                        read(&app.join("api-key")).unwrap_or_default()
                    }
                    Credential::Jwt => jwt.lock().unwrap().clone(),
                };
                let (outcomes, key_state, app, url) = (
                    outcomes.clone(),
                    key_state.clone(),
                    app.clone(),
                    url.clone(),
                );
                in_flight.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let result = get_models(&app, &url, &bearer).await;
                    if credential == Credential::ApiKey {
                        let mut state = key_state.lock().unwrap();
                        match (*state, &result) {
                            (KeyState::Off(_), Ok(401)) => *state = KeyState::Rejected,
                            (KeyState::Resuming(_), Ok(200)) => *state = KeyState::Valid,
                            _ => {}
                        }
                    }
                    outcomes.lock().unwrap().push(Outcome {
                        credential,
                        sent,
                        result,
                    });
                }));
            }
            for task in in_flight {
                let _ = task.await;
            }
        })
    };

    // The rotations, in turn.
    let patch = |name: &'static str, body: serde_json::Value| {
        let models = models.clone();
        async move {
            models
                .patch(name, &PatchParams::default(), &Patch::Merge(body))
                .await
                .expect("patch the model");
        }
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    patch(
        "m",
        json!({"metadata": {"annotations": {"securechat.dev/rotate-ca": "load-1"}}}),
    )
    .await;
    cluster::wait_for(
        "the server certificate signed by the new CA",
        Duration::from_secs(60),
        || async {
            read(&etc.join("tls/tls.crt"))
                .filter(|c| *c != first_leaf)
                .map(|_| ())
        },
    )
    .await;
    patch(
        "m",
        json!({"metadata": {"annotations": {"securechat.dev/rotate-signing-keys": "load-1"}}}),
    )
    .await;
    let rotated = await_condition(
        models.clone(),
        "m",
        "a new signing key active",
        Duration::from_secs(120),
        |m: Option<&SecureChatModel>| {
            m.and_then(|m| m.status.as_ref())
                .and_then(|s| s.signing_keys.as_ref())
                .is_some_and(|k| {
                    k.active_kid.is_some() && k.active_kid != first_kid && k.previous_kid.is_some()
                })
        },
    )
    .await;
    cluster::wait_for(
        "the API key rotated in the app's Secret",
        Duration::from_secs(120),
        || async {
            read(&app.join("api-key"))
                .filter(|k| *k != first_api_key)
                .map(|_| ())
        },
    )
    .await;
    // Give the new key a few seconds of traffic on its own.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let keys_patch = |body: serde_json::Value| {
        let keys = keys.clone();
        async move {
            keys.patch("app", &PatchParams::default(), &Patch::Merge(body))
                .await
                .expect("patch the key");
        }
    };
    let until_state = |wanted: fn(KeyState) -> bool| {
        let key_state = key_state.clone();
        async move {
            cluster::wait_for(
                "the key change to reach the server",
                Duration::from_secs(60),
                || {
                    let key_state = key_state.clone();
                    async move { wanted(*key_state.lock().unwrap()).then_some(()) }
                },
            )
            .await
        }
    };
    let suspended_at = Instant::now();
    *key_state.lock().unwrap() = KeyState::Off(suspended_at);
    keys_patch(json!({"spec": {"suspended": true}})).await;
    until_state(|s| s == KeyState::Rejected).await;
    let suspension_took = suspended_at.elapsed();

    let resumed_at = Instant::now();
    *key_state.lock().unwrap() = KeyState::Resuming(resumed_at);
    keys_patch(json!({"spec": {"suspended": false}})).await;
    until_state(|s| s == KeyState::Valid).await;
    let resumption_took = resumed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let revoked_at = Instant::now();
    *key_state.lock().unwrap() = KeyState::Off(revoked_at);
    keys.delete("app", &DeleteParams::default())
        .await
        .expect("revoke the key");
    until_state(|s| s == KeyState::Rejected).await;
    let revocation_took = revoked_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.expect("the load ran");
    let revoked_key = read(&app.join("api-key")).unwrap();
    assert_eq!(
        get_models(&app, &url, &revoked_key).await,
        Ok(401),
        "a revoked key is rejected"
    );
    served.server.shutdown().await;
    drop(operator);

    // Every request is accounted for; none with a valid credential failed.
    let outcomes = outcomes.lock().unwrap();
    let is_ok = |o: &Outcome| o.result == Ok(200);
    let in_window = |o: &Outcome, from: Instant, to: Instant| o.sent >= from && o.sent < to;
    let failed_jwt: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.credential == Credential::Jwt && !is_ok(o))
        .collect();
    let failed_key: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.credential == Credential::ApiKey && !is_ok(o))
        // Sent while the key was off, or before its resumption arrived.
        .filter(|o| !in_window(o, suspended_at, resumed_at + resumption_took))
        .filter(|o| o.sent < revoked_at)
        .collect();
    let total = outcomes.len();
    let by = |c: Credential| outcomes.iter().filter(|o| o.credential == c).count();
    println!(
        "requests: {total} ({} with the rotating API key, {} with JWTs); \
         suspension took effect in {suspension_took:?}, resumption in {resumption_took:?}, \
         revocation in {revocation_took:?}",
        by(Credential::ApiKey),
        by(Credential::Jwt)
    );
    assert!(
        failed_jwt.is_empty(),
        "failed JWT requests: {failed_jwt:#?}"
    );
    assert!(
        failed_key.is_empty(),
        "failed API-key requests: {failed_key:#?}"
    );
    assert!(
        total as u64 > 20 * RATE,
        "the load ran for a while: {total} requests"
    );
    // The rotations did happen under the load.
    assert_ne!(read(&etc.join("tls/tls.crt")).unwrap(), first_leaf);
    assert_ne!(
        rotated.status.unwrap().signing_keys.unwrap().active_kid,
        first_kid
    );
}
