//! Admin endpoints: key metadata and usage (never a secret), and the live
//! configuration.

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use securechat_crds::files::api_keys::HISTORY_LIMIT;
use securechat_crds::files::config::ServerConfig;
use securechat_crds::v1alpha1::Permission;
use serde_json::{Value, json};

use super::body::ApiJson;
use crate::auth::{AdminPermission, Authorized, UsagePermission};
use crate::error::ApiError;
use crate::files::atomic::write_atomic;
use crate::state::{AppState, LiveConfig};

pub async fn keys(
    State(state): State<AppState>,
    _caller: Authorized<AdminPermission>,
) -> Json<Value> {
    let now = Utc::now();
    let table = state.api_keys.load();
    let ids: Vec<String> = table.keys.iter().map(|k| k.id.clone()).collect();
    let (usage, scope) = state.usage_of(&ids).await;
    let keys: Vec<Value> = table
        .keys
        .iter()
        .map(|k| {
            let live = usage.get(&k.id).cloned().unwrap_or_default();
            let last_used = match (k.last_used_at, live.last_used_at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            json!({
                "id": k.id,
                "name": k.name,
                "tier": k.tier,
                "status": k.status_at(now).as_str(),
                "createdAt": k.created_at,
                "expiresAt": k.expires_at,
                "rotatedAt": k.rotated_at,
                "previousSecretValidUntil": k.previous_secret_valid_until,
                "lastUsedAt": last_used,
                "usage": {
                    "requests": live.requests,
                    "promptTokens": live.prompt_tokens,
                    "completionTokens": live.completion_tokens,
                },
            })
        })
        .collect();
    Json(json!({ "keys": keys, "usageScope": scope }))
}

/// Expired keys archived in the table's history (newest first), with the
/// usage the server counted for them: the whole model's with a shared
/// store, else this server's since it started (`usageScope`).
pub async fn key_history(
    State(state): State<AppState>,
    _caller: Authorized<AdminPermission>,
) -> Json<Value> {
    let table = state.api_keys.load();
    let ids: Vec<String> = table.history.iter().map(|k| k.id.clone()).collect();
    let (usage, scope) = state.usage_of(&ids).await;
    let keys: Vec<Value> = table
        .history
        .iter()
        .rev()
        .map(|k| {
            let live = usage.get(&k.id).cloned().unwrap_or_default();
            let last_used = k.last_used_at.max(live.last_used_at);
            json!({
                "id": k.id,
                "name": k.name,
                "tier": k.tier,
                "createdAt": k.created_at,
                "expiredAt": k.expired_at,
                "lastUsedAt": last_used,
                "usage": {
                    "requests": live.requests,
                    "promptTokens": live.prompt_tokens,
                    "completionTokens": live.completion_tokens,
                },
            })
        })
        .collect();
    Json(json!({ "keys": keys, "limit": HISTORY_LIMIT, "usageScope": scope }))
}

/// The caller's own usage (Developer and Admin) for the API key behind
/// the credential: the whole model's with a shared store (`usageScope`
/// model), else this server's since it started (`replica`).
pub async fn own_usage(
    State(state): State<AppState>,
    caller: Authorized<UsagePermission>,
) -> Json<Value> {
    let p = caller.principal;
    let ids: Vec<String> = p.key_id.iter().cloned().collect();
    let (mut usage, scope) = state.usage_of(&ids).await;
    let usage = p
        .key_id
        .as_ref()
        .and_then(|id| usage.remove(id))
        .unwrap_or_default();
    Json(json!({
        "principal": p.subject,
        "keyId": p.key_id,
        "tier": p.tier,
        "usage": usage,
        "usageScope": scope,
    }))
}

pub async fn get_config(
    State(state): State<AppState>,
    _caller: Authorized<AdminPermission>,
) -> Json<ServerConfig> {
    Json(state.live_config().config.clone())
}

/// JSON merge patch (RFC 7386) onto the live config. The result is
/// validated like a reloaded file; when the config file is writable it is
/// persisted (standalone), otherwise (a mounted ConfigMap) it lasts until
/// the file next changes, and the response says so.
pub async fn patch_config(
    State(state): State<AppState>,
    _caller: Authorized<AdminPermission>,
    ApiJson(patch): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    if !patch.is_object() {
        return Err(ApiError::InvalidRequest(
            "the patch must be a JSON object".into(),
        ));
    }
    let current = state.live_config();
    let mut doc =
        serde_json::to_value(&current.config).map_err(|e| ApiError::Internal(e.to_string()))?;
    merge_patch(&mut doc, &patch);
    let config: ServerConfig =
        serde_json::from_value(doc).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    keeps_an_admin(&config)?;
    let runtime = LiveConfig::new(config).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let yaml =
        serde_yaml::to_string(&runtime.config).map_err(|e| ApiError::Internal(e.to_string()))?;
    let persisted = match &state.config_path {
        Some(path) => match write_atomic(path, yaml.as_bytes(), false) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "config patched in memory only");
                false
            }
        },
        None => false,
    };
    let config = runtime.config.clone();
    state.live_config.store(std::sync::Arc::new(runtime));
    Ok(Json(
        json!({ "status": "updated", "persisted": persisted, "config": config }),
    ))
}

/// A patch must not take the Admin permission from the admin tier: every
/// Admin would then get 403 on /admin/*, this endpoint included, and only a
/// hand edit of the file could undo it. (A config file may still leave it
/// out, to run without admin endpoints.) Limits that would refuse everyone
/// are the config's own validation, for files and patches alike.
fn keeps_an_admin(config: &ServerConfig) -> Result<(), ApiError> {
    if config.roles.admin.permissions.contains(&Permission::Admin) {
        Ok(())
    } else {
        Err(ApiError::InvalidField {
            message: "roles.admin.permissions: must keep Admin, or no one could change the \
                      configuration again"
                .into(),
            param: "roles.admin.permissions",
        })
    }
}

/// RFC 7386: objects merge recursively, null deletes, anything else
/// replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(target_map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                target_map.remove(key);
            } else {
                merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_may_not_take_admin_from_the_admin_tier() {
        let mut config = ServerConfig::default();
        assert!(keeps_an_admin(&config).is_ok());
        config
            .roles
            .admin
            .permissions
            .retain(|p| *p != Permission::Admin);
        let err = keeps_an_admin(&config).unwrap_err();
        assert_eq!(err.body()["error"]["param"], "roles.admin.permissions");
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "d": [1], "e": 1});
        merge_patch(
            &mut doc,
            &json!({"a": {"b": 9, "c": null}, "d": [2, 3], "f": {"g": 1}}),
        );
        assert_eq!(
            doc,
            json!({"a": {"b": 9}, "d": [2, 3], "e": 1, "f": {"g": 1}})
        );
    }
}
