//! The `todo` contract: a conversation's task list as the `todo_write`
//! tool keeps it, read through the `todo` service and announced on the
//! `todo.changed` event.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not started.
    Pending,
    /// Being worked on.
    InProgress,
    /// Done.
    Completed,
}

/// One task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Todo {
    /// What to do.
    pub content: String,
    /// Where it stands.
    pub status: Status,
}

/// A conversation's list, as the `todo` service answers it and the
/// `todo.changed` event carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TodoList {
    /// The conversation.
    pub conversation_id: String,
    /// Its tasks, in the model's order.
    pub todos: Vec<Todo>,
}

/// Requests to the `todo` service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub enum TodoRequest {
    /// A conversation's list ([`TodoList`]; empty when it has none).
    Get {
        /// The conversation.
        conversation_id: String,
    },
}
