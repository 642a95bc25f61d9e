//! Tools: implement [`Tool`], serve it with [`serve`].
//!
//! The contract itself — the trait, what `execute` may do, the `spec` /
//! `start` / `next` / `cancel` protocol — is documented in
//! [`dispatch_protocol::tool`], re-exported here. This module adds the bus
//! key and the plumbing, so a tool plugin is its tool plus a few lines:
//!
//! ```
//! use std::sync::Arc;
//! use dispatch_abi::{Context, Error, Plugin, PluginManifest};
//! use dispatch_contracts::tool::{self, BoxFuture, Tool, ToolContext, ToolError, ToolOutput, ToolServer};
//! use serde_json::{json, Value};
//!
//! struct Shout;
//! impl Tool for Shout {
//!     fn name(&self) -> &str { "shout" }
//!     fn description(&self) -> &str { "Upper-cases `text`." }
//!     fn input_schema(&self) -> Value { json!({"type": "object", "properties": {"text": {"type": "string"}}}) }
//!     fn concurrency_safe(&self) -> bool { true }
//!     fn execute(&self, input: Value, _ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
//!         let text = input["text"].as_str().map(str::to_uppercase);
//!         Box::pin(async move {
//!             text.map(ToolOutput::ok).ok_or_else(|| ToolError::InvalidInput("`text` must be a string".into()))
//!         })
//!     }
//! }
//!
//! pub struct ShoutPlugin(ToolServer);
//! impl Plugin for ShoutPlugin {
//!     fn manifest() -> PluginManifest {
//!         tool::manifest("shout", env!("CARGO_PKG_VERSION"), "shout").description("Upper-cases text")
//!     }
//!     fn activate(ctx: Context) -> Result<Self, Error> {
//!         Ok(ShoutPlugin(tool::serve(ctx.host(), Arc::new(Shout), 1)?))
//!     }
//!     fn deactivate(&mut self) -> Result<(), Error> {
//!         self.0.stop();
//!         Ok(())
//!     }
//! }
//! ```
//!
//! The service name is derived from the tool's own name (`tool.shout`), so
//! the two cannot disagree, and the bus refuses a second plugin offering a
//! tool of the same name with an error naming both plugins.

#[cfg(feature = "runtime")]
use std::{panic::AssertUnwindSafe, path::PathBuf, sync::Arc, time::Duration};

#[cfg(feature = "runtime")]
use dispatch_abi::runtime::{PluginRuntime, Runner};
#[cfg(feature = "runtime")]
use dispatch_abi::{codes, to_json, Error, Host};
use dispatch_abi::{Event, PluginManifest, Service};
pub use dispatch_protocol::tool::*;
pub use dispatch_protocol::wire::OutputStream;
pub use dispatch_protocol::BoxFuture;
#[cfg(feature = "runtime")]
use futures::FutureExt as _;
use serde_json::Value;

#[cfg(feature = "runtime")]
use crate::pull::PullTable;
#[cfg(feature = "runtime")]
use std::future::Future as _;

/// The key of the tool named `tool_name`: `tool.<name>` at [`VERSION`].
/// Answers differ by op (see [`ToolRequest`]), hence `Value`.
pub fn key(tool_name: &str) -> Service<ToolRequest, Value> {
    Service::named(service_name(tool_name), VERSION)
}

/// A plugin changed the tools it offers while running (a [`ToolServer`]
/// added, replaced or withdrew some): whoever keeps tool descriptions
/// forgets those named. Published by [`ToolServer::add`] and
/// [`ToolServer::remove`].
pub const CHANGED: Event<ToolsChanged> = Event::new("tools.changed", 1);

/// A manifest for a plugin serving the tool `tool_name`, declaring its
/// service — so the declaration cannot drift from what [`serve`] provides.
pub fn manifest(id: &str, version: &str, tool_name: &str) -> PluginManifest {
    PluginManifest::new(id, version).provides("service", service_name(tool_name))
}

#[cfg(feature = "runtime")]
/// What a run's stream carries.
#[derive(Debug)]
enum Item {
    Output(OutputPiece),
    Result(RunResult),
}

#[cfg(feature = "runtime")]
/// A call's future: runs the tool and sends its result into the run's
/// stream.
type RunTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

