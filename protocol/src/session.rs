//! The `session` contract: the orchestrator that turns a user message into
//! an agent turn — resolves the model, the working directory, the tools and
//! the system prompt, runs the kernel turn, persists it, and tells everyone.
//!
//! Transports speak it (the HTTP and WebSocket plugins, the CLI through
//! them), so each of them is a thin adapter: what a turn *is* lives in one
//! place.
//!
//! A turn's events are kept by the session from its `user-message` to its
//! `turn-sealed` (and a while after), and read with the pull op
//! [`SessionRequest::Events`]: a reader asks for the events from a cursor
//! and waits until there are some. A late watcher starts at cursor 0 and is
//! replayed from the start of the turn; a slow one never slows the turn
//! (nothing is pushed at it). Every event is also published on
//! `session.event` for whoever just wants to listen.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::wire::{AgentEvent, ConversationStatus, ReasoningEffort};

/// An image attached to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageRef {
    /// `data:` or `http(s):` URL.
    pub url: String,
    /// Its media type, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// The `POST /chat` body (and the WebSocket `chat.send` op): a client's
/// request for a turn.
///
/// Unlike bus requests this is a *client* shape: fields it does not know
/// are ignored (frontends send extra bookkeeping), but every field it knows
/// is checked — a wrong type or an unknown effort is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatRequest {
    /// The conversation; minted when absent or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern("^([A-Za-z0-9._:@-]{1,128})?$"))]
    pub conversation_id: Option<String>,
    /// The user's message (trimmed; must not be empty).
    #[schemars(pattern(r"\S"))]
    pub message: String,
    /// `<credential>/<model>`; else the conversation's, else the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The tools' working directory; else the conversation's, else the
    /// server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// How hard the model should think; else the conversation's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<ReasoningEffort>,
    /// The workspace a new conversation belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// Attached images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<ImageRef>>,
}

/// Requests to the `session` service, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub enum SessionRequest {
    /// Start a turn; answers [`Started`]. Refused with `conflict` while
    /// the conversation has a turn running, `invalid_input` for an empty
    /// message or an unusable working directory, `unknown_model` for a
    /// model the catalog does not serve.
    Chat {
        /// The client's request.
        request: ChatRequest,
    },
    /// A turn's events from `from` (0-based) on; answers [`EventBatch`].
    /// Waits (up to `waitMs`, default 20 s) until there is at least one
    /// event past `from` or the turn is sealed.
    Events {
        /// The conversation.
        conversation_id: String,
        /// The turn.
        turn_id: String,
        /// Index of the first event wanted.
        from: u64,
        /// The client's wire version (`"0.1"` omits the newer event types).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wire: Option<String>,
        /// Longest wait for news, in ms (at most 60 000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_ms: Option<u64>,
    },
    /// Where a conversation stands; answers [`StatusInfo`] (`not_found`
    /// for a conversation nobody has written to).
    Status {
        /// The conversation.
        conversation_id: String,
    },
    /// Abort the running turn; answers [`Aborted`].
    Stop {
        /// The conversation.
        conversation_id: String,
    },
    /// Abort the running turn and mark the conversation `closed`; answers
    /// [`Aborted`].
    Close {
        /// The conversation.
        conversation_id: String,
    },
    /// Ask clients to open the conversation (published as
    /// `session.open`); answers [`ConversationRef`].
    Open {
        /// The conversation.
        conversation_id: String,
    },
    /// Queue a message for the running turn, or start a turn with it when
    /// none runs; answers [`Queued`].
    Queue {
        /// The conversation.
        conversation_id: String,
        /// The message.
        text: String,
        /// The workspace a new conversation belongs to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workspace_id: Option<String>,
    },
    /// Withdraw a queued message; answers [`Unqueued`].
    Unqueue {
        /// The conversation.
        conversation_id: String,
        /// The queued message.
        message_id: String,
    },
    /// The last assistant text of the conversation, after the running turn
    /// (if any) has sealed; answers [`LastAnswer`].
    Last {
        /// The conversation.
        conversation_id: String,
        /// Longest wait for a running turn, in ms (default and most 60 000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_ms: Option<u64>,
    },
    /// Warm the provider's prompt cache: send what the conversation's next
    /// turn would send (system prompt, tools, history) plus a one-token
    /// probe, persisting nothing; answers [`Warmed`]. Refused while a turn
    /// runs (`conflict`), for a conversation with no history
    /// (`no_history`) or an unknown model (`unknown_model`).
    Warm {
        /// The conversation.
        conversation_id: String,
        /// The model (default: the conversation's, else the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// The working directory (default: the conversation's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
    },
}

