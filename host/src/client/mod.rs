//! `dispatch` as the client of a running server: `models`, `chat`, `send`,
//! `read`, `list`, `stop`, `history`, `open` — over the HTTP API of
//! `WIRE.md`, like the original's CLI.
//!
//! Output is for people on a terminal and for scripts alike: the answer's
//! text on stdout, everything else on stderr ([`render`]), `--json` for the
//! raw events or answers, and exit codes scripts can rely on ([`exit`]).

pub mod http;
pub mod interactive;
pub mod render;
pub mod traces;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use self::http::{ClientError, Response, Server};
use self::render::{Ending, Renderer, Style};

/// Exit codes of the client commands.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// The turn ended in an error (or the stream broke off before it sealed).
    pub const TURN_FAILED: u8 = 1;
    /// The command line was wrong (clap's code).
    pub const USAGE: u8 = 2;
    /// No server answers at the address.
    pub const UNREACHABLE: u8 = 3;
    /// The server refused the request (its message is printed).
    pub const REFUSED: u8 = 4;
    /// The turn was stopped before it finished.
    pub const STOPPED: u8 = 5;
    /// Interrupted with Ctrl-C (the running turn was asked to stop).
    pub const INTERRUPTED: u8 = 130;
}

/// The default server.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:24203";

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// One readable line.
    pub message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Unreachable { .. } => exit::UNREACHABLE,
            ClientError::Refused { .. } => exit::REFUSED,
            ClientError::BadUrl(_) => exit::USAGE,
            ClientError::Protocol(_) => exit::TURN_FAILED,
        };
        let message = match &e {
            ClientError::Refused { status, code, message } => {
                format!("the server refused ({status} {code}): {message}")
            }
            other => other.to_string(),
        };
        Failure { code, message }
    }
}

/// A command's result.
pub type Outcome = Result<u8, Failure>;

fn usage(message: impl Into<String>) -> Failure {
    Failure { code: exit::USAGE, message: message.into() }
}

/// Print a line on stdout; false once stdout is gone (a closed pipe).
fn say(line: &str) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

/// The server, from `--server` / `$DISPATCH_SERVER` and `$DISPATCH_TOKEN`.
pub fn server(url: &str) -> Result<Server, Failure> {
    Server::new(url, std::env::var("DISPATCH_TOKEN").ok()).map_err(Failure::from)
}

/// The message: `--text`, then each `--file` framed with its name.
pub fn compose(text: Option<&str>, files: &[PathBuf]) -> Result<String, Failure> {
    let mut parts: Vec<String> =
        text.map(str::to_owned).into_iter().filter(|t| !t.trim().is_empty()).collect();
    for f in files {
        let bytes = std::fs::read(f).map_err(|e| usage(format!("cannot read {}: {e}", f.display())))?;
        let content = String::from_utf8(bytes).map_err(|_| {
            usage(format!("{} is not UTF-8 text; only text files can be attached", f.display()))
        })?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| f.display().to_string());
        parts.push(format!("Attached file ({name}):\n{content}"));
    }
    if parts.is_empty() {
        return Err(usage("nothing to send: give --text (non-empty) or --file"));
    }
    Ok(parts.join("\n\n"))
}

/// Find a conversation by id or unique id prefix: an exact id wins; one
/// match is taken; several are listed. No match is `id` itself — `chat -c`
/// starts a conversation of that id (as the original's CLI did).
pub async fn resolve(server: &Server, id: &str) -> Result<String, Failure> {
    Ok(matching(server, id).await?.unwrap_or_else(|| id.to_owned()))
}

/// [`resolve`] for the commands that act on a conversation that must
/// exist (`send`, `read`, `stop`, `open`, `history`): no match is a usage
/// error rather than a new, empty conversation.
pub async fn resolve_existing(server: &Server, id: &str) -> Result<String, Failure> {
    matching(server, id)
        .await?
        .ok_or_else(|| usage(format!("no conversation is {id:?} or starts with it (see `dispatch list`)")))
}

/// [`resolve_existing`] among one workspace's conversations.
pub async fn resolve_existing_in(
    server: &Server,
    id: &str,
    workspace: Option<&str>,
) -> Result<String, Failure> {
    let Some(w) = workspace else { return resolve_existing(server, id).await };
    matching_in(server, id, Some(w)).await?.ok_or_else(|| {
        usage(format!("no conversation of workspace {w:?} is {id:?} or starts with it (see `dispatch list --workspace {w}`)"))
    })
}

