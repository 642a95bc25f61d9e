//! The `todo_write` tool as a plugin: provides the service `tool.todo_write`
//! (see `dispatch_kernel::toolbus`), the service `todo` (schema 1: `{"op":
//! "get", "conversationId"}` → `{conversationId, todos}`) through which
//! other plugins read a conversation's list, and publishes every new list
//! on the event `todo.changed`.

use std::sync::Arc;

use dispatch_abi::{to_json, Context, Error, Event, Plugin, PluginManifest, Service};
use dispatch_kernel::toolbus::{ToolRequest, TOOL_VERSION};
use dispatch_tools::plugin::ToolPlugin;
use dispatch_tools::todo::{Lists, OnChange, TodoList, TodoRequest, TodoWrite};
use serde_json::Value;

/// The tool's service.
pub const SERVICE: Service<ToolRequest, Value> = Service::new("tool.todo_write", TOOL_VERSION);
/// Read a conversation's list.
pub const LISTS: Service<TodoRequest, Value> = Service::new("todo", 1);
/// A conversation's list changed.
pub const CHANGED: Event<TodoList> = Event::new("todo.changed", 1);

/// The plugin.
pub struct Todo(ToolPlugin);

impl Plugin for Todo {
    fn manifest() -> PluginManifest {
        PluginManifest::new("tool-todo", env!("CARGO_PKG_VERSION"))
            .description("A per-conversation task list the model keeps with todo_write")
            .provides("service", SERVICE.name())
            .provides("service", LISTS.name())
            .provides("event", CHANGED.name())
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let lists = Arc::new(Lists::default());
        let host = ctx.host().clone();
        let on_change: OnChange = Arc::new(move |list: &TodoList| {
            if let Err(e) = host.publish(&CHANGED, list) {
                tracing::warn!(error = %e, "cannot publish todo.changed");
            }
        });
        let tool = Arc::new(TodoWrite::new(Arc::clone(&lists), Some(on_change)));
        let served = ToolPlugin::serve(ctx.host(), &SERVICE, tool, 1)?;
        ctx.host().provide_sync(&LISTS, move |req: TodoRequest| match req {
            TodoRequest::Get { conversation_id } => to_json(&lists.get(&conversation_id)),
            _ => Err(Error::msg("unknown op")),
        })?;
        Ok(Todo(served))
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(Todo);