/// The answer to [`SessionRequest::Warm`]: what the probe cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Warmed {
    /// The conversation.
    pub conversation_id: String,
    /// The probe's usage as the provider reported it.
    pub usage: crate::wire::Usage,
}

/// The user message a cache warm ends with (its answer is one token).
pub const WARM_PROBE: &str = "reply with just a .";

/// A turn was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    /// The conversation (minted when the request had none).
    pub conversation_id: String,
    /// The turn; read its events with [`SessionRequest::Events`].
    pub turn_id: String,
}

/// Events of one turn, each exactly the JSON a client receives.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventBatch {
    /// The events, in order (already filtered for the wire version asked).
    pub events: Vec<Box<RawValue>>,
    /// The cursor to ask from next.
    pub next: u64,
    /// `true` once `turn-sealed` has been handed out: nothing follows.
    pub sealed: bool,
}

/// Where a conversation stands — the `GET /conversations/:id/status` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusInfo {
    /// The conversation.
    pub conversation_id: String,
    /// A turn is running.
    pub is_active: bool,
    /// Its status.
    pub status: ConversationStatus,
    /// The running (or last) turn this session process knows of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
}

/// The answer to stop and close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Aborted {
    /// The conversation.
    pub conversation_id: String,
    /// A running turn was aborted.
    pub aborted_turn: bool,
}

/// Just the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationRef {
    /// The conversation.
    pub conversation_id: String,
}

/// A message waiting for the running turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueuedMessage {
    /// Its id (to cancel it).
    pub id: String,
    /// The text.
    pub text: String,
    /// Epoch ms.
    pub queued_at: u64,
}

/// The answer to [`SessionRequest::Queue`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Queued {
    /// The conversation.
    pub conversation_id: String,
    /// No turn was running: the text started one instead of waiting.
    pub started_turn: bool,
    /// What is waiting now.
    pub queue: Vec<QueuedMessage>,
}

/// The answer to [`SessionRequest::Unqueue`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Unqueued {
    /// The conversation.
    pub conversation_id: String,
    /// The message was still waiting and is gone.
    pub cancelled: bool,
    /// What is waiting now.
    pub queue: Vec<QueuedMessage>,
}

/// The answer to [`SessionRequest::Last`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastAnswer {
    /// The conversation.
    pub conversation_id: String,
    /// The text of the last assistant message ("" when there is none).
    pub content: String,
    /// The turn it came from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
}

/// `session.status`: a conversation's status changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusChanged {
    /// The conversation.
    pub conversation_id: String,
    /// Its workspace.
    pub workspace_id: String,
    /// The new status.
    pub status: ConversationStatus,
}

/// `session.open`: a client asked the others to open a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenRequested {
    /// The conversation.
    pub conversation_id: String,
    /// Its workspace.
    pub workspace_id: String,
}

/// The value of the `session.tools` hook: the tools a turn offers, by tool
/// name. Filters may remove names, add any tool served on the bus as
/// `tool.<name>`, and describe a tool differently for this turn
/// (`describe`) — a tool whose choices depend on the turn's directory (the
/// skills there, say) is described per turn without a service per
/// directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnTools {
    /// The conversation.
    pub conversation_id: String,
    /// The model the turn runs.
    pub model: String,
    /// Tool names, in offering order.
    pub tools: Vec<String>,
    /// The turn's working directory (absolute, resolved), when the session
    /// knows it: filters offer the tools of the project there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Per tool name: what the model is told instead of the tool's own
    /// description and schema, for this turn only.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub describe: std::collections::BTreeMap<String, ToolDescription>,
}

/// How a `session.tools` filter describes a tool for one turn. A field
/// left `None` keeps the tool's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolDescription {
    /// The description the model reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema of the tool's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<serde_json::Value>,
}