async fn matching(server: &Server, id: &str) -> Result<Option<String>, Failure> {
    matching_in(server, id, None).await
}

async fn matching_in(server: &Server, id: &str, workspace: Option<&str>) -> Result<Option<String>, Failure> {
    let scope = workspace.map(|w| format!("&workspaceId={}", encode(w))).unwrap_or_default();
    let answer = server.json("GET", &format!("/conversations?q={}{scope}", encode(id)), None).await?;
    let ids: Vec<&str> = answer["conversations"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["id"].as_str()).collect())
        .unwrap_or_default();
    match ids.as_slice() {
        _ if ids.contains(&id) => Ok(Some(id.to_owned())),
        [] => Ok(None),
        [one] => Ok(Some((*one).to_owned())),
        _ => Err(usage(format!("several conversations start with {id:?}: {}", ids.join(", ")))),
    }
}

/// Percent-encode a query value.
pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What a turn is asked with.
#[derive(Debug, Clone, Default)]
pub struct TurnRequest {
    /// The conversation (minted by the server when none).
    pub conversation: Option<String>,
    /// The message.
    pub message: String,
    /// `<credential>/<model>`.
    pub model: Option<String>,
    /// The tools' working directory.
    pub cwd: Option<String>,
    /// Reasoning effort.
    pub effort: Option<String>,
    /// The workspace a new conversation is created in (ignored for an
    /// existing one: a conversation's workspace is fixed when it starts).
    pub workspace: Option<String>,
}

/// How to show a turn.
#[derive(Debug, Clone, Copy)]
pub struct Show {
    /// Raw events on stdout instead of the rendering.
    pub json: bool,
    /// Colors and reasoning.
    pub style: Style,
    /// Ask clients to open the conversation once it is known.
    pub open: bool,
}

/// The working directory a new conversation on a local server starts in:
/// the caller's, as a command run here expects (a remote server has its
/// own file system; an existing conversation keeps its own).
pub fn default_cwd(server: &Server) -> Option<String> {
    let host = server.url().trim_start_matches("http://");
    let local = ["127.0.0.1", "localhost", "[::1]"].iter().any(|h| host.starts_with(h));
    local.then(|| std::env::current_dir().ok()).flatten().map(|p| p.display().to_string())
}

/// Start a turn and show it to its end. Ctrl-C asks the server to stop the
/// turn (it then seals as stopped); a second one leaves at once. Answers
/// how the turn ended and its conversation.
pub async fn run_turn(
    server: &Server,
    request: &TurnRequest,
    show: Show,
) -> Result<(Ending, String, bool), Failure> {
    // Listen for Ctrl-C before the turn exists, so it never kills us with
    // the turn running unstoppable on the server.
    let interrupts =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(|e| Failure {
            code: exit::TURN_FAILED,
            message: format!("cannot listen for Ctrl-C: {e}"),
        })?;
    // A new conversation's id is minted here, so a Ctrl-C that comes before
    // the server answered can still stop its turn.
    let conversation = request.conversation.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut body = json!({"message": request.message, "conversationId": conversation});
    for (k, v) in [
        ("model", &request.model),
        ("cwd", &request.cwd),
        ("reasoningEffort", &request.effort),
        ("workspaceId", &request.workspace),
    ] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    let mut interrupts = interrupts;
    let resp = tokio::select! {
        r = server.send("POST", "/chat", Some(&body)) => r?,
        // Before the server answered: stop whatever it started.
        _ = interrupts.recv() => {
            let _ = writeln!(std::io::stderr(), "\nstopping the turn… (Ctrl-C again to leave at once)");
            let path = format!("/conversations/{conversation}/stop");
            tokio::select! {
                _ = server.json("POST", &path, None) => {}
                _ = interrupts.recv() => {}
            }
            return Ok((Ending::Cut, conversation, true));
        }
    };
    if resp.status != 200 {
        let status = resp.status;
        let bytes = resp.bytes().await?;
        return Err(http::refusal(status, serde_json::from_slice(&bytes).ok().as_ref(), &bytes).into());
    }
    let conversation = resp.header("x-conversation-id").map(str::to_owned).unwrap_or(conversation);
    if show.open && !conversation.is_empty() {
        server.json("POST", &format!("/conversations/{conversation}/open"), None).await?;
    }
    let (ending, interrupted) = follow(server, resp, &conversation, show, interrupts).await?;
    Ok((ending, conversation, interrupted))
}

