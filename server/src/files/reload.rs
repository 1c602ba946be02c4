//! Hot reload. Kubernetes updates mounted Secrets and ConfigMaps by swapping
//! a symlink, which some inotify setups miss, so a change event triggers a
//! reload and a slow poll catches anything the events did not. Files whose
//! bytes did not change are skipped; an invalid file is logged and counted
//! and the last good version stays in force.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::Watcher;
use securechat_crds::files::ValidationError;
use securechat_crds::files::api_keys::ApiKeyTable;
use securechat_crds::files::config::{FilePaths, ServerConfig};
use securechat_crds::files::keyset::SigningKeySet;
use securechat_crds::v1alpha1::{MtlsMode, TlsVersion};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::credentials::jwt::{KeysetError, SigningMaterial};
use crate::state::{AppState, ConfigError, LiveConfig};
use crate::tls::{self, CertError, LoadedCert, SwappableCert, TrustBundleError};

const POLL_INTERVAL: Duration = Duration::from_secs(30);
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Why a watched file could not be read or was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the mount changed while resolving")]
    MountChanged,
    #[error("{}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// Why a file's bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Keyset(#[from] KeysetError),
    #[error(transparent)]
    Table(#[from] ValidationError),
}

fn read_error(path: &Path) -> impl FnOnce(io::Error) -> FileError + use<> {
    let path = path.to_path_buf();
    move |source| FileError::Read { path, source }
}

fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(read_error(path))
}

pub fn parse_config(bytes: &[u8]) -> Result<LiveConfig, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ConfigError::NotUtf8)?;
    let config = ServerConfig::from_yaml(text).map_err(ConfigError::from)?;
    Ok(LiveConfig::new(config)?)
}

pub fn parse_keyset(bytes: &[u8]) -> Result<SigningMaterial, ParseError> {
    let set: SigningKeySet = serde_json::from_slice(bytes)?;
    Ok(SigningMaterial::from_keyset(&set)?)
}

pub fn parse_table(bytes: &[u8]) -> Result<ApiKeyTable, ParseError> {
    let table: ApiKeyTable = serde_json::from_slice(bytes)?;
    table.validate()?;
    Ok(table)
}

/// Reads and parses one file, naming it in the error.
fn load<T>(path: &Path, parse: fn(&[u8]) -> Result<T, ParseError>) -> Result<T, FileError> {
    parse(&read(path)?).map_err(|source| FileError::Invalid {
        path: path.to_path_buf(),
        source,
    })
}

pub fn load_config(path: &Path) -> Result<LiveConfig, FileError> {
    load(path, parse_config)
}
pub fn load_keyset(path: &Path) -> Result<SigningMaterial, FileError> {
    load(path, parse_keyset)
}
pub fn load_table(path: &Path) -> Result<ApiKeyTable, FileError> {
    load(path, parse_table)
}
pub fn load_cert(files: &FilePaths) -> Result<LoadedCert, FileError> {
    let (cert, key) = read_pair(&files.tls_cert, &files.tls_key)?;
    Ok(tls::load_cert(&cert, &key)?)
}

/// How many keys of `new` carry a different secret than in `old` (a
/// rotation; new and removed keys are not rotations).
pub fn rotations(old: &ApiKeyTable, new: &ApiKeyTable) -> u64 {
    new.keys
        .iter()
        .filter(|k| {
            old.get(&k.id)
                .is_some_and(|o| o.secret_hash != k.secret_hash)
        })
        .count() as u64
}

