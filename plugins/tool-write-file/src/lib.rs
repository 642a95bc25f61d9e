//! The `write_file` tool as a plugin: provides the service `tool.write_file`
//! (see `dispatch_kernel::toolbus`). The tool itself is
//! `dispatch_tools::write_file`.

use std::sync::Arc;

use dispatch_abi::{Context, Error, Plugin, PluginManifest, Service};
use dispatch_kernel::toolbus::{ToolRequest, TOOL_VERSION};
use dispatch_tools::plugin::ToolPlugin;
use dispatch_tools::write_file::WriteFile;
use serde_json::Value;

/// The tool's service.
pub const SERVICE: Service<ToolRequest, Value> = Service::new("tool.write_file", TOOL_VERSION);

/// The plugin.
pub struct Tool(ToolPlugin);

impl Plugin for Tool {
    fn manifest() -> PluginManifest {
        PluginManifest::new("tool-write-file", env!("CARGO_PKG_VERSION"))
            .description(
                "Creates files (atomically; no overwrite unless asked) inside the turn's working directory",
            )
            .provides("service", SERVICE.name())
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let tool = Arc::new(WriteFile);
        Ok(Tool(ToolPlugin::serve(ctx.host(), &SERVICE, tool, 1)?))
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(Tool);