#[cfg(feature = "runtime")]
/// Calls not yet finished, by run id, each polled by whoever waits in its
/// `next` — on the caller's thread, inside the server's runtime context —
/// rather than spawned onto the runtime: a call then costs no hop onto
/// the runtime's thread and back (for a quick tool most of its cost). A
/// cancelled call is handed to the runtime to finish — it has been told to
/// abort, and cleans up. At a stop the runtime shuts down at once, so an
/// unfinished call is dropped with it, as a spawned one always was.
#[derive(Default)]
struct Calls(std::sync::Mutex<std::collections::HashMap<u64, Slot>>);

#[cfg(feature = "runtime")]
/// One call's future; `None` once it finished or was handed to the
/// runtime, so a second reader holding the slot never polls it again.
type Slot = Arc<std::sync::Mutex<Option<RunTask>>>;

#[cfg(feature = "runtime")]
impl Calls {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Slot>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slot(&self, run_id: u64) -> Option<Slot> {
        self.lock().get(&run_id).cloned()
    }

    /// Poll the call once, inside the runner's runtime context (its tokio resources —
    /// timers, sockets, the blocking pool — belong to that runtime; their
    /// wake-ups go to the caller's waker).
    fn poll(&self, run_id: u64, runner: &Runner, cx: &mut std::task::Context<'_>) {
        let Some(slot) = self.slot(run_id) else { return };
        let mut task = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(fut) = task.as_mut() else { return };
        let _context = runner.handle().enter();
        if fut.as_mut().poll(cx).is_ready() {
            *task = None;
            drop(task);
            self.lock().remove(&run_id);
        }
    }

    /// Hand a call nobody will read to the runtime, to finish there (or
    /// be dropped when the server stops).
    fn abandon(&self, run_id: u64, runner: &Runner) {
        let slot = self.lock().remove(&run_id);
        if let Some(task) =
            slot.and_then(|s| s.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take())
        {
            runner.spawn(task);
        }
    }

    fn abandon_all(&self, runner: &Runner) {
        let ids: Vec<u64> = self.lock().keys().copied().collect();
        for id in ids {
            self.abandon(id, runner);
        }
    }
}

#[cfg(feature = "runtime")]
/// The tools a server offers, by name; shared with every service handler,
/// so a tool can be replaced or withdrawn while its service stays
/// registered (the bus has no "unprovide").
type Served = Arc<std::sync::RwLock<std::collections::HashMap<String, Arc<dyn Tool>>>>;

#[cfg(feature = "runtime")]
/// Tools being served, all on one runtime. [`serve`] makes one for a
/// single tool; a plugin whose tools are only known at run time (MCP
/// servers) makes one with [`ToolServer::new`] and [`ToolServer::add`]s,
/// replaces and [`ToolServer::remove`]s tools as they come and go. Call
/// [`ToolServer::stop`] from `deactivate`.
///
/// A call is not spawned: its future is polled by whoever waits in its
/// `next`, on that thread, inside the server runtime's context (timers,
/// sockets and `spawn_blocking` work as on the runtime). A quick tool then
/// answers with no thread hand-off at all; a cancelled call is handed to
/// the runtime, its abort signal fired, to clean up.
pub struct ToolServer {
    host: Host,
    /// Taken by [`ToolServer::stop`].
    runtime: std::sync::Mutex<Option<PluginRuntime>>,
    runner: Runner,
    runs: Arc<PullTable<Item>>,
    calls: Arc<Calls>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    served: Served,
    /// Names registered on the bus: a registration outlives a removal.
    provided: std::sync::Mutex<std::collections::HashSet<String>>,
}

#[cfg(feature = "runtime")]
impl std::fmt::Debug for ToolServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolServer").field("running", &self.runs.len()).finish_non_exhaustive()
    }
}

#[cfg(feature = "runtime")]
/// What a call cut short by [`ToolServer::stop`] tells the model.
const STOPPED: &str =
    "the tool's plugin was stopped during this call (a plugin reload, or the server shutting down)";

#[cfg(feature = "runtime")]
/// Serve `tool` on the bus as `tool.<its name>`, with a new runtime of
/// `workers` threads (named after the tool) whose context calls are polled
/// in (see [`ToolServer`]). Fails if another plugin already serves a tool
/// of that name.
pub fn serve(host: &Host, tool: Arc<dyn Tool>, workers: usize) -> Result<ToolServer, Error> {
    let server = ToolServer::new(host, &format!("tool-{}", tool.name()), workers)?;
    server.add(tool)?;
    Ok(server)
}

