//! The wire types: the JSON that clients (the web frontend, the CLI, `curl`)
//! read and write, exactly as `WIRE.md` spells it — camelCase fields, `type`
//! tags, optional fields omitted when absent.
//!
//! These are also the types the turn loop produces and the store persists,
//! so there is one definition of a chunk or an event in the whole system.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Who produced a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// System prompt or injected context.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

impl Role {
    /// Its wire name (`"user"`, …), as stores keep it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    /// The role named `name` (its wire name).
    pub fn parse(name: &str) -> Option<Role> {
        [Role::System, Role::User, Role::Assistant, Role::Tool].into_iter().find(|r| r.as_str() == name)
    }
}

/// One ordered piece of a message: the unit of the append-only log.
///
/// Deserialized through a flat intermediate struct ([`ChunkRepr`]) rather
/// than serde's internally-tagged path, which buffers every object before
/// looking at its tag: history reads parse thousands of chunks at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case", rename_all_fields = "camelCase", try_from = "ChunkRepr")]
pub enum Chunk {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// Model reasoning.
    Thinking {
        /// The text.
        text: String,
    },
    /// A model's request to run a tool.
    ToolCall {
        /// Id the result refers to.
        tool_call_id: String,
        /// Which tool.
        tool_name: String,
        /// Its input, as the model wrote it.
        input: Value,
        /// The step that produced the call (`<turnId>#<index>`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step_id: Option<String>,
    },
    /// A tool's result.
    ToolResult {
        /// The call it answers.
        tool_call_id: String,
        /// Which tool.
        tool_name: String,
        /// What the model reads.
        content: String,
        /// Whether it is an error.
        is_error: bool,
        /// The step of the originating call.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step_id: Option<String>,
    },
    /// An error during generation or dispatch.
    Error {
        /// What happened.
        message: String,
        /// A stable code (an HTTP status, say), when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// Injected system text.
    System {
        /// The text.
        text: String,
    },
    /// An image.
    Image {
        /// A data URL or an http(s) URL.
        url: String,
        /// Its MIME type, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mime_type: Option<String>,
    },
}

/// The flat shape every chunk variant fits in (deserialization only).
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[doc(hidden)]
pub struct ChunkRepr {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    tool_call_id: Option<String>,
    tool_name: Option<String>,
    /// Present-but-null is a valid tool input, so keep "present" apart.
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<Value>")]
    input: Option<Value>,
    step_id: Option<String>,
    content: Option<String>,
    is_error: Option<bool>,
    message: Option<String>,
    code: Option<String>,
    url: Option<String>,
    mime_type: Option<String>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl TryFrom<ChunkRepr> for Chunk {
    type Error = String;
    fn try_from(r: ChunkRepr) -> Result<Self, String> {
        fn need<T>(v: Option<T>, field: &str, kind: &str) -> Result<T, String> {
            v.ok_or_else(|| format!("missing field `{field}` in a `{kind}` chunk"))
        }
        let k = r.kind.as_str();
        Ok(match k {
            "text" => Chunk::Text { text: need(r.text, "text", k)? },
            "thinking" => Chunk::Thinking { text: need(r.text, "text", k)? },
            "system" => Chunk::System { text: need(r.text, "text", k)? },
            "tool-call" => Chunk::ToolCall {
                tool_call_id: need(r.tool_call_id, "toolCallId", k)?,
                tool_name: need(r.tool_name, "toolName", k)?,
                input: need(r.input, "input", k)?,
                step_id: r.step_id,
            },
            "tool-result" => Chunk::ToolResult {
                tool_call_id: need(r.tool_call_id, "toolCallId", k)?,
                tool_name: need(r.tool_name, "toolName", k)?,
                content: need(r.content, "content", k)?,
                is_error: need(r.is_error, "isError", k)?,
                step_id: r.step_id,
            },
            "error" => Chunk::Error { message: need(r.message, "message", k)?, code: r.code },
            "image" => Chunk::Image { url: need(r.url, "url", k)?, mime_type: r.mime_type },
            other => return Err(format!("unknown chunk type `{other}`")),
        })
    }
}

impl Chunk {
    /// A text chunk.
    pub fn text(text: impl Into<String>) -> Self {
        Chunk::Text { text: text.into() }
    }
}

/// A role plus ordered chunks: the unit passed to and from the provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    /// Who.
    pub role: Role,
    /// What.
    pub chunks: Vec<Chunk>,
}

impl ChatMessage {
    /// A user message with one text chunk.
    pub fn user(text: impl Into<String>) -> Self {
        ChatMessage { role: Role::User, chunks: vec![Chunk::text(text)] }
    }
}

/// A persisted chunk: `seq` is per conversation, 1-based, gap-free.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredChunk {
    /// Position in the conversation's log.
    pub seq: u64,
    /// The role of the message it belongs to.
    pub role: Role,
    /// The chunk.
    pub chunk: Chunk,
}

