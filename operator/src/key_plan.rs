//! One ChatApiKey reconcile, decided: from what was observed (the model, its
//! key table, the consumer Secret, the CA bundle) to the writes to make, the
//! status to show and the Event to publish. Pure: the clock and the
//! randomness of a new plaintext are passed in, so every case is a unit
//! test; `key_controller` observes, calls [`plan`] and executes the writes
//! in order.
//!
//! Two rules beyond the lifecycle of `api_keys` (issue 19):
//! - Only Secrets this ChatApiKey created are written or deleted. A
//!   `spec.secretName` that names someone else's Secret, or the model's own
//!   key table, is a `SecretConflict`: nothing is minted and nothing is
//!   touched, because writing it would make the ChatApiKey its controlling
//!   owner and the garbage collector would delete it with the key. The
//!   model's table is written only when the model controls it.
//! - A key whose namespace leaves `auth.apiKeys.allowedNamespaces` is
//!   revoked at once: its record leaves the table first (that is what the
//!   server checks), then its plaintext Secret is deleted, so adding the
//!   namespace back mints a new key rather than reviving the old one.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use securechat_crds::conditions::{ConditionUpdate, set_condition};
use securechat_crds::files::api_keys::ApiKeyTable;
use securechat_crds::files::names;
use securechat_crds::v1alpha1::{
    ChatApiKey, ChatApiKeyStatus, DEFAULT_MAX_TIER, KeyPhase, MtlsMode, ROTATE_ANNOTATION,
    SecureChatModel, TlsMode,
};

use crate::api_keys::{self, Consumer, KeyStep, KeyView};
use crate::apply::controlled_by;
use crate::client_cert::{self, IssuedClientCertificate};
use crate::health::health_conditions;
use crate::labels::{self, Names};
use crate::reasons::api_key::KeyReason;
use crate::reasons::progress::Progress;
use crate::status::READY;
use crate::{Error, Result};

/// Label on consumer Secrets, naming their ChatApiKey.
pub const CONSUMER_LABEL: &str = "securechat.dev/api-key";
/// Stakater Reloader's annotation on a Secret: Deployments annotated
/// `reloader.stakater.com/search: "true"` roll when it changes. The
/// operator owns only the Secret, so it marks the Secret; the consumer
/// opts its Deployment in (see the chart README).
pub const RELOADER_MATCH_ANNOTATION: &str = "reloader.stakater.com/match";

/// Expired entries are swept at least this often (the second seed's
/// five-minute cleanup).
pub const SWEEP: Duration = Duration::from_secs(300);
/// A key that cannot be minted (no model, no table, not allowed, a
/// conflicting Secret) is looked at again this often; its model's changes
/// also wake it.
pub const BLOCKED_RETRY: Duration = Duration::from_secs(30);
/// After a write, the next step follows almost at once (one write per step).
const NEXT_STEP: Duration = Duration::from_millis(200);

/// What the API server holds for one ChatApiKey, read before deciding.
#[derive(Debug, Clone, Default)]
pub struct KeyObserved {
    /// `spec.modelRef`'s SecureChatModel.
    pub model: Option<SecureChatModel>,
    /// The model's `<model>-api-keys` Secret (whoever controls it).
    pub table: Option<Secret>,
    /// The Secret named by `spec.secretName` (whoever controls it).
    pub consumer: Option<Secret>,
    /// The model's CA bundle (`ca.crt` of `<model>-ca-bundle`).
    pub ca: Option<String>,
    /// The model's CA Secret (`<model>-ca`, whoever controls it): read
    /// only for keys with a client certificate, which it signs.
    pub ca_secret: Option<Secret>,
}

/// One write, in the order the plan lists them.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyWrite {
    /// Server-side apply of the consumer Secret (this key's own).
    Consumer(Secret),
    /// Delete the consumer Secret (this key's own; the writer checks again).
    DeleteConsumer { namespace: String, name: String },
    /// Replace the model's table with this content, under the observed
    /// resourceVersion: many keys share the table, and a concurrent write
    /// makes this one fail with 409 and retry, never lose an entry.
    Table(Secret),
}

/// What one reconcile of a ChatApiKey does.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPlan {
    pub writes: Vec<KeyWrite>,
    /// The status to show (written only when it differs from the stored).
    pub status: ChatApiKeyStatus,
    pub reason: KeyReason,
    /// A Warning Event's note, when this reconcile has news someone must
    /// act on (a conflict first seen, a revocation made).
    pub warning: Option<String>,
    /// A Normal Event's note: a rotation asked for by the
    /// securechat.dev/rotate annotation has begun
    /// (`reasons::api_key::ROTATE_REQUESTED`).
    pub rotate_requested: Option<String>,
    /// For the log: what the writes do.
    pub note: Option<&'static str>,
    pub requeue: Duration,
}

/// The namespace of the key's model: `modelRef.namespace`, else the key's.
pub fn model_namespace(key: &ChatApiKey) -> String {
    key.spec
        .model_ref
        .namespace
        .clone()
        .or_else(|| key.namespace())
        .unwrap_or_default()
}

/// The consumer Secret's name: `spec.secretName`, else the key's name.
pub fn consumer_secret_name(key: &ChatApiKey) -> String {
    key.spec
        .secret_name
        .clone()
        .unwrap_or_else(|| key.name_any())
}

