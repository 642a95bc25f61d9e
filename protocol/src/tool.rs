//! The tool contract: the [`Tool`] trait a tool implements, and the pull
//! protocol a tool plugin answers on its bus service ([`ToolRequest`]).
//!
//! # The trait
//!
//! [`Tool::execute`] returns a future. For a tool plugin
//! (`dispatch_contracts::tool::serve`) it is polled inside the plugin's own
//! runtime context, so it may use tokio (timers, processes, sockets,
//! `spawn_blocking`) freely — but on the thread of whoever reads the call
//! (for a turn, the session's, shared by every conversation), which saves
//! the call two thread hand-offs. So it must not block the thread: do
//! blocking file or CPU work in `spawn_blocking`, or keep it very short. It must
//! honour [`ToolContext::abort`]: when the turn is aborted, stop, clean up
//! (kill what you started) and return. A tool is *not* concurrency-safe
//! unless it says so ([`Tool::concurrency_safe`]): only read-only tools
//! should, because safe calls of one step run in parallel.
//!
//! # The protocol
//!
//! A tool plugin serves one service named `tool.<name>` (schema version
//! [`VERSION`]; the name is the tool's own, see [`service_name`]) whose
//! requests are tagged by `op`: `spec` describes the tool
//! ([`ToolDescription`]), `start` begins a call and answers [`Started`],
//! each `next` answers the output produced since the previous `next`
//! ([`RunBatch`], waiting until there is some, or the result), and `cancel`
//! fires the call's abort signal — the tool stops, cleans up and its run is
//! forgotten. Any service whose name starts with [`PREFIX`] is a tool: the
//! host offers every such service to a turn, so an operator adds a tool by
//! adding its `.so` and removes it by leaving it out.

use std::path::PathBuf;
use std::sync::Arc;

use schemars::JsonSchema;
use serde_json::Value;

use serde::{Deserialize, Serialize};

use crate::abort::AbortSignal;
pub use crate::session::ImageRef;
use crate::wire::OutputStream;
use crate::BoxFuture;

/// Schema version of every tool service.
pub const VERSION: u32 = 1;
/// Services named `tool.<name>` are tools.
pub const PREFIX: &str = "tool.";

/// The bus service a tool called `tool_name` is served on: `tool.<name>`.
pub fn service_name(tool_name: &str) -> String {
    format!("{PREFIX}{tool_name}")
}

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
    /// The turn's working directory: `Some` for every call a turn makes
    /// (the session's resolved directory, or `dispatch turn`'s, which
    /// exists); `None` only for a call made outside a turn (a raw `start`
    /// request without `cwd`, a test) — use the process's directory then,
    /// or refuse.
    pub cwd: Option<PathBuf>,
    /// Fires when the turn is aborted: stop, clean up, return.
    pub abort: AbortSignal,
    /// Streamed output.
    pub output: OutputSink,
}

impl std::fmt::Debug for ToolContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolContext")
            .field("tool_call_id", &self.tool_call_id)
            .field("conversation_id", &self.conversation_id)
            .field("cwd", &self.cwd)
            .field("abort", &self.abort)
            .finish_non_exhaustive()
    }
}

/// A tool's answer for the model.
///
/// `#[non_exhaustive]` so results can grow without breaking tool authors:
/// build one with [`ToolOutput::ok`], [`ToolOutput::error`] or
/// [`ToolOutput::new`], then [`ToolOutput::with_images`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToolOutput {
    /// What the model reads.
    pub content: String,
    /// Whether the model should read it as an error (a non-zero exit, say).
    pub is_error: bool,
    /// Images for the model to look at beside the text (a screenshot, a
    /// chart), as `data:` URLs. They are stored after the result in the
    /// conversation and shown to models that accept images; a provider
    /// configured for text only leaves them out, so say in `content` what
    /// they are.
    pub images: Vec<ImageRef>,
    /// The tool gave up on its own time limit (an error result too): told
    /// apart in traces and metrics from other failures.
    pub timed_out: bool,
}

