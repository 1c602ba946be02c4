//! The HTTPS listeners: TCP accept, TLS handshake (with a timeout, so a slow
//! client cannot pin a task), then HTTP/1.1 into the axum router. There is
//! no plaintext listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use chrono::{DateTime, Utc};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// The peer address of a connection, for the brute-force guard and audit.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The client certificate a connection presented and the handshake
/// verified (the API port under `auth.mtls`), for every request on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// Its SPIFFE ID. An X.509 SVID carries exactly one URI SAN, with the
    /// `spiffe` scheme; a certificate with none, several, or another
    /// scheme has no SPIFFE ID.
    pub spiffe_id: Option<String>,
    pub not_after: Option<DateTime<Utc>>,
}

impl ClientCertificate {
    /// The identity of the leaf certificate `der`.
    pub fn from_der(der: &[u8]) -> Self {
        let uris = crate::der::certificate_uri_sans(der);
        let spiffe_id = match uris.as_slice() {
            [one] if one.starts_with("spiffe://") => Some(one.clone()),
            _ => None,
        };
        Self {
            spiffe_id,
            not_after: crate::der::certificate_not_after(der),
        }
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping server waits for the requests it is serving: a
/// pod's default 30 s grace period less the operator's 5 s preStop sleep,
/// after which the kubelet's SIGKILL would end them anyway.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(25);

/// Serves `app` on `listener` until `shutdown` turns true, then stops
/// accepting, lets every connection finish the request it is serving
/// (a streamed answer to its end) and closes idle ones, for at most
/// [`DRAIN_LIMIT`]: a scale-down or a rollout fails no request. Each connection
/// gets the header read timeout `header_timeout` gives when it is accepted
/// (the server's reads `limits.headerReadTimeout`, so a reload applies to
/// new connections): a client that trickles its headers (slowloris) or
/// sends none is disconnected when it runs out.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: Arc<ArcSwap<TlsAcceptor>>,
    app: Router,
    header_timeout: impl Fn() -> Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let acceptor = acceptor.load_full();
        let app = app.clone();
        let header_timeout = header_timeout();
        // Taken before the handshake, so a connection still shaking hands
        // when the server stops is waited for too.
        let watcher = connections.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| ClientCertificate::from_der(leaf.as_ref()));
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                if let Some(cert) = &client_cert {
                    req.extensions_mut().insert(cert.clone());
                }
                app.clone().oneshot(req.map(Body::new))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    let open = connections.count();
    if tokio::time::timeout(DRAIN_LIMIT, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = open,
            limit = ?DRAIN_LIMIT,
            "stopped with requests still in flight"
        );
    }
}
