//! `securechat-server fetch`: downloads a model from a Hugging Face
//! repository into a directory. The operator runs it as the init container
//! of a `huggingFace` model source, so the serving container itself never
//! talks to the hub (and its NetworkPolicy egress to HTTPS exists only for
//! this).
//!
//! - Files come from the hub's HTTP API: the revision's file list, then
//!   `resolve/<revision>/<file>` for each (following the redirect to the
//!   CDN; reqwest drops the Authorization header on a cross-host redirect).
//! - A GGUF repository serves the one file named with `--file`; otherwise
//!   the safetensors weights with their config and tokenizer files.
//! - Each file is written as `<name>.partial` and renamed when complete; a
//!   `.securechat-fetched` marker names the repository, revision and files,
//!   so a restarted pod with the files in place downloads nothing.
//! - File names from the listing are checked: a name that could escape the
//!   directory is refused, not cleaned up.
//! - The hub's transient failures (no connection, a 5xx, a 429) are
//!   retried under a circuit breaker (`crate::breaker`, target `hub`):
//!   after [`HUB_FAILURES`] in a row it opens and the fetch fails at once
//!   with the last failure, rather than retrying every file of a model;
//!   the kubelet restarts the init container with its own backoff.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use securechat_crds::files::config::CircuitBreakerConfig;
use tokio::io::AsyncWriteExt;

use crate::breaker::{Breaker, CircuitMetrics, State};

/// Transient hub failures in a row that end a fetch.
pub const HUB_FAILURES: u32 = 3;
/// Wait before retrying a transient failure, times the attempt number.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const MARKER: &str = ".securechat-fetched";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{url}: {status}: the repository is gated or private; give a token (huggingFace.tokenSecretName, a Secret with key `token`)"
    )]
    Unauthorized { url: String, status: u16 },
    #[error("{url}: not found: check huggingFace.repo, revision and file")]
    NotFound { url: String },
    #[error("{url}: the hub answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the repository lists {name:?}, a path outside the model directory; refusing it")]
    UnsafeName { name: String },
    #[error("{file:?} is not in the repository at this revision (files: {available})")]
    NotInRepo { file: String, available: String },
    #[error(
        "the repository has no .safetensors weights at this revision; for a GGUF repository name the file (huggingFace.file)"
    )]
    NoWeights,
    #[error(
        "the hub failed {HUB_FAILURES} times in a row; giving up (circuit open). Last failure: {last}"
    )]
    CircuitOpen { last: String },
    #[error("endpoint {0:?}: must be https (plain http only on loopback, for tests)")]
    InsecureEndpoint(String),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to fetch, and where to.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub endpoint: String,
    pub repo: String,
    pub revision: String,
    pub file: Option<String>,
    pub token: Option<String>,
    pub dest: PathBuf,
}

impl FetchRequest {
    /// The path the server is then started with: the GGUF file, or the
    /// directory of a safetensors model.
    pub fn model_path(&self) -> PathBuf {
        match &self.file {
            Some(file) => self.dest.join(file),
            None => self.dest.clone(),
        }
    }
}

/// Whether a file name from the listing stays inside the directory.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Which of the repository's files to download.
pub fn select_files(listing: &[String], file: Option<&str>) -> Result<Vec<String>, FetchError> {
    if let Some(unsafe_name) = listing.iter().find(|n| !safe_name(n)) {
        return Err(FetchError::UnsafeName {
            name: unsafe_name.clone(),
        });
    }
    if let Some(file) = file {
        return if listing.iter().any(|n| n == file) {
            Ok(vec![file.to_string()])
        } else {
            Err(FetchError::NotInRepo {
                file: file.to_string(),
                available: listing.join(", "),
            })
        };
    }
    const SIDE_FILES: [&str; 6] = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.model",
    ];
    let weights: Vec<String> = listing
        .iter()
        .filter(|n| n.ends_with(".safetensors") || n.ends_with(".safetensors.index.json"))
        .cloned()
        .collect();
    if !weights.iter().any(|n| n.ends_with(".safetensors")) {
        return Err(FetchError::NoWeights);
    }
    let mut files: Vec<String> = listing
        .iter()
        .filter(|n| SIDE_FILES.contains(&n.as_str()))
        .cloned()
        .chain(weights)
        .collect();
    files.sort();
    Ok(files)
}

fn check_endpoint(endpoint: &str) -> Result<(), FetchError> {
    let insecure = || FetchError::InsecureEndpoint(endpoint.to_string());
    let url = reqwest::Url::parse(endpoint).map_err(|_| insecure())?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(insecure()),
    }
}

impl FetchError {
    /// A failure of the hub itself, worth a retry: no answer, a 5xx, or
    /// 429. A 401 or 404 is an answer.
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Http { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// The breaker of one fetch: [`HUB_FAILURES`] transient failures in a row
/// open it; an init container has no metrics endpoint, so it reports
/// nowhere but the log.
fn hub_breaker() -> Arc<Breaker> {
    Arc::new(Breaker::new(
        "hub",
        CircuitBreakerConfig {
            consecutive_failures: HUB_FAILURES,
            ..CircuitBreakerConfig::default()
        },
        CircuitMetrics::default(),
    ))
}

/// GET with the hub's transient failures retried until the breaker opens.
async fn get(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    breaker: &Arc<Breaker>,
) -> Result<reqwest::Response, FetchError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = breaker
            .call(get_once(client, url, token), FetchError::is_transient)
            .await;
        match outcome {
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(e)) if e.is_transient() && breaker.state() == State::Closed => {
                tracing::warn!(url, attempt, error = %e, "the hub failed; retrying");
                tokio::time::sleep(RETRY_BACKOFF * attempt).await;
            }
            Ok(Err(e)) if e.is_transient() => {
                return Err(FetchError::CircuitOpen {
                    last: e.to_string(),
                });
            }
            Ok(Err(e)) => return Err(e),
            Err(refused) => {
                return Err(FetchError::CircuitOpen {
                    last: refused.to_string(),
                });
            }
        }
    }
}

