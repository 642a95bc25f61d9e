//! Serving a [`Tool`] from a plugin: the glue every `tool-*` plugin uses.
//!
//! The plugin provides the service `tool.<name>` ([`dispatch_kernel::toolbus`]
//! protocol). Calls run on the plugin's own small runtime (the shell needs
//! tokio's process and timer support, which must not be touched from the
//! host's threads); the host only ever awaits runtime-agnostic channels.

use std::sync::Arc;
use std::time::Duration;

use dispatch_abi::runtime::PluginRuntime;
use dispatch_abi::{codes, Error, Host, Service};
use dispatch_kernel::tool::Tool;
use dispatch_kernel::toolbus::{RunTable, ToolRequest};
use serde_json::Value;

/// A tool being served. Call [`ToolPlugin::stop`] from `deactivate`.
pub struct ToolPlugin {
    runtime: PluginRuntime,
    table: Arc<RunTable>,
}

impl ToolPlugin {
    /// Provide `key` (named `tool.<name>`) answering for `tool`, with a
    /// runtime of `workers` threads.
    pub fn serve(
        host: &Host,
        key: &Service<ToolRequest, Value>,
        tool: Arc<dyn Tool>,
        workers: usize,
    ) -> Result<Self, Error> {
        let runtime = PluginRuntime::new(&format!("tool-{}", tool.name()), workers)?;
        let table = Arc::new(RunTable::default());
        let handle = runtime.handle().clone();
        let runs = Arc::clone(&table);
        host.provide(key, move |req: ToolRequest| {
            let (runs, tool, handle) = (Arc::clone(&runs), Arc::clone(&tool), handle.clone());
            async move {
                runs.answer(&tool, req, |run| {
                    handle.spawn(run);
                })
                .await
                .map_err(|e| Error::new(codes::NOT_FOUND, e))
            }
        })?;
        Ok(ToolPlugin { runtime, table })
    }

    /// Abort every call in progress (a shell's process group is killed)
    /// and stop the runtime.
    pub fn stop(&mut self) {
        self.table.cancel_all();
        self.runtime.shutdown(Duration::from_secs(5));
    }
}
