//! The `lsp` plugin: the project's language servers for the model.
//!
//! - **Which servers**: per working directory, from `.dispatch/lsp.json`,
//!   else `opencode.json`'s `lsp` key, else the built-in TypeScript server
//!   ([`config`]). One process per (server, project root), started on first
//!   use, shut down after `idle_timeout_ms` unused, restarted after a crash
//!   with a back-off, retried `retry_after_ms` after a failed start or as
//!   soon as its configuration changes ([`manager`]). Their stderr goes to
//!   the log, each line tagged with the server.
//! - **The `lsp` tool**: diagnostics, hover, definition, references,
//!   document and workspace symbols, 1-based positions, short answers
//!   ([`tool`]).
//! - **Diagnostics after edits**: a `session.tool-result` filter appends an
//!   edited file's diagnostics (errors first) to a successful
//!   `write_file` / `edit_file` result, waiting for the server at most
//!   `diagnostics_wait_ms` — so the model fixes its mistakes in the same
//!   turn.
//! - **`GET /conversations/:id/lsp`**: the servers of a conversation's
//!   directory and their state (starting them), as Dispatch's web
//!   frontend shows them.

pub mod client;
pub mod config;
pub mod manager;
pub mod tool;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dispatch_abi::{Context, Error, Plugin, PluginManifest};
use dispatch_contracts::session::{ToolResultNotes, TOOL_RESULT};
use dispatch_contracts::tool::{self as tools, ToolServer};
use serde::Deserialize;

use crate::manager::{Manager, State};
use crate::tool::LspTool;

/// `[plugin.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// How long a server may take to start and answer `initialize`.
    #[serde(default = "default_start_timeout_ms")]
    start_timeout_ms: u64,
    /// How long a server that failed to start is left alone.
    #[serde(default = "default_retry_after_ms")]
    retry_after_ms: u64,
    /// The longest an edit's result waits for the file's diagnostics (and
    /// the `lsp` tool for an answer).
    #[serde(default = "default_diagnostics_wait_ms")]
    diagnostics_wait_ms: u64,
    /// After a file's first diagnostics arrive, how long without another
    /// publish ends the wait (servers often publish syntax errors, then
    /// type errors).
    #[serde(default = "default_settle_ms")]
    settle_ms: u64,
    /// A server unused this long is shut down.
    #[serde(default = "default_idle_timeout_ms")]
    idle_timeout_ms: u64,
    /// Offer the built-in TypeScript server where nothing is configured.
    #[serde(default = "default_true")]
    built_in: bool,
    /// The tools whose successful results get the edited file's
    /// diagnostics (their input's `path`).
    #[serde(default = "default_edit_tools")]
    edit_tools: Vec<String>,
    /// Worker threads of the plugin's runtime.
    #[serde(default = "default_workers")]
    workers: usize,
}

fn default_start_timeout_ms() -> u64 {
    30_000
}
fn default_retry_after_ms() -> u64 {
    30_000
}
fn default_diagnostics_wait_ms() -> u64 {
    10_000
}
fn default_settle_ms() -> u64 {
    300
}
fn default_idle_timeout_ms() -> u64 {
    10 * 60 * 1000
}
fn default_true() -> bool {
    true
}
fn default_edit_tools() -> Vec<String> {
    vec!["write_file".into(), "edit_file".into()]
}
fn default_workers() -> usize {
    1
}

/// The settings every part reads.
#[derive(Debug, Clone)]
pub struct Settings {
    /// See `start_timeout_ms`.
    pub start_timeout: Duration,
    /// See `retry_after_ms`.
    pub retry_after: Duration,
    /// See `diagnostics_wait_ms`.
    pub diagnostics_wait: Duration,
    /// See `settle_ms`.
    pub settle: Duration,
    /// See `built_in`.
    pub built_in: bool,
}

/// One server in `GET /conversations/:id/lsp`.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ServerInfo {
    id: String,
    name: String,
    /// The project root it serves (absolute).
    root: String,
    /// The extensions it handles, with their dot.
    extensions: Vec<String>,
    /// `connected`, `starting`, `error` or `not-started`.
    state: &'static str,
    /// Why it is in `error`, prefixed `"<id> [from <source>]: "`.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// `.dispatch/lsp.json`, `opencode.json` or `built-in`.
    config_source: &'static str,
    /// (ours) The resident memory of its processes, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_bytes: Option<u64>,
}

/// The answer of `GET /conversations/:id/lsp`.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ConversationServers {
    conversation_id: String,
    /// The conversation's own working directory; `null` when it has none.
    cwd: Option<String>,
    servers: Vec<ServerInfo>,
}

/// The servers of `cwd`, started (each within the start timeout).
async fn status(manager: &Manager, settings: &Settings, cwd: &std::path::Path) -> Vec<ServerInfo> {
    let specs = config::for_cwd(cwd, settings.built_in);
    // A status poll starts servers but is not a use: it does not keep them
    // from idling.
    let starts = specs.iter().map(|s| manager.client(s, cwd, false));
    let _ = tokio::time::timeout(
        settings.start_timeout + Duration::from_secs(1),
        futures::future::join_all(starts),
    )
    .await;
    let running: Vec<Option<Arc<client::Client>>> = specs.iter().map(|s| manager.running(s, cwd)).collect();
    // Reading /proc: off the async threads.
    let rss: Vec<Option<u64>> = tokio::task::spawn_blocking(move || {
        running.iter().map(|c| c.as_ref().and_then(|c| c.rss_bytes())).collect()
    })
    .await
    .unwrap_or_default();
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (state, error) = match manager.state(s, cwd) {
                State::Connected => ("connected", None),
                State::Starting => ("starting", None),
                State::Error(e) => ("error", Some(e)),
                State::NotStarted => ("not-started", None),
            };
            ServerInfo {
                id: s.id.clone(),
                name: s.name.clone(),
                root: cwd.display().to_string(),
                extensions: s.extensions.clone(),
                state,
                error,
                config_source: s.source.as_str(),
                rss_bytes: rss.get(i).copied().flatten(),
            }
        })
        .collect()
}

