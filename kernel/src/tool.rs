//! The tool contract the turn loop runs against.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::bus::BoxFuture;
use crate::runtime::AbortSignal;
use crate::wire::OutputStream;

/// Where a running tool streams its output (it becomes `tool-output`
/// events).
pub type OutputSink = Arc<dyn Fn(&str, OutputStream) + Send + Sync>;

/// What a tool gets besides its input.
#[derive(Clone)]
pub struct ToolContext {
    /// The call's id.
    pub tool_call_id: String,
    /// The conversation.
    pub conversation_id: String,
    /// The turn's working directory.
    pub cwd: Option<PathBuf>,
    /// Fires when the turn is aborted: stop, clean up, return.
    pub abort: AbortSignal,
    /// Streamed output.
    pub output: OutputSink,
}

/// A tool's answer for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    /// What the model reads.
    pub content: String,
    /// Whether the model should read it as an error (a non-zero exit, say).
    pub is_error: bool,
}

impl ToolOutput {
    /// A successful result.
    pub fn ok(content: impl Into<String>) -> Self {
        ToolOutput { content: content.into(), is_error: false }
    }
}

/// Why a tool call failed. Both kinds go back to the model as an error
/// result and the turn continues.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// The input does not fit the tool's schema.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The tool ran and failed.
    #[error("{0}")]
    Failed(String),
}

/// A tool the model can call.
pub trait Tool: Send + Sync {
    /// The name the model calls it by.
    fn name(&self) -> &str;
    /// What it does, written for a model.
    fn description(&self) -> &str;
    /// JSON Schema of its input.
    fn input_schema(&self) -> Value;
    /// Whether calls may run in parallel with other calls (read-only tools).
    fn concurrency_safe(&self) -> bool {
        false
    }
    /// Run one call.
    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>>;
}
