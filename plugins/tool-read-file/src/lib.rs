//! The `read_file` tool as a plugin: provides the service `tool.read_file`
//! (see `dispatch_kernel::toolbus`). The tool itself is
//! `dispatch_tools::read_file`.
//!
//! `[plugin.config]` is `dispatch_tools::read_file::Config`; every field is optional.

use std::sync::Arc;

use dispatch_abi::{Context, Error, Plugin, PluginManifest, Service};
use dispatch_kernel::toolbus::{ToolRequest, TOOL_VERSION};
use dispatch_tools::plugin::ToolPlugin;
use dispatch_tools::read_file::{Config, ReadFile};
use serde_json::Value;

/// The tool's service.
pub const SERVICE: Service<ToolRequest, Value> = Service::new("tool.read_file", TOOL_VERSION);

/// The plugin.
pub struct Tool(ToolPlugin);

impl Plugin for Tool {
    fn manifest() -> PluginManifest {
        PluginManifest::new("tool-read-file", env!("CARGO_PKG_VERSION"))
            .description("Reads text files (paginated, line-numbered) and lists directories, inside the turn's working directory")
            .provides("service", SERVICE.name())
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let tool = Arc::new(ReadFile::new(ctx.config::<Config>()?));
        Ok(Tool(ToolPlugin::serve(ctx.host(), &SERVICE, tool, 2)?))
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(Tool);
