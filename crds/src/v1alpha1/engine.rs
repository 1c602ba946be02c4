//! `spec.serving`: how one pod serves many callers at once — continuous
//! batching, the paged KV cache, the prefix cache and fair queueing by tier.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Tier;

/// Most sequences generated in one batched step by default. On the
/// embedded model and 2 cores a step over 16 sequences still costs about
/// what one sequence's step costs at 1 (the weights are read once per step
/// for every row), and 16 is the concurrency the benchmarks measure.
pub const DEFAULT_MAX_CONCURRENT_SEQUENCES: i32 = 16;
/// Requests waiting behind the running ones by default.
pub const DEFAULT_MAX_QUEUE: i32 = 64;
/// Prompt tokens prefilled per step by default: a long prompt delays the
/// other sequences' next token by at most one such chunk.
pub const DEFAULT_PREFILL_CHUNK_TOKENS: i32 = 256;

/// Continuous batching, KV cache and queueing of one pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.kvCacheTokens) || self.kvCacheTokens >= self.prefillChunkTokens",
     "message": "serving.kvCacheTokens: must hold at least one prefill chunk (prefillChunkTokens)"}
]))]
pub struct ServingSpec {
    /// Most sequences generated at once, in one batched forward step per
    /// token. More callers wait in the queue.
    #[serde(default = "default_max_concurrent_sequences")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_concurrent_sequences: i32,

    /// Size of the paged KV cache, in tokens, shared by every running
    /// sequence (and the prefix cache). Unset: from the pod's memory limit
    /// and the model's per-token KV size (40% of the memory available).
    /// At least one context window is always allocated, so a lone request
    /// fits. A sequence that no longer fits is paused (the newest of the
    /// lowest tier first) and recomputed later, never failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 16777216))]
    pub kv_cache_tokens: Option<i32>,

    /// Requests that may wait behind the running ones; beyond it a request
    /// gets 503 with a Retry-After computed from the queue and throughput.
    #[serde(default = "default_max_queue")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_queue: i32,

    /// Reuse the KV cache of identical prompt prefixes (a shared system
    /// prompt, the earlier turns a client re-sends), so they are not
    /// computed again.
    #[serde(default = "default_prefix_cache")]
    pub prefix_cache: bool,

    /// Prompt tokens prefilled per step, across every sequence being
    /// admitted (chunked prefill): a long prompt delays the running
    /// sequences' next token by at most one such chunk.
    #[serde(default = "default_prefill_chunk_tokens")]
    #[schemars(range(min = 16, max = 65536))]
    pub prefill_chunk_tokens: i32,

    /// Relative share of admissions each tier gets while callers of several
    /// tiers wait (weighted round-robin; inside a tier, round-robin between
    /// principals).
    #[serde(default)]
    pub tier_weights: TierWeights,
}

impl Default for ServingSpec {
    fn default() -> Self {
        Self {
            max_concurrent_sequences: default_max_concurrent_sequences(),
            kv_cache_tokens: None,
            max_queue: default_max_queue(),
            prefix_cache: default_prefix_cache(),
            prefill_chunk_tokens: default_prefill_chunk_tokens(),
            tier_weights: TierWeights::default(),
        }
    }
}

fn default_max_concurrent_sequences() -> i32 {
    DEFAULT_MAX_CONCURRENT_SEQUENCES
}
fn default_max_queue() -> i32 {
    DEFAULT_MAX_QUEUE
}
fn default_prefix_cache() -> bool {
    true
}
fn default_prefill_chunk_tokens() -> i32 {
    DEFAULT_PREFILL_CHUNK_TOKENS
}

/// Admission weights per tier (Admin > Developer > ReadOnly by default).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierWeights {
    /// Weight of Admin callers (default 4).
    #[serde(default = "default_admin_weight")]
    #[schemars(range(min = 1, max = 1000))]
    pub admin: i32,
    /// Weight of Developer callers (default 2).
    #[serde(default = "default_developer_weight")]
    #[schemars(range(min = 1, max = 1000))]
    pub developer: i32,
    /// Weight of ReadOnly callers (default 1).
    #[serde(default = "default_read_only_weight")]
    #[schemars(range(min = 1, max = 1000))]
    pub read_only: i32,
}

impl Default for TierWeights {
    fn default() -> Self {
        Self {
            admin: default_admin_weight(),
            developer: default_developer_weight(),
            read_only: default_read_only_weight(),
        }
    }
}

impl TierWeights {
    /// The weight of one tier.
    pub fn of(&self, tier: Tier) -> i32 {
        match tier {
            Tier::Admin => self.admin,
            Tier::Developer => self.developer,
            Tier::ReadOnly => self.read_only,
        }
    }
}

fn default_admin_weight() -> i32 {
    4
}
fn default_developer_weight() -> i32 {
    2
}
fn default_read_only_weight() -> i32 {
    1
}