fn status_route(
    host: &dispatch_abi::Host,
    manager: Arc<Manager>,
    settings: Settings,
    runner: dispatch_abi::runtime::Runner,
) -> Result<(), Error> {
    use dispatch_contracts::http::{problem, HttpMethod, HttpResponse, Route};
    let h = host.clone();
    Route::new(HttpMethod::Get, "/conversations/{id}/lsp", move |req| {
        let (host, manager, settings, runner) = (h.clone(), Arc::clone(&manager), settings.clone(), runner.clone());
        async move {
            let id = req.conversation_id("id")?;
            let cwd = dispatch_contracts::workspace::conversation_cwd(&host, &id).await.map_err(problem)?;
            let servers = match &cwd {
                None => Vec::new(),
                Some(cwd) => {
                    let cwd = cwd.clone();
                    runner.run(async move { Ok(status(&manager, &settings, &cwd).await) }).await.map_err(problem)?
                }
            };
            Ok(HttpResponse::ok(&ConversationServers {
                conversation_id: id,
                cwd: cwd.map(|c| c.display().to_string()),
                servers,
            }))
        }
    })
    .operation(
        dispatch_contracts::openapi::Operation::new("List the language servers of a conversation's directory")
            .id("getConversationLsp")
            .tag("conversations")
            .path_param_with(
                "id",
                "The conversation's id",
                serde_json::json!({"type": "string", "pattern": dispatch_contracts::protocol::wire::CONVERSATION_ID_PATTERN}),
            )
            .returns::<ConversationServers>(200, "The servers (started if need be) and their state")
            .error(400, &["bad_request"]),
    )
    .serve(host)
}

/// The plugin.
pub struct Lsp {
    tools: ToolServer,
    manager: Arc<Manager>,
}

impl std::fmt::Debug for Lsp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lsp").field("manager", &self.manager).finish_non_exhaustive()
    }
}

impl Plugin for Lsp {
    fn manifest() -> PluginManifest {
        tools::manifest("lsp", env!("CARGO_PKG_VERSION"), tool::NAME)
            .description(
                "Language servers: the lsp tool, diagnostics after edits, GET /conversations/:id/lsp",
            )
            .provides("service", "http:GET /conversations/{}/lsp")
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let config: Config = ctx.config()?;
        let settings = Settings {
            start_timeout: Duration::from_millis(config.start_timeout_ms),
            retry_after: Duration::from_millis(config.retry_after_ms),
            diagnostics_wait: Duration::from_millis(config.diagnostics_wait_ms),
            settle: Duration::from_millis(config.settle_ms),
            built_in: config.built_in,
        };
        let host = ctx.host();
        let server = ToolServer::new(host, "lsp", config.workers)?;
        let runner = server.runner().clone();
        let manager = Manager::new(settings.clone(), runner.clone());
        server.add(Arc::new(LspTool { manager: Arc::clone(&manager), settings: settings.clone() }))?;
        status_route(host, Arc::clone(&manager), settings.clone(), runner.clone())?;

        // Diagnostics after an edit.
        let (m, s, r) = (Arc::clone(&manager), settings.clone(), runner.clone());
        let edit_tools = config.edit_tools;
        host.add_filter(&TOOL_RESULT, 0, move |mut notes: ToolResultNotes| {
            let target = (!notes.is_error && edit_tools.contains(&notes.tool))
                .then(|| Some((notes.cwd.clone()?, notes.input.get("path")?.as_str()?.to_owned())))
                .flatten();
            let (m, s, r) = (Arc::clone(&m), s.clone(), r.clone());
            async move {
                let Some((cwd, path)) = target else { return Ok(notes) };
                let cwd = PathBuf::from(cwd);
                let Ok(path) = tool::resolve(&cwd, &path) else { return Ok(notes) };
                match r.run(async move { Ok(tool::edit_note(&m, &s, &cwd, &path).await) }).await {
                    Ok(note) => notes.notes.extend(note),
                    // Stopping: the edit stands without its diagnostics.
                    Err(e) => tracing::debug!(error = %e, "no diagnostics for this edit"),
                }
                Ok(notes)
            }
        })?;

        // Idle servers go.
        let idle = Duration::from_millis(config.idle_timeout_ms);
        let reaped = Arc::clone(&manager);
        runner.spawn(async move {
            let tick = (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
            loop {
                tokio::time::sleep(tick).await;
                reaped.reap(idle).await;
            }
        });
        Ok(Lsp { tools: server, manager })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        let manager = Arc::clone(&self.manager);
        let closing = self.tools.runner().run(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), manager.shutdown_all()).await;
            Ok(())
        });
        let _ = futures::executor::block_on(closing);
        // Whatever did not close in time is dropped with the runtime, and
        // a dropped client kills its processes.
        self.tools.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(Lsp);