async fn get_once(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> Result<reqwest::Response, FetchError> {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|source| FetchError::Http {
        url: url.to_string(),
        source,
    })?;
    let status = response.status().as_u16();
    match status {
        200..=299 => Ok(response),
        401 | 403 => Err(FetchError::Unauthorized {
            url: url.to_string(),
            status,
        }),
        404 => Err(FetchError::NotFound {
            url: url.to_string(),
        }),
        _ => Err(FetchError::Status {
            url: url.to_string(),
            status,
        }),
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + use<> {
    let path = path.to_path_buf();
    move |source| FetchError::Io {
        action,
        path,
        source,
    }
}

/// Downloads the model; returns the files written (none when the marker
/// says they are already there).
pub async fn fetch(
    client: &reqwest::Client,
    request: &FetchRequest,
) -> Result<Vec<PathBuf>, FetchError> {
    check_endpoint(&request.endpoint)?;
    let base = request.endpoint.trim_end_matches('/');
    let token = request.token.as_deref();
    let breaker = hub_breaker();
    let listing_url = format!(
        "{base}/api/models/{}/revision/{}",
        request.repo, request.revision
    );
    let listing: serde_json::Value = get(client, &listing_url, token, &breaker)
        .await?
        .json()
        .await
        .map_err(|source| FetchError::Http {
            url: listing_url.clone(),
            source,
        })?;
    let names: Vec<String> = listing["siblings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["rfilename"].as_str().map(str::to_string))
        .collect();
    let files = select_files(&names, request.file.as_deref())?;
    let marker_text = format!(
        "{}@{}\n{}\n",
        request.repo,
        request.revision,
        files.join("\n")
    );
    let marker = request.dest.join(MARKER);
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(marker_text.as_str())
        && files.iter().all(|f| request.dest.join(f).is_file())
    {
        tracing::info!(repo = %request.repo, "model already fetched");
        return Ok(Vec::new());
    }
    let mut written = Vec::new();
    for file in &files {
        let url = format!(
            "{base}/{}/resolve/{}/{file}",
            request.repo, request.revision
        );
        let target = request.dest.join(file);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        let partial = {
            let mut name = target.clone().into_os_string();
            name.push(".partial");
            PathBuf::from(name)
        };
        let mut out = tokio::fs::File::create(&partial)
            .await
            .map_err(io("creating", &partial))?;
        let mut response = get(client, &url, token, &breaker).await?;
        let mut bytes = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|source| FetchError::Http {
            url: url.clone(),
            source,
        })? {
            bytes += chunk.len() as u64;
            out.write_all(&chunk)
                .await
                .map_err(io("writing", &partial))?;
        }
        out.sync_all().await.map_err(io("syncing", &partial))?;
        std::fs::rename(&partial, &target).map_err(io("renaming", &partial))?;
        tracing::info!(file = %file, bytes, "fetched");
        written.push(target);
    }
    std::fs::write(&marker, marker_text).map_err(io("writing", &marker))?;
    Ok(written)
}

/// The HTTP client: system roots plus `extra_roots` (PEM), redirects
/// followed (the hub sends files from a CDN), no overall timeout (weights
/// are gigabytes) but a connect timeout.
pub fn client(extra_roots: Option<&[u8]>) -> anyhow::Result<reqwest::Client> {
    let tls = crate::tls::client_config(extra_roots)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(std::time::Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_safetensors_repository_gets_weights_config_and_tokenizer_only() {
        let listing = names(&[
            "README.md",
            "config.json",
            "tokenizer.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
        ]);
        assert_eq!(
            select_files(&listing, None).unwrap(),
            names(&[
                "config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
                "tokenizer.json",
            ])
        );
    }

    #[test]
    fn a_gguf_repository_serves_the_named_file() {
        let listing = names(&["a.Q4_0.gguf", "a.Q8_0.gguf"]);
        assert_eq!(
            select_files(&listing, Some("a.Q8_0.gguf")).unwrap(),
            names(&["a.Q8_0.gguf"])
        );
        let err = select_files(&listing, Some("b.gguf")).unwrap_err();
        assert!(err.to_string().contains("a.Q4_0.gguf"), "{err}");
        assert!(matches!(
            select_files(&listing, None),
            Err(FetchError::NoWeights)
        ));
    }

    #[test]
    fn names_that_escape_the_directory_are_refused() {
        for bad in ["../etc/passwd", "/abs", "a/../../b", ""] {
            let listing = names(&["config.json", "model.safetensors", bad]);
            assert!(
                matches!(
                    select_files(&listing, None),
                    Err(FetchError::UnsafeName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(select_files(&names(&["sub/model.safetensors"]), None).is_ok());
    }

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(check_endpoint("https://huggingface.co").is_ok());
        assert!(check_endpoint("http://127.0.0.1:8080").is_ok());
        assert!(check_endpoint("http://huggingface.co").is_err());
        assert!(check_endpoint("http://127.0.0.1.evil.example:80").is_err());
        assert!(check_endpoint("http://localhost:80@evil.example/").is_err());
        assert!(check_endpoint("ftp://127.0.0.1/").is_err());
    }
}
