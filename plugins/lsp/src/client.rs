//! One running language server: a child process spoken to over stdio with
//! `async-lsp`, the documents it has open, and the diagnostics it published.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_lsp::lsp_types::{
    self as lsp, notification::Notification as _, ClientCapabilities, Diagnostic, InitializeParams,
    InitializedParams, PublishDiagnosticsParams, Url, WorkspaceFolder,
};
use async_lsp::router::Router;
use async_lsp::{LanguageServer as _, ServerSocket};
use dispatch_abi::runtime::Runner;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
use tokio::sync::watch;
use tokio_util::compat::{TokioAsyncReadCompatExt as _, TokioAsyncWriteCompatExt as _};

use crate::config::Spec;

/// Longest stderr line logged; the rest of a longer line is dropped.
const STDERR_LINE_BYTES: usize = 4096;
/// How long `shutdown` waits for the server's answer before killing it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Documents kept open in a server at most: the least recently used is
/// closed past this (each open one is re-checked against the disk before
/// every request, and its text kept here).
const MAX_OPEN: usize = 32;
/// The last lines of a server's stderr kept for the error of a failed start.
const TAIL_LINES: usize = 5;

/// What a server published for one document.
#[derive(Debug, Clone, Default)]
struct Published {
    /// The publish counter's value when it arrived.
    seq: u64,
    /// The document version it is for, when the server said.
    version: Option<i32>,
    items: Vec<Diagnostic>,
}

/// Published diagnostics of the open documents, and a counter that moves
/// on every publish (what a waiter watches).
#[derive(Debug)]
struct Diagnostics {
    by_uri: Mutex<HashMap<Url, Published>>,
    /// The documents open in the server: only theirs are kept.
    open: Mutex<HashSet<Url>>,
    seq: watch::Sender<u64>,
}

impl Diagnostics {
    fn publish(&self, params: PublishDiagnosticsParams) {
        if !self.open.lock().unwrap_or_else(PoisonError::into_inner).contains(&params.uri) {
            return;
        }
        let mut map = self.by_uri.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = *self.seq.borrow() + 1;
        map.insert(params.uri, Published { seq, version: params.version, items: params.diagnostics });
        self.seq.send_replace(seq);
    }

    fn get(&self, uri: &Url) -> Option<Published> {
        self.by_uri.lock().unwrap_or_else(PoisonError::into_inner).get(uri).cloned()
    }

    fn opened(&self, uri: &Url) {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).insert(uri.clone());
    }

    fn closed(&self, uri: &Url) {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).remove(uri);
        self.by_uri.lock().unwrap_or_else(PoisonError::into_inner).remove(uri);
    }
}

/// A document as the server knows it.
#[derive(Debug)]
struct Open {
    path: PathBuf,
    version: i32,
    text: String,
    /// When it was last synced (for closing the least recently used).
    used: u64,
}

/// How the connection ended.
#[derive(Debug, Clone)]
pub struct Ended {
    /// Why, for the status and the log.
    pub why: String,
    /// When.
    pub at: Instant,
}

/// What a sync sent: the document, and what a fresh publish for it is.
#[derive(Debug, Clone)]
pub struct Synced {
    /// The document.
    pub uri: Url,
    /// `None` when the document was already current (its known
    /// diagnostics stand); else the publish counter before the change and
    /// the version sent.
    pub after: Option<(u64, i32)>,
}

/// The process group a server leads, killed once.
#[derive(Debug)]
struct Group {
    pgid: Option<i32>,
    killed: AtomicBool,
}

impl Group {
    /// SIGKILL the whole group (the helpers a server started too), once:
    /// after that the number may belong to another group.
    fn kill(&self) {
        if self.killed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg takes plain integers. The group is the one
            // this server leads, and its leader is not reaped before this
            // ran (the waiter kills, then waits), so the number is still
            // that group's; one already empty fails with ESRCH.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

/// A running server.
pub struct Client {
    spec: Spec,
    socket: ServerSocket,
    diagnostics: Arc<Diagnostics>,
    open: tokio::sync::Mutex<HashMap<Url, Open>>,
    uses: AtomicU64,
    pid: Option<u32>,
    group: Arc<Group>,
    ended: watch::Receiver<Option<Ended>>,
    /// The `watch` sidecar, killed with the server.
    sidecar: Mutex<Option<Box<dyn process_wrap::tokio::ChildWrapper>>>,
    started: Instant,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.spec.id).field("pid", &self.pid).finish_non_exhaustive()
    }
}

