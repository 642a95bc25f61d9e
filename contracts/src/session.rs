//! The `session` contract: start turns, read their events, stop, queue.
//! Types in [`dispatch_protocol::session`], re-exported here.

use dispatch_abi::{Event, Hook, Service};
pub use dispatch_protocol::session::*;
use dispatch_protocol::wire::AgentEvent;
use serde_json::Value;

/// The session service. Its answers depend on the op (see
/// [`SessionRequest`]), so the typed key answers JSON; decode it into the
/// op's answer type.
pub const SESSION: Service<SessionRequest, Value> = Service::new("session", 1);

/// The session service with the answer decoded straight into `T`: the
/// op's answer type (`answering::<EventBatch>()` for `events`), or
/// `Box<RawValue>` to pass an answer on untouched — no `Value` tree in
/// between, which matters for the event stream.
pub const fn answering<T>() -> Service<SessionRequest, T> {
    Service::new("session", 1)
}
/// Every event of every turn, as clients receive it.
pub const EVENT: Event<AgentEvent> = Event::new("session.event", 1);
/// Turn telemetry: what each turn offered the model, its provider
/// requests, its tool calls, its store writes and its end, as facts (see
/// [`dispatch_protocol::trace`]), a step's together. The `traces`,
/// `metrics` and `otel` plugins subscribe.
pub const TRACE: Event<dispatch_protocol::trace::TraceBatch> = Event::new("session.trace", 1);
/// A conversation's status changed (`active`, `queued`, `idle`, `closed`).
pub const STATUS: Event<StatusChanged> = Event::new("session.status", 1);
/// A client asked the others to open a conversation.
pub const OPEN: Event<OpenRequested> = Event::new("session.open", 1);
/// Filter: the tools a turn offers.
pub const TOOLS: Hook<TurnTools> = Hook::new("session.tools", 1);
/// Filter: notes for the model after a tool's result (see
/// [`ToolResultNotes`]). Filters must be quick or bounded: the turn waits.
pub const TOOL_RESULT: Hook<ToolResultNotes> = Hook::new("session.tool-result", 1);
/// Filter: a turn's system prompt.
pub const SYSTEM_PROMPT: Hook<PromptContext> = Hook::new("session.system-prompt", 1);
/// The plugin id of the bundled session.
pub const PLUGIN_ID: &str = "session";
