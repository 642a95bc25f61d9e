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
//! [`RemoteTool`] is the turn's side: a kernel [`Tool`] that speaks this
//! protocol through any [`ServiceCaller`]. The serving side is
//! `dispatch_contracts::tool::serve`.

use std::sync::Arc;

use serde_json::Value;

pub use dispatch_protocol::tool::{
    describe, OutputPiece, RunBatch, RunResult, Started, ToolDescription, ToolRequest, PREFIX as TOOL_PREFIX,
    VERSION as TOOL_VERSION,
};
use dispatch_protocol::{BoxFuture, CallError, Spawner};

use crate::remote::ServiceCaller;
use crate::tool::{Tool, ToolContext, ToolError, ToolOutput};

/// A [`Tool`] served by a tool service on the bus.
pub struct RemoteTool<C> {
    caller: Arc<C>,
    service: String,
    spec: ToolDescription,
    spawn: Option<Spawner>,
}

/// One call of the tool protocol. Errors name the service and keep the
/// bus's code; an answer that does not parse is `invalid_payload`.
async fn call<C: ServiceCaller, T: serde::de::DeserializeOwned>(
    caller: &C,
    service: &str,
    req: &ToolRequest,
) -> Result<T, CallError> {
    let invalid =
        |what: &str, e: serde_json::Error| CallError::new("invalid_payload", format!("{what}: {e}"));
    let body = serde_json::to_vec(req).map_err(|e| invalid("cannot encode the tool request", e))?;
    let bytes = caller.call(service, TOOL_VERSION, body).await.map_err(|CallError { code, message }| {
        CallError::new(code.clone(), format!("tool service `{service}` failed ({code}): {message}"))
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| invalid(&format!("tool service `{service}` answered invalid JSON"), e))
}

impl<C: ServiceCaller> RemoteTool<C> {
    /// Ask `service` for its description. With a spawner, a call dropped
    /// before its result (the turn was aborted) is cancelled at once.
    pub async fn connect(caller: Arc<C>, service: &str, spawn: Option<Spawner>) -> Result<Self, CallError> {
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
            let Started { run_id } =
                call(&*caller, &service, &start).await.map_err(|e| ToolError::Failed(e.message))?;
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
                        ToolError::Failed(e.message)
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
    use crate::runtime::AbortSignal;
    use crate::wire::OutputStream;
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::Mutex;

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
                (ctx.output)(text, OutputStream::Stdout);
                (ctx.output)("!", OutputStream::Stderr);
                Ok(ToolOutput::ok(format!("{text} ({})", ctx.cwd.unwrap_or_default().display())))
            })
        }
    }

    /// A tool service that runs each call to its end at `start` and answers
    /// everything at the first `next` (the serving side proper is
    /// `dispatch_contracts::tool::serve`, tested against this client in
    /// the host's tests).
    #[derive(Default)]
    struct Local {
        runs: Mutex<HashMap<u64, RunBatch>>,
        cancelled: Mutex<Vec<u64>>,
    }

    impl ServiceCaller for Local {
        fn call(&self, name: &str, version: u32, request: Vec<u8>) -> BoxFuture<Result<Vec<u8>, CallError>> {
            assert_eq!((name, version), ("tool.echo", TOOL_VERSION));
            let req: ToolRequest = serde_json::from_slice(&request).unwrap();
            let answer: Result<Value, CallError> = match req {
                ToolRequest::Spec => Ok(serde_json::to_value(describe(&Echo)).unwrap()),
                ToolRequest::Start { call_id, conversation_id, cwd, input } => {
                    let output = Arc::new(Mutex::new(Vec::new()));
                    let sink = Arc::clone(&output);
                    let ctx = ToolContext {
                        tool_call_id: call_id,
                        conversation_id,
                        cwd: cwd.map(PathBuf::from),
                        abort: AbortSignal::new(),
                        output: Arc::new(move |t: &str, s| {
                            sink.lock().unwrap().push(OutputPiece { stream: s, text: t.to_owned() })
                        }),
                    };
                    // Echo never waits; this runs inside the test's executor.
                    let result = futures::FutureExt::now_or_never(Echo.execute(input, ctx)).unwrap();
                    let batch = RunBatch {
                        output: std::mem::take(&mut *output.lock().unwrap()),
                        result: Some(result.into()),
                    };
                    let mut runs = self.runs.lock().unwrap();
                    let run_id = runs.len() as u64 + 1;
                    runs.insert(run_id, batch);
                    Ok(serde_json::to_value(Started { run_id }).unwrap())
                }
                ToolRequest::Next { run_id } => self
                    .runs
                    .lock()
                    .unwrap()
                    .remove(&run_id)
                    .map(|b| serde_json::to_value(b).unwrap())
                    .ok_or_else(|| CallError::new("not_found", format!("no run {run_id}"))),
                ToolRequest::Cancel { run_id } => {
                    self.cancelled.lock().unwrap().push(run_id);
                    Ok(Value::Null)
                }
                _ => Err(CallError::new("unsupported", "unknown op")),
            };
            Box::pin(std::future::ready(answer.map(|v| serde_json::to_vec(&v).unwrap())))
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

    #[test]
    fn remote_tool_streams_output_then_answers_the_result() {
        let caller = Arc::new(Local::default());
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
        assert!(caller.runs.lock().unwrap().is_empty(), "the result was read");
    }

    #[test]
    fn invalid_input_crosses_as_a_tool_error() {
        let caller = Arc::new(Local::default());
        let tool =
            futures::executor::block_on(RemoteTool::connect(Arc::clone(&caller), "tool.echo", None)).unwrap();
        let r = futures::executor::block_on(tool.execute(serde_json::json!({}), ctx(Arc::default())));
        assert_eq!(r, Err(ToolError::InvalidInput("no text".into())));
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
            result: Some(RunResult::Output {
                content: "x".into(),
                is_error: true,
                images: vec![],
                timed_out: false,
            }),
        };
        assert_eq!(
            serde_json::to_value(&batch).unwrap(),
            serde_json::json!({"result": {"kind": "output", "content": "x", "isError": true}})
        );
    }
}
