//! The `edit_file` tool as a plugin: serves `dispatch_tools::edit_file` as
//! the service `tool.edit_file` (see `dispatch_contracts::tool`).

use std::sync::Arc;

use dispatch_abi::{Context, Error, Plugin, PluginManifest};
use dispatch_contracts::tool::{self, Tool as _, ToolServer};
use dispatch_tools::edit_file::EditFile;

/// The plugin.
#[derive(Debug)]
pub struct Tool(ToolServer);

impl Plugin for Tool {
    fn manifest() -> PluginManifest {
        tool::manifest("tool-edit-file", env!("CARGO_PKG_VERSION"), EditFile::NAME)
            .description("Exact-string edits of text files (atomically) inside the turn's working directory")
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let tool = Arc::new(EditFile);
        debug_assert_eq!(tool.name(), EditFile::NAME);
        Ok(Tool(tool::serve(ctx.host(), tool, 1)?))
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(Tool);
