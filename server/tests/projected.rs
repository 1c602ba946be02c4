//! Hot reload in the real mount layout (#7): the server runs on the
//! operator's file layout (config in a ConfigMap volume, certificate,
//! signing keys and API keys in Secret volumes, each projected by the
//! kubelet's AtomicWriter with a `..data` swap) and every change arrives
//! the way it does in a pod.
//!
//! "Within 2 s" is the propagation bound #7 sets for a mounted change;
//! the tests wait at most that long for it and print what they measured.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use securechat_crds::files::api_keys::ApiKeyTable;
use securechat_crds::files::keyset::{KeyState, SigningKey, SigningKeySet};
use securechat_crds::v1alpha1::Tier;
use securechat_projector::{AtomicWriter, FileProjection, Payload};
use securechat_server::dev::{self, DevCertificates};
use securechat_server::files::reload::read_pair;
use securechat_server::keys_cli;
use securechat_server::startup::{Running, ServeOptions, start};
use securechat_test_support::https::{EchoEngine, client_for, sample};
use serde_json::{Value, json};

/// The bound #7 sets for a projected change to take effect.
const PROPAGATION: Duration = Duration::from_secs(2);

/// One volume per file kind, as the operator's Deployment mounts them.
struct Mounts {
    root: tempfile::TempDir,
    config: AtomicWriter,
    tls: AtomicWriter,
    signing: AtomicWriter,
    api_keys: AtomicWriter,
}

fn files(entries: &[(&str, &[u8])]) -> Payload {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), FileProjection::new(*v)))
        .collect()
}

impl Mounts {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let at = |d: &str| AtomicWriter::new(root.path().join(d));
        Self {
            config: at("config"),
            tls: at("tls"),
            signing: at("signing-keys"),
            api_keys: at("api-keys"),
            root,
        }
    }

    fn dir(&self) -> &Path {
        self.root.path()
    }

    fn project_tls(&self, certs: &DevCertificates) {
        self.project_tls_raw(certs.cert.as_bytes(), certs.key.as_bytes(), certs);
    }

    fn project_tls_raw(&self, cert: &[u8], key: &[u8], ca_of: &DevCertificates) {
        let payload = files(&[
            ("tls.crt", cert),
            ("tls.key", key),
            ("ca.crt", ca_of.ca_cert.as_bytes()),
        ]);
        self.tls.write(&payload, Utc::now()).unwrap();
    }

    fn project_keyset(&self, set: &SigningKeySet) {
        let json = serde_json::to_vec(set).unwrap();
        self.signing
            .write(&files(&[("keyset.json", &json)]), Utc::now())
            .unwrap();
    }

    fn project_table(&self, table: &ApiKeyTable) {
        let json = serde_json::to_vec(table).unwrap();
        self.api_keys
            .write(&files(&[("api-keys.json", &json)]), Utc::now())
            .unwrap();
    }

    /// What the operator's ConfigMap holds: absolute paths of the mounted
    /// Secrets, plus relaxed limits so the tests measure reloads only.
    fn project_config(&self) {
        let d = self.dir();
        let yaml = format!(
            "files:\n  tlsCert: {}\n  tlsKey: {}\n  signingKeys: {}\n  apiKeys: {}\n\
             rateLimit:\n  requestsPerMinute: 100000\n\
             limits:\n  maxAuthFailuresPerMinute: 100000\n",
            d.join("tls/tls.crt").display(),
            d.join("tls/tls.key").display(),
            d.join("signing-keys/keyset.json").display(),
            d.join("api-keys/api-keys.json").display(),
        );
        self.config
            .write(&files(&[("config.yaml", yaml.as_bytes())]), Utc::now())
            .unwrap();
    }

    /// A PEM bundle of the given CAs, as a client trust file.
    fn trust(&self, name: &str, cas: &[&DevCertificates]) -> PathBuf {
        let path = self.dir().join(name);
        let pem: String = cas.iter().map(|c| c.ca_cert.as_str()).collect();
        std::fs::write(&path, pem).unwrap();
        path
    }
}

struct Keys {
    table: ApiKeyTable,
    a: (String, String),
    b: (String, String),
}

