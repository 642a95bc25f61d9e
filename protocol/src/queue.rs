//! The `message-queue` contract: messages a user sends while a turn is
//! running wait here until the session drains them — at the turn's next
//! tool-result boundary (a `steering` event), or into a new turn when the
//! running one ends. The queue holds; the session decides when to use it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::session::QueuedMessage;

/// Requests to the `message-queue` service, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub enum QueueRequest {
    /// Add a message at the end; answers [`QueueState`].
    Push {
        /// The conversation.
        conversation_id: String,
        /// The text (trimmed, non-empty).
        text: String,
    },
    /// Remove one waiting message; answers [`Cancelled`].
    Cancel {
        /// The conversation.
        conversation_id: String,
        /// The message.
        message_id: String,
    },
    /// What is waiting; answers [`QueueState`].
    List {
        /// The conversation.
        conversation_id: String,
    },
    /// Take everything that is waiting, oldest first; answers
    /// [`QueueState`] with what was taken (the queue is then empty).
    Drain {
        /// The conversation.
        conversation_id: String,
    },
}

/// A conversation's queue — also the `message-queue.changed` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueState {
    /// The conversation.
    pub conversation_id: String,
    /// Oldest first.
    pub messages: Vec<QueuedMessage>,
}

/// The answer to [`QueueRequest::Cancel`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cancelled {
    /// The message was waiting and is gone.
    pub cancelled: bool,
    /// What is waiting now.
    #[serde(flatten)]
    pub state: QueueState,
}
