//! The `run_shell` tool as a plugin: serves `dispatch_tools::shell` as
//! the service `tool.run_shell` (see `dispatch_contracts::tool`).
//!
//! `[plugin.config]` is `dispatch_tools::shell::Config`; every field is optional.

use std::sync::Arc;

use dispatch_abi::{Context, Error, Plugin, PluginManifest};
use dispatch_contracts::tool::{self, Tool as _, ToolServer};
use dispatch_tools::shell::{Config, Shell};

/// The plugin.
#[derive(Debug)]
pub struct Tool(ToolServer);

impl Plugin for Tool {
    fn manifest() -> PluginManifest {
        tool::manifest("tool-shell", env!("CARGO_PKG_VERSION"), Shell::NAME)
            .description("Runs shell commands in the turn's working directory, streaming output; timeouts kill the process group")
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let config: Config = ctx.config()?;
        config.validate().map_err(|e| Error::new(dispatch_abi::codes::INVALID_CONFIG, e))?;
        let tool = Arc::new(Shell::new(config));
        debug_assert_eq!(tool.name(), Shell::NAME);
        Ok(Tool(tool::serve(ctx.host(), tool, 1)?))
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(Tool);
