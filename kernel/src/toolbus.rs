//! Tools on the bus.
//!
//! A tool plugin serves one service named `tool.<name>` (schema version
//! [`TOOL_VERSION`]) whose requests are tagged by `op` ([`ToolRequest`]):
//! `spec` describes the tool, `start` begins a call and answers a run id,
//! each `next` answers the output produced since the previous `next`
//! (waiting until there is some, or the result), and `cancel` fires the
//! call's abort signal — the tool stops, cleans up (a shell kills its
//! process group) and its run is forgotten. It is the provider protocol of
//! [`crate::remote`] again, because a tool call is a stream too: output
//! pieces, then one result.
//!
//! Any service whose name starts with [`TOOL_PREFIX`] is a tool: the host
//! offers every such service to a turn, so an operator adds a tool by
//! adding its `.so` and removes it by leaving it out.
//!
//! [`RunTable`] is the tool side (runtime-agnostic; the plugin spawns each
//! run on its own runtime), [`RemoteTool`] the turn's side: a kernel
//! [`Tool`] that speaks this protocol through any [`ServiceCaller`].

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use futures::channel::mpsc;
use futures::FutureExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bus::{BoxFuture, Spawner};
use crate::remote::{next_ready, ServiceCaller};
use crate::runtime::AbortSignal;
use crate::tool::{OutputSink, Tool, ToolContext, ToolError, ToolOutput};
use crate::wire::OutputStream;

/// Schema version of every tool service.
pub const TOOL_VERSION: u32 = 1;
/// Services named `tool.<name>` are tools.
pub const TOOL_PREFIX: &str = "tool.";

/// Requests to a tool service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
#[non_exhaustive]
pub enum ToolRequest {
    /// Describe the tool ([`ToolDescription`]).
    Spec,
    /// Begin a call ([`Started`]).
    Start {
        /// The model's call id.
        call_id: String,
        /// The conversation the call belongs to.
        conversation_id: String,
        /// The turn's working directory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        /// The model's input.
        input: Value,
    },
    /// Output since the last `next`, and the result once there is one
    /// ([`RunBatch`]).
    Next {
        /// From [`Started`].
        run_id: u64,
    },
    /// Abort the call. Unknown ids are ignored.
    Cancel {
        /// From [`Started`].
        run_id: u64,
    },
}

/// What `spec` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolDescription {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of its input.
    pub input_schema: Value,
    /// Whether calls may run in parallel with others.
    #[serde(default)]
    pub concurrency_safe: bool,
}

/// What `start` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    /// Names the run in `next` and `cancel`.
    pub run_id: u64,
}

/// One piece of streamed output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputPiece {
    /// Which stream.
    pub stream: OutputStream,
    /// The text.
    pub text: String,
}

/// How a call ended, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase")]
#[non_exhaustive]
pub enum RunResult {
    /// The tool answered (possibly an error the model should read).
    Output {
        /// What the model reads.
        content: String,
        /// Whether it is an error.
        is_error: bool,
    },
    /// [`ToolError::InvalidInput`].
    InvalidInput {
        /// Why.
        message: String,
    },
    /// [`ToolError::Failed`].
    Failed {
        /// Why.
        message: String,
    },
}

impl From<Result<ToolOutput, ToolError>> for RunResult {
    fn from(r: Result<ToolOutput, ToolError>) -> Self {
        match r {
            Ok(o) => RunResult::Output { content: o.content, is_error: o.is_error },
            Err(ToolError::InvalidInput(message)) => RunResult::InvalidInput { message },
            Err(ToolError::Failed(message)) => RunResult::Failed { message },
        }
    }
}

impl From<RunResult> for Result<ToolOutput, ToolError> {
    fn from(r: RunResult) -> Self {
        match r {
            RunResult::Output { content, is_error } => Ok(ToolOutput { content, is_error }),
            RunResult::InvalidInput { message } => Err(ToolError::InvalidInput(message)),
            RunResult::Failed { message } => Err(ToolError::Failed(message)),
        }
    }
}

/// What `next` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunBatch {
    /// Output since the previous `next`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<OutputPiece>,
    /// Present once: the call is over and its run forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RunResult>,
}

enum Item {
    Output(OutputPiece),
    Result(RunResult),
}

struct Run {
    rx: Option<mpsc::UnboundedReceiver<Item>>,
    abort: AbortSignal,
}

/// The tool side of the protocol: the calls in progress, by run id.
#[derive(Default)]
pub struct RunTable {
    next_id: std::sync::atomic::AtomicU64,
    runs: Mutex<HashMap<u64, Run>>,
}

