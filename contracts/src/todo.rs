//! The `todo` contract of the `tool-todo` plugin: read a conversation's
//! task list, hear when one changes. Types in
//! [`dispatch_protocol::todo`], re-exported here.

use dispatch_abi::{Event, Service};
pub use dispatch_protocol::todo::*;

/// Read a conversation's list (empty when it has none).
pub const TODO: Service<TodoRequest, TodoList> = Service::new("todo", 1);
/// A conversation's list changed.
pub const CHANGED: Event<TodoList> = Event::new("todo.changed", 1);