/// Decides one reconcile. `fresh` makes a new plaintext for the key id when
/// a step needs one.
pub fn plan(
    key: &ChatApiKey,
    observed: &KeyObserved,
    now: DateTime<Utc>,
    fresh: impl FnOnce(&str) -> Result<String>,
    certify: impl FnOnce(&client_cert::Request<'_>) -> Result<client_cert::Signed>,
) -> Result<KeyPlan> {
    let uid = key.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let namespace = key
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let id = api_keys::key_id(&uid);
    let secret_name = consumer_secret_name(key);
    let mut status = key.status.clone().unwrap_or_default();
    status.key_id = Some(id.clone());
    status.secret_name = Some(secret_name.clone());

    let model_uid = observed.model.as_ref().and_then(|m| m.uid());
    let table = observed
        .table
        .as_ref()
        .filter(|t| controlled_by(&t.metadata, model_uid.as_deref()));
    let consumer_secret = observed
        .consumer
        .as_ref()
        .filter(|s| controlled_by(&s.metadata, Some(uid.as_str())));
    let records = table.map(read_table).transpose()?;
    let record = records.as_ref().and_then(|t| t.get(&id));

    let holds_key = record.is_some() || consumer_secret.is_some();
    let checks = Checks {
        namespace: &namespace,
        secret_name: &secret_name,
        consumer_is_ours: consumer_secret.is_some(),
        table,
        holds_key,
    };
    let (model, table_secret) = match gate(key, observed, &checks) {
        Gate::Open { model, table } => (model, table),
        Gate::Blocked(blocked) => {
            // Revocation: the record first (the server stops accepting the
            // key), then the plaintext.
            let mut writes = Vec::new();
            if blocked.revoke {
                if let (Some(secret), Some(records)) = (table, &records) {
                    writes.extend(without_record(secret, records, &id)?);
                }
                if consumer_secret.is_some() {
                    writes.push(KeyWrite::DeleteConsumer {
                        namespace: namespace.clone(),
                        name: secret_name.clone(),
                    });
                }
            }
            return Ok(blocked_plan(key, status, blocked, writes, now));
        }
    };
    let records = records.clone().unwrap_or_default();
    let has_api_key = key.spec.credential.has_api_key();
    // A certificate-only key holds no plaintext; its record still needs a
    // secret hash, that of a value no bearer can present (see
    // `client_cert::certificate_only_secret`), so the lifecycle below runs
    // unchanged on it.
    let consumer = if has_api_key {
        Consumer::from_data(consumer_secret.and_then(|s| s.data.as_ref()))
    } else {
        Consumer::default()
    };
    let lifecycle_consumer = if has_api_key {
        consumer.clone()
    } else {
        Consumer {
            current: Some(client_cert::certificate_only_secret(&id)),
            next: None,
        }
    };
    let identity = key
        .spec
        .credential
        .has_certificate()
        .then(|| client_cert::identity(key, model));
    let ca_set = match &identity {
        None => None,
        Some(spiffe_id) => {
            let ca_set = observed
                .ca_secret
                .as_ref()
                .filter(|s| controlled_by(&s.metadata, model_uid.as_deref()))
                .and_then(crate::desired::secrets::ca_set_from_secret);
            let model_ns = model_namespace(key);
            let model_name = &key.spec.model_ref.name;
            let blocked = if ca_set.is_none() {
                Some(Blocked {
                    reason: KeyReason::ModelNotReady,
                    message: format!(
                        "the model's CA Secret {model_ns}/{} does not exist yet (or is not the model's own); no client certificate is issued",
                        Names::ca_secret(model_name)
                    ),
                    revoke: false,
                })
            } else {
                records
                    .keys
                    .iter()
                    .find(|r| r.id != id && r.spiffe_id.as_deref() == Some(spiffe_id.as_str()))
                    .map(|other| Blocked {
                        reason: KeyReason::IdentityConflict,
                        message: format!(
                            "key {} ({}) in {model_ns}/{model_name}'s table is bound to {spiffe_id} already; no client certificate is issued (choose another clientCertificate.serviceAccountName)",
                            other.id, other.name
                        ),
                        revoke: false,
                    })
            };
            if let Some(blocked) = blocked {
                return Ok(blocked_plan(key, status, blocked, Vec::new(), now));
            }
            ca_set
        }
    };
    let existing_cert = consumer_secret.and_then(IssuedClientCertificate::from_secret);
    let rotate_value = key.annotations().get(ROTATE_ANNOTATION).cloned();
    let new_cert = match (&identity, &ca_set) {
        (Some(spiffe_id), Some(set)) => {
            let issuer = client_cert::issuer_digest(&set.active.cert_pem);
            let lifetime = client_cert::lifetime(key);
            let wanted = client_cert::Wanted {
                spiffe_id,
                issuer: &issuer,
                lifetime,
                request: rotate_value.as_deref(),
            };
            match client_cert::renewal(existing_cert.as_ref(), &wanted, now) {
                None => None,
                Some(reason) => {
                    let (not_after, renew_at) =
                        client_cert::times(now, lifetime, set.active_not_after);
                    let signed = certify(&client_cert::Request {
                        model: &key.spec.model_ref.name,
                        ca: &set.active,
                        spiffe_id,
                        now,
                        not_after,
                    })?;
                    let issued = IssuedClientCertificate {
                        pair: signed.pair,
                        spiffe_id: spiffe_id.clone(),
                        serial: signed.serial,
                        not_after,
                        renew_at,
                        issuer,
                        request: rotate_value.clone(),
                    };
                    Some((issued, reason))
                }
            }
        }
        _ => None,
    };
    // The certificate the Secret holds after this reconcile; none for an
    // ApiKey credential (a switch back drops it).
    let cert = new_cert
        .as_ref()
        .map(|(c, _)| c)
        .or(existing_cert.as_ref())
        .filter(|_| identity.is_some());
    // When the key was first minted: as recorded, else (a status write
    // lost, or a key minted before the field existed) when its record was
    // first written, else now if its plaintext exists already.
    let recorded_mint = status
        .first_minted_at
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0));
    let minted_at = recorded_mint
        .or_else(|| record.map(|r| r.created_at))
        .or_else(|| {
            (lifecycle_consumer.current.is_some() && (has_api_key || cert.is_some())).then_some(now)
        });
    let rotate_request = pending_rotate_request(key);
    // A certificate being issued is this reconcile's one write; the key's
    // own step follows in the next.
    let step = if new_cert.is_some() {
        KeyStep::Wait(None)
    } else {
        api_keys::next_key_step(
            &KeyView {
                key,
                id: &id,
                consumer: &lifecycle_consumer,
                record,
                now,
                minted_at,
                // A certificate-only key renews its certificate instead.
                rotate_requested: has_api_key && rotate_request.is_some(),
                spiffe_id: identity.as_deref(),
            },
            || fresh(&id),
        )?
    };
    let minted_at = match step {
        KeyStep::Mint { .. } => minted_at.or(Some(now)),
        _ => minted_at,
    };
    status.first_minted_at = minted_at.and_then(to_time);
    status.expires_at = api_keys::expires_at(key, minted_at).and_then(to_time);
    // A request is served by the rotation it starts, by one already under
    // way (its new secret was never handed out, so it is not the leaked
    // one), or by a first mint.
    let serves_request = if has_api_key {
        matches!(step, KeyStep::Mint { .. } | KeyStep::StageNext { .. }) || consumer.next.is_some()
    } else {
        // The certificate in the Secret was issued under this request.
        cert.is_some_and(|c| c.request.is_some() && c.request == rotate_request)
    };
    let rotate_requested = match rotate_request {
        Some(value) if serves_request => {
            status.handled_rotate_request = Some(value.clone());
            Some(format!(
                "{ROTATE_ANNOTATION}={value}: rotating key {id}; the previous secret works until the grace ends"
            ))
        }
        _ => None,
    };
    let endpoint = model.status.as_ref().and_then(|s| s.endpoint.as_deref());
    let consumer_write = |c: &Consumer| {
        KeyWrite::Consumer(consumer_secret_object(
            key,
            &secret_name,
            &id,
            c,
            endpoint,
            observed.ca.as_deref(),
            cert,
        ))
    };
    let (mut writes, note, mut requeue) = match &step {
        KeyStep::Mint { plaintext } => (
            vec![consumer_write(&Consumer {
                current: Some(plaintext.clone()),
                next: None,
            })],
            Some("minted an API key"),
            NEXT_STEP,
        ),
        KeyStep::StageNext { plaintext } => (
            vec![consumer_write(&Consumer {
                current: consumer.current.clone(),
                next: Some(plaintext.clone()),
            })],
            Some("staged the next API key"),
            NEXT_STEP,
        ),
        KeyStep::HandOver => (
            vec![consumer_write(&Consumer {
                current: consumer.next.clone(),
                next: None,
            })],
            Some("handed the rotated API key to callers"),
            NEXT_STEP,
        ),
        KeyStep::WriteRecord(record) => {
            let mut records = records;
            api_keys::upsert(&mut records, record.clone());
            let table = with_table(table_secret, &records)?;
            (vec![KeyWrite::Table(table)], None, NEXT_STEP)
        }
        KeyStep::RemoveRecord => {
            // Archived (id, tier, dates, last use) in the table's bounded
            // history, which /admin/keys/history lists, then removed.
            let mut records = records;
            records.archive_expired(&id, now);
            (
                vec![KeyWrite::Table(with_table(table_secret, &records)?)],
                Some("archived the expired API key and removed it from the table"),
                NEXT_STEP,
            )
        }
        KeyStep::Wait(at) => (
            Vec::new(),
            None,
            at.map_or(SWEEP, |at| {
                (at - now)
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .clamp(Duration::from_secs(1), SWEEP)
            }),
        ),
    };
    // Keep the consumer Secret's metadata (endpoint, CA) current too; the
    // writer skips it when nothing changed.
    if matches!(step, KeyStep::Wait(_) | KeyStep::WriteRecord(_))
        && (consumer.current.is_some() || cert.is_some())
    {
        writes.push(consumer_write(&consumer));
    }
    let note = match &new_cert {
        Some((_, reason)) => {
            requeue = NEXT_STEP;
            Some(match reason {
                client_cert::RenewReason::Missing => "issued a client certificate",
                _ => "renewed the client certificate",
            })
        }
        None => note,
    };
    if let Some(c) = cert {
        let renew_in = (c.renew_at - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1));
        requeue = requeue.min(renew_in);
    }
    status.client_certificate = cert.map(IssuedClientCertificate::status);

    let expired = api_keys::expires_at(key, minted_at).is_some_and(|e| e <= now);
    let phase = if expired {
        KeyPhase::Expired
    } else if lifecycle_consumer.current.is_none()
        || record.is_none()
        || (identity.is_some() && cert.is_none())
    {
        KeyPhase::Pending
    } else if key.spec.suspended {
        KeyPhase::Suspended
    } else if consumer.next.is_some()
        || record.is_some_and(|r| r.previous_secret_valid_until.is_some_and(|v| v > now))
    {
        KeyPhase::Rotating
    } else {
        KeyPhase::Active
    };
    status.phase = Some(phase);
    if let Some(r) = record {
        status.last_rotated_at = r.rotated_at.and_then(to_time);
        status.grace_ends_at = r
            .previous_secret_valid_until
            .filter(|v| *v > now)
            .and_then(to_time);
        status.next_rotation_at =
            key.spec.rotation.as_ref().and_then(|rot| {
                to_time(r.rotated_at.unwrap_or(r.created_at) + rot.period.as_chrono())
            });
    }
    let (reason, message) = match phase {
        KeyPhase::Active => (
            KeyReason::Active,
            match (has_api_key, cert) {
                (true, None) => format!("key {id} is in Secret {secret_name}"),
                (false, Some(c)) => format!(
                    "a client certificate for {} (serial {}, valid until {}) is in Secret {secret_name}",
                    c.spiffe_id,
                    c.serial,
                    c.not_after.to_rfc3339()
                ),
                (_, c) => format!(
                    "key {id} and a client certificate for {} (valid until {}), to be sent together, are in Secret {secret_name}",
                    c.map_or("", |c| c.spiffe_id.as_str()),
                    c.map_or(String::new(), |c| c.not_after.to_rfc3339())
                ),
            },
        ),
        KeyPhase::Rotating => (
            KeyReason::Rotating,
            format!("key {id} is rotating; the previous secret works until the grace ends"),
        ),
        KeyPhase::Suspended => (
            KeyReason::Suspended,
            "spec.suspended is true; requests with this key are refused".into(),
        ),
        KeyPhase::Expired => (
            KeyReason::Expired,
            "the key expired and was removed from the model's table".into(),
        ),
        KeyPhase::Pending => (KeyReason::Minting, "minting the key".into()),
    };
    Ok(KeyPlan {
        writes,
        status: with_condition(key, status, reason, &message, now),
        reason,
        warning: None,
        rotate_requested,
        note,
        requeue,
    })
}