/// Token counters of a step or a turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_tokens: Option<u64>,
    /// Prompt tokens written to the provider's cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<u64>,
    /// Of the generated tokens, those spent reasoning (**ours**: WIRE.md's
    /// `Usage` has no such field; clients that do not know it ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    /// Whether anything was counted.
    pub fn is_reported(&self) -> bool {
        self.input_tokens > 0
            || self.output_tokens > 0
            || self.cache_read_tokens.is_some()
            || self.cache_write_tokens.is_some()
            || self.reasoning_tokens.is_some()
    }

    /// The share of the prompt served from the provider's cache, in
    /// `[0, 1]`; `None` when the provider said nothing about its cache or
    /// there was no prompt.
    pub fn cache_hit_rate(&self) -> Option<f64> {
        let read = self.cache_read_tokens?;
        (self.input_tokens > 0).then(|| (read as f64 / self.input_tokens as f64).clamp(0.0, 1.0))
    }
}

/// Field-wise sum, saturating (a provider's absurd counter must not wrap
/// a turn's total); a cache counter is present when either side has it.
impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, other: Usage) -> Usage {
        fn opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (None, None) => None,
                _ => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
            }
        }
        Usage {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
            cache_read_tokens: opt(self.cache_read_tokens, other.cache_read_tokens),
            cache_write_tokens: opt(self.cache_write_tokens, other.cache_write_tokens),
            reasoning_tokens: opt(self.reasoning_tokens, other.reasoning_tokens),
        }
    }
}

/// How much reasoning the model should spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningEffort {
    /// Least.
    Low,
    /// Some.
    Medium,
    /// The default.
    High,
    /// More.
    Xhigh,
    /// Most.
    Max,
}

impl ReasoningEffort {
    /// The wire names, least to most (for command lines and messages that
    /// list them).
    pub const NAMES: [&'static str; 5] = ["low", "medium", "high", "xhigh", "max"];
}

/// Lifecycle status of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConversationStatus {
    /// A turn is running.
    Active,
    /// Waiting for a provider slot.
    Queued,
    /// Exists, not generating.
    Idle,
    /// Dismissed by the user (not deleted).
    Closed,
}

impl ConversationStatus {
    /// Its wire name (`"idle"`, …), as stores keep it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationStatus::Active => "active",
            ConversationStatus::Queued => "queued",
            ConversationStatus::Idle => "idle",
            ConversationStatus::Closed => "closed",
        }
    }

    /// The status named `name` (its wire name).
    pub fn parse(name: &str) -> Option<ConversationStatus> {
        use ConversationStatus::*;
        [Active, Queued, Idle, Closed].into_iter().find(|s| s.as_str() == name)
    }
}

/// `stdout` or `stderr` of a tool's streamed output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Why a turn (or a step) ended. Serialized as its kebab-case name; a
/// provider's reason this type does not know travels as [`FinishReason::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// The model finished its answer.
    Stop,
    /// The model asked for tools (a step's reason; a turn continues).
    ToolCalls,
    /// The model hit its output limit.
    Length,
    /// The provider filtered the output.
    ContentFilter,
    /// The turn reached its step limit.
    MaxSteps,
    /// A provider error ended the turn.
    Error,
    /// The turn was aborted.
    Aborted,
    /// Anything else a provider reports.
    Other(String),
}

impl FinishReason {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::ToolCalls => "tool-calls",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content-filter",
            FinishReason::MaxSteps => "max-steps",
            FinishReason::Error => "error",
            FinishReason::Aborted => "aborted",
            FinishReason::Other(s) => s,
        }
    }

    /// Parse a wire name (unknown names become [`FinishReason::Other`]).
    pub fn parse(s: &str) -> FinishReason {
        match s {
            "stop" => FinishReason::Stop,
            "tool-calls" => FinishReason::ToolCalls,
            "length" => FinishReason::Length,
            "content-filter" => FinishReason::ContentFilter,
            "max-steps" => FinishReason::MaxSteps,
            "error" => FinishReason::Error,
            "aborted" => FinishReason::Aborted,
            other => FinishReason::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FinishReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A string: one of the known names, or any other a provider reports.
impl JsonSchema for FinishReason {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FinishReason".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "stop, tool-calls, length, content-filter, max-steps, error, aborted, or a provider's own reason",
            "examples": ["stop", "tool-calls", "length", "content-filter", "max-steps", "error", "aborted"]
        })
    }
}

impl<'de> Deserialize<'de> for FinishReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(FinishReason::parse(&s))
    }
}

