use std::path::Path;
use std::sync::{Arc, Mutex};

use dispatch_protocol::abort::AbortSignal;
use dispatch_protocol::tool::{Tool, ToolContext, ToolError, ToolOutput};
use dispatch_protocol::wire::OutputStream;
use serde_json::Value;

pub type Streamed = Arc<Mutex<Vec<(String, OutputStream)>>>;

pub fn ctx(cwd: &Path, abort: AbortSignal) -> (ToolContext, Streamed) {
    let streamed: Streamed = Arc::default();
    let sink = Arc::clone(&streamed);
    let ctx = ToolContext {
        tool_call_id: "call-1".into(),
        conversation_id: "conv-1".into(),
        cwd: Some(cwd.to_path_buf()),
        abort,
        output: Arc::new(move |text: &str, stream| sink.lock().unwrap().push((text.to_owned(), stream))),
    };
    (ctx, streamed)
}

/// Run a tool that needs no runtime to completion.
pub fn call(tool: &dyn Tool, cwd: &Path, input: Value) -> Result<ToolOutput, ToolError> {
    futures::executor::block_on(tool.execute(input, ctx(cwd, AbortSignal::new()).0))
}

/// The message of a failed call.
pub fn err(r: Result<ToolOutput, ToolError>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(o) => panic!("expected an error, got {o:?}"),
    }
}

pub fn content(r: Result<ToolOutput, ToolError>) -> String {
    let o = r.unwrap();
    assert!(!o.is_error, "{}", o.content);
    o.content
}
