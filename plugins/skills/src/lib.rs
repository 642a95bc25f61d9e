//! The `skills` plugin: task recipes in Markdown that the model loads when
//! it needs them, with the `load_skill` tool.
//!
//! Every turn, a `session.tools` filter describes `load_skill` for the
//! turn's working directory: the skills found there and in the server
//! user's home (see [`catalog`] for the layouts and precedence), with their
//! names as the `name` parameter's `enum`. A call reads the file then, so
//! an edited skill is current at once.
//!
//! `[plugin.config]`: `home` — the directory whose `.skills/` and
//! `.claude/skills/` are the user's skills (default `$HOME`).

pub mod catalog;

use std::path::PathBuf;
use std::sync::Arc;

use dispatch_abi::{Context, Error, Plugin, PluginManifest};
use dispatch_contracts::session::{ToolDescription, TurnTools, TOOLS};
use dispatch_contracts::tool::{self, BoxFuture, Tool, ToolContext, ToolError, ToolOutput, ToolServer};
use serde_json::{json, Value};

/// The tool's name.
pub const NAME: &str = "load_skill";

/// `[plugin.config]`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The user's directory (default `$HOME`).
    #[serde(default)]
    home: Option<PathBuf>,
}

/// The `load_skill` tool.
#[derive(Debug)]
struct LoadSkill {
    home: Option<PathBuf>,
}

/// The input schema, with `names` as the choices when there are any.
fn schema(names: &[&str]) -> Value {
    let mut name = json!({"type": "string", "description": "The name of the skill to load."});
    if !names.is_empty() {
        name["enum"] = json!(names);
    }
    json!({"type": "object", "properties": {"name": name}, "required": ["name"]})
}

impl Tool for LoadSkill {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "Load a skill by name. No skills are currently available."
    }

    fn input_schema(&self) -> Value {
        schema(&[])
    }

    fn concurrency_safe(&self) -> bool {
        true
    }

    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        let home = self.home.clone();
        Box::pin(async move {
            let Some(name) = input.get("name").and_then(Value::as_str) else {
                return Ok(ToolOutput::error("Error: Missing or invalid \"name\" parameter."));
            };
            if !catalog::valid_name(name) {
                return Ok(ToolOutput::error(format!(
                    "Error: Invalid skill name \"{name}\". Name must not contain path separators or \"..\"."
                )));
            }
            let name = name.to_owned();
            let found = tokio::task::spawn_blocking(move || {
                let skills = catalog::catalog(ctx.cwd.as_deref(), home.as_deref());
                skills.get(&name).map(catalog::body).ok_or(name)
            })
            .await
            .map_err(|e| ToolError::Failed(format!("reading the skills failed: {e}")))?;
            Ok(match found {
                Ok(Ok(body)) => ToolOutput::ok(body),
                Ok(Err(e)) => ToolOutput::error(format!("Error: the skill could not be read: {e}")),
                Err(name) => ToolOutput::error(format!("Error: unknown skill: {name}")),
            })
        })
    }
}

/// The plugin.
#[derive(Debug)]
pub struct Skills(ToolServer);

impl Plugin for Skills {
    fn manifest() -> PluginManifest {
        tool::manifest("skills", env!("CARGO_PKG_VERSION"), NAME).description(
            "Skills: Markdown task recipes from the project and the user's home, loaded with load_skill",
        )
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let config: Config = ctx.config()?;
        let home =
            config.home.or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from));
        let host = ctx.host();
        let server = tool::serve(host, Arc::new(LoadSkill { home: home.clone() }), 1)?;
        // Filters are polled on the caller's thread: the directory walk
        // runs on this plugin's runtime, off it.
        let runner = server.runner().clone();
        host.add_filter(&TOOLS, 0, move |mut turn: TurnTools| {
            let home = home.clone();
            let runner = runner.clone();
            async move {
                if !turn.tools.iter().any(|t| t == NAME) {
                    return Ok(turn);
                }
                let cwd = turn.cwd.clone().map(PathBuf::from);
                let walk = async move {
                    tokio::task::spawn_blocking(move || catalog::catalog(cwd.as_deref(), home.as_deref()))
                        .await
                        .map_err(|e| Error::new(dispatch_abi::codes::PLUGIN, e.to_string()))
                };
                let skills = match runner.run(walk).await {
                    Ok(skills) => skills,
                    Err(e) => {
                        // Stopping: the tool keeps its own description.
                        tracing::debug!(error = %e, "skills not listed for this turn");
                        return Ok(turn);
                    }
                };
                let names: Vec<&str> = skills.keys().map(String::as_str).collect();
                turn.describe.insert(
                    NAME.to_owned(),
                    ToolDescription {
                        description: Some(catalog::describe(&skills)),
                        input_schema: Some(schema(&names)),
                    },
                );
                Ok(turn)
            }
        })?;
        Ok(Skills(server))
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(Skills);