/// Everything a turn reports outward, in order: `user-message`,
/// `turn-start`, deltas / tool events / usage / step-complete …, `done`,
/// `turn-sealed`.
///
/// An event type this version does not know (from a newer server) parses as
/// [`AgentEvent::Unknown`] with its JSON kept, instead of failing the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case", rename_all_fields = "camelCase")]
#[non_exhaustive]
pub enum AgentEvent {
    /// The prompt that opened the turn (first event of a turn).
    UserMessage {
        /// Conversation.
        conversation_id: String,
        /// Turn.
        turn_id: String,
        /// The prompt.
        text: String,
    },
    /// The turn began.
    TurnStart {
        /// Conversation.
        conversation_id: String,
        /// Turn.
        turn_id: String,
    },
    /// Model text.
    TextDelta {
        /// Conversation.
        conversation_id: String,
        /// Turn.
        turn_id: String,
        /// The new text.
        delta: String,
    },
    /// Model reasoning.
    ReasoningDelta {
        /// Conversation.
        conversation_id: String,
        /// Turn.
        turn_id: String,
        /// The new text.
        delta: String,
    },
    /// The model asked for a tool.
    ToolCall {
        /// Conversation.
        conversation_id: String,
        /// Turn.
        turn_id: String,
        /// `<turnId>#<index>`.
        step_id: String,
        /// Call id.
        tool_call_id: String,
        /// Tool.
        tool_name: String,
        /// Input.
        input: Value,
    },
    /// A running tool's output.
    ToolOutput {
        /// Conversation.
        conversation_id: String,
        /// Turn.
        turn_id: String,
        /// Call id.
        tool_call_id: String,
        /// The output.
        data: String,
        /// Which stream.
        stream: OutputStream,
    },
    /// A tool finished (exactly one per `tool-call`).
    ToolResult {
        /// Conversation.
        conversation_id: String,
        /// Turn.
        turn_id: String,
        /// `<turnId>#<index>`.
        step_id: String,
        /// Call id.
        tool_call_id: String,
        /// Tool.
        tool_name: String,
        /// What the model reads.
        content: String,
        /// Whether it is an error.
        is_error: bool,
        /// Dispatch to result, when a clock was given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    /// Token usage of a step.
    Usage {
        /// Conversation.
        conversation_id: String,
        /// Turn.
        turn_id: String,
        /// The counters.
        usage: Usage,
        /// The step.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step_id: Option<String>,
    },
    /// A step (one model round-trip) ended.
    StepComplete {
        /// Conversation.
        conversation_id: String,
        /// Turn.
        turn_id: String,
        /// The step.
        step_id: String,
        /// Stream start to first token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttft_ms: Option<u64>,
        /// First token to stream end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decode_ms: Option<u64>,
        /// Stream start to stream end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gen_total_ms: Option<u64>,
    },
    /// A retryable provider error; the retry fires after `delayMs`.
    ProviderRetry {
        /// Conversation.
        conversation_id: String,
        /// Turn.
        turn_id: String,
        /// 0-based retry number.
        attempt: u32,
        /// The wait before it.
        delay_ms: u64,
        /// The provider's message.
        message: String,
        /// The HTTP status, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// Queued user text injected at a tool-result boundary.
    Steering {
        /// Conversation.
        conversation_id: String,
        /// Turn.
        turn_id: String,
        /// The injected text.
        text: String,
    },
    /// An error ended the turn (or a step).
    Error {
        /// Conversation.
        conversation_id: String,
        /// Turn.
        turn_id: String,
        /// What happened.
        message: String,
        /// A stable code, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// The turn ended.
    Done {
        /// Conversation.
        conversation_id: String,
        /// Turn.
        turn_id: String,
        /// Why.
        reason: FinishReason,
        /// Turn start to end, when a clock was given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
        /// Sum over the steps, when any usage was reported.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// The final step's input + output tokens.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context_size: Option<u64>,
    },
    /// Everything of the turn is persisted.
    TurnSealed {
        /// Conversation.
        conversation_id: String,
        /// Turn.
        turn_id: String,
    },
    /// A conversation's status changed.
    Status {
        /// Conversation.
        conversation_id: String,
        /// `active`, `idle`, `closed`, …
        status: String,
    },
    /// An event type this version does not know; its JSON as received.
    /// (Not in the schema: this server sends only the types above.)
    #[serde(untagged)]
    #[schemars(skip)]
    Unknown(Value),
}

impl AgentEvent {
    /// The event's `type` tag.
    pub fn type_name(&self) -> &str {
        match self {
            AgentEvent::UserMessage { .. } => "user-message",
            AgentEvent::TurnStart { .. } => "turn-start",
            AgentEvent::TextDelta { .. } => "text-delta",
            AgentEvent::ReasoningDelta { .. } => "reasoning-delta",
            AgentEvent::ToolCall { .. } => "tool-call",
            AgentEvent::ToolOutput { .. } => "tool-output",
            AgentEvent::ToolResult { .. } => "tool-result",
            AgentEvent::Usage { .. } => "usage",
            AgentEvent::StepComplete { .. } => "step-complete",
            AgentEvent::ProviderRetry { .. } => "provider-retry",
            AgentEvent::Steering { .. } => "steering",
            AgentEvent::Error { .. } => "error",
            AgentEvent::Done { .. } => "done",
            AgentEvent::TurnSealed { .. } => "turn-sealed",
            AgentEvent::Status { .. } => "status",
            AgentEvent::Unknown(v) => v.get("type").and_then(Value::as_str).unwrap_or(""),
        }
    }
}

/// Per-step metrics, persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepMetrics {
    /// The step.
    pub step_id: String,
    /// Its usage.
    pub usage: Usage,
    /// Stream start to first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<u64>,
    /// First token to stream end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_ms: Option<u64>,
    /// Stream start to stream end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gen_total_ms: Option<u64>,
}

/// Per-turn metrics, persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnMetrics {
    /// The turn.
    pub turn_id: String,
    /// Sum over the steps.
    pub usage: Usage,
    /// Turn start to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Each step, in order.
    pub steps: Vec<StepMetrics>,
    /// The final step's input + output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_size: Option<u64>,
}

/// Whether `id` is a usable conversation id: 1–128 characters of
/// `A-Z a-z 0-9 . _ - : @`. Ids end up in URLs, file names and logs, so
/// every part of the system (store, session, transports) holds them to
/// this one rule.
pub fn is_valid_conversation_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@'))
}

