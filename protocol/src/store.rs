//! The conversation store's bus contract: the `store` service (key in `dispatch-contracts`,
//! schema version 1) that persists the append-only chunk log, conversation
//! metadata and per-turn metrics. Any store plugin (SQLite today, Postgres
//! for more than one machine) speaks it, so the plugins that use it never
//! change when the store does.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::wire::{
    ChatMessage, Chunk, ConversationMeta, ConversationStatus, ReasoningEffort, Role, StoredChunk, TurnMetrics,
};

/// Requests to the store, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub enum StoreRequest {
    /// Append one message's chunks; answers [`Appended`]. Atomic: all the
    /// chunks land, with consecutive seqs, or none do.
    Append {
        /// The conversation (created on first append).
        conversation_id: String,
        /// The message's role.
        role: Role,
        /// The turn it belongs to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turn_id: Option<String>,
        /// Its chunks, in order.
        chunks: Vec<Chunk>,
    },
    /// Append several messages of one turn — a model step's assistant
    /// message and its tool results — in one transaction; answers
    /// [`Appended`] with every chunk's seq, in order. Atomic: the whole step
    /// lands or none of it, so a crash never leaves a tool call without its
    /// result. A store without this op answers `unsupported`, or
    /// `invalid_payload` naming the op it cannot decode; callers then
    /// append the messages one by one.
    AppendMessages {
        /// The conversation (created on first append).
        conversation_id: String,
        /// The turn they belong to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turn_id: Option<String>,
        /// The messages, in order; none may be empty.
        messages: Vec<NewMessage>,
    },
    /// Raw history window; answers [`History`].
    History {
        /// The conversation.
        conversation_id: String,
        /// Only chunks with `seq > since_seq`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_seq: Option<u64>,
        /// Only chunks with `seq < before_seq`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before_seq: Option<u64>,
        /// The newest `limit` of the selection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    /// The whole history as messages, reconciled for a provider; answers
    /// [`Messages`].
    Messages {
        /// The conversation.
        conversation_id: String,
    },
    /// Metadata of one conversation; answers [`Details`] or `null`.
    Get {
        /// The conversation.
        conversation_id: String,
    },
    /// Change metadata (creates the conversation if needed); answers
    /// [`Details`]. Absent fields are left alone; `null` clears.
    Update(MetaUpdate),
    /// Conversations, most recently active first; answers [`Listing`].
    List {
        /// Only ids starting with this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
        /// Only this status.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<ConversationStatus>,
    },
    /// Record a sealed turn's metrics.
    AppendMetrics {
        /// The conversation.
        conversation_id: String,
        /// The metrics.
        metrics: TurnMetrics,
    },
    /// Every turn's metrics in append order; answers [`MetricsList`].
    Metrics {
        /// The conversation.
        conversation_id: String,
    },
    /// Compact a conversation: its whole log is copied to a new archive
    /// conversation, and its own log replaced by a summary (seq 1, role
    /// `system`) and the chunks from `keep_from_seq` on, renumbered from 2;
    /// answers [`Compacted`]. Atomic: a crash at any point leaves the old
    /// history or the new one, with the archive complete before the live log
    /// changes. Refused (`conflict`) when the conversation's latest seq is
    /// no longer `expect_latest_seq` — something was appended since the
    /// caller read it.
    Compact(CompactRequest),
    /// A value a plugin keeps under `scope` and `key` (`scope`: a
    /// conversation's id for its settings, or a name of the plugin's own);
    /// answers the value or `null`.
    GetValue {
        /// Whose.
        scope: String,
        /// Which.
        key: String,
    },
    /// Keep `value` under `scope` and `key` (`null` deletes it); answers
    /// `{}`.
    PutValue {
        /// Whose.
        scope: String,
        /// Which.
        key: String,
        /// What (`null`: forget it).
        value: Value,
    },
    /// The largest chunks the store accepts; answers [`StoreLimits`]. A
    /// store without limits (or without this op: `unsupported`) takes
    /// any size. Asked so a message can be refused when it is *accepted*
    /// (a queued message, `413`) instead of failing later, when nobody
    /// is there to be told.
    Limits,
    /// Every workspace, with its conversation count, most recently active
    /// first, `default` always among them (synthesized when never
    /// persisted); answers [`crate::workspace::WorkspaceList`]. A
    /// workspace's `lastActivityAt` is the latest of its own and its
    /// conversations'.
    Workspaces,
    /// One workspace; answers [`crate::workspace::Workspace`] (`default`
    /// synthesized when never persisted), or `null`.
    GetWorkspace {
        /// Its id.
        id: String,
    },
    /// Create or change a workspace; answers the
    /// [`crate::workspace::Workspace`]. Setting a conversation's
    /// `workspaceId` ([`StoreRequest::Update`]) creates its workspace too.
    PutWorkspace(crate::workspace::WorkspaceUpdate),
    /// Forget a workspace (its conversations are the caller's to move
    /// first); answers `{"deleted": bool}`. `default` is refused
    /// (`conflict`).
    DeleteWorkspace {
        /// Its id.
        id: String,
    },
    /// Keep turn traces, in order; answers `{}`. Not conversation
    /// activity: a conversation's `lastActivityAt` does not move.
    AppendTraces {
        /// Oldest first.
        traces: Vec<crate::trace::TraceEvent>,
    },
    /// A page of a conversation's traces, oldest first; answers
    /// [`crate::trace::TracePage`].
    Traces(TraceQuery),
    /// Generation per model over `[start, end)` (epoch ms), from the
    /// stored `turn` traces with generation time; answers
    /// [`ThroughputList`].
    Throughput {
        /// From, inclusive.
        start: u64,
        /// To, exclusive.
        end: u64,
    },
    /// Whether the store can serve now (readiness: `GET /health`);
    /// answers `{}`, or fails `unavailable` when its database cannot be
    /// reached. A store without this op (`unsupported`) counts as ready.
    Ping,
}

