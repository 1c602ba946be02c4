//! TLS termination with rustls. The certificate lives behind an ArcSwap that
//! the resolver reads on every handshake, so a renewed certificate is used
//! by the next connection while open connections carry on undisturbed.

use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use securechat_crds::v1alpha1::TlsVersion;
use tokio_rustls::TlsAcceptor;

/// The crypto provider used everywhere (ring: already built for kube).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS for the server's outgoing HTTPS (OIDC discovery and JWKS, model
/// downloads): the system roots plus `extra_roots` (PEM CA certificates,
/// for services behind a private CA).
pub fn client_config(extra_roots: Option<&[u8]>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A malformed system certificate must not stop the server.
        let _ = roots.add(cert);
    }
    if let Some(pem) = extra_roots {
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots.add(cert?)?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A parsed certificate chain and key.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub not_after: Option<DateTime<Utc>>,
}

/// Why a certificate and key were refused.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate: {0}")]
    Certificate(#[source] pem::Error),
    #[error("certificate: no CERTIFICATE block")]
    NoCertificate,
    #[error("private key: {0}")]
    PrivateKey(#[source] pem::Error),
    #[error("certificate/key: {0}")]
    Mismatch(#[source] rustls::Error),
}

/// Parses PEM chain + PKCS#8/PKCS#1/SEC1 key and checks they belong together.
pub fn load_cert(cert_pem: &[u8], key_pem: &[u8]) -> Result<LoadedCert, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(CertError::Certificate)?;
    let first = chain.first().ok_or(CertError::NoCertificate)?;
    let not_after = crate::der::certificate_not_after(first.as_ref());
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(CertError::PrivateKey)?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(CertError::Mismatch)?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        not_after,
    })
}

/// Hands out whatever certificate is current.
#[derive(Debug)]
pub struct SwappableCert(pub ArcSwap<CertifiedKey>);

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Why a client-certificate trust bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum TrustBundleError {
    #[error("trust bundle: {0}")]
    Pem(#[source] pem::Error),
    #[error("trust bundle: no CERTIFICATE block")]
    Empty,
    #[error("trust bundle: {0}")]
    Certificate(#[source] rustls::Error),
    #[error("trust bundle: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// The verifier of client certificates against `bundle_pem` (every PEM CA
/// in it is trusted). With `required`, a client without a certificate is
/// refused at the handshake; without, it may go on to bearer
/// authentication. Either way a certificate that is presented must chain to
/// the bundle, be within its validity and be meant for client
/// authentication (or name no purpose), else the handshake fails.
pub fn client_verifier(
    bundle_pem: &[u8],
    required: bool,
) -> Result<Arc<dyn ClientCertVerifier>, TrustBundleError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle_pem) {
        roots
            .add(cert.map_err(TrustBundleError::Pem)?)
            .map_err(TrustBundleError::Certificate)?;
    }
    if roots.is_empty() {
        return Err(TrustBundleError::Empty);
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(TrustBundleError::Verifier)
}

/// A TLS acceptor for the given minimum version. TLS 1.3 is always offered
/// and preferred; 1.2 only when the config allows it. With a
/// `client_verifier` (the API port under `auth.mtls`) client certificates
/// are requested and checked by it.
pub fn acceptor(
    cert: Arc<SwappableCert>,
    min_version: TlsVersion,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<TlsAcceptor, rustls::Error> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder =
        rustls::ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
