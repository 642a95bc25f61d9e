//! One running language server: a child process spoken to over stdio with
//! `async-lsp`, the documents it has open, and the diagnostics it published.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_lsp::lsp_types::{
    self as lsp, notification::Notification as _, ClientCapabilities, Diagnostic, InitializeParams,
    InitializedParams, PublishDiagnosticsParams, Url, WorkspaceFolder,
};
use async_lsp::router::Router;
use async_lsp::{LanguageServer as _, ServerSocket};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
use tokio::sync::watch;
use tokio_util::compat::{TokioAsyncReadCompatExt as _, TokioAsyncWriteCompatExt as _};

use crate::config::Spec;

/// Longest stderr line logged; the rest of a longer line is dropped.
const STDERR_LINE_BYTES: usize = 4096;
/// How long `shutdown` waits for the server's answer before killing it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What a server published for one document.
#[derive(Debug, Clone, Default)]
struct Published {
    /// The publish counter's value when it arrived.
    seq: u64,
    items: Vec<Diagnostic>,
}

/// Published diagnostics, and a counter that moves on every publish (what
/// a waiter watches).
#[derive(Debug)]
struct Diagnostics {
    by_uri: Mutex<HashMap<Url, Published>>,
    seq: watch::Sender<u64>,
}

impl Diagnostics {
    fn publish(&self, params: PublishDiagnosticsParams) {
        let mut map = self.by_uri.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = *self.seq.borrow() + 1;
        map.insert(params.uri, Published { seq, items: params.diagnostics });
        self.seq.send_replace(seq);
    }

    fn get(&self, uri: &Url) -> Option<Published> {
        self.by_uri.lock().unwrap_or_else(PoisonError::into_inner).get(uri).cloned()
    }
}

/// A document as the server knows it.
#[derive(Debug)]
struct Open {
    version: i32,
    text: String,
}

/// A running server.
pub struct Client {
    spec: Spec,
    root: PathBuf,
    socket: ServerSocket,
    capabilities: lsp::ServerCapabilities,
    diagnostics: Arc<Diagnostics>,
    open: tokio::sync::Mutex<HashMap<Url, Open>>,
    pid: Option<u32>,
    /// `Some(why)` once the server's connection ended.
    ended: watch::Receiver<Option<String>>,
    /// The `watch` sidecar, killed with the server.
    sidecar: Mutex<Option<Box<dyn process_wrap::tokio::ChildWrapper>>>,
    started: Instant,
    killed: std::sync::atomic::AtomicBool,
}

impl Drop for Client {
    /// Whatever ends a client (an idle shutdown, a plugin stop that ran
    /// out of time) ends its processes — the helpers a server started too.
    fn drop(&mut self) {
        self.kill_group();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.spec.id).field("root", &self.root).finish_non_exhaustive()
    }
}

/// The spawned process of a command line, in its own process group (so
/// the helpers a server starts, `tsserver` say, go with it).
fn spawn(
    command: &[String],
    env: &std::collections::BTreeMap<String, String>,
    cwd: &Path,
    piped: bool,
) -> std::io::Result<Box<dyn process_wrap::tokio::ChildWrapper>> {
    let (program, args) = command.split_first().ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).current_dir(cwd).envs(env).kill_on_drop(true);
    if piped {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    }
    let mut wrapped = process_wrap::tokio::CommandWrap::from(cmd);
    wrapped.wrap(process_wrap::tokio::ProcessGroup::leader());
    wrapped.spawn()
}

/// The last lines a server wrote to stderr, for the error of a failed start.
type Tail = Arc<Mutex<std::collections::VecDeque<String>>>;
/// How many stderr lines a [`Tail`] keeps.
const TAIL_LINES: usize = 5;

/// Log each stderr line of a server (or its sidecar), bounded, keeping the
/// last few in `tail`.
async fn log_stderr(id: String, stderr: tokio::process::ChildStderr, tail: Tail) {
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(STDERR_LINE_BYTES as u64 + 1);
        match tokio::io::AsyncBufReadExt::read_until(&mut limited, b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if !text.is_empty() {
            tracing::info!(server = %id, "stderr: {text}");
            let mut kept = tail.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.len() == TAIL_LINES {
                kept.pop_front();
            }
            kept.push_back(text.to_owned());
        }
        // Skip the rest of an overlong line.
        if line.len() > STDERR_LINE_BYTES && line.last() != Some(&b'\n') {
            let mut rest = Vec::new();
            if reader.read_until(b'\n', &mut rest).await.unwrap_or(0) == 0 {
                return;
            }
        }
    }
}