/// The value of the `session.tool-result` hook, run after each tool call
/// of a turn that ended with a result (not one aborted): what was called,
/// and notes for the model. A filter appends to `notes` — it never sees
/// or rewrites the result itself, so filters cannot undo one another; the
/// session adds the notes after the result, each after a blank line. The
/// `lsp` plugin appends an edited file's diagnostics this way; a linter
/// plugin can do the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolResultNotes {
    /// The conversation.
    pub conversation_id: String,
    /// The call's id.
    pub tool_call_id: String,
    /// The tool's name.
    pub tool: String,
    /// The input it was called with.
    pub input: serde_json::Value,
    /// The turn's working directory (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Whether the result is an error.
    pub is_error: bool,
    /// What filters add, in order.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The value of the `session.system-prompt` hook: what a new
/// conversation's system prompt is built from, and the prompt so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromptContext {
    /// The conversation.
    pub conversation_id: String,
    /// `<credential>/<model>`.
    pub model: String,
    /// The tools' working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The session's own default working directory — the operator's
    /// choice, unlike `cwd`, which a request may set to anything. A filter
    /// that reads files for the prompt bounds itself by it (the
    /// `system-prompt` plugin's `file_roots` default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_cwd: Option<String>,
    /// The tools on offer: name and one-line description.
    pub tools: Vec<ToolSummary>,
    /// The prompt so far (filters replace or extend it).
    pub prompt: String,
}

/// A tool as the system prompt may describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolSummary {
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
}

/// Which wire version a client speaks, and what that leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WireVersion {
    /// dispatch-web's first contract: no `user-message`, `step-complete`,
    /// `provider-retry` or `steering`.
    V0_1,
    /// Everything.
    #[default]
    Latest,
}

impl WireVersion {
    /// Parse a client's `?wire=` value: `0.1`, or anything newer (`0.2`,
    /// `latest`). `None` for something that is not a version.
    pub fn parse(s: &str) -> Option<WireVersion> {
        match s.trim() {
            "0.1" => Some(WireVersion::V0_1),
            "latest" => Some(WireVersion::Latest),
            other => {
                let (major, minor) = other.split_once('.')?;
                let major: u32 = major.parse().ok()?;
                let minor: u32 = minor.parse().ok()?;
                Some(if (major, minor) <= (0, 1) { WireVersion::V0_1 } else { WireVersion::Latest })
            }
        }
    }

    /// Whether a client at this version receives events of type `kind`.
    pub fn includes(self, kind: &str) -> bool {
        match self {
            WireVersion::Latest => true,
            WireVersion::V0_1 => {
                !matches!(kind, "user-message" | "step-complete" | "provider-retry" | "steering")
            }
        }
    }

    /// [`Self::includes`] for an event.
    pub fn includes_event(self, event: &AgentEvent) -> bool {
        self.includes(event.type_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_body_ignores_unknown_fields_but_checks_known_ones() {
        let ok: ChatRequest =
            serde_json::from_value(json!({"message": "hi", "clientNonce": 7, "reasoningEffort": "low"}))
                .unwrap();
        assert_eq!(ok.reasoning_effort, Some(ReasoningEffort::Low));
        assert!(serde_json::from_value::<ChatRequest>(
            json!({"message": "hi", "reasoningEffort": "extreme"})
        )
        .is_err());
        assert!(serde_json::from_value::<ChatRequest>(json!({"message": 5})).is_err());
        assert!(serde_json::from_value::<ChatRequest>(json!({})).is_err());
    }

    #[test]
    fn wire_versions() {
        assert_eq!(WireVersion::parse("0.1"), Some(WireVersion::V0_1));
        assert_eq!(WireVersion::parse("0.2"), Some(WireVersion::Latest));
        assert_eq!(WireVersion::parse("1.0"), Some(WireVersion::Latest));
        assert_eq!(WireVersion::parse("x"), None);
        assert!(!WireVersion::V0_1.includes("steering"));
        assert!(WireVersion::V0_1.includes("text-delta"));
        assert!(WireVersion::Latest.includes("steering"));
    }
}
