//! The `run_shell` tool as a plugin: provides the service `tool.run_shell`
//! (see `dispatch_kernel::toolbus`). The tool itself is
//! `dispatch_tools::shell`.
//!
//! `[plugin.config]` is `dispatch_tools::shell::Config`; every field is optional.

use std::sync::Arc;

use dispatch_abi::{Context, Error, Plugin, PluginManifest, Service};
use dispatch_kernel::toolbus::{ToolRequest, TOOL_VERSION};
use dispatch_tools::plugin::ToolPlugin;
use dispatch_tools::shell::{Config, Shell};
use serde_json::Value;

/// The tool's service.
pub const SERVICE: Service<ToolRequest, Value> = Service::new("tool.run_shell", TOOL_VERSION);

/// The plugin.
pub struct Tool(ToolPlugin);

impl Plugin for Tool {
    fn manifest() -> PluginManifest {
        PluginManifest::new("tool-shell", env!("CARGO_PKG_VERSION"))
            .description("Runs shell commands in the turn's working directory, streaming output; timeouts kill the process group")
            .provides("service", SERVICE.name())
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let tool = Arc::new(Shell::new(ctx.config::<Config>()?));
        Ok(Tool(ToolPlugin::serve(ctx.host(), &SERVICE, tool, 1)?))
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(Tool);