impl Drop for Client {
    /// Whatever ends a client (an idle shutdown, a replaced configuration,
    /// a plugin stop that ran out of time) ends its processes.
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// The spawned process of a command line, in its own process group (so
/// the helpers a server starts, `tsserver` say, go with it), with a clean
/// environment: the language server comes from a project's files, so it
/// gets what a shell command gets (`PATH`, `HOME`, the locale, …) plus its
/// own `env` — never the host's provider keys.
fn spawn(
    command: &[String],
    env: &std::collections::BTreeMap<String, String>,
    cwd: &Path,
    piped: bool,
) -> std::io::Result<Box<dyn process_wrap::tokio::ChildWrapper>> {
    let (program, args) = command.split_first().ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(dispatch_contracts::protocol::secrets::base_env())
        .envs(env)
        .kill_on_drop(true);
    if piped {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    }
    let mut wrapped = process_wrap::tokio::CommandWrap::from(cmd);
    wrapped.wrap(process_wrap::tokio::ProcessGroup::leader());
    wrapped.spawn()
}

/// The last lines a server wrote to stderr.
type Tail = Arc<Mutex<std::collections::VecDeque<String>>>;

/// Log each stderr line of a server (or its sidecar), bounded, keeping the
/// last few in `tail`; `done` fires at its end.
async fn log_stderr(
    id: String,
    stderr: tokio::process::ChildStderr,
    tail: Tail,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(STDERR_LINE_BYTES as u64 + 1);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
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
        // Drop the rest of an overlong line without holding it.
        if line.len() > STDERR_LINE_BYTES && line.last() != Some(&b'\n') && !skip_line(&mut reader).await {
            break;
        }
    }
    let _ = done.send(());
}

