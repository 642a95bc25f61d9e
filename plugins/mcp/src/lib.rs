//! The `mcp` plugin: any Model Context Protocol server's tools as Dispatch
//! tools, on the official Rust SDK (`rmcp`).
//!
//! Servers come from `[plugin.config.servers]` and/or a JSON file in Claude
//! Desktop's `mcpServers` shape ([`config`]). At activation every server is
//! started (stdio: a child process in its own process group; or streamable
//! HTTP) and initialised in parallel, waiting at most `start_timeout_ms`;
//! one that fails is reported (`mcp.servers`, `GET
//! /conversations/:id/mcp`, `dispatch plugins`) and retried in the
//! background while the others work. Each tool is offered as
//! `<server>__<tool>` (a `tool.*` service of this plugin, added to every
//! turn through the `session.tools` filter), follows
//! `notifications/tools/list_changed`, and each call goes to the server
//! ([`server`]). With no servers configured the plugin does nothing.
//!
//! A project may bring its own servers ([`project`]): a turn in that
//! directory starts them and gets their tools too; other projects' turns
//! do not. `GET /conversations/:id/mcp` reports a conversation's servers in
//! the web frontend's four states; `GET /mcp/servers` the global ones in
//! the plugin's own.

pub mod config;
pub mod content;
pub mod project;
pub mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dispatch_abi::{codes, Context, Error, Plugin, PluginManifest};
use dispatch_contracts::mcp::{Servers, SERVERS};
use dispatch_contracts::session::{TurnTools, TOOLS};
use dispatch_contracts::tool::{BoxFuture, Tool, ToolContext, ToolError, ToolOutput, ToolServer};
use serde_json::Value;
use tokio::sync::watch;

use crate::config::Config;
use crate::server::{RemoteTool, Server, Tools};

/// Providers accept tool names of at most this many characters
/// (`^[a-zA-Z0-9_-]{1,64}$`).
const MAX_NAME: usize = 64;
/// The longest activation waits for the servers' first start: below the
/// host's default activation deadline (30 s). A server still starting
/// then goes on starting in the background.
const ACTIVATION_WAIT: Duration = Duration::from_secs(20);
/// How long deactivation waits for servers to close before killing them.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The plugin.
pub struct Mcp {
    tools: Arc<ToolServer>,
    servers: Vec<Arc<Server>>,
    shutdown: watch::Sender<bool>,
    /// Each server's supervisor, running on the tools' runner (which stops
    /// whatever outlives the grace period).
    supervisors: Vec<futures::future::BoxFuture<'static, Result<(), Error>>>,
    /// The projects' own servers (unless `project_servers = false`).
    projects: Option<Arc<project::Projects>>,
}

impl std::fmt::Debug for Mcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mcp").field("servers", &self.servers).finish_non_exhaustive()
    }
}

/// `GET /mcp/servers` (ours): the globally configured servers in this
/// plugin's own states (`starting`, `restarting`, `failed`, …), with their
/// restarts — what `dispatch plugins --server` shows an operator.
fn servers_route(host: &dispatch_abi::Host, globals: Vec<Arc<Server>>) -> Result<(), Error> {
    use dispatch_contracts::http::{HttpMethod, HttpResponse, Route};
    Route::new(HttpMethod::Get, "/mcp/servers", move |_req| {
        let servers = Servers { servers: globals.iter().map(|s| s.status()).collect() };
        std::future::ready(Ok(HttpResponse::ok(&servers)))
    })
    .operation(
        dispatch_contracts::openapi::Operation::new("List the MCP servers configured for the whole server")
            .id("getMcpServers")
            .tag("mcp")
            .returns::<Servers>(200, "Every globally configured server, in name order"),
    )
    .serve(host)
}

/// One server in `GET /conversations/:id/mcp`, in the states the web
/// frontend knows.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct RouteServer {
    id: String,
    /// `connecting`, `connected`, `error` or `disconnected`.
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    tool_count: usize,
    /// Where it is configured: `[plugin.config.servers]`, a file's path,
    /// or the project's `.dispatch/mcp.json` / `opencode.json`.
    config_source: String,
    /// (ours) `stdio` or `http`.
    transport: String,
    /// (ours) Starts after the first.
    restarts: u32,
}