/// The language id of a file, by its extension.
fn language_id(path: &Path) -> String {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    match ext.as_str() {
        "ts" | "mts" | "cts" => "typescript",
        "tsx" => "typescriptreact",
        "js" | "mjs" | "cjs" => "javascript",
        "jsx" => "javascriptreact",
        "py" | "pyi" => "python",
        "rs" => "rust",
        "rb" => "ruby",
        "luau" => "luau",
        "h" => "c",
        "hpp" | "cc" | "cxx" => "cpp",
        other => return other.to_owned(),
    }
    .to_owned()
}

/// A file's URI.
pub fn uri_of(path: &Path) -> Result<Url, String> {
    Url::from_file_path(path).map_err(|()| format!("{} is not an absolute path", path.display()))
}

impl Client {
    /// Start `spec` for `root` and initialise it, within `timeout`.
    pub async fn start(spec: &Spec, root: &Path, timeout: Duration) -> Result<Arc<Client>, String> {
        let mut child = spawn(&spec.command, &spec.env, root, true)
            .map_err(|e| format!("cannot start `{}`: {e}", spec.command.join(" ")))?;
        let pid = child.id();
        let (stdin, stdout, stderr) = (child.stdin().take(), child.stdout().take(), child.stderr().take());
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            return Err("the server's stdio could not be captured".into());
        };
        let tail = Tail::default();
        if let Some(stderr) = stderr {
            tokio::spawn(log_stderr(spec.id.clone(), stderr, Arc::clone(&tail)));
        }
        let with_tail = |e: String| {
            let kept = tail.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.is_empty() {
                e
            } else {
                format!("{e} (its stderr: {})", kept.iter().cloned().collect::<Vec<_>>().join(" | "))
            }
        };
        let diagnostics = Arc::new(Diagnostics { by_uri: Mutex::default(), seq: watch::channel(0).0 });
        let initialization = spec.initialization.clone();
        let folders = vec![WorkspaceFolder { uri: uri_of(root)?, name: root.display().to_string() }];
        let published = Arc::clone(&diagnostics);
        let answer_folders = folders.clone();
        let (main, socket) = async_lsp::MainLoop::new_client(move |_server| {
            let mut router = Router::new(());
            // Requests a server may make of its client: answered so it
            // goes on (configuration from `initialization`, else null).
            router
                .request::<lsp::request::WorkspaceConfiguration, _>(move |_, params| {
                    let value = initialization.clone().unwrap_or(Value::Null);
                    let items = params.items.iter().map(|_| value.clone()).collect();
                    std::future::ready(Ok(items))
                })
                .request::<lsp::request::RegisterCapability, _>(|_, _| std::future::ready(Ok(())))
                .request::<lsp::request::UnregisterCapability, _>(|_, _| std::future::ready(Ok(())))
                .request::<lsp::request::WorkDoneProgressCreate, _>(|_, _| std::future::ready(Ok(())))
                .request::<lsp::request::WorkspaceFoldersRequest, _>(move |_, ()| {
                    std::future::ready(Ok(Some(answer_folders.clone())))
                })
                // Every notification: a malformed one is dropped, never
                // the connection.
                .unhandled_notification(move |_, n| {
                    if n.method == lsp::notification::PublishDiagnostics::METHOD {
                        match serde_json::from_value::<PublishDiagnosticsParams>(n.params) {
                            Ok(p) => published.publish(p),
                            Err(e) => {
                                tracing::debug!(error = %e, "a malformed publishDiagnostics was dropped")
                            }
                        }
                    }
                    ControlFlow::Continue(())
                })
                .unhandled_event(|_, _| ControlFlow::Continue(()));
            router
        });
        let (ended_tx, ended) = watch::channel(None);
        let id = spec.id.clone();
        let child = Arc::new(tokio::sync::Mutex::new(child));
        let waited = Arc::clone(&child);
        tokio::spawn(async move {
            let why = match main.run_buffered(stdout.compat(), stdin.compat_write()).await {
                Ok(()) => "the connection closed".to_owned(),
                Err(e) => format!("the connection failed: {e}"),
            };
            // Say how the process ended, when it did.
            let status =
                tokio::time::timeout(Duration::from_secs(1), async { waited.lock().await.wait().await })
                    .await;
            let why = match status {
                Ok(Ok(s)) => format!("the server exited ({s})"),
                _ => why,
            };
            tracing::debug!(server = %id, "{why}");
            let _ = ended_tx.send(Some(why));
        });