/// Reads a certificate and its key as one consistent pair.
///
/// The kubelet updates a mounted Secret by writing a new timestamped
/// directory and swapping the `..data` symlink; `tls.crt` and `tls.key` are
/// symlinks through it. Reading the two names one after the other could
/// straddle a swap and pair a new certificate with an old key. So both
/// names are resolved to their real paths first, and the pair is accepted
/// only if the certificate still resolves to the same real path after the
/// key was resolved: the swap is one atomic rename and generations never
/// come back, so nothing swapped in between. A generation directory is
/// never modified, only deleted, so reading through the resolved paths
/// sees that generation or fails (and is retried). With plain files the
/// real paths are the paths themselves and this is two ordinary reads.
pub fn read_pair(first: &Path, second: &Path) -> Result<(Vec<u8>, Vec<u8>), FileError> {
    let real = |p: &Path| std::fs::canonicalize(p).map_err(read_error(p));
    let attempt = || -> Result<(Vec<u8>, Vec<u8>), FileError> {
        let a = real(first)?;
        let b = real(second)?;
        if real(first)? != a {
            return Err(FileError::MountChanged);
        }
        Ok((read(&a)?, read(&b)?))
    };
    // Losing a race with a swap shows as a generation that vanished
    // mid-resolution or mid-read; the next attempt sees the new one. A
    // file that is really missing fails every attempt.
    let mut last_error = FileError::MountChanged;
    for n in 0..8 {
        match attempt() {
            Ok(pair) => return Ok(pair),
            Err(e) => last_error = e,
        }
        if n >= 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Err(last_error)
}

/// The TLS side of the reloadable state.
pub struct TlsState {
    pub cert: Arc<SwappableCert>,
    /// The web port's: never asks for client certificates.
    pub acceptor: Arc<ArcSwap<TlsAcceptor>>,
    /// The API port's: asks for them under `auth.mtls`.
    pub api_acceptor: Arc<ArcSwap<TlsAcceptor>>,
    settings: Mutex<TlsSettings>,
}

/// What the acceptors were built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsSettings {
    pub min_version: TlsVersion,
    pub mtls: MtlsMode,
}

/// Why the acceptors could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AcceptorError {
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    #[error("{}: {source}", path.display())]
    Bundle {
        path: PathBuf,
        #[source]
        source: TrustBundleError,
    },
    #[error("auth.mtls.mode is {0:?} but the client CA bundle cannot be read: {1}")]
    NoBundle(MtlsMode, String),
}

/// The web and API acceptors for `settings`; `bundle` is the client CA
/// bundle file (read only when mTLS is on).
fn acceptors(
    cert: &Arc<SwappableCert>,
    settings: TlsSettings,
    bundle: &Path,
) -> Result<(TlsAcceptor, TlsAcceptor), AcceptorError> {
    let verifier = match settings.mtls {
        MtlsMode::Disabled => None,
        mode => {
            let pem = std::fs::read(bundle)
                .map_err(|e| AcceptorError::NoBundle(mode, format!("{}: {e}", bundle.display())))?;
            let verifier =
                tls::client_verifier(&pem, mode == MtlsMode::Required).map_err(|source| {
                    AcceptorError::Bundle {
                        path: bundle.to_path_buf(),
                        source,
                    }
                })?;
            Some(verifier)
        }
    };
    Ok((
        tls::acceptor(cert.clone(), settings.min_version, None)?,
        tls::acceptor(cert.clone(), settings.min_version, verifier)?,
    ))
}

impl TlsState {
    pub fn new(
        cert: LoadedCert,
        settings: TlsSettings,
        client_ca_bundle: &Path,
    ) -> Result<Self, AcceptorError> {
        let cert = Arc::new(SwappableCert(ArcSwap::new(cert.key)));
        let (web, api) = acceptors(&cert, settings, client_ca_bundle)?;
        Ok(Self {
            cert,
            acceptor: Arc::new(ArcSwap::from_pointee(web)),
            api_acceptor: Arc::new(ArcSwap::from_pointee(api)),
            settings: Mutex::new(settings),
        })
    }
}

/// Knows the files and swaps in new versions.
pub struct Reloader {
    pub state: AppState,
    pub tls: Arc<TlsState>,
    pub config_path: Option<PathBuf>,
    pub files: FilePaths,
    digests: Mutex<HashMap<&'static str, [u8; 32]>>,
}