impl RouteServer {
    fn of(server: &Server) -> RouteServer {
        use dispatch_contracts::mcp::ServerState as S;
        let status = server.status();
        let state = match status.state {
            S::Starting => "connecting",
            S::Connected => "connected",
            S::Stopped => "disconnected",
            // Restarting after a failure, or given up on.
            _ => "error",
        };
        RouteServer {
            id: status.id,
            state,
            error: status.error.filter(|_| state == "error"),
            tool_count: status.tool_count,
            config_source: server.origin().to_owned(),
            transport: status.transport,
            restarts: status.restarts,
        }
    }

    /// A project server no turn has started (since its file changed).
    fn unused(launch: &config::Launch) -> RouteServer {
        RouteServer {
            id: launch.name.clone(),
            state: "disconnected",
            error: None,
            tool_count: 0,
            config_source: launch.origin.clone(),
            transport: launch.transport.kind().to_owned(),
            restarts: 0,
        }
    }
}

/// The answer of `GET /conversations/:id/mcp`.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ConversationServers {
    conversation_id: String,
    /// The conversation's own working directory; `null` when it has none.
    cwd: Option<String>,
    servers: Vec<RouteServer>,
}

/// `GET /conversations/:id/mcp`: the servers a conversation's turns use —
/// the global ones, then its project's (and the problems of its project's
/// files, as `error` rows named after the file). Nothing is started here:
/// a project's servers start with its first turn.
fn status_route(
    host: &dispatch_abi::Host,
    globals: Vec<Arc<Server>>,
    projects: Option<Arc<project::Projects>>,
) -> Result<(), Error> {
    use dispatch_contracts::http::{problem, HttpMethod, HttpResponse, Route};
    let h = host.clone();
    Route::new(HttpMethod::Get, "/conversations/{id}/mcp", move |req| {
        let (host, globals, projects) = (h.clone(), globals.clone(), projects.clone());
        async move {
            let id = req.conversation_id("id")?;
            let cwd = dispatch_contracts::workspace::conversation_cwd(&host, &id).await.map_err(problem)?;
            let Some(dir) = &cwd else {
                return Ok(HttpResponse::ok(&ConversationServers { conversation_id: id, cwd: None, servers: Vec::new() }));
            };
            let mut servers: Vec<RouteServer> = globals.iter().map(|s| RouteServer::of(s)).collect();
            if let Some(projects) = projects {
                let project = projects.peek(dir);
                for (file, error) in &project.read.problems {
                    servers.push(RouteServer {
                        id: (*file).to_owned(),
                        state: "error",
                        error: Some(error.clone()),
                        tool_count: 0,
                        config_source: (*file).to_owned(),
                        transport: String::new(),
                        restarts: 0,
                    });
                }
                if project.servers.is_empty() {
                    servers.extend(project.read.launches.iter().map(RouteServer::unused));
                } else {
                    servers.extend(project.servers.iter().map(|s| RouteServer::of(s)));
                }
            }
            Ok(HttpResponse::ok(&ConversationServers {
                conversation_id: id,
                cwd: cwd.map(|p| p.to_string_lossy().into_owned()),
                servers,
            }))
        }
    })
    .operation(
        dispatch_contracts::openapi::Operation::new("List the MCP servers a conversation's turns can use")
            .id("getConversationMcp")
            .tag("conversations")
            .path_param_with(
                "id",
                "The conversation's id",
                serde_json::json!({"type": "string", "pattern": dispatch_contracts::protocol::wire::CONVERSATION_ID_PATTERN}),
            )
            .returns::<ConversationServers>(200, "The servers and their state")
            .error(400, &["bad_request"]),
    )
    .serve(host)
}

