//! The `read_file` tool as a plugin: serves `dispatch_tools::read_file` as
//! the service `tool.read_file` (see `dispatch_contracts::tool`).
//!
//! `[plugin.config]` is `dispatch_tools::read_file::Config`; every field is optional.

use std::sync::Arc;

use dispatch_abi::{Context, Error, Plugin, PluginManifest};
use dispatch_contracts::tool::{self, Tool as _, ToolServer};
use dispatch_tools::read_file::{Config, ReadFile};

/// The plugin.
#[derive(Debug)]
pub struct Tool(ToolServer);

impl Plugin for Tool {
    fn manifest() -> PluginManifest {
        tool::manifest("tool-read-file", env!("CARGO_PKG_VERSION"), ReadFile::NAME)
            .description("Reads text files (paginated, line-numbered) and lists directories, inside the turn's working directory")
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let tool = Arc::new(ReadFile::new(ctx.config::<Config>()?));
        debug_assert_eq!(tool.name(), ReadFile::NAME);
        Ok(Tool(tool::serve(ctx.host(), tool, 1)?))
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(Tool);
