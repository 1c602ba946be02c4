//! A securechat-server running on a model's Secrets and ConfigMap, projected
//! the way the kubelet mounts them (securechat-projector), and an HTTPS
//! client that reads its key and CA from its own projected consumer Secret,
//! as an application pod would. Used by the tests that change the cluster
//! under a serving server: rotation under load, chaos.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use securechat_projector::AtomicWriter;
use securechat_projector::follow::{follow_config_map, follow_secret};
use securechat_server::startup::{Running, ServeOptions, start};

/// The credential one request of a test's load carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The rotating API key, as the app's mounted Secret has it now.
    ApiKey,
    /// A JWT minted by the server from a second, steady key.
    Jwt,
}

/// What became of one request of a test's load.
#[derive(Debug)]
pub struct Outcome {
    pub credential: Credential,
    pub sent: Instant,
    /// HTTP status, or the transport error.
    pub result: Result<u16, String>,
}

/// A file's content, trimmed; None while it does not exist.
pub fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// An HTTPS client trusting exactly the CA bundle in `ca_file` (re-read for
/// every request, as a client that reloads its mounted bundle would).
pub fn https_client(ca_file: &Path) -> Result<reqwest::Client, String> {
    https_client_builder(ca_file)?
        .build()
        .map_err(|e| e.to_string())
}

/// [`https_client`] that sends requests for `host` to `addr`: a Service's
/// DNS name (which the certificate names) at its ClusterIP, for a test
/// outside the cluster's DNS.
pub fn https_client_resolving(
    ca_file: &Path,
    host: &str,
    addr: std::net::SocketAddr,
) -> Result<reqwest::Client, String> {
    https_client_builder(ca_file)?
        .resolve(host, addr)
        .build()
        .map_err(|e| e.to_string())
}

fn https_client_builder(ca_file: &Path) -> Result<reqwest::ClientBuilder, String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("reading the CA: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    for ca in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(ca.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10)))
}

/// `GET /v1/models` with `bearer`, trusting the CA in `app`'s Secret.
pub async fn get_models(app: &Path, url: &str, bearer: &str) -> Result<u16, String> {
    https_client(&app.join("ca.crt"))?
        .get(format!("{url}/v1/models"))
        .bearer_auth(bearer)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

/// A JWT from the server's token endpoint for the API key `key`.
pub async fn mint_jwt(app: &Path, url: &str, key: &str) -> Result<String, String> {
    let client = https_client(&app.join("ca.crt"))?;
    let response = client
        .post(format!("{url}/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        // The key's characters are URL-safe (a base64url secret).
        .body(format!("grant_type=client_credentials&client_secret={key}"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    body["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("token endpoint answered {status}: {body}"))
}

/// Keeps `kind`/`name` projected under `dir` until the test ends. The
/// projection retries while the API server is unreachable and leaves the
/// last projected files in place meanwhile, as the kubelet does.
pub fn project(client: &kube::Client, namespace: &str, kind: &str, name: &str, dir: PathBuf) {
    let (client, namespace, kind, name) = (
        client.clone(),
        namespace.to_string(),
        kind.to_string(),
        name.to_string(),
    );
    tokio::spawn(async move {
        let writer = AtomicWriter::new(&dir);
        let result = if kind == "Secret" {
            follow_secret(client, &namespace, &name, &writer, 0o644, false).await
        } else {
            follow_config_map(client, &namespace, &name, &writer, 0o644, false).await
        };
        if let Err(e) = result {
            eprintln!("projecting {kind} {name} stopped: {e}");
        }
    });
}

pub async fn wait_for_file(path: &Path) {
    super::wait_for(
        &format!("{} to be projected", path.display()),
        Duration::from_secs(60),
        || async { path.exists().then_some(()) },
    )
    .await;
}

/// The server of model `model` as its pod runs it, with the consumer
/// Secrets `apps` projected beside it (each under `app(name)`).
pub struct ServedModel {
    dir: tempfile::TempDir,
    /// The pod's `/etc/securechat`: config/, tls/, signing-keys/, api-keys/.
    pub etc: PathBuf,
    pub url: String,
    pub server: Running,
}

impl ServedModel {
    pub async fn start(kube: &kube::Client, namespace: &str, model: &str, apps: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = dir.path().join("pod");
        let etc = pod.join("etc/securechat");
        for (kind, suffix, mount) in [
            ("ConfigMap", "config", "config"),
            ("Secret", "tls", "tls"),
            ("Secret", "signing-keys", "signing-keys"),
            ("Secret", "api-keys", "api-keys"),
            // The client CA bundle (auth.mtls without a trustBundle): the
            // model's own CA bundle, as the Deployment mounts it.
            ("ConfigMap", "ca-bundle", "client-ca"),
        ] {
            project(
                kube,
                namespace,
                kind,
                &format!("{model}-{suffix}"),
                etc.join(mount),
            );
        }
        let mut files = vec![
            etc.join("config/config.yaml"),
            etc.join("tls/tls.crt"),
            etc.join("signing-keys/keyset.json"),
            etc.join("api-keys/api-keys.json"),
            etc.join("client-ca/ca.crt"),
        ];
        for app in apps {
            let at = dir.path().join("apps").join(app);
            project(kube, namespace, "Secret", app, at.clone());
            // Every consumer Secret has ca.crt, whatever its credential
            // (an API key, a client certificate, both), and is projected
            // whole: its other files are there once ca.crt is.
            files.push(at.join("ca.crt"));
        }
        for f in &files {
            wait_for_file(f).await;
        }
        let engine = crate::https::default_engine();
        let server = start(
            &ServeOptions {
                config_path: etc.join("config/config.yaml"),
                api_addr: "127.0.0.1:0".parse().unwrap(),
                web_addr: "127.0.0.1:0".parse().unwrap(),
                oidc_ca_bundle: None,
                record_last_used: None,
                path_root: Some(pod),
                placement: Default::default(),
            },
            engine,
        )
        .await
        .expect("the server starts on the projected files");
        let url = format!("https://localhost:{}", server.api_addr.port());
        Self {
            dir,
            etc,
            url,
            server,
        }
    }

    /// Where the consumer Secret `name` is projected (`api-key`, `ca.crt`,
    /// `tls.crt`/`tls.key` for a client certificate).
    pub fn app(&self, name: &str) -> PathBuf {
        self.dir.path().join("apps").join(name)
    }
}
