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

/// Requests to the `concurrency` service, tagged by `op`: a slot for each
/// token-generating provider request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub enum ConcurrencyRequest {
    /// Ask for a slot; answers [`Acquired`] at once (granted or queued).
    Acquire {
        /// The provider (credential name).
        provider_id: String,
        /// The conversation whose request it is.
        conversation_id: String,
        /// Its workspace (a starred one goes first).
        workspace_id: String,
        /// When its turn started, epoch ms (older goes first).
        turn_started_at: u64,
    },
    /// Wait, at most `waitMs` (20 000 at most), for a queued ticket;
    /// answers [`Waited`].
    Wait {
        /// The ticket.
        ticket: u64,
        /// The longest wait, in ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_ms: Option<u64>,
    },
    /// The request ended (its stream closed); answers `{}`.
    Release {
        /// The ticket.
        ticket: u64,
        /// It ended with the provider's `429`.
        #[serde(default)]
        rate_limited: bool,
    },
}

/// The answer to [`ConcurrencyRequest::Acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Acquired {
    /// Release it when the request ends.
    pub ticket: u64,
    /// Go ahead now; else wait for it.
    pub granted: bool,
    /// The provider has a limit (an unlimited one is not counted, and its
    /// requests are never `queued`).
    pub limited: bool,
}

/// The answer to [`ConcurrencyRequest::Wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Waited {
    /// The slot is the caller's now.
    pub granted: bool,
}
