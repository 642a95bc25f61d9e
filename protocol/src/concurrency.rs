//! Provider concurrency (WIRE.md "Provider concurrency"): per provider —
//! the credential name, the part of a model name before `/` — at most
//! `limit` token-generating requests at once, a cooldown between one
//! request's end and the next one's start, and a pause after a `429`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The cooldown of a provider with a limit and no cooldown of its own.
pub const DEFAULT_COOLDOWN_MS: u64 = 350;

/// `{providerId, limit}`: one provider's limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderLimit {
    /// The provider (credential name).
    pub provider_id: String,
    /// Requests at once (≥ 1).
    pub limit: u64,
}

/// `GET /concurrency/limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderLimits {
    /// Every provider with a limit.
    pub limits: Vec<ProviderLimit>,
}

/// `{providerId, cooldownMs}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderCooldown {
    /// The provider (credential name).
    pub provider_id: String,
    /// How long a freed slot is held before the next request gets it.
    pub cooldown_ms: u64,
}

/// One provider's line of `GET /concurrency/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusEntry {
    /// The provider.
    pub provider_id: String,
    /// Its limit.
    pub limit: u64,
    /// Requests holding a slot now.
    pub in_flight: u64,
    /// Requests waiting for one.
    pub queued: u64,
    /// Paused after a `429`.
    pub paused: bool,
    /// Until when (epoch ms), while paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<u64>,
    /// Its cooldown.
    pub cooldown_ms: u64,
    /// The limit was lowered after a `429`.
    pub auto_reduced: bool,
    /// The limit before the first lowering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_reduced_from: Option<u64>,
    /// What to tell the operator about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
}

/// `GET /concurrency/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Every provider with a limit.
    pub providers: Vec<StatusEntry>,
}