/// The securechat.dev/rotate annotation's value, when it differs from the
/// one last acted on.
fn pending_rotate_request(key: &ChatApiKey) -> Option<String> {
    let value = key.annotations().get(ROTATE_ANNOTATION)?;
    let handled = key
        .status
        .as_ref()
        .and_then(|s| s.handled_rotate_request.as_ref());
    (handled != Some(value)).then(|| value.clone())
}

/// What `blocked` needs to know besides the key and what was observed.
struct Checks<'a> {
    namespace: &'a str,
    secret_name: &'a str,
    /// The Secret named by `spec.secretName` exists and this key controls it.
    consumer_is_ours: bool,
    /// The model's table, if it exists and the model controls it.
    table: Option<&'a Secret>,
    /// The table has this key's record or this key's Secret exists.
    holds_key: bool,
}

/// Whether the lifecycle may go on, with what it needs.
enum Gate<'a> {
    Open {
        model: &'a SecureChatModel,
        table: &'a Secret,
    },
    Blocked(Blocked),
}

/// Why the lifecycle stops before minting: the reason, its message, and
/// whether a key that exists must be taken away.
struct Blocked {
    reason: KeyReason,
    message: String,
    revoke: bool,
}

/// The reasons a key is not minted (or no longer is), in the order they
/// are checked.
fn gate<'a>(key: &ChatApiKey, observed: &'a KeyObserved, checks: &Checks<'a>) -> Gate<'a> {
    let model_ns = model_namespace(key);
    let model_name = &key.spec.model_ref.name;
    let (namespace, secret_name) = (checks.namespace, checks.secret_name);
    let stop = |reason, message| {
        Gate::Blocked(Blocked {
            reason,
            message,
            revoke: false,
        })
    };
    let Some(model) = &observed.model else {
        let message = format!("SecureChatModel {model_ns}/{model_name} does not exist");
        return stop(KeyReason::ModelNotFound, message);
    };
    if !api_keys::namespace_allowed(model, namespace) {
        let revoked = revoked_message(namespace, &model_ns, model_name);
        let was_minted = checks.holds_key
            || key.status.as_ref().is_some_and(|s| {
                s.phase.is_some_and(|p| p != KeyPhase::Pending)
                    || s.conditions
                        .iter()
                        .any(|c| c.type_ == READY && c.message == revoked)
            });
        let message = if was_minted {
            revoked
        } else {
            format!(
                "namespace {namespace} is not in {model_ns}/{model_name}'s auth.apiKeys.allowedNamespaces; no key was minted"
            )
        };
        return Gate::Blocked(Blocked {
            reason: KeyReason::NamespaceNotAllowed,
            message,
            revoke: true,
        });
    }
    let max_tier = model.spec.auth.api_keys.max_tier(&model_ns, namespace);
    if key.spec.tier > max_tier {
        // One message whether or not a key existed, so that the condition
        // does not change once the revocation is done.
        let message = format!(
            "spec.tier {} is above {max_tier}, the highest tier {model_ns}/{model_name} grants namespace {namespace} (auth.apiKeys.maxTiers; default {DEFAULT_MAX_TIER}); no key is issued, and one issued before is revoked. Lower spec.tier, or ask the model's owner to raise maxTiers[{namespace}]",
            key.spec.tier
        );
        return Gate::Blocked(Blocked {
            reason: KeyReason::TierNotAllowed,
            message,
            revoke: true,
        });
    }
    if key.spec.credential.has_certificate()
        && let Some(why) = certificate_unavailable(model)
    {
        let message = format!(
            "spec.credential {:?} asks for a client certificate, but {model_ns}/{model_name} {why}; nothing is issued",
            key.spec.credential
        );
        return stop(KeyReason::ClientCertificateUnavailable, message);
    }
    let table_name = Names::api_keys(model_name);
    let is_table = namespace == model_ns && secret_name == table_name;
    if is_table || (observed.consumer.is_some() && !checks.consumer_is_ours) {
        let whose = if is_table {
            "is the model's API-key table"
        } else {
            "exists and was not created by this ChatApiKey"
        };
        let message = format!(
            "Secret {namespace}/{secret_name} {whose}; it is left untouched and no key is minted (choose another spec.secretName)"
        );
        return stop(KeyReason::SecretConflict, message);
    }
    match (checks.table, &observed.table) {
        (Some(table), _) => Gate::Open { model, table },
        (None, None) => stop(
            KeyReason::ModelNotReady,
            format!("the model's key table {model_ns}/{table_name} does not exist yet"),
        ),
        (None, Some(_)) => stop(
            KeyReason::ModelNotReady,
            format!(
                "Secret {model_ns}/{table_name} is not the model's key table (the model does not control it); no key is minted"
            ),
        ),
    }
}