#[cfg(feature = "runtime")]
impl ToolServer {
    /// A server with no tools yet, whose calls run on a new runtime of
    /// `workers` threads named `name`.
    pub fn new(host: &Host, name: &str, workers: usize) -> Result<Self, Error> {
        let runtime = PluginRuntime::new(name, workers)?;
        Ok(ToolServer {
            host: host.clone(),
            runner: runtime.runner(),
            runtime: std::sync::Mutex::new(Some(runtime)),
            runs: Arc::default(),
            calls: Arc::default(),
            stopping: Arc::default(),
            served: Arc::default(),
            provided: std::sync::Mutex::default(),
        })
    }

    /// The runtime calls run on, for entering its context. Tasks spawned
    /// on it directly outlive [`ToolServer::stop`] when the runtime is the
    /// host's: spawn through [`ToolServer::runner`].
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runner.handle()
    }

    /// Runs the plugin's own tasks where calls run; they stop with
    /// [`ToolServer::stop`].
    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// Offer `tool` as `tool.<its name>`, or — when this server already
    /// offered a tool of that name — replace it: later `spec`s describe the
    /// new one and later calls run it (calls in progress finish on the old).
    /// Fails if another plugin serves a tool of that name.
    pub fn add(&self, tool: Arc<dyn Tool>) -> Result<(), Error> {
        let name = tool.name().to_owned();
        // Held across the registration, so two adds of one new name cannot
        // both register it.
        let mut provided = self.provided.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !provided.contains(&name) {
            // Register before the tool becomes visible, so a failure leaves
            // nothing behind.
            self.provide(&name)?;
            provided.insert(name.clone());
        }
        let replaced =
            self.served.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.clone(), tool);
        drop(provided);
        if replaced.is_some() {
            self.changed(name);
        }
        Ok(())
    }

    /// Tell the bus which tool changed; a failure to publish only costs a
    /// stale description until the next plugin change, so it is logged.
    fn changed(&self, name: String) {
        if let Err(e) = self.host.publish(&CHANGED, &ToolsChanged { tools: vec![name] }) {
            tracing::warn!(error = %e, "cannot announce a changed tool");
        }
    }

    /// Stop offering the tool `name`. Its service stays registered (the bus
    /// keeps a service until its plugin stops) and answers that the tool is
    /// gone; a later [`ToolServer::add`] of the same name offers it again.
    /// Calls in progress finish. Answers whether it was offered.
    pub fn remove(&self, name: &str) -> bool {
        let removed =
            self.served.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name).is_some();
        if removed {
            self.changed(name.to_owned());
        }
        removed
    }

    /// The names of the tools offered now, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.served.read().unwrap_or_else(std::sync::PoisonError::into_inner).keys().cloned().collect();
        names.sort();
        names
    }

    fn provide(&self, name: &str) -> Result<(), Error> {
        let table = Arc::clone(&self.runs);
        let calls = Arc::clone(&self.calls);
        let runner = self.runner.clone();
        let stopped = Arc::clone(&self.stopping);
        let served = Arc::clone(&self.served);
        let name = name.to_owned();
        self.host.provide(&key(&name), move |req: ToolRequest| {
            let (table, calls, runner) = (Arc::clone(&table), Arc::clone(&calls), runner.clone());
            let stopping = Arc::clone(&stopped);
            let current =
                served.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&name).cloned();
            let name = name.clone();
            async move {
                let gone = || Error::new(codes::NOT_FOUND, format!("the tool `{name}` is no longer offered"));
                match req {
                    ToolRequest::Spec => to_json(&describe(current.ok_or_else(gone)?.as_ref())),
                    ToolRequest::Start { .. } if stopping.load(std::sync::atomic::Ordering::SeqCst) => {
                        // The bus drops a plugin's services only after its
                        // `deactivate` returned: a call started in between
                        // would run in a runtime already shut down.
                        Err(Error::new(
                            codes::UNAVAILABLE,
                            "the tool's plugin is stopping (a plugin reload, or the server shutting down); the call was not started",
                        ))
                    }
                    ToolRequest::Start { call_id, conversation_id, cwd, input } => {
                        let tool = current.ok_or_else(gone)?;
                        let (run_id, tx, abort) = table.open();
                        let out = tx.clone();
                        let output: OutputSink = Arc::new(move |text: &str, stream| {
                            let _ = out
                                .unbounded_send(Item::Output(OutputPiece { stream, text: text.to_owned() }));
                        });
                        let ctx = ToolContext {
                            tool_call_id: call_id,
                            conversation_id,
                            cwd: cwd.map(PathBuf::from),
                            abort,
                            output,
                        };
                        let task: RunTask = Box::pin(async move {
                            let result = run_contained(tool.as_ref(), input, ctx).await;
                            let _ = tx.unbounded_send(Item::Result(result));
                        });
                        let slot: Slot = Arc::new(std::sync::Mutex::new(Some(task)));
                        calls.lock().insert(run_id, slot);
                        to_json(&Started { run_id })
                    }
                    ToolRequest::Next { run_id } => {
                        // Take what the call produced; while there is
                        // nothing, drive it and look again. The answer comes
                        // first so that a reader refused (another one holds
                        // the run) never polls the call: that would move its
                        // wake-ups away from the real reader.
                        let mut answer = std::pin::pin!(next(&table, &stopping, run_id));
                        std::future::poll_fn(|cx| {
                            if let std::task::Poll::Ready(done) = answer.as_mut().poll(cx) {
                                return std::task::Poll::Ready(done);
                            }
                            calls.poll(run_id, &runner, cx);
                            answer.as_mut().poll(cx)
                        })
                        .await
                    }
                    ToolRequest::Cancel { run_id } => {
                        table.cancel(run_id);
                        calls.abandon(run_id, &runner);
                        to_json(&serde_json::Map::new())
                    }
                    other => {
                        Err(Error::new(codes::UNSUPPORTED, format!("unsupported tool request: {other:?}")))
                    }
                }
            }
        })
    }
}

