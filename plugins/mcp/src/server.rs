//! One MCP server: its supervisor (start, initialise, list tools, restart
//! with backoff, give up), its calls, and the notifications it sends.
//!
//! A server is driven by one task on the plugin's runtime, [`supervise`].
//! While connected, [`Server::live`] holds the peer that calls go through
//! and a `closed` flag that flips when the connection ends, so a call in
//! flight ends with an error naming the server instead of waiting for its
//! timeout.

use dispatch_abi::runtime::Runner;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dispatch_contracts::mcp::{ServerState, ServerStatus};
use dispatch_contracts::tool::{OutputSink, OutputStream, ToolContext, ToolError, ToolOutput};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientCapabilities, ClientConfig, ClientRequest, Implementation,
    JsonRpcMessage, PingRequest, ProgressNotificationParam, ProgressToken, ServerNotification, ServerResult,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RequestHandle, RunningService};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport as RmcpTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt as _};
use serde_json::Value;
use tokio::sync::{watch, Notify};

use crate::config::{Launch, Transport};
use crate::content;

/// A connection that stayed up this long resets the failure count.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// How long a server gets to answer a ping after a call timed out.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How many lines of a stdio server's stderr are kept for error messages.
const STDERR_LINES: usize = 8;
/// Longest stderr line read into memory; the rest of a longer line is
/// skipped unread into memory (a server writing 300 MB without a newline
/// took the host's memory with it).
const STDERR_LINE_BYTES: usize = 16 * 1024;

/// The tools a server offers, as MCP describes them.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteTool {
    /// The MCP name.
    pub name: String,
    /// Its description (empty when it has none).
    pub description: String,
    /// Its input schema.
    pub input_schema: Value,
    /// The server says it only reads (`annotations.readOnlyHint`).
    pub read_only: bool,
}

/// What the supervisor tells the bridge.
pub trait Tools: Send + Sync + 'static {
    /// The server's tools are now `tools` (empty: withdraw them all).
    fn publish(&self, server: &Arc<Server>, tools: Vec<RemoteTool>);
}

/// The live connection.
#[derive(Clone)]
struct Live {
    peer: Peer<RoleClient>,
    /// Flips to `true` when the connection ends.
    closed: watch::Receiver<bool>,
    /// A call found this connection unresponsive: restart it. Per
    /// connection, so a late signal (a ping that failed as its connection
    /// closed, or a second timeout) cannot restart the next, healthy one.
    unresponsive: Arc<Notify>,
}

#[derive(Debug)]
struct Status {
    state: ServerState,
    error: Option<String>,
    restarts: u32,
    tool_count: usize,
}

/// One configured server.
pub struct Server {
    launch: Launch,
    start_timeout: Duration,
    max_restarts: u32,
    status: Mutex<Status>,
    live: Mutex<Option<Live>>,
    /// Progress token → the call's output.
    progress: Mutex<Progress>,
    /// `notifications/tools/list_changed` arrived.
    list_changed: Notify,
    /// The last lines a stdio server wrote to stderr.
    stderr: Mutex<VecDeque<String>>,
    /// The process group of the running stdio server.
    pgid: Mutex<Option<i32>>,
    /// Where its background tasks run (they stop with the plugin).
    runner: Runner,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("launch", &self.launch).finish_non_exhaustive()
    }
}

impl Server {
    /// A server not started yet.
    pub fn new(launch: Launch, start_timeout: Duration, max_restarts: u32, runner: Runner) -> Arc<Self> {
        Arc::new(Server {
            launch,
            start_timeout,
            max_restarts,
            status: Mutex::new(Status {
                state: ServerState::Starting,
                error: None,
                restarts: 0,
                tool_count: 0,
            }),
            live: Mutex::new(None),
            progress: Mutex::new(Progress::default()),
            list_changed: Notify::new(),
            stderr: Mutex::new(VecDeque::new()),
            pgid: Mutex::new(None),
            runner,
        })
    }

    /// Its configured name.
    pub fn name(&self) -> &str {
        &self.launch.name
    }

    /// The project whose turns use it (`None`: every turn).
    pub fn project(&self) -> Option<&std::path::Path> {
        self.launch.project.as_deref()
    }

    /// Where it is configured.
    pub fn origin(&self) -> &str {
        &self.launch.origin
    }