        let params = InitializeParams {
            process_id: Some(std::process::id()),
            #[allow(deprecated)]
            root_uri: Some(uri_of(root)?),
            initialization_options: spec.initialization.clone(),
            capabilities: capabilities(),
            workspace_folders: Some(folders),
            ..InitializeParams::default()
        };
        let ended_rx = ended.clone();
        let ended_why = |mut rx: watch::Receiver<Option<String>>| async move {
            rx.wait_for(Option::is_some).await.ok().and_then(|w| w.clone()).unwrap_or_default()
        };
        let init = tokio::select! {
            r = tokio::time::timeout(timeout, socket.clone().initialize(params)) => match r {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    // The connection broke: say how the process ended, if
                    // it did.
                    let why = tokio::time::timeout(Duration::from_millis(1500), ended_why(ended.clone())).await;
                    return Err(with_tail(match why {
                        Ok(why) => format!("it ended before initialising: {why}"),
                        Err(_) => format!("initialize failed: {e}"),
                    }));
                }
                Err(_) => {
                    kill(&child).await;
                    return Err(with_tail(format!("it did not initialise within {} ms", timeout.as_millis())));
                }
            },
            why = ended_why(ended_rx.clone()) => {
                return Err(with_tail(format!("it ended before initialising: {why}")));
            }
        };
        socket.clone().initialized(InitializedParams {}).map_err(|e| format!("initialized failed: {e}"))?;
        let sidecar = match &spec.watch {
            Some(command) if !command.is_empty() => match spawn(command, &spec.env, root, false) {
                Ok(mut c) => {
                    if let Some(stderr) = c.stderr().take() {
                        tokio::spawn(log_stderr(format!("{} watch", spec.id), stderr, Tail::default()));
                    }
                    Some(c)
                }
                Err(e) => {
                    tracing::warn!(server = %spec.id, error = %e, "its watch sidecar could not start");
                    None
                }
            },
            _ => None,
        };
        // The process stays owned by the waiting task; keep it from
        // outliving a dropped client through kill_on_drop there.
        drop(child);
        Ok(Arc::new(Client {
            spec: spec.clone(),
            root: root.to_path_buf(),
            socket,
            capabilities: init.capabilities,
            diagnostics,
            open: tokio::sync::Mutex::default(),
            pid,
            ended,
            sidecar: Mutex::new(sidecar),
            started: Instant::now(),
            killed: false.into(),
        }))
    }

    /// The server's configuration.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Why its connection ended, if it did.
    pub fn ended(&self) -> Option<String> {
        self.ended.borrow().clone()
    }

    /// How long it has been running.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// What it answered to `initialize`.
    pub fn capabilities(&self) -> &lsp::ServerCapabilities {
        &self.capabilities
    }

    /// A request answered within `timeout`, failing at once when the
    /// server is gone.
    pub async fn request<R: lsp::request::Request>(
        &self,
        params: R::Params,
        timeout: Duration,
    ) -> Result<R::Result, String> {
        let mut ended = self.ended.clone();
        tokio::select! {
            r = tokio::time::timeout(timeout, self.socket.request::<R>(params)) => match r {
                Ok(r) => r.map_err(|e| format!("{} failed: {e}", R::METHOD)),
                Err(_) => Err(format!("{} did not answer {} within {} ms.", self.spec.name, R::METHOD, timeout.as_millis())),
            },
            _ = ended.wait_for(Option::is_some) => Err(format!("the server ended: {}", self.ended().unwrap_or_default())),
        }
    }

    /// Tell the server what `path` holds now (opening it the first time,
    /// the whole text after that); answers the publish counter before the
    /// change, for [`Client::diagnostics_after`]. An unchanged open
    /// document is not sent again.
    pub async fn sync(&self, path: &Path) -> Result<(Url, Option<u64>), String> {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let uri = uri_of(path)?;
        let mut open = self.open.lock().await;
        let before = *self.diagnostics.seq.borrow();
        match open.get_mut(&uri) {
            Some(doc) if doc.text == text => return Ok((uri, None)),
            Some(doc) => {
                doc.version += 1;
                doc.text.clone_from(&text);
                let params = lsp::DidChangeTextDocumentParams {
                    text_document: lsp::VersionedTextDocumentIdentifier {
                        uri: uri.clone(),
                        version: doc.version,
                    },
                    content_changes: vec![lsp::TextDocumentContentChangeEvent {
                        range: None,
                        range_length: None,
                        text,
                    }],
                };
                self.socket.clone().did_change(params).map_err(|e| format!("didChange failed: {e}"))?;
            }
            None => {
                let item = lsp::TextDocumentItem {
                    uri: uri.clone(),
                    language_id: language_id(path),
                    version: 1,
                    text: text.clone(),
                };
                self.socket
                    .clone()
                    .did_open(lsp::DidOpenTextDocumentParams { text_document: item })
                    .map_err(|e| format!("didOpen failed: {e}"))?;
                open.insert(uri.clone(), Open { version: 1, text });
            }
        }
        Ok((uri, Some(before)))
    }

    /// The diagnostics of `uri` published after counter value `since`
    /// (`None`: whatever is known, waiting for a first publish), then
    /// quiet for `settle` (a server may publish a file's syntax errors
    /// before its type errors); `None` if none came by `deadline`.
    pub async fn diagnostics_after(
        &self,
        uri: &Url,
        since: Option<u64>,
        deadline: tokio::time::Instant,
        settle: Duration,
    ) -> Option<Vec<Diagnostic>> {
        let mut seq = self.diagnostics.seq.subscribe();
        let fresh = |p: &Published| since.is_none_or(|s| p.seq > s);
        // The first fresh publish.
        loop {
            if self.diagnostics.get(uri).is_some_and(|p| fresh(&p)) {
                break;
            }
            if self.ended().is_some() {
                return None;
            }
            match tokio::time::timeout_at(deadline, seq.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
        // Then until the file's diagnostics stop changing.
        loop {
            let at = self.diagnostics.get(uri).map(|p| p.seq);
            let quiet = (tokio::time::Instant::now() + settle).min(deadline);
            loop {
                match tokio::time::timeout_at(quiet, seq.changed()).await {
                    Ok(Ok(())) if self.diagnostics.get(uri).map(|p| p.seq) != at => break,
                    Ok(Ok(())) => continue,
                    _ => return self.diagnostics.get(uri).map(|p| p.items),
                }
            }
        }
    }

    /// Shut the server down: `shutdown` and `exit`, then its process group
    /// is killed whatever it did.
    pub async fn shutdown(&self) {
        if self.ended().is_none() {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.socket.clone().shutdown(())).await;
            let _ = self.socket.clone().exit(());
            let mut ended = self.ended.clone();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, ended.wait_for(Option::is_some)).await;
        }
        self.kill_group();
    }

    /// Kill the process group (and the sidecar's) at once; once.
    pub fn kill_group(&self) {
        if self.killed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        if let Some(pgid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: killpg takes plain integers; the group is the one the
            // server leads (spawned as its leader); one already gone makes
            // it fail with ESRCH, which is fine.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
        if let Some(mut sidecar) = self.sidecar.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = sidecar.start_kill();
        }
    }

    /// The resident memory of the server's process group, in bytes (Linux).
    pub fn rss_bytes(&self) -> Option<u64> {
        let pgid = self.pid?;
        let mut total = 0u64;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // Fields after the parenthesised command: state ppid pgrp …
            let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { continue };
            if rest.split(' ').nth(2).and_then(|g| g.parse::<u32>().ok()) != Some(pgid) {
                continue;
            }
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                total += kb * 1024;
            }
        }
        Some(total)
    }
}