fn new_keys() -> Keys {
    let mut table = ApiKeyTable::default();
    let a = keys_cli::create(&mut table, "a", Tier::Developer, None, Utc::now()).unwrap();
    let b = keys_cli::create(&mut table, "b", Tier::Developer, None, Utc::now()).unwrap();
    Keys { table, a, b }
}

/// Projects everything and starts the server on the config symlink.
async fn start_projected(
    m: &Mounts,
    certs: &DevCertificates,
    keyset: &SigningKeySet,
    keys: &Keys,
) -> Running {
    m.project_tls(certs);
    m.project_keyset(keyset);
    m.project_table(&keys.table);
    m.project_config();
    let options = ServeOptions {
        config_path: m.dir().join("config/config.yaml"),
        api_addr: "127.0.0.1:0".parse().unwrap(),
        web_addr: "127.0.0.1:0".parse().unwrap(),
        oidc_ca_bundle: None,
        // Operator mode: the key table is a read-only Secret.
        record_last_used: None,
        path_root: None,
        placement: Default::default(),
    };
    start(&options, EchoEngine::new()).await.unwrap()
}

fn url(running: &Running, path: &str) -> String {
    format!("https://localhost:{}{path}", running.api_addr.port())
}

fn tls13() -> [&'static rustls::SupportedProtocolVersion; 1] {
    [&rustls::version::TLS13]
}