/// Why the model cannot honour a client certificate from its operator,
/// if it cannot.
fn certificate_unavailable(model: &SecureChatModel) -> Option<&'static str> {
    let mtls = &model.spec.auth.mtls;
    if mtls.mode == MtlsMode::Disabled {
        Some(
            "has auth.mtls.mode Disabled: its server asks for no client certificate (set Optional or Required)",
        )
    } else if mtls.trust_bundle.is_some() {
        Some(
            "trusts another bundle (auth.mtls.trustBundle), which does not hold the model's CA that would sign it",
        )
    } else if model.spec.tls.mode == TlsMode::ExistingSecret {
        Some(
            "serves its own certificate (tls.mode ExistingSecret): the operator holds no CA to sign with",
        )
    } else {
        None
    }
}

/// The status message of a key revoked because its namespace left the
/// model's list; also how a later reconcile knows it was revoked.
fn revoked_message(namespace: &str, model_ns: &str, model_name: &str) -> String {
    format!(
        "revoked: namespace {namespace} is no longer in {model_ns}/{model_name}'s auth.apiKeys.allowedNamespaces; the key left the model's table and its plaintext was deleted (adding the namespace back mints a new key)"
    )
}

/// The plan of a key that stops before minting: `writes` (a revocation,
/// or none), and a Warning Event when there is news someone must act on,
/// once: a conflict when first seen, a revocation when made.
fn blocked_plan(
    key: &ChatApiKey,
    mut status: ChatApiKeyStatus,
    blocked: Blocked,
    writes: Vec<KeyWrite>,
    now: DateTime<Utc>,
) -> KeyPlan {
    let news = (blocked.reason.is_warning() && ready_reason(key) != Some(blocked.reason.as_str()))
        || !writes.is_empty();
    status.phase = Some(KeyPhase::Pending);
    KeyPlan {
        note: (!writes.is_empty()).then_some("revoked the API key"),
        writes,
        status: with_condition(key, status, blocked.reason, &blocked.message, now),
        warning: news.then(|| blocked.message.clone()),
        rotate_requested: None,
        reason: blocked.reason,
        requeue: BLOCKED_RETRY,
    }
}

/// The table write that takes the key's record out, if it is in.
fn without_record(secret: &Secret, records: &ApiKeyTable, id: &str) -> Result<Option<KeyWrite>> {
    if records.get(id).is_none() {
        return Ok(None);
    }
    let mut records = records.clone();
    records.keys.retain(|k| k.id != id);
    Ok(Some(KeyWrite::Table(with_table(secret, &records)?)))
}

/// The reason of the stored Ready condition.
fn ready_reason(key: &ChatApiKey) -> Option<&str> {
    key.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.reason.as_str())
}

fn with_condition(
    key: &ChatApiKey,
    mut status: ChatApiKeyStatus,
    reason: KeyReason,
    message: &str,
    now: DateTime<Utc>,
) -> ChatApiKeyStatus {
    status.observed_generation = key.metadata.generation;
    let now = Timestamp::from_second(now.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH);
    set_condition(
        &mut status.conditions,
        ConditionUpdate::new(READY, reason.ready(), reason.as_str(), message),
        key.metadata.generation,
        now,
    );
    // kstatus's Reconciling and Stalled, from Ready's reason.
    let classify = |r: &str| KeyReason::parse(r).map_or(Progress::Converging, KeyReason::progress);
    for update in health_conditions(&status.conditions, classify) {
        set_condition(&mut status.conditions, update, key.metadata.generation, now);
    }
    status
}

/// The API-key table in the model's Secret.
pub fn read_table(secret: &Secret) -> Result<ApiKeyTable> {
    match secret.data.as_ref().and_then(|d| d.get(names::API_KEYS)) {
        None => Ok(ApiKeyTable::default()),
        Some(raw) => serde_json::from_slice(&raw.0).map_err(|e| Error::Render {
            what: "API-key table",
            message: format!("{} is unreadable: {e}", secret.name_any()),
        }),
    }
}

/// The table Secret with `table` as its content, validated; everything else
/// (resourceVersion included) as observed.
pub fn with_table(secret: &Secret, table: &ApiKeyTable) -> Result<Secret> {
    let render = |message: String| Error::Render {
        what: "API-key table",
        message,
    };
    table.validate().map_err(|e| render(e.to_string()))?;
    let json = serde_json::to_string_pretty(table).map_err(|e| render(e.to_string()))?;
    let mut secret = secret.clone();
    secret
        .data
        .get_or_insert_with(Default::default)
        .insert(names::API_KEYS.into(), ByteString(json.into_bytes()));
    Ok(secret)
}

