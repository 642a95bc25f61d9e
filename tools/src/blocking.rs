//! File I/O off the caller's thread.
//!
//! A tool plugin's calls are polled on the thread of whoever reads them
//! (`dispatch_contracts::tool`), inside the plugin's runtime context — for
//! a turn, the session's thread, which every conversation shares. File
//! tools therefore do their blocking work on the plugin runtime's blocking
//! pool, so a large file or a slow disk holds up one call, not every turn.
//! The exception is `read_file`'s first step ([`crate::read_file::ReadFile::begin`]),
//! made only of calls the kernel answers from its caches or refuses at once.

use dispatch_protocol::tool::{ToolError, ToolOutput};
use dispatch_protocol::BoxFuture;

/// Run `work` on the current tokio runtime's blocking pool; without a
/// runtime (a plain executor in tests), on this thread.
pub fn off_thread<F>(tool: &'static str, work: F) -> BoxFuture<Result<ToolOutput, ToolError>>
where
    F: FnOnce() -> Result<ToolOutput, ToolError> + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Box::pin(std::future::ready(work()));
    };
    Box::pin(async move {
        runtime
            .spawn_blocking(work)
            .await
            .unwrap_or_else(|e| Err(ToolError::Failed(format!("{tool} stopped: {e}"))))
    })
}