/// Read a turn's stream to `turn-sealed`, rendering it.
async fn follow(
    server: &Server,
    mut resp: Response,
    conversation: &str,
    show: Show,
    mut interrupts: tokio::signal::unix::Signal,
) -> Result<(Ending, bool), Failure> {
    let mut renderer = Renderer::new(show.style);
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut sealed = false;
    let mut interrupted = false;
    loop {
        let line = tokio::select! {
            line = resp.next_line() => line?,
            _ = interrupts.recv() => {
                if interrupted {
                    // The second Ctrl-C: leave now.
                    return Ok((Ending::Cut, true));
                }
                interrupted = true;
                let _ = writeln!(err, "\nstopping the turn… (Ctrl-C again to leave at once)");
                if !conversation.is_empty() {
                    let path = format!("/conversations/{conversation}/stop");
                    let stop = server.json("POST", &path, None);
                    tokio::select! {
                        r = stop => { r?; }
                        // A stop the server does not answer must not trap us.
                        _ = interrupts.recv() => return Ok((Ending::Cut, true)),
                    }
                }
                continue;
            }
        };
        let Some(event) = line else { break };
        if show.json {
            if !say(&event.to_string()) {
                return Ok((Ending::Finished, interrupted));
            }
            // Still tracked: how the turn ends decides the exit code.
            renderer.event(&event, &mut std::io::sink(), &mut std::io::sink());
        } else {
            renderer.event(&event, &mut out, &mut err);
        }
        if event["type"] == "turn-sealed" {
            sealed = true;
            break;
        }
    }
    if !show.json {
        renderer.summary(&mut out, &mut err);
        if !conversation.is_empty() {
            let _ = writeln!(err, "conversation {conversation}");
        }
    }
    Ok((renderer.ending(sealed), interrupted))
}

/// The exit code of a finished turn.
pub fn turn_code(ending: Ending, interrupted: bool) -> u8 {
    match (ending, interrupted) {
        (_, true) => exit::INTERRUPTED,
        (Ending::Finished, _) => exit::OK,
        (Ending::Aborted, _) => exit::STOPPED,
        (Ending::Failed | Ending::Cut, _) => exit::TURN_FAILED,
    }
}

/// `dispatch models`.
pub async fn models(server: &Server, as_json: bool) -> Outcome {
    let answer = server.json("GET", "/models", None).await?;
    if as_json {
        say(&answer.to_string());
        return Ok(exit::OK);
    }
    for m in answer["models"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if !say(m) {
            break;
        }
    }
    Ok(exit::OK)
}

