//! The `compaction` plugin's contract: what it tells the others when a
//! conversation was compacted.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::wire::ChatMessage;

/// Requests to the `compaction` service, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub enum CompactionRequest {
    /// A running turn reached a tool-result boundary with `context_size`
    /// tokens (its step's input + output) on `model`: compact the stored
    /// history if that is past the conversation's threshold. Answers
    /// [`InFlight`]. Everything the turn did so far must be saved.
    InFlight {
        /// The conversation.
        conversation_id: String,
        /// `<credential>/<model>` the turn runs on.
        model: String,
        /// The step's input + output tokens.
        context_size: u64,
    },
}

/// The `inFlight` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlight {
    /// The compacted history, reconciled, when the conversation was
    /// compacted: the turn goes on with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<ChatMessage>>,
}

/// A conversation's history was compacted (`conversation.compacted` on
/// the bus, and to every WebSocket client with `"type":
/// "conversation.compacted"`). Its seqs restarted at 1: a client drops
/// what it cached of it and reads it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compacted {
    /// The conversation (its id does not change).
    pub conversation_id: String,
    /// The archive holding the whole old history.
    pub new_conversation_id: String,
    /// Messages (runs of one role) replaced by the summary.
    pub messages_summarized: u64,
    /// Messages kept after it.
    pub messages_kept: u64,
}
