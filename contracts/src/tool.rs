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
use dispatch_abi::runtime::PluginRuntime;
#[cfg(feature = "runtime")]
use dispatch_abi::{codes, to_json, Error, Host};
use dispatch_abi::{PluginManifest, Service};
pub use dispatch_protocol::tool::*;
pub use dispatch_protocol::wire::OutputStream;
pub use dispatch_protocol::BoxFuture;
#[cfg(feature = "runtime")]
use futures::FutureExt as _;
use serde_json::Value;

#[cfg(feature = "runtime")]
use crate::pull::PullTable;

/// The key of the tool named `tool_name`: `tool.<name>` at [`VERSION`].
/// Answers differ by op (see [`ToolRequest`]), hence `Value`.
pub fn key(tool_name: &str) -> Service<ToolRequest, Value> {
    Service::named(service_name(tool_name), VERSION)
}

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
/// A tool being served. Call [`ToolServer::stop`] from `deactivate`.
#[derive(Debug)]
pub struct ToolServer {
    runtime: PluginRuntime,
    runs: Arc<PullTable<Item>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(feature = "runtime")]
/// What a call cut short by [`ToolServer::stop`] tells the model.
const STOPPED: &str =
    "the tool's plugin was stopped during this call (a plugin reload, or the server shutting down)";

#[cfg(feature = "runtime")]
/// Serve `tool` on the bus as `tool.<its name>`, running calls on a new
/// runtime of `workers` threads (named after the tool). Fails if another
/// plugin already serves a tool of that name.
pub fn serve(host: &Host, tool: Arc<dyn Tool>, workers: usize) -> Result<ToolServer, Error> {
    let runtime = PluginRuntime::new(&format!("tool-{}", tool.name()), workers)?;
    let runs: Arc<PullTable<Item>> = Arc::default();
    let runner = runtime.runner();
    let table = Arc::clone(&runs);
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = Arc::clone(&stopping);
    host.provide(&key(tool.name()), move |req: ToolRequest| {
        let (table, tool, runner) = (Arc::clone(&table), Arc::clone(&tool), runner.clone());
        let stopping = Arc::clone(&stopped);
        async move {
            match req {
                ToolRequest::Spec => to_json(&describe(tool.as_ref())),
                ToolRequest::Start { call_id, conversation_id, cwd, input } => {
                    let (run_id, tx, abort) = table.open();
                    let out = tx.clone();
                    let output: OutputSink = Arc::new(move |text: &str, stream| {
                        let _ =
                            out.unbounded_send(Item::Output(OutputPiece { stream, text: text.to_owned() }));
                    });
                    let ctx = ToolContext {
                        tool_call_id: call_id,
                        conversation_id,
                        cwd: cwd.map(PathBuf::from),
                        abort,
                        output,
                    };
                    runner.spawn(async move {
                        let result = run_contained(tool.as_ref(), input, ctx).await;
                        let _ = tx.unbounded_send(Item::Result(result));
                    });
                    to_json(&Started { run_id })
                }
                ToolRequest::Next { run_id } => {
                    let is_stopping = || stopping.load(std::sync::atomic::Ordering::SeqCst);
                    let pulled = match table.next(run_id, |i| matches!(i, Item::Result(_))).await {
                        Ok(p) => p,
                        // Forgotten because the plugin is stopping: say so.
                        Err(_) if is_stopping() => {
                            let failed =
                                RunResult::Failed { message: format!("{STOPPED}; the call did not finish") };
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
                        // The run's future was dropped without a result:
                        // the runtime shut down under it.
                        batch.result = Some(RunResult::Failed {
                            message: format!("{STOPPED}; the call did not finish"),
                        });
                    } else if is_stopping() {
                        // Ended by the stop (a shell's aborted command): say why.
                        batch.result = batch.result.map(|r| match r {
                            RunResult::Output { content, is_error: true } => {
                                RunResult::Output { content: format!("{STOPPED}: {content}"), is_error: true }
                            }
                            RunResult::Failed { message } => {
                                RunResult::Failed { message: format!("{STOPPED}: {message}") }
                            }
                            other => other,
                        });
                    }
                    to_json(&batch)
                }
                ToolRequest::Cancel { run_id } => {
                    table.cancel(run_id);
                    to_json(&serde_json::Map::new())
                }
                other => Err(Error::new(codes::UNSUPPORTED, format!("unsupported tool request: {other:?}"))),
            }
        }
    })?;
    Ok(ToolServer { runtime, runs, stopping })
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
    pub fn stop(&mut self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        self.runs.cancel_all();
        self.runtime.shutdown(Duration::from_secs(5));
    }
}
