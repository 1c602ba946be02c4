//! Keeping one Secret or ConfigMap projected as it changes: the loop of
//! `securechat-project`, also used in-process by tests.

use std::fmt::Debug;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::source::{config_map_payload, secret_payload};
use crate::{AtomicWriter, Outcome, Payload};

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("reading {kind} {name}: {source}")]
    Read {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("projecting {kind} {name}: {source}")]
    Project {
        kind: String,
        name: String,
        #[source]
        source: crate::writer::Error,
    },
}

/// Projects Secret `namespace/name` into `writer`'s directory now and,
/// unless `once`, after every change (until the future is dropped).
pub async fn follow_secret(
    client: Client,
    namespace: &str,
    name: &str,
    writer: &AtomicWriter,
    mode: u32,
    once: bool,
) -> Result<(), FollowError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    follow(api, name, writer, once, move |s| secret_payload(s, mode)).await
}

/// Like [`follow_secret`], for a ConfigMap.
pub async fn follow_config_map(
    client: Client,
    namespace: &str,
    name: &str,
    writer: &AtomicWriter,
    mode: u32,
    once: bool,
) -> Result<(), FollowError> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    follow(api, name, writer, once, move |c| {
        config_map_payload(c, mode)
    })
    .await
}

/// Projects `name` now and, unless `once`, after every change.
async fn follow<K>(
    api: Api<K>,
    name: &str,
    writer: &AtomicWriter,
    once: bool,
    payload: impl Fn(&K) -> Payload,
) -> Result<(), FollowError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let kind = K::kind(&());
    if once {
        let object = api.get(name).await.map_err(|source| FollowError::Read {
            kind: kind.to_string(),
            name: name.into(),
            source,
        })?;
        return project(writer, &kind, name, &payload(&object));
    }
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    // Retries with backoff while the API server is unreachable; the last
    // projected content stays in place meanwhile, as with the kubelet.
    let mut objects = watcher(api, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    tracing::info!(%kind, name, dir = %writer.dir().display(), "watching");
    loop {
        match objects.next().await {
            Some(Ok(object)) => {
                if let Err(e) = project(writer, &kind, name, &payload(&object)) {
                    // A payload the writer refuses (a key that is not a valid
                    // file name) is reported; the next change may fix it.
                    tracing::error!(%kind, name, error = %e, "cannot project");
                }
            }
            // The API server restarting, etcd down, a dropped connection:
            // the watcher retries with backoff after each error, and the
            // files stay as last projected, as the kubelet keeps a mount.
            // (Found by operator/tests/chaos.rs: ending here froze the
            // projection for good after a kube-apiserver restart.)
            Some(Err(e)) => {
                tracing::warn!(%kind, name, error = %e, "watch failed; retrying")
            }
            None => return Ok(()),
        }
    }
}

fn project(
    writer: &AtomicWriter,
    kind: &str,
    name: &str,
    payload: &Payload,
) -> Result<(), FollowError> {
    match writer
        .write(payload, Utc::now())
        .map_err(|source| FollowError::Project {
            kind: kind.into(),
            name: name.into(),
            source,
        })? {
        Outcome::Written { generation } => {
            tracing::info!(kind, name, generation, files = payload.len(), "projected")
        }
        Outcome::Unchanged => tracing::debug!(kind, name, "unchanged"),
    }
    Ok(())
}