impl RunTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Run>> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Begin a call of `tool`. Answers the run id and the future that runs
    /// it, for the plugin to spawn on its runtime. A panic in the tool
    /// becomes an error result; the call always ends with one result.
    pub fn start(
        &self,
        tool: Arc<dyn Tool>,
        call_id: String,
        conversation_id: String,
        cwd: Option<String>,
        input: Value,
    ) -> (u64, BoxFuture<()>) {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::unbounded();
        let abort = AbortSignal::new();
        self.lock().insert(id, Run { rx: Some(rx), abort: abort.clone() });
        let out = tx.clone();
        let output: OutputSink = Arc::new(move |text: &str, stream| {
            let _ = out.unbounded_send(Item::Output(OutputPiece { stream, text: text.to_owned() }));
        });
        let ctx = ToolContext {
            tool_call_id: call_id,
            conversation_id,
            cwd: cwd.map(PathBuf::from),
            abort,
            output,
        };
        let name = tool.name().to_owned();
        let fut = async move {
            let started = std::panic::catch_unwind(AssertUnwindSafe(|| tool.execute(input, ctx)));
            let result = match started {
                Ok(f) => match AssertUnwindSafe(f).catch_unwind().await {
                    Ok(r) => RunResult::from(r),
                    Err(p) => panicked(&name, &*p),
                },
                Err(p) => panicked(&name, &*p),
            };
            let _ = tx.unbounded_send(Item::Result(result));
        };
        (id, Box::pin(fut))
    }

    /// Wait for output or the result of run `id` and answer all that is
    /// ready. Unknown ids (cancelled, finished, never started) are an
    /// error.
    pub async fn next(&self, id: u64) -> Result<RunBatch, String> {
        let mut rx = {
            let mut runs = self.lock();
            let run = runs.get_mut(&id).ok_or_else(|| format!("no run {id} (finished or cancelled)"))?;
            run.rx.take().ok_or_else(|| format!("run {id} is already being read"))?
        };
        let (items, closed) = next_ready(&mut rx, |i| matches!(i, Item::Result(_))).await;
        let mut batch = RunBatch::default();
        for item in items {
            match item {
                Item::Output(piece) => batch.output.push(piece),
                Item::Result(r) => batch.result = Some(r),
            }
        }
        if closed && batch.result.is_none() {
            // The run's future was dropped without a result (its runtime
            // shut down under it).
            batch.result = Some(RunResult::Failed { message: "the tool stopped without a result".into() });
        }
        let mut runs = self.lock();
        if batch.result.is_some() {
            runs.remove(&id);
        } else if let Some(run) = runs.get_mut(&id) {
            run.rx = Some(rx);
        }
        Ok(batch)
    }

    /// Abort run `id` and forget it.
    pub fn cancel(&self, id: u64) {
        if let Some(run) = self.lock().remove(&id) {
            run.abort.abort();
        }
    }

    /// Abort every run (deactivation).
    pub fn cancel_all(&self) {
        for (_, run) in self.lock().drain() {
            run.abort.abort();
        }
    }

    /// Runs in progress.
    pub fn running(&self) -> usize {
        self.lock().len()
    }

    /// Answer a request for `tool`. `spawn` starts a run's future on the
    /// plugin's runtime.
    pub async fn answer(
        &self,
        tool: &Arc<dyn Tool>,
        req: ToolRequest,
        spawn: impl FnOnce(BoxFuture<()>),
    ) -> Result<Value, String> {
        let json = |v: Result<Value, serde_json::Error>| v.map_err(|e| e.to_string());
        match req {
            ToolRequest::Spec => json(serde_json::to_value(describe(tool.as_ref()))),
            ToolRequest::Start { call_id, conversation_id, cwd, input } => {
                let (run_id, fut) = self.start(Arc::clone(tool), call_id, conversation_id, cwd, input);
                spawn(fut);
                json(serde_json::to_value(Started { run_id }))
            }
            ToolRequest::Next { run_id } => json(serde_json::to_value(self.next(run_id).await?)),
            ToolRequest::Cancel { run_id } => {
                self.cancel(run_id);
                Ok(Value::Object(serde_json::Map::new()))
            }
        }
    }
}

/// A tool's `spec` answer.
pub fn describe(tool: &dyn Tool) -> ToolDescription {
    ToolDescription {
        name: tool.name().to_owned(),
        description: tool.description().to_owned(),
        input_schema: tool.input_schema(),
        concurrency_safe: tool.concurrency_safe(),
    }
}

fn panicked(name: &str, payload: &(dyn std::any::Any + Send)) -> RunResult {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into());
    RunResult::Failed { message: format!("the `{name}` tool panicked: {text}") }
}