fn consumer_secret_object(
    key: &ChatApiKey,
    name: &str,
    id: &str,
    consumer: &Consumer,
    endpoint: Option<&str>,
    ca: Option<&str>,
    cert: Option<&IssuedClientCertificate>,
) -> Secret {
    let mut data = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
    };
    if let Some(current) = &consumer.current {
        put(api_keys::API_KEY, current);
    }
    if let Some(next) = &consumer.next {
        put(api_keys::NEXT_API_KEY, next);
    }
    put(api_keys::KEY_ID, id);
    if let Some(endpoint) = endpoint {
        put("endpoint", endpoint);
    }
    if let Some(ca) = ca {
        put(names::CA_CERT, ca);
    }
    // Reloader rolls the consumer's Deployments that opted in when the key
    // rotates, unless the key opts out.
    let mut annotations = BTreeMap::new();
    if key.spec.reloader != Some(false) {
        annotations.insert(RELOADER_MATCH_ANNOTATION.to_string(), "true".to_string());
    }
    if let Some(cert) = cert {
        cert.write_into(&mut data, &mut annotations);
    }
    let annotations = (!annotations.is_empty()).then_some(annotations);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: key.namespace(),
            annotations,
            labels: Some(
                [
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        labels::MANAGED_BY.to_string(),
                    ),
                    (CONSUMER_LABEL.to_string(), key.name_any()),
                ]
                .into(),
            ),
            owner_references: key.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