/// Whether a new connection trusting only `ca` completes a request.
async fn handshake_ok(ca: &Path, running: &Running) -> bool {
    client_for(ca, &tls13())
        .get(url(running, "/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// Polls `check` until it holds or `limit` passes; the time it took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics(client: &reqwest::Client, running: &Running) -> String {
    client
        .get(url(running, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn tls_errors(m: &str) -> f64 {
    sample(
        m,
        "securechat_file_reloads_total{file=\"tls\",result=\"error\"}",
    )
    .unwrap()
}

#[tokio::test]
async fn a_projected_certificate_is_served_within_two_seconds_without_dropping_connections() {
    let m = Mounts::new();
    let (one, two) = (
        dev::certificates(Utc::now()).unwrap(),
        dev::certificates(Utc::now()).unwrap(),
    );
    let running = start_projected(
        &m,
        &one,
        &dev::signing_keyset(Utc::now()).unwrap(),
        &new_keys(),
    )
    .await;
    let (ca1, ca2) = (m.trust("ca1.pem", &[&one]), m.trust("ca2.pem", &[&two]));
    let both = m.trust("both.pem", &[&one, &two]);
    assert!(handshake_ok(&ca1, &running).await);

    // Steady load over keep-alive connections opened before the swap.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = client_for(&both, &tls13());
    let health = url(&running, "/healthz");
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (client, health) = (client.clone(), health.clone());
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&health).send().await {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    m.project_tls(&two);
    let took = within(PROPAGATION, async || handshake_ok(&ca2, &running).await).await;
    println!("new certificate served after {took:?}");
    assert!(
        took.is_some(),
        "the new certificate was not served within {PROPAGATION:?}"
    );
    assert!(
        !handshake_ok(&ca1, &running).await,
        "new connections no longer get the old certificate"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("{ok} requests across the swap, {failed} failed");
    assert_eq!(failed, 0, "requests failed during the certificate swap");
    assert!(ok > 0);
    let text = metrics(&client, &running).await;
    assert_eq!(
        sample(&text, "securechat_certificate_renewals_total"),
        Some(1.0)
    );
    assert_eq!(tls_errors(&text), 0.0);
    running.shutdown().await;
}

#[tokio::test]
async fn a_bad_projected_certificate_keeps_the_last_good_pair_in_force() {
    let m = Mounts::new();
    let (one, two) = (
        dev::certificates(Utc::now()).unwrap(),
        dev::certificates(Utc::now()).unwrap(),
    );
    let running = start_projected(
        &m,
        &one,
        &dev::signing_keyset(Utc::now()).unwrap(),
        &new_keys(),
    )
    .await;
    let (ca1, ca2) = (m.trust("ca1.pem", &[&one]), m.trust("ca2.pem", &[&two]));
    let client = client_for(&ca1, &tls13());

    let bad: [(&str, &[u8], &[u8]); 3] = [
        (
            "garbage PEM",
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            one.key.as_bytes(),
        ),
        ("no PEM at all", b"hello", one.key.as_bytes()),
        // A valid certificate with another pair's key.
        (
            "certificate not matching the key",
            two.cert.as_bytes(),
            one.key.as_bytes(),
        ),
    ];
    for (n, (what, cert, key)) in bad.iter().enumerate() {
        m.project_tls_raw(cert, key, &one);
        let counted = within(PROPAGATION, async || {
            tls_errors(&metrics(&client, &running).await) == (n + 1) as f64
        })
        .await;
        assert!(counted.is_some(), "{what}: not counted as a reload error");
        let text = metrics(&client, &running).await;
        assert_eq!(
            sample(&text, "securechat_file_stale{file=\"tls\"}"),
            Some(1.0),
            "{what}"
        );
        assert!(
            handshake_ok(&ca1, &running).await,
            "{what}: the last good pair is no longer served"
        );
        assert!(!handshake_ok(&ca2, &running).await, "{what}");
    }
    m.project_tls(&two);
    assert!(
        within(PROPAGATION, async || handshake_ok(&ca2, &running).await)
            .await
            .is_some()
    );
    let text = metrics(&client_for(&ca2, &tls13()), &running).await;
    assert_eq!(
        sample(&text, "securechat_file_stale{file=\"tls\"}"),
        Some(0.0)
    );
    running.shutdown().await;
}

#[test]
fn certificate_and_key_are_read_from_one_generation() {
    // Each generation's pair carries its own number; read_pair must never
    // return numbers from two generations, however the swaps interleave.
    let dir = tempfile::tempdir().unwrap();
    let writer = AtomicWriter::new(dir.path());
    let generation = |n: u32| {
        files(&[
            ("tls.crt", format!("cert {n}").as_bytes()),
            ("tls.key", format!("key {n}").as_bytes()),
        ])
    };
    writer.write(&generation(0), Utc::now()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let projector = {
        let (stop, writer) = (stop.clone(), writer.clone());
        std::thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                writer.write(&generation(n), Utc::now()).unwrap();
                n += 1;
            }
            n
        })
    };
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let mut reads = 0;
    let mut seen_generations = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        // Retries are part of the contract; an error means every retry
        // lost the race, which must not happen this often.
        let (c, k) = read_pair(&cert, &key).unwrap();
        let (c, k) = (String::from_utf8(c).unwrap(), String::from_utf8(k).unwrap());
        let (cn, kn) = (
            c.strip_prefix("cert ").unwrap(),
            k.strip_prefix("key ").unwrap(),
        );
        assert_eq!(cn, kn, "certificate and key from two generations");
        seen_generations.insert(cn.to_string());
        reads += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let written = projector.join().unwrap();
    println!("{reads} consistent reads over {written} generations");
    assert!(
        seen_generations.len() > 1,
        "the reads must span several swaps"
    );
}

#[tokio::test]
async fn rapid_certificate_swaps_never_pair_a_new_certificate_with_an_old_key() {
    let m = Mounts::new();
    let pairs: Vec<DevCertificates> = (0..12)
        .map(|_| dev::certificates(Utc::now()).unwrap())
        .collect();
    let running = start_projected(
        &m,
        &pairs[0],
        &dev::signing_keyset(Utc::now()).unwrap(),
        &new_keys(),
    )
    .await;
    let all: Vec<&DevCertificates> = pairs.iter().collect();
    let trust_all = m.trust("all.pem", &all);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    // New connections all the time, each a fresh handshake.
    let prober = {
        let (stop, failed) = (stop.clone(), failed.clone());
        let health = url(&running, "/healthz");
        let trust_all = trust_all.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ok = client_for(&trust_all, &tls13())
                    .get(&health)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
            n
        })
    };
    for pair in pairs.iter().skip(1) {
        m.project_tls(pair);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let last = m.trust("last.pem", &[pairs.last().unwrap()]);
    assert!(
        within(PROPAGATION, async || handshake_ok(&last, &running).await)
            .await
            .is_some()
    );
    stop.store(true, Ordering::Relaxed);
    let handshakes = prober.await.unwrap();
    let text = metrics(&client_for(&last, &tls13()), &running).await;
    // Had a reload ever read a certificate with the other generation's
    // key, the pair would not match and it would count as an error.
    assert_eq!(tls_errors(&text), 0.0, "a mixed pair was read");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {handshakes} handshakes"
    );
    running.shutdown().await;
}

fn forge(key: &SigningKey, sub: &str) -> String {
    let now = Utc::now().timestamp();
    let claims = json!({"iss": "https://localhost:8000", "aud": "securechat", "sub": sub,
        "role": "Developer", "iat": now, "nbf": now, "exp": now + 600, "jti": "p"});
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    let encoding = EncodingKey::from_ed_pem(key.private_key_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
}

fn signing_key(kid: &str, state: KeyState) -> SigningKey {
    let now = Utc::now();
    let mut k = dev::signing_keyset(now).unwrap().keys.remove(0);
    k.kid = kid.into();
    k.state = state;
    k
}

#[tokio::test]
async fn projected_signing_keys_and_api_keys_take_effect_and_removed_keys_stop_working() {
    let m = Mounts::new();
    let certs = dev::certificates(Utc::now()).unwrap();
    let k1 = signing_key("k1", KeyState::Active);
    let keys = new_keys();
    let running = start_projected(
        &m,
        &certs,
        &SigningKeySet {
            keys: vec![k1.clone()],
        },
        &keys,
    )
    .await;
    let client = client_for(&m.trust("ca.pem", &[&certs]), &tls13());
    let models = url(&running, "/v1/models");
    let status = async |credential: &str| {
        client
            .get(&models)
            .bearer_auth(credential)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let sub_a = format!("key:{}", keys.a.0);
    let token_k1 = forge(&k1, &sub_a);
    assert_eq!(status(&token_k1).await, 200);

    // Phase 1: k2 published as Next. It must verify at once, because
    // another replica may already sign with it.
    let k2 = signing_key("k2", KeyState::Next);
    let token_k2 = forge(&k2, &sub_a);
    assert_eq!(status(&token_k2).await, 401, "k2 is not known yet");
    m.project_keyset(&SigningKeySet {
        keys: vec![k1.clone(), k2.clone()],
    });
    let took = within(PROPAGATION, async || status(&token_k2).await == 200).await;
    println!("Next key verifying after {took:?}");
    assert!(
        took.is_some(),
        "a token of the Next key did not verify within {PROPAGATION:?}"
    );

    // Phase 2: k2 Active, k1 Previous. New tokens carry k2; k1's still
    // verify during the grace.
    let mut active = k2.clone();
    active.state = KeyState::Active;
    let mut previous = k1.clone();
    previous.state = KeyState::Previous;
    m.project_keyset(&SigningKeySet {
        keys: vec![previous, active],
    });
    let token_url = url(&running, "/oauth/token");
    let secret_a = keys.a.1.clone();
    let minted_kid = async || -> Option<String> {
        let t: Value = client
            .post(&token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_secret", secret_a.as_str()),
            ])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        jsonwebtoken::decode_header(t["access_token"].as_str()?)
            .ok()?
            .kid
    };
    assert!(
        within(PROPAGATION, async || minted_kid().await.as_deref()
            == Some("k2"))
        .await
        .is_some(),
        "the new Active key did not start signing"
    );
    assert_eq!(status(&token_k1).await, 200, "Previous key still verifies");

    // A new table: key b removed, key c added.
    let mut table = keys.table.clone();
    table.keys.retain(|k| k.id != keys.b.0);
    let (_, c) = keys_cli::create(&mut table, "c", Tier::Developer, None, Utc::now()).unwrap();
    assert_eq!(status(&keys.b.1).await, 200);
    m.project_table(&table);
    let took = within(PROPAGATION, async || status(&c).await == 200).await;
    println!("new API-key table in force after {took:?}");
    assert!(
        took.is_some(),
        "the new key did not work within {PROPAGATION:?}"
    );
    assert_eq!(status(&keys.b.1).await, 401, "a removed key stops working");
    assert_eq!(status(&keys.a.1).await, 200);
    running.shutdown().await;
}