#[cfg(feature = "runtime")]
/// Answer a `next`: the output since the last one, and the result once the
/// call is over — saying so when the call was cut short by a stop.
async fn next(
    table: &PullTable<Item>,
    stopping: &std::sync::atomic::AtomicBool,
    run_id: u64,
) -> Result<Value, Error> {
    let is_stopping = || stopping.load(std::sync::atomic::Ordering::SeqCst);
    let pulled = match table.next(run_id, |i| matches!(i, Item::Result(_))).await {
        Ok(p) => p,
        // Forgotten because the plugin is stopping: say so.
        Err(_) if is_stopping() => {
            let failed = RunResult::Failed { message: format!("{STOPPED}; the call did not finish") };
            return to_json(&RunBatch { result: Some(failed), ..RunBatch::default() });
        }
        Err(e) => return Err(e.into()),
    };
    let mut batch = RunBatch::default();
    for item in pulled.items {
        match item {
            Item::Output(piece) => batch.output.push(piece),
            Item::Result(r) => batch.result = Some(r),
        }
    }
    if pulled.closed && batch.result.is_none() {
        // The run's future was dropped without a result: the runtime shut
        // down under it.
        batch.result = Some(RunResult::Failed { message: format!("{STOPPED}; the call did not finish") });
    } else if is_stopping() {
        // Ended by the stop (a shell's aborted command): say why.
        batch.result = batch.result.map(|r| match r {
            RunResult::Output { content, is_error: true, images, timed_out } => RunResult::Output {
                content: format!("{STOPPED}: {content}"),
                is_error: true,
                images,
                timed_out,
            },
            RunResult::Failed { message } => RunResult::Failed { message: format!("{STOPPED}: {message}") },
            other => other,
        });
    }
    to_json(&batch)
}

#[cfg(feature = "runtime")]
/// Run one call; a panic while starting or running it becomes an error
/// result, so every call ends with exactly one result.
async fn run_contained(tool: &dyn Tool, input: Value, ctx: ToolContext) -> RunResult {
    let name = tool.name();
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| tool.execute(input, ctx)));
    let outcome = match started {
        Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
        Err(p) => Err(p),
    };
    match outcome {
        Ok(r) => RunResult::from(r),
        Err(p) => RunResult::Failed {
            message: format!("the `{name}` tool panicked: {}", dispatch_abi::error::panic_message(&*p)),
        },
    }
}

#[cfg(feature = "runtime")]
impl ToolServer {
    /// Calls in progress.
    pub fn running(&self) -> usize {
        self.runs.len()
    }

    /// Abort every call in progress (a shell's process group is killed)
    /// and stop the runtime, giving calls up to five seconds to clean up.
    pub fn stop(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        self.runs.cancel_all();
        self.calls.abandon_all(&self.runner);
        let runtime = self.runtime.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(mut runtime) = runtime {
            runtime.shutdown(Duration::from_secs(5));
        }
    }
}
