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

pub mod config;
pub mod content;
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
}

impl std::fmt::Debug for Mcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mcp").field("servers", &self.servers).finish_non_exhaustive()
    }
}

/// The answer of `GET /conversations/:id/mcp`.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ConversationServers {
    conversation_id: String,
    /// The conversation's own working directory, if it has one.
    cwd: Option<String>,
    servers: Vec<dispatch_contracts::mcp::ServerStatus>,
}

/// `GET /conversations/:id/mcp`: the servers a conversation's turns can
/// use. They are configured for the whole server, so every conversation
/// lists the same.
fn status_route(host: &dispatch_abi::Host, servers: Vec<Arc<Server>>) -> Result<(), Error> {
    use dispatch_contracts::http::{problem, HttpMethod, HttpResponse, Route};
    let h = host.clone();
    Route::new(HttpMethod::Get, "/conversations/{id}/mcp", move |req| {
        let (host, servers) = (h.clone(), servers.clone());
        async move {
            let id = req.conversation_id("id")?;
            let cwd = dispatch_contracts::workspace::conversation_cwd(&host, &id).await.map_err(problem)?;
            Ok(HttpResponse::ok(&ConversationServers {
                conversation_id: id,
                cwd: cwd.map(|p| p.to_string_lossy().into_owned()),
                servers: servers.iter().map(|s| s.status()).collect(),
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
        status_route(host, servers.clone())?;
        // Extend every turn's tools with ours, before filters that narrow.
        let offered = Arc::clone(&tools);
        host.add_filter(&TOOLS, -100, move |mut turn: TurnTools| {
            for name in offered.names() {
                if !turn.tools.contains(&name) {
                    turn.tools.push(name);
                }
            }
            std::future::ready(Ok(turn))
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
        Ok(Mcp { tools, servers, shutdown, supervisors })
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
    names: Mutex<HashMap<String, String>>,
}

impl Tools for Bridge {
    fn publish(&self, server: &Arc<Server>, listed: Vec<RemoteTool>) {
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        let before: Vec<String> =
            names.iter().filter(|(_, s)| s.as_str() == server.name()).map(|(n, _)| n.clone()).collect();
        for n in &before {
            names.remove(n);
        }
        let mut now = Vec::new();
        for remote in listed {
            let name = tool_name(server.name(), &remote.name, |n| names.contains_key(n));
            let tool = McpTool { name: name.clone(), server: Arc::clone(server), remote };
            match self.tools.add(Arc::new(tool)) {
                Ok(()) => {
                    names.insert(name.clone(), server.name().to_owned());
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
fn tool_name(server: &str, tool: &str, taken: impl Fn(&str) -> bool) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
    };
    let name = format!("{}__{}", clean(server), clean(tool));
    if name.len() <= MAX_NAME && !taken(&name) {
        return name;
    }
    // FNV-1a: small, stable across builds and platforms.
    let mut hash: u32 = 0x811c_9dc5;
    for b in server.bytes().chain([0]).chain(tool.bytes()) {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let suffix = format!("_{hash:08x}");
    let mut short = name;
    short.truncate(MAX_NAME - suffix.len());
    short + &suffix
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
        assert_eq!(tool_name("fs", "read_file", none), "fs__read_file");
        assert_eq!(tool_name("my server", "get.weather/now", none), "my_server__get_weather_now");
        let long = tool_name("server", &"x".repeat(100), none);
        assert_eq!(long.len(), MAX_NAME);
        assert_eq!(long, tool_name("server", &"x".repeat(100), none), "not stable");
        assert_ne!(long, tool_name("server", &"x".repeat(101), none));
        // Two tools that clean to the same name do not collide.
        let taken = |n: &str| n == "a__b_c";
        let second = tool_name("a", "b.c", taken);
        assert!(second.starts_with("a__b_c_") && second.len() == "a__b_c".len() + 9, "{second}");
        assert!(second.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    }
}