impl Reloader {
    pub fn new(
        state: AppState,
        tls: Arc<TlsState>,
        config_path: Option<PathBuf>,
        files: FilePaths,
    ) -> Self {
        let reloader = Self {
            state,
            tls,
            config_path,
            files,
            digests: Mutex::new(HashMap::new()),
        };
        // Remember what was loaded at startup so the first poll is a no-op.
        for (name, path) in reloader.watched() {
            if let Ok(bytes) = std::fs::read(&path) {
                reloader.changed(name, &bytes);
            }
        }
        reloader
    }

    fn watched(&self) -> Vec<(&'static str, PathBuf)> {
        let mut out = vec![
            ("signing_keys", self.files.signing_keys.clone()),
            ("api_keys", self.files.api_keys.clone()),
            ("tls_cert", self.files.tls_cert.clone()),
            ("tls_key", self.files.tls_key.clone()),
            ("client_ca_bundle", self.files.client_ca_bundle.clone()),
        ];
        if let Some(c) = &self.config_path {
            out.push(("config", c.clone()));
        }
        out
    }

    /// Records the digest; true when it differs from the last one seen.
    fn changed(&self, name: &'static str, bytes: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let mut map = self.digests.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(name, digest) != Some(digest)
    }

    fn outcome<T, E: std::fmt::Display>(&self, file: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(v) => {
                tracing::info!(file, "reloaded");
                self.state.metrics.reload(file, true);
                Some(v)
            }
            Err(e) => {
                tracing::warn!(file, error = %e, "invalid file; keeping the last good version");
                self.state.metrics.reload(file, false);
                None
            }
        }
    }

    /// Re-reads every file that changed.
    pub fn reload_all(&self) {
        if let Some(path) = &self.config_path
            && let Ok(bytes) = read(path)
            && self.changed("config", &bytes)
            && let Some(runtime) = self.outcome("config", parse_config(&bytes))
        {
            let settings = TlsSettings {
                min_version: runtime.config.tls.min_version,
                mtls: runtime.config.auth.mtls.mode,
            };
            // The store itself is chosen at start; a scaled model's new
            // replica count applies at once (LocalFallback's share).
            if let (Some(store), Some(shared)) = (&self.state.store, &runtime.config.shared_state) {
                store.set_replicas(shared.replicas);
            }
            let running = self.state.store.as_ref().map(|s| s.config());
            if crate::shared::restart_needed(running, runtime.config.shared_state.as_ref()) {
                tracing::warn!(
                    "sharedState changed: the store settings in use stay until the server \
                     restarts (the operator rolls the pods for such a change)"
                );
            }
            self.state.live_config.store(Arc::new(runtime));
            self.apply_tls_settings(settings, false);
        }
        // A new trust bundle (a CA rotation, a SPIRE bundle update) applies
        // to the next handshake; an invalid one leaves the last good one.
        if let Ok(bytes) = read(&self.files.client_ca_bundle)
            && self.changed("client_ca_bundle", &bytes)
        {
            let current = *self.tls.settings.lock().unwrap_or_else(|e| e.into_inner());
            self.apply_tls_settings(current, true);
        }
        if let Ok(bytes) = read(&self.files.signing_keys)
            && self.changed("signing_keys", &bytes)
            && let Some(m) = self.outcome("signing_keys", parse_keyset(&bytes))
        {
            let old = self.state.signing.swap(Arc::new(m));
            let new = self.state.signing.load();
            if old.designated_active_kid() != new.designated_active_kid() {
                self.state.metrics.signing_key_rotations.inc();
            }
        }
        if let Ok(bytes) = read(&self.files.api_keys)
            && self.changed("api_keys", &bytes)
            && let Some(t) = self.outcome("api_keys", parse_table(&bytes))
        {
            let old = self.state.api_keys.swap(Arc::new(t));
            let rotated = rotations(&old, &self.state.api_keys.load());
            self.state.metrics.api_key_rotations.inc_by(rotated);
        }
        // Certificate and key change together; either changing reloads both,
        // read from one generation of the mount (see `read_pair`).
        match read_pair(&self.files.tls_cert, &self.files.tls_key) {
            Ok((cert, key)) => {
                let c = self.changed("tls_cert", &cert);
                let k = self.changed("tls_key", &key);
                if (c || k)
                    && let Some(loaded) = self.outcome("tls", tls::load_cert(&cert, &key))
                {
                    *self
                        .state
                        .cert_not_after
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = loaded.not_after;
                    self.tls.cert.0.store(loaded.key);
                    self.state.metrics.certificate_renewals.inc();
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the certificate and key"),
        }
    }

    /// Rebuilds the acceptors when `settings` differ from those in force,
    /// or when `bundle_changed`; a failure keeps the ones in force.
    fn apply_tls_settings(&self, settings: TlsSettings, bundle_changed: bool) {
        let mut current = self.tls.settings.lock().unwrap_or_else(|e| e.into_inner());
        if *current == settings && !bundle_changed {
            return;
        }
        let built = acceptors(&self.tls.cert, settings, &self.files.client_ca_bundle);
        let uses_bundle = settings.mtls != MtlsMode::Disabled;
        match built {
            Ok((web, api)) => {
                self.tls.acceptor.store(Arc::new(web));
                self.tls.api_acceptor.store(Arc::new(api));
                *current = settings;
                if uses_bundle {
                    tracing::info!(file = "client_ca_bundle", "reloaded");
                    self.state.metrics.reload("client_ca_bundle", true);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot apply the TLS settings; keeping those in force");
                if uses_bundle {
                    self.state.metrics.reload("client_ca_bundle", false);
                }
            }
        }
    }
}

/// Watches the files' directories and reloads on change, plus a periodic
/// poll. The returned watcher must be kept alive.
pub fn spawn(reloader: Arc<Reloader>) -> anyhow::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        // A full channel already means "reload pending".
        let _ = tx.try_send(());
    })?;
    let mut dirs: Vec<PathBuf> = reloader
        .watched()
        .iter()
        .filter_map(|(_, p)| p.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; relying on polling");
        }
    }
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        loop {
            tokio::select! {
                Some(()) = rx.recv() => tokio::time::sleep(DEBOUNCE).await,
                _ = poll.tick() => {}
            }
            // Drain events that arrived during the debounce.
            while rx.try_recv().is_ok() {}
            let r = reloader.clone();
            // File reads and key parsing are blocking work.
            let _ = tokio::task::spawn_blocking(move || r.reload_all()).await;
        }
    });
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use securechat_crds::v1alpha1::Tier;

    use crate::keys_cli;

    #[test]
    fn only_changed_secrets_count_as_rotations() {
        let now = Utc::now();
        let mut old = ApiKeyTable::default();
        let (a, _) = keys_cli::create(&mut old, "a", Tier::Developer, None, now).unwrap();
        let (b, _) = keys_cli::create(&mut old, "b", Tier::Developer, None, now).unwrap();
        let mut new = old.clone();
        assert_eq!(rotations(&old, &new), 0);
        keys_cli::rotate(&mut new, &a, chrono::Duration::hours(1), now).unwrap();
        keys_cli::suspend(&mut new, &b).unwrap();
        keys_cli::create(&mut new, "c", Tier::ReadOnly, None, now).unwrap();
        assert_eq!(
            rotations(&old, &new),
            1,
            "suspend and create are not rotations"
        );
        new.keys.retain(|k| k.id != a);
        assert_eq!(rotations(&old, &new), 0, "a removed key is not a rotation");
    }

    #[test]
    fn read_pair_reports_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        std::fs::write(&cert, b"c").unwrap();
        let err = read_pair(&cert, &dir.path().join("tls.key")).unwrap_err();
        assert!(
            matches!(&err, FileError::Read { path, .. } if path.ends_with("tls.key")),
            "{err}"
        );
        assert!(err.to_string().contains("tls.key"), "{err}");
        std::fs::write(dir.path().join("tls.key"), b"k").unwrap();
        assert_eq!(
            read_pair(&cert, &dir.path().join("tls.key")).unwrap(),
            (b"c".to_vec(), b"k".to_vec())
        );
    }
}