/// A [`Tool`] served by a tool service on the bus.
pub struct RemoteTool<C> {
    caller: Arc<C>,
    service: String,
    spec: ToolDescription,
    spawn: Option<Spawner>,
}

async fn call<C: ServiceCaller, T: serde::de::DeserializeOwned>(
    caller: &C,
    service: &str,
    req: &ToolRequest,
) -> Result<T, String> {
    let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    let bytes = caller
        .call(service, TOOL_VERSION, body)
        .await
        .map_err(|(code, message)| format!("tool service `{service}` failed ({code}): {message}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("tool service `{service}` answered invalid JSON: {e}"))
}

impl<C: ServiceCaller> RemoteTool<C> {
    /// Ask `service` for its description. With a spawner, a call dropped
    /// before its result (the turn was aborted) is cancelled at once.
    pub async fn connect(caller: Arc<C>, service: &str, spawn: Option<Spawner>) -> Result<Self, String> {
        let spec: ToolDescription = call(&*caller, service, &ToolRequest::Spec).await?;
        Ok(RemoteTool { caller, service: service.to_owned(), spec, spawn })
    }
}

/// Cancels a run whose caller went away before its result.
struct CancelOnDrop<C: ServiceCaller> {
    caller: Arc<C>,
    service: String,
    run_id: Option<u64>,
    spawn: Option<Spawner>,
}

impl<C: ServiceCaller> Drop for CancelOnDrop<C> {
    fn drop(&mut self) {
        if let (Some(run_id), Some(spawn)) = (self.run_id, self.spawn.as_ref()) {
            let caller = Arc::clone(&self.caller);
            let service = std::mem::take(&mut self.service);
            spawn(Box::pin(async move {
                let _ = call::<C, Value>(&*caller, &service, &ToolRequest::Cancel { run_id }).await;
            }));
        }
    }
}

impl<C: ServiceCaller> Tool for RemoteTool<C> {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn description(&self) -> &str {
        &self.spec.description
    }

    fn input_schema(&self) -> Value {
        self.spec.input_schema.clone()
    }

    fn concurrency_safe(&self) -> bool {
        self.spec.concurrency_safe
    }

    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        let caller = Arc::clone(&self.caller);
        let service = self.service.clone();
        let spawn = self.spawn.clone();
        Box::pin(async move {
            let start = ToolRequest::Start {
                call_id: ctx.tool_call_id.clone(),
                conversation_id: ctx.conversation_id.clone(),
                cwd: ctx.cwd.as_ref().map(|p| p.to_string_lossy().into_owned()),
                input,
            };
            let Started { run_id } = call(&*caller, &service, &start).await.map_err(ToolError::Failed)?;
            let mut guard = CancelOnDrop {
                caller: Arc::clone(&caller),
                service: service.clone(),
                run_id: Some(run_id),
                spawn,
            };
            loop {
                let batch: RunBatch =
                    call(&*caller, &service, &ToolRequest::Next { run_id }).await.map_err(|e| {
                        guard.run_id = None;
                        ToolError::Failed(e)
                    })?;
                for piece in batch.output {
                    (ctx.output)(&piece.text, piece.stream);
                }
                if let Some(result) = batch.result {
                    guard.run_id = None;
                    return result.into();
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echoes its input's `text` as output, then as the result.
    struct Echo;

    impl Tool for Echo {
        fn name(&self) -> &str {
            "echo"
        }
        fn description(&self) -> &str {
            "echo"
        }
        fn input_schema(&self) -> Value {
            serde_json::json!({"type": "object"})
        }
        fn concurrency_safe(&self) -> bool {
            true
        }
        fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
            Box::pin(async move {
                let text = input["text"].as_str().ok_or_else(|| ToolError::InvalidInput("no text".into()))?;
                if text == "panic" {
                    panic!("asked to");
                }
                (ctx.output)(text, OutputStream::Stdout);
                (ctx.output)("!", OutputStream::Stderr);
                Ok(ToolOutput::ok(format!("{text} ({})", ctx.cwd.unwrap_or_default().display())))
            })
        }
    }

    /// Routes calls to an in-process `RunTable`, running runs inline.
    struct Local {
        table: Arc<RunTable>,
        tool: Arc<dyn Tool>,
    }

    impl ServiceCaller for Local {
        fn call(
            &self,
            name: &str,
            version: u32,
            request: Vec<u8>,
        ) -> BoxFuture<Result<Vec<u8>, (String, String)>> {
            assert_eq!((name, version), ("tool.echo", TOOL_VERSION));
            let req: ToolRequest = serde_json::from_slice(&request).unwrap();
            let table = Arc::clone(&self.table);
            let tool = Arc::clone(&self.tool);
            Box::pin(async move {
                let mut spawned = None;
                let answer = table.answer(&tool, req, |f| spawned = Some(f)).await;
                // Runs are "spawned" by running them to the end at once:
                // fine for tools that do not wait.
                if let Some(f) = spawned {
                    f.await;
                }
                answer.map(|v| serde_json::to_vec(&v).unwrap()).map_err(|e| ("not-found".into(), e))
            })
        }
    }

    fn ctx(out: Arc<Mutex<Vec<(String, OutputStream)>>>) -> ToolContext {
        ToolContext {
            tool_call_id: "c1".into(),
            conversation_id: "conv".into(),
            cwd: Some("/work".into()),
            abort: AbortSignal::new(),
            output: Arc::new(move |t, s| out.lock().unwrap().push((t.to_owned(), s))),
        }
    }

    fn local() -> Arc<Local> {
        Arc::new(Local { table: Arc::default(), tool: Arc::new(Echo) })
    }

    #[test]
    fn remote_tool_streams_output_then_answers_the_result() {
        let caller = local();
        let tool =
            futures::executor::block_on(RemoteTool::connect(Arc::clone(&caller), "tool.echo", None)).unwrap();
        assert_eq!((tool.name(), tool.concurrency_safe()), ("echo", true));
        let out = Arc::default();
        let r = futures::executor::block_on(
            tool.execute(serde_json::json!({"text": "hi"}), ctx(Arc::clone(&out))),
        );
        assert_eq!(r, Ok(ToolOutput::ok("hi (/work)")));
        assert_eq!(
            *out.lock().unwrap(),
            vec![("hi".to_owned(), OutputStream::Stdout), ("!".to_owned(), OutputStream::Stderr)]
        );
        assert_eq!(caller.table.running(), 0, "a finished run is forgotten");
    }

    #[test]
    fn errors_and_panics_cross_as_tool_errors() {
        let caller = local();
        let tool =
            futures::executor::block_on(RemoteTool::connect(Arc::clone(&caller), "tool.echo", None)).unwrap();
        let r = futures::executor::block_on(tool.execute(serde_json::json!({}), ctx(Arc::default())));
        assert_eq!(r, Err(ToolError::InvalidInput("no text".into())));
        let r = futures::executor::block_on(
            tool.execute(serde_json::json!({"text": "panic"}), ctx(Arc::default())),
        );
        assert_eq!(r, Err(ToolError::Failed("the `echo` tool panicked: asked to".into())));
    }

    #[test]
    fn cancel_fires_the_abort_signal_and_forgets_the_run() {
        let table = RunTable::default();
        struct Wait;
        impl Tool for Wait {
            fn name(&self) -> &str {
                "wait"
            }
            fn description(&self) -> &str {
                ""
            }
            fn input_schema(&self) -> Value {
                Value::Null
            }
            fn execute(&self, _: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
                Box::pin(async move {
                    ctx.abort.aborted().await;
                    Ok(ToolOutput::ok("stopped"))
                })
            }
        }
        let (id, fut) = table.start(Arc::new(Wait), "c".into(), "v".into(), None, Value::Null);
        assert_eq!(table.running(), 1);
        table.cancel(id);
        assert_eq!(table.running(), 0);
        futures::executor::block_on(fut); // ends because the signal fired
        assert!(futures::executor::block_on(table.next(id)).is_err());
    }

    #[test]
    fn a_run_dropped_without_a_result_answers_a_failure() {
        let table = RunTable::default();
        let (id, fut) = table.start(Arc::new(Echo), "c".into(), "v".into(), None, Value::Null);
        drop(fut); // its runtime shut down before it ran
        let batch = futures::executor::block_on(table.next(id)).unwrap();
        assert_eq!(
            batch.result,
            Some(RunResult::Failed { message: "the tool stopped without a result".into() })
        );
        assert_eq!(table.running(), 0);
    }

    #[test]
    fn requests_are_tagged_by_op() {
        let req = ToolRequest::Start {
            call_id: "c".into(),
            conversation_id: "v".into(),
            cwd: None,
            input: serde_json::json!({"path": "a"}),
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({"op": "start", "callId": "c", "conversationId": "v", "input": {"path": "a"}})
        );
        let batch = RunBatch {
            output: vec![],
            result: Some(RunResult::Output { content: "x".into(), is_error: true }),
        };
        assert_eq!(
            serde_json::to_value(&batch).unwrap(),
            serde_json::json!({"result": {"kind": "output", "content": "x", "isError": true}})
        );
    }
}
