//! The ceiling of the secured-throughput bench: the same HTTPS stack as
//! securechat-server (its accept loop, rustls acceptor and certificate,
//! hyper HTTP/1.1, an axum router) serving `GET /v1/models` behind nothing
//! but a check that the request carries `Authorization: Bearer <something>`.
//! What securechat-server loses against it is what authentication, rate
//! limits, audit, metrics and the other layers cost.
//!
//!     cargo run --release --example bare_server -- \
//!         --addr 127.0.0.1:8443 --cert data/tls/tls.crt --key data/tls/tls.key

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use securechat_crds::v1alpha1::TlsVersion;
use securechat_server::listener::serve_tls;
use securechat_server::tls::{SwappableCert, acceptor, load_cert};

/// The body securechat-server's `/v1/models` answers for the default model
/// in --dev mode (same fields, same size).
const MODELS: &str = r#"{"object":"list","data":[{"id":"SmolLM2-135M-Instruct-Q4_1","object":"model","created":0,"owned_by":"securechat","family":"Llama-GGUF","context_length":8192}]}"#;

async fn models(headers: HeaderMap) -> impl IntoResponse {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| !token.is_empty());
    if bearer {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            MODELS,
        )
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":{"message":"missing bearer token","type":"unauthorized"}}"#,
        )
    }
}

fn arg(args: &[String], name: &str) -> anyhow::Result<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "usage: bare_server --addr HOST:PORT --cert PEM --key PEM (missing {name})"
            )
        })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let addr = arg(&args, "--addr")?;
    let cert = std::fs::read(arg(&args, "--cert")?)?;
    let key = std::fs::read(arg(&args, "--key")?)?;
    let loaded = load_cert(&cert, &key)?;
    let cert = Arc::new(SwappableCert(ArcSwap::new(loaded.key)));
    let acceptor = Arc::new(ArcSwap::from_pointee(acceptor(
        cert,
        TlsVersion::V1_3,
        None,
    )?));
    let app = Router::new().route("/v1/models", get(models));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let (_keep_open, shutdown) = tokio::sync::watch::channel(false);
    eprintln!("bare_server listening on {addr}");
    serve_tls(
        listener,
        acceptor,
        app,
        || Duration::from_secs(10),
        shutdown,
    )
    .await;
    Ok(())
}