    /// How it is doing.
    pub fn status(&self) -> ServerStatus {
        let s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        ServerStatus {
            id: self.launch.name.clone(),
            state: s.state,
            tool_count: s.tool_count,
            error: s.error.clone(),
            transport: self.launch.transport.kind().to_owned(),
            restarts: s.restarts,
        }
    }

    /// `text` with the server's configured secrets blotted out.
    pub fn redact(&self, text: &str) -> String {
        self.launch.secrets.redact(text).into_owned()
    }

    fn set_state(&self, state: ServerState, error: Option<String>) {
        let error = error.map(|e| self.redact(&e));
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        s.state = state;
        if error.is_some() || state == ServerState::Connected {
            s.error = error;
        }
    }

    /// Kill the running stdio server's whole process group (it may have
    /// started children of its own). The id is taken, not read: once the
    /// group is gone the number can be reused by an unrelated process group,
    /// and this runs again after every connection and at deactivation.
    pub fn kill_group(&self) {
        if let Some(pgid) = self.pgid.lock().unwrap_or_else(PoisonError::into_inner).take() {
            // SAFETY: killpg takes plain integers; a group that is gone
            // makes it fail with ESRCH, which is fine.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }

    /// Call the MCP tool `name` with `input`; every way it can end becomes
    /// a result for the model — with the server's secrets blotted out of
    /// any error (a remote server may quote the header it refused).
    pub async fn call(
        self: Arc<Self>,
        name: &str,
        input: Value,
        ctx: ToolContext,
    ) -> Result<ToolOutput, ToolError> {
        let server = Arc::clone(&self);
        match self.call_unredacted(name, input, ctx).await {
            // A tool's own error (`isError`) is a result too.
            Ok(mut output) => {
                output.content = server.redact(&output.content);
                Ok(output)
            }
            Err(ToolError::Failed(m)) => Err(ToolError::Failed(server.redact(&m))),
            Err(ToolError::InvalidInput(m)) => Err(ToolError::InvalidInput(server.redact(&m))),
        }
    }

    async fn call_unredacted(
        self: Arc<Self>,
        name: &str,
        input: Value,
        ctx: ToolContext,
    ) -> Result<ToolOutput, ToolError> {
        let server = self.name();
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let Some(mut live) = live else {
            let status = self.status();
            let why = status.error.map(|e| format!(": {e}")).unwrap_or_default();
            return Err(ToolError::Failed(format!(
                "the MCP server `{server}` is not connected ({}{why})",
                status.state.as_str()
            )));
        };
        let arguments = match input {
            Value::Object(map) => Some(map),
            Value::Null => None,
            other => {
                return Err(ToolError::InvalidInput(format!(
                    "the arguments must be a JSON object, not {}",
                    kind_of(&other)
                )))
            }
        };
        let mut params = CallToolRequestParams::new(name.to_owned());
        if let Some(arguments) = arguments {
            params = params.with_arguments(arguments);
        }
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let mut handle = live
            .peer
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await
            .map_err(|e| ToolError::Failed(format!("cannot reach the MCP server `{server}`: {e}")))?;
        let token = handle.progress_token.clone();
        self.progress.lock().unwrap_or_else(PoisonError::into_inner).register(&token, ctx.output.clone());
        let timeout = self.launch.call_timeout;
        let outcome = tokio::select! {
            answer = &mut handle.rx => match answer {
                Ok(Ok(ServerResult::CallToolResult(result))) => Ok(content::convert(&result)),
                Ok(Ok(other)) => Err(ToolError::Failed(format!(
                    "the MCP server `{server}` answered the call with something other than a tool result ({})",
                    serde_json::to_value(&other).ok().and_then(|v| v.get("resultType").cloned()).unwrap_or_default()
                ))),
                Ok(Err(e)) => Err(ToolError::Failed(format!("the MCP server `{server}` refused the call: {e}"))),
                Err(_) => Err(ToolError::Failed(format!(
                    "the MCP server `{server}` went away during the call; it is being restarted"
                ))),
            },
            () = flipped(&mut live.closed) => Err(ToolError::Failed(format!(
                "the MCP server `{server}` exited during the call; it is being restarted"
            ))),
            () = ctx.abort.aborted() => {
                cancel(handle, "the turn was aborted").await;
                Err(ToolError::Failed("the call was cancelled: the turn was aborted".to_owned()))
            }
            () = tokio::time::sleep(timeout) => {
                cancel(handle, "timed out").await;
                // Without holding the call's result back.
                self.runner.spawn(Arc::clone(&self).check_responsive(live.clone()));
                Ok(ToolOutput::timed_out(format!(
                    "Tool `{name}` failed: the MCP server `{server}` did not answer within {} s; the call was cancelled",
                    timeout.as_secs_f64()
                )))
            }
        };
        self.progress.lock().unwrap_or_else(PoisonError::into_inner).sinks.remove(&token);
        outcome
    }

    /// After a timeout: a server that does not answer a ping either is
    /// hung, and is restarted.
    async fn check_responsive(self: Arc<Self>, live: Live) {
        let ping = live.peer.send_request(ClientRequest::PingRequest(PingRequest::default()));
        if !matches!(tokio::time::timeout(PING_TIMEOUT, ping).await, Ok(Ok(_))) && !*live.closed.borrow() {
            tracing::warn!(server = %self.name(), "the MCP server does not answer a ping; restarting it");
            live.unresponsive.notify_one();
        }
    }

    fn on_progress(&self, params: &ProgressNotificationParam) {
        let mut line = match params.total {
            Some(total) => format!("progress {}/{}", number(params.progress), number(total)),
            None => format!("progress {}", number(params.progress)),
        };
        if let Some(message) = &params.message {
            line.push_str(": ");
            line.push_str(message);
        }
        line.push('\n');
        let line = self.redact(&line);
        self.progress.lock().unwrap_or_else(PoisonError::into_inner).deliver(&params.progress_token, line);
    }

    /// Start the server and initialise it; answers the running service.
    async fn connect(self: &Arc<Self>) -> Result<RunningService<RoleClient, Handler>, String> {
        let handler = Handler(Arc::clone(self));
        match &self.launch.transport {
            Transport::Stdio { command, args, env, cwd } => {
                let mut cmd = tokio::process::Command::new(command);
                // A clean environment, as the official SDKs give stdio
                // servers and as `run_shell` gets: a server's tools may show
                // the model its environment, and dispatch's holds provider
                // keys.
                cmd.args(args).kill_on_drop(true).env_clear().envs(dispatch_tools::shell::base_env());
                for (k, v) in env {
                    cmd.env(k, v);
                }
                if let Some(cwd) = cwd {
                    cmd.current_dir(cwd);
                }
                let mut wrapped = process_wrap::tokio::CommandWrap::from(cmd);
                wrapped.wrap(process_wrap::tokio::ProcessGroup::leader());
                let (transport, stderr) = rmcp::transport::TokioChildProcess::builder(wrapped)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot start `{command}`: {e}"))?;
                let pid = transport.id().and_then(|p| i32::try_from(p).ok());
                *self.pgid.lock().unwrap_or_else(PoisonError::into_inner) = pid;
                self.stderr.lock().unwrap_or_else(PoisonError::into_inner).clear();
                let (read_all, stderr_done) = tokio::sync::oneshot::channel();
                if let Some(stderr) = stderr {
                    self.runner.spawn(read_stderr(Arc::clone(self), stderr, read_all));
                }
                match handler.serve(Tap { inner: transport, server: Arc::clone(self) }).await {
                    Ok(running) => Ok(running),
                    Err(e) => {
                        // A server that dies at start says why on stderr:
                        // give the reader a moment to reach its end.
                        let _ = tokio::time::timeout(Duration::from_millis(500), stderr_done).await;
                        Err(format!("initialisation failed: {e}{}", self.stderr_tail()))
                    }
                }
            }
            Transport::Http { url, headers } => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let client = reqwest::Client::builder()
                    .build()
                    .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
                let mut config =
                    rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                        url.as_str(),
                    );
                config.custom_headers.extend(headers.iter().cloned());
                let transport = rmcp::transport::StreamableHttpClientTransport::with_client(client, config);
                let tapped = Tap { inner: transport, server: Arc::clone(self) };
                handler.serve(tapped).await.map_err(|e| format!("initialisation failed: {e}"))
            }
        }
    }

    fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.is_empty() {
            String::new()
        } else {
            format!(" (its stderr: {})", lines.iter().cloned().collect::<Vec<_>>().join(" | "))
        }
    }
}

/// Log a stdio server's stderr, keeping the last lines for error messages.
async fn read_stderr(
    server: Arc<Server>,
    stderr: tokio::process::ChildStderr,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let mut reader = tokio::io::BufReader::new(stderr);
    // Read a little past the bound and redact before cutting, so a secret
    // across the cut is not left half shown.
    while let Some(line) = next_line_bounded(&mut reader, STDERR_LINE_BYTES + 4096).await {
        let mut line = server.redact(&line);
        if line.len() > STDERR_LINE_BYTES {
            let mut cut = STDERR_LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        tracing::debug!(server = %server.name(), "{line}");
        let mut kept = server.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() == STDERR_LINES {
            kept.pop_front();
        }
        kept.push_back(line.chars().take(300).collect());
    }
    let _ = done.send(());
}

/// The next line of `reader` (without its newline), at most `max` bytes of
/// it: the rest of a longer line is read and dropped in buffer-sized
/// pieces, never held. `None` at the end of the stream or on an error.
async fn next_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> Option<String> {
    use tokio::io::AsyncBufReadExt as _;
    let mut line = Vec::new();
    let mut any = false;
    loop {
        let buf = reader.fill_buf().await.ok()?;
        if buf.is_empty() {
            return any.then(|| String::from_utf8_lossy(&line).into_owned());
        }
        any = true;
        let (piece, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        let room = max.saturating_sub(line.len());
        line.extend_from_slice(&piece[..piece.len().min(room)]);
        let used = done.unwrap_or(buf.len());
        reader.consume(used);
        if done.is_some() {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Some(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

/// Ask the server to stop working on a request.
async fn cancel(handle: RequestHandle<RoleClient>, reason: &str) {
    if let Err(e) = handle.cancel(Some(reason.to_owned())).await {
        tracing::debug!(error = %e, "cannot send notifications/cancelled");
    }
}

/// A transport that hands progress notifications to their calls as they
/// are read. rmcp runs notification handlers as tasks of their own, so a
/// call's last progress could lose the race with its result (read after
/// it); here it is delivered before the next message is even read.
struct Tap<T> {
    inner: T,
    server: Arc<Server>,
}

impl<T: RmcpTransport<RoleClient>> RmcpTransport<RoleClient> for Tap<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let message = self.inner.receive().await;
        if let Some(JsonRpcMessage::Notification(n)) = &message {
            if let ServerNotification::ProgressNotification(p) = &n.notification {
                self.server.on_progress(&p.params);
            }
        }
        message
    }

    fn close(&mut self) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

/// The client side's handler: what the server may tell us.
struct Handler(Arc<Server>);

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.0.list_changed.notify_one();
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("dispatch", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// What ends a connection.
enum Ended {
    /// The server went away (exited, closed the stream).
    Closed(String),
    /// It stopped answering.
    Unresponsive,
    /// The plugin is stopping.
    Shutdown,
}

/// Run `server` until `shutdown` fires: start it, offer its tools, restart
/// it when it exits or hangs (backoff 0.5 s doubling to 30 s), and give up
/// after `max_restarts` failures in a row. `first` is signalled once the
/// first start attempt is over, either way.
pub async fn supervise(
    server: Arc<Server>,
    tools: Arc<dyn Tools>,
    mut shutdown: watch::Receiver<bool>,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut failures: u32 = 0;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let attempt = tokio::select! {
            r = tokio::time::timeout(server.start_timeout, start(&server)) => r,
            () = flipped(&mut shutdown) => break,
        };
        let ended = match attempt {
            Ok(Ok((running, listed))) => {
                let connected_at = Instant::now();
                tracing::info!(server = %server.name(), tools = listed.len(), "MCP server connected");
                offer(&server, &tools, listed);
                server.set_state(ServerState::Connected, None);
                first_over(&mut first);
                let ended = serve(&server, &tools, running, &mut shutdown).await;
                if connected_at.elapsed() >= HEALTHY_AFTER {
                    failures = 0;
                }
                ended
            }
            Ok(Err(e)) => Ended::Closed(e),
            Err(_) => {
                server.kill_group();
                Ended::Closed(format!(
                    "did not start and initialise within {} s{}",
                    server.start_timeout.as_secs_f64(),
                    server.stderr_tail()
                ))
            }
        };
        let error = match ended {
            Ended::Shutdown => break,
            Ended::Closed(e) => server.redact(&e),
            Ended::Unresponsive => {
                "stopped answering (no answer to a ping after a call timed out)".to_owned()
            }
        };
        failures += 1;
        if failures > server.max_restarts {
            let error = format!("{error}; gave up after {} failures in a row", failures);
            tracing::error!(server = %server.name(), "MCP server failed: {error}");
            offer(&server, &tools, Vec::new());
            server.set_state(ServerState::Failed, Some(error));
            first_over(&mut first);
            return;
        }
        tracing::warn!(server = %server.name(), "MCP server {error}; restarting");
        server.set_state(ServerState::Restarting, Some(error));
        first_over(&mut first);
        let delay = Duration::from_millis(500u64.saturating_mul(1 << (failures - 1).min(6)))
            .min(Duration::from_secs(30));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = flipped(&mut shutdown) => break,
        }
        server.status.lock().unwrap_or_else(PoisonError::into_inner).restarts += 1;
    }
    // Stopped (the plugin, or a project whose configuration changed): its
    // tools go — after the loop, so a start finishing as the stop came
    // cannot leave them behind.
    offer(&server, &tools, Vec::new());
    server.set_state(ServerState::Stopped, None);
}

/// Offer `listed` as the server's tools (empty: withdraw them) and count
/// them in its status.
fn offer(server: &Arc<Server>, tools: &Arc<dyn Tools>, listed: Vec<RemoteTool>) {
    server.status.lock().unwrap_or_else(PoisonError::into_inner).tool_count = listed.len();
    tools.publish(server, listed);
}

/// The first start attempt is over (either way): activation stops waiting.
fn first_over(first: &mut Option<tokio::sync::oneshot::Sender<()>>) {
    if let Some(f) = first.take() {
        let _ = f.send(());
    }
}

/// Start and list the tools.
async fn start(
    server: &Arc<Server>,
) -> Result<(RunningService<RoleClient, Handler>, Vec<RemoteTool>), String> {
    let running = server.connect().await?;
    let tools = list_tools(running.peer()).await?;
    Ok((running, tools))
}

async fn list_tools(peer: &Peer<RoleClient>) -> Result<Vec<RemoteTool>, String> {
    let listed = peer.list_all_tools().await.map_err(|e| format!("tools/list failed: {e}"))?;
    Ok(listed
        .iter()
        .filter_map(|t| serde_json::to_value(t).ok())
        .filter_map(|t| {
            let name = t.get("name")?.as_str()?.to_owned();
            let description = t
                .get("description")
                .or_else(|| t.get("title"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let input_schema =
                t.get("inputSchema").cloned().unwrap_or_else(|| serde_json::json!({"type": "object"}));
            let read_only = t.pointer("/annotations/readOnlyHint").and_then(Value::as_bool).unwrap_or(false);
            Some(RemoteTool { name, description, input_schema, read_only })
        })
        .collect())
}

/// Serve one connection until it ends.
async fn serve(
    server: &Arc<Server>,
    tools: &Arc<dyn Tools>,
    running: RunningService<RoleClient, Handler>,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let (closed_tx, closed_rx) = watch::channel(false);
    let peer = running.peer().clone();
    let stop = running.cancellation_token();
    let unresponsive = Arc::new(Notify::new());
    *server.live.lock().unwrap_or_else(PoisonError::into_inner) =
        Some(Live { peer: peer.clone(), closed: closed_rx, unresponsive: Arc::clone(&unresponsive) });
    let waiting = running.waiting();
    tokio::pin!(waiting);
    let ended = loop {
        tokio::select! {
            quit = &mut waiting => {
                let why = match quit {
                    Ok(reason) => format!("closed the connection ({reason:?}){}", server.stderr_tail()),
                    Err(e) => format!("connection task failed: {e}"),
                };
                break Ended::Closed(why);
            }
            () = server.list_changed.notified() => match list_tools(&peer).await {
                Ok(listed) => {
                    tracing::info!(server = %server.name(), tools = listed.len(), "MCP server's tools changed");
                    offer(server, tools, listed);
                }
                Err(e) => tracing::warn!(server = %server.name(), "cannot list the changed tools: {e}"),
            },
            () = unresponsive.notified() => break Ended::Unresponsive,
            () = flipped(shutdown) => break Ended::Shutdown,
        }
    };
    *server.live.lock().unwrap_or_else(PoisonError::into_inner) = None;
    let _ = closed_tx.send(true);
    if !matches!(ended, Ended::Closed(_)) {
        // Close the session (stdio: stdin closed, then SIGTERM, then
        // SIGKILL), but do not wait on a hung server for long.
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), waiting).await;
    }
    server.kill_group();
    ended
}

/// Resolves once the flag is `true` (or its sender is gone). The guard
/// `wait_for` answers is not `Send`, so it is dropped in here.
async fn flipped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|on| *on).await;
}

/// Where each call's `notifications/progress` go, by progress token. The
/// request is on its way before its call can register here (rmcp assigns
/// the token as it sends), and notifications are read on another thread,
/// so the first ones can arrive first: those wait in `early` (bounded) and
/// are delivered, in order, when the call registers. Lines are delivered
/// under the lock, which keeps them in order.
#[derive(Default)]
struct Progress {
    sinks: HashMap<ProgressToken, OutputSink>,
    early: VecDeque<(ProgressToken, String)>,
}

/// Progress lines kept for calls not registered yet; beyond it the oldest
/// go (late notifications of finished calls end up here too).
const EARLY_PROGRESS: usize = 64;

impl Progress {
    fn register(&mut self, token: &ProgressToken, sink: OutputSink) {
        let early = std::mem::take(&mut self.early);
        for (t, line) in early {
            if t == *token {
                sink(&line, OutputStream::Stdout);
            } else {
                self.early.push_back((t, line));
            }
        }
        self.sinks.insert(token.clone(), sink);
    }

    fn deliver(&mut self, token: &ProgressToken, line: String) {
        match self.sinks.get(token) {
            Some(sink) => sink(&line, OutputStream::Stdout),
            None => {
                if self.early.len() == EARLY_PROGRESS {
                    self.early.pop_front();
                }
                self.early.push_back((token.clone(), line));
            }
        }
    }
}

fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stderr_line_is_kept_bounded_and_the_next_one_read_whole() {
        let long = format!("{}\nnext\r\nlast", "x".repeat(100_000));
        let mut reader = tokio::io::BufReader::with_capacity(64, long.as_bytes());
        assert_eq!(next_line_bounded(&mut reader, 10).await.as_deref(), Some("xxxxxxxxxx"));
        assert_eq!(next_line_bounded(&mut reader, 10).await.as_deref(), Some("next"));
        assert_eq!(next_line_bounded(&mut reader, 10).await.as_deref(), Some("last"));
        assert_eq!(next_line_bounded(&mut reader, 10).await, None);
    }

    #[test]
    fn progress_numbers_print_plainly() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.5), "0.5");
    }

    fn token(n: i64) -> ProgressToken {
        ProgressToken(rmcp::model::NumberOrString::Number(n))
    }

    fn collecting() -> (OutputSink, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&seen);
        let sink: OutputSink = Arc::new(move |text: &str, _| into.lock().unwrap().push(text.to_owned()));
        (sink, seen)
    }

    /// Regression guard: progress that arrives before its call registered
    /// (the request was already sent) is delivered, in order, not dropped.
    #[test]
    fn progress_before_the_call_registers_is_delivered_in_order() {
        let mut p = Progress::default();
        p.deliver(&token(1), "1/3".into());
        p.deliver(&token(2), "other".into());
        p.deliver(&token(1), "2/3".into());
        let (sink, seen) = collecting();
        p.register(&token(1), sink);
        p.deliver(&token(1), "3/3".into());
        assert_eq!(*seen.lock().unwrap(), ["1/3", "2/3", "3/3"]);
        assert_eq!(p.early.len(), 1, "the other call's line waits for it");
    }

    #[test]
    fn unclaimed_progress_is_bounded() {
        let mut p = Progress::default();
        for i in 0..(EARLY_PROGRESS as i64 + 10) {
            p.deliver(&token(i), format!("{i}"));
        }
        assert_eq!(p.early.len(), EARLY_PROGRESS);
        assert_eq!(p.early.front().map(|(_, l)| l.as_str()), Some("10"));
    }
}
