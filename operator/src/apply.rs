//! Server-side apply with the operator's one field manager. Forcing is right
//! here: the operator owns these objects, and a conflicting manual edit is
//! exactly the drift to revert.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, FIELD_MANAGER, Result};

/// Applies `obj` (which carries its own name and namespace) and returns what
/// the API server stored.
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let meta = obj.meta();
    let name = meta
        .name
        .as_deref()
        .ok_or(Error::MissingField("metadata.name"))?;
    let namespace = meta
        .namespace
        .as_deref()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

/// Deletes an object the desired state no longer contains (e.g. the PDB
/// after scaling to one replica). Absent is fine.
pub async fn delete_if_present<K>(client: &Client, namespace: &str, name: &str) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope> + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
