//! A tool as one turn offers it: described as the `session.tools` filters
//! said (`describe`), and followed by the notes `session.tool-result`
//! filters add to its result.

use std::sync::Arc;

use dispatch_abi::{HookResult, Host};
use dispatch_contracts::session::{ToolDescription, ToolResultNotes, TOOL_RESULT};
use dispatch_kernel::protocol::BoxFuture;
use dispatch_kernel::tool::{Tool, ToolContext, ToolError, ToolOutput};
use serde_json::Value;

/// One tool of one turn.
pub(crate) struct Offered {
    inner: Arc<dyn Tool>,
    description: Option<String>,
    schema: Option<Value>,
    host: Host,
}

impl Offered {
    /// `inner`, described by `describe` when a filter gave one.
    pub(crate) fn wrap(inner: Arc<dyn Tool>, describe: Option<ToolDescription>, host: Host) -> Arc<dyn Tool> {
        let ToolDescription { description, input_schema } = describe.unwrap_or_default();
        Arc::new(Offered { inner, description, schema: input_schema, host })
    }
}

impl Tool for Offered {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn description(&self) -> &str {
        self.description.as_deref().unwrap_or_else(|| self.inner.description())
    }

    fn input_schema(&self) -> Value {
        self.schema.clone().unwrap_or_else(|| self.inner.input_schema())
    }

    fn concurrency_safe(&self) -> bool {
        self.inner.concurrency_safe()
    }

    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        let notes = ToolResultNotes {
            conversation_id: ctx.conversation_id.clone(),
            tool_call_id: ctx.tool_call_id.clone(),
            tool: self.inner.name().to_owned(),
            input: input.clone(),
            cwd: ctx.cwd.as_ref().map(|c| c.to_string_lossy().into_owned()),
            is_error: false,
            notes: Vec::new(),
        };
        let abort = ctx.abort.clone();
        let run = self.inner.execute(input, ctx);
        let host = self.host.clone();
        Box::pin(async move {
            let mut output = run.await?;
            if abort.is_aborted() {
                return Ok(output);
            }
            let notes = ToolResultNotes { is_error: output.is_error, ..notes };
            let added = tokio::select! {
                ran = host.run_hook(&TOOL_RESULT, &notes) => match ran {
                    Ok(HookResult::Continue(v)) => v.notes,
                    Ok(HookResult::Vetoed { plugin, reason }) => {
                        tracing::warn!(%plugin, %reason, "a tool-result filter vetoed; no notes added");
                        Vec::new()
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the tool-result hook failed; no notes added");
                        Vec::new()
                    }
                },
                () = abort.aborted() => Vec::new(),
            };
            for note in added.into_iter().filter(|n| !n.trim().is_empty()) {
                if !output.content.is_empty() {
                    output.content.push_str("\n\n");
                }
                output.content.push_str(&note);
            }
            Ok(output)
        })
    }
}
