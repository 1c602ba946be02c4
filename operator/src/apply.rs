//! Server-side apply with the operator's one field manager, skipped when the
//! live object already matches. Forcing is right here: the operator owns
//! these objects, and a conflicting manual edit is exactly the drift to
//! revert.
//!
//! Why compare first: an apply that changes nothing is still a write request
//! to the API server (and an etcd round trip when managed fields move), and a
//! no-op reconcile of many models must cost the cluster nothing. Two checks
//! together decide "unchanged":
//! - the live object carries the hash of the last desired object we applied
//!   (annotation), which catches fields we stopped setting (SSA removes
//!   those, a subset check cannot see them), and
//! - every field we set is present with the same value in the live object
//!   (a subset check), which catches someone else's edits (drift).

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource};
use securechat_crds::hex::hex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{Error, FIELD_MANAGER, Result};

/// Annotation holding the hash of the desired object last applied.
pub const APPLIED_HASH_ANNOTATION: &str = "securechat.dev/applied-hash";

/// One write the operator made, for events and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub verb: &'static str,
    pub kind: String,
    pub name: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.verb, self.kind, self.name)
    }
}

/// Applies and deletes owned objects, recording each write it makes.
pub struct Writer {
    client: Client,
    pub changes: Vec<Change>,
}

impl Writer {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            changes: Vec::new(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Applies `obj` (which carries its own name and namespace) unless the
    /// live object already matches it, and returns what the API server
    /// holds.
    pub async fn apply<K>(&mut self, obj: &K) -> Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + Debug,
        K::DynamicType: Default,
    {
        let meta = obj.meta();
        let name = meta
            .name
            .clone()
            .ok_or(Error::MissingField("metadata.name"))?;
        let namespace = meta
            .namespace
            .as_deref()
            .ok_or(Error::MissingField("metadata.namespace"))?;
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let (desired, hash) = with_applied_hash(obj)?;
        let live = api.get_opt(&name).await?;
        if let Some(live) = &live
            && is_unchanged(&desired, &hash, live)?
        {
            return Ok(live.clone());
        }
        let stored = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await?;
        self.changes.push(Change {
            verb: if live.is_some() { "updated" } else { "created" },
            kind: K::kind(&K::DynamicType::default()).into_owned(),
            name,
        });
        Ok(stored)
    }

    /// Deletes an object the desired state no longer contains (e.g. the PDB
    /// after scaling to one replica). Absent is fine, and absence is checked
    /// first so that a steady state makes no write call.
    pub async fn delete_if_present<K>(&mut self, namespace: &str, name: &str) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope> + DeserializeOwned + Clone + Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        if api.get_metadata_opt(name).await?.is_none() {
            return Ok(());
        }
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {
                self.changes.push(Change {
                    verb: "deleted",
                    kind: K::kind(&K::DynamicType::default()).into_owned(),
                    name: name.to_string(),
                });
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The desired object with the hash of its content as an annotation.
pub fn with_applied_hash<K: Resource + Serialize + Clone>(obj: &K) -> Result<(K, String)> {
    let json = serde_json::to_vec(obj).map_err(|e| Error::Render {
        what: "object",
        message: e.to_string(),
    })?;
    let hash = hex(&Sha256::digest(&json));
    let mut desired = obj.clone();
    desired
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(APPLIED_HASH_ANNOTATION.into(), hash.clone());
    Ok((desired, hash))
}

/// Whether `live` already is what applying `desired` would make it.
pub fn is_unchanged<K: Resource + Serialize>(desired: &K, hash: &str, live: &K) -> Result<bool> {
    let live_hash = live
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED_HASH_ANNOTATION));
    if live_hash.map(String::as_str) != Some(hash) {
        return Ok(false);
    }
    let to_value = |o: &K| {
        serde_json::to_value(o).map_err(|e| Error::Render {
            what: "object",
            message: e.to_string(),
        })
    };
    Ok(is_subset(&to_value(desired)?, &to_value(live)?))
}

/// Every field of `desired` is in `live` with the same value. Fields only in
/// `live` (server defaults, status, other managers' fields) are ignored;
/// lists must match element by element, because the lists we set are
/// atomic or keyed in an order we choose.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => is_subset(dv, lv),
            // An absent field equals an empty one: the API server drops
            // empty maps and lists on the way in.
            None => is_empty(dv),
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        (d, l) => d == l,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde_json::json;

    #[test]
    fn server_defaults_and_foreign_fields_do_not_count_as_change() {
        let desired = json!({"spec": {"ports": [{"port": 8000}], "selector": {"a": "b"}}});
        let live = json!({"spec": {"ports": [{"port": 8000, "protocol": "TCP"}],
            "selector": {"a": "b"}, "clusterIP": "10.0.0.1"}, "status": {}});
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn edited_removed_or_added_list_items_count_as_change() {
        let desired = json!({"spec": {"ingress": [{"ports": [{"port": 8000}]}]}});
        let edited = json!({"spec": {"ingress": [{"ports": [{"port": 9000}]}]}});
        let grown = json!({"spec": {"ingress": [{"ports": [{"port": 8000}]}, {}]}});
        let gone = json!({"spec": {}});
        assert!(!is_subset(&desired, &edited));
        assert!(!is_subset(&desired, &grown));
        assert!(!is_subset(&desired, &gone));
    }

    #[test]
    fn empty_desired_fields_match_absent_live_fields() {
        assert!(is_subset(&json!({"a": {}, "b": [], "c": null}), &json!({})));
        assert!(!is_subset(&json!({"a": 0}), &json!({})));
    }

    #[test]
    fn the_hash_decides_when_a_field_was_dropped_from_the_desired_object() {
        let mut old = ConfigMap::default();
        old.metadata.name = Some("m".into());
        old.data = Some([("a".into(), "1".into()), ("b".into(), "2".into())].into());
        let (live, _) = with_applied_hash(&old).unwrap();
        let mut new = old.clone();
        new.data = Some([("a".into(), "1".into())].into());
        let (desired, hash) = with_applied_hash(&new).unwrap();
        // `live` has every field of `desired`, but we stopped setting "b".
        assert!(!is_unchanged(&desired, &hash, &live).unwrap());
        let (again, hash) = with_applied_hash(&old).unwrap();
        assert!(is_unchanged(&again, &hash, &live).unwrap());
    }
}