fn to_time(t: DateTime<Utc>) -> Option<Time> {
    Timestamp::from_second(t.timestamp()).ok().map(Time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::test_support::model;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use securechat_crds::files::api_keys::{SecretHash, format_key};
    use securechat_crds::v1alpha1::{ChatApiKeySpec, Tier};
    use serde_json::json;

    const KEY_UID: &str = "key-uid";

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    /// A ChatApiKey `apps/frontend` for the model `team/chat`.
    fn key(spec: serde_json::Value) -> ChatApiKey {
        let mut spec = spec;
        spec["modelRef"] = json!({"name": "chat", "namespace": "team"});
        let spec: ChatApiKeySpec = serde_json::from_value(spec).unwrap();
        let mut k = ChatApiKey::new("frontend", spec);
        k.metadata.namespace = Some("apps".into());
        k.metadata.uid = Some(KEY_UID.into());
        k
    }

    fn chat(allowed: &[&str]) -> SecureChatModel {
        model(
            "chat",
            json!({"auth": {"apiKeys": {"allowedNamespaces": allowed}}}),
        )
    }

    fn owned(name: &str, namespace: &str, owner_uid: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            resource_version: Some("7".into()),
            owner_references: owner_uid.map(|uid| {
                vec![OwnerReference {
                    uid: uid.into(),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }
    }

    fn table_secret(table: &ApiKeyTable, owner_uid: Option<&str>) -> Secret {
        let secret = Secret {
            metadata: owned("chat-api-keys", "team", owner_uid),
            ..Default::default()
        };
        with_table(&secret, table).unwrap()
    }

    fn no_plaintext(_: &str) -> Result<String> {
        unreachable!("this case mints nothing")
    }

    fn no_certificate(_: &client_cert::Request<'_>) -> Result<client_cert::Signed> {
        unreachable!("this case issues no certificate")
    }

    /// The API server, as far as one key sees it: plans are executed on it
    /// as the key controller does.
    struct Cluster {
        key: ChatApiKey,
        observed: KeyObserved,
        minted: usize,
        certified: usize,
    }

    impl Cluster {
        fn new(key: ChatApiKey, model: SecureChatModel) -> Self {
            let table = table_secret(&ApiKeyTable::default(), model.metadata.uid.as_deref());
            Self {
                key,
                observed: KeyObserved {
                    model: Some(model),
                    table: Some(table),
                    consumer: None,
                    ca: Some("CA".into()),
                    ca_secret: None,
                },
                minted: 0,
                certified: 0,
            }
        }

        fn reconcile(&mut self, now: DateTime<Utc>) -> KeyPlan {
            let minted = &mut self.minted;
            let certified = &mut self.certified;
            let plan = plan(
                &self.key,
                &self.observed,
                now,
                |id| {
                    *minted += 1;
                    Ok(format_key(id, &format!("{minted:0>43}")))
                },
                |request| {
                    *certified += 1;
                    Ok(client_cert::Signed {
                        pair: crate::pki::CertifiedKey {
                            cert_pem: format!("cert {certified} for {}", request.spiffe_id),
                            key_pem: format!("key {certified}"),
                        },
                        serial: format!("{certified:02x}"),
                    })
                },
            )
            .unwrap();
            for write in &plan.writes {
                match write {
                    KeyWrite::Consumer(secret) => self.observed.consumer = Some(secret.clone()),
                    KeyWrite::DeleteConsumer { .. } => self.observed.consumer = None,
                    KeyWrite::Table(secret) => self.observed.table = Some(secret.clone()),
                }
            }
            self.key.status = Some(plan.status.clone());
            plan
        }

        /// Reconciles until nothing is left to write.
        fn settle(&mut self, now: DateTime<Utc>) -> KeyPlan {
            for _ in 0..10 {
                let plan = self.reconcile(now);
                if plan
                    .writes
                    .iter()
                    .all(|w| matches!(w, KeyWrite::Consumer(_)))
                    && plan.note.is_none()
                {
                    return plan;
                }
            }
            panic!("no steady state after 10 reconciles");
        }

        fn table(&self) -> ApiKeyTable {
            read_table(self.observed.table.as_ref().unwrap()).unwrap()
        }

        fn plaintext(&self) -> Option<String> {
            let data = self.observed.consumer.as_ref()?.data.as_ref();
            Consumer::from_data(data).current
        }
    }

    #[test]
    fn an_allowed_key_is_minted_then_recorded_then_active() {
        let mut cluster = Cluster::new(key(json!({})), chat(&["apps"]));
        let plan = cluster.settle(t(0));
        assert_eq!(plan.reason, KeyReason::Active);
        assert_eq!(plan.status.phase, Some(KeyPhase::Active));
        let plaintext = cluster
            .plaintext()
            .expect("plaintext in the consumer Secret");
        let id = api_keys::key_id(KEY_UID);
        let record = cluster.table().get(&id).cloned().expect("record");
        assert_eq!(record.secret_hash, SecretHash::of_key(&plaintext));
        let consumer = cluster.observed.consumer.as_ref().unwrap();
        assert!(controlled_by(&consumer.metadata, Some(KEY_UID)));
        assert_eq!(cluster.minted, 1);
        assert_eq!(plan.warning, None);
    }

    /// Issue 26: each new value of securechat.dev/rotate rotates the
    /// secret once (same id, overlap), with a Normal Event; the value is
    /// recorded so the same value never rotates twice.
    #[test]
    fn the_rotate_annotation_rotates_once_per_value() {
        let mut cluster = Cluster::new(key(json!({})), chat(&["apps"]));
        cluster.settle(t(0));
        let id = api_keys::key_id(KEY_UID);
        let first = cluster.plaintext().unwrap();

        let ask = |cluster: &mut Cluster, value: &str| {
            cluster
                .key
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(ROTATE_ANNOTATION.into(), value.into());
        };
        ask(&mut cluster, "2026-12-06T10:00:00Z");
        let plan = cluster.reconcile(t(10));
        let note = plan.rotate_requested.expect("a Normal Event");
        assert!(note.contains(&id), "{note}");
        assert_eq!(
            plan.status.handled_rotate_request.as_deref(),
            Some("2026-12-06T10:00:00Z")
        );
        // The table accepts both, callers get the new one after the
        // propagation time, the old one works until the grace ends.
        cluster.settle(t(11));
        let record = cluster.table().get(&id).cloned().unwrap();
        assert_eq!(record.accepted_hashes(t(12)).count(), 2);
        let plan = cluster.settle(t(200));
        let second = cluster.plaintext().unwrap();
        assert_ne!(second, first);
        assert!(second.starts_with(&format!("sk-sc-{id}-")), "same key id");
        assert_eq!(plan.rotate_requested, None);
        let grace_end = record.previous_secret_valid_until.unwrap();
        let old = SecretHash::of_key(&first);
        assert!(
            record
                .accepted_hashes(grace_end - chrono::Duration::seconds(1))
                .any(|h| *h == old)
        );
        assert!(!record.accepted_hashes(grace_end).any(|h| *h == old));

        // The same value again: nothing happens.
        let plan = cluster.settle(t(4000));
        assert_eq!(plan.rotate_requested, None);
        assert_eq!(cluster.plaintext().unwrap(), second);
        assert_eq!(cluster.minted, 2);
        // A new value: one more rotation.
        ask(&mut cluster, "again");
        assert!(cluster.reconcile(t(4010)).rotate_requested.is_some());
        cluster.settle(t(4011));
        cluster.settle(t(4200));
        assert_eq!(cluster.minted, 3);
        assert_ne!(cluster.plaintext().unwrap(), second);
    }

    /// Issue 26: expiresAfter counts from the first mint, not from the
    /// ChatApiKey's creation: a key Pending for two hours (no model yet)
    /// still gets its whole lifetime.
    #[test]
    fn expires_after_counts_from_the_first_mint() {
        let mut cluster = Cluster::new(key(json!({"expiresAfter": "1h"})), chat(&["apps"]));
        cluster.key.metadata.creation_timestamp = to_time(t(0));
        let model = cluster.observed.model.take();
        let plan = cluster.reconcile(t(0));
        assert_eq!(plan.reason, KeyReason::ModelNotFound);
        assert_eq!(plan.status.expires_at, None);
        assert_eq!(plan.status.first_minted_at, None);

        cluster.observed.model = model;
        let plan = cluster.settle(t(7200));
        assert_eq!(plan.reason, KeyReason::Active);
        assert_eq!(plan.status.first_minted_at, to_time(t(7200)));
        assert_eq!(plan.status.expires_at, to_time(t(10800)));
        let id = api_keys::key_id(KEY_UID);
        assert_eq!(cluster.table().get(&id).unwrap().expires_at, Some(t(10800)));
        // It expires an hour after the mint, and its entry moves to the
        // table's history.
        assert_eq!(cluster.settle(t(10799)).reason, KeyReason::Active);
        assert_eq!(cluster.settle(t(10800)).reason, KeyReason::Expired);
        let table = cluster.table();
        assert!(table.get(&id).is_none());
        let archived = &table.history[0];
        assert_eq!(
            (archived.id.as_str(), archived.name.as_str()),
            (id.as_str(), "apps/frontend")
        );
        assert_eq!(
            (archived.created_at, archived.expired_at),
            (t(7200), t(10800))
        );
    }

    /// Consumer Secrets carry Reloader's match annotation unless the key
    /// opts out.
    #[test]
    fn consumer_secrets_are_marked_for_reloader_unless_the_key_opts_out() {
        let annotation = |spec: serde_json::Value| {
            let mut cluster = Cluster::new(key(spec), chat(&["apps"]));
            cluster.settle(t(0));
            let consumer = cluster.observed.consumer.clone().unwrap();
            consumer
                .metadata
                .annotations
                .unwrap_or_default()
                .get(RELOADER_MATCH_ANNOTATION)
                .cloned()
        };
        assert_eq!(annotation(json!({})).as_deref(), Some("true"));
        assert_eq!(
            annotation(json!({"reloader": true})).as_deref(),
            Some("true")
        );
        assert_eq!(annotation(json!({"reloader": false})), None);
    }

    /// Issue 19: removing the namespace from the model's list takes the
    /// key out of the table and deletes its plaintext at once, and the
    /// status keeps saying it was revoked, not that none was minted.
    #[test]
    fn a_namespace_removed_from_the_list_revokes_its_key_at_once() {
        let mut cluster = Cluster::new(key(json!({})), chat(&["apps"]));
        cluster.settle(t(0));
        let id = api_keys::key_id(KEY_UID);
        cluster.observed.model = Some(chat(&["other"]));

        let plan = cluster.reconcile(t(10));
        assert_eq!(plan.writes.len(), 2, "{:?}", plan.writes);
        assert!(matches!(plan.writes[0], KeyWrite::Table(_)), "record first");
        assert_eq!(
            plan.writes[1],
            KeyWrite::DeleteConsumer {
                namespace: "apps".into(),
                name: "frontend".into()
            }
        );
        assert!(cluster.table().get(&id).is_none());
        assert!(cluster.observed.consumer.is_none());
        assert_eq!(plan.reason, KeyReason::NamespaceNotAllowed);
        assert!(!plan.reason.ready());
        let message = plan.warning.clone().expect("a Warning Event");
        assert!(message.starts_with("revoked: namespace apps"), "{message}");

        // Later reconciles write nothing and still say revoked.
        let again = cluster.reconcile(t(20));
        assert!(again.writes.is_empty());
        assert_eq!(again.warning, None);
        let condition = &again.status.conditions[0];
        assert_eq!(condition.reason, "NamespaceNotAllowed");
        assert_eq!(condition.message, message);

        // Allowed again: a new plaintext, not the revoked one.
        cluster.observed.model = Some(chat(&["apps"]));
        assert_eq!(cluster.settle(t(30)).reason, KeyReason::Active);
        assert_eq!(cluster.minted, 2);
    }

    /// An allowed namespace may mint up to Developer unless the model's
    /// owner names a higher tier for it; asking for more mints nothing, and
    /// lowering the limit under a minted key revokes it.
    #[test]
    fn a_tier_above_the_namespace_maximum_is_refused_then_revoked() {
        let admin = || key(json!({"tier": "Admin"}));
        let mut cluster = Cluster::new(admin(), chat(&["apps"]));
        let plan = cluster.reconcile(t(0));
        assert!(plan.writes.is_empty(), "{:?}", plan.writes);
        assert_eq!(plan.reason, KeyReason::TierNotAllowed);
        assert_eq!(plan.status.phase, Some(KeyPhase::Pending));
        let message = plan.warning.clone().expect("a Warning Event");
        assert!(
            message.starts_with("spec.tier Admin is above Developer, the highest tier team/chat grants namespace apps"),
            "{message}"
        );
        assert_eq!(cluster.minted, 0);
        // Same news twice is one Event.
        assert_eq!(cluster.reconcile(t(1)).warning, None);

        // The owner grants Admin: minted.
        let granted = |tier: &str| {
            model(
                "chat",
                json!({"auth": {"apiKeys": {"allowedNamespaces": ["apps"], "maxTiers": {"apps": tier}}}}),
            )
        };
        cluster.observed.model = Some(granted("Admin"));
        assert_eq!(cluster.settle(t(2)).reason, KeyReason::Active);
        let id = api_keys::key_id(KEY_UID);
        assert!(cluster.table().get(&id).is_some());

        // Lowered again: the record leaves the table, the plaintext goes.
        cluster.observed.model = Some(granted("Developer"));
        let plan = cluster.reconcile(t(3));
        assert!(
            matches!(plan.writes[0], KeyWrite::Table(_)),
            "{:?}",
            plan.writes
        );
        assert!(cluster.table().get(&id).is_none());
        assert!(cluster.observed.consumer.is_none());
        assert_eq!(plan.reason, KeyReason::TierNotAllowed);
        // A Developer key in the same namespace is fine.
        let mut developer = Cluster::new(key(json!({"tier": "Developer"})), chat(&["apps"]));
        assert_eq!(developer.settle(t(0)).reason, KeyReason::Active);
    }

    #[test]
    fn a_namespace_never_allowed_says_no_key_was_minted() {
        let mut cluster = Cluster::new(key(json!({})), chat(&[]));
        let plan = cluster.reconcile(t(0));
        assert!(plan.writes.is_empty());
        assert_eq!(plan.reason, KeyReason::NamespaceNotAllowed);
        assert_eq!(plan.status.phase, Some(KeyPhase::Pending));
        assert!(
            plan.status.conditions[0]
                .message
                .ends_with("no key was minted")
        );
        assert_eq!(plan.warning, None);
    }

    /// Issue 19: a `secretName` naming someone else's Secret is neither
    /// written nor adopted; the key reports the conflict once as an Event.
    #[test]
    fn someone_elses_secret_is_a_conflict_and_left_untouched() {
        let mut cluster = Cluster::new(key(json!({"secretName": "victim"})), chat(&["apps"]));
        let victim = Secret {
            metadata: owned("victim", "apps", None),
            data: Some([("password".to_string(), ByteString(b"hunter2".to_vec()))].into()),
            ..Default::default()
        };
        cluster.observed.consumer = Some(victim.clone());
        let plan = cluster.reconcile(t(0));
        assert!(plan.writes.is_empty(), "{:?}", plan.writes);
        assert_eq!(plan.reason, KeyReason::SecretConflict);
        assert_eq!(plan.status.phase, Some(KeyPhase::Pending));
        let note = plan.warning.expect("a Warning Event");
        assert!(note.contains("Secret apps/victim"), "{note}");
        assert_eq!(cluster.observed.consumer, Some(victim));
        // Another owner's Secret is as foreign as one without an owner.
        cluster.observed.consumer.as_mut().unwrap().metadata = owned("victim", "apps", Some("x"));
        let again = cluster.reconcile(t(1));
        assert!(again.writes.is_empty());
        assert_eq!(again.warning, None, "the Event is published once");
        assert!(cluster.table().keys.is_empty());
    }

    /// Issue 19: a key in the model's namespace whose `secretName` is the
    /// model's key table never touches it, whether or not it exists yet.
    #[test]
    fn a_key_named_after_the_models_table_never_touches_it() {
        let mut k = key(json!({"secretName": "chat-api-keys"}));
        k.metadata.namespace = Some("team".into());
        let mut cluster = Cluster::new(k, chat(&[]));
        let table = cluster.observed.table.clone();
        cluster.observed.consumer = table.clone();
        let plan = cluster.reconcile(t(0));
        assert!(plan.writes.is_empty(), "{:?}", plan.writes);
        assert_eq!(plan.reason, KeyReason::SecretConflict);
        assert_eq!(cluster.observed.table, table);

        cluster.observed.table = None;
        cluster.observed.consumer = None;
        let plan = plan_of(&cluster.key, &cluster.observed);
        assert!(plan.writes.is_empty());
        assert_eq!(plan.reason, KeyReason::SecretConflict);
    }

    /// The model `team/chat` with mTLS Required, allowing namespace apps
    /// (up to Developer), and its CA Secret (controlled by the model,
    /// valid until `ca_not_after`).
    fn mtls_cluster(spec: serde_json::Value, ca_not_after: DateTime<Utc>) -> Cluster {
        let chat = model(
            "chat",
            json!({"auth": {"apiKeys": {"allowedNamespaces": ["apps"]}, "mtls": {"mode": "Required", "trustDomain": "example.org"}}}),
        );
        let model_uid = chat.metadata.uid.clone();
        let ca_secret = |cert: &str| {
            let mut meta = owned("chat-ca", "team", model_uid.as_deref());
            meta.annotations = Some(
                [(
                    crate::desired::secrets::CA_NOT_AFTER_ANNOTATION.to_string(),
                    ca_not_after.to_rfc3339(),
                )]
                .into(),
            );
            Secret {
                metadata: meta,
                data: Some(
                    [
                        (
                            names::CA_CERT.to_string(),
                            ByteString(cert.as_bytes().to_vec()),
                        ),
                        (
                            crate::desired::secrets::CA_KEY.to_string(),
                            ByteString(b"ca key".to_vec()),
                        ),
                    ]
                    .into(),
                ),
                ..Default::default()
            }
        };
        let mut cluster = Cluster::new(key(spec), chat);
        cluster.observed.ca_secret = Some(ca_secret("CA one"));
        cluster
    }

    const WEB_ID: &str = "spiffe://example.org/ns/apps/sa/web";

    fn held_certificate(cluster: &Cluster) -> Option<IssuedClientCertificate> {
        IssuedClientCertificate::from_secret(cluster.observed.consumer.as_ref()?)
    }

    /// Issue 25: a ClientCertificate key gets a certificate (first, into
    /// the consumer Secret) and then a record bound to its SPIFFE ID whose
    /// hash no bearer can match; no API key anywhere; renewed at two
    /// thirds of its life with the previous one still valid.
    #[test]
    fn a_certificate_key_is_issued_bound_and_renewed_without_an_api_key() {
        let mut cluster = mtls_cluster(
            json!({"credential": "ClientCertificate", "clientCertificate": {"serviceAccountName": "web", "lifetime": "3m"}}),
            t(100_000),
        );
        let first = cluster.reconcile(t(0));
        assert_eq!(first.note, Some("issued a client certificate"));
        assert_eq!(first.status.phase, Some(KeyPhase::Pending));
        let plan = cluster.settle(t(1));
        assert_eq!(plan.reason, KeyReason::Active, "{:?}", plan.status);
        assert_eq!(cluster.minted, 0, "no API key");
        assert_eq!(cluster.certified, 1);
        let consumer = cluster.observed.consumer.clone().unwrap();
        let data = consumer.data.unwrap();
        assert!(!data.contains_key(api_keys::API_KEY));
        assert!(data.contains_key(names::TLS_CERT) && data.contains_key(names::TLS_KEY));
        assert!(data.contains_key(names::CA_CERT));
        let held = held_certificate(&cluster).unwrap();
        assert_eq!(held.spiffe_id, WEB_ID);
        assert_eq!((held.not_after, held.renew_at), (t(180), t(120)));
        let status = plan.status.client_certificate.clone().unwrap();
        assert_eq!(
            (status.spiffe_id.as_str(), status.serial.as_str()),
            (WEB_ID, "01")
        );
        let id = api_keys::key_id(KEY_UID);
        let record = cluster.table().get(&id).cloned().unwrap();
        assert_eq!(record.spiffe_id.as_deref(), Some(WEB_ID));
        assert_eq!(record.tier, Tier::ReadOnly);
        assert_eq!(
            record.secret_hash,
            SecretHash::of_key(&client_cert::certificate_only_secret(&id))
        );
        // Nothing until two thirds of the life; the plan wakes then.
        assert!(cluster.settle(t(60)).requeue <= std::time::Duration::from_secs(60));
        assert_eq!(cluster.certified, 1);
        let renewed = cluster.reconcile(t(120));
        assert_eq!(renewed.note, Some("renewed the client certificate"));
        let next = held_certificate(&cluster).unwrap();
        assert_eq!(next.serial, "02");
        assert!(held.not_after > t(120), "the previous one is still valid");
        // The record is not touched by a renewal.
        cluster.settle(t(121));
        assert_eq!(cluster.table().get(&id), Some(&record));
    }

    /// Both: an API key and a certificate in one Secret, the key's record
    /// bound to the certificate's SPIFFE ID; a CA change re-issues.
    #[test]
    fn both_credentials_share_one_record_and_a_ca_change_reissues() {
        let mut cluster = mtls_cluster(
            json!({"credential": "Both", "clientCertificate": {"serviceAccountName": "web"}}),
            t(50_000),
        );
        assert_eq!(cluster.settle(t(0)).reason, KeyReason::Active);
        assert_eq!((cluster.minted, cluster.certified), (1, 1));
        let id = api_keys::key_id(KEY_UID);
        let record = cluster.table().get(&id).cloned().unwrap();
        assert_eq!(record.spiffe_id.as_deref(), Some(WEB_ID));
        assert_eq!(
            record.secret_hash,
            SecretHash::of_key(&cluster.plaintext().unwrap())
        );
        // The lifetime (24 h by default) is capped by the CA's.
        assert_eq!(held_certificate(&cluster).unwrap().not_after, t(50_000));
        let data = cluster
            .observed
            .consumer
            .as_ref()
            .unwrap()
            .data
            .clone()
            .unwrap();
        let ca_cert = names::CA_CERT.to_string();
        let mut rotated = cluster.observed.ca_secret.clone().unwrap();
        rotated
            .data
            .as_mut()
            .unwrap()
            .insert(ca_cert, ByteString(b"CA two".to_vec()));
        cluster.observed.ca_secret = Some(rotated);
        assert_eq!(
            cluster.reconcile(t(10)).note,
            Some("renewed the client certificate")
        );
        assert_eq!(cluster.certified, 2);
        // The key is untouched.
        let after = cluster
            .observed
            .consumer
            .as_ref()
            .unwrap()
            .data
            .clone()
            .unwrap();
        assert_eq!(after.get(api_keys::API_KEY), data.get(api_keys::API_KEY));
    }

    /// A certificate the model's server would never ask for, or could not
    /// trust, is refused with a condition; so is an identity another key
    /// holds; maxTiers applies as to keys.
    #[test]
    fn certificates_the_model_cannot_honour_are_refused_with_a_reason() {
        let spec = json!({"credential": "ClientCertificate", "clientCertificate": {"serviceAccountName": "web"}});
        let mut cluster = mtls_cluster(spec.clone(), t(100_000));
        cluster.observed.model = Some(chat(&["apps"]));
        let plan = cluster.reconcile(t(0));
        assert_eq!(plan.reason, KeyReason::ClientCertificateUnavailable);
        let warning = plan.warning.expect("a Warning Event");
        assert!(warning.contains("auth.mtls.mode Disabled"), "{warning}");
        assert!(plan.writes.is_empty());

        let mut cluster = mtls_cluster(spec.clone(), t(100_000));
        cluster.observed.ca_secret = None;
        assert_eq!(cluster.reconcile(t(0)).reason, KeyReason::ModelNotReady);

        let mut cluster = mtls_cluster(spec.clone(), t(100_000));
        let mut table = cluster.table();
        table
            .keys
            .push(securechat_crds::files::api_keys::ApiKeyRecord {
                id: "other".into(),
                name: "apps/other".into(),
                tier: Tier::ReadOnly,
                state: securechat_crds::files::api_keys::ApiKeyState::Active,
                secret_hash: SecretHash::of_key("x"),
                previous_secret_hash: None,
                previous_secret_valid_until: None,
                created_at: t(0),
                expires_at: None,
                rotated_at: None,
                last_used_at: None,
                spiffe_id: Some(WEB_ID.into()),
            });
        cluster.observed.table =
            Some(with_table(cluster.observed.table.as_ref().unwrap(), &table).unwrap());
        let plan = cluster.reconcile(t(0));
        assert_eq!(plan.reason, KeyReason::IdentityConflict);
        assert!(plan.writes.is_empty());

        let mut admin = spec;
        admin["tier"] = json!("Admin");
        let mut cluster = mtls_cluster(admin, t(100_000));
        let plan = cluster.reconcile(t(0));
        assert_eq!(plan.reason, KeyReason::TierNotAllowed);
        assert_eq!(cluster.certified, 0);
    }

    fn plan_of(key: &ChatApiKey, observed: &KeyObserved) -> KeyPlan {
        plan(key, observed, t(0), no_plaintext, no_certificate).unwrap()
    }

    #[test]
    fn a_table_the_model_does_not_control_is_not_written() {
        let mut cluster = Cluster::new(key(json!({})), chat(&["apps"]));
        cluster.observed.table = Some(table_secret(&ApiKeyTable::default(), Some("someone")));
        let plan = plan_of(&cluster.key, &cluster.observed);
        assert!(plan.writes.is_empty());
        assert_eq!(plan.reason, KeyReason::ModelNotReady);
        cluster.observed.model = None;
        assert_eq!(
            plan_of(&cluster.key, &cluster.observed).reason,
            KeyReason::ModelNotFound
        );
    }
}