/// Kill a child that never initialised.
async fn kill(child: &Arc<tokio::sync::Mutex<Box<dyn process_wrap::tokio::ChildWrapper>>>) {
    let _ = Box::into_pin(child.lock().await.kill()).await;
}

/// What this client can do, as `initialize` tells the server.
fn capabilities() -> ClientCapabilities {
    let markup = Some(vec![lsp::MarkupKind::Markdown, lsp::MarkupKind::PlainText]);
    ClientCapabilities {
        text_document: Some(lsp::TextDocumentClientCapabilities {
            synchronization: Some(lsp::TextDocumentSyncClientCapabilities {
                did_save: Some(false),
                ..Default::default()
            }),
            publish_diagnostics: Some(lsp::PublishDiagnosticsClientCapabilities {
                version_support: Some(true),
                ..Default::default()
            }),
            hover: Some(lsp::HoverClientCapabilities { content_format: markup, ..Default::default() }),
            definition: Some(lsp::GotoCapability { link_support: Some(false), ..Default::default() }),
            references: Some(lsp::DynamicRegistrationClientCapabilities::default()),
            document_symbol: Some(lsp::DocumentSymbolClientCapabilities {
                hierarchical_document_symbol_support: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }),
        workspace: Some(lsp::WorkspaceClientCapabilities {
            configuration: Some(true),
            workspace_folders: Some(true),
            symbol: Some(lsp::WorkspaceSymbolClientCapabilities::default()),
            ..Default::default()
        }),
        ..ClientCapabilities::default()
    }
}
