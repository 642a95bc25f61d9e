//! The `write_file` tool as a plugin: serves `dispatch_tools::write_file` as
//! the service `tool.write_file` (see `dispatch_contracts::tool`).

use std::sync::Arc;

use dispatch_abi::{Context, Error, Plugin, PluginManifest};
use dispatch_contracts::tool::{self, Tool as _, ToolServer};
use dispatch_tools::write_file::WriteFile;

/// The plugin.
#[derive(Debug)]
pub struct Tool(ToolServer);

impl Plugin for Tool {
    fn manifest() -> PluginManifest {
        tool::manifest("tool-write-file", env!("CARGO_PKG_VERSION"), WriteFile::NAME).description(
            "Creates files (atomically; no overwrite unless asked) inside the turn's working directory",
        )
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let tool = Arc::new(WriteFile);
        debug_assert_eq!(tool.name(), WriteFile::NAME);
        Ok(Tool(tool::serve(ctx.host(), tool, 1)?))
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(Tool);