/// Longest title a conversation keeps, in characters (a derived one is
/// shorter still).
pub const MAX_TITLE_CHARS: usize = 200;

/// `title` trimmed and cut to [`MAX_TITLE_CHARS`] (with `…`): a title is
/// listed with every conversation, so a 7 MiB one made every list 7 MiB.
///
/// ```
/// use dispatch_protocol::wire::{bounded_title, MAX_TITLE_CHARS};
/// assert_eq!(bounded_title("  hello "), "hello");
/// assert_eq!(bounded_title(&"é".repeat(500)).chars().count(), MAX_TITLE_CHARS + 1);
/// ```
pub fn bounded_title(title: &str) -> String {
    let t = title.trim();
    match t.char_indices().nth(MAX_TITLE_CHARS) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_owned(),
    }
}

/// What to tell someone whose conversation id breaks the rule.
pub const CONVERSATION_ID_RULE: &str = "use 1-128 characters of A-Z a-z 0-9 . _ - : @";

/// The rule as a regular expression (for API descriptions).
pub const CONVERSATION_ID_PATTERN: &str = "^[A-Za-z0-9._:@-]{1,128}$";

/// A string with something besides white space (for API descriptions of
/// fields that are trimmed and must not end up empty).
pub const NOT_BLANK_PATTERN: &str = "\\S";

/// A conversation as the list endpoint shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationMeta {
    /// Id.
    pub id: String,
    /// Epoch ms of the first write.
    pub created_at: u64,
    /// Epoch ms of the latest append.
    pub last_activity_at: u64,
    /// Title (defaults to the first user message, truncated).
    pub title: String,
    /// Status.
    pub status: ConversationStatus,
    /// Workspace (`default` when never assigned).
    pub workspace_id: String,
    /// For a compacted conversation: the archive holding the full history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted_from: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `NAMES` is the serde encoding, every variant once and in order.
    #[test]
    fn effort_names_are_the_wire_names() {
        let all = [
            ReasoningEffort::Low,
            ReasoningEffort::Medium,
            ReasoningEffort::High,
            ReasoningEffort::Xhigh,
            ReasoningEffort::Max,
        ];
        let names: Vec<String> =
            all.iter().map(|e| serde_json::to_value(e).unwrap().as_str().unwrap().to_owned()).collect();
        assert_eq!(names, ReasoningEffort::NAMES);
        // A new variant stops this compiling until it is in `all` (and `NAMES`).
        let _every = |e: ReasoningEffort| match e {
            ReasoningEffort::Low
            | ReasoningEffort::Medium
            | ReasoningEffort::High
            | ReasoningEffort::Xhigh
            | ReasoningEffort::Max => (),
        };
    }

    /// A provider's absurd counters used to wrap a turn's total.
    #[test]
    fn usage_sums_saturate_instead_of_wrapping() {
        let huge = Usage {
            input_tokens: u64::MAX,
            output_tokens: 1,
            cache_read_tokens: Some(u64::MAX),
            ..Usage::default()
        };
        let sum = huge
            + Usage { input_tokens: 5, output_tokens: 2, cache_read_tokens: Some(1), ..Usage::default() };
        assert_eq!(
            (sum.input_tokens, sum.output_tokens, sum.cache_read_tokens),
            (u64::MAX, 3, Some(u64::MAX))
        );
        assert_eq!(sum.cache_write_tokens, None);
    }
}
