//! `spec.roles` and `spec.rateLimit`: what each tier may do, and how much.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Tier;

/// What a caller may do.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum Permission {
    /// POST /v1/chat/completions and /api/chat.
    Chat,
    /// GET /v1/models.
    Models,
    /// The caller's own usage figures.
    Usage,
    /// /admin/* endpoints: keys and configuration.
    Admin,
}

/// One tier's permissions and quotas.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierSpec {
    /// What callers of this tier may do.
    #[schemars(length(max = 4))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub permissions: Vec<Permission>,

    /// Requests per minute for each caller of this tier. Unset: the global
    /// rateLimit.requestsPerMinute applies (default 10), except for Admin,
    /// which has no request cap unless this is set. With sharedState the
    /// limit holds across all replicas together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<i32>,

    /// Prompt and generated tokens per minute for each caller of this tier.
    /// A request reserves its prompt plus its max_tokens when it is
    /// admitted; what the answer did not use comes back when it ends (or
    /// is cancelled). Unset: no per-minute quota. Defaults: ReadOnly 2,000,
    /// Developer 20,000, Admin unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<i32>,

    /// Prompt and generated tokens per day for each caller of this tier
    /// (a budget that refills continuously over 24 hours), reserved and
    /// refunded like tokensPerMinute; a request must fit both. Unset (the
    /// default for every tier): no daily budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_day: Option<i32>,

    /// Largest max_tokens one request may ask for. Unset: no cap beyond the
    /// model's context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens_per_request: Option<i32>,

    /// Longest prompt (in the model's tokens, chat template included) one
    /// request may send; a longer one is refused with 400 before any
    /// compute. Default: 1024 for ReadOnly, 8192 for Developer, unset (the
    /// model's context) for Admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_PROMPT_TOKENS))]
    pub max_prompt_tokens: Option<i32>,
}

/// The smallest `maxPromptTokens`: a chat template alone takes tens of
/// tokens (SmolLM2's, with its default system prompt, 31), so a lower cap
/// would refuse every request.
pub const MIN_PROMPT_TOKENS: i32 = 64;

/// The three tiers. Defaults follow the seeds: ReadOnly chats with a low
/// quota; Developer also lists models and reads its usage; Admin may do
/// everything with no hard cap.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolesSpec {
    /// The ReadOnly tier (the seeds' guest): chat, with a low quota.
    #[serde(default = "TierSpec::read_only")]
    pub read_only: TierSpec,
    /// The Developer tier (the seeds' user): chat, models and own usage.
    #[serde(default = "TierSpec::developer")]
    pub developer: TierSpec,
    /// The Admin tier: everything, with no hard cap.
    #[serde(default = "TierSpec::admin")]
    pub admin: TierSpec,
}

impl TierSpec {
    /// The ReadOnly tier's defaults: chat only, 2,000 tokens a minute, 512
    /// per request.
    pub fn read_only() -> Self {
        Self {
            permissions: vec![Permission::Chat],
            requests_per_minute: None,
            tokens_per_minute: Some(2_000),
            tokens_per_day: None,
            max_tokens_per_request: Some(512),
            max_prompt_tokens: Some(1_024),
        }
    }

    /// The Developer tier's defaults: chat, models and usage, 20,000
    /// tokens a minute, 2,048 per request.
    pub fn developer() -> Self {
        Self {
            permissions: vec![Permission::Chat, Permission::Models, Permission::Usage],
            requests_per_minute: None,
            tokens_per_minute: Some(20_000),
            tokens_per_day: None,
            max_tokens_per_request: Some(2_048),
            max_prompt_tokens: Some(8_192),
        }
    }

    /// The Admin tier's defaults: every permission, no request cap, no
    /// token quota, no per-request cap.
    pub fn admin() -> Self {
        Self {
            permissions: vec![
                Permission::Chat,
                Permission::Models,
                Permission::Usage,
                Permission::Admin,
            ],
            requests_per_minute: None,
            tokens_per_minute: None,
            tokens_per_day: None,
            max_tokens_per_request: None,
            max_prompt_tokens: None,
        }
    }
}

impl Default for RolesSpec {
    fn default() -> Self {
        Self {
            read_only: TierSpec::read_only(),
            developer: TierSpec::developer(),
            admin: TierSpec::admin(),
        }
    }
}

impl RolesSpec {
    /// The settings of one tier.
    pub fn tier(&self, tier: Tier) -> &TierSpec {
        match tier {
            Tier::ReadOnly => &self.read_only,
            Tier::Developer => &self.developer,
            Tier::Admin => &self.admin,
        }
    }
}

/// Per-principal request and token limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.burst) || self.burst >= 1",
     "message": "rateLimit.burst: must be at least 1"}
]))]
pub struct RateLimitSpec {
    /// Requests per minute per principal (the seed's 10/minute).
    #[serde(default = "default_requests_per_minute")]
    #[schemars(range(min = 1, max = 1000000))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self > 0", "message": "rateLimit.requestsPerMinute: must be greater than 0"}
    ]))]
    pub requests_per_minute: i32,

    /// Requests allowed at once before the per-minute pace applies. Default:
    /// requestsPerMinute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<i32>,

    /// Prompt and generated tokens per minute per principal, on top of the
    /// tier quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<i32>,
}

impl Default for RateLimitSpec {
    fn default() -> Self {
        Self {
            requests_per_minute: default_requests_per_minute(),
            burst: None,
            tokens_per_minute: None,
        }
    }
}

fn default_requests_per_minute() -> i32 {
    10
}
