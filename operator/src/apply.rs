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
//!
//! Forcing is only right for objects the operator made for this same
//! resource. A name is chosen by whoever writes the spec (a ChatApiKey's
//! `secretName`, a model's name), so an object of that name may be someone
//! else's: a tenant's Secret, or another model's key table. Applying over it
//! would take it over, and the owner reference would then let the garbage
//! collector delete it with our resource (issue 19). So an existing object
//! is written or deleted only when its controlling owner reference is the
//! one the operator would set (same uid); otherwise it is left untouched and
//! the write fails with [`Error::NotOwned`], which the reconciler reports.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
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
        if let Some(live) = &live {
            if !may_write(meta, live.meta()) {
                return Err(not_owned::<K>(namespace, &name));
            }
            if is_unchanged(&desired, &hash, live)? {
                return Ok(live.clone());
            }
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
    /// after scaling to one replica), if `owner` controls it. Absent is
    /// fine, and absence is checked first so that a steady state makes no
    /// write call; an object of that name that `owner` does not control is
    /// someone else's and is left alone ([`Error::NotOwned`]).
    pub async fn delete_if_present<K, O>(
        &mut self,
        owner: &O,
        namespace: &str,
        name: &str,
    ) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope> + DeserializeOwned + Clone + Debug,
        K::DynamicType: Default,
        O: Resource,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let live = match api.get_metadata(name).await {
            Ok(live) => live,
            // Absent, or its kind is: a group nobody installed (no KEDA,
            // no Gateway API) answers a plain-text 404, which kube's
            // `get_metadata_opt` does not count as NotFound (its Status
            // has no reason), so a model that never asked for such a kind
            // failed every reconcile before its status.
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if !controlled_by(&live.metadata, owner.meta().uid.as_deref()) {
            return Err(not_owned::<K>(namespace, name));
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

/// Whether `object`'s controlling owner reference names the owner with
/// this uid. `None` (an owner not yet stored) controls nothing.
pub fn controlled_by(object: &ObjectMeta, owner_uid: Option<&str>) -> bool {
    let controller = object
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    owner_uid.is_some_and(|uid| controller.is_some_and(|c| c.uid == uid))
}

/// Whether the operator may write `live` as `desired`: `live` is controlled
/// by the resource that `desired` names as its controller. A desired object
/// without a controller (none today) has no owner to compare, and is not
/// written over an existing object either.
pub fn may_write(desired: &ObjectMeta, live: &ObjectMeta) -> bool {
    let owner_uid = desired
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str());
    controlled_by(live, owner_uid)
}

fn not_owned<K>(namespace: &str, name: &str) -> Error
where
    K: Resource,
    K::DynamicType: Default,
{
    Error::NotOwned {
        kind: K::kind(&K::DynamicType::default()).into_owned(),
        namespace: namespace.to_string(),
        name: name.to_string(),
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
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

    fn owned_by(uid: &str, controller: bool) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                uid: uid.into(),
                controller: Some(controller),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn only_objects_controlled_by_the_same_resource_are_written() {
        let desired = owned_by("model-uid", true);
        assert!(may_write(&desired, &owned_by("model-uid", true)));
        // Someone else's object, or one we would adopt: left alone.
        assert!(!may_write(&desired, &ObjectMeta::default()));
        assert!(!may_write(&desired, &owned_by("other-uid", true)));
        // An owner reference that is not the controller is not ownership.
        assert!(!may_write(&desired, &owned_by("model-uid", false)));
        // A resource recreated under the same name has a new uid.
        assert!(!may_write(&owned_by("new-uid", true), &desired));
        // No controller in the desired object: nothing to compare with.
        assert!(!may_write(&ObjectMeta::default(), &ObjectMeta::default()));
        assert!(!controlled_by(&desired, None));
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