/// The `traces` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceQuery {
    /// The conversation.
    pub conversation_id: String,
    /// Only this turn's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Only this kind (`context`, `request`, `tool`, `turn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only traces after this id (a page's `nextCursor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many (1 to [`crate::trace::MAX_PAGE`]).
    pub limit: u64,
}

/// The `throughput` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThroughputList {
    /// One per model, by name.
    pub models: Vec<crate::trace::ThroughputRow>,
}

/// The `compact` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompactRequest {
    /// The conversation compacted (its id does not change).
    pub conversation_id: String,
    /// The new archive conversation (must not exist).
    pub archive_id: String,
    /// The summary's text, stored whole as the first chunk.
    pub summary: String,
    /// The first seq kept: the start of a message (1 keeps everything;
    /// `latest + 1` keeps nothing).
    pub keep_from_seq: u64,
    /// The latest seq the caller compacted.
    pub expect_latest_seq: u64,
}

/// The `compact` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compacted {
    /// The conversation.
    pub conversation_id: String,
    /// The archive holding the whole old log.
    pub archive_id: String,
    /// The conversation's latest seq now (the summary and the kept chunks).
    pub latest_seq: u64,
}

/// The `limits` answer: the largest chunk JSON a store accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoreLimits {
    /// Any chunk but an image, in bytes of its JSON.
    pub max_chunk_bytes: u64,
    /// An image chunk (its data URL inline), in bytes of its JSON.
    pub max_image_chunk_bytes: u64,
}

/// `Some(None)` = clear, `None` = leave alone.
pub(crate) fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The first chunk of a compacted conversation is this, then the summary.
pub const SUMMARY_PREFIX: &str = "The following is a summary of the previous conversation:\n\n";

/// The longest default title, in characters (then `…`).
pub const DEFAULT_TITLE_CHARS: usize = 60;

/// A conversation's default title, from its first user message: the
/// message's text on one line, cut at [`DEFAULT_TITLE_CHARS`]. Every store
/// gives the same title.
pub fn default_title(chunks: &[Chunk]) -> Option<String> {
    let text: Vec<&str> = chunks
        .iter()
        .filter_map(|c| match c {
            Chunk::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let line = text.join(" ").split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return None;
    }
    Some(match line.char_indices().nth(DEFAULT_TITLE_CHARS) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    })
}

/// A metadata change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetaUpdate {
    /// The conversation.
    pub conversation_id: String,
    /// New title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// New status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ConversationStatus>,
    /// Sticky working directory (`null` clears).
    #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
    pub cwd: Option<Option<String>>,
    /// Sticky model (`null` clears).
    #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
    pub model: Option<Option<String>>,
    /// Sticky reasoning effort (`null` clears).
    #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<Option<ReasoningEffort>>,
    /// Workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// Per-conversation system prompt (`null` clears).
    #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<Option<String>>,
}

/// The seqs an append was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Appended {
    /// One per chunk, consecutive.
    pub seqs: Vec<u64>,
}

/// One message of an [`StoreRequest::AppendMessages`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewMessage {
    /// Its role.
    pub role: Role,
    /// Its chunks, in order.
    pub chunks: Vec<Chunk>,
}

/// A history window — exactly the `GET /conversations/:id` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// Ascending.
    pub chunks: Vec<StoredChunk>,
    /// The last returned seq, or the requested `sinceSeq` when nothing is newer.
    pub latest_seq: u64,
}

/// History as messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Messages {
    /// In order, reconciled.
    pub messages: Vec<ChatMessage>,
}

/// Everything stored about a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Details {
    /// The list fields.
    #[serde(flatten)]
    pub meta: ConversationMeta,
    /// Sticky working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Sticky model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sticky reasoning effort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Per-conversation system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// The last seq used.
    pub latest_seq: u64,
}

/// The list answer — exactly the `GET /conversations` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    /// Most recently active first.
    pub conversations: Vec<ConversationMeta>,
}

/// The metrics answer — exactly the `GET /conversations/:id/metrics` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsList {
    /// In append order.
    pub turns: Vec<TurnMetrics>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_clears_and_absence_leaves_alone() {
        let u: StoreRequest =
            serde_json::from_value(json!({"op": "update", "conversationId": "c", "cwd": null, "title": "T"}))
                .unwrap();
        let StoreRequest::Update(u) = u else { panic!() };
        assert_eq!(u.cwd, Some(None));
        assert_eq!(u.model, None);
        assert_eq!(u.title.as_deref(), Some("T"));
    }

    #[test]
    fn requests_are_strict() {
        assert!(serde_json::from_value::<StoreRequest>(
            json!({"op": "append", "conversationId": "c", "role": "user", "chunks": [], "extra": 1})
        )
        .is_err());
        assert!(serde_json::from_value::<StoreRequest>(
            json!({"op": "history", "conversationId": "c", "limit": -1})
        )
        .is_err());
    }
}