/// `dispatch list`.
pub async fn list(
    server: &Server,
    prefix: Option<&str>,
    status: Option<&str>,
    workspace: Option<&str>,
    all: bool,
    as_json: bool,
) -> Outcome {
    let mut query = Vec::new();
    if let Some(p) = prefix {
        query.push(format!("q={}", encode(p)));
    }
    if let Some(w) = workspace {
        query.push(format!("workspaceId={}", encode(w)));
    }
    match (all, status) {
        (true, _) => {}
        (false, Some(s)) => query.push(format!("status={}", encode(s))),
        (false, None) => query.push("status=active,idle".to_owned()),
    }
    let answer = server.json("GET", &format!("/conversations?{}", query.join("&")), None).await?;
    let conversations = answer["conversations"].as_array().cloned().unwrap_or_default();
    if as_json {
        for c in &conversations {
            if !say(&c.to_string()) {
                break;
            }
        }
        return Ok(exit::OK);
    }
    let now = now_ms();
    for c in &conversations {
        let line = format!(
            "{}  {:<6}  {:>9}  {}",
            c["id"].as_str().unwrap_or_default(),
            c["status"].as_str().unwrap_or_default(),
            ago(now.saturating_sub(c["lastActivityAt"].as_u64().unwrap_or(now))),
            c["title"].as_str().unwrap_or_default()
        );
        if !say(line.trim_end()) {
            break;
        }
    }
    Ok(exit::OK)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// "just now", "5m ago", "3h ago", "2d ago".
pub fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => "just now".to_owned(),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// `dispatch read`: the last answer, after the running turn settles.
pub async fn read(server: &Server, id: &str) -> Outcome {
    let id = resolve_existing(server, id).await?;
    let answer = server.json("GET", &format!("/conversations/{id}/last"), None).await?;
    let content = answer["content"].as_str().unwrap_or_default();
    if !content.is_empty() {
        say(content.trim_end_matches('\n'));
    }
    Ok(exit::OK)
}

/// `dispatch stop`.
pub async fn stop(server: &Server, id: &str) -> Outcome {
    let id = resolve_existing(server, id).await?;
    let answer = server.json("POST", &format!("/conversations/{id}/stop"), None).await?;
    if answer["abortedTurn"].as_bool() == Some(true) {
        say(&format!("stopped the running turn of {id}"));
    } else {
        say(&format!("no turn was running in {id}"));
    }
    Ok(exit::OK)
}

/// `dispatch compact`.
pub async fn compact(server: &Server, id: &str, keep: u64, model: Option<&str>) -> Outcome {
    let id = resolve_existing(server, id).await?;
    let mut body = serde_json::json!({"keepLastN": keep.max(1)});
    if let Some(m) = model {
        body["modelName"] = serde_json::json!(m);
    }
    let answer = server.json("POST", &format!("/conversations/{id}/compact"), Some(&body)).await?;
    say(&format!(
        "compacted {id}: {} messages summarized, {} kept; the whole history is in {}",
        answer["messagesSummarized"],
        answer["messagesKept"],
        answer["newConversationId"].as_str().unwrap_or("?")
    ));
    Ok(exit::OK)
}

/// `dispatch open`.
pub async fn open(server: &Server, id: &str) -> Outcome {
    let id = resolve_existing(server, id).await?;
    server.json("POST", &format!("/conversations/{id}/open"), None).await?;
    say(&format!("asked the open clients to show {id}"));
    Ok(exit::OK)
}

/// `dispatch history`.
pub async fn history(server: &Server, id: &str, since: u64, as_json: bool) -> Outcome {
    let id = resolve_existing(server, id).await?;
    let answer = server.json("GET", &format!("/conversations/{id}?sinceSeq={since}"), None).await?;
    let chunks = answer["chunks"].as_array().cloned().unwrap_or_default();
    if chunks.is_empty() && since == 0 {
        return Err(Failure { code: exit::REFUSED, message: format!("conversation {id} has no history") });
    }
    for c in &chunks {
        let line = if as_json { c.to_string() } else { history_line(c) };
        if !say(&line) {
            break;
        }
    }
    Ok(exit::OK)
}

/// One stored chunk as a line of text.
pub fn history_line(c: &Value) -> String {
    let seq = c["seq"].as_u64().unwrap_or(0);
    let role = c["role"].as_str().unwrap_or_default();
    let chunk = &c["chunk"];
    let s = |k: &str| chunk[k].as_str().unwrap_or_default();
    let body = match chunk["type"].as_str().unwrap_or_default() {
        "text" => s("text").to_owned(),
        "thinking" => format!("(thinking) {}", render::one_line(s("text"), 200)),
        "tool-call" => {
            format!("[tool-call] {} {}", s("toolName"), render::one_line(&chunk["input"].to_string(), 200))
        }
        "tool-result" => format!(
            "[tool-result{}] {} {}",
            if chunk["isError"].as_bool() == Some(true) { " error" } else { "" },
            s("toolName"),
            render::one_line(
                &chunk["content"].as_str().map(str::to_owned).unwrap_or_else(|| chunk["content"].to_string()),
                200
            )
        ),
        "error" => format!("[error] {}", s("message")),
        "system" => format!("[system] {}", render::one_line(s("text"), 200)),
        "image" => format!("[image] {}", render::one_line(s("url"), 80)),
        other => format!("[{other}]"),
    };
    format!("#{seq} {role}: {body}")
}

/// What `dispatch send` sends.
#[derive(Debug, Clone, Default)]
pub struct SendRequest {
    /// The conversation: an id or a unique prefix of one.
    pub id: String,
    /// The message.
    pub message: String,
    /// Leave it for the running turn.
    pub queue: bool,
    /// The tools' working directory.
    pub cwd: Option<String>,
    /// Reasoning effort.
    pub effort: Option<String>,
    /// Look for `id` among this workspace's conversations only.
    pub workspace: Option<String>,
}

/// `dispatch send <id>`: another message to an existing conversation —
/// streamed like `chat`, or with `--queue` left for its running turn.
pub async fn send(server: &Server, request: SendRequest, show: Show) -> Outcome {
    let SendRequest { id, message, queue, cwd, effort, workspace } = request;
    let id = resolve_existing_in(server, &id, workspace.as_deref()).await?;
    if show.open {
        server.json("POST", &format!("/conversations/{id}/open"), None).await?;
    }
    if queue {
        let answer = server
            .json("POST", &format!("/conversations/{id}/queue"), Some(&json!({"text": message})))
            .await?;
        if answer["startedTurn"].as_bool() == Some(true) {
            say(&format!("no turn was running: started one in {id}"));
        } else {
            let n = answer["queue"].as_array().map_or(0, Vec::len);
            say(&format!("queued for the running turn of {id} ({n} waiting)"));
        }
        return Ok(exit::OK);
    }
    let request = TurnRequest { conversation: Some(id), message, model: None, cwd, effort, workspace: None };
    let (ending, _, interrupted) = run_turn(server, &request, Show { open: false, ..show }).await?;
    Ok(turn_code(ending, interrupted))
}

/// What `dispatch workspaces` does.
#[derive(Debug, Clone)]
pub enum WorkspaceAction {
    /// Every workspace.
    List,
    /// One, whole.
    Show(String),
    /// Retitle one (created if missing).
    Rename(String, String),
    /// Set (`Some`) or clear its default directory.
    SetCwd(String, Option<String>),
    /// Delete one, closing its conversations.
    Delete(String),
}

fn workspace_line(w: &Value, now: u64) -> String {
    let star = if w["starred"].as_bool() == Some(true) { "*" } else { " " };
    let count = w["conversationCount"].as_u64().map(|n| format!("{n:>4} conv")).unwrap_or_default();
    let active = match w["lastActivityAt"].as_u64() {
        Some(0) | None => "never".to_owned(),
        Some(t) => ago(now.saturating_sub(t)),
    };
    let cwd = w["defaultCwd"].as_str().map(|c| format!("  {c}")).unwrap_or_default();
    format!(
        "{star}{:<24} {count}  {active:>9}  {}{cwd}",
        w["id"].as_str().unwrap_or_default(),
        w["title"].as_str().unwrap_or_default()
    )
}

/// `dispatch workspaces`.
pub async fn workspaces(server: &Server, action: WorkspaceAction, as_json: bool) -> Outcome {
    let path = |id: &str, rest: &str| format!("/workspaces/{}{rest}", encode(id));
    let answer = match &action {
        WorkspaceAction::List => server.json("GET", "/workspaces", None).await?,
        WorkspaceAction::Show(id) => server.json("GET", &path(id, ""), None).await?,
        WorkspaceAction::Rename(id, title) => {
            server.json("PUT", &path(id, "/title"), Some(&json!({ "title": title }))).await?
        }
        WorkspaceAction::SetCwd(id, dir) => {
            server.json("PUT", &path(id, "/default-cwd"), Some(&json!({ "defaultCwd": dir }))).await?
        }
        WorkspaceAction::Delete(id) => server.json("DELETE", &path(id, ""), None).await?,
    };
    if as_json {
        match &action {
            WorkspaceAction::List => {
                for w in answer["workspaces"].as_array().into_iter().flatten() {
                    if !say(&w.to_string()) {
                        break;
                    }
                }
            }
            _ => {
                say(&answer.to_string());
            }
        }
        return Ok(exit::OK);
    }
    let now = now_ms();
    match action {
        WorkspaceAction::List => {
            for w in answer["workspaces"].as_array().into_iter().flatten() {
                if !say(workspace_line(w, now).trim_end()) {
                    break;
                }
            }
        }
        WorkspaceAction::Delete(id) => {
            say(&format!(
                "deleted workspace {id}: {} conversations closed and moved to default",
                answer["closedCount"]
            ));
        }
        WorkspaceAction::Show(_) | WorkspaceAction::Rename(..) | WorkspaceAction::SetCwd(..) => {
            let field = |k: &str| match &answer[k] {
                Value::Null => "-".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            say(&format!(
                "{}\n  title:            {}\n  default cwd:      {}\n  default computer: {}\n  starred:          {}",
                field("id"),
                field("title"),
                field("defaultCwd"),
                field("defaultComputerId"),
                field("starred")
            ));
        }
    }
    Ok(exit::OK)
}

/// `dispatch plugins --server`: a running server's plugins.
pub async fn plugins(server: &Server, as_json: bool) -> Outcome {
    let answer = server.json("GET", "/extensions", None).await?;
    if as_json {
        say(&serde_json::to_string_pretty(&answer).unwrap_or_default());
        return Ok(exit::OK);
    }
    let list: dispatch_contracts::plugins::PluginList =
        serde_json::from_value(answer).map_err(|e| Failure {
            code: exit::TURN_FAILED,
            message: format!("the server's plugin list is not understood: {e}"),
        })?;
    let mut text = crate::report::table(&list.plugins);
    if let Some(host) = &list.host {
        text = format!("answered by {host}\n{text}");
    }
    // An active `mcp` plugin: its servers too (the endpoint is per
    // conversation, but servers are the whole server's; any id answers).
    let key = dispatch_contracts::mcp::SERVERS;
    let mcp = key.name();
    let has_mcp = list.plugins.iter().any(|p| {
        p.state == dispatch_contracts::plugins::State::Active && p.provides.iter().any(|s| s.name == mcp)
    });
    if has_mcp {
        let answer = server.json("GET", "/mcp/servers", None).await?;
        if let Ok(servers) = serde_json::from_value::<dispatch_contracts::mcp::Servers>(answer) {
            text.push('\n');
            text.push_str(&crate::report::mcp_table(&servers.servers));
        }
    }
    say(text.trim_end());
    Ok(exit::OK)
}

/// `dispatch plugins reload`: ask the server to apply its configuration
/// again; exit 1 when anything failed.
pub async fn reload(server: &Server, as_json: bool) -> Outcome {
    let answer = server.json("POST", "/admin/plugins/reload", None).await?;
    let report: dispatch_contracts::plugins::ReloadReport =
        serde_json::from_value(answer.clone()).map_err(|e| Failure {
            code: exit::TURN_FAILED,
            message: format!("the reload report is not understood: {e}"),
        })?;
    if as_json {
        say(&answer.to_string());
    } else {
        for (what, list) in [
            ("added", &report.added),
            ("removed", &report.removed),
            ("upgraded", &report.upgraded),
            ("restarted", &report.restarted),
            ("failed", &report.failed),
        ] {
            for c in list {
                let version = c.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
                let reason = c.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                say(&format!("{what:<9} {}{version} ({}){reason}", c.id, c.file));
            }
        }
        say(&format!("{} unchanged", report.unchanged));
    }
    Ok(if report.failed.is_empty() { exit::OK } else { exit::TURN_FAILED })
}

/// Whether `path` names a directory that exists (for `--cwd` and `/cwd`).
pub fn check_dir(path: &Path) -> Result<String, Failure> {
    let abs = std::path::absolute(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    if !abs.is_dir() {
        return Err(usage(format!("{} is not a directory", abs.display())));
    }
    Ok(abs.display().to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn files_are_attached_after_the_text_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("notes.md");
        std::fs::write(&f, "line one\nline two").unwrap();
        assert_eq!(
            compose(Some("summarise"), std::slice::from_ref(&f)).unwrap(),
            "summarise\n\nAttached file (notes.md):\nline one\nline two"
        );
        assert_eq!(
            compose(None, std::slice::from_ref(&f)).unwrap(),
            "Attached file (notes.md):\nline one\nline two"
        );
        assert_eq!(compose(Some("  "), &[]).unwrap_err().code, exit::USAGE);
        let bin = dir.path().join("x.bin");
        std::fs::write(&bin, [0xff, 0xfe]).unwrap();
        assert!(compose(None, &[bin]).unwrap_err().message.contains("not UTF-8"));
    }

    #[test]
    fn history_lines_name_the_chunk() {
        let c = json!({"seq": 3, "role": "assistant", "chunk": {"type": "tool-call", "toolCallId": "t", "toolName": "read_file", "input": {"path": "a"}}});
        assert_eq!(history_line(&c), r#"#3 assistant: [tool-call] read_file {"path":"a"}"#);
        assert_eq!(ago(5_000), "just now");
        assert_eq!(ago(3 * 3_600_000 + 5), "3h ago");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