impl ToolOutput {
    /// A result the model should read as `is_error` says.
    pub fn new(content: impl Into<String>, is_error: bool) -> Self {
        ToolOutput { content: content.into(), is_error, images: Vec::new(), timed_out: false }
    }

    /// An error result saying the call ran out of time (a command killed
    /// at its timeout, a server that never answered).
    pub fn timed_out(content: impl Into<String>) -> Self {
        ToolOutput { timed_out: true, ..Self::new(content, true) }
    }

    /// A successful result.
    pub fn ok(content: impl Into<String>) -> Self {
        Self::new(content, false)
    }

    /// An error result: the tool ran and the model should read why it
    /// failed (the turn continues).
    pub fn error(content: impl Into<String>) -> Self {
        Self::new(content, true)
    }

    /// The same result with these images attached.
    #[must_use]
    pub fn with_images(mut self, images: Vec<ImageRef>) -> Self {
        self.images = images;
        self
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

/// Requests to a tool service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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

/// The `tools.changed` event: these tools were replaced or withdrawn.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ToolsChanged {
    /// Their names.
    pub tools: Vec<String>,
}

/// What `start` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    /// Names the run in `next` and `cancel`.
    pub run_id: u64,
}

/// One piece of streamed output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OutputPiece {
    /// Which stream.
    pub stream: OutputStream,
    /// The text.
    pub text: String,
}

/// How a call ended, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase")]
#[non_exhaustive]
pub enum RunResult {
    /// The tool answered (possibly an error the model should read).
    Output {
        /// What the model reads.
        content: String,
        /// Whether it is an error.
        is_error: bool,
        /// [`ToolOutput::images`]; absent when there are none, so plugins
        /// built before images existed read and write the same JSON.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        images: Vec<ImageRef>,
        /// [`ToolOutput::timed_out`]; absent when false, for the same
        /// reason.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        timed_out: bool,
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
            Ok(o) => RunResult::Output {
                content: o.content,
                is_error: o.is_error,
                images: o.images,
                timed_out: o.timed_out,
            },
            Err(ToolError::InvalidInput(message)) => RunResult::InvalidInput { message },
            Err(ToolError::Failed(message)) => RunResult::Failed { message },
        }
    }
}

impl From<RunResult> for Result<ToolOutput, ToolError> {
    fn from(r: RunResult) -> Self {
        match r {
            RunResult::Output { content, is_error, images, timed_out } => {
                Ok(ToolOutput { content, is_error, images, timed_out })
            }
            RunResult::InvalidInput { message } => Err(ToolError::InvalidInput(message)),
            RunResult::Failed { message } => Err(ToolError::Failed(message)),
        }
    }
}

/// What `next` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RunBatch {
    /// Output since the previous `next`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<OutputPiece>,
    /// Present once: the call is over and its run forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RunResult>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Regression guard: a result without images is the JSON plugins built
    /// before images existed write and read.
    #[test]
    fn results_carry_images_only_when_there_are_some() {
        let plain = RunResult::from(Ok(ToolOutput::ok("hi")));
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            json!({"kind": "output", "content": "hi", "isError": false})
        );
        let old: RunResult =
            serde_json::from_value(json!({"kind": "output", "content": "hi", "isError": false})).unwrap();
        assert_eq!(old, plain);
        let png = ImageRef { url: "data:image/png;base64,AA==".into(), mime_type: Some("image/png".into()) };
        let with = ToolOutput::error("look").with_images(vec![png.clone()]);
        let wire = serde_json::to_value(RunResult::from(Ok(with.clone()))).unwrap();
        assert_eq!(wire["images"], json!([{"url": png.url, "mimeType": "image/png"}]));
        let back: RunResult = serde_json::from_value(wire).unwrap();
        assert_eq!(Result::<ToolOutput, ToolError>::from(back), Ok(with));
    }
}