impl Plugin for Mcp {
    fn manifest() -> PluginManifest {
        PluginManifest::new("mcp", env!("CARGO_PKG_VERSION"))
            .description(
                "Model Context Protocol servers' tools as Dispatch tools (stdio and streamable HTTP)",
            )
            .provides("service", "tool.*")
            .provides("service", SERVERS.name())
            .provides("service", "http:GET /conversations/{}/mcp")
            .provides("service", "http:GET /mcp/servers")
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let config: Config = ctx.config()?;
        let env_file = std::env::var_os("DISPATCH_MCP_CONFIG").filter(|v| !v.is_empty()).map(Into::into);
        let launches = config::compile(&config, env_file, &|name| std::env::var(name).ok())
            .map_err(|e| Error::new(codes::INVALID_CONFIG, e))?;
        // What the SDK logs (a refused request's echoed headers, say) is
        // not ours to word: blot the secrets out of every record instead.
        dispatch_abi::redact_in_logs(
            launches.iter().flat_map(|l| l.secrets.values().map(str::to_owned).collect::<Vec<_>>()),
        );
        let host = ctx.host();
        let tools = Arc::new(ToolServer::new(host, "mcp", config.workers)?);
        let bridge = Arc::new(Bridge { tools: Arc::clone(&tools), names: Mutex::default() });
        let start_timeout = Duration::from_millis(config.start_timeout_ms);
        let servers: Vec<Arc<Server>> = launches
            .into_iter()
            .map(|l| Server::new(l, start_timeout, config.max_restarts, tools.runner().clone()))
            .collect();

        let listed = servers.clone();
        host.provide_sync(&SERVERS, move |_: Value| {
            Ok(Servers { servers: listed.iter().map(|s| s.status()).collect() })
        })?;
        let projects = config.project_servers.then(|| {
            project::Projects::new(
                config.clone(),
                Arc::clone(&bridge) as Arc<dyn Tools>,
                tools.runner().clone(),
            )
        });
        status_route(host, servers.clone(), projects.clone())?;
        servers_route(host, servers.clone())?;
        // Extend every turn's tools with ours — the global servers', then
        // its project's, started for it — before filters that narrow.
        let (offered, globals, turn_projects, runner) =
            (Arc::clone(&bridge), servers.clone(), projects.clone(), tools.runner().clone());
        host.add_filter(&TOOLS, -100, move |mut turn: TurnTools| {
            let mut names = offered.names_of(&globals);
            let (offered, runner) = (Arc::clone(&offered), runner.clone());
            let project = turn_projects.clone().zip(turn.cwd.clone().map(std::path::PathBuf::from));
            async move {
                if let Some((projects, cwd)) = project {
                    match runner.run(async move { Ok(projects.for_turn(&cwd).await) }).await {
                        Ok(project) => names.extend(offered.names_of(&project.servers)),
                        // Stopping: the turn goes on with the global servers.
                        Err(e) => tracing::debug!(error = %e, "no project servers for this turn"),
                    }
                }
                for name in names {
                    if !turn.tools.contains(&name) {
                        turn.tools.push(name);
                    }
                }
                Ok(turn)
            }
        })?;

        let (shutdown, stop_rx) = watch::channel(false);
        let mut supervisors: Vec<futures::future::BoxFuture<'static, Result<(), Error>>> = Vec::new();
        let mut firsts = Vec::new();
        for s in &servers {
            let (first, started) = tokio::sync::oneshot::channel();
            let publish: Arc<dyn Tools> = Arc::clone(&bridge) as Arc<dyn Tools>;
            let supervise = server::supervise(Arc::clone(s), publish, stop_rx.clone(), first);
            supervisors.push(Box::pin(tools.runner().run(async move {
                supervise.await;
                Ok(())
            })));
            firsts.push(started);
        }
        if !firsts.is_empty() {
            // Every first attempt, in parallel, under one deadline (a hair
            // over the per-server one, which ends each attempt itself).
            let deadline = (start_timeout + Duration::from_millis(500)).min(ACTIVATION_WAIT);
            // The host stopping (SIGTERM during start-up) ends the wait at
            // once: the supervisors go on trying until deactivation.
            let stopping = host.shutdown_signal();
            let waited = tools.runner().run(async move {
                tokio::select! {
                    _ = tokio::time::timeout(deadline, futures::future::join_all(firsts)) => {}
                    () = stopping => {}
                }
                Ok(())
            });
            // Each supervisor has logged how its server's start went.
            let _ = futures::executor::block_on(waited);
        }
        Ok(Mcp { tools, servers, shutdown, supervisors, projects })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        let _ = self.shutdown.send(true);
        let supervisors = std::mem::take(&mut self.supervisors);
        if !supervisors.is_empty() {
            let waited = self.tools.runner().run(async move {
                let _ = tokio::time::timeout(STOP_GRACE, futures::future::join_all(supervisors)).await;
                Ok(())
            });
            let _ = futures::executor::block_on(waited);
        }
        if let Some(projects) = self.projects.clone() {
            let waited = self.tools.runner().run(async move {
                projects.shutdown(STOP_GRACE).await;
                Ok(())
            });
            let _ = futures::executor::block_on(waited);
        }
        // Whatever did not close in time goes now, children included.
        for s in &self.servers {
            s.kill_group();
        }
        self.tools.stop();
        Ok(())
    }
}

