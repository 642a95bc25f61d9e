//! The `compaction` plugin's contract: what it tells the others when a
//! conversation was compacted.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
