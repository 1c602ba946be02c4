//! Per-key usage (requests, tokens, last use). Each replica counts in
//! memory on every request and flushes its deltas to the store once a
//! [`FLUSH_INTERVAL`] (one script call for all keys), so a request never
//! waits on the store for bookkeeping; deltas that could not be flushed
//! stay pending and go with the next flush, so a store outage loses none.
//! Reads (`/admin/keys`, `/v1/usage`) add the store's totals of the whole
//! model and this replica's pending deltas.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use super::{Store, StoreError};

/// How often a replica's deltas reach the store: the figures other
/// replicas report lag by at most this.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The usage script (see its header).
pub const USAGE_SCRIPT: &str = include_str!("usage.lua");

/// How long a key's usage stays in the store after its last use: the
/// figures of a key removed from the table go with it, those of a key in
/// use never do (each flush renews it). Over a year, so that yearly
/// figures of a key used once a year survive.
pub const USAGE_RETENTION: Duration = Duration::from_secs(400 * 24 * 3600);

/// Usage of one API key (a total, or a delta not yet flushed).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyUsage {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl KeyUsage {
    /// Adds `other` (counts add, the later use wins).
    pub fn add(&mut self, other: &KeyUsage) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.last_used_at = self.last_used_at.max(other.last_used_at);
    }
}

fn usage_key(key_id: &str) -> String {
    format!("usage:{key_id}")
}

impl Store {
    /// Adds every delta in one atomic call.
    pub async fn add_usage(&self, deltas: &HashMap<String, KeyUsage>) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut invocation = self.usage_script.prepare_invoke();
        invocation.arg(USAGE_RETENTION.as_millis() as u64);
        for (id, delta) in deltas {
            invocation.key(self.key(&usage_key(id)));
            invocation
                .arg(delta.requests)
                .arg(delta.prompt_tokens)
                .arg(delta.completion_tokens)
                .arg(delta.last_used_at.map_or(0, |t| t.timestamp_millis()));
        }
        self.run(
            |mut conn| async move { invocation.invoke_async::<i64>(&mut conn).await.map(|_| ()) },
        )
        .await
    }

    /// The stored totals of `ids` (absent keys: zero).
    pub async fn usage(&self, ids: &[String]) -> Result<HashMap<String, KeyUsage>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.key(&usage_key(id)))
                .arg("requests")
                .arg("promptTokens")
                .arg("completionTokens")
                .arg("lastUsedMs");
        }
        type Row = (Option<u64>, Option<u64>, Option<u64>, Option<i64>);
        let rows: Vec<Row> = self
            .run(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await?;
        Ok(ids
            .iter()
            .zip(rows)
            .map(|(id, (requests, prompt, completion, last_ms))| {
                let usage = KeyUsage {
                    requests: requests.unwrap_or(0),
                    prompt_tokens: prompt.unwrap_or(0),
                    completion_tokens: completion.unwrap_or(0),
                    last_used_at: last_ms
                        .filter(|ms| *ms > 0)
                        .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
                };
                (id.clone(), usage)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_add_up_and_the_later_use_wins() {
        let t1 = Utc.timestamp_millis_opt(1_000).unwrap();
        let t2 = Utc.timestamp_millis_opt(2_000).unwrap();
        let mut total = KeyUsage {
            requests: 1,
            prompt_tokens: 10,
            completion_tokens: 5,
            last_used_at: Some(t2),
        };
        total.add(&KeyUsage {
            requests: 2,
            prompt_tokens: 1,
            completion_tokens: 1,
            last_used_at: Some(t1),
        });
        assert_eq!(
            total,
            KeyUsage {
                requests: 3,
                prompt_tokens: 11,
                completion_tokens: 6,
                last_used_at: Some(t2),
            }
        );
    }
}
