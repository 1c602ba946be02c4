//! `securechat-server fetch` against a stand-in for the Hugging Face hub on
//! loopback (no network here): the file listing API, `resolve` answering
//! with a redirect to a "CDN" path as the real hub does, a gated repository
//! that wants a token, and a restart that finds the files in place.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use securechat_server::fetch::{FetchError, FetchRequest, client, fetch};
use serde_json::json;

#[derive(Default)]
struct Hub {
    /// repo -> files
    repos: HashMap<String, Vec<(String, Vec<u8>)>>,
    /// repos that need `Authorization: Bearer hf_secret`
    gated: Vec<String>,
    downloads: AtomicUsize,
}

fn authorised(hub: &Hub, repo: &str, headers: &HeaderMap) -> bool {
    !hub.gated.iter().any(|g| g == repo)
        || headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            == Some("Bearer hf_secret")
}

async fn listing(
    State(hub): State<Arc<Hub>>,
    Path((owner, name, _revision)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repo = format!("{owner}/{name}");
    if !authorised(&hub, &repo, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match hub.repos.get(&repo) {
        Some(files) => axum::Json(json!({
            "id": repo,
            "siblings": files.iter().map(|(n, _)| json!({"rfilename": n})).collect::<Vec<_>>(),
        }))
        .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn resolve(
    State(hub): State<Arc<Hub>>,
    Path((owner, name, _revision, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repo = format!("{owner}/{name}");
    if !authorised(&hub, &repo, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // The hub redirects file downloads to its CDN.
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("/cdn/{owner}/{name}/{file}"))],
    )
        .into_response()
}

async fn cdn(
    State(hub): State<Arc<Hub>>,
    Path((owner, name, file)): Path<(String, String, String)>,
) -> Response {
    let files = hub.repos.get(&format!("{owner}/{name}"));
    match files.and_then(|f| f.iter().find(|(n, _)| *n == file)) {
        Some((_, bytes)) => {
            hub.downloads.fetch_add(1, Ordering::SeqCst);
            bytes.clone().into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn start_hub(hub: Hub) -> (String, Arc<Hub>) {
    let hub = Arc::new(hub);
    let app = Router::new()
        .route(
            "/api/models/{owner}/{name}/revision/{revision}",
            get(listing),
        )
        .route("/{owner}/{name}/resolve/{revision}/{file}", get(resolve))
        .route("/cdn/{owner}/{name}/{file}", get(cdn))
        .with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), hub)
}

fn safetensors_repo() -> Vec<(String, Vec<u8>)> {
    vec![
        ("README.md".into(), b"# a model".to_vec()),
        (
            "config.json".into(),
            br#"{"model_type":"chatglm"}"#.to_vec(),
        ),
        ("tokenizer.json".into(), b"{}".to_vec()),
        ("model.safetensors".into(), vec![7u8; 300_000]),
    ]
}

fn request(endpoint: &str, repo: &str, dest: &std::path::Path) -> FetchRequest {
    FetchRequest {
        endpoint: endpoint.to_string(),
        repo: repo.into(),
        revision: "main".into(),
        file: None,
        token: None,
        dest: dest.to_path_buf(),
    }
}

#[tokio::test]
async fn a_safetensors_model_is_fetched_once_and_a_restart_downloads_nothing() {
    let (endpoint, hub) = start_hub(Hub {
        repos: HashMap::from([("THUDM/chatglm3-6b".into(), safetensors_repo())]),
        ..Default::default()
    })
    .await;
    let dest = tempfile::tempdir().unwrap();
    let http = client(None).unwrap();
    let req = request(&endpoint, "THUDM/chatglm3-6b", dest.path());
    let written = fetch(&http, &req).await.expect("fetched");
    assert_eq!(written.len(), 3, "{written:?}");
    assert_eq!(
        std::fs::read(dest.path().join("model.safetensors")).unwrap(),
        vec![7u8; 300_000]
    );
    assert!(
        !dest.path().join("README.md").exists(),
        "only what the server loads"
    );
    assert!(!dest.path().join("model.safetensors.partial").exists());
    assert_eq!(hub.downloads.load(Ordering::SeqCst), 3);

    // The pod restarts: the emptyDir still has the files.
    assert!(fetch(&http, &req).await.expect("again").is_empty());
    assert_eq!(hub.downloads.load(Ordering::SeqCst), 3);
    // A damaged download is fetched again.
    std::fs::remove_file(dest.path().join("config.json")).unwrap();
    assert_eq!(fetch(&http, &req).await.expect("repair").len(), 3);
}

#[tokio::test]
async fn a_gated_repository_needs_the_token_and_says_so() {
    let (endpoint, _hub) = start_hub(Hub {
        repos: HashMap::from([("org/gated".into(), safetensors_repo())]),
        gated: vec!["org/gated".into()],
        ..Default::default()
    })
    .await;
    let dest = tempfile::tempdir().unwrap();
    let http = client(None).unwrap();
    let mut req = request(&endpoint, "org/gated", dest.path());
    let err = fetch(&http, &req).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("tokenSecretName"), "{err}");
    req.token = Some("hf_secret".into());
    assert_eq!(fetch(&http, &req).await.expect("with the token").len(), 3);
}

#[tokio::test]
async fn a_missing_repository_or_file_is_a_clear_error() {
    let (endpoint, _hub) = start_hub(Hub {
        repos: HashMap::from([(
            "org/gguf".into(),
            vec![("m.Q4_1.gguf".into(), b"GGUF".to_vec())],
        )]),
        ..Default::default()
    })
    .await;
    let dest = tempfile::tempdir().unwrap();
    let http = client(None).unwrap();
    let err = fetch(&http, &request(&endpoint, "org/none", dest.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
    let mut req = request(&endpoint, "org/gguf", dest.path());
    let err = fetch(&http, &req).await.unwrap_err();
    assert!(matches!(err, FetchError::NoWeights), "{err}");
    req.file = Some("m.Q8_0.gguf".into());
    let err = fetch(&http, &req).await.unwrap_err();
    assert!(
        err.to_string().contains("m.Q4_1.gguf"),
        "lists what exists: {err}"
    );
    req.file = Some("m.Q4_1.gguf".into());
    fetch(&http, &req).await.expect("the named file");
    assert_eq!(req.model_path(), dest.path().join("m.Q4_1.gguf"));
}

/// The command line the operator's init container runs: exit status, the
/// model path on the last line, the error on stderr.
#[tokio::test]
async fn the_fetch_command_prints_the_model_path() {
    let (endpoint, _hub) = start_hub(Hub {
        repos: HashMap::from([(
            "org/gguf".into(),
            vec![("m.Q4_1.gguf".into(), b"GGUF".to_vec())],
        )]),
        ..Default::default()
    })
    .await;
    let dest = tempfile::tempdir().unwrap();
    let run = |file: &str| {
        let (endpoint, dest) = (endpoint.clone(), dest.path().to_path_buf());
        let file = file.to_string();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_securechat-server"))
                .args([
                    "fetch",
                    "--repo",
                    "org/gguf",
                    "--file",
                    &file,
                    "--endpoint",
                    &endpoint,
                ])
                .arg("--dest")
                .arg(&dest)
                .output()
                .expect("run securechat-server fetch")
        })
    };
    let ok = run("m.Q4_1.gguf").await.unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stdout = String::from_utf8(ok.stdout).unwrap();
    assert_eq!(
        stdout.lines().last(),
        Some(dest.path().join("m.Q4_1.gguf").to_str().unwrap())
    );
    let bad = run("nope.gguf").await.unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not in the repository"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