/// Consume up to the next newline; false at the end of the stream.
async fn skip_line(reader: &mut tokio::io::BufReader<tokio::process::ChildStderr>) -> bool {
    loop {
        let (found, n) = match reader.fill_buf().await {
            Ok([]) | Err(_) => return false,
            Ok(buf) => match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (true, i + 1),
                None => (false, buf.len()),
            },
        };
        reader.consume(n);
        if found {
            return true;
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
    /// Start `spec` for `root` and initialise it, within `timeout`; its
    /// background tasks run on `runner`. Whatever goes wrong, no process
    /// is left behind.
    pub async fn start(
        spec: &Spec,
        root: &Path,
        timeout: Duration,
        runner: &Runner,
    ) -> Result<Arc<Client>, String> {
        let mut child = spawn(&spec.command, &spec.env, root, true)
            .map_err(|e| format!("cannot start `{}`: {e}", spec.command.join(" ")))?;
        let pid = child.id();
        let group =
            Arc::new(Group { pgid: pid.and_then(|p| i32::try_from(p).ok()), killed: AtomicBool::new(false) });
        let (stdin, stdout, stderr) = (child.stdin().take(), child.stdout().take(), child.stderr().take());
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            group.kill();
            return Err("the server's stdio could not be captured".into());
        };
        let tail = Tail::default();
        let (stderr_done, stderr_read) = tokio::sync::oneshot::channel();
        match stderr {
            Some(stderr) => runner.spawn(log_stderr(spec.id.clone(), stderr, Arc::clone(&tail), stderr_done)),
            None => drop(stderr_done),
        }
        let diagnostics = Arc::new(Diagnostics {
            by_uri: Mutex::default(),
            open: Mutex::default(),
            seq: watch::channel(0).0,
        });
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
        let waiter_group = Arc::clone(&group);
        // The loop's own handle on the connection: async-lsp's main loop
        // must not outlive every socket (it would panic), and this one
        // lives exactly as long as the loop.
        let keep = socket.clone();
        runner.spawn(async move {
            let why = match main.run_buffered(stdout.compat(), stdin.compat_write()).await {
                Ok(()) => "the connection closed".to_owned(),
                Err(e) => format!("the connection failed: {e}"),
            };
            drop(keep);
            // Kill what is left of the group while its leader is not yet
            // reaped (its number cannot be reused before), then reap it.
            waiter_group.kill();
            let why = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                Ok(Ok(status)) => format!("the server exited ({status})"),
                _ => why,
            };
            tracing::debug!(server = %id, "{why}");
            let _ = ended_tx.send(Some(Ended { why, at: Instant::now() }));
        });

        // A failed start says why, with the last of the server's stderr.
        let fail = |e: String| {
            let group = Arc::clone(&group);
            let tail = Arc::clone(&tail);
            async move {
                group.kill();
                // The stderr reader may still be reading what the server
                // said as it died.
                let _ = tokio::time::timeout(Duration::from_millis(500), stderr_read).await;
                let kept = tail.lock().unwrap_or_else(PoisonError::into_inner);
                if kept.is_empty() {
                    e
                } else {
                    format!("{e} (its stderr: {})", kept.iter().cloned().collect::<Vec<_>>().join(" | "))
                }
            }
        };
        let ended_why = |mut rx: watch::Receiver<Option<Ended>>| async move {
            rx.wait_for(Option::is_some).await.ok().and_then(|e| e.clone()).map(|e| e.why).unwrap_or_default()
        };
        let params = InitializeParams {
            process_id: Some(std::process::id()),
            #[allow(deprecated)]
            root_uri: Some(uri_of(root)?),
            initialization_options: spec.initialization.clone(),
            capabilities: capabilities(),
            workspace_folders: Some(folders),
            ..InitializeParams::default()
        };
        let init = tokio::select! {
            r = tokio::time::timeout(timeout, socket.clone().initialize(params)) => match r {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => {
                    // The connection broke, or the server refused: say how
                    // the process ended, if it did.
                    let why = tokio::time::timeout(Duration::from_millis(1500), ended_why(ended.clone())).await;
                    Err(match why {
                        Ok(why) => format!("it ended before initialising: {why}"),
                        Err(_) => format!("initialize failed: {e}"),
                    })
                }
                Err(_) => Err(format!("it did not initialise within {} ms", timeout.as_millis())),
            },
            why = ended_why(ended.clone()) => Err(format!("it ended before initialising: {why}")),
        };
        if let Err(e) = init {
            return Err(fail(e).await);
        }
        if let Err(e) = socket.clone().initialized(InitializedParams {}) {
            return Err(fail(format!("initialized failed: {e}")).await);
        }
        let sidecar = match &spec.watch {
            Some(command) if !command.is_empty() => match spawn(command, &spec.env, root, false) {
                Ok(mut c) => {
                    if let Some(stderr) = c.stderr().take() {
                        let (done, _) = tokio::sync::oneshot::channel();
                        runner.spawn(log_stderr(format!("{} watch", spec.id), stderr, Tail::default(), done));
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
        Ok(Arc::new(Client {
            spec: spec.clone(),
            socket,
            diagnostics,
            open: tokio::sync::Mutex::default(),
            uses: AtomicU64::new(0),
            pid,
            group,
            ended,
            sidecar: Mutex::new(sidecar),
            started: Instant::now(),
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

    /// How its connection ended, if it did.
    pub fn ended(&self) -> Option<Ended> {
        self.ended.borrow().clone()
    }

    /// How long it ran (until it ended, or until now).
    pub fn uptime(&self) -> Duration {
        self.ended().map_or_else(|| self.started.elapsed(), |e| e.at.saturating_duration_since(self.started))
    }

    /// Wait until the connection ends.
    async fn until_ended(&self) -> String {
        let mut rx = self.ended.clone();
        let why = rx.wait_for(Option::is_some).await.ok().and_then(|e| e.clone()).map(|e| e.why);
        why.unwrap_or_default()
    }

    /// A request answered within `timeout`, failing at once when the
    /// server is gone.
    pub async fn request<R: lsp::request::Request>(
        &self,
        params: R::Params,
        timeout: Duration,
    ) -> Result<R::Result, String> {
        tokio::select! {
            r = tokio::time::timeout(timeout, self.socket.request::<R>(params)) => match r {
                Ok(r) => r.map_err(|e| format!("{} failed: {e}", R::METHOD)),
                Err(_) => Err(format!("{} did not answer {} within {} ms.", self.spec.name, R::METHOD, timeout.as_millis())),
            },
            why = self.until_ended() => Err(format!("the server ended: {why}")),
        }
    }

    /// Tell the server what `path` holds now (opening it the first time,
    /// the whole text after that). The other open documents are checked
    /// against the disk first (a shell command or `git checkout` may have
    /// changed them: the server must not judge this file against stale
    /// ones); one gone is closed, and past [`MAX_OPEN`] the least
    /// recently used are.
    pub async fn sync(&self, path: &Path) -> Result<Synced, String> {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let uri = uri_of(path)?;
        let mut open = self.open.lock().await;
        let used = self.uses.fetch_add(1, Ordering::Relaxed);
        // The others, against the disk.
        let others: Vec<(Url, PathBuf)> =
            open.iter().filter(|(u, _)| **u != uri).map(|(u, d)| (u.clone(), d.path.clone())).collect();
        for (other, other_path) in others {
            match tokio::fs::read_to_string(&other_path).await {
                Ok(now) => {
                    let Some(doc) = open.get_mut(&other) else { continue };
                    if doc.text != now {
                        self.change(&other, doc, now)?;
                    }
                }
                Err(_) => self.close(&mut open, &other)?,
            }
        }
        while open.len() >= MAX_OPEN && !open.contains_key(&uri) {
            let Some(oldest) = open.iter().min_by_key(|(_, d)| d.used).map(|(u, _)| u.clone()) else { break };
            self.close(&mut open, &oldest)?;
        }
        let before = *self.diagnostics.seq.borrow();
        let after = match open.get_mut(&uri) {
            Some(doc) => {
                doc.used = used;
                if doc.text == text {
                    None
                } else {
                    self.change(&uri, doc, text)?;
                    Some((before, doc.version))
                }
            }
            None => {
                self.diagnostics.opened(&uri);
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
                open.insert(uri.clone(), Open { path: path.to_path_buf(), version: 1, text, used });
                Some((before, 1))
            }
        };
        Ok(Synced { uri, after })
    }

    fn change(&self, uri: &Url, doc: &mut Open, text: String) -> Result<(), String> {
        doc.version += 1;
        let params = lsp::DidChangeTextDocumentParams {
            text_document: lsp::VersionedTextDocumentIdentifier { uri: uri.clone(), version: doc.version },
            content_changes: vec![lsp::TextDocumentContentChangeEvent {
                range: None,
                range_length: None,
                text: text.clone(),
            }],
        };
        doc.text = text;
        self.socket.clone().did_change(params).map_err(|e| format!("didChange failed: {e}"))
    }

    fn close(&self, open: &mut HashMap<Url, Open>, uri: &Url) -> Result<(), String> {
        open.remove(uri);
        self.diagnostics.closed(uri);
        let params = lsp::DidCloseTextDocumentParams {
            text_document: lsp::TextDocumentIdentifier { uri: uri.clone() },
        };
        self.socket.clone().did_close(params).map_err(|e| format!("didClose failed: {e}"))
    }

    /// The diagnostics of a synced document: for a changed one, those of
    /// a publish after the change (for the version sent, when the server
    /// says which), then quiet for `settle` (a server may publish a file's
    /// syntax errors before its type errors); for an unchanged one, what is
    /// known (or the first publish). `None` if none came by `deadline` or
    /// the server ended.
    pub async fn diagnostics_after(
        &self,
        synced: &Synced,
        deadline: tokio::time::Instant,
        settle: Duration,
    ) -> Option<Vec<Diagnostic>> {
        let uri = &synced.uri;
        let fresh = |p: &Published| match synced.after {
            None => true,
            Some((since, version)) => p.seq > since && p.version.is_none_or(|v| v >= version),
        };
        let wait = async {
            let mut seq = self.diagnostics.seq.subscribe();
            // The first fresh publish.
            while !self.diagnostics.get(uri).is_some_and(|p| fresh(&p)) {
                tokio::time::timeout_at(deadline, seq.changed()).await.ok()?.ok()?;
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
        };
        tokio::select! {
            found = wait => found,
            _ = self.until_ended() => None,
        }
    }

    /// Shut the server down: `shutdown` and `exit`, then its process group
    /// is killed whatever it did.
    pub async fn shutdown(&self) {
        if self.ended().is_none() {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.socket.clone().shutdown(())).await;
            let _ = self.socket.clone().exit(());
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.until_ended()).await;
        }
        self.kill_group();
    }

    /// Kill the process group (once) and the sidecar, at once.
    pub fn kill_group(&self) {
        self.group.kill();
        if let Some(mut sidecar) = self.sidecar.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = sidecar.start_kill();
        }
    }

    /// The resident memory of the server's process group, in bytes
    /// (Linux; reads `/proc`, so call it off the async threads).
    pub fn rss_bytes(&self) -> Option<u64> {
        if self.group.killed.load(Ordering::Acquire) {
            return None;
        }
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
