//! The `todo_write` tool as a plugin: serves `dispatch_tools::todo` as the
//! service `tool.todo_write` (see `dispatch_contracts::tool`), provides the
//! `todo` service through which other plugins read a conversation's list,
//! and publishes every new list on the `todo.changed` event (both in
//! `dispatch_contracts::todo`).

use std::sync::Arc;

use dispatch_abi::{Context, Error, Plugin, PluginManifest};
use dispatch_contracts::todo::{TodoList, TodoRequest, CHANGED, TODO};
use dispatch_contracts::tool::{self, ToolServer};
use dispatch_tools::todo::{Lists, OnChange, TodoWrite};

/// The plugin.
#[derive(Debug)]
pub struct Todo(ToolServer);

impl Plugin for Todo {
    fn manifest() -> PluginManifest {
        tool::manifest("tool-todo", env!("CARGO_PKG_VERSION"), TodoWrite::NAME)
            .description("A per-conversation task list the model keeps with todo_write")
            .provides("service", TODO.name())
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
        let served = tool::serve(ctx.host(), tool, 1)?;
        ctx.host().provide_sync(&TODO, move |req: TodoRequest| match req {
            TodoRequest::Get { conversation_id } => Ok(lists.get(&conversation_id)),
            other => {
                Err(Error::new(dispatch_abi::codes::UNSUPPORTED, format!("unsupported request {other:?}")))
            }
        })?;
        Ok(Todo(served))
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(Todo);