/// Turns each server's tool list into Dispatch tools.
struct Bridge {
    tools: Arc<ToolServer>,
    /// Dispatch name → its server, for every tool offered now.
    names: Mutex<HashMap<String, Arc<Server>>>,
}

impl Bridge {
    /// The names of the tools `servers` offer now.
    fn names_of(&self, servers: &[Arc<Server>]) -> Vec<String> {
        let names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        let mut of: Vec<String> = names
            .iter()
            .filter(|(_, s)| servers.iter().any(|o| Arc::ptr_eq(o, s)))
            .map(|(n, _)| n.clone())
            .collect();
        of.sort();
        of
    }
}

impl Tools for Bridge {
    fn publish(&self, server: &Arc<Server>, listed: Vec<RemoteTool>) {
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        let before: Vec<String> =
            names.iter().filter(|(_, s)| Arc::ptr_eq(s, server)).map(|(n, _)| n.clone()).collect();
        for n in &before {
            names.remove(n);
        }
        // A project's server may share its name with another project's:
        // its tools' names then differ by a hash of the project.
        let salt = server.project().map(|p| p.display().to_string()).unwrap_or_default();
        let mut now = Vec::new();
        for remote in listed {
            let name = tool_name(server.name(), &remote.name, &salt, |n| names.contains_key(n));
            let tool = McpTool { name: name.clone(), server: Arc::clone(server), remote };
            match self.tools.add(Arc::new(tool)) {
                Ok(()) => {
                    names.insert(name.clone(), Arc::clone(server));
                    now.push(name);
                }
                Err(e) => tracing::warn!(server = %server.name(), tool = %name, "tool left out: {e}"),
            }
        }
        for gone in before.iter().filter(|n| !now.contains(n)) {
            self.tools.remove(gone);
        }
    }
}

/// The Dispatch name of `tool` of `server`: `<server>__<tool>` with
/// anything but ASCII letters, digits, `_` and `-` made `_`; when that is
/// too long or already `taken`, shortened and suffixed with a hash of the
/// two names, so it stays the same across restarts.
fn tool_name(server: &str, tool: &str, salt: &str, taken: impl Fn(&str) -> bool) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
    };
    let name = format!("{}__{}", clean(server), clean(tool));
    if name.len() <= MAX_NAME && !taken(&name) {
        return name;
    }
    // FNV-1a: small, stable across builds and platforms.
    let mut hash: u32 = 0x811c_9dc5;
    for b in salt.bytes().chain([0]).chain(server.bytes()).chain([0]).chain(tool.bytes()) {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let suffix = format!("_{hash:08x}");
    let mut short = name;
    short.truncate(MAX_NAME - suffix.len());
    let named = short + &suffix;
    if taken(&named) && !salt.is_empty() {
        // Two projects' servers of one name: tell them apart again.
        return tool_name(server, tool, &format!("{salt}\0"), taken);
    }
    named
}

/// One MCP tool as a Dispatch tool.
struct McpTool {
    name: String,
    server: Arc<Server>,
    remote: RemoteTool,
}

impl Tool for McpTool {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.remote.description
    }

    fn input_schema(&self) -> Value {
        self.remote.input_schema.clone()
    }

    fn concurrency_safe(&self) -> bool {
        self.remote.read_only
    }

    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        let server = Arc::clone(&self.server);
        let name = self.remote.name.clone();
        Box::pin(async move { server.call(&name, input, ctx).await })
    }
}

dispatch_abi::export_plugin!(Mcp);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_fit_what_providers_accept() {
        let none = |_: &str| false;
        assert_eq!(tool_name("fs", "read_file", "", none), "fs__read_file");
        assert_eq!(tool_name("my server", "get.weather/now", "", none), "my_server__get_weather_now");
        let long = tool_name("server", &"x".repeat(100), "", none);
        assert_eq!(long.len(), MAX_NAME);
        assert_eq!(long, tool_name("server", &"x".repeat(100), "", none), "not stable");
        assert_ne!(long, tool_name("server", &"x".repeat(101), "", none));
        // Two tools that clean to the same name do not collide.
        let taken = |n: &str| n == "a__b_c";
        let second = tool_name("a", "b.c", "", taken);
        assert!(second.starts_with("a__b_c_") && second.len() == "a__b_c".len() + 9, "{second}");
        assert!(second.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    }
}
