//! `todo_write`: the model's task list for a conversation, replaced whole
//! on every call.
//!
//! Lists live in memory, per conversation, for the life of the process —
//! a plan for the work at hand, not a record (the calls themselves are in
//! the conversation log). Other plugins read a list through the `todo`
//! service and hear about changes on the `todo.changed` event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

pub use dispatch_protocol::todo::{Status, Todo, TodoList, TodoRequest};
use dispatch_protocol::tool::{Tool, ToolContext, ToolError, ToolOutput};
use dispatch_protocol::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::input::parse;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    todos: Vec<Todo>,
}

/// Called with every new list (the plugin publishes it as an event).
pub type OnChange = Arc<dyn Fn(&TodoList) + Send + Sync>;

/// The lists, by conversation.
#[derive(Default)]
pub struct Lists {
    lists: Mutex<HashMap<String, Vec<Todo>>>,
}

impl Lists {
    /// A conversation's list.
    pub fn get(&self, conversation_id: &str) -> TodoList {
        let todos = self.lists.lock().unwrap_or_else(PoisonError::into_inner).get(conversation_id).cloned();
        TodoList { conversation_id: conversation_id.to_owned(), todos: todos.unwrap_or_default() }
    }

    fn set(&self, conversation_id: &str, todos: Vec<Todo>) {
        let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        if todos.is_empty() {
            lists.remove(conversation_id);
        } else {
            lists.insert(conversation_id.to_owned(), todos);
        }
    }
}

/// The `todo_write` tool.
pub struct TodoWrite {
    lists: Arc<Lists>,
    on_change: Option<OnChange>,
}

/// Most tasks in one list.
const MAX_TODOS: usize = 100;

impl TodoWrite {
    /// Keeping lists in `lists`, telling `on_change` about new ones.
    pub fn new(lists: Arc<Lists>, on_change: Option<OnChange>) -> Self {
        TodoWrite { lists, on_change }
    }

    /// The call.
    pub fn write(&self, input: Value, conversation_id: &str) -> Result<ToolOutput, ToolError> {
        let input: Input = parse(input)?;
        if input.todos.len() > MAX_TODOS {
            return Err(ToolError::InvalidInput(format!(
                "{} tasks; a list holds at most {MAX_TODOS}",
                input.todos.len()
            )));
        }
        if let Some(i) = input.todos.iter().position(|t| t.content.trim().is_empty()) {
            return Err(ToolError::InvalidInput(format!("task #{} has empty `content`", i + 1)));
        }
        self.lists.set(conversation_id, input.todos);
        let list = self.lists.get(conversation_id);
        if let Some(f) = &self.on_change {
            f(&list);
        }
        Ok(ToolOutput::ok(render(&list.todos)))
    }
}

/// The list as the model reads it back.
pub fn render(todos: &[Todo]) -> String {
    if todos.is_empty() {
        return "The task list is now empty.".into();
    }
    let done = todos.iter().filter(|t| t.status == Status::Completed).count();
    let mut out = format!("Task list ({done}/{} completed):\n", todos.len());
    for t in todos {
        let mark = match t.status {
            Status::Pending => "[ ]",
            Status::InProgress => "[~]",
            Status::Completed => "[x]",
        };
        out.push_str(&format!("{mark} {}\n", t.content));
    }
    out
}

impl TodoWrite {
    /// The name the model calls it by.
    pub const NAME: &'static str = "todo_write";
}

impl Tool for TodoWrite {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn description(&self) -> &str {
        "Keep a task list for this conversation, to plan multi-step work and show progress. Each \
         call replaces the whole list: send every task, with its status (`pending`, \
         `in_progress`, `completed`). Mark a task in_progress before starting it and completed as \
         soon as it is done. Send an empty list to clear it. Answers the list."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "todos": {
                    "type": "array",
                    "maxItems": MAX_TODOS,
                    "items": {
                        "type": "object",
                        "properties": {
                            "content": {"type": "string", "description": "The task"},
                            "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]}
                        },
                        "required": ["content", "status"],
                        "additionalProperties": false
                    }
                }
            },
            "required": ["todos"],
            "additionalProperties": false
        })
    }

    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        let result = self.write(input, &ctx.conversation_id);
        Box::pin(async move { result })
    }
}
